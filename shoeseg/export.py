"""Export a trained model to one ONNX or TorchScript file that holds the whole detector and its metadata.

The exported graph takes what a photo is: an RGB ``uint8`` ``(H, W, 3)`` array of any size, a float
``score_thresh`` (a scalar input, so one file serves every threshold) and a float ``masks_from`` (the mask
head runs on the detections scoring at least this only; 0 for every one). It holds all of Mask R-CNN's
inference: the conversion to ``[0, 1]``, the model's normalisation and resize (shorter side ``min_size``,
longer side capped at ``max_size``, padded to a multiple of 32), the body, the feature pyramid, the RPN, the
box head with its class-wise NMS, and the mask head, whose probabilities are pasted into the image. It gives
``boxes`` (``(N, 4)`` xyxy pixels of the input), ``labels`` (``(N,)`` int64, 1 = the first class),
``scores`` (``(N,)``) and ``masks`` (``(K, 1, H, W)`` probabilities of the first ``K <= N`` detections, those
scoring at least ``masks_from``), highest score first: what ``model([image])`` gives in PyTorch. Image sizes
are dynamic; one image per call.

How:

* ONNX with the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset
  :data:`ONNX_OPSET`): torchvision's detection models are written for it (their ``_is_tracing`` branches keep
  sizes symbolic, and torchvision registers ``roi_align`` and ``nms``). The newer ``dynamo=True`` exporter,
  the default of this torch, does not follow the detector's data-dependent shapes (the number of proposals
  and detections).
* TorchScript with :func:`torch.jit.trace` of the same wrapper, so both files hold the same graph
  (``torch.jit`` is deprecated from torch 2.14 in favour of ``torch.export``, whose programs the detector's
  data-dependent shapes do not fit either; ONNX is the format to prefer).

Serving choices are not exported: the dynamic-int8 box head (``torch.ao`` quantized layers have no ONNX
form; the float model is exported, and :func:`quantize_onnx` gives ONNX Runtime's own int8 version, calibrated
on the images the checkpoint keeps) and flip
test-time augmentation (the file runs each image once). Both are logged when a checkpoint asks for them.

The metadata (format, version, class names, family, input sizes, serving thresholds, what was left out) is a
JSON text under the key :data:`META_KEY`: an ONNX ``metadata_props`` entry, or the TorchScript archive's extra
file ``shoeseg.json``. :func:`read_export_meta` reads it back.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from via_tools.files import atomic_path

log = logging.getLogger(__name__)

EXPORT_FORMAT = "shoeseg-export/1"
#: Export formats and the file suffixes read as each.
FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript"}
META_KEY = "shoeseg"
TORCHSCRIPT_META_FILE = "shoeseg.json"
#: opset 16 has RoiAlign with half-pixel coordinates (torchvision's aligned=True); 17 is well supported by ORT.
ONNX_OPSET = 17
#: ``masks_from``: the mask head runs on detections scoring at least this only (:func:`shoeseg.inference.detect`);
#: files exported before it have the first two inputs, and a mask for every detection.
INPUT_NAMES = ("image", "score_thresh", "masks_from")
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")


class ExportError(RuntimeError):
    """The model cannot be exported; the message names the layer (module path) that stops it, when known."""


def export_format_of(path: str | Path) -> str | None:
    """``"onnx"`` or ``"torchscript"`` for a file whose suffix says it is an exported model, else ``None``."""
    return SUFFIXES.get(Path(path).suffix.lower())


class ServingGraph(nn.Module):
    """Mask R-CNN as it is exported: a ``uint8`` ``(H, W, 3)`` image and a score threshold in, the four
    outputs of ``model([image])`` out (see the module docstring).

    It runs the detector's parts as torchvision's ``GeneralizedRCNN.forward`` does at inference, with one
    change: the resized size is computed in float64, as PyTorch computes it for a Python float scale, so that
    the traced graph resizes every image to exactly the size eager PyTorch does (torchvision's own traced
    resize uses a float32 scale and is one pixel short for some sizes, which moves every detection a little).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        transform = self.model.transform
        shape = torch._shape_as_tensor(image)[-2:].to(torch.float64)  # a tensor of the graph when traced
        # one-element float64 tensors throughout: the exporter casts 0-d tensors and Python floats to float32
        limits = torch.tensor([float(transform.min_size[-1]), float(transform.max_size)], dtype=torch.float64)
        sides = torch.cat([shape.min(dim=0, keepdim=True).values, shape.max(dim=0, keepdim=True).values])
        scale = torch.div(limits, sides).min(dim=0, keepdim=True).values
        size = torch.floor(shape * scale).to(torch.int64)
        out_hw = [size[0], size[1]] if torch.jit.is_tracing() else [int(v) for v in size.tolist()]
        return nn.functional.interpolate(image[None], size=out_hw, mode="bilinear", align_corners=False)[0]

    def forward(self, image: torch.Tensor, score_thresh: torch.Tensor, masks_from: torch.Tensor):
        from torchvision.models.detection.image_list import ImageList

        from shoeseg.inference import detect

        model = self.model
        x = image.permute(2, 0, 1).float() / 255.0
        original_hw = (x.shape[-2], x.shape[-1])
        x = self._resize(model.transform.normalize(x))
        resized_hw = (x.shape[-2], x.shape[-1])
        batch = ImageList(model.transform.batch_images([x], size_divisible=model.transform.size_divisible),
                          [resized_hw])
        roi_heads = model.roi_heads
        saved = roi_heads.score_thresh
        roi_heads.score_thresh = score_thresh  # traced as the graph's input, not as a constant
        try:
            out = detect(model, batch, [original_hw], masks_from)[0]
        finally:
            roi_heads.score_thresh = saved
        return out["boxes"], out["labels"], out["scores"], out["masks"]


