"""What a simulation runs: its settings and the training configuration of every round.

Training uses one :class:`shoeseg.train.TrainConfig`, the one ``shoeseg train`` and the worker fill with
``TrainConfig.for_profile(profile, **overrides)``. Round 0 runs its full schedule from its weights; every later
round warm-starts from the previous round's checkpoint (``init_from``) with the worker's short schedule
(:func:`shoeseg.schedule.fine_tune_config`: 12 iterations per new labelled image, at least 40, at most the full
schedule, at half the recipe's learning rate), unless ``round_iters`` fixes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoeseg.active_learning import check_simulation_strategy

if TYPE_CHECKING:  # pragma: no cover
    from shoeseg.train import TrainConfig

#: Training seed of (simulation seed ``s``, round ``r``): ``TrainConfig.seed + SEED_STRIDE * s + r``.
SEED_STRIDE = 1000


#: What a simulation's predictor does to each soft mask (:class:`shoeseg.predict.OutputSettings`' fields
#: ``mask_refine`` and ``mask_rescore``) in a run started before it was recorded: neither, as then.
OUTPUTS_BEFORE = {"mask_refine": 0.0, "mask_rescore": False}
#: Training settings whose default changed after they were added: a run stored without one ran at this value
#: (the box head's NMS was torchvision's 0.5 before it became the setting ``box_nms_thresh``, 0.4).
TRAIN_BEFORE = {"box_nms_thresh": 0.5}


def _default_train() -> TrainConfig:
    from shoeseg.train import TrainConfig

    return TrainConfig.for_profile("cpu")


def _default_outputs() -> dict[str, Any]:
    from shoeseg.predict import OutputSettings

    served = OutputSettings()
    return {"mask_refine": served.mask_refine, "mask_rescore": served.mask_rescore}


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
        outputs: what evaluation and scoring do to each soft mask (the predictor's ``mask_refine`` and
            ``mask_rescore``); by default what is served. A resumed run keeps its own (:data:`OUTPUTS_BEFORE` for
            one started before they were recorded).
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
    outputs: dict[str, Any] = field(default_factory=_default_outputs)
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
            96
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
        from shoeseg import schedule

        fp = {"start": self.start, "batch": self.batch, "rounds": self.rounds, "test_frac": self.test_frac,
              "split_seed": self.split_seed, "test_size": self.test_size, "pool_size": self.pool_size,
              "round_iters": self.round_iters, "prescale": self.prescale, "outputs": dict(self.outputs),
              # the worker's rule for later rounds: a run is not continued under another one
              "round_rule": {"per_image": schedule.ROUND_ITERS_PER_NEW_IMAGE, "floor": schedule.MIN_ROUND_ITERS,
                             "lr_scale": schedule.ROUND_LR_SCALE},
              "train": train}
        return json.loads(json.dumps(fp))


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings in which two fingerprints differ (``train.`` before a training setting's name).

    A training setting that ``old`` does not hold (it was added to :class:`shoeseg.train.TrainConfig` after the
    run started) is the same when ``new`` has it at its value then, :data:`TRAIN_BEFORE`'s or its default: the
    run trained that way without naming it; likewise ``outputs`` and :data:`OUTPUTS_BEFORE`.

    Example:
        >>> fingerprint_differences({"rounds": 4, "train": {"iters": 120}},
        ...                         {"rounds": 4, "train": {"iters": 120, "mask_resolution": 28}})
        []
        >>> fingerprint_differences({"train": {"iters": 120}}, {"train": {"iters": 120, "box_nms_thresh": 0.4}})
        ['train.box_nms_thresh']
    """
    from shoeseg.train import TrainConfig

    defaults = {k: f.default for k, f in TrainConfig.__dataclass_fields__.items()}
    old, new = {"outputs": OUTPUTS_BEFORE, **old}, {"outputs": OUTPUTS_BEFORE, **new}
    diffs = sorted(k for k in set(old) | set(new) if k != "train" and old.get(k) != new.get(k))
    old_t, new_t = old.get("train") or {}, new.get("train") or {}
    for k in sorted(set(old_t) | set(new_t)):
        mine = old_t[k] if k in old_t else TRAIN_BEFORE.get(k, defaults.get(k))
        if mine != new_t.get(k):
            diffs.append(f"train.{k}")
    return diffs


__all__ = ["OUTPUTS_BEFORE", "SEED_STRIDE", "TRAIN_BEFORE", "SimulationConfig", "fingerprint_differences"]
