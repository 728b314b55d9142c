"""How long a training round runs: a first model gets the full schedule, a fine-tuning round a short one.

A round that warm-starts from the previous model (``TrainConfig.init_from``) runs
:data:`ROUND_ITERS_PER_NEW_IMAGE` iterations per new (or changed) labelled image, at least
:data:`MIN_ROUND_ITERS` and never more than the full schedule (``TrainConfig.iters``, the profile's), at
:data:`ROUND_LR_SCALE` times the recipe's learning rate:

    iters = min(full_iters, max(MIN_ROUND_ITERS, ROUND_ITERS_PER_NEW_IMAGE * new_images))

The learning-rate warm-up shrinks with it (at most a fifth of the round), and the step decay follows the
shorter schedule (75% and 90% of it, unless the configuration fixes ``steps``).

Measured (docs/improving.md, "Round recipes"; the simulation on the shared soles, 10 new labels on a 10-label
first version, 3 seeds): the rule before, 40 iterations at the recipe's 2e-4, scored below the version it
started from on two seeds of three; 40 at 1e-4 scored above it on all three, and 120 at 1e-4 (this rule for 10
labels) above the from-scratch training on the same labels.

On a slow machine a round also has a time budget (:func:`shoeseg.budget.budget_iters`): its iterations are cut to what fits
the budget at the seconds per iteration its parent version took (never below :data:`MIN_ROUND_ITERS`), so new
labels are served within minutes; the iterations the rule asked for beyond it are what idle-time training
(:func:`idle_config`, the same AdamW rate) continues with right after. On a GPU the budget does not bind.

Only the standard library is imported here (no torch), so any layer can size a round.

Example:
    >>> round_iters(250, 2), round_iters(250, 10), round_iters(250, 500)
    (40, 120, 250)
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from shoeseg.train import TrainConfig

#: Iterations of a fine-tuning round per new or changed labelled image.
ROUND_ITERS_PER_NEW_IMAGE = 12
#: The fewest iterations of a fine-tuning round (unless the full schedule is shorter).
MIN_ROUND_ITERS = 40
#: A fine-tuning round's learning rate, relative to its recipe's (a warm start needs a gentler step).
ROUND_LR_SCALE = 0.5


def round_iters(full_iters: int, new_images: int, *, per_image: int = ROUND_ITERS_PER_NEW_IMAGE,
                floor: int = MIN_ROUND_ITERS) -> int:
    """Iterations of a fine-tuning round with ``new_images`` new or changed labelled images.

    Example:
        >>> round_iters(250, 3), round_iters(2, 8)
        (40, 2)
    """
    return int(min(int(full_iters), max(int(floor), int(per_image) * max(0, int(new_images)))))


def fine_tune_config(config: TrainConfig, *, init_from: str, new_images: int | None = None,
                     iters: int | None = None) -> TrainConfig:
    """A copy of ``config`` that warm-starts from ``init_from`` with a round's schedule, at
    :data:`ROUND_LR_SCALE` times its learning rate.

    Args:
        config: the full recipe (``TrainConfig.for_profile(...)``); its ``iters`` is the cap.
        init_from: the checkpoint to continue from.
        new_images: new or changed labelled images since that checkpoint: sizes the round by
            :func:`round_iters`.
        iters: a fixed number of iterations instead (wins over ``new_images``); neither: ``config.iters``.

    Example:
        >>> from shoeseg.train import TrainConfig  # doctest: +SKIP
        >>> fine_tune_config(TrainConfig.for_profile("cpu"), init_from="m.pt", new_images=8).iters  # doctest: +SKIP
        96
    """
    if iters is not None:
        n = int(iters)
    elif new_images is not None:
        n = round_iters(config.iters, new_images)
    else:
        n = config.iters
    return replace(config, init_from=str(init_from), iters=n, base_lr=config.base_lr * ROUND_LR_SCALE,
                   warmup_iters=min(config.warmup_iters, max(1, n // 5)))


#: The idle-time continuation (``worker.improving``): AdamW at half the cpu profile's rate, at a third larger
#: input size than the recipe's own (the cpu profile's 384 / 640 px become 512 / 853). From the measurement that
#: motivated it: the cpu profile's model continued 300 AdamW iterations at 1e-4 and 512-853 px went from mask AP
#: 0.459 to 0.587 on held-out shoes (25 minutes on 2 cores). A version it makes is served at its own size (the
#: checkpoint's ``min_size``), which costs about 1.5x the prediction time of 384 px.
IDLE_RECIPE: dict[str, float | str] = {"optimizer": "adamw", "base_lr": 1e-4, "weight_decay": 0.05}
#: Input sizes of the idle-time chunks, relative to the recipe's.
IDLE_SIZE_SCALE = 4 / 3
#: Warm-up of every idle chunk (each chunk starts a fresh optimizer from the weights it continues).
IDLE_WARMUP_ITERS = 10


def idle_config(config: TrainConfig, *, init_from: str, iters: int) -> TrainConfig:
    """A copy of ``config`` for one idle-time chunk: :data:`IDLE_RECIPE` at :data:`IDLE_SIZE_SCALE` times the
    input size, ``iters`` iterations from ``init_from`` at a constant learning rate after a short warm-up
    (chunks follow each other, so no decay).

    Example:
        >>> from shoeseg.train import TrainConfig  # doctest: +SKIP
        >>> idle_config(TrainConfig.for_profile("cpu"), init_from="m.pt", iters=60).min_size  # doctest: +SKIP
        512
    """
    n = int(iters)
    return replace(config, init_from=str(init_from), iters=n, steps=(n + 1,),
                   warmup_iters=min(IDLE_WARMUP_ITERS, max(1, n // 5)),
                   min_size=round(config.min_size * IDLE_SIZE_SCALE),
                   max_size=round(config.max_size * IDLE_SIZE_SCALE), **IDLE_RECIPE)


__all__ = ["IDLE_RECIPE", "IDLE_SIZE_SCALE", "MIN_ROUND_ITERS", "ROUND_ITERS_PER_NEW_IMAGE", "ROUND_LR_SCALE",
           "fine_tune_config", "idle_config", "round_iters"]