def _example_image(height_px: int, width_px: int) -> torch.Tensor:
    """A deterministic textured image for tracing (the trace does not depend on its content)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height_px, 0:width_px]
    base = 127 + 60 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 11.0)[..., None]
    img = base + rng.normal(0, 20, (height_px, width_px, 3))
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8))


# -- which layer stops the export ---------------------------------------------------------------------------

_QUANTIZED_MODULE_PREFIXES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def check_exportable(model: nn.Module) -> None:
    """Raises :class:`ExportError` naming the first layer known to have no exported form (a ``torch.ao``
    quantized layer, such as the dynamic-int8 box head).

    Example:
        >>> check_exportable(build_model(num_classes=1, weights=None))  # doctest: +SKIP
    """
    for name, module in model.named_modules():
        kind = type(module).__module__
        if kind.startswith(_QUANTIZED_MODULE_PREFIXES):
            raise ExportError(
                f"layer {name} ({type(module).__name__}) cannot be exported: torch.ao quantized layers have no "
                "ONNX or traced form. Export the float model (the int8 box head is a serving choice of the "
                "PyTorch runtime) and quantise the ONNX file with ONNX Runtime (shoeseg export --int8).")


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """Keeps the path of the modules whose ``forward`` is running (innermost last) while the block runs."""
    # layer paths as in the detector's own state dict (the ServingGraph wrapper's "model." left out)
    names = {id(m): n.removeprefix("model.") or type(m).__name__ for n, m in model.named_modules()}
    stack: list[str] = []

    def enter(module: nn.Module, _args: Any) -> None:
        stack.append(names[id(module)])

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:  # returns None: the output is kept
        if stack:
            stack.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _layers_calling(model: nn.Module, args: tuple, ops: set[str]) -> dict[str, str]:
    """For each operator name in ``ops`` (``aten::cummax``), the innermost layer whose forward calls it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    found: dict[str, str] = {}
    with _module_stack(model) as stack:

        class _Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func._schema.name
                if name in ops and stack and name not in found:
                    found[name] = stack[-1]
                return func(*args, **(kwargs or {}))

        try:
            with torch.no_grad(), _Record():
                model(*args)
        except Exception:  # noqa: BLE001 - a diagnosis only: what was recorded before a failure still counts
            pass
    return found


