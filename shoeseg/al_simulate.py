"""Offline active-learning simulation on a dataset that is already fully labelled.

The labels of the pool are hidden and revealed only when a strategy picks an image, which is
what a person labelling in Label Studio would do. For every seed and strategy:

1. A fixed test split is set aside (``split_seed``; the same for every seed and strategy).
2. The labelled set starts with ``start`` images drawn by the seed (the same for every strategy of a seed,
   different between seeds).
3. Each round: train, evaluate mask and box AP on the test split, score the unlabelled pool with the
   strategy (:func:`shoeseg.active_learning.score_images`, or the pool strategies'
   :func:`shoeseg.active_learning.diverse_scores`) and move the ``batch`` most informative images (lowest
   scores) into the labelled set.

Training uses one :class:`shoeseg.train.TrainConfig`, the one ``shoeseg train`` and the worker fill with
``TrainConfig.for_profile(profile, **overrides)``. Round 0 runs its full schedule from its weights; every later
round warm-starts from the previous round's checkpoint (``init_from``) with the worker's short schedule
(:func:`shoeseg.schedule.fine_tune_config`: 4 iterations per new labelled image, at least 40, at most the full
schedule), unless ``round_iters`` fixes it.

Round 0 is the same for every strategy of a seed (same images, same training seed), so it is trained once per
seed. Results go to ``out_dir``:

* ``simulation.csv``: one row per strategy, seed and round (:data:`CSV_COLUMNS`), appended and flushed as
  each round finishes;
* ``selections.json``: the settings, the test split, each seed's start set, the round-0 metrics and which
  images every round added, with their scores (what ``resume`` continues from);
* ``simulation.png``: mask AP and mask AP50 against labelled images, the mean over seeds per strategy with a
  min-max band;
* ``runs/seed<S>/...``: checkpoints; only those a resumed run still needs are kept (``keep_checkpoints``
  keeps all).

:func:`labels_to_reach` answers "how many labels does a strategy need to reach random's final mean mask AP",
as a share of random's labels, per seed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoeseg.active_learning import (
    POOL_STRATEGIES,
    check_simulation_strategy,
    diverse_scores,
    random_score,
    rank,
    score_images,
)
from via_tools.files import atomic_path, atomic_write_text
from via_tools.model import AnnotationSet, ImageRecord

if TYPE_CHECKING:  # pragma: no cover
    from shoeseg.train import TrainConfig

log = logging.getLogger(__name__)

CSV_COLUMNS = ("strategy", "seed", "round", "n_labelled", "segm_AP", "segm_AP50", "bbox_AP", "seconds")
METRICS = ("segm_AP", "segm_AP50", "bbox_AP")
#: Training seed of (simulation seed ``s``, round ``r``): ``TrainConfig.seed + SEED_STRIDE * s + r``.
SEED_STRIDE = 1000


def _default_train() -> TrainConfig:
    from shoeseg.train import TrainConfig

    return TrainConfig.for_profile("cpu")


@dataclass
class SimulationConfig:
    """What to simulate: the simulation's own settings and one training configuration.

    Args:
        strategies: names from :data:`shoeseg.active_learning.STRATEGIES` or ``POOL_STRATEGIES``.
        seeds: one simulation per seed: it draws the start set, seeds training (``train.seed + 1000 * seed +
            round``) and the ``random`` strategy. The test split does not depend on it.
        start: labelled images before the first round.
        batch: images labelled per round.
        rounds: trainings per strategy and seed (round 0 trains on the ``start`` images).
        test_frac: fraction of the images held out for evaluation.
        split_seed: seeds the test split (fixed across seeds and strategies).
        test_size: hold out at most this many images (``None``: ``test_frac`` of them); with ``pool_size``, what
            makes a large dataset's simulation affordable on a CPU, where every round scores the whole pool.
        pool_size: draw the pool from at most this many of the remaining images (``None``: all); the same images
            for every seed and strategy.
        round_iters: iterations of every round after the first; ``None``: the worker's rule
            (:func:`shoeseg.schedule.round_iters` of ``train.iters`` and ``batch``).
        score_batch: images per forward pass when scoring the pool.
        prescale: resize every image (and its polygons) once so that it fits ``train.min_size``/``max_size``, as
            the model would resize it anyway; masks are then pasted, traced and scored at that size, which makes
            evaluation and scoring several times faster on a CPU. AP is measured at that size.
        keep_checkpoints: keep every round's checkpoint (they are large) instead of only those still needed.
        train: the training recipe (``TrainConfig.for_profile(profile, **overrides)``); round 0 uses it as it is
            (its ``iters``, its ``weights`` or ``init_from``), later rounds fine-tune with a short schedule.
            Its ``box_detections_per_img`` is also what evaluation and scoring keep per image.
    """

    strategies: Sequence[str] = ("random", "least_confidence")
    seeds: Sequence[int] = (0,)
    start: int = 8
    batch: int = 8
    rounds: int = 3
    test_frac: float = 0.3
    split_seed: int = 0
    test_size: int | None = None
    pool_size: int | None = None
    round_iters: int | None = None
    score_batch: int = 4
    prescale: bool = True
    keep_checkpoints: bool = False
    train: TrainConfig = field(default_factory=_default_train)

    def __post_init__(self) -> None:
        from shoeseg.train import TrainConfig

        self.strategies = [check_simulation_strategy(s) for s in self.strategies]
        if not self.strategies:
            raise ValueError("at least one strategy is needed")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"a strategy is listed twice: {self.strategies}")
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        for name in ("start", "batch", "rounds", "score_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("test_size", "pool_size"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1 (or None: no cap), got {getattr(self, name)}")
        if self.round_iters is not None and int(self.round_iters) < 1:
            raise ValueError(f"round_iters must be at least 1, got {self.round_iters}")
        if not 0.0 < self.test_frac < 1.0:
            raise ValueError(f"test_frac must be in (0, 1), got {self.test_frac}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a shoeseg.train.TrainConfig, got {type(self.train).__name__}")

    def train_config(self, *, seed: int, round: int, init_from: str | Path | None = None) -> TrainConfig:
        """The training configuration of one round: ``train`` for round 0, a short warm start after it.

        Example:
            >>> cfg = SimulationConfig(batch=8)  # doctest: +SKIP
            >>> cfg.train_config(seed=1, round=2, init_from="r1/model.pt").iters  # doctest: +SKIP
            40
        """
        from shoeseg.schedule import fine_tune_config

        base = replace(self.train, seed=self.train.seed + SEED_STRIDE * int(seed) + int(round), progress_bar=False)
        if round > 0:
            if init_from is None:
                raise ValueError(f"round {round} fine-tunes the previous round's checkpoint: init_from is needed")
            base = fine_tune_config(base, init_from=str(init_from), new_images=self.batch, iters=self.round_iters)
        elif init_from is not None:
            base = replace(base, init_from=str(init_from))
        return replace(base, log_period=max(1, min(20, base.iters // 10 or 1)))

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (everything but strategies, seeds and
        bookkeeping), JSON-ready."""
        train = self.train.to_dict()
        for k in ("progress_bar", "log_period"):
            train.pop(k, None)
        fp = {"start": self.start, "batch": self.batch, "rounds": self.rounds, "test_frac": self.test_frac,
              "split_seed": self.split_seed, "test_size": self.test_size, "pool_size": self.pool_size,
              "round_iters": self.round_iters, "prescale": self.prescale,
              "train": train}
        return json.loads(json.dumps(fp))


