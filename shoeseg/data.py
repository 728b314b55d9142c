"""Training data: a torch dataset over the canonical annotations, and paired ``(image, target)`` transforms.

Images are resolved as ``images_dir / ImageRecord.file_name`` and read with
:func:`via_tools.images.read_image` (RGB, EXIF orientation applied). Each instance's polygons become a mask
through :func:`shoeseg.geometry.polygons_to_mask`, the one place where that happens. Transforms take and
return ``(image, target)`` so that masks and boxes move with the pixels, as in torchvision's
``references/detection``.

A target is the dict torchvision's Mask R-CNN takes: ``boxes`` (float ``(N, 4)`` xyxy pixels), ``labels``
(int64, 1-based class index), ``masks`` (uint8 ``(N, H, W)``), plus ``image_id``, ``area`` and ``iscrowd``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shoeseg.geometry import polygons_to_mask
from via_tools.images import ImageReadError, read_image
from via_tools.model import AnnotationSet, ImageRecord

log = logging.getLogger(__name__)

Target = dict[str, torch.Tensor]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


def resolve_image_path(images_dir: str | Path, record: ImageRecord) -> Path:
    """``images_dir / record.file_name``; falls back to the bare file name inside ``images_dir``.

    Raises:
        ImageReadError: neither file exists; the message names the image and both places looked at.
    """
    images_dir = Path(images_dir)
    name = record.file_name
    if "://" in name:
        local = images_dir / Path(name.split("?", 1)[0]).name
        if local.is_file():
            return local
        raise ImageReadError(f"image {name!r}: a URL; put the file in {images_dir} to train on it")
    direct = images_dir / name.lstrip("/")
    if direct.is_file():
        return direct
    base = images_dir / Path(name).name
    if base.is_file():
        return base
    raise ImageReadError(f"image {name!r}: not found at {direct}" + (f" nor {base}" if base != direct else ""))


def load_image_and_target(
    record: ImageRecord, *, images_dir: str | Path, class_names: Sequence[str], index: int = 0
) -> tuple[np.ndarray, Target]:
    """Reads one image and builds its target at the image's own size (masks via ``polygons_to_mask``).

    Raises:
        ImageReadError: the image is missing or unreadable.
        ValueError: the image's size differs from the annotation's, or a region has an unknown label.
    """
    image = read_image(resolve_image_path(images_dir, record))
    h, w = image.shape[:2]
    if record.resolution_wh is not None and record.resolution_wh != (w, h):
        raise ValueError(
            f"image {record.file_name!r}: annotated for {record.width_px}x{record.height_px} px but the file is "
            f"{w}x{h} px; the polygons would not fit it"
        )
    class_index = {c: i + 1 for i, c in enumerate(class_names)}
    boxes, labels, masks, areas = [], [], [], []
    for k, region in enumerate(record.instances):
        if region.label not in class_index:
            raise ValueError(
                f"image {record.file_name!r}, region {region.region_id or k}: label {region.label!r} is not one of "
                f"the model's classes {list(class_names)}"
            )
        pts = np.concatenate(region.polygons)
        x1, y1 = np.clip(pts.min(axis=0), 0, (w, h))
        x2, y2 = np.clip(pts.max(axis=0), 0, (w, h))
        if x2 - x1 < 1 or y2 - y1 < 1:
            log.warning("image %r, region %s: box under one pixel inside the image; left out",
                        record.file_name, region.region_id or k)
            continue
        mask = polygons_to_mask(region.polygons, h, w)
        boxes.append((x1, y1, x2, y2))
        labels.append(class_index[region.label])
        masks.append(mask)
        areas.append(float(mask.sum()))
    target: Target = {
        "boxes": torch.as_tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.as_tensor(labels, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
        "image_id": torch.tensor(index, dtype=torch.int64),
        "area": torch.as_tensor(areas, dtype=torch.float32),
        "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
    }
    return image, target


def to_tensor_image(image: np.ndarray) -> torch.Tensor:
    if not image.flags.writeable or not image.flags.c_contiguous:
        image = np.array(image, copy=True, order="C")  # torch wants writable memory
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


class ShoeDataset(torch.utils.data.Dataset):
    """A torch dataset over an :class:`AnnotationSet`: ``(image float (3, H, W) in [0, 1], target)`` pairs.

    Args:
        dataset: the canonical annotations.
        images_dir: where the image files are.
        class_names: class names in class-index order; the dataset's labels by default.
        transforms: a paired transform (see :func:`train_transforms`, :func:`eval_transforms`).

    Example:
        >>> ds = ShoeDataset(via_tools.io.load("shoes.json"), images_dir="images",  # doctest: +SKIP
        ...                  transforms=eval_transforms(min_size=512, max_size=853))
        >>> image, target = ds[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: AnnotationSet,
        *,
        images_dir: str | Path,
        class_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
    ) -> None:
        self.dataset = dataset
        self.records = list(dataset.images)
        self.images_dir = Path(images_dir)
        self.class_names = list(class_names) if class_names is not None else list(dataset.labels)
        if not self.class_names:
            raise ValueError("the dataset has no labelled instances, so there are no classes to train")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.records[index]
        image, target = load_image_and_target(record, images_dir=self.images_dir, class_names=self.class_names,
                                              index=index)
        tensor = to_tensor_image(image)
        if self.transforms is not None:
            tensor, target = self.transforms(tensor, target)
        return tensor, target


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Keeps images and targets as lists (Mask R-CNN batches images of different sizes itself)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