def _export_error(model: nn.Module, args: tuple, error: Exception, stack: list[str], fmt: str) -> ExportError:
    text = f"{type(error).__name__}: {error}".strip()
    first_line = text.splitlines()[0] if text else type(error).__name__
    if stack:  # raised while a layer's forward ran (during tracing)
        return ExportError(f"layer {stack[-1]} cannot be exported to {fmt}: {first_line}")
    ops = set(re.findall(r"\b([A-Za-z_]\w*::\w+)", text))
    layers = _layers_calling(model, args, ops) if ops else {}
    if layers:
        where = ", ".join(f"layer {layer} (operator {op})" for op, layer in sorted(layers.items()))
        return ExportError(f"{where} cannot be exported to {fmt}: {first_line}")
    return ExportError(f"the model cannot be exported to {fmt} (no single layer identified): {first_line}")


# -- export ---------------------------------------------------------------------------------------------------

def _metadata(ckpt: Any, fmt: str, *, source: str | None) -> dict[str, Any]:
    from shoeseg import __version__
    from shoeseg.predict import DEFAULT_SCORE_THRESH

    mcfg = ckpt.model_config
    left_out = []
    if mcfg.int8_box_head:
        left_out.append("int8_box_head: the float box head is exported (ONNX Runtime int8: shoeseg export --int8)")
    if mcfg.flip_tta:
        left_out.append("flip_tta: the file runs each image once, without its mirror image")
    return {
        "format": EXPORT_FORMAT,
        "export_format": fmt,
        "version": ckpt.version,
        "parent_version": ckpt.parent_version,
        "class_names": list(ckpt.class_names),
        "arch": mcfg.arch,
        "input": {"layout": "HWC", "dtype": "uint8", "channels": "RGB", "dynamic_size": True,
                  "min_size": mcfg.min_size, "max_size": mcfg.max_size, "size_divisible": 32},
        "serve_score_thresh": ckpt.serve_score_thresh,
        "default_score_thresh": DEFAULT_SCORE_THRESH,
        "mask_thresh": 0.5,
        "box_detections_per_img": mcfg.box_detections_per_img,
        "box_nms_thresh": mcfg.box_nms_thresh,
        "rpn_post_nms_top_n_test": mcfg.rpn_post_nms_top_n_test,
        "model_config": mcfg.to_dict(),
        "metrics": {k: v for k, v in (ckpt.metrics or {}).items() if isinstance(v, int | float)},
        "left_out": left_out,
        "split": (ckpt.extra or {}).get("split"),
        "quantized": None,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "exported_from": source,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shoeseg_version": __version__,
        "torch_version": torch.__version__,
    }


def export_model(source: Any, out: str | Path, *, fmt: str = "onnx", int8: bool = False) -> dict[str, Any]:
    """Exports a checkpoint to one ONNX or TorchScript file (written atomically) and returns its metadata.

    Args:
        source: a checkpoint path (:func:`shoeseg.checkpoint.save_checkpoint`) or a loaded
            :class:`shoeseg.checkpoint.Checkpoint`.
        out: the file to write (``.onnx`` for ONNX; ``.ts`` or ``.torchscript`` for TorchScript are the
            suffixes :meth:`shoeseg.predict.Predictor.from_checkpoint` recognises).
        fmt: ``"onnx"`` or ``"torchscript"``.
        int8: ONNX only: quantise to int8 with ONNX Runtime's quantiser (:func:`quantize_onnx`): the matrix
            products dynamically, and the pyramid's and RPN's convolutions statically when the checkpoint keeps
            calibration images (every checkpoint ``shoeseg train`` writes does).

    Returns:
        The metadata written into the file.

    Raises:
        ExportError: a layer cannot be exported (the message names it).
        ValueError / FileNotFoundError: an unknown format, or a checkpoint that cannot be read.

    Example:
        >>> export_model("runs/shoes/model.pt", "model.onnx")["class_names"]  # doctest: +SKIP
        ['shoe']
    """
    from shoeseg.checkpoint import Checkpoint, load_checkpoint

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if int8 and fmt != "onnx":
        raise ValueError("int8 quantisation is offered for ONNX files only (ONNX Runtime's quantiser)")
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    origin = str(ckpt.path) if ckpt.path is not None else None
    model = ckpt.model.eval().to("cpu")
    check_exportable(model)
    meta = _metadata(ckpt, fmt, source=origin)
    for note in meta["left_out"]:
        log.info("export of %s: not exported: %s", ckpt.version, note)
    graph = ServingGraph(model).eval()
    mcfg = ckpt.model_config
    example = (_example_image(mcfg.min_size, min(mcfg.max_size, mcfg.min_size * 4 // 3)),
               torch.tensor(0.0), torch.tensor(0.0))  # thresholds 0 at trace time: every path of the heads runs
    out = Path(out)
    with atomic_path(out) as tmp:
        failure: tuple[Exception, list[str]] | None = None
        with _module_stack(graph) as stack, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of torchvision's own shape handling
            try:
                with torch.no_grad():
                    if fmt == "onnx":
                        _export_onnx(graph, example, tmp)
                    else:
                        traced = torch.jit.trace(graph, example, check_trace=False)
            except Exception as e:  # noqa: BLE001 - every exporter failure becomes an ExportError naming the layer
                failure = (e, list(stack))
        if failure is not None:
            raise _export_error(graph, example, failure[0], failure[1], fmt) from failure[0]
        if fmt == "onnx":
            write_onnx_meta(tmp, meta)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit deprecated
                torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_META_FILE: json.dumps(meta)})
    log.info("exported %s (%s) to %s", ckpt.version, fmt, out)
    if int8:
        meta = quantize_onnx(out, out, calibration=_calibration_of(ckpt))
    return meta