@dataclass
class SimulationResult:
    """What :func:`run_simulation` wrote: every row of the CSV and the paths of the CSV, plot and selections."""

    rows: list[dict[str, Any]]
    csv_path: Path
    plot_path: Path
    selections_path: Path


# ---------------------------------------------------------------------------------------------- data


def split_pool(ds: AnnotationSet, *, test_frac: float, seed: int, test_size: int | None = None,
               pool_size: int | None = None) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """A seeded ``(pool, test)`` split of the images that have at least one instance.

    ``test_frac`` of them are held out, at most ``test_size``; the pool is the rest, at most ``pool_size`` of it
    (both drawn from the same seeded shuffle, so a cap only drops images, it never moves one between the two).

    Example:
        >>> pool, test = split_pool(ds, test_frac=0.3, seed=0)  # doctest: +SKIP
    """
    import random

    images = [im for im in ds.images if im.instances]
    dropped = len(ds.images) - len(images)
    if dropped:
        log.warning("%d of %d images have no instance and are left out of the simulation", dropped, len(ds.images))
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_frac * len(images)))
    test = [images[i] for i in order[:n_test]]
    pool = [images[i] for i in order[n_test:]]
    if test_size is not None and len(test) > test_size:
        test = test[:int(test_size)]
    if pool_size is not None and len(pool) > pool_size:
        log.info("the pool keeps %d of its %d images (pool_size)", pool_size, len(pool))
        pool = pool[:int(pool_size)]
    return pool, test


