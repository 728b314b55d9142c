"""The validation subset: which tasks judge a new version (the gate itself is :mod:`shoeseg.gate`).

* :func:`validation_task_ids`: the first version's subset, and its size at any time: the tasks whose id hash is
  divisible by ``SHOESEG_VAL_MODULO``, at most ``SHOESEG_VAL_MAX``.
* :func:`rotate_validation`: every later version's (``SHOESEG_VAL_ROTATION=newest``, the default): the newest
  labels neither version trained on, so that each label judges for a while and then trains, and none is held
  out for good.
"""

from __future__ import annotations

import hashlib
from typing import Any


def _task_hash(task_id: Any) -> int:
    return int.from_bytes(hashlib.blake2b(str(task_id).encode(), digest_size=8).digest(), "big")


def validation_task_ids(task_ids: list[Any], *, modulo: int, max_size: int | None = None) -> set[str]:
    """The validation subset: tasks whose id hash is divisible by ``modulo``, at most ``max_size`` of them.

    A task's membership depends only on its id and on the tasks of lower hash, so it never moves from
    training into validation as the project grows: with the cap reached, a new task of lower hash takes a
    place and the task it displaces trains from then on. So a fifth of a small project judges (enough images
    for the gate's interval to mean something) and a large project withholds at most ``max_size``.

    With two tasks or more, at least one is kept for validation and at least one for training (the tasks
    with the smallest / largest hash), so a tiny project can still compare versions.

    Example:
        >>> sorted(validation_task_ids(["1", "2"], modulo=5)) in (["1"], ["2"])
        True
        >>> len(validation_task_ids([str(i) for i in range(1000)], modulo=5, max_size=30))
        30
    """
    ids = [str(t) for t in task_ids]
    val = {t for t in ids if _task_hash(t) % modulo == 0}
    if max_size is not None and len(val) > max_size:
        val = set(sorted(val, key=_task_hash)[:max_size])
    if len(ids) >= 2:
        if not val:
            val = {min(ids, key=_task_hash)}
        if len(val) == len(ids):
            val.discard(max(ids, key=_task_hash))
    return val


def rotate_validation(task_ids: list[Any], *, held: set[str], trained: set[str], size: int,
                      age: dict[str, int] | None = None) -> set[str]:
    """The next version's validation tasks: the ``size`` newest of those neither version trained on.

    The candidates are the current version's validation tasks (``held``) and every label it has not seen (tasks
    in neither ``held`` nor ``trained``); the newest ``size`` judge, the older ones train. So new labels judge
    first (both versions are scored on images neither saw), and each validation task moves into training once
    ``size`` newer labels have come: the held-out share stays what :func:`validation_task_ids` gives, but no
    label is held out for good. Without new labels the subset does not change (an idle chunk is judged on the
    images the version before it was). A task the current version trained on never judges again.

    Args:
        task_ids: every labelled task now.
        held: the current version's validation task ids; ``trained``: the ids it trained on.
        size: how many judge (:func:`validation_task_ids`' size for the project now).
        age: task id -> a number that grows with the label's time (its Label Studio annotation id); the task
            id itself where missing.

    Example:
        >>> sorted(rotate_validation(["1", "2", "3", "4", "5"], held={"2"}, trained={"1", "3"}, size=2,
        ...                          age={"2": 20, "4": 40, "5": 50}))
        ['4', '5']
        >>> sorted(rotate_validation(["1", "2", "3"], held={"2"}, trained={"1", "3"}, size=2))
        ['2']
    """
    age = {str(k): v for k, v in (age or {}).items()}

    def key(t: str) -> tuple[float, int]:
        a = age.get(t)
        n = a if isinstance(a, (int, float)) else (int(t) if t.isdigit() else -1)
        return (float(n), _task_hash(t))

    ids = [str(t) for t in task_ids]
    eligible = [t for t in ids if t in held or t not in trained]
    keep = set(sorted(eligible, key=key, reverse=True)[: max(0, int(size))])
    if len(ids) >= 2 and len(keep) == len(ids):
        keep.discard(min(keep, key=key))  # at least one task trains
    return keep
