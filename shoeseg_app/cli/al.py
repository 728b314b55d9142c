"""Commands of the `al` area: the next batch to label, and the offline simulation of the loop."""

from __future__ import annotations

import os
from pathlib import Path

import typer

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

    from via_tools.ls_api import connect, select_next, task_score

    if not url or not api_key:
        raise typer.BadParameter("give --url and --api-key (or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    client = connect(url, api_key)
    model_version = getattr(client.projects.get(id=project), "model_version", None) or None
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


@al_app.command("simulate")
def simulate(
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help="A labelled dataset (VIA, COCO, ...)."),
    images: Path = typer.Option(None, "--images", file_okay=False,
                                help="Image folder (default: images/ beside --data, else --data's folder)."),
    strategy: list[str] = typer.Option(["random", "least_confidence"], "--strategy", "-s",
                                       help="Strategy, repeatable or a comma list: random, least_confidence, "
                                       "flip_consistency, entropy."),
    start: int = typer.Option(8, "--start", min=1, help="Labelled images before the first round."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images labelled per round."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Trainings per strategy."),
    iters: int = typer.Option(50, "--iters", min=1, help="Training iterations per round."),
    min_size: int = typer.Option(256, "--min-size", min=32, help="Shorter image side the model resizes to."),
    max_size: int = typer.Option(384, "--max-size", min=32, help="Longest image side the model allows."),
    test_frac: float = typer.Option(0.3, "--test-frac", help="Fraction of images held out for evaluation."),
    lr: float = typer.Option(0.0025, "--lr", help="Base learning rate."),
    roi_batch: int = typer.Option(512, "--roi-batch", min=1, help="ROIs per image for the box head in training."),
    detections: int = typer.Option(20, "--detections", min=1, help="Candidates kept per image (eval and scoring)."),
    weights: str = typer.Option("auto", "--weights", help="First model: auto (COCO R50-FPN, else ImageNet lite2-fpn), coco, imagenet, none or a checkpoint."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seeds the split, start set and training."),
    out: Path = typer.Option(Path("runs/al-simulation"), "--out", file_okay=False, help="Output folder."),
) -> None:
    """Runs the active-learning loop offline on a labelled dataset; writes simulation.csv and simulation.png.

    Example: shoeseg al simulate --data ../shared/datasets/shoes/via_project.json -s random,least_confidence
    --start 8 --batch 8 --rounds 3 --iters 40 --weights none --out runs/al
    """
    from shoeseg.al_simulate import SimulationConfig, run_simulation
    from via_tools.io import load

    if images is None:
        images = data.parent / "images" if (data.parent / "images").is_dir() else data.parent
    try:
        cfg = SimulationConfig(
            strategies=_strategies(strategy), start=start, batch=batch, rounds=rounds, iters=iters,
            min_size=min_size, max_size=max_size, test_frac=test_frac, weights=weights, device=device, seed=seed,
            base_lr=lr, roi_batch_size_per_image=roi_batch, detections_per_img=detections,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    ds = load(data)
    result = run_simulation(cfg, dataset=ds, images_dir=images, out_dir=out, show_progress=not os.environ.get("CI"))
    typer.echo(f"{'strategy':<18} {'round':>5} {'labelled':>8} {'segm_AP':>8} {'segm_AP50':>9} {'bbox_AP':>8} {'s':>7}")
    for r in result.rows:
        typer.echo(
            f"{r['strategy']:<18} {r['round']:>5} {r['n_labelled']:>8} {r['segm_AP']:>8.4f} {r['segm_AP50']:>9.4f} "
            f"{r['bbox_AP']:>8.4f} {r['seconds']:>7.1f}"
        )
    typer.echo(f"wrote {result.csv_path}, {result.plot_path} and {result.selections_path}")


@al_app.command("plot")
def plot(
    csv_files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="simulation.csv files to combine."),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="The plot (PNG); a combined CSV is written beside it."),
    title: str = typer.Option("Active learning", "--title", help="The plot's title."),
) -> None:
    """Combines the CSVs of several simulations (same dataset and settings) into one table and one plot.

    Example: shoeseg al plot runs/a/simulation.csv runs/b/simulation.csv --out docs/al.png
    """
    from shoeseg.al_simulate import plot_curves, read_csv, write_csv

    rows, seen = [], set()
    for f in csv_files:
        for r in read_csv(f):
            if (r["strategy"], r["round"]) in seen:
                raise typer.BadParameter(f"{f}: strategy {r['strategy']!r} round {r['round']} is already in an earlier file")
            seen.add((r["strategy"], r["round"]))
            rows.append(r)
    write_csv(rows, out.with_suffix(".csv"))
    plot_curves(rows, out, title=title)
    typer.echo(f"wrote {out} and {out.with_suffix('.csv')} ({len(rows)} rows)")


def register(app: typer.Typer) -> None:
    """Adds this area's commands to the root app."""
    app.add_typer(al_app, name="al")
