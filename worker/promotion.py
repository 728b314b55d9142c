"""The validation subset: which tasks judge a new version (the gate itself is :mod:`shoeseg.gate`)."""

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
