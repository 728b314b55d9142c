"""Learning curve: the live round procedure against a from-scratch training on the same labels.

Reads an active-learning simulation's output folder (``shoeseg al simulate``): its ``random`` strategy is the
live loop with labels arriving in random order, each round a warm start from the previous round's checkpoint
with the worker's rule (:func:`shoeseg.schedule.fine_tune_config`). For every seed and every round after the
first, this trains a new model **from scratch** (the first version's recipe: the same iterations, weights and
sizes as round 0) on exactly the images that round had, scores it on the simulation's test images, and
tabulates both side by side: mean mask AP over seeds, its spread, and the training seconds.

Rows are written to ``--out/scratch.csv`` as each training finishes; a stopped run continues where it stopped
(finished rows are kept). ``--report-only`` only reads the files and prints the table.

``--recipe NAME=ITERS:LR`` (repeatable) also compares round recipes on the first round of every seed: each warm
starts from that seed's round-0 checkpoint (the 10-label first version) and trains on the same 20 images as the
live round, with ITERS iterations at learning rate LR instead of the worker's rule. The simulation deletes a
seed's round-0 checkpoint once all its strategies are done, so the recipes read copies in ``--out/starts``
(``seed<S>.pt``; copied there from the simulation when found). Rows go to ``--out/recipes.csv``, resumable.

Run after (or while) a simulation runs, on the same dataset::

    python -m bench rounds --simulation runs/al-soles-adamw \\
        --data ../shared/datasets/shoe-soles-yoloseg/data.yaml \\
        --images ../shared/datasets/shoe-soles-yoloseg/train/images --out bench/out/rounds-soles
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
from dataclasses import replace
from pathlib import Path

log = logging.getLogger("bench.rounds")

#: The worker's round rule before simulations stored theirs: 4 iterations per new image, at least 40, at the
#: recipe's learning rate.
OLD_ROUND_RULE = {"per_image": 4, "floor": 40, "lr_scale": 1.0}
COLUMNS = ("seed", "round", "n_labelled", "segm_AP", "segm_AP50", "bbox_AP", "seconds")
RECIPE_COLUMNS = ("recipe", "iters", "base_lr", *COLUMNS)


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (float(v) if k in ("segm_AP", "segm_AP50", "bbox_AP", "seconds", "base_lr") else int(v) if k in
                     ("seed", "round", "n_labelled", "iters") else v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def _append(path: Path, row: dict, columns: tuple[str, ...] = COLUMNS) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
        f.flush()


def _config_from(selections: dict, *, device: str, outputs: dict | None = None):
    """The simulation's configuration, rebuilt from the fingerprint it stored, checked to be the same.

    Evaluation does to each soft mask what the simulation's did (its stored ``outputs``; a run from before they
    were stored: :data:`~shoeseg.simulation.config.OUTPUTS_BEFORE`), unless ``outputs`` overrides it: for rows
    a simulation wrote under other mask steps than it recorded, say so and compare within one scoring.
    """
    from shoeseg.simulation.config import OUTPUTS_BEFORE, SimulationConfig, fingerprint_differences
    from shoeseg.train import TrainConfig

    fp = selections["config"]
    train = TrainConfig(**{k: v for k, v in fp["train"].items() if k in TrainConfig.__dataclass_fields__})
    train = replace(train, device=device)
    cfg = SimulationConfig(strategies=["random"], seeds=[0], start=fp["start"], batch=fp["batch"],
                           rounds=fp["rounds"], test_frac=fp["test_frac"], split_seed=fp["split_seed"],
                           test_size=fp["test_size"], pool_size=fp["pool_size"], round_iters=fp["round_iters"],
                           prescale=fp["prescale"], train=train, outputs=dict(fp.get("outputs", OUTPUTS_BEFORE)))
    # the recipes and the from-scratch trainings do not follow the worker's round rule: it may have changed since
    diffs = [d for d in fingerprint_differences(fp, cfg.fingerprint()) if d != "round_rule"]
    if outputs is not None:
        cfg = replace(cfg, outputs={**cfg.outputs, **outputs})
    if diffs:
        raise ValueError(f"the simulation's settings cannot be rebuilt by this version of the code ({', '.join(diffs)})")
    return cfg


def _simulation_data(args, sim: Path, cfg, selections: dict):
    """The simulation's dataset at its training size: (dataset, image folder, records by name, test records)."""
    from shoeseg.simulation.pool import prescale_dataset
    from via_tools.io import load

    t = cfg.train
    ds, images_dir = prescale_dataset(load(args.data), images_dir=Path(args.images),
                                      out_dir=sim / f"images-{t.min_size}-{t.max_size}",
                                      min_size=t.min_size, max_size=t.max_size)
    by_name = {im.file_name: im for im in ds.images}
    return ds, images_dir, by_name, [by_name[n] for n in selections["test"]]