def start_set(pool: Sequence[ImageRecord], *, start: int, seed: int) -> list[ImageRecord]:
    """The ``start`` labelled images of a seed: the lowest seeded hashes of the file names (independent of the
    pool's order and of the split's shuffle).

    Example:
        >>> [im.file_name for im in start_set(pool, start=2, seed=1)]  # doctest: +SKIP
        ['img07.jpg', 'img02.jpg']
    """
    order = sorted(range(len(pool)), key=lambda i: (random_score(("start", pool[i].file_name), seed=seed), i))
    return [pool[i] for i in order[:start]]


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


# ---------------------------------------------------------------------------------------------- CSV


def _csv_values(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}
    out.setdefault("seed", 0)
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Writes simulation rows as CSV (atomically); a row without ``seed`` is seed 0."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(_csv_values(row))
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Reads rows written by :func:`write_csv` or a simulation back, numbers as numbers (a CSV from before
    seeds, without a ``seed`` column, reads as seed 0)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    "strategy": r["strategy"],
                    "seed": int(r.get("seed") or 0),
                    "round": int(r["round"]),
                    "n_labelled": int(r["n_labelled"]),
                    **{k: float(r[k]) for k in (*METRICS, "seconds")},
                }
            )
    return rows


class _CsvAppender:
    """Appends rows to the simulation CSV, each flushed to disk before the next round starts."""

    def __init__(self, path: Path, *, fresh: bool) -> None:
        if fresh:
            atomic_write_text(path, ",".join(CSV_COLUMNS) + "\n")
        self._file = open(path, "a", encoding="utf-8", newline="")  # closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=list(CSV_COLUMNS), extrasaction="ignore",
                                      lineterminator="\n")

    def append(self, row: dict[str, Any]) -> None:
        self._writer.writerow(_csv_values(row))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _existing_rows(csv_path: Path) -> list[dict[str, Any]]:
    """The rows of a simulation CSV to resume; a last line cut off by a killed process is dropped."""
    if not csv_path.is_file():
        return []
    text = csv_path.read_text(encoding="utf-8")
    if not text.strip():
        return []
    header = text.splitlines()[0].split(",")
    if tuple(header) != CSV_COLUMNS:
        raise ValueError(f"{csv_path}: columns {header} are not a simulation's ({', '.join(CSV_COLUMNS)})")
    if not text.endswith("\n"):
        log.warning("%s: dropping an unfinished last line %r", csv_path, text.rsplit("\n", 1)[-1])
        atomic_write_text(csv_path, text[: text.rfind("\n") + 1])
    return read_csv(csv_path)


# ---------------------------------------------------------------------------------------------- summaries


def summarise(rows: Sequence[dict[str, Any]], metric: str = "segm_AP") -> dict[str, list[dict[str, Any]]]:
    """Per strategy, per number of labelled images: ``mean``, ``std`` (sample, 0 with one seed), ``min``,
    ``max`` of ``metric`` over seeds, and ``n`` (seeds).

    Example:
        >>> summarise([{"strategy": "random", "n_labelled": 8, "segm_AP": 0.1},
        ...            {"strategy": "random", "n_labelled": 8, "segm_AP": 0.3}])["random"][0]["mean"]
        0.2
    """
    groups: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        groups.setdefault(r["strategy"], {}).setdefault(int(r["n_labelled"]), []).append(float(r[metric]))
    out: dict[str, list[dict[str, Any]]] = {}
    for s, by_n in groups.items():
        out[s] = [
            {"n_labelled": n, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
             "min": min(v), "max": max(v), "n": len(v)}
            for n, v in sorted(by_n.items())
        ]
    return out


