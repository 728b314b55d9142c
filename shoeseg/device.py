"""Device choice and the speed settings that go with it (CUDA: mixed precision, cuDNN autotuning, TF32)."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turns ``auto`` / ``cpu`` / ``cuda`` (or ``cuda:1``) into a :class:`torch.device`.

    ``auto`` (or ``None``) reads ``SHOESEG_DEVICE`` first and then picks CUDA when it is available.
    Asking for CUDA on a machine without it raises instead of silently falling back.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = os.environ.get("SHOESEG_DEVICE", "auto").strip().lower() or "auto"
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {spec!r} was asked for but CUDA is not available here; use --device cpu")
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {spec!r}: expected one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")


def configure_for_speed(device: torch.device) -> None:
    """The usual CUDA speed settings: cuDNN autotuning and TF32 matrix products. No-op on CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, *, enabled: bool = True):
    """Mixed precision (float16) on CUDA; a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