def _outputs(args) -> dict | None:
    """The mask steps given on the command line, if any (``--mask-refine``, ``--mask-rescore``)."""
    out = {}
    if args.mask_refine is not None:
        out["mask_refine"] = args.mask_refine
    if args.mask_rescore is not None:
        out["mask_rescore"] = args.mask_rescore
    return out or None


def train_from_scratch(args) -> None:
    from tqdm.auto import tqdm

    from shoeseg.simulation.config import SEED_STRIDE
    from shoeseg.simulation.loop import _train_and_evaluate
    from shoeseg.simulation.results import read_csv

    sim = Path(args.simulation)
    selections = json.loads((sim / "selections.json").read_text(encoding="utf-8"))
    cfg = _config_from(selections, device=args.device, outputs=_outputs(args))
    log.info("evaluating with mask steps %s", cfg.outputs)
    sim_rows = [r for r in read_csv(sim / "simulation.csv")
                if r["strategy"] == "random" and (args.seeds is None or r["seed"] in args.seeds)]
    chains = selections["rounds"].get("random", {})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch_csv = out / "scratch.csv"
    done = {(r["seed"], r["round"]) for r in _read_rows(scratch_csv)}
    todo = sorted({(r["seed"], r["round"]) for r in sim_rows
                   if r["round"] > 0 and (args.rounds is None or r["round"] in args.rounds)} - done)
    if not todo:
        log.info("nothing to train: every finished round of the simulation has its from-scratch row")
        return
    ds, images_dir, by_name, test = _simulation_data(args, sim, cfg, selections)
    bar = tqdm(total=len(todo), desc="from scratch", unit="training", dynamic_ncols=True)
    for seed, r in todo:
        chain = chains[str(seed)]
        labelled = [by_name[n] for n in selections["start"][str(seed)]]
        for step in chain[:r]:
            labelled += [by_name[n] for n in step["added"]]
        train_config = replace(cfg.train_config(seed=seed, round=0), seed=cfg.train.seed + SEED_STRIDE * seed + r)
        if args.scratch_iters:  # the decay steps at the same fractions of the longer schedule
            train_config = replace(train_config, iters=args.scratch_iters, steps=None)
        bar.set_description(f"seed {seed}, {len(labelled)} labels from scratch")
        rnd, _ = _train_and_evaluate(cfg, train_config=train_config, full=ds, labelled=labelled, test=test,
                                     images_dir=images_dir, run_dir=out / "runs" / f"seed{seed}-round{r}", bar=bar)
        _append(scratch_csv, {"seed": seed, "round": r, "n_labelled": len(labelled), **rnd.metrics,
                              "seconds": rnd.seconds})
        Path(rnd.checkpoint).unlink(missing_ok=True)
        log.info("seed %d round %d: %d labels from scratch, mask AP %.4f (%.0f s)", seed, r, len(labelled),
                 rnd.metrics["segm_AP"], rnd.seconds)
        bar.update(1)
    bar.close()


