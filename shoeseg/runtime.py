"""Serving runtimes: PyTorch, or an exported file run by ONNX Runtime (or TorchScript), behind one Predictor.

:class:`ExportedPredictor` is a :class:`shoeseg.predict.Predictor` whose batched forward runs an exported
file (:mod:`shoeseg.export`), one image per call; masks, polygons and :class:`~shoeseg.predict.Detection`
objects come from the same code as PyTorch's.

:func:`load_predictor` opens any model file: an exported file as an :class:`ExportedPredictor`, a checkpoint in
the runtime it is given: the backend and the worker's push give the ``SHOESEG_RUNTIME`` setting, ``shoeseg
predict`` / ``eval`` and :func:`shoeseg.evaluate.evaluate` give ``torch``:

* ``torch``: the checkpoint in PyTorch (its int8 box head and flip TTA as it records);
* ``onnx``: ONNX Runtime on the file exported beside the checkpoint (``model.onnx`` beside ``model.pt`` in a
  registry version's folder, exported on first use and reused while it holds the same version); a checkpoint
  that asks for the int8 box head gets ONNX Runtime's int8 file (``model.int8.onnx``) instead: its box head
  dynamic int8 and, calibrated on the training images the checkpoint keeps, its pyramid's and RPN's
  convolutions static int8 (:func:`shoeseg.export.quantize_onnx`);
* ``auto`` (:func:`resolve_runtime`): ``onnx`` on the CPU when ONNX Runtime is installed, else ``torch``. On
  the benchmark's 2-core CPU (``python -m bench runtime``, README) the `cpu` profile's model ran fastest with
  ONNX Runtime's calibrated int8 file: 120 ms per image against 296 ms for PyTorch float and 204 ms for the
  box-head-only int8 file, at a mask AP 0.006 below PyTorch float (192 ms against 517 ms at 512 px).
  On a GPU PyTorch runs the batch in float16.

An exported file holds neither flip TTA nor the model's insides: :meth:`ExportedPredictor.predict_in_box` and
:meth:`ExportedPredictor.embed` run the PyTorch checkpoint it came from (loaded when first needed) when one is
known, and say so otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoeseg.device import resolve_device
from shoeseg.export import (
    INPUT_NAMES,
    META_KEY,
    TORCHSCRIPT_META_FILE,
    checked_format,
    export_format_of,
    export_model,
    load_torchscript,
    parse_meta,
    quantize_onnx,
    read_export_meta,
)
from shoeseg.predict import OutputSettings, Predictor, as_rgb_uint8, serving_score_thresh

log = logging.getLogger(__name__)

#: The values of ``SHOESEG_RUNTIME``.
RUNTIMES = ("torch", "onnx", "auto")

#: ``run(image, score_thresh, masks_from)``: one image's outputs.
Runner = Callable[[np.ndarray, float, float], dict[str, torch.Tensor]]


def onnxruntime_available() -> bool:
    """Whether the ``onnxruntime`` package is installed (the ``onnx`` extra)."""
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(runtime: str, device: str | torch.device = "auto") -> str:
    """``"torch"`` or ``"onnx"`` for a ``SHOESEG_RUNTIME`` value on ``device`` (see the module docstring).

    Raises:
        ValueError: an unknown runtime, or ``onnx`` without ONNX Runtime installed.

    Example:
        >>> resolve_runtime("auto", "cpu")  # doctest: +SKIP
        'onnx'
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if runtime == "onnx" and not onnxruntime_available():
        raise ValueError("runtime onnx needs ONNX Runtime: pip install 'shoeseg[onnx]'")
    if runtime != "auto":
        return runtime
    return "onnx" if resolve_device(device).type == "cpu" and onnxruntime_available() else "torch"


