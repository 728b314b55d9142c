"""Which gate rule: every decision recorded by the 60-minute runs of ``bench_improving``, replayed under two rules.

Each run's ``improving.json`` holds every registered version with its gate evidence (the paired per-image mask AP
difference on the validation images and its bootstrap interval) and its mask AP on the 23 held-out photos that
never entered the project. For every decision this takes the held-out change it stood for (the candidate's
held-out mask AP minus that of the version it was judged against, the promoted one before it) and says what each
rule would have done with the same evidence:

* **interval**: refused only when the whole (plain percentile) interval lies below 0 (the default until 2026-12-08);
* **interval + tolerance**: refused as well when the mean drops by more than ``--tolerance`` (0.01), the rule the
  runs before the change were made with;
* **expanded interval**: the interval rule with the interval widened for the number of images
  (:func:`shoeseg.gate.expanded_level`, the default since 2026-12-08). Runs recorded before it hold a plain
  percentile interval and no per-image scores, so the replay widens each recorded bound about the mean by the
  ratio of the two levels' normal quantiles (exact for a normal bootstrap distribution, approximate otherwise);
  a decision recorded with the expanded interval is taken as it is, and narrowed by that ratio for the other two
  rules.

``--coverage`` runs the simulation behind that default instead: paired differences of known mean 0 drawn from a
normal, a skewed and a heavy-tailed distribution, on 5, 9, 15 and 30 images, and how often each interval holds
the true mean and how often it says "worse" (a version no worse refused).

A rule is judged by the held-out change of what it promotes and of what it refuses. Each decision is replayed
alone: had a run promoted another version, what followed would differ, so this does not say what a whole run
would have reached. Decisions recorded twice (a run scored again under another name, or two runs whose first
chunks trained alike: the same evidence) count once, as the first file in name order scored them.

Run: ``python -m bench gate_rules --runs docs/improving/run-*.json`` (seconds; reads files only);
``python -m bench gate_rules --coverage`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
from pathlib import Path
from statistics import NormalDist

import numpy as np

from shoeseg.gate import INTERVAL, expanded_z, paired_interval

log = logging.getLogger("bench.gate_rules")


def decisions(path: Path) -> list[dict]:
    """The gate decisions of one run with evidence, in the order the versions were registered."""
    data = json.loads(path.read_text())
    current = None
    rows = []
    for v in sorted(data["versions"], key=lambda v: v["created_at"]):
        gate = v.get("gate") or {}
        if gate.get("diff") is not None and gate.get("ci_high") is not None and current is not None:
            rows.append({"run": path.stem, "kind": v["kind"], "diff": gate["diff"], "ci_low": gate["ci_low"],
                         "ci_high": gate["ci_high"], "held_out": v["segm_AP"] - current["segm_AP"],
                         "recorded": "promoted" if v["promoted"] else "refused"})
            rows[-1]["ci_high_plain"], rows[-1]["ci_high_expanded"] = _tops(gate)
        if v["promoted"]:
            current = v
    return rows


def _tops(gate: dict) -> tuple[float, float]:
    """The top of a recorded decision's interval as the plain percentile interval and as the expanded one gave it:
    the one recorded is taken as it is, the other is widened or narrowed about the mean (see the module)."""
    n = gate.get("compared_on")
    if not isinstance(n, int) or n < 2:
        return gate["ci_high"], gate["ci_high"]
    level = gate.get("confidence") or 0.9
    widen = expanded_z(level, n) / NormalDist().inv_cdf(0.5 + level / 2)
    spread = gate["ci_high"] - gate["diff"]
    if gate.get("interval") == INTERVAL:
        return gate["diff"] + spread / widen, gate["ci_high"]
    return gate["ci_high"], gate["diff"] + spread * widen


def rules(tolerance: float) -> dict:
    """Each rule's name and whether it promotes a decision's evidence."""
    return {"interval": lambda r: r["ci_high_plain"] >= 0,
            f"interval + tolerance {tolerance:g}": lambda r: r["ci_high_plain"] >= 0 and r["diff"] >= -tolerance,
            "expanded interval": lambda r: r["ci_high_expanded"] >= 0}


def replay(rows: list[dict], tolerance: float) -> dict[str, dict]:
    """Per rule: what it promotes and refuses, with the held-out change of each."""
    out = {}
    for name, promotes in rules(tolerance).items():
        yes = [r["held_out"] for r in rows if promotes(r)]
        no = [r["held_out"] for r in rows if not promotes(r)]
        out[name] = {"promoted": len(yes), "promoted_mean": sum(yes) / len(yes) if yes else None,
                     "promoted_worse": sum(x < 0 for x in yes), "refused": len(no),
                     "refused_mean": sum(no) / len(no) if no else None, "refused_not_worse": sum(x >= 0 for x in no)}
    return out


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3f}"


def report(rows: list[dict], summary: dict[str, dict], tolerance: float) -> str:
    lines = ["| run | kind | gate: difference [90 % interval] on 9 images | held-out change | recorded | "
             f"interval | + tolerance {tolerance:g} | expanded |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        said = " | ".join("promote" if promotes(r) else "refuse" for promotes in rules(tolerance).values())
        lines.append(f"| {r['run']} | {r['kind']} | {_f(r['diff'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}] | "
                     f"{_f(r['held_out'])} | {r['recorded']} | {said} |")
    lines += ["", "| rule | promoted | their mean held-out change | worse on held-out | refused | "
              "their mean held-out change | as good or better on held-out |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['promoted']} | {_f(s['promoted_mean'])} | {s['promoted_worse']} | "
                     f"{s['refused']} | {_f(s['refused_mean'])} | {s['refused_not_worse']} |")
    return "\n".join(lines)


DISTRIBUTIONS = {  # paired differences of mean 0, one draw of k images each
    "normal": lambda rng, k: rng.normal(0.0, 0.1, k),
    "skewed": lambda rng, k: rng.exponential(0.1, k) - 0.1,  # most images a little worse, a few much better
    "heavy-tailed": lambda rng, k: np.where(rng.random(k) < 0.2, rng.normal(0.0, 0.3, k), rng.normal(0.0, 0.03, k)),
}


def coverage(n: int, distribution: str, *, expanded: bool, trials: int = 1000, confidence: float = 0.9,
             seed: int = 0) -> tuple[float, float]:
    """How often the gate's interval on ``n`` paired differences of true mean 0 holds 0, and how often it lies
    wholly below 0 (the gate would refuse a version no worse). ``expanded=False``: the plain percentile interval.
    """
    rng = np.random.default_rng(seed)
    held = below = 0
    for trial in range(trials):
        d = DISTRIBUTIONS[distribution](rng, n)
        _, low, high = paired_interval(d, np.zeros(n), confidence=confidence, seed=trial, expand=expanded)
        held += low <= 0.0 <= high
        below += high < 0.0
    return held / trials, below / trials


def coverage_table(trials: int) -> str:
    """The plain and the expanded interval side by side, per number of images and distribution (markdown)."""
    lines = ["| images | differences | plain 90 %: holds the mean | says worse | expanded 90 %: holds the mean | "
             "says worse |", "|---|---|---|---|---|---|"]
    for n in (5, 9, 15, 30):
        for name in DISTRIBUTIONS:
            plain = coverage(n, name, expanded=False, trials=trials)
            wide = coverage(n, name, expanded=True, trials=trials)
            lines.append(f"| {n} | {name} | {plain[0]:.0%} | {plain[1]:.0%} | {wide[0]:.0%} | {wide[1]:.0%} |")
            log.info("%s", lines[-1])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["docs/improving/run-*.json"],
                        help="improving.json files of bench_improving runs (globs allowed)")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--out", default=None, help="write the tables to this markdown file")
    parser.add_argument("--coverage", action="store_true",
                        help="simulate how often the plain and the expanded interval hold a known mean")
    parser.add_argument("--trials", type=int, default=1000, help="--coverage: draws per row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.coverage:
        text = coverage_table(args.trials)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return
    paths = sorted({Path(p) for pattern in args.runs for p in glob.glob(pattern)})
    if not paths:
        raise SystemExit(f"no run found at {args.runs}")
    rows, seen = [], set()
    for path in paths:
        for r in decisions(path):
            key = (round(r["diff"], 6), round(r["ci_low"], 6), round(r["ci_high"], 6))
            if key in seen:
                log.info("%s: a %s decision recorded by an earlier run too, counted once", path.name, r["kind"])
                continue
            seen.add(key)
            rows.append(r)
    text = report(rows, replay(rows, args.tolerance), args.tolerance)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
