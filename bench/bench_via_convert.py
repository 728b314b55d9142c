"""VIA 2 → COCO conversion speed: via_tools (load + save) beside a bare ``json.load`` + ``json.dump``.

Generates a VIA 2 project of 10,000 images and 50,000 polygons in a temporary folder, then times, best of
``--repeat`` runs:

* reference: ``json.load`` of the VIA file and ``json.dump`` of the same document (no conversion at all);
* via_tools: ``via_tools.io.load`` (parse, validate, sanitize every polygon) and ``via_tools.io.save`` as
  COCO (bbox and area computed, atomic write).

Target: via_tools within 3x of the reference. ``--profile`` prints the top functions of one via_tools run.

Run: ``python -m bench.bench_via_convert [--images 10000] [--polygons 50000] [--points 30]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_RATIO = 3.0


def make_via2(path: Path, *, n_images: int, n_polygons: int, n_points: int, seed: int = 0) -> None:
    """Writes a VIA 2 project with star-shaped (simple) polygons inside 640x480 images."""
    rng = np.random.default_rng(seed)
    per_image = np.full(n_images, n_polygons // n_images)
    per_image[: n_polygons % n_images] += 1
    angles = np.linspace(0, 2 * math.pi, n_points, endpoint=False)
    meta = {}
    for i in range(n_images):
        name = f"img_{i:06d}.jpg"
        size = int(rng.integers(20_000, 400_000))
        regions = []
        for _ in range(per_image[i]):
            cx, cy = rng.uniform(80, 560), rng.uniform(80, 400)
            r = rng.uniform(20, 75) * rng.uniform(0.6, 1.0, n_points)
            xs = np.round(cx + r * np.cos(angles), 2)
            ys = np.round(cy + r * np.sin(angles), 2)
            regions.append({"shape_attributes": {"name": "polygon", "all_points_x": xs.tolist(), "all_points_y": ys.tolist()},
                            "region_attributes": {"label": "shoe"}})
        meta[f"{name}{size}"] = {"filename": name, "size": size, "regions": regions, "file_attributes": {}}
    doc = {
        "_via_settings": {"ui": {}, "core": {"buffer_size": 18, "filepath": {}, "default_filepath": ""},
                          "project": {"name": "bench"}},
        "_via_img_metadata": meta,
        "_via_attributes": {"region": {"label": {"type": "dropdown", "description": "", "options": {"shoe": ""},
                                                 "default_options": {}}}, "file": {}},
        "_via_data_format_version": "2.0.10",
        "_via_image_id_list": list(meta),
    }
    path.write_text(json.dumps(doc))


def reference(src: Path, out: Path) -> None:
    with open(src, encoding="utf-8") as f:
        doc = json.load(f)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f)


def via_tools_convert(src: Path, out: Path) -> None:
    from via_tools.io import load, save

    save(load(src), out, fmt="coco")


def best_of(fn, *args, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--polygons", type=int, default=50_000)
    ap.add_argument("--points", type=int, default=30, help="points per polygon")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile one via_tools run and print the top functions")
    args = ap.parse_args(argv if argv is not None else [])
    import logging

    logging.getLogger("via_tools").setLevel(logging.ERROR)  # the generated set has no sizes: one warning per run
    with tempfile.TemporaryDirectory(prefix="bench-via-") as tmp:
        tmp = Path(tmp)
        src = tmp / "via_project.json"
        t0 = time.perf_counter()
        make_via2(src, n_images=args.images, n_polygons=args.polygons, n_points=args.points)
        print(f"generated {src.name}: {args.images} images, {args.polygons} polygons x {args.points} points, "
              f"{src.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")

        ref = best_of(reference, src, tmp / "ref.json", repeat=args.repeat)
        ours = best_of(via_tools_convert, src, tmp / "coco.json", repeat=args.repeat)
        coco = json.loads((tmp / "coco.json").read_text())
        assert len(coco["images"]) == args.images and len(coco["annotations"]) == args.polygons

        ratio = min(ours) / min(ref)
        w = 34
        print(f"\n{'path':<{w}} {'best s':>8} {'median s':>9} {'output MB':>10}")
        print(f"{'json.load + json.dump (reference)':<{w}} {min(ref):>8.2f} {float(np.median(ref)):>9.2f} "
              f"{(tmp / 'ref.json').stat().st_size / 1e6:>10.1f}")
        print(f"{'via_tools load + save COCO':<{w}} {min(ours):>8.2f} {float(np.median(ours)):>9.2f} "
              f"{(tmp / 'coco.json').stat().st_size / 1e6:>10.1f}")
        print(f"ratio via_tools / reference: {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x: "
              f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")

        if args.profile or ratio > TARGET_RATIO:
            prof = cProfile.Profile()
            prof.enable()
            via_tools_convert(src, tmp / "coco2.json")
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
            print("\nprofile of one via_tools run (cumulative):")
            print(s.getvalue())


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