def parse_recipe(text: str) -> tuple[str, int, float]:
    """``NAME=ITERS:LR`` as (name, iterations, learning rate); a ``ValueError`` naming the text otherwise.

    Example:
        >>> parse_recipe("slow=80:1e-4")
        ('slow', 80, 0.0001)
    """
    try:
        name, rest = text.split("=", 1)
        iters, lr = rest.split(":", 1)
        out = name.strip(), int(iters), float(lr)
    except ValueError:
        raise ValueError(f"a recipe is NAME=ITERS:LR (e.g. slow=80:1e-4), got {text!r}") from None
    if not out[0] or out[1] < 1 or not out[2] > 0:
        raise ValueError(f"a recipe needs a name, at least 1 iteration and a positive rate, got {text!r}")
    return out


def _copy_starts(sim: Path, starts: Path, seeds: list[int]) -> None:
    import shutil

    starts.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        src, dst = sim / "runs" / f"seed{seed}" / "round0" / "model.pt", starts / f"seed{seed}.pt"
        if src.is_file() and not dst.is_file():
            shutil.copyfile(src, dst.with_suffix(".tmp"))
            dst.with_suffix(".tmp").replace(dst)


def train_recipes(args) -> None:
    """Every ``--recipe`` as the first round of every seed whose round-0 checkpoint is at hand."""
    from tqdm.auto import tqdm

    from shoeseg.schedule import fine_tune_config
    from shoeseg.simulation.loop import _train_and_evaluate

    sim, out = Path(args.simulation), Path(args.out)
    selections = json.loads((sim / "selections.json").read_text(encoding="utf-8"))
    cfg = _config_from(selections, device=args.device, outputs=_outputs(args))
    chains = {int(k): v for k, v in selections["rounds"].get("random", {}).items() if v}
    _copy_starts(sim, out / "starts", sorted(chains))
    recipes = [parse_recipe(r) for r in args.recipe]
    done = {(r["recipe"], r["seed"]) for r in _read_rows(out / "recipes.csv")}
    todo = [(seed, rec) for seed in sorted(chains) for rec in recipes
            if (rec[0], seed) not in done and (out / "starts" / f"seed{seed}.pt").is_file()]
    missing = sorted(s for s in chains if not (out / "starts" / f"seed{s}.pt").is_file())
    if missing:
        log.warning("no round-0 checkpoint yet for seeds %s: their recipes wait for a later run", missing)
    if not todo:
        return
    ds, images_dir, by_name, test = _simulation_data(args, sim, cfg, selections)
    bar = tqdm(total=len(todo), desc="round recipes", unit="training", dynamic_ncols=True)
    for seed, (name, iters, lr) in todo:
        labelled = [by_name[n] for n in selections["start"][str(seed)]] + [by_name[n] for n in chains[seed][0]["added"]]
        live = cfg.train_config(seed=seed, round=1, init_from=out / "starts" / f"seed{seed}.pt")
        train_config = replace(fine_tune_config(live, init_from=live.init_from, iters=iters), base_lr=lr)
        bar.set_description(f"seed {seed}, recipe {name} ({iters} it at {lr:g})")
        rnd, _ = _train_and_evaluate(cfg, train_config=train_config, full=ds, labelled=labelled, test=test,
                                     images_dir=images_dir, run_dir=out / "runs" / f"seed{seed}-{name}", bar=bar)
        _append(out / "recipes.csv", {"recipe": name, "iters": iters, "base_lr": lr, "seed": seed, "round": 1,
                                      "n_labelled": len(labelled), **rnd.metrics, "seconds": rnd.seconds},
                RECIPE_COLUMNS)
        Path(rnd.checkpoint).unlink(missing_ok=True)
        log.info("seed %d recipe %s: %d labels, mask AP %.4f (%.0f s)", seed, name, len(labelled),
                 rnd.metrics["segm_AP"], rnd.seconds)
        bar.update(1)
    bar.close()


