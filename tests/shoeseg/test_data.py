"""Dataset over canonical annotations, paired transforms, and the train/val split."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from shoeseg.data import (
    PhotometricJitter,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    ShoeDataset,
    eval_transforms,
    jitter_sizes,
    split_dataset,
    subset,
    train_transforms,
)
from shoeseg.geometry import mask_box_xyxy, polygons_to_mask
from tests.synth import make_shoe_dataset
from via_tools.images import ImageReadError
from via_tools.model import AnnotationSet, ImageRecord, Region


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return make_shoe_dataset(d, n_images=3, size_px=(64, 96), seed=5), d


def test_items_carry_masks_made_from_the_polygons(synth):
    ds, d = synth
    item_ds = ShoeDataset(ds, images_dir=d)
    image, target = item_ds[0]
    rec = ds.images[0]
    assert image.shape == (3, 64, 96) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["masks"].shape == (len(rec.instances), 64, 96) and target["masks"].dtype == torch.uint8
    for mask, region, box in zip(target["masks"], rec.instances, target["boxes"], strict=True):
        assert np.array_equal(mask.numpy().astype(bool), polygons_to_mask(region.polygons, 64, 96))
        x1, y1, x2, y2 = region.bbox_xyxy()
        assert box.tolist() == pytest.approx([x1, y1, x2, y2], abs=1e-4)
    assert target["labels"].tolist() == [1] * len(rec.instances)


def test_flip_moves_masks_and_boxes_together(synth):
    ds, d = synth
    image, target = ShoeDataset(ds, images_dir=d)[1]
    fimage, ftarget = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(fimage, image.flip(-1))
    for mask, box, fmask, fbox in zip(target["masks"], target["boxes"], ftarget["masks"], ftarget["boxes"], strict=True):
        assert torch.equal(fmask, mask.flip(-1))
        x1, y1, x2, y2 = box.tolist()
        assert fbox.tolist() == pytest.approx([96 - x2, y1, 96 - x1, y2])
        # the flipped mask's pixel extent still lies inside the flipped box (within a pixel)
        mx1, my1, mx2, my2 = mask_box_xyxy(fmask.numpy().astype(bool))
        assert mx1 >= fbox[0] - 1 and mx2 <= fbox[2] + 1


def test_resize_scales_image_masks_and_boxes(synth):
    ds, d = synth
    image, target = ShoeDataset(ds, images_dir=d)[0]
    rimage, rtarget = ResizeShortestEdge(128, 1000)(image, target)
    assert rimage.shape == (3, 128, 192) and rtarget["masks"].shape[1:] == (128, 192)
    assert torch.allclose(rtarget["boxes"], target["boxes"] * 2)
    # nearest-neighbour upscaling by 2 keeps every mask pixel as a 2x2 block
    assert torch.equal(rtarget["masks"][:, ::2, ::2], target["masks"])
    # the longer side is capped
    cimage, _ = ResizeShortestEdge(128, 150)(image, target)
    assert max(cimage.shape[1:]) == 150


def test_train_pipeline_jitters_scale_and_keeps_geometry_consistent(synth):
    ds, d = synth
    random.seed(0)
    item_ds = ShoeDataset(ds, images_dir=d, transforms=train_transforms(min_size=64, max_size=200, scale_jitter=0.25))
    shapes = set()
    for _ in range(12):
        image, target = item_ds[2]
        shapes.add(tuple(image.shape[1:]))
        assert target["masks"].shape[1:] == image.shape[1:]
        for mask, box in zip(target["masks"], target["boxes"], strict=True):
            mx1, my1, mx2, my2 = mask_box_xyxy(mask.numpy().astype(bool))
            bx1, by1, bx2, by2 = box.tolist()
            assert abs(mx1 - bx1) <= 2 and abs(mx2 - bx2) <= 2 and abs(my1 - by1) <= 2 and abs(my2 - by2) <= 2
    assert len(shapes) >= 2  # scale jitter at work
    assert jitter_sizes(100, 0.1) == (90, 95, 100, 105, 110) and jitter_sizes(100, 0) == (100,)
    assert eval_transforms(min_size=32, max_size=48)(*ShoeDataset(ds, images_dir=d)[0])[0].shape == (3, 32, 48)


def test_photometric_jitter_changes_colours_only():
    random.seed(1)
    image = torch.rand(3, 20, 30)
    target = {"boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0]])}
    out, t = PhotometricJitter(0.3, 0.3, 0.3)(image.clone(), target)
    assert out.shape == image.shape and not torch.equal(out, image) and 0 <= out.min() and out.max() <= 1
    assert t is target


def test_bad_images_and_labels_are_named(synth, tmp_path):
    ds, d = synth
    missing = AnnotationSet(images=[ImageRecord(file_name="gone.png", regions=ds.images[0].regions)], labels=["shoe"])
    with pytest.raises(ImageReadError, match="gone.png"):
        ShoeDataset(missing, images_dir=d)[0]
    wrong_size = AnnotationSet(images=[ImageRecord(file_name=ds.images[0].file_name, width_px=200, height_px=100,
                                                   regions=ds.images[0].regions)], labels=["shoe"])
    with pytest.raises(ValueError, match="200x100"):
        ShoeDataset(wrong_size, images_dir=d)[0]
    boot = Region(label="boot", polygons=(np.array([[1, 1], [20, 1], [20, 20]], float),), region_id="r7")
    other = AnnotationSet(images=[ImageRecord(file_name=ds.images[0].file_name, regions=[boot])], labels=["boot"])
    with pytest.raises(ValueError, match="r7.*'boot'"):
        ShoeDataset(other, images_dir=d, class_names=["shoe"])[0]
    with pytest.raises(ValueError, match="no labelled"):
        ShoeDataset(AnnotationSet(images=[]), images_dir=d)


def test_images_without_shoes_give_empty_targets(synth):
    ds, d = synth
    empty = AnnotationSet(images=[ImageRecord(file_name=ds.images[0].file_name)], labels=["shoe"])
    image, target = ShoeDataset(empty, images_dir=d, transforms=train_transforms(min_size=32, max_size=64))[0]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape[0] == 0 and target["masks"].shape[1:] == image.shape[1:]


def _names(n):
    return AnnotationSet(images=[ImageRecord(file_name=f"img{i:03d}.jpg") for i in range(n)], labels=["shoe"])


def test_split_is_deterministic_order_independent_and_70_20_10():
    ds = _names(76)
    a = split_dataset(ds, seed=3)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (53, 15, 8)
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == {r.file_name for r in ds.images}
    assert not set(a["train"]) & set(a["val"])
    shuffled = AnnotationSet(images=list(reversed(ds.images)), labels=["shoe"])
    assert split_dataset(shuffled, seed=3) == a
    assert split_dataset(ds, seed=4)["train"] != a["train"]
    two = split_dataset(_names(2), seed=0)
    assert len(two["train"]) == 1 and len(two["val"]) == 1
    assert [r.file_name for r in subset(ds, a["val"]).images] == a["val"]
    with pytest.raises(KeyError, match="nope"):
        subset(ds, ["nope"])
    dup = AnnotationSet(images=[ImageRecord(file_name="a.jpg"), ImageRecord(file_name="a.jpg")], labels=["shoe"])
    with pytest.raises(ValueError, match="a.jpg"):
        split_dataset(dup)
