"""A weights file read safely, and what tells a ShoeSeg checkpoint from a plain state dict.

Below both :mod:`shoeseg.model` (a checkpoint or a state dict as the start of a training) and
:mod:`shoeseg.checkpoint` (which writes and rebuilds checkpoints), so that neither imports the other's reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: The ``format`` key of every checkpoint :func:`shoeseg.checkpoint.save_checkpoint` writes.
CHECKPOINT_FORMAT = "shoeseg-checkpoint/1"


def load_weights_file(path: Path, *, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """What a weights file holds, read safely (``weights_only=True``; memory-mapped with ``mmap``);
    a ``ValueError`` naming the file otherwise."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path}: cannot be loaded as a weights file ({type(e).__name__}: {e})") from e


def is_checkpoint(raw: Any) -> bool:
    """Whether what :func:`load_weights_file` read is a ShoeSeg checkpoint."""
    return isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT and "state_dict" in raw and "meta" in raw
