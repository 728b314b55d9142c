"""Offline active-learning simulation on a dataset that is already fully labelled.

The labels of the pool are hidden and revealed only when a strategy picks an image, which is
what a person labelling in Label Studio would do. For each strategy:

1. A fixed test split is set aside (the same for every strategy).
2. The labelled set starts with the same ``start`` images for every strategy.
3. Each round: train (round 0 from the initial weights, later rounds fine-tune the previous
   round's checkpoint), evaluate mask and box AP on the test split, score the unlabelled pool
   with the strategy (:func:`shoeseg.active_learning.score_images`) and move the ``batch``
   most informative images (lowest scores) into the labelled set.

Round 0 is the same for every strategy (same images, same seed), so it is trained once and shared.
Results go to ``simulation.csv`` (one row per strategy and round: ``strategy, round, n_labelled,
segm_AP, segm_AP50, bbox_AP, seconds``), ``simulation.png`` (mask AP against the number of
labelled images, one line per strategy) and ``selections.json`` (the images each round added).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoeseg.active_learning import check_strategy, rank, score_images
from via_tools.files import atomic_path, atomic_write_text
from via_tools.model import AnnotationSet, ImageRecord

log = logging.getLogger(__name__)

CSV_COLUMNS = ("strategy", "round", "n_labelled", "segm_AP", "segm_AP50", "bbox_AP", "seconds")


@dataclass
class SimulationConfig:
    """What to simulate.

    Args:
        strategies: names from :data:`shoeseg.active_learning.STRATEGIES`.
        start: labelled images before the first round.
        batch: images labelled per round.
        rounds: trainings per strategy (round 0 trains on the ``start`` images).
        iters: training iterations per round.
        test_frac: fraction of the images held out for evaluation.
        seed: seeds the split, the start set, the training and the ``random`` strategy's ties.
        min_size / max_size: the model's resize range (small values keep CPU runs short).
        weights: first model: ``auto`` (COCO R50-FPN when it can be had, else ImageNet lite2-fpn), ``coco``, ``imagenet``, ``none`` (random init) or a checkpoint path.
        device: ``auto``, ``cpu`` or ``cuda``.
        ims_per_batch: images per training step.
        base_lr: learning rate.
        score_batch: images per forward pass when scoring the pool.
        prescale: resize every image (and its polygons) once so that it fits ``min_size``/``max_size``, as
            the model would resize it anyway; masks are then pasted, traced and scored at that size,
            which makes evaluation and scoring several times faster on a CPU. AP is measured at that size.
        detections_per_img: candidates kept per image at evaluation and scoring (torchvision keeps 100; a
            shoe photo has a handful of shoes, and the mask head's cost grows with this number).
        roi_batch_size_per_image: ROIs per image for the box head during training (the study used 512).
        train_overrides: further :class:`shoeseg.train.TrainConfig` fields (``roi_batch_size_per_image``...).
        keep_checkpoints: keep every round's checkpoint (they are large) instead of only the last.
    """

    strategies: Sequence[str] = ("random", "least_confidence")
    start: int = 8
    batch: int = 8
    rounds: int = 3
    iters: int = 50
    test_frac: float = 0.3
    seed: int = 0
    min_size: int = 256
    max_size: int = 384
    weights: str = "auto"
    device: str = "auto"
    ims_per_batch: int = 2
    base_lr: float = 0.0025
    score_batch: int = 4
    prescale: bool = True
    detections_per_img: int = 20
    roi_batch_size_per_image: int = 512
    keep_checkpoints: bool = False
    train_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.strategies = [check_strategy(s) for s in self.strategies]
        if not self.strategies:
            raise ValueError("at least one strategy is needed")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"a strategy is listed twice: {self.strategies}")
        for name in ("start", "batch", "rounds", "iters", "ims_per_batch", "score_batch", "detections_per_img",
                     "roi_batch_size_per_image"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.test_frac < 1.0:
            raise ValueError(f"test_frac must be in (0, 1), got {self.test_frac}")


@dataclass
class SimulationResult:
    """What :func:`run_simulation` wrote: the rows and the paths of the CSV, the plot and the selections."""

    rows: list[dict[str, Any]]
    csv_path: Path
    plot_path: Path
    selections_path: Path


def split_pool(ds: AnnotationSet, *, test_frac: float, seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """A seeded ``(pool, test)`` split of the images that have at least one instance.

    Example:
        >>> pool, test = split_pool(ds, test_frac=0.3, seed=0)  # doctest: +SKIP
    """
    images = [im for im in ds.images if im.instances]
    dropped = len(ds.images) - len(images)
    if dropped:
        log.warning("%d of %d images have no instance and are left out of the simulation", dropped, len(ds.images))
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_frac * len(images)))
    test = [images[i] for i in order[:n_test]]
    pool = [images[i] for i in order[n_test:]]
    return pool, test


def _subset(ds: AnnotationSet, images: Sequence[ImageRecord]) -> AnnotationSet:
    return AnnotationSet(images=list(images), labels=list(ds.labels), source_format=ds.source_format)


def prescale_dataset(
    ds: AnnotationSet, *, images_dir: Path, out_dir: Path, min_size: int, max_size: int
) -> tuple[AnnotationSet, Path]:
    """A copy of ``ds`` whose images are resized to the model's input size, written under ``out_dir``.

    The scale of each image is ``min(min_size / shorter side, max_size / longer side, 1)`` (the model's own
    resize rule, never enlarging); polygons are scaled by the same factor. Files already there are reused.

    Example:
        >>> small, small_dir = prescale_dataset(ds, images_dir=Path("images"), out_dir=Path("runs/al/images-256"),
        ...                                     min_size=256, max_size=384)  # doctest: +SKIP
    """
    from PIL import Image

    from via_tools.images import read_image
    from via_tools.model import Region

    out_images: list[ImageRecord] = []
    for im in ds.images:
        src = images_dir / im.file_name
        dst = out_dir / im.file_name
        arr = read_image(src)
        h, w = arr.shape[:2]
        scale = min(min_size / min(h, w), max_size / max(h, w), 1.0)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if not dst.is_file():
            jpeg = dst.suffix.lower() in (".jpg", ".jpeg")
            small = Image.fromarray(arr).resize((new_w, new_h), Image.BILINEAR)
            with atomic_path(dst) as tmp:
                small.save(tmp, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {}))
        sx, sy = new_w / w, new_h / h
        regions = [
            Region(label=r.label, polygons=tuple(p * (sx, sy) for p in r.polygons), attributes=dict(r.attributes),
                   region_id=r.region_id)
            for r in im.instances
        ]
        out_images.append(ImageRecord(file_name=im.file_name, width_px=new_w, height_px=new_h, regions=regions,
                                      image_id=im.image_id))
    return AnnotationSet(images=out_images, labels=list(ds.labels), source_format=ds.source_format), out_dir


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Writes the simulation rows as CSV (atomically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Reads rows written by :func:`write_csv` back, numbers as numbers."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    "strategy": r["strategy"],
                    "round": int(r["round"]),
                    "n_labelled": int(r["n_labelled"]),
                    **{k: float(r[k]) for k in ("segm_AP", "segm_AP50", "bbox_AP", "seconds")},
                }
            )
    return rows


def plot_curves(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "Active learning") -> Path:
    """Mask AP (and mask AP50) against the number of labelled images, one line per strategy.

    Example:
        >>> plot_curves(read_csv("out/simulation.csv"), Path("out/simulation.png"))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    for metric, ax in zip(("segm_AP", "segm_AP50"), axes, strict=True):
        for s in strategies:
            pts = sorted((r["n_labelled"], r[metric]) for r in rows if r["strategy"] == s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
        ax.set_xlabel("labelled images")
        ax.set_ylabel(f"{'mask AP' if metric == 'segm_AP' else 'mask AP50'} on the test split")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # the format from the target's extension, PNG without one
            fig.savefig(tmp, dpi=120, format=path.suffix[1:].lower() or "png")
    finally:
        plt.close(fig)
    return path


class _Round:
    """One trained model: its checkpoint, metrics and the time it took."""

    def __init__(self, checkpoint: Path, metrics: dict[str, float], seconds: float):
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.seconds = seconds


def _train_config(cfg: SimulationConfig, *, init_from: Path | None, seed: int):
    from shoeseg.train import TrainConfig

    kwargs: dict[str, Any] = dict(
        iters=cfg.iters,
        ims_per_batch=cfg.ims_per_batch,
        roi_batch_size_per_image=cfg.roi_batch_size_per_image,
        base_lr=cfg.base_lr,
        warmup_iters=max(1, min(cfg.iters // 5, 100)),
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        device=cfg.device,
        weights=cfg.weights,
        init_from=str(init_from) if init_from is not None else None,
        seed=seed,
        log_period=max(1, min(20, cfg.iters // 5)),
        progress_bar=False,
    )
    kwargs.update(cfg.train_overrides)
    return TrainConfig(**kwargs)


def _train_and_evaluate(
    cfg: SimulationConfig,
    *,
    full: AnnotationSet,
    labelled: Sequence[ImageRecord],
    test: Sequence[ImageRecord],
    images_dir: Path,
    run_dir: Path,
    init_from: Path | None,
    seed: int,
    bar,
) -> tuple[_Round, Any]:
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor
    from shoeseg.train import train

    t0 = time.perf_counter()

    def progress(info: dict) -> None:
        loss = (info.get("losses") or {}).get("total_loss")
        if bar is not None:
            bar.set_postfix_str(f"train {info.get('iteration')}/{info.get('max_iter')}"
                                + (f" loss {loss:.3f}" if isinstance(loss, float) else ""))

    result = train(
        _train_config(cfg, init_from=init_from, seed=seed),
        dataset=_subset(full, labelled),
        images_dir=images_dir,
        out_dir=run_dir,
        progress=progress,
    )
    if bar is not None:
        bar.set_postfix_str("evaluate")
    predictor = Predictor.from_checkpoint(result.checkpoint, device=cfg.device)
    predictor.model.roi_heads.detections_per_img = cfg.detections_per_img
    ev = evaluate(predictor, _subset(full, test), images_dir=images_dir, device=cfg.device, with_losses=False)
    metrics = {k: float(ev.metrics.get(k, 0.0) or 0.0) for k in ("segm_AP", "segm_AP50", "bbox_AP")}
    return _Round(Path(result.checkpoint), metrics, time.perf_counter() - t0), predictor


def _score_pool(cfg, strategy, predictor, pool, images_dir, bar) -> list[float]:
    from via_tools.images import read_image

    scores: list[float] = []
    for i in range(0, len(pool), cfg.score_batch):
        chunk = pool[i : i + cfg.score_batch]
        images = [read_image(images_dir / im.file_name) for im in chunk]
        scores += score_images(strategy, predictor, images, task_ids=[im.file_name for im in chunk])
        if bar is not None:
            bar.set_postfix_str(f"score {min(i + cfg.score_batch, len(pool))}/{len(pool)}")
    return scores


def run_simulation(
    cfg: SimulationConfig,
    *,
    dataset: AnnotationSet,
    images_dir: str | Path,
    out_dir: str | Path,
    show_progress: bool = True,
) -> SimulationResult:
    """Runs the active-learning loop offline for every strategy of ``cfg`` and writes CSV + plot.

    Args:
        cfg: strategies, start set, batch, rounds, iterations, model size.
        dataset: a fully labelled dataset (``via_tools.io.load``).
        images_dir: where ``dataset``'s image files are.
        out_dir: receives ``simulation.csv``, ``simulation.png``, ``selections.json`` and ``runs/``.
        show_progress: a tqdm bar over strategies and rounds.

    Returns:
        The rows and the files written.

    Raises:
        ValueError: when the pool is too small for ``start + batch * (rounds - 1)`` images.

    Example:
        >>> from via_tools.io import load
        >>> ds = load("../shared/datasets/shoes/via_project.json")  # doctest: +SKIP
        >>> cfg = SimulationConfig(strategies=["random", "least_confidence"], iters=40, weights="none")
        >>> run_simulation(cfg, dataset=ds, images_dir="../shared/datasets/shoes/images",
        ...                out_dir="runs/al")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    images_dir = Path(images_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for im in dataset.images:
        if not (images_dir / im.file_name).is_file():
            raise FileNotFoundError(f"image {im.file_name!r} of the dataset is not in {images_dir}")

    if cfg.prescale:
        log.info("resizing the images to the model's input size (%d/%d) once", cfg.min_size, cfg.max_size)
        dataset, images_dir = prescale_dataset(
            dataset, images_dir=images_dir, out_dir=out_dir / f"images-{cfg.min_size}-{cfg.max_size}",
            min_size=cfg.min_size, max_size=cfg.max_size,
        )
    pool0, test = split_pool(dataset, test_frac=cfg.test_frac, seed=cfg.seed)
    needed = cfg.start + cfg.batch * (cfg.rounds - 1)
    if needed > len(pool0):
        raise ValueError(
            f"{cfg.rounds} rounds from {cfg.start} images in batches of {cfg.batch} need {needed} images, "
            f"but the pool has {len(pool0)} ({len(test)} of {len(pool0) + len(test)} images with instances are "
            f"held out for testing)"
        )
    log.info("simulation: %d pool images, %d test images, strategies %s", len(pool0), len(test), cfg.strategies)

    csv_path, plot_path, sel_path = out_dir / "simulation.csv", out_dir / "simulation.png", out_dir / "selections.json"
    rows: list[dict[str, Any]] = []
    selections: dict[str, Any] = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "train_overrides"},
        "test": [im.file_name for im in test],
        "start": [im.file_name for im in pool0[: cfg.start]],
        "rounds": {},
    }

    def record(strategy: str, r: int, n: int, rnd: _Round) -> None:
        rows.append({"strategy": strategy, "round": r, "n_labelled": n, **rnd.metrics, "seconds": rnd.seconds})
        write_csv(rows, csv_path)
        atomic_write_text(sel_path, json.dumps(selections, indent=1))

    bar = tqdm(total=len(cfg.strategies) * cfg.rounds, desc="active learning", unit="round", disable=not show_progress)
    shared0: _Round | None = None
    shared0_predictor = None
    try:
        for strategy in cfg.strategies:
            labelled = list(pool0[: cfg.start])
            unlabelled = list(pool0[cfg.start :])
            prev: _Round | None = None
            predictor = None
            for r in range(cfg.rounds):
                bar.set_description(f"{strategy} round {r}")
                if r == 0 and shared0 is not None:
                    rnd, predictor = shared0, shared0_predictor
                else:
                    run_dir = out_dir / "runs" / ("round0" if r == 0 else f"{strategy}/round{r}")
                    rnd, predictor = _train_and_evaluate(
                        cfg, full=dataset, labelled=labelled, test=test, images_dir=images_dir, run_dir=run_dir,
                        init_from=None if prev is None else prev.checkpoint, seed=cfg.seed + r, bar=bar,
                    )
                    if r == 0:
                        shared0, shared0_predictor = rnd, predictor
                    elif prev is not None and not cfg.keep_checkpoints and prev.checkpoint != shared0.checkpoint:
                        _drop_run(prev.checkpoint)
                log.info("%s round %d: %d labelled, segm AP %.2f", strategy, r, len(labelled), rnd.metrics["segm_AP"])
                if r < cfg.rounds - 1:
                    t0 = time.perf_counter()
                    scores = _score_pool(cfg, strategy, predictor, unlabelled, images_dir, bar)
                    order = rank(scores, keys=[im.file_name for im in unlabelled], seed=cfg.seed)
                    picked = [unlabelled[i] for i in order[: cfg.batch]]
                    picked_set = {id(im) for im in picked}
                    selections["rounds"].setdefault(strategy, []).append(
                        {"round": r, "added": [im.file_name for im in picked],
                         "scores": [round(scores[i], 4) for i in order[: cfg.batch]]}
                    )
                    rnd = _Round(rnd.checkpoint, rnd.metrics, rnd.seconds + time.perf_counter() - t0)
                    record(strategy, r, len(labelled), rnd)
                    labelled += picked
                    unlabelled = [im for im in unlabelled if id(im) not in picked_set]
                else:
                    record(strategy, r, len(labelled), rnd)
                prev = rnd
                bar.update(1)
            if prev is not None and not cfg.keep_checkpoints and prev.checkpoint != shared0.checkpoint:
                _drop_run(prev.checkpoint)
    finally:
        bar.close()
    plot_curves(rows, plot_path, title=f"Active learning on {len(pool0) + len(test)} images ({cfg.iters} iters/round)")
    return SimulationResult(rows=rows, csv_path=csv_path, plot_path=plot_path, selections_path=sel_path)


def _drop_run(checkpoint: Path) -> None:
    """Deletes a finished round's checkpoint file (hundreds of MB each); its metrics stay in the CSV."""
    try:
        Path(checkpoint).unlink(missing_ok=True)
    except OSError as e:  # pragma: no cover - best effort
        log.warning("could not delete %s: %s", checkpoint, e)


__all__ = [
    "CSV_COLUMNS",
    "SimulationConfig",
    "SimulationResult",
    "plot_curves",
    "read_csv",
    "run_simulation",
    "split_pool",
    "write_csv",
]
