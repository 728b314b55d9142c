"""Runs a simulation: every seed's and strategy's rounds (train, evaluate, score the pool, pick), resumable.

Round 0 is the same for every strategy of a seed (same images, same training seed), so it is trained once per
seed. Results go to ``out_dir``:

* ``simulation.csv`` and ``selections.json`` (:mod:`shoeseg.simulation.results`), written as each round
  finishes: what ``resume`` continues from;
* ``simulation.png``: mask AP and mask AP50 against labelled images, the mean over seeds per strategy with a
  min-max band (:func:`shoeseg.simulation.plot.plot_curves`);
* ``runs/seed<S>/...``: checkpoints; only those a resumed run still needs are kept (``keep_checkpoints``
  keeps all).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoeseg.active_learning import POOL_STRATEGIES, diverse_scores, random_score, rank, score_images
from shoeseg.simulation.config import OUTPUTS_BEFORE, TRAIN_BEFORE, SimulationConfig
from shoeseg.simulation.plot import plot_curves
from shoeseg.simulation.pool import prescale_dataset, split_pool, start_set, subset
from shoeseg.simulation.results import (
    METRICS,
    CsvAppender,
    existing_rows,
    new_selections,
    read_csv,
    read_selections,
    write_selections,
)
from via_tools.model import AnnotationSet, ImageRecord

if TYPE_CHECKING:  # pragma: no cover
    from shoeseg.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    """What :func:`run_simulation` wrote: every row of the CSV and the paths of the CSV, plot and selections."""

    rows: list[dict[str, Any]]
    csv_path: Path
    plot_path: Path
    selections_path: Path


@dataclass
class _Round:
    """One trained model: its checkpoint, metrics and the time it took."""

    checkpoint: Path
    metrics: dict[str, float]
    seconds: float


def _load_predictor(checkpoint: Path, cfg: SimulationConfig):
    from shoeseg.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, device=cfg.train.device, **cfg.outputs)


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

    result = train(train_config, dataset=subset(full, labelled), images_dir=images_dir, out_dir=run_dir,
                   progress=progress)
    if bar is not None:
        bar.set_postfix_str("evaluate")
    predictor = _load_predictor(Path(result.checkpoint), cfg)
    ev = evaluate(predictor, subset(full, test), images_dir=images_dir, device=cfg.train.device,
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


def _unfinished_chains(selections: dict[str, Any], seed: int, rounds: int) -> list[str]:
    """Strategies whose chain on ``seed`` was started (by this run or an earlier one) and not finished: they
    still need the seed's first version."""
    return sorted(s for s, by_seed in selections["rounds"].items()
                  if 0 < len(by_seed.get(str(seed)) or []) < rounds - 1)


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
    existing = existing_rows(csv_path) if resume else []
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
        stored = json.loads(sel_path.read_text(encoding="utf-8")).get("config") or {}
        if "outputs" not in stored and cfg.outputs != OUTPUTS_BEFORE:
            log.info("%s: a run from before mask refinement and rescoring were recorded; it continues without "
                     "them (%s)", sel_path, OUTPUTS_BEFORE)
            cfg = replace(cfg, outputs=dict(OUTPUTS_BEFORE))
        stored_train = stored.get("train") or {}
        then = {k: v for k, v in TRAIN_BEFORE.items() if k not in stored_train and getattr(cfg.train, k) != v}
        if stored and then:
            log.info("%s: a run from before %s were settings; it continues as it ran (%s)", sel_path,
                     ", ".join(then), then)
            cfg = replace(cfg, train=replace(cfg.train, **then))
        state = read_selections(sel_path, fingerprint=cfg.fingerprint(), test=test_names)
    elif existing:
        raise ValueError(f"{csv_path} has rows but {sel_path} is missing: the run cannot be resumed")
    selections: dict[str, Any] = state or new_selections(cfg.fingerprint(), test_names)
    done = {(r["strategy"], r["seed"], r["round"]) for r in existing}
    todo = [(s, seed, r) for seed in cfg.seeds for s in cfg.strategies for r in range(cfg.rounds)]
    log.info("simulation: %d pool images, %d test images, strategies %s, seeds %s; %d of %d rounds done",
             len(pool), len(test), cfg.strategies, cfg.seeds, sum(k in done for k in todo), len(todo))

    by_name = {im.file_name: im for im in pool}
    writer = CsvAppender(csv_path, fresh=not existing)
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
                        write_selections(sel_path, selections)
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
                if prev == round0_ckpt and not prev.is_file():
                    # removed when the seed's other strategies finished: the first version is trained again
                    log.info("seed %d: its first version is trained again for %s (its checkpoint %s is gone)",
                             seed, strategy, prev)
                    prev = round0(list(start_images))[0].checkpoint
                elif prev is not None and not prev.is_file():
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
                        write_selections(sel_path, selections)
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
            if not cfg.keep_checkpoints and all((s, seed, r) in done for s in cfg.strategies for r in range(cfg.rounds)) \
                    and not _unfinished_chains(selections, seed, cfg.rounds):
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


__all__ = ["SimulationResult", "run_simulation"]
