"""Fitting a training's iterations to a time budget.

A fine-tuning round is sized before it starts, at its parent version's seconds per iteration
(:mod:`shoeseg.schedule`, ``SHOESEG_ROUND_BUDGET_S``); a full training fits its own schedule while it runs, at
its pace (``TrainConfig.time_budget_s``, ``SHOESEG_TRAIN_BUDGET_S``). Both use :func:`budget_iters`. Only the
standard library is imported here, so the training loop and the layers above it can share it.
"""

from __future__ import annotations


def budget_iters(iters: int, *, seconds_per_iter: float | None, budget_s: float,
                 floor: int, done: int = 0, elapsed_s: float = 0.0) -> int:
    """Iterations cut to a time budget: ``min(iters, max(floor, done + (budget_s - elapsed_s) // seconds_per_iter))``.

    Sizes a round before it starts (from its parent's seconds per iteration, ``done`` 0) and a full training
    while it runs (``TrainConfig.time_budget_s``: at the pace of its last iterations, ``done`` of them taking
    ``elapsed_s``).

    Args:
        iters: what the schedule asks for (:func:`shoeseg.schedule.round_iters`, or the profile's).
        seconds_per_iter: what one iteration costs here (``None`` or not positive: unknown, ``iters`` stands).
        budget_s: the training seconds the run may take (0 or less: no budget).
        floor: the fewest iterations a budget leaves (a round's: :data:`shoeseg.schedule.MIN_ROUND_ITERS`; a
            full training's: half its schedule).
        done / elapsed_s: iterations already run and the seconds they took.

    Example:
        >>> [budget_iters(120, seconds_per_iter=s, budget_s=360, floor=40) for s in (5.8, 0.2, 30.0, None)]
        [62, 120, 40, 120]
        >>> budget_iters(200, seconds_per_iter=5.0, budget_s=780, floor=100, done=20, elapsed_s=110.0)
        154
    """
    if budget_s <= 0 or not seconds_per_iter or seconds_per_iter <= 0:
        return int(iters)
    fits = int(done) + int(max(0.0, budget_s - elapsed_s) // seconds_per_iter)
    return int(min(int(iters), max(int(floor), fits)))


__all__ = ["budget_iters"]