def report_recipes(args) -> str:
    """The recipes' table: mean mask AP over seeds and the paired difference with the live round."""
    from shoeseg.simulation.results import read_csv

    sim, out = Path(args.simulation), Path(args.out)
    rows = _read_rows(out / "recipes.csv")
    if not rows:
        return ""
    sim_rows = [r for r in read_csv(sim / "simulation.csv") if r["strategy"] == "random"]
    seeds = {r["seed"] for r in rows}  # every row of the table on the same seeds
    first = {r["seed"]: r for r in sim_rows if r["round"] == 0 and r["seed"] in seeds}
    live = {r["seed"]: r for r in sim_rows if r["round"] == 1 and r["seed"] in seeds}
    scratch = {r["seed"]: r for r in _read_rows(out / "scratch.csv") if r["round"] == 1 and r["seed"] in seeds}
    lines = ["Round recipes for the first round (10 new labels on the 10-label first version, 20 labels in all), "
             "each a warm start from the same checkpoint; mask AP on the simulation's test images, mean ± sd "
             "over seeds; differences paired by seed [min, max].", "",
             "| recipe | iterations | learning rate | mask AP | − first version | − live round | − from scratch | "
             "training + scoring s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def paired(mine: dict, other: dict) -> str:
        d = [mine[s]["segm_AP"] - other[s]["segm_AP"] for s in sorted(set(mine) & set(other))]
        return f"{statistics.mean(d):+.3f} [{min(d):+.3f}, {max(d):+.3f}] (n={len(d)})" if d else "–"

    lines.append(f"| first version (10 labels) | – | – | {_stats([r['segm_AP'] for r in first.values()])} | – | – | – | – |")
    from shoeseg.schedule import round_iters

    fp = json.loads((sim / "selections.json").read_text(encoding="utf-8"))["config"]
    rule = fp.get("round_rule") or OLD_ROUND_RULE
    recipe_lr = fp["train"]["base_lr"]
    live_lr = recipe_lr * rule["lr_scale"]
    live_iters = fp["round_iters"] or round_iters(fp["train"]["iters"], fp["batch"], per_image=rule["per_image"],
                                                  floor=rule["floor"])
    lines.append(f"| live round (the simulation's rule) | {live_iters} | {live_lr:g} | "
                 f"{_stats([r['segm_AP'] for r in live.values()])} | {paired(live, first)} | – | "
                 f"{paired(live, scratch)} | – |")
    if scratch:
        lines.append(f"| from scratch | full | {recipe_lr:g} | {_stats([r['segm_AP'] for r in scratch.values()])} | "
                     f"{paired(scratch, first)} | {paired(scratch, live)} | – | "
                     f"{statistics.mean(r['seconds'] for r in scratch.values()):.0f} |")
    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = {r["seed"]: r for r in rows if r["recipe"] == name}
        one = next(iter(mine.values()))
        lines.append(f"| {name} | {one['iters']} | {one['base_lr']:g} | {_stats([r['segm_AP'] for r in mine.values()])} | "
                     f"{paired(mine, first)} | {paired(mine, live)} | {paired(mine, scratch)} | "
                     f"{statistics.mean(r['seconds'] for r in mine.values()):.0f} |")
    text = "\n".join(lines)
    (out / "recipes.md").write_text(text + "\n", encoding="utf-8")
    return text


def _stats(values: list[float]) -> str:
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread} (n={len(values)})"