def _calibration_of(ckpt: Any) -> list[np.ndarray]:
    """The calibration images a loaded checkpoint's file keeps (none for a checkpoint held only in memory)."""
    from shoeseg.checkpoint import read_calibration_images

    return read_calibration_images(ckpt.path) if ckpt.path is not None else []


def _export_onnx(graph: nn.Module, example: tuple, path: Path) -> None:
    n = "detections"
    torch.onnx.export(
        graph, example, str(path), dynamo=False, opset_version=ONNX_OPSET,
        input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
        dynamic_axes={"image": {0: "height", 1: "width"}, "boxes": {0: n}, "labels": {0: n}, "scores": {0: n},
                      "masks": {0: "masked", 2: "height", 3: "width"}},
    )


def write_onnx_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Writes ``meta`` (JSON) into an ONNX file's ``metadata_props`` under :data:`META_KEY`, in place."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    proto.doc_string = f"ShoeSeg Mask R-CNN {meta.get('arch')} version {meta.get('version')}"
    onnx.save(proto, str(path))


#: The convolutions a static int8 quantisation covers (ONNX node-name prefixes): the feature pyramid's and the
#: RPN's shared 3x3 convolution, 256 channels wide on every level, most of the model's arithmetic. The body's
#: depthwise convolutions, the RPN's and the mask head's outputs stay float (measured: quantising every
#: convolution cost 0.02 mask AP in a trial, these 0.003-0.006; README, "Serving runtimes").
STATIC_INT8_PREFIXES = ("/backbone/fpn/", "/rpn/head/conv")


