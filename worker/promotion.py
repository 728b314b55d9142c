"""The promotion rule and the fixed validation subset: which tasks judge a new model, and when it replaces the current one."""

from __future__ import annotations

import hashlib
from typing import Any


def _task_hash(task_id: Any) -> int:
    return int.from_bytes(hashlib.blake2b(str(task_id).encode(), digest_size=8).digest(), "big")


def validation_task_ids(task_ids: list[Any], *, modulo: int) -> set[str]:
    """The fixed validation subset: tasks whose id hash is divisible by ``modulo``.

    A task's membership depends only on its id, so it never moves between training and validation as the
    project grows. With two tasks or more, at least one is kept for validation and at least one for training
    (the tasks with the smallest / largest hash), so a tiny project can still compare versions.

    Example:
        >>> sorted(validation_task_ids(["1", "2"], modulo=5)) in (["1"], ["2"])
        True
    """
    ids = [str(t) for t in task_ids]
    val = {t for t in ids if _task_hash(t) % modulo == 0}
    if len(ids) >= 2:
        if not val:
            val = {min(ids, key=_task_hash)}
        if len(val) == len(ids):
            val.discard(max(ids, key=_task_hash))
    return val


def decide_promotion(new_ap: float | None, current_ap: float | None, *, has_current: bool,
                     tolerance: float) -> tuple[bool, str]:
    """Whether a new version replaces the current one, and why (in words).

    Example:
        >>> decide_promotion(0.40, 0.42, has_current=True, tolerance=0.05)
        (True, 'segm_AP 0.4000 >= current 0.4200 - tolerance 0.0500')
    """
    if not has_current:
        return True, "no current version"
    if new_ap is None or current_ap is None:
        return False, "no validation images to compare the new version with the current one"
    if new_ap >= current_ap - tolerance:
        return True, f"segm_AP {new_ap:.4f} >= current {current_ap:.4f} - tolerance {tolerance:.4f}"
    return False, (f"segm_AP {new_ap:.4f} is worse than the current version's {current_ap:.4f} "
                   f"by more than the tolerance {tolerance:.4f}")