@dataclass
class LabelShare:
    """How many labelled images one strategy needed to reach the baseline's final mean metric, per seed.

    Attributes:
        strategy: the strategy.
        target: the baseline's final mean metric (over its seeds).
        baseline_labels: the baseline's labelled images at its final round.
        labels: seed -> the first labelled-set size at which the seed's curve reached ``target`` (``None``: not
            reached in the rows given).
    """

    strategy: str
    target: float
    baseline_labels: int
    labels: dict[int, int | None]

    @property
    def shares(self) -> dict[int, float | None]:
        """seed -> labels needed / the baseline's labels (``None``: not reached)."""
        return {s: (None if n is None else n / self.baseline_labels) for s, n in self.labels.items()}

    def _reached(self) -> list[float]:
        return [v for v in self.shares.values() if v is not None]

    @property
    def reached(self) -> int:
        return len(self._reached())

    @property
    def mean(self) -> float | None:
        v = self._reached()
        return statistics.fmean(v) if v else None

    @property
    def std(self) -> float | None:
        v = self._reached()
        return (statistics.stdev(v) if len(v) > 1 else 0.0) if v else None

    @property
    def min(self) -> float | None:
        v = self._reached()
        return min(v) if v else None

    @property
    def max(self) -> float | None:
        v = self._reached()
        return max(v) if v else None

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "target": self.target, "baseline_labels": self.baseline_labels,
                "labels": {str(k): v for k, v in self.labels.items()}, "reached": self.reached,
                "seeds": len(self.labels), "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


def labels_to_reach(
    rows: Sequence[dict[str, Any]], *, baseline: str = "random", metric: str = "segm_AP"
) -> list[LabelShare]:
    """Labels each strategy needs to reach the baseline's final mean ``metric``, as a share of the baseline's.

    The target is the mean over seeds of the baseline's ``metric`` at its largest labelled set (its final
    round). For every strategy and seed, the labels needed are the smallest labelled-set size whose row
    reaches the target (measured points only, no interpolation: the answer moves in steps of the batch, and
    is an upper bound of the true crossing). The share divides it by the baseline's final labelled-set size:
    0.6 means 40% fewer labels than random needed for random's final AP. A seed whose curve never reaches the
    target is ``None`` and left out of the mean, std, min and max (``reached`` counts the others). The
    baseline's own line shows how much the seeds alone move the answer.

    Raises:
        ValueError: no row of the baseline.

    Example:
        >>> rows = [{"strategy": s, "seed": 0, "n_labelled": n, "segm_AP": ap}
        ...         for s, pts in {"random": [(8, 0.1), (16, 0.2), (24, 0.3)],
        ...                        "entropy": [(8, 0.1), (16, 0.3), (24, 0.4)]}.items() for n, ap in pts]
        >>> [(x.strategy, x.mean) for x in labels_to_reach(rows)]
        [('random', 1.0), ('entropy', 0.6666666666666666)]
    """
    base = [r for r in rows if r["strategy"] == baseline]
    if not base:
        raise ValueError(f"no rows of the baseline strategy {baseline!r}: run it too to compare against")
    final_n = max(int(r["n_labelled"]) for r in base)
    target = statistics.fmean(float(r[metric]) for r in base if int(r["n_labelled"]) == final_n)
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for r in rows:
        curves.setdefault(r["strategy"], {}).setdefault(int(r.get("seed", 0)), []).append(
            (int(r["n_labelled"]), float(r[metric])))
    out = []
    for strategy, by_seed in curves.items():
        labels: dict[int, int | None] = {}
        for seed, pts in sorted(by_seed.items()):
            labels[seed] = next((n for n, v in sorted(pts) if v >= target - 1e-9), None)
        out.append(LabelShare(strategy=strategy, target=target, baseline_labels=final_n, labels=labels))
    out.sort(key=lambda x: (x.strategy != baseline,))
    return out


def format_label_shares(shares: Sequence[LabelShare], *, metric: str = "segm_AP") -> str:
    """A text table of :func:`labels_to_reach`'s answer."""
    if not shares:
        return ""
    s0 = shares[0]
    lines = [
        f"labels needed to reach {s0.strategy if s0.strategy == 'random' else 'the baseline'}'s final mean "
        f"{metric} {s0.target:.4f} ({s0.baseline_labels} labelled images), as a share of "
        f"{s0.baseline_labels}; measured rounds only, so the share moves in steps of the batch:",
        f"{'strategy':<26} {'mean':>6} {'std':>6} {'min':>6} {'max':>6} {'reached':>8}  labels per seed",
    ]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for x in shares:
        per_seed = ", ".join(f"{s}: {'not reached' if n is None else n}" for s, n in x.labels.items())
        lines.append(f"{x.strategy:<26} {f(x.mean):>6} {f(x.std):>6} {f(x.min):>6} {f(x.max):>6} "
                     f"{x.reached:>4}/{len(x.labels):<3}  {per_seed}")
    return "\n".join(lines)


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """A text table: per strategy and labelled-set size, mask AP and mask AP50 over seeds (mean, min-max)."""
    ap, ap50 = summarise(rows, "segm_AP"), summarise(rows, "segm_AP50")
    lines = [f"{'strategy':<26} {'labelled':>8} {'seeds':>5} {'segm_AP mean [min, max]':>26} "
             f"{'segm_AP50 mean [min, max]':>27}"]
    for s, pts in ap.items():
        for p, q in zip(pts, ap50[s], strict=True):
            lines.append(f"{s:<26} {p['n_labelled']:>8} {p['n']:>5} "
                         f"{p['mean']:>8.4f} [{p['min']:.4f}, {p['max']:.4f}] "
                         f"{q['mean']:>9.4f} [{q['min']:.4f}, {q['max']:.4f}]")
    return "\n".join(lines)