def onnx_session(path: str | Path, *, threads: int | None = None):
    """An ONNX Runtime CPU session set for this machine: all graph optimisations, ``threads`` intra-op threads
    (default: torch's thread count, which follows ``OMP_NUM_THREADS``), one inter-op thread, no busy-waiting
    between calls (the backend and the worker share the CPU with training).

    Raises:
        ValueError: the file is not a model ONNX Runtime can load; the message names it.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise ValueError(f"{path}: not a model ONNX Runtime can load ({type(e).__name__}: {e})") from e


def _onnx_runner(path: Path, threads: int | None) -> tuple[Runner, dict[str, Any]]:
    session = onnx_session(path, threads=threads)
    meta = parse_meta(session.get_modelmeta().custom_metadata_map.get(META_KEY), path)
    names = [o.name for o in session.get_outputs()]
    takes = {i.name for i in session.get_inputs()}  # a file exported before masks_from has no such input

    def run(image: np.ndarray, score_thresh: float, masks_from: float) -> dict[str, torch.Tensor]:
        feed = {INPUT_NAMES[0]: image, INPUT_NAMES[1]: np.array(score_thresh, np.float32),
                INPUT_NAMES[2]: np.array(masks_from, np.float32)}
        outs = session.run(None, {k: v for k, v in feed.items() if k in takes})
        return {k: torch.from_numpy(v) for k, v in zip(names, outs, strict=True)}

    return run, meta


def _torchscript_runner(path: Path) -> tuple[Runner, dict[str, Any]]:
    extra = {TORCHSCRIPT_META_FILE: ""}
    try:
        module = load_torchscript(path, extra)
    except Exception as e:  # the archive reader raises RuntimeError, unpickling others
        raise ValueError(f"{path}: not a readable TorchScript model ({type(e).__name__}: {e})") from e
    meta = parse_meta(extra[TORCHSCRIPT_META_FILE] or None, path)
    module.eval()
    with_masks_from = INPUT_NAMES[2] in meta.get("inputs", ())  # not in a file exported before it

    def run(image: np.ndarray, score_thresh: float, masks_from: float) -> dict[str, torch.Tensor]:
        args = [torch.from_numpy(image), torch.tensor(float(score_thresh))]
        if with_masks_from:
            args.append(torch.tensor(float(masks_from)))
        with torch.inference_mode():
            boxes, labels, scores, masks = module(*args)
        return {"boxes": boxes, "labels": labels, "scores": scores, "masks": masks}

    return run, meta


class ExportedPredictor(Predictor):
    """A :class:`~shoeseg.predict.Predictor` that runs an exported ``.onnx`` (ONNX Runtime) or ``.ts``
    (TorchScript) file on the CPU, one image per call.

    Args:
        path: the exported file (:func:`shoeseg.export.export_model`).
        device: only the CPU runs exported files; another device is logged and the CPU used.
        score_thresh: detections below are dropped (default: the file's serving threshold, else 0.5).
        flip_tta: must not be true: the file holds no flip TTA.
        threads: ONNX Runtime intra-op threads (default: torch's thread count).
        checkpoint: the PyTorch checkpoint the file was exported from, for :meth:`predict_in_box` and
            :meth:`embed`.
        **outputs: the rest of what a prediction gives back, as :class:`~shoeseg.predict.Predictor` takes it
            (:class:`~shoeseg.predict.OutputSettings`).

    Raises:
        FileNotFoundError / ValueError: a missing, unknown, corrupt or metadata-less file (the message names it).

    Example:
        >>> p = load_predictor("model.onnx")  # doctest: +SKIP
        >>> p.runtime, p.class_names  # doctest: +SKIP
        ('onnx', ['shoe'])
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        score_thresh: float | None = None,
        flip_tta: bool | None = None,
        threads: int | None = None,
        checkpoint: str | Path | None = None,
        **outputs: Any,
    ) -> None:
        path = Path(path)
        fmt = checked_format(path)
        if flip_tta:
            raise ValueError(f"{path}: an exported model has no flip TTA; serve the checkpoint with PyTorch for it")
        wanted = resolve_device(device)
        if wanted.type != "cpu":
            log.warning("%s: exported models run on the CPU here, not %s", path, wanted)
        self._run, meta = _onnx_runner(path, threads) if fmt == "onnx" else _torchscript_runner(path)
        self.runtime = fmt
        self.export_meta = meta
        self.device = torch.device("cpu")
        self.model = None  # no PyTorch module: evaluation computes no losses
        self.class_names = list(meta["class_names"])
        self.model_version = str(meta["version"])
        self.checkpoint_path = path
        self.checkpoint_score_thresh = meta.get("serve_score_thresh")
        self._set_outputs(OutputSettings(score_thresh=serving_score_thresh(score_thresh, self.checkpoint_score_thresh),
                                         **outputs))
        self.flip_tta = False
        self.source_checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._torch: Predictor | None = None

    @property
    def input_fit(self) -> tuple[int, int]:
        """``(min_size, max_size)`` of the exported model's resize (from its metadata)."""
        size = self.export_meta["input"]
        return int(size["min_size"]), int(size["max_size"])

    def forward_raw(self, images: Sequence[np.ndarray], *, score_thresh: float | None = None,
                    flip_tta: bool | None = None, masks_from: float | None = None) -> list[dict[str, torch.Tensor]]:
        """The exported model's outputs for each image (boxes, labels, scores, soft masks at image size); masks
        only for the detections scoring at least ``masks_from`` (``None``: every one), as
        :meth:`Predictor.forward_raw` gives them (a file exported before ``masks_from`` gives every mask)."""
        if flip_tta:
            raise ValueError(f"{self.checkpoint_path}: an exported model has no flip TTA")
        thresh = self.score_thresh if score_thresh is None else float(score_thresh)
        arrays = [as_rgb_uint8(im, where=f"image {i}") for i, im in enumerate(images)]
        with self._lock:
            return [self._run(a, thresh, 0.0 if masks_from is None else float(masks_from)) for a in arrays]

    def _pytorch(self, what: str) -> Predictor:
        if self._torch is None:
            if self.source_checkpoint is None:
                raise NotImplementedError(
                    f"{self.checkpoint_path}: {what} needs the model's insides, which an exported file does not "
                    "expose; use the PyTorch checkpoint")
            log.info("%s: %s runs the PyTorch checkpoint %s", self.checkpoint_path, what, self.source_checkpoint)
            self._torch = Predictor.from_checkpoint(self.source_checkpoint, device="cpu", flip_tta=False,
                                                    **asdict(self.outputs))
        return self._torch

    def predict_in_box(self, image: np.ndarray, box_xyxy: Sequence[float]):
        """As :meth:`Predictor.predict_in_box`, on the PyTorch checkpoint the file came from."""
        return self._pytorch("a prediction in a given box").predict_in_box(image, box_xyxy)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """As :meth:`Predictor.embed`, on the PyTorch checkpoint the file came from."""
        return self._pytorch("pooled backbone features").embed(images)


def onnx_path_beside(checkpoint: str | Path, *, int8: bool = False) -> Path:
    """Where the ONNX artefact of a checkpoint lives: ``model.onnx`` (``model.int8.onnx``) beside ``model.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + (".int8" if int8 else "") + ".onnx")


def _quantized(meta: dict[str, Any]) -> tuple[bool, bool]:
    """Whether an exported file is int8, and whether statically (calibrated), from its metadata."""
    what = meta.get("quantized") or ""
    return bool(what), "static" in what


def ensure_onnx(checkpoint: str | Path, *, int8: bool = False) -> Path:
    """The ONNX file of ``checkpoint``, exported beside it unless one of the same version is already there
    (in a temporary folder when the checkpoint's folder is read-only).

    One process exports a version at a time: the worker (before it promotes the version) and the backend (when
    it loads it) take a lock file beside the export, so the one that comes second waits for the file instead
    of exporting it again.

    Raises:
        shoeseg.export.ExportError: the model cannot be exported.
    """
    from shoeseg.checkpoint import read_calibration_images, read_checkpoint_meta

    checkpoint = Path(checkpoint)
    version = read_checkpoint_meta(checkpoint)["version"]
    calibration = read_calibration_images(checkpoint) if int8 else []
    candidates = [onnx_path_beside(checkpoint, int8=int8),
                  Path(tempfile.gettempdir()) / "shoeseg-onnx" / onnx_path_beside(f"{version}.pt", int8=int8).name]

    def exported(path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            meta = read_export_meta(path)
        except ValueError as e:
            log.warning("%s: exporting again (%s)", path, e)
            return False
        return (meta.get("version") == version and _quantized(meta) == (int8, bool(calibration))
                and meta.get("inputs") == list(INPUT_NAMES))  # one exported before masks_from: again

    for path in candidates:
        if exported(path):
            return path
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _export_lock(path):
                if not exported(path):  # another process may have written it while this one waited
                    export_model(checkpoint, path, fmt="onnx")
                    if int8:
                        quantize_onnx(path, path, calibration=calibration)
            return path
        except OSError as e:
            log.warning("cannot write %s (%s)", path, e)
    raise OSError(f"no writable place for the ONNX file of {checkpoint}: {', '.join(map(str, candidates))}")


@contextmanager
def _export_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` for as long as the block runs (advisory, between processes)."""
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def serving_export(checkpoint: str | Path, *, runtime: str = "auto", device: str | torch.device = "auto") -> Path | None:
    """The exported file ``checkpoint`` is served from in ``runtime``, exported now unless it is there
    (:func:`ensure_onnx`, int8 as the checkpoint's ``int8_box_head`` asks); ``None`` when PyTorch serves it.

    The worker calls it before it promotes a version, so the backend's first request after the promotion loads
    the file instead of exporting it.

    Raises:
        shoeseg.export.ExportError: the model cannot be exported.
    """
    from shoeseg.checkpoint import read_checkpoint_meta
    from shoeseg.model import ModelConfig

    if resolve_runtime(runtime, device) == "torch":
        return None
    mcfg = ModelConfig.from_dict(read_checkpoint_meta(checkpoint)["model_config"])
    return ensure_onnx(checkpoint, int8=mcfg.int8_box_head)


def load_predictor(checkpoint: str | Path, *, runtime: str = "auto", device: str | torch.device = "auto",
                   **kwargs: Any) -> Predictor:
    """A predictor for a checkpoint in the runtime ``SHOESEG_RUNTIME`` names (see the module docstring), or
    for an exported file as it is (:class:`ExportedPredictor`, whatever ``runtime`` says).

    Args:
        checkpoint: a registry version's ``model.pt``, or an exported file.
        runtime: ``torch``, ``onnx`` or ``auto``.
        device: ``auto``, ``cpu`` or ``cuda``.
        **kwargs: :meth:`shoeseg.predict.Predictor.from_checkpoint`'s (``score_thresh``, ``batch_size``...).

    Raises:
        ValueError: an unknown runtime, or ``onnx`` without ONNX Runtime.
        shoeseg.export.ExportError: ``onnx`` for a model that cannot be exported (``auto`` falls back to
            PyTorch with a warning).

    Example:
        >>> load_predictor("models/versions/v1/model.pt", runtime="onnx").runtime  # doctest: +SKIP
        'onnx'
    """
    from shoeseg.checkpoint import read_checkpoint_meta
    from shoeseg.export import ExportError
    from shoeseg.model import ModelConfig

    chosen = resolve_runtime(runtime, device)
    if export_format_of(checkpoint) is not None:
        return ExportedPredictor(checkpoint, device=device, **kwargs)
    if chosen == "torch":
        return Predictor.from_checkpoint(checkpoint, device=device, **kwargs)
    mcfg = ModelConfig.from_dict(read_checkpoint_meta(checkpoint)["model_config"])
    if mcfg.flip_tta and kwargs.get("flip_tta") is not False:
        log.warning("%s asks for flip TTA, which ONNX files do not hold: served without it", checkpoint)
    kwargs.pop("flip_tta", None)
    try:
        path = serving_export(checkpoint, runtime=chosen, device=device)
    except (ExportError, OSError) as e:
        if runtime != "auto":
            raise
        log.warning("%s: serving with PyTorch, the ONNX export failed (%s)", checkpoint, e)
        return Predictor.from_checkpoint(checkpoint, device=device, **kwargs)
    predictor = ExportedPredictor(path, device=device, checkpoint=checkpoint, **kwargs)
    log.info("%s served by ONNX Runtime from %s", predictor.model_version, path)
    return predictor
