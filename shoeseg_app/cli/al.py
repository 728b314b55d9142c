"""Commands of the `al` area: the next batch to label, and the offline simulation of the loop."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from shoeseg.active_learning import POOL_STRATEGIES, STRATEGIES

al_app = typer.Typer(
    help="Active learning: which images to label next, and offline simulations of the loop.",
    no_args_is_help=True,
)


def _strategies(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += [s.strip() for s in v.split(",") if s.strip()]
    return out


@al_app.command("next")
def next_batch(
    project: int = typer.Option(..., "--project", help="Label Studio project id."),
    k: int = typer.Option(10, "--k", min=1, help="How many tasks to print."),
    url: str = typer.Option(None, "--url", envvar="LABEL_STUDIO_URL", help="Label Studio URL."),
    api_key: str = typer.Option(None, "--api-key", envvar="LABEL_STUDIO_API_KEY", help="Label Studio API key."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """Prints the next K unlabelled tasks, most informative (lowest prediction score) first.

    Example: shoeseg al next --project 3 --k 8 --url http://localhost:8080 --api-key $TOKEN
    """
    import json

    from shoeseg_services.ls_api import connect, project_model_version, select_next, task_score

    if not url or not api_key:
        raise typer.BadParameter("give --url and --api-key (or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    client = connect(url, api_key)
    model_version = project_model_version(client, project)
    tasks = select_next(client, project, k)
    if not tasks:
        typer.echo(f"project {project}: no unlabelled task left")
        return
    if not as_json:
        typer.echo(f"{'task':>8}  {'score':>7}  image")
    for t in tasks:
        score = task_score(t, model_version)
        image = next(iter((t.data or {}).values()), "")
        if as_json:
            typer.echo(json.dumps({"task": t.id, "score": score, "image": image, "model_version": model_version}))
        else:
            typer.echo(f"{t.id:>8}  {'-' if score is None else f'{score:.4f}':>7}  {image}")


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError as e:
        raise typer.BadParameter(f"--seeds {value!r}: expected a comma list of integers such as 0,1,2") from e
    if not seeds:
        raise typer.BadParameter("--seeds needs at least one seed")
    return seeds


def _echo_answer(rows: list[dict]) -> None:
    from shoeseg.simulation.summary import (
        format_label_shares,
        format_paired_differences,
        format_summary,
        labels_to_reach,
        paired_differences,
    )

    typer.echo(format_summary(rows))
    typer.echo("")
    if any(r["strategy"] == "random" for r in rows):
        typer.echo(format_label_shares(labels_to_reach(rows)))
        typer.echo("")
        typer.echo(format_label_shares(labels_to_reach(rows, interpolate=True)))
        diffs = format_paired_differences(paired_differences(rows))
        if diffs:
            typer.echo("")
            typer.echo(diffs)
    else:
        typer.echo("no random rows: the labels needed to reach random's final mask AP cannot be computed")


def _images_dir(data: Path, ds) -> Path:
    """images/ beside --data, else the one folder a YOLO set's images were read from, else --data's folder."""
    if (data.parent / "images").is_dir():
        return data.parent / "images"
    folders = set()
    for im in ds.images:
        read_as = im.extra.get("yolo_image")
        if not read_as or not str(read_as).replace("\\", "/").endswith(im.file_name):
            break
        folders.add(str(read_as)[: len(str(read_as)) - len(im.file_name)])
    else:
        if len(folders) == 1:
            return Path(folders.pop())
    return data.parent


@al_app.command("simulate")
def simulate(
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False,
                              help="A labelled dataset (VIA, COCO, Label Studio, a YOLO data.yaml, ...)."),
    images: Path = typer.Option(None, "--images", file_okay=False,
                                help="Image folder (default: images/ beside --data, else the folder a YOLO set's "
                                "images were read from, else --data's folder)."),
    strategy: list[str] = typer.Option(["random", "least_confidence"], "--strategy", "-s",
                                       help="Strategy, repeatable or a comma list: "
                                       + ", ".join([*STRATEGIES, *POOL_STRATEGIES]) + "."),
    seeds: str = typer.Option("0", "--seeds", help="Comma list of seeds, one simulation each (start set, training, "
                              "random); the test split stays the same."),
    start: int = typer.Option(8, "--start", min=1, help="Labelled images before the first round."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images labelled per round."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Trainings per strategy and seed."),
    test_frac: float = typer.Option(0.3, "--test-frac", help="Fraction of images held out for evaluation."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seeds the test split (fixed across seeds)."),
    test_size: int = typer.Option(None, "--test-size", min=1, help="Hold out at most this many images."),
    pool_size: int = typer.Option(None, "--pool-size", min=1,
                                  help="Draw the pool from at most this many images (the same for every seed)."),
    profile: str = typer.Option("cpu", "--profile", help="Training recipe: cpu, study, gpu, or auto (from the device)."),
    iters: int = typer.Option(None, "--iters", min=1, help="Round 0's iterations (default: the profile's)."),
    round_iters: int = typer.Option(None, "--round-iters", min=1,
                                    help="Iterations of every later round (default: 12 per new labelled image, at "
                                    "least 40, at most --iters)."),
    ims_per_batch: int = typer.Option(None, "--ims-per-batch", min=1, help="Images per training step."),
    lr: float = typer.Option(None, "--lr", "--base-lr", help="Base learning rate."),
    roi_batch: int = typer.Option(None, "--roi-batch", min=1, help="ROIs per image for the box head in training."),
    min_size: int = typer.Option(None, "--min-size", min=32, help="Shorter image side the model resizes to."),
    max_size: int = typer.Option(None, "--max-size", min=32, help="Longest image side the model allows."),
    detections: int = typer.Option(None, "--detections", min=1,
                                   help="Detections kept per image (evaluation and scoring)."),
    box_nms: float = typer.Option(None, "--box-nms", min=0.0, max=1.0,
                                  help="The box head's NMS IoU threshold (evaluation and scoring; default: the "
                                  "model's, 0.4; runs before it was a setting used 0.5)."),
    mask_refine: float = typer.Option(None, "--mask-refine", min=0.0,
                                      help="Mask refinement's strength in evaluation and scoring (0: off; default: "
                                      "what is served)."),
    mask_rescore: bool = typer.Option(None, "--mask-rescore/--no-mask-rescore",
                                      help="Rescore detections by mask quality in evaluation and scoring (default: "
                                      "what is served)."),
    weights: str = typer.Option(None, "--weights", help="Round 0's weights: auto (COCO R50-FPN, else ImageNet "
                                "lite2-fpn), coco, imagenet, none or a checkpoint (default: the profile's)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out: finished rows are kept."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep every round's checkpoint."),
    out: Path = typer.Option(Path("runs/al-simulation"), "--out", file_okay=False, help="Output folder."),
) -> None:
    """Runs the active-learning loop offline on a labelled dataset; writes simulation.csv, selections.json and
    simulation.png, then prints how many labels each strategy needed to reach random's final mean mask AP.

    Example: shoeseg al simulate --data ../shared/datasets/shoes/via_project.json -s random,least_confidence
    --seeds 0,1,2 --start 8 --batch 8 --rounds 4 --profile cpu --out runs/al
    """
    from shoeseg.predict import OutputSettings
    from shoeseg.simulation.config import SimulationConfig
    from shoeseg.simulation.loop import run_simulation
    from shoeseg.train import TrainConfig
    from via_tools.io import load

    try:
        train = TrainConfig.for_profile(
            profile, device=device, iters=iters, ims_per_batch=ims_per_batch, base_lr=lr,
            roi_batch_size_per_image=roi_batch, min_size=min_size, max_size=max_size,
            box_detections_per_img=detections, box_nms_thresh=box_nms, weights=weights,
        )
        served = OutputSettings()
        outputs = {"mask_refine": served.mask_refine if mask_refine is None else mask_refine,
                   "mask_rescore": served.mask_rescore if mask_rescore is None else mask_rescore}
        cfg = SimulationConfig(
            strategies=_strategies(strategy), seeds=_seeds(seeds), start=start, batch=batch, rounds=rounds,
            test_frac=test_frac, split_seed=split_seed, test_size=test_size, pool_size=pool_size,
            round_iters=round_iters, keep_checkpoints=keep_checkpoints,
            train=train, outputs=outputs,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    ds = load(data)
    if images is None:
        images = _images_dir(data, ds)
    try:
        result = run_simulation(cfg, dataset=ds, images_dir=images, out_dir=out, resume=resume,
                                show_progress=not os.environ.get("CI"))
    except (FileExistsError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    _echo_answer(result.rows)
    typer.echo(f"\nwrote {result.csv_path}, {result.plot_path} and {result.selections_path}")


@al_app.command("plot")
def plot(
    csv_files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="simulation.csv files to combine."),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="The plot (PNG); a combined CSV is written beside it."),
    title: str = typer.Option("Active learning", "--title", help="The plot's title."),
) -> None:
    """Combines the CSVs of several simulations (same dataset and settings) into one table and one plot (mean
    and min-max band over seeds per strategy), and prints the labels each strategy needed to reach random's
    final mean mask AP.

    Example: shoeseg al plot runs/a/simulation.csv runs/b/simulation.csv --out docs/al.png
    """
    from shoeseg.simulation.plot import plot_curves
    from shoeseg.simulation.results import read_csv, write_csv

    rows, seen = [], set()
    for f in csv_files:
        for r in read_csv(f):
            key = (r["strategy"], r["seed"], r["round"])
            if key in seen:
                raise typer.BadParameter(f"{f}: strategy {r['strategy']!r} seed {r['seed']} round {r['round']} is "
                                         "already in an earlier file")
            seen.add(key)
            rows.append(r)
    write_csv(rows, out.with_suffix(".csv"))
    plot_curves(rows, out, title=title)
    _echo_answer(rows)
    typer.echo(f"\nwrote {out} and {out.with_suffix('.csv')} ({len(rows)} rows)")


def register(app: typer.Typer) -> None:
    """Adds this area's commands to the root app."""
    app.add_typer(al_app, name="al")
