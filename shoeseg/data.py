"""Training data: a torch dataset over the canonical annotations, and paired ``(image, target)`` transforms.

Images are resolved as ``images_dir / ImageRecord.file_name`` and read with
:func:`via_tools.images.read_image` (RGB, EXIF orientation applied). Each instance's polygons become a mask
through :func:`shoeseg.geometry.polygons_to_mask`, the one place where that happens. Transforms take and
return ``(image, target)`` so that masks and boxes move with the pixels, as in torchvision's
``references/detection``.

A target is the dict torchvision's Mask R-CNN takes: ``boxes`` (float ``(N, 4)`` xyxy pixels), ``labels``
(int64, 1-based class index), ``masks`` (uint8 ``(N, H, W)``), plus ``image_id``, ``area`` and ``iscrowd``.

Copy-paste augmentation ("Simple Copy-Paste", Ghiasi et al., CVPR 2021) wraps a whole dataset rather than
being one more paired transform, because it needs a second sample: :class:`CopyPaste` pastes a random subset
of another (already transformed) sample's instances onto each sample with probability ``p``, and
:func:`with_copy_paste` is the switch for the training code::

    train_ds = with_copy_paste(ShoeDataset(ds, images_dir=d, transforms=train_transforms(...)), p=0.5)

Instances the pasted pixels occlude lose those pixels (and are dropped when too little is left), and every box
of an augmented sample is recomputed from its mask (:func:`shoeseg.geometry.mask_box_xyxy`).

:func:`split_dataset` splits the annotations into train, validation and test images by file name, and
:func:`subset` takes one part of such a split.
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

from shoeseg.geometry import mask_box_xyxy, polygons_to_mask
from via_tools.images import ImageReadError, decode_image_scaled, read_image
from via_tools.model import AnnotationSet, ImageRecord

log = logging.getLogger(__name__)

#: Training images a checkpoint keeps for calibrating a static int8 quantisation (:func:`calibration_images`).
CALIBRATION_IMAGES = 8

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


# -- copy-paste augmentation ---------------------------------------------------------------------------


class CopyPaste(torch.utils.data.Dataset):
    """Simple Copy-Paste (Ghiasi et al., CVPR 2021) over a dataset of ``(image, target)`` pairs.

    With probability ``p``, sample ``index`` (the destination) gets instances of another sample (the source,
    chosen uniformly among the others) pasted on top:

    * **subset**: each source instance is kept with probability 0.5, at least one (chosen at random);
    * **scale**: the source image and its masks are resized (bilinear for the image, nearest for the masks) by
      ``s * u``, where ``s`` is the factor that fits the source inside the destination and ``u`` is drawn
      uniformly from ``scale_range``;
    * **placement**: at a random offset, so that a source smaller than the destination lies wholly inside it and
      a larger one covers it; whatever falls outside the destination is cropped;
    * **paste**: destination pixels under the union of the pasted masks take the source's values, all others
      stay as they were (no blending);
    * **occlusion**: the union is removed from every destination mask; a destination instance is dropped when
      nothing is left of it, or when it lost pixels and fewer than ``min_area_px`` are left (untouched
      instances are always kept). A pasted instance with fewer than ``min_area_px`` pixels inside the
      destination is not pasted at all;
    * **target**: destination instances first (in their order), then pasted ones; every box is recomputed
      from its mask with :func:`shoeseg.geometry.mask_box_xyxy` (``x2 = last column + 1``), ``area`` is the
      mask's pixel count, ``iscrowd`` is zero, ``image_id`` and any other keys are the destination's.

    When there is nothing to paste (the dataset has one sample, the source has no instances, or none is
    large enough), the destination comes back unchanged, so an augmented sample is never left without
    instances. Both samples go through the wrapped dataset's own transforms.

    Args:
        dataset: the samples, e.g. a :class:`ShoeDataset` with :func:`train_transforms`.
        p: probability of pasting onto a sample, in ``[0, 1]``.
        scale_range: ``(low, high)`` factors, ``0 < low <= high``, relative to the size that fits the source
            into the destination; above 1 the source is cropped.
        min_area_px: fewest mask pixels an occluded or pasted instance must keep, at least 1.
        seed: seeds a private :class:`random.Random`; by default the module-level :mod:`random` is used, as the
            paired transforms do (a DataLoader reseeds it in each worker, whereas a private generator is
            copied into every worker with the same state).

    Raises:
        ValueError: ``p``, ``scale_range`` or ``min_area_px`` out of range.

    Example:
        >>> train_ds = CopyPaste(ShoeDataset(ds, images_dir="images",  # doctest: +SKIP
        ...                                  transforms=train_transforms(min_size=512, max_size=853)), p=0.5)
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        *,
        p: float = 0.5,
        scale_range: tuple[float, float] = (0.5, 1.0),
        min_area_px: int = 10,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"copy-paste probability must be in [0, 1], got {p}")
        low, high = (float(v) for v in scale_range)
        if not 0.0 < low <= high:
            raise ValueError(f"copy-paste scale range must satisfy 0 < low <= high, got {scale_range}")
        if min_area_px < 1:
            raise ValueError(f"copy-paste min_area_px must be at least 1, got {min_area_px}")
        self.dataset = dataset
        self.p = float(p)
        self.scale_range = (low, high)
        self.min_area_px = int(min_area_px)
        self.seed = seed
        self._rng = random.Random(seed) if seed is not None else None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = self.dataset[index]
        n = len(self)
        rng = self._rng or random
        if n < 2 or self.p <= 0.0 or rng.random() >= self.p:
            return image, target
        index = index % n
        source = rng.randrange(n - 1)
        if source >= index:
            source += 1
        src_image, src_target = self.dataset[source]
        placed = self._place(src_image, src_target, image, rng)
        if placed is None:
            return image, target
        return self._paste(image, target, *placed)

    def __repr__(self) -> str:
        return f"CopyPaste(p={self.p}, scale_range={self.scale_range}, min_area_px={self.min_area_px})"

    def _place(
        self, src_image: torch.Tensor, src_target: Target, image: torch.Tensor, rng: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The chosen source instances on the destination's grid: ``(image, masks, labels)``, or None."""
        masks = src_target["masks"]
        if len(masks) == 0:
            return None
        chosen = [k for k in range(len(masks)) if rng.random() < 0.5] or [rng.randrange(len(masks))]
        masks, labels = masks[chosen], src_target["labels"][chosen]
        src_image = src_image.to(dtype=image.dtype, device=image.device)
        masks = masks.to(device=image.device)

        h, w = image.shape[-2:]
        sh, sw = src_image.shape[-2:]
        scale = min(h / sh, w / sw) * rng.uniform(*self.scale_range)
        nh, nw = max(1, round(sh * scale)), max(1, round(sw * scale))
        if (nh, nw) != (sh, sw):
            src_image = F.interpolate(src_image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            masks = F.interpolate(masks[None].float(), size=(nh, nw), mode="nearest")[0].to(masks.dtype)

        # The source's top-left corner: inside the destination when smaller, covering it when larger.
        y0 = rng.randint(min(0, h - nh), max(0, h - nh))
        x0 = rng.randint(min(0, w - nw), max(0, w - nw))
        dy1, dy2, dx1, dx2 = max(0, y0), min(h, y0 + nh), max(0, x0), min(w, x0 + nw)
        sy1, sy2, sx1, sx2 = dy1 - y0, dy2 - y0, dx1 - x0, dx2 - x0
        canvas = image.new_zeros(image.shape)
        canvas[:, dy1:dy2, dx1:dx2] = src_image[:, sy1:sy2, sx1:sx2]
        placed = masks.new_zeros((len(masks), h, w))
        placed[:, dy1:dy2, dx1:dx2] = masks[:, sy1:sy2, sx1:sx2]

        big_enough = (placed != 0).flatten(1).sum(1) >= self.min_area_px
        if not bool(big_enough.any()):
            return None
        return canvas, placed[big_enough], labels[big_enough]

    def _paste(
        self,
        image: torch.Tensor,
        target: Target,
        canvas: torch.Tensor,
        pasted: torch.Tensor,
        pasted_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, Target]:
        union = (pasted != 0).any(dim=0)
        out_image = torch.where(union, canvas, image)

        masks = target["masks"]
        before = (masks != 0).flatten(1).sum(1)
        remaining = masks.masked_fill(union, 0)
        after = (remaining != 0).flatten(1).sum(1)
        keep = (after > 0) & ((after >= self.min_area_px) | (after == before))

        labels = target["labels"]
        out_masks = torch.cat([remaining[keep], pasted.to(masks.dtype)])
        boxes = target.get("boxes")
        area = target.get("area")
        iscrowd = target.get("iscrowd")
        out = dict(target)
        out["masks"] = out_masks
        out["labels"] = torch.cat([labels[keep], pasted_labels.to(dtype=labels.dtype, device=labels.device)])
        out["boxes"] = _boxes_from_masks(out_masks, dtype=boxes.dtype if boxes is not None else torch.float32)
        out["area"] = (out_masks != 0).flatten(1).sum(1).to(area.dtype if area is not None else torch.float32)
        crowd_dtype = iscrowd.dtype if iscrowd is not None else torch.int64
        out["iscrowd"] = torch.zeros(len(out_masks), dtype=crowd_dtype, device=out_masks.device)
        return out_image, out


def _boxes_from_masks(masks: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    """``(N, 4)`` xyxy boxes of non-empty masks, by :func:`shoeseg.geometry.mask_box_xyxy`."""
    rows = [mask_box_xyxy((m != 0).cpu().numpy()) for m in masks]
    return torch.tensor(rows, dtype=dtype, device=masks.device).reshape(-1, 4)


def with_copy_paste(
    dataset: torch.utils.data.Dataset,
    p: float,
    *,
    scale_range: tuple[float, float] = (0.5, 1.0),
    min_area_px: int = 10,
    seed: int | None = None,
) -> torch.utils.data.Dataset:
    """Wraps a training dataset in :class:`CopyPaste`, or returns it as it is when ``p <= 0``.

    Args:
        dataset: the training samples.
        p: probability of pasting onto a sample; 0 (or less) turns copy-paste off.
        scale_range / min_area_px / seed: passed to :class:`CopyPaste`.

    Example:
        >>> ds = [(torch.zeros(3, 4, 4), {})]
        >>> with_copy_paste(ds, 0.0) is ds, with_copy_paste(ds, 0.5)
        (True, CopyPaste(p=0.5, scale_range=(0.5, 1.0), min_area_px=10))
    """
    if p <= 0:
        return dataset
    return CopyPaste(dataset, p=p, scale_range=scale_range, min_area_px=min_area_px, seed=seed)


def split_dataset(ds: AnnotationSet, *, train_frac: float = 0.7, val_frac: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """A deterministic train/val/test split by file name (same seed and names -> same split, in any order).

    Args:
        ds: the annotations.
        train_frac / val_frac: shares of the images; the rest is the test part.
        seed: shuffling seed.

    Returns:
        ``{"seed", "train_frac", "val_frac", "train": [...], "val": [...], "test": [...]}`` (file names).

    Example:
        >>> s = split_dataset(ds, seed=0)  # doctest: +SKIP
        >>> len(s["train"]), len(s["val"]), len(s["test"])  # doctest: +SKIP
        (53, 15, 8)
    """
    if not (0 < train_frac <= 1 and 0 <= val_frac <= 1 and train_frac + val_frac <= 1 + 1e-9):
        raise ValueError(f"bad split fractions train={train_frac} val={val_frac}")
    names = [image_key(r) for r in ds.images]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"file names must be unique to split by name; repeated: {dupes[:5]}")
    names = sorted(names)
    random.Random(seed).shuffle(names)
    n = len(names)
    n_train = min(n, max(1, round(n * train_frac))) if n else 0
    n_val = min(n - n_train, round(n * val_frac))
    if val_frac > 0 and n_val == 0 and n - n_train == 0 and n >= 2:
        n_train -= 1  # keep at least one image to validate on
    if val_frac > 0 and n_val == 0 and n - n_train > 0:
        n_val = 1
    return {
        "seed": seed,
        "train_frac": train_frac,
        "val_frac": val_frac,
        "train": names[:n_train],
        "val": names[n_train : n_train + n_val],
        "test": names[n_train + n_val :],
    }


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


def calibration_images(dataset: AnnotationSet, *, images_dir: str | Path, fit: tuple[int, int],
                       n: int | None = None) -> list[np.ndarray]:
    """Up to ``n`` (:data:`CALIBRATION_IMAGES`) training images, evenly spread over the
    dataset, decoded to fit the model's input as served: what a static int8 quantisation is calibrated on."""
    records = list(dataset.images)
    n = CALIBRATION_IMAGES if n is None else n
    picked = [records[round(i * len(records) / n)] for i in range(n)] if len(records) > n else records
    out = []
    for rec in picked:
        try:
            path = resolve_image_path(Path(images_dir), rec)
            out.append(decode_image_scaled(path.read_bytes(), name=str(path), fit_within=fit)[0])
        except (OSError, ImageReadError) as e:  # trained on, so readable; a file removed since is skipped
            log.warning("calibration image %s left out: %s", rec.file_name, e)
    return out
