"""The images a simulation works on: the test split, the pool, each seed's start set, pre-scaled copies."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from shoeseg.active_learning import random_score
from via_tools.files import atomic_path
from via_tools.model import AnnotationSet, ImageRecord

log = logging.getLogger(__name__)


def split_pool(ds: AnnotationSet, *, test_frac: float, seed: int, test_size: int | None = None,
               pool_size: int | None = None) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """A seeded ``(pool, test)`` split of the images that have at least one instance.

    ``test_frac`` of them are held out, at most ``test_size``; the pool is the rest, at most ``pool_size`` of it
    (both drawn from the same seeded shuffle, so a cap only drops images, it never moves one between the two).

    Example:
        >>> pool, test = split_pool(ds, test_frac=0.3, seed=0)  # doctest: +SKIP
    """
    import random

    images = [im for im in ds.images if im.instances]
    dropped = len(ds.images) - len(images)
    if dropped:
        log.warning("%d of %d images have no instance and are left out of the simulation", dropped, len(ds.images))
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_frac * len(images)))
    test = [images[i] for i in order[:n_test]]
    pool = [images[i] for i in order[n_test:]]
    if test_size is not None and len(test) > test_size:
        test = test[:int(test_size)]
    if pool_size is not None and len(pool) > pool_size:
        log.info("the pool keeps %d of its %d images (pool_size)", pool_size, len(pool))
        pool = pool[:int(pool_size)]
    return pool, test


def start_set(pool: Sequence[ImageRecord], *, start: int, seed: int) -> list[ImageRecord]:
    """The ``start`` labelled images of a seed: the lowest seeded hashes of the file names (independent of the
    pool's order and of the split's shuffle).

    Example:
        >>> [im.file_name for im in start_set(pool, start=2, seed=1)]  # doctest: +SKIP
        ['img07.jpg', 'img02.jpg']
    """
    order = sorted(range(len(pool)), key=lambda i: (random_score(("start", pool[i].file_name), seed=seed), i))
    return [pool[i] for i in order[:start]]


def subset(ds: AnnotationSet, images: Sequence[ImageRecord]) -> AnnotationSet:
    """``ds`` with only ``images`` (its labels and source format kept)."""
    return AnnotationSet(images=list(images), labels=list(ds.labels), source_format=ds.source_format)


def prescale_dataset(
    ds: AnnotationSet, *, images_dir: Path, out_dir: Path, min_size: int, max_size: int
) -> tuple[AnnotationSet, Path]:
    """A copy of ``ds`` whose images are resized to the model's input size, written under ``out_dir``.

    The scale of each image is ``min(min_size / shorter side, max_size / longer side, 1)`` (the model's own
    resize rule, never enlarging); polygons are scaled by the same factor. Files already there are reused.

    Example:
        >>> small, small_dir = prescale_dataset(ds, images_dir=Path("images"), out_dir=Path("runs/al/images-256"),
        ...                                     min_size=256, max_size=384)  # doctest: +SKIP
    """
    from PIL import Image

    from via_tools.images import read_image
    from via_tools.model import Region

    out_images: list[ImageRecord] = []
    for im in ds.images:
        src = images_dir / im.file_name
        dst = out_dir / im.file_name
        arr = read_image(src)
        h, w = arr.shape[:2]
        scale = min(min_size / min(h, w), max_size / max(h, w), 1.0)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if not dst.is_file():
            jpeg = dst.suffix.lower() in (".jpg", ".jpeg")
            small = Image.fromarray(arr).resize((new_w, new_h), Image.BILINEAR)
            with atomic_path(dst) as tmp:
                small.save(tmp, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {}))
        sx, sy = new_w / w, new_h / h
        regions = [
            Region(label=r.label, polygons=tuple(p * (sx, sy) for p in r.polygons), attributes=dict(r.attributes),
                   region_id=r.region_id)
            for r in im.instances
        ]
        out_images.append(ImageRecord(file_name=im.file_name, width_px=new_w, height_px=new_h, regions=regions,
                                      image_id=im.image_id))
    return AnnotationSet(images=out_images, labels=list(ds.labels), source_format=ds.source_format), out_dir


__all__ = ["prescale_dataset", "split_pool", "start_set", "subset"]
