"""Simple Copy-Paste augmentation: pasting, occlusion, box recomputation, and the DataLoader path."""

from __future__ import annotations

import pytest
import torch

from shoeseg.data import CopyPaste, collate, with_copy_paste
from shoeseg.geometry import mask_box_xyxy

H, W = 48, 64


class RectDataset(torch.utils.data.Dataset):
    """In-memory samples: an image and instances ``(x1, y1, x2, y2, label)``, rectangles as masks.

    An instance may also be ``([(x1, y1, x2, y2), ...], label)``: a union of rectangles.
    """

    def __init__(self, items: list[tuple[torch.Tensor, list[tuple]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, instances = self.items[index]
        h, w = image.shape[-2:]
        masks = torch.zeros((len(instances), h, w), dtype=torch.uint8)
        for k, inst in enumerate(instances):
            for x1, y1, x2, y2 in (inst[0] if len(inst) == 2 else [inst[:4]]):
                masks[k, y1:y2, x1:x2] = 1
        target = {
            "boxes": torch.tensor([mask_box_xyxy(m.numpy().astype(bool)) for m in masks],
                                  dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([inst[-1] for inst in instances], dtype=torch.int64),
            "masks": masks,
            "image_id": torch.tensor(index, dtype=torch.int64),
            "area": masks.flatten(1).sum(1).float(),
            "iscrowd": torch.zeros(len(instances), dtype=torch.int64),
        }
        return image.clone(), target


def gradient_image(h: int = H, w: int = W, offset: float = 0.0) -> torch.Tensor:
    """Distinct values everywhere, so a pixel's origin can be told."""
    ys = torch.arange(h, dtype=torch.float32)[:, None] / h
    xs = torch.arange(w, dtype=torch.float32)[None, :] / w
    base = (ys * 0.5 + xs * 0.4 + offset) % 1.0
    return torch.stack([base, (base + 0.3) % 1.0, (base + 0.6) % 1.0])


def flat_image(color: tuple[float, float, float], h: int = H, w: int = W) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32)[:, None, None].expand(3, h, w).clone()


def random_dataset(n: int = 6, seed: int = 0) -> RectDataset:
    """Samples of varied sizes, each with 1-4 rectangles labelled ``index + 1``."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        h, w = (H, W) if i % 2 == 0 else (int(torch.randint(30, 100, (1,), generator=g)),
                                         int(torch.randint(30, 100, (1,), generator=g)))
        rects = []
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            x1 = int(torch.randint(0, w - 8, (1,), generator=g))
            y1 = int(torch.randint(0, h - 8, (1,), generator=g))
            x2 = x1 + int(torch.randint(5, w - x1 + 1, (1,), generator=g))
            y2 = y1 + int(torch.randint(5, h - y1 + 1, (1,), generator=g))
            rects.append((x1, y1, x2, y2, i + 1))
        items.append((gradient_image(h, w, offset=0.1 * i), rects))
    return RectDataset(items)


def assert_consistent(image: torch.Tensor, target: dict) -> None:
    """Counts agree; every mask is non-empty, its box is its pixel extent, its area its pixel count."""
    n = len(target["labels"])
    h, w = image.shape[-2:]
    assert target["masks"].shape == (n, h, w)
    assert target["boxes"].shape == (n, 4)
    assert target["area"].shape == (n,) and target["iscrowd"].shape == (n,)
    assert n > 0
    for mask, box, area in zip(target["masks"], target["boxes"], target["area"], strict=True):
        m = mask.numpy().astype(bool)
        assert m.any()
        assert tuple(box.tolist()) == mask_box_xyxy(m)
        assert area.item() == m.sum()
    boxes = target["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert not target["iscrowd"].any()


def assert_same_sample(a, b) -> None:
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        assert torch.equal(a[1][key], b[1][key]), key


def occlusion_dataset() -> RectDataset:
    """Destination 0: A (fully under the source's instance), B (partly), C (a corner of 9 px left), D (clear).

    Source 1, same size, flat colour: one instance, a union of rectangles.
    """
    dest = (gradient_image(), [
        (10, 10, 20, 20, 1),  # A: inside the source instance
        (25, 10, 45, 20, 2),  # B: columns 25:30 covered
        (48, 30, 58, 40, 4),  # C: covered but for columns 55:58, rows 37:40 (9 px)
        (2, 40, 12, 46, 5),   # D: untouched
    ])
    src_parts = [(5, 5, 30, 25), (40, 28, 55, 48), (55, 28, 60, 37), (58, 37, 60, 48), (55, 40, 58, 48)]
    return RectDataset([dest, (flat_image((0.25, 0.5, 0.75)), [(src_parts, 3)])])


# -- (a) p = 0 and the switch --------------------------------------------------------------------------


def test_p_zero_returns_the_original_sample():
    ds = random_dataset()
    cp = CopyPaste(ds, p=0.0, seed=1)
    for i in range(len(ds)):
        assert_same_sample(cp[i], ds[i])


def test_with_copy_paste_wraps_only_when_p_is_positive():
    ds = random_dataset()
    assert with_copy_paste(ds, 0.0) is ds
    assert with_copy_paste(ds, -1.0) is ds
    wrapped = with_copy_paste(ds, 0.3, scale_range=(0.2, 0.4), min_area_px=5, seed=2)
    assert isinstance(wrapped, CopyPaste) and len(wrapped) == len(ds)
    assert (wrapped.p, wrapped.scale_range, wrapped.min_area_px, wrapped.seed) == (0.3, (0.2, 0.4), 5, 2)


@pytest.mark.parametrize("kwargs", [{"p": 1.5}, {"p": -0.1}, {"scale_range": (0.0, 1.0)},
                                    {"scale_range": (1.0, 0.5)}, {"min_area_px": 0}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        CopyPaste(random_dataset(2), **kwargs)


# -- (b) pasting adds instances, targets stay consistent -------------------------------------------------


def test_p_one_pastes_instances_after_the_destination_ones():
    ds = random_dataset()
    cp = CopyPaste(ds, p=1.0, seed=7)
    grew = 0
    for i in range(len(ds)):
        image, target = cp[i]
        _, orig = ds[i]
        assert_consistent(image, target)
        labels = target["labels"].tolist()
        kept = sum(1 for v in labels if v == i + 1)
        assert labels[:kept] == [i + 1] * kept  # destination instances first, in order
        pasted = labels[kept:]
        assert pasted and len(set(pasted)) == 1 and pasted[0] != i + 1  # all from one other sample
        assert target["image_id"].item() == orig["image_id"].item()
        # surviving destination masks are original masks with pixels removed, never added
        for mask in target["masks"][:kept]:
            assert any(((mask == 1) & (om == 0)).sum() == 0 and (mask == 1).any() for om in orig["masks"])
        grew += len(labels) > len(orig["labels"])
    assert grew > 0


def test_nothing_to_paste_returns_the_original():
    tiny = [(1, 1, 4, 4, 2)]  # 9 px: under the 10 px minimum
    ds = RectDataset([(gradient_image(), [(10, 10, 30, 30, 1)]), (flat_image((1.0, 0.0, 0.0)), tiny)])
    cp = CopyPaste(ds, p=1.0, scale_range=(1.0, 1.0), seed=0)
    assert_same_sample(cp[0], ds[0])
    # a source without instances, and a one-sample dataset, leave the sample as it is too
    ds = RectDataset([(gradient_image(), [(10, 10, 30, 30, 1)]), (flat_image((1.0, 0.0, 0.0)), [])])
    assert_same_sample(CopyPaste(ds, p=1.0, seed=0)[0], ds[0])
    one = RectDataset([(gradient_image(), [(10, 10, 30, 30, 1)])])
    assert_same_sample(CopyPaste(one, p=1.0, seed=0)[0], one[0])


def test_destination_without_instances_gets_the_pasted_ones():
    ds = RectDataset([(gradient_image(), []), (flat_image((1.0, 0.0, 0.0)), [(10, 10, 30, 30, 2)])])
    image, target = CopyPaste(ds, p=1.0, scale_range=(1.0, 1.0), seed=0)[0]
    assert target["labels"].tolist() == [2]
    assert target["boxes"].tolist() == [[10.0, 10.0, 30.0, 30.0]]
    assert_consistent(image, target)


# -- (c) occlusion ---------------------------------------------------------------------------------------


def test_occluded_instances_lose_the_covered_pixels():
    ds = occlusion_dataset()
    _, orig = ds[0]
    _, src = ds[1]
    # scale 1 on a same-size source: no resize and offset (0, 0), so the paste is exactly the source mask
    image, target = CopyPaste(ds, p=1.0, scale_range=(1.0, 1.0), seed=0)[0]
    assert_consistent(image, target)
    # A fully covered: gone; C left with 9 px: dropped; B and D kept, the pasted instance last
    assert target["labels"].tolist() == [2, 5, 3]
    union = src["masks"][0].bool()
    b, d, pasted = target["masks"]
    assert torch.equal(b, orig["masks"][1] * ~union)
    assert int(((orig["masks"][1] == 1) & union).sum()) == 5 * 10  # exactly the covered pixels went
    assert target["boxes"][0].tolist() == [30.0, 10.0, 45.0, 20.0]  # B's box shrank from x1 = 25
    assert torch.equal(d, orig["masks"][3])
    assert target["boxes"][1].tolist() == [2.0, 40.0, 12.0, 46.0]
    assert torch.equal(pasted, src["masks"][0])
    assert target["area"].tolist() == [150.0, 60.0, float(union.sum())]


def test_min_area_only_drops_instances_that_were_occluded():
    # a 3x3 destination instance that nothing covers stays, however small
    ds = RectDataset([(gradient_image(), [(1, 1, 4, 4, 1)]),
                      (flat_image((1.0, 0.0, 0.0)), [(30, 20, 50, 40, 2)])])
    _, target = CopyPaste(ds, p=1.0, scale_range=(1.0, 1.0), seed=0)[0]
    assert target["labels"].tolist() == [1, 2]
    assert target["area"].tolist() == [9.0, 400.0]


# -- (d) pixels ------------------------------------------------------------------------------------------


def test_pasted_pixels_come_from_the_source_and_the_rest_is_untouched():
    ds = occlusion_dataset()
    dest_image, _ = ds[0]
    src_image, src = ds[1]
    image, _ = CopyPaste(ds, p=1.0, scale_range=(1.0, 1.0), seed=0)[0]
    union = src["masks"][0].bool()
    assert torch.equal(image[:, union], src_image[:, union])
    assert torch.equal(image[:, ~union], dest_image[:, ~union])


@pytest.mark.parametrize("seed", range(5))
def test_scaled_and_shifted_paste_keeps_source_colours(seed):
    colour = (0.25, 0.5, 0.75)
    ds = RectDataset([(gradient_image(), [(5, 5, 60, 45, 1)]),
                      (flat_image(colour, 90, 70), [(10, 10, 60, 80, 2), (0, 0, 20, 20, 2)])])
    dest_image, _ = ds[0]
    image, target = CopyPaste(ds, p=1.0, scale_range=(0.3, 1.5), seed=seed)[0]
    assert_consistent(image, target)
    pasted = target["masks"][target["labels"] == 2]
    assert len(pasted) >= 1
    union = pasted.bool().any(0)
    expected = torch.tensor(colour)[:, None].expand(3, int(union.sum()))
    assert torch.allclose(image[:, union], expected, atol=1e-6)
    assert torch.equal(image[:, ~union], dest_image[:, ~union])


# -- (e) dtypes and shapes -------------------------------------------------------------------------------


def test_dtypes_and_shapes_are_kept():
    ds = random_dataset()
    cp = CopyPaste(ds, p=1.0, seed=3)
    for i in range(len(ds)):
        image, target = cp[i]
        oimage, orig = ds[i]
        assert image.shape == oimage.shape and image.dtype == oimage.dtype
        assert target.keys() == orig.keys()
        for key in orig:
            assert target[key].dtype == orig[key].dtype, key
            assert target[key].device == orig[key].device, key
        assert target["masks"].shape[1:] == oimage.shape[1:]
        assert 0.0 <= image.min() and image.max() <= 1.0


def test_float64_images_stay_float64():
    ds = RectDataset([(gradient_image().double(), [(5, 5, 20, 20, 1)]),
                      (gradient_image(offset=0.5), [(30, 20, 50, 40, 2)])])
    image, _ = CopyPaste(ds, p=1.0, seed=0)[0]
    assert image.dtype == torch.float64


# -- (f) DataLoader --------------------------------------------------------------------------------------


def test_works_through_a_dataloader_with_the_repo_collate():
    ds = random_dataset()
    loader = torch.utils.data.DataLoader(CopyPaste(ds, p=1.0, seed=4), batch_size=2, shuffle=False,
                                         num_workers=0, collate_fn=collate)
    seen = 0
    for images, targets in loader:
        assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets)
        for image, target in zip(images, targets, strict=True):
            assert_consistent(image, target)
            seen += 1
    assert seen == len(ds)


# -- (g) properties over seeds ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_targets_stay_consistent_over_seeds(seed):
    ds = random_dataset(n=5, seed=seed)
    cp = CopyPaste(ds, p=0.8, scale_range=(0.3, 1.6), seed=seed)
    for i in range(len(ds)):
        image, target = cp[i]
        assert image.shape == ds[i][0].shape
        assert_consistent(image, target)


def test_a_seed_makes_it_repeatable():
    ds = random_dataset()
    cp_a, cp_b = CopyPaste(ds, p=0.5, seed=11), CopyPaste(ds, p=0.5, seed=11)
    a = [cp_a[i] for i in range(len(ds))]
    b = [cp_b[i] for i in range(len(ds))]
    for x, y in zip(a, b, strict=True):
        assert_same_sample(x, y)
