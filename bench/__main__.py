"""Runs every benchmark in bench/, one after the other: `python -m bench` (or `make bench`).

Each benchmark prints its own side-by-side table; pass names to run a subset:
`python -m bench via_convert model`. Options after a single name go to that benchmark:
`python -m bench loop --shoes --out bench/out/loop`.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    options = [a for a in argv if a.startswith("-")]
    if options:  # one benchmark with its own options
        first = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
        chosen, rest = argv[:first], argv[first:]
        if len(chosen) != 1 or chosen[0] not in names:
            print(f"options go to one benchmark: python -m bench NAME --option ... (NAME: {', '.join(names)})",
                  file=sys.stderr)
            return 2
        module = importlib.import_module(f"bench.bench_{chosen[0]}")
        if "argv" not in module.main.__code__.co_varnames:
            print(f"bench_{chosen[0]} takes no options", file=sys.stderr)
            return 2
        print(f"\n=== bench_{chosen[0]} ===", flush=True)
        module.main(rest)
        return 0
    chosen = argv or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    for name in chosen:
        print(f"\n=== bench_{name} ===", flush=True)
        importlib.import_module(f"bench.bench_{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