def report(args) -> str:
    from shoeseg.simulation.results import read_csv

    sim = Path(args.simulation)
    rounds = [r for r in read_csv(sim / "simulation.csv")
              if r["strategy"] == "random" and (args.seeds is None or r["seed"] in args.seeds)]
    scratch = _read_rows(Path(args.out) / "scratch.csv")
    fp = json.loads((sim / "selections.json").read_text(encoding="utf-8"))["config"]
    lines = [
        f"Warm-start rounds (the simulation's round rule) against from-scratch trainings "
        f"({args.scratch_iters or fp['train']['iters']} iterations, "
        f"{fp['train']['min_size']}-{fp['train']['max_size']} px) on the same labels; mask AP on the simulation's "
        f"{fp['test_size']} test images, mean ± sd over seeds.",
        "",
        "| labels | live round: mask AP | from scratch: mask AP | round − scratch (paired) | round s | scratch s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n in sorted({r["n_labelled"] for r in rounds} | {r["n_labelled"] for r in scratch}):
        rr = {r["seed"]: r for r in rounds if r["n_labelled"] == n}
        ss = {r["seed"]: r for r in scratch if r["n_labelled"] == n}
        if n == min(r["n_labelled"] for r in rounds):
            ss = rr  # round 0 is the from-scratch training
        diffs = [rr[s]["segm_AP"] - ss[s]["segm_AP"] for s in sorted(set(rr) & set(ss))]
        diff = (f"{statistics.mean(diffs):+.3f} [{min(diffs):+.3f}, {max(diffs):+.3f}]" if diffs else "–")
        sec = [r["seconds"] for r in rr.values()]
        sec_s = [r["seconds"] for r in ss.values()]
        lines.append(f"| {n} | {_stats([r['segm_AP'] for r in rr.values()])} | "
                     f"{_stats([r['segm_AP'] for r in ss.values()])} | {diff} | "
                     f"{statistics.mean(sec):.0f} | {statistics.mean(sec_s):.0f} |" if sec and sec_s else
                     f"| {n} | {_stats([r['segm_AP'] for r in rr.values()])} | "
                     f"{_stats([r['segm_AP'] for r in ss.values()])} | {diff} | – | – |")
    lines.append("")
    lines.append("Seconds are wall time of training and scoring on the machine as it was (the round's include "
                 "choosing the next batch); they compare the two procedures' cost, they are not a benchmark of speed.")
    text = "\n".join(lines)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "rounds.md").write_text(text + "\n", encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench rounds", description=__doc__.split("\n")[0])
    p.add_argument("--simulation", default="runs/al-soles-adamw",
                   help="A simulation's output folder (shoeseg al simulate --out).")
    p.add_argument("--data", help="The simulation's dataset (--data of shoeseg al simulate).")
    p.add_argument("--images", help="The simulation's image folder (--images).")
    p.add_argument("--out", default="bench/out/rounds", help="Output folder (scratch.csv, rounds.md).")
    p.add_argument("--device", default="cpu")
    p.add_argument("--report-only", action="store_true", help="Only print the table of what is there.")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=ITERS:LR",
                   help="Also train this round recipe on every seed's first round (repeatable), e.g. slow=80:1e-4.")
    p.add_argument("--no-scratch", action="store_true", help="Skip the from-scratch trainings (recipes only).")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="Train from scratch for these seeds only (comma-separated; default: every seed).")
    p.add_argument("--rounds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="Train from scratch for these rounds only (comma-separated; default: every finished round).")
    p.add_argument("--scratch-iters", type=int, default=None,
                   help="Iterations of the from-scratch trainings (default: the first version's), e.g. as many as "
                        "the live chain spent up to that round; the decay steps keep their fractions.")
    p.add_argument("--mask-refine", type=float, default=None,
                   help="Evaluate with this edge-guided refinement instead of the simulation's (0: off).")
    p.add_argument("--mask-rescore", action=argparse.BooleanOptionalAction, default=None,
                   help="Evaluate with (or without) mask-quality rescoring instead of as the simulation did.")
    args = p.parse_args(argv)
    try:
        [parse_recipe(r) for r in args.recipe]
    except ValueError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (Path(args.simulation) / "selections.json").is_file():
        print(f"no simulation in {args.simulation}: run shoeseg al simulate first (see this module's docstring)")
        return
    if not args.report_only:
        if not (args.data and args.images):
            p.error("--data and --images are needed to train (or pass --report-only)")
        if args.recipe:
            train_recipes(args)
        if not args.no_scratch:
            train_from_scratch(args)
    print(report(args))
    if args.recipe or (Path(args.out) / "recipes.csv").is_file():
        print()
        print(report_recipes(args))


if __name__ == "__main__":
    main()