def quantize_onnx(src: str | Path, dst: str | Path, *, op_types: tuple[str, ...] = ("MatMul", "Gemm"),
                  calibration: Sequence[np.ndarray] = ()) -> dict[str, Any]:
    """ONNX Runtime's int8 quantisation of an exported file; ``dst`` may be ``src``; its metadata records it.

    * Always: dynamic int8 (weights int8, activations quantised per call) of the matrix products: the box
      head's two 1024-wide layers, which score every proposal.
    * With ``calibration`` images (RGB ``uint8`` arrays as served, :func:`shoeseg.checkpoint.read_calibration_images`):
      also static int8 of the convolutions :data:`STATIC_INT8_PREFIXES` names, their activation ranges
      calibrated on those images (QDQ format, weights per channel; ONNX Runtime runs them as integer
      convolutions). Without calibration images convolutions stay float: ONNX Runtime's *dynamic* integer
      convolutions are slower than its float ones.

    Example:
        >>> quantize_onnx("model.onnx", "model-int8.onnx")["quantized"]  # doctest: +SKIP
        'int8 dynamic: MatMul, Gemm'
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = read_export_meta(src)
    dst = Path(dst)
    what = "int8 dynamic: " + ", ".join(op_types)
    with atomic_path(dst) as tmp:
        source = Path(src)
        if len(calibration):
            static = tmp.with_name(tmp.name + ".static.onnx")
            nodes = _quantize_static(source, static, calibration)
            if nodes:
                source = static
                what = (f"int8 static (calibrated on {len(calibration)} images): {nodes} convolutions of the "
                        f"pyramid and the RPN; " + what)
        try:
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
        finally:
            if source != Path(src):
                source.unlink(missing_ok=True)
        meta = {**meta, "quantized": what}
        write_onnx_meta(tmp, meta)
    return meta


def _quantize_static(src: Path, dst: Path, calibration: Sequence[np.ndarray]) -> int:
    """Static QDQ int8 of the convolutions :data:`STATIC_INT8_PREFIXES` names, written to ``dst``; returns how
    many (0, and nothing written, when the graph has none of them)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    graph = onnx.load(str(src), load_external_data=False).graph
    nodes = [n.name for n in graph.node if n.op_type == "Conv" and n.name.startswith(STATIC_INT8_PREFIXES)]
    if not nodes:
        log.warning("%s: no convolution named %s: static int8 left out", src, " or ".join(STATIC_INT8_PREFIXES))
        return 0

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._it, None)
            return None if image is None else {INPUT_NAMES[0]: np.ascontiguousarray(image, np.uint8),
                                               INPUT_NAMES[1]: np.array(0.05, np.float32),
                                               INPUT_NAMES[2]: np.array(0.0, np.float32)}

    quantize_static(str(src), str(dst), Images(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    return len(nodes)


# -- reading ---------------------------------------------------------------------------------------------------

def checked_format(path: Path) -> str:
    """The exported file's format (``onnx`` or ``torchscript``); the file missing or of an unknown type is an
    error naming it."""
    fmt = export_format_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if fmt is None:
        raise ValueError(f"{path}: unknown model file type {path.suffix!r} (expected .onnx, .ts or .torchscript)")
    return fmt


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """The ShoeSeg metadata of an exported file (ONNX or TorchScript, by its suffix).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, a file that is not a readable model of its kind, or one without ShoeSeg
            metadata; the message names the file.

    Example:
        >>> read_export_meta("model.onnx")["input"]["min_size"]  # doctest: +SKIP
        384
    """
    path = Path(path)
    fmt = checked_format(path)
    if fmt == "onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf decode errors come in several types
            raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
        props = {p.key: p.value for p in proto.metadata_props}
        text = props.get(META_KEY)
    else:
        extra = {TORCHSCRIPT_META_FILE: ""}
        try:
            load_torchscript(path, extra)
        except Exception as e:  # RuntimeError from the archive reader, others from unpickling
            raise ValueError(f"{path}: not a readable TorchScript model ({type(e).__name__}: {e})") from e
        text = extra[TORCHSCRIPT_META_FILE] or None
    return parse_meta(text, path)


def load_torchscript(path: str | Path, extra: dict[str, Any]) -> Any:
    """:func:`torch.jit.load` on the CPU, filling ``extra`` with the archive's extra files (``torch.jit`` is
    deprecated from torch 2.14, which warns on every load; TorchScript files still load)."""
    import torchvision  # noqa: F401 - registers the torchvision::nms and roi_align operators the file calls

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra)


def parse_meta(text: str | bytes | None, path: str | Path) -> dict[str, Any]:
    """The metadata JSON of an exported file, checked; ``ValueError`` naming ``path`` otherwise."""
    if not text:
        raise ValueError(f"{path}: a model without ShoeSeg metadata (write one with `shoeseg export`)")
    try:
        meta = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its ShoeSeg metadata is not JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: ShoeSeg metadata of an unknown format (expected {EXPORT_FORMAT})")
    for key in ("version", "class_names", "input"):
        if key not in meta:
            raise ValueError(f"{path}: its ShoeSeg metadata has no {key!r}")
    return meta
