"""Checkpoints: a trained model saved to one file with its metadata, and loaded back into the same network.

A checkpoint is a plain dict of tensors plus JSON-able metadata, written atomically with :func:`torch.save`
and read back with ``weights_only=True``: it carries the weights, the class names, the model's own
configuration (:class:`shoeseg.model.ModelConfig`, so that the same network is rebuilt), the training
configuration, metrics, a ``version`` id and the ``parent_version`` it was fine-tuned from. A checkpoint is
also a start for :func:`shoeseg.model.build_model` (``weights=PATH``).

A checkpoint that training wrote also keeps a few of its training images, JPEG-encoded at the model's input
size (:func:`shoeseg.data.calibration_images`, about 40 KB each): the activations that ONNX Runtime's static int8
quantisation is calibrated on (:func:`shoeseg.export.quantize_onnx`), so that any machine serving the version
can quantise it. :func:`read_calibration_images` reads them back. They are never exported into an ONNX or
TorchScript file.
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoeseg.model import ModelConfig, build_network, model_config_of
from shoeseg.weights_file import CHECKPOINT_FORMAT, is_checkpoint, load_weights_file
from via_tools.files import atomic_path

_CALIBRATION_KEY = "calibration_jpeg"


def new_version_id(*, now: datetime | None = None) -> str:
    """A sortable, unique version id: UTC timestamp plus a short random hex, e.g. ``20250101-120000-3fa2c1``."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _jsonable(value: Any, *, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {what} is not JSON-able: {e}") from e


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, tuple | set | frozenset):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON-able")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and its metadata."""

    model: nn.Module
    class_names: list[str]
    config: dict[str, Any]
    metrics: dict[str, Any]
    parent_version: str | None
    version: str
    created_at: str
    model_config: ModelConfig
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the score threshold to serve with, chosen on validation images at the end of training (None: not chosen)
    serve_score_thresh: float | None = None


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    class_names: list[str],
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    parent_version: str | None = None,
    version: str | None = None,
    extra: dict[str, Any] | None = None,
    serve_score_thresh: float | None = None,
    calibration_images: Sequence[np.ndarray] = (),
) -> str:
    """Writes a checkpoint atomically (temporary file, then rename) and returns its version id.

    Args:
        path: the ``.pt`` file to write.
        model: a model from :func:`shoeseg.model.build_model` (any device; weights are stored on the CPU).
        class_names: class names in class-index order (index 0 = label 1 of the model).
        config: the training configuration, JSON-able.
        metrics: evaluation or training metrics, JSON-able.
        parent_version: the version this model was fine-tuned from, if any.
        version: the version id; a new one (:func:`new_version_id`) by default.
        extra: any further JSON-able metadata.
        serve_score_thresh: the score threshold :meth:`shoeseg.predict.Predictor.from_checkpoint` serves by
            default (see :func:`shoeseg.edits.choose_score_thresh`); None leaves the predictor's default.
        calibration_images: RGB ``uint8`` ``(H, W, 3)`` arrays at the model's input size, kept JPEG-encoded for
            a static int8 quantisation (see the module docstring).

    Example:
        >>> from shoeseg.model import build_model
        >>> model = build_model(num_classes=1, weights=None)  # doctest: +SKIP
        >>> v = save_checkpoint("model.pt", model=model, class_names=["shoe"], config={"iters": 600})  # doctest: +SKIP
    """
    path = Path(path)
    mcfg = model_config_of(model)
    if len(class_names) != mcfg.num_classes:
        raise ValueError(f"{len(class_names)} class names {class_names} for a model with {mcfg.num_classes} classes")
    version = version or new_version_id()
    if serve_score_thresh is not None and not 0.0 <= float(serve_score_thresh) <= 1.0:
        raise ValueError(f"serving score threshold must be in [0, 1], got {serve_score_thresh}")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "class_names": [str(c) for c in class_names],
        "model_config": mcfg.to_dict(),
        "config": _jsonable(config or {}, what="config"),
        "metrics": _jsonable(metrics or {}, what="metrics"),
        "parent_version": parent_version,
        "extra": _jsonable(extra or {}, what="extra"),
        "serve_score_thresh": None if serve_score_thresh is None else float(serve_score_thresh),
    }
    state = {k: v.detach().to("cpu", copy=True) if v.device.type != "cpu" else v.detach() for k, v in model.state_dict().items()}
    raw = {"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": state}
    if len(calibration_images):
        raw[_CALIBRATION_KEY] = [_jpeg_tensor(a) for a in calibration_images]
    with atomic_path(path) as tmp:
        torch.save(raw, tmp)
    return version


def _jpeg_tensor(image: np.ndarray) -> torch.Tensor:
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a calibration image must be an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).clone()


def read_calibration_images(path: str | Path) -> list[np.ndarray]:
    """The calibration images a checkpoint keeps (RGB ``uint8`` arrays); ``[]`` for one written without them.

    Raises:
        FileNotFoundError / ValueError: a missing file, or one that is not a checkpoint (the message names it).
    """
    from PIL import Image

    raw = _mapped(path)
    images = []
    for i, t in enumerate(raw.get(_CALIBRATION_KEY) or []):
        try:
            images.append(np.asarray(Image.open(io.BytesIO(t.numpy().tobytes())).convert("RGB")))
        except OSError as e:
            raise ValueError(f"{path}: calibration image {i} cannot be decoded ({e})") from e
    return images


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint without building the model (memory-mapped load)."""
    return _mapped(path)["meta"]


def _mapped(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, memory-mapped (nothing is read until used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    raw = load_weights_file(path, mmap=True)
    if not is_checkpoint(raw):
        raise ValueError(f"{path}: not a ShoeSeg checkpoint (format {CHECKPOINT_FORMAT})")
    return raw


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Loads a checkpoint safely (``weights_only=True``) and rebuilds its model in eval mode.

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: device to put the model on.

    Example:
        >>> ckpt = load_checkpoint("runs/shoes/model.pt")  # doctest: +SKIP
        >>> ckpt.class_names, ckpt.version  # doctest: +SKIP
        (['shoe'], '20250101-120000-3fa2c1')
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    raw = load_weights_file(path)
    if not is_checkpoint(raw):
        raise ValueError(f"{path}: not a ShoeSeg checkpoint (format {CHECKPOINT_FORMAT}); a plain state dict "
                         "can be used with build_model(weights=PATH)")
    meta = raw["meta"]
    try:
        mcfg = ModelConfig.from_dict(meta["model_config"])
        model = build_network(mcfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    try:
        model.load_state_dict(raw["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the model it describes ({e})") from e
    model.eval().to(map_location)
    return Checkpoint(
        model=model,
        class_names=list(meta["class_names"]),
        config=meta.get("config", {}),
        metrics=meta.get("metrics", {}),
        parent_version=meta.get("parent_version"),
        version=meta["version"],
        created_at=meta.get("created_at", ""),
        model_config=mcfg,
        path=path,
        extra=meta.get("extra", {}),
        serve_score_thresh=meta.get("serve_score_thresh"),
    )