def plot_curves(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "Active learning") -> Path:
    """Mask AP (and mask AP50) against the number of labelled images: per strategy the mean over seeds as a
    line and the min-max over seeds as a band.

    Example:
        >>> plot_curves(read_csv("out/simulation.csv"), Path("out/simulation.png"))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for metric, ax in zip(("segm_AP", "segm_AP50"), axes, strict=True):
        for s, pts in summarise(rows, metric).items():
            x = [p["n_labelled"] for p in pts]
            seeds = max(p["n"] for p in pts)
            (line,) = ax.plot(x, [p["mean"] for p in pts], marker="o",
                              label=f"{s} ({seeds} seed{'s' if seeds != 1 else ''})")
            if seeds > 1:
                ax.fill_between(x, [p["min"] for p in pts], [p["max"] for p in pts], color=line.get_color(),
                                alpha=0.18, linewidth=0)
        ax.set_xlabel("labelled images")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{'mask AP' if metric == 'segm_AP' else 'mask AP50'} on the test split")
        ax.grid(True, alpha=0.3)
    axes[0].legend(title="mean, band: min-max over seeds", fontsize="small")
    fig.suptitle(title)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # the format from the target's extension, PNG without one
            fig.savefig(tmp, dpi=120, format=path.suffix[1:].lower() or "png")
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class _Round:
    """One trained model: its checkpoint, metrics and the time it took."""

    checkpoint: Path
    metrics: dict[str, float]
    seconds: float


def _load_predictor(checkpoint: Path, cfg: SimulationConfig):
    from shoeseg.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, device=cfg.train.device)


def _train_and_evaluate(
    cfg: SimulationConfig,
    *,
    train_config: TrainConfig,
    full: AnnotationSet,
    labelled: Sequence[ImageRecord],
    test: Sequence[ImageRecord],
    images_dir: Path,
    run_dir: Path,
    bar,
) -> tuple[_Round, Any]:
    from shoeseg.evaluate import evaluate
    from shoeseg.train import train

    t0 = time.perf_counter()

    def progress(info: dict) -> None:
        loss = (info.get("losses") or {}).get("total_loss")
        if bar is not None:
            bar.set_postfix_str(f"train {info.get('iteration')}/{info.get('max_iter')}"
                                + (f" loss {loss:.3f}" if isinstance(loss, float) else ""))

    result = train(train_config, dataset=_subset(full, labelled), images_dir=images_dir, out_dir=run_dir,
                   progress=progress)
    if bar is not None:
        bar.set_postfix_str("evaluate")
    predictor = _load_predictor(Path(result.checkpoint), cfg)
    ev = evaluate(predictor, _subset(full, test), images_dir=images_dir, device=cfg.train.device,
                  with_losses=False)
    metrics = {k: float(ev.metrics.get(k, 0.0) or 0.0) for k in METRICS}
    return _Round(Path(result.checkpoint), metrics, time.perf_counter() - t0), predictor


def _read_images(images_dir: Path, records: Sequence[ImageRecord]):
    from via_tools.images import read_image

    return [read_image(images_dir / im.file_name) for im in records]


def _embed(cfg: SimulationConfig, predictor, records: Sequence[ImageRecord], images_dir: Path, bar, what: str):
    import numpy as np

    rows = []
    for i in range(0, len(records), cfg.score_batch):
        rows.append(predictor.embed(_read_images(images_dir, records[i : i + cfg.score_batch])))
        if bar is not None:
            bar.set_postfix_str(f"features of {what} {min(i + cfg.score_batch, len(records))}/{len(records)}")
    return np.concatenate(rows) if rows else None


def _score_pool(cfg: SimulationConfig, strategy: str, predictor, pool: Sequence[ImageRecord],
                labelled: Sequence[ImageRecord], images_dir: Path, seed: int, bar) -> list[float]:
    """One score per pool image, lower = label first."""
    names = [im.file_name for im in pool]
    if strategy == "random":
        return [random_score(n, seed=seed) for n in names]
    base = POOL_STRATEGIES.get(strategy, strategy)
    scores: list[float] | None = None
    if base is not None:
        scores = []
        for i in range(0, len(pool), cfg.score_batch):
            chunk = pool[i : i + cfg.score_batch]
            scores += score_images(base, predictor, _read_images(images_dir, chunk),
                                   task_ids=[im.file_name for im in chunk])
            if bar is not None:
                bar.set_postfix_str(f"score {min(i + cfg.score_batch, len(pool))}/{len(pool)}")
    if strategy not in POOL_STRATEGIES:
        return scores
    features = _embed(cfg, predictor, pool, images_dir, bar, "pool")
    lab = _embed(cfg, predictor, labelled, images_dir, bar, "labelled")
    return diverse_scores(scores, features, lab, k=cfg.batch, keys=names, seed=seed)


def _run_dir(out_dir: Path, seed: int, strategy: str, r: int) -> Path:
    return out_dir / "runs" / f"seed{seed}" / ("round0" if r == 0 else f"{strategy}/round{r}")


def _drop(checkpoint: Path) -> None:
    """Deletes a checkpoint nothing needs any more (hundreds of MB each); its metrics stay in the CSV."""
    try:
        Path(checkpoint).unlink(missing_ok=True)
    except OSError as e:  # pragma: no cover - best effort
        log.warning("could not delete %s: %s", checkpoint, e)


def _check_resumable(state: dict[str, Any], cfg: SimulationConfig, test_names: list[str], sel_path: Path) -> None:
    old, new = state.get("config") or {}, cfg.fingerprint()
    diffs = sorted(k for k in set(old) | set(new) if k != "train" and old.get(k) != new.get(k))
    old_t, new_t = old.get("train") or {}, new["train"]
    diffs += sorted(f"train.{k}" for k in set(old_t) | set(new_t) if old_t.get(k) != new_t.get(k))
    if diffs:
        raise ValueError(f"{sel_path} is from a run with other settings ({', '.join(diffs)}): a resumed run needs the "
                         "same settings (only --strategy and --seeds may change); choose another output folder")
    if state.get("test") != test_names:
        raise ValueError(f"{sel_path}: the test split differs from this dataset's (another dataset?); choose "
                         "another output folder")


def run_simulation(
    cfg: SimulationConfig,
    *,
    dataset: AnnotationSet,
    images_dir: str | Path,
    out_dir: str | Path,
    show_progress: bool = True,
    resume: bool = False,
) -> SimulationResult:
    """Runs the active-learning loop offline for every seed and strategy of ``cfg``; writes CSV, selections, plot.

    Args:
        cfg: strategies, seeds, start set, batch, rounds and the training recipe.
        dataset: a fully labelled dataset (``via_tools.io.load``).
        images_dir: where ``dataset``'s image files are.
        out_dir: receives ``simulation.csv``, ``simulation.png``, ``selections.json`` and ``runs/``.
        show_progress: a tqdm bar over rounds (every seed, strategy and round).
        resume: continue the run in ``out_dir``: rows already in its CSV are kept and not redone; every
            (strategy, seed) goes on from its first missing round, with the images its earlier rounds added
            (``selections.json``) and the checkpoint of its last finished round.

    Returns:
        Every row of the CSV (seed, then strategy, then round; rows of other seeds or strategies already in a
        resumed CSV after them) and the files written.

    Raises:
        ValueError: the pool is too small for ``start + batch * (rounds - 1)`` images; a resumed run with other
            settings, or whose checkpoint is gone.
        FileExistsError: ``out_dir`` already holds rows and ``resume`` is not set.

    Example:
        >>> from via_tools.io import load
        >>> from shoeseg.train import TrainConfig
        >>> ds = load("../shared/datasets/shoes/via_project.json")  # doctest: +SKIP
        >>> cfg = SimulationConfig(strategies=["random", "least_confidence"], seeds=[0, 1],
        ...                        train=TrainConfig.for_profile("cpu", iters=40))  # doctest: +SKIP
        >>> run_simulation(cfg, dataset=ds, images_dir="../shared/datasets/shoes/images",
        ...                out_dir="runs/al")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    images_dir = Path(images_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, plot_path, sel_path = out_dir / "simulation.csv", out_dir / "simulation.png", out_dir / "selections.json"
    existing = _existing_rows(csv_path) if resume else []
    if not resume and csv_path.is_file() and csv_path.stat().st_size:
        raise FileExistsError(f"{csv_path} already holds a simulation: resume it (--resume) or choose another "
                              "output folder")
    for im in dataset.images:
        if not (images_dir / im.file_name).is_file():
            raise FileNotFoundError(f"image {im.file_name!r} of the dataset is not in {images_dir}")

    t = cfg.train
    if cfg.prescale:
        log.info("resizing the images to the model's input size (%d/%d) once", t.min_size, t.max_size)
        dataset, images_dir = prescale_dataset(
            dataset, images_dir=images_dir, out_dir=out_dir / f"images-{t.min_size}-{t.max_size}",
            min_size=t.min_size, max_size=t.max_size,
        )
    pool, test = split_pool(dataset, test_frac=cfg.test_frac, seed=cfg.split_seed, test_size=cfg.test_size,
                            pool_size=cfg.pool_size)
    needed = cfg.start + cfg.batch * (cfg.rounds - 1)
    if needed > len(pool):
        raise ValueError(
            f"{cfg.rounds} rounds from {cfg.start} images in batches of {cfg.batch} need {needed} images, "
            f"but the pool has {len(pool)} ({len(test)} of {len(pool) + len(test)} images with instances are "
            f"held out for testing)"
        )
    test_names = [im.file_name for im in test]
    state: dict[str, Any] | None = None
    if resume and sel_path.is_file():
        state = json.loads(sel_path.read_text(encoding="utf-8"))
        _check_resumable(state, cfg, test_names, sel_path)
    elif existing:
        raise ValueError(f"{csv_path} has rows but {sel_path} is missing: the run cannot be resumed")
    selections: dict[str, Any] = state or {"config": cfg.fingerprint(), "test": test_names, "start": {},
                                           "round0": {}, "rounds": {}}
    done = {(r["strategy"], r["seed"], r["round"]) for r in existing}
    todo = [(s, seed, r) for seed in cfg.seeds for s in cfg.strategies for r in range(cfg.rounds)]
    log.info("simulation: %d pool images, %d test images, strategies %s, seeds %s; %d of %d rounds done",
             len(pool), len(test), cfg.strategies, cfg.seeds, sum(k in done for k in todo), len(todo))

    def save_selections() -> None:
        atomic_write_text(sel_path, json.dumps(selections, indent=1))

    by_name = {im.file_name: im for im in pool}
    writer = _CsvAppender(csv_path, fresh=not existing)
    bar = tqdm(total=len(todo), initial=sum(k in done for k in todo), desc="active learning", unit="round",
               disable=not show_progress, dynamic_ncols=True)
    try:
        for seed in cfg.seeds:
            start_images = start_set(pool, start=cfg.start, seed=seed)
            start_names = [im.file_name for im in start_images]
            if selections["start"].setdefault(str(seed), start_names) != start_names:
                raise ValueError(f"{sel_path}: seed {seed} started from other images; choose another output folder")
            round0_ckpt = _run_dir(out_dir, seed, "", 0) / "model.pt"
            shared0: list[Any] = []  # [_Round, predictor or None] once round 0 of this seed is at hand

            def round0(labelled: list[ImageRecord], seed: int = seed, round0_ckpt: Path = round0_ckpt,
                       shared0: list[Any] = shared0) -> tuple[_Round, Any]:
                if not shared0:
                    known = selections["round0"].get(str(seed))
                    if known and round0_ckpt.is_file():
                        shared0[:] = [_Round(round0_ckpt, dict(known["metrics"]), float(known["seconds"])), None]
                    else:
                        rnd, predictor = _train_and_evaluate(
                            cfg, train_config=cfg.train_config(seed=seed, round=0), full=dataset, labelled=labelled,
                            test=test, images_dir=images_dir, run_dir=round0_ckpt.parent, bar=bar)
                        selections["round0"][str(seed)] = {"metrics": rnd.metrics, "seconds": rnd.seconds}
                        save_selections()
                        shared0[:] = [rnd, predictor]
                return shared0[0], shared0[1]

            for strategy in cfg.strategies:
                first = next((r for r in range(cfg.rounds) if (strategy, seed, r) not in done), None)
                if first is None:
                    continue
                chain: list[dict[str, Any]] = selections["rounds"].setdefault(strategy, {}).setdefault(str(seed), [])
                labelled = list(start_images)
                for r in range(first):
                    if r >= len(chain) or chain[r].get("round") != r:
                        raise ValueError(f"{sel_path}: {strategy} seed {seed} lacks the images round {r} added")
                    labelled += [by_name[n] for n in chain[r]["added"]]
                del chain[first:]  # selections of rounds to redo
                taken = {im.file_name for im in labelled}
                unlabelled = [im for im in pool if im.file_name not in taken]
                prev = None if first == 0 else _run_dir(out_dir, seed, strategy, first - 1) / "model.pt"
                if prev is not None and not prev.is_file():
                    raise ValueError(f"cannot resume {strategy} seed {seed} at round {first}: the checkpoint of round "
                                     f"{first - 1} ({prev}) is gone; choose another output folder")
                for r in range(first, cfg.rounds):
                    bar.set_description(f"seed {seed} {strategy} round {r}")
                    if r == 0:
                        rnd, predictor = round0(labelled)
                    else:
                        rnd, predictor = _train_and_evaluate(
                            cfg, train_config=cfg.train_config(seed=seed, round=r, init_from=prev), full=dataset,
                            labelled=labelled, test=test, images_dir=images_dir,
                            run_dir=_run_dir(out_dir, seed, strategy, r), bar=bar)
                    seconds = rnd.seconds
                    picked: list[ImageRecord] = []
                    if r < cfg.rounds - 1:
                        t0 = time.perf_counter()
                        if predictor is None and strategy != "random":
                            predictor = _load_predictor(rnd.checkpoint, cfg)
                            if r == 0:
                                shared0[1] = predictor
                        scores = _score_pool(cfg, strategy, predictor, unlabelled, labelled, images_dir, seed, bar)
                        order = rank(scores, keys=[im.file_name for im in unlabelled], seed=seed)[: cfg.batch]
                        picked = [unlabelled[i] for i in order]
                        chain.append({"round": r, "added": [im.file_name for im in picked],
                                      "scores": [round(float(scores[i]), 4) for i in order]})
                        save_selections()
                        seconds += time.perf_counter() - t0
                    writer.append({"strategy": strategy, "seed": seed, "round": r, "n_labelled": len(labelled),
                                   **rnd.metrics, "seconds": seconds})
                    done.add((strategy, seed, r))
                    log.info("seed %d %s round %d: %d labelled, segm AP %.4f", seed, strategy, r, len(labelled),
                             rnd.metrics["segm_AP"])
                    if not cfg.keep_checkpoints:
                        if prev is not None and prev != round0_ckpt:
                            _drop(prev)  # round r is recorded: its parent is not needed to resume
                        if r == cfg.rounds - 1 and r > 0:
                            _drop(rnd.checkpoint)  # the chain is finished
                    prev = rnd.checkpoint
                    bar.update(1)
                    if picked:
                        names = {im.file_name for im in picked}
                        labelled += picked
                        unlabelled = [im for im in unlabelled if im.file_name not in names]
            if not cfg.keep_checkpoints and all((s, seed, r) in done for s in cfg.strategies for r in range(cfg.rounds)):
                _drop(round0_ckpt)
    finally:
        bar.close()
        writer.close()

    rows = read_csv(csv_path)
    seed_pos = {s: i for i, s in enumerate(cfg.seeds)}
    strat_pos = {s: i for i, s in enumerate(cfg.strategies)}
    rows.sort(key=lambda r: (r["seed"] not in seed_pos or r["strategy"] not in strat_pos,
                             seed_pos.get(r["seed"], math.inf), strat_pos.get(r["strategy"], math.inf),
                             r["seed"], r["strategy"], r["round"]))
    n_seeds = len({r["seed"] for r in rows})
    plot_curves(rows, plot_path, title=f"Active learning on {len(pool) + len(test)} images ({len(test)} test), "
                                       f"{n_seeds} seed{'s' if n_seeds != 1 else ''}")
    return SimulationResult(rows=rows, csv_path=csv_path, plot_path=plot_path, selections_path=sel_path)


__all__ = [
    "CSV_COLUMNS",
    "LabelShare",
    "SimulationConfig",
    "SimulationResult",
    "format_label_shares",
    "format_summary",
    "labels_to_reach",
    "plot_curves",
    "read_csv",
    "run_simulation",
    "split_pool",
    "start_set",
    "summarise",
    "write_csv",
]
