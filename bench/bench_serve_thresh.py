"""Which serving threshold: the one chosen on a version's validation images, against fixed ones, on held-out photos.

Every version the worker registers carries a serving threshold chosen on its validation images (the score
threshold with the least edit cost there, :func:`shoeseg.edits.choose_score_thresh`). With 9 validation images
the choice jumps from version to version (0.35, 0.8, 0.2, 0.95, 0.05 in one 60-minute run). This replays the
versions of ``bench_improving`` runs: for each, its validation images (``meta.val_task_ids``, their file names
from the run's Label Studio database) and the 23 held-out photos are measured once, and the held-out edit cost
(:class:`shoeseg.edits.EditCosts`: a shoe to draw 30, a box to delete 1, a vertex to drag 1) is read at the
threshold each rule gives:

* **chosen on validation**: least validation cost, ties nearest 0.5 (the product's rule before the margin);
* **chosen, with a margin M**: leave 0.5 unless the chosen threshold saves at least M edit actions per validation
  image there (the product's rule now, M = :data:`shoeseg.edits.MIN_SAVING_PER_IMAGE`);
* **fixed T**: the same threshold for every version;
* **best on held-out**: the held-out optimum, a bound no rule can know.

Run after ``bench_improving`` (its ``--out`` folders keep ``run/models`` and ``run/ls``), nothing else on the
machine, a few minutes:
``python -m bench serve_thresh --runs bench/out/improving-interval bench/out/improving-rotate``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
from pathlib import Path

from bench.bench_loop import SHOES, shoes_plan

log = logging.getLogger("bench.serve_thresh")


def _task_files(run: Path) -> dict[int, str]:
    db = run / "run" / "ls" / "label_studio.sqlite3"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select id, data from task").fetchall()
    return {int(i): json.loads(data)["file_name"] for i, data in rows}


def measure_run(run: Path, data: Path) -> list[dict]:
    """Each registered version's measures on its validation images and on the held-out photos."""
    from shoeseg.data import subset
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor
    from shoeseg_services.registry import ModelRegistry
    from via_tools.io import load
    from via_tools.options import ReadOptions

    ds = load(data / "via_project.json", options=ReadOptions(images_dir=data / "images"))
    held = subset(ds, shoes_plan(ds, tiny=False)["held_out"])
    files = _task_files(run)
    out = []
    for mv in sorted(ModelRegistry(run / "run" / "models").versions(), key=lambda v: v.created_at):
        val_files = [files[int(t)] for t in mv.meta.get("val_task_ids") or []]
        predictor = Predictor.from_checkpoint(mv.checkpoint, device="cpu")
        val = evaluate(predictor, subset(ds, val_files), images_dir=data / "images", with_losses=False)
        test = evaluate(predictor, held, images_dir=data / "images", with_losses=False)
        out.append({"run": run.name, "version": mv.version, "kind": mv.meta.get("kind") or "round",
                    "recorded": predictor.checkpoint_score_thresh, "val": val.measures, "held_out": test.measures})
        log.info("%s %s: %d validation, %d held-out images measured", run.name, mv.version, len(val_files),
                 len(held.images))
    return out


def thresholds(version: dict, *, margins: list[float], fixed: list[float]) -> dict[str, float]:
    """The threshold each rule gives one version."""
    from shoeseg.edits import THRESH_CANDIDATES, choose_score_thresh

    rules = {"chosen on validation": choose_score_thresh(version["val"], min_saving_per_image=0).score_thresh}
    for m in margins:
        rules[f"chosen, margin {m:g} per image"] = choose_score_thresh(version["val"], min_saving_per_image=m).score_thresh
    for t in fixed:
        rules[f"fixed {t:g}"] = t
    held_cost = {t: sum(m.at(t).cost() for m in version["held_out"]) for t in THRESH_CANDIDATES}
    rules["best on held-out"] = min(held_cost, key=lambda t: (held_cost[t], abs(t - 0.5)))
    return rules


def held_out_numbers(version: dict, t: float) -> dict:
    edits = [m.at(t) for m in version["held_out"]]
    n = len(edits)
    return {"thresh": t, "cost": sum(e.cost() for e in edits) / n, "missed": sum(e.n_missed for e in edits),
            "fp": sum(e.n_false_positives for e in edits) / n, "drag": sum(e.n_to_drag for e in edits) / n}


def report(rows: list[dict]) -> str:
    rules = list(rows[0]["rules"])
    lines = ["Held-out edit cost per image (threshold) for each version and rule:", "",
             "| run | version | kind | " + " | ".join(rules) + " |", "|---|---|---|" + "---|" * len(rules)]
    for r in rows:
        cells = [f"{r['rules'][k]['cost']:.1f} ({r['rules'][k]['thresh']:g})" for k in rules]
        lines.append(f"| {r['run']} | {r['version']} | {r['kind']} | " + " | ".join(cells) + " |")
    lines += ["", "Over all versions (mean per image; missed: shoes to draw, of all versions' held-out shoes):", "",
              "| rule | edit cost / img | shoes missed | boxes to delete / img | vertices to drag / img | "
              "versions where it costs more than the best fixed |", "|---|---|---|---|---|---|"]
    fixed = [k for k in rules if k.startswith("fixed")]
    best_fixed = min(fixed, key=lambda k: sum(r["rules"][k]["cost"] for r in rows)) if fixed else None
    for k in rules:
        vals = [r["rules"][k] for r in rows]
        worse = sum(v["cost"] > r["rules"][best_fixed]["cost"] + 1e-9 for v, r in zip(vals, rows, strict=True)) if best_fixed else 0
        lines.append(f"| {k} | {sum(v['cost'] for v in vals) / len(vals):.2f} | {sum(v['missed'] for v in vals)} | "
                     f"{sum(v['fp'] for v in vals) / len(vals):.2f} | {sum(v['drag'] for v in vals) / len(vals):.2f} | "
                     f"{worse} of {len(vals)} |")
    if best_fixed:
        lines += ["", f"best fixed threshold over these versions: {best_fixed}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="--out folders of bench_improving runs")
    parser.add_argument("--data", default=str(SHOES))
    parser.add_argument("--margins", default="2,5", help="edit actions per validation image a move from 0.5 must save")
    parser.add_argument("--fixed", default="0.3,0.5,0.7")
    parser.add_argument("--out", default=None, help="write the tables to this markdown file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("shoeseg", "via_tools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    margins = [float(x) for x in args.margins.split(",") if x]
    fixed = [float(x) for x in args.fixed.split(",") if x]
    rows = []
    for run in args.runs:
        for version in measure_run(Path(run), Path(args.data)):
            rules = thresholds(version, margins=margins, fixed=fixed)
            if version["recorded"] is not None and abs(rules["chosen on validation"] - version["recorded"]) > 1e-9:  # runs before the margin
                log.warning("%s: chosen here %g, recorded %g (the choice is replayed as measured here)",
                            version["version"], rules["chosen on validation"], version["recorded"])
            rows.append({"run": version["run"], "version": version["version"], "kind": version["kind"],
                         "rules": {k: held_out_numbers(version, t) for k, t in rules.items()}})
    text = report(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