# -- paired transforms ------------------------------------------------------------------------------------


class Compose:
    """Applies paired transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def _scaled_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    scale = min(short / min(h, w), max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


class ResizeShortestEdge:
    """Resizes the shorter side to one of ``short_edges_px`` (chosen at random: scale jitter), the longer
    side capped at ``max_size_px``; masks by nearest neighbour, boxes scaled (detectron2's transform of
    the same name, ``sample_style="choice"``)."""

    def __init__(self, short_edges_px: int | Sequence[int], max_size_px: int) -> None:
        self.short_edges_px = (short_edges_px,) if isinstance(short_edges_px, int) else tuple(short_edges_px)
        self.max_size_px = int(max_size_px)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        h, w = image.shape[-2:]
        short = random.choice(self.short_edges_px) if len(self.short_edges_px) > 1 else self.short_edges_px[0]
        nh, nw = _scaled_size(h, w, short, self.max_size_px)
        if (nh, nw) == (h, w):
            return image, target
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        target = dict(target)
        masks = target.get("masks")
        if masks is not None:
            if len(masks):
                target["masks"] = F.interpolate(masks[None].float(), size=(nh, nw), mode="nearest")[0].to(torch.uint8)
            else:
                target["masks"] = masks.new_zeros((0, nh, nw))
        if "boxes" in target:
            sx, sy = nw / w, nh / h
            target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        if "area" in target:
            target["area"] = target["area"] * (nw / w) * (nh / h)
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortestEdge({self.short_edges_px}, max={self.max_size_px})"


class RandomHorizontalFlip:
    """Mirrors image, masks and boxes left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if random.random() >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        if "boxes" in target:
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class PhotometricJitter:
    """Random brightness, contrast and saturation factors in ``[1 - d, 1 + d]``; geometry untouched."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2) -> None:
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        ops = [self._brightness, self._contrast, self._saturation]
        random.shuffle(ops)
        for op in ops:
            image = op(image)
        return image.clamp_(0.0, 1.0), target

    def _brightness(self, im: torch.Tensor) -> torch.Tensor:
        return im * random.uniform(1 - self.brightness, 1 + self.brightness)

    def _contrast(self, im: torch.Tensor) -> torch.Tensor:
        mean = _gray(im).mean()
        return (im - mean) * random.uniform(1 - self.contrast, 1 + self.contrast) + mean

    def _saturation(self, im: torch.Tensor) -> torch.Tensor:
        gray = _gray(im)
        return (im - gray) * random.uniform(1 - self.saturation, 1 + self.saturation) + gray

    def __repr__(self) -> str:
        return f"PhotometricJitter({self.brightness}, {self.contrast}, {self.saturation})"


def _gray(image: torch.Tensor) -> torch.Tensor:
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]


def jitter_sizes(min_size: int, scale_jitter: float, *, steps: int = 5) -> tuple[int, ...]:
    """Shorter-side choices for scale jitter: ``steps`` sizes evenly from ``(1 - j)`` to ``(1 + j)`` times
    ``min_size``."""
    if scale_jitter <= 0:
        return (int(min_size),)
    sizes = np.linspace(min_size * (1 - scale_jitter), min_size * (1 + scale_jitter), steps)
    return tuple(sorted({max(8, int(round(s))) for s in sizes}))


def train_transforms(
    *, min_size: int, max_size: int, scale_jitter: float = 0.1, flip: bool = True, photometric: bool = True
) -> Compose:
    """The training pipeline: scale-jittered resize, horizontal flip, photometric jitter.

    Example:
        >>> train_transforms(min_size=256, max_size=426)
        Compose([ResizeShortestEdge((230, 243, 256, 269, 282), max=426), RandomHorizontalFlip(p=0.5), PhotometricJitter(0.2, 0.2, 0.2)])
    """
    ts: list[Any] = [ResizeShortestEdge(jitter_sizes(min_size, scale_jitter), max_size)]
    if flip:
        ts.append(RandomHorizontalFlip(0.5))
    if photometric:
        ts.append(PhotometricJitter())
    return Compose(ts)


def eval_transforms(*, min_size: int, max_size: int) -> Compose:
    """The evaluation pipeline: a fixed resize, as at inference."""
    return Compose([ResizeShortestEdge(min_size, max_size)])


def subset(dataset: AnnotationSet, file_names: Sequence[str]) -> AnnotationSet:
    """The images of ``dataset`` named in ``file_names`` (in that order), with the same labels.

    Raises:
        KeyError: a name that is not in the dataset.
    """
    by_name = {image_key(r): r for r in dataset.images}
    missing = [n for n in file_names if n not in by_name]
    if missing:
        raise KeyError(f"{len(missing)} image(s) of the split are not in the dataset: {missing[:5]}")
    return AnnotationSet(images=[by_name[n] for n in file_names], labels=list(dataset.labels),
                         source_format=dataset.source_format, meta=dataset.meta)


def image_key(record: ImageRecord) -> str:
    """The name an image goes by in split files: its file name."""
    return record.file_name
