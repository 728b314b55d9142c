"""The tests' one maker of generated shoe-like images (no files from ../shared): :func:`make_shoe_dataset`,
coloured shoe silhouettes on textured backgrounds, :func:`make_images`, the loop tests' small flat set, and
:func:`make_simulation_set`, the active-learning simulation's ellipses on noise.

Each shoe is a side-view silhouette (toe, vamp, ankle opening, heel) with a darker sole band, scaled,
mirrored and placed at random on a background of noise, a colour gradient and stripes. The annotation is the
silhouette polygon, so the truth is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shoeseg.geometry import polygons_to_mask
from via_tools.model import AnnotationSet, ImageRecord, Region

# Side view of a shoe in a unit box, toe on the right, sole at y = 1.
SHOE_UNIT = np.array([
    (0.00, 0.55), (0.04, 0.32), (0.16, 0.22), (0.30, 0.02), (0.50, 0.00), (0.56, 0.26),
    (0.72, 0.38), (0.90, 0.50), (1.00, 0.68), (1.00, 0.86), (0.94, 1.00), (0.06, 1.00), (0.00, 0.88),
])


def shoe_polygon(rng: np.random.Generator, *, x0: float, y0: float, w: float, h: float) -> np.ndarray:
    pts = SHOE_UNIT.copy()
    pts += rng.normal(0, 0.015, pts.shape)  # no two shoes alike
    if rng.random() < 0.5:
        pts[:, 0] = 1.0 - pts[:, 0]
    return np.column_stack([x0 + pts[:, 0] * w, y0 + pts[:, 1] * h])


def background(rng: np.random.Generator, height_px: int, width_px: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    t = (xx / max(width_px - 1, 1))[..., None]
    img = c0 * (1 - t) + c1 * t
    period = rng.uniform(6, 14)
    img += 18 * np.sin(2 * np.pi * (xx + yy * rng.uniform(-1, 1)) / period)[..., None]
    img += rng.normal(0, 10, img.shape)
    return img


def make_image(rng: np.random.Generator, height_px: int, width_px: int, n_shoes: int) -> tuple[np.ndarray, list[np.ndarray]]:
    img = background(rng, height_px, width_px)
    polys = []
    for k in range(n_shoes):
        # Shoes side by side in their own horizontal slot so that they do not overlap.
        slot_w = width_px / n_shoes
        w = rng.uniform(0.55, 0.85) * slot_w
        h = w * rng.uniform(0.45, 0.6)
        x0 = k * slot_w + rng.uniform(0, slot_w - w)
        y0 = rng.uniform(0.05 * height_px, 0.95 * height_px - h)
        poly = shoe_polygon(rng, x0=x0, y0=y0, w=w, h=h)
        mask = polygons_to_mask([poly], height_px, width_px)
        colour = rng.uniform(0, 255, 3)
        colour[rng.integers(3)] = rng.choice([20.0, 235.0])  # saturated
        img[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
        sole = mask & (np.arange(height_px)[:, None] > y0 + 0.85 * h)
        img[sole] = img[sole] * 0.35
        polys.append(poly)
    return np.clip(img, 0, 255).astype(np.uint8), polys


def make_shoe_dataset(
    out_dir: str | Path, *, n_images: int, size_px: tuple[int, int] = (96, 128), seed: int = 0, max_shoes: int = 2
) -> AnnotationSet:
    """Writes ``n_images`` PNG images into ``out_dir`` and returns their annotations (label ``shoe``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size_px
    records = []
    for i in range(n_images):
        n = int(rng.integers(1, max_shoes + 1))
        img, polys = make_image(rng, h, w, n)
        name = f"shoe_{i:03d}.png"
        Image.fromarray(img).save(out_dir / name)
        regions = [Region(label="shoe", polygons=(p,), region_id=str(k)) for k, p in enumerate(polys)]
        records.append(ImageRecord(file_name=name, width_px=w, height_px=h, regions=regions, image_id=str(i)))
    return AnnotationSet(images=records, labels=["shoe"])


# --- the loop tests' set: small flat images, one or two shoes each, quick to train on -----------------------

def side_outline(cx: float, cy: float, rx: float, ry: float, *, n: int = 16) -> np.ndarray:
    """An ellipse-ish outline with a flat sole: a rough shoe seen from the side, in pixels."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
    pts[:, 1] = np.minimum(pts[:, 1], cy + 0.6 * ry)
    return pts


def make_images(out_dir: Path, n: int, *, width_px: int = 80, height_px: int = 64, seed: int = 0,
                prefix: str = "img") -> AnnotationSet:
    """Writes ``n`` PNG images with one or two filled shoe shapes each; returns their annotations."""
    from shoeseg.geometry import polygons_to_mask

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        pixels = rng.integers(90, 160, size=(height_px, width_px, 3), dtype=np.uint8)
        regions = []
        for k in range(1 + i % 2):
            rx, ry = rng.uniform(10, 18), rng.uniform(7, 11)
            cx = rng.uniform(rx + 2, width_px - rx - 2) if k == 0 else width_px - rx - 3
            cy = rng.uniform(ry + 2, height_px - ry - 2)
            poly = side_outline(cx, cy, rx, ry)
            mask = polygons_to_mask((poly,), height_px, width_px)
            pixels[mask] = np.array([30 + 40 * k, 20, 200 - 60 * k], dtype=np.uint8)
            regions.append(Region(label="shoe", polygons=(poly,), region_id=f"r{k}"))
        name = f"{prefix}{i:03d}.png"
        Image.fromarray(pixels).save(out_dir / name)
        images.append(ImageRecord(file_name=name, width_px=width_px, height_px=height_px, regions=regions))
    return AnnotationSet(images=images, labels=["shoe"])


# --- the simulation tests' set: JPEG ellipses on noise, and one image without a shoe ---------------------

def make_simulation_set(tmp_path, n=10, *, size=(96, 80)):
    """JPEG images with one or two filled ellipses ("shoes") on noise, and their polygons, in
    ``tmp_path/images``; one more image has no instance (a simulation leaves it out)."""
    rng = np.random.default_rng(0)
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    records = []
    w, h = size
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for i in range(n):
        arr = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        regions = []
        for k in range(1 + i % 2):
            cx, cy, rx, ry = 24 + 44 * k, 40, 18, 10
            poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
            yy, xx = np.mgrid[0:h, 0:w]
            arr[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = (200, 60 + 40 * k, 40)
            regions.append(Region(label="shoe", polygons=(poly,), region_id=f"{i}-{k}"))
        name = f"img{i:02d}.jpg"
        Image.fromarray(arr).save(images_dir / name, quality=95)
        records.append(ImageRecord(file_name=name, width_px=w, height_px=h, regions=regions))
    records.append(ImageRecord(file_name="empty.jpg", width_px=w, height_px=h))  # no instance: left out
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(images_dir / "empty.jpg")
    return AnnotationSet(images=records, labels=["shoe"]), images_dir


# --- tiny models with spread scores (the runtime tests) ---------------------------------------------------

def spread_scores(model, seed: int = 0):
    """A random model whose objectness and class scores spread out (a fresh model scores everything near
    0.5, where the order of near-ties decides which detections survive NMS)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    heads = ((model.rpn.head.cls_logits, 1.0), (model.roi_heads.box_predictor.cls_score, 0.5),
             (model.roi_heads.mask_predictor.mask_fcn_logits, 0.3))
    with torch.no_grad():
        for layer, std in heads:
            layer.weight.normal_(0, std, generator=g)
    return model


def tiny_checkpoint(path, *, arch: str = "lite0-fpn", serve_score_thresh: float | None = 0.3, **kwargs) -> str:
    """A 64-96 px model of ``arch`` with spread scores saved at ``path`` (split ``{"val": []}``); returns the path."""
    import torch

    from shoeseg.checkpoint import save_checkpoint
    from shoeseg.model import build_model

    torch.manual_seed(0)
    model = spread_scores(build_model(num_classes=1, weights=None, arch=arch, min_size=64, max_size=96,
                                      box_detections_per_img=8, **kwargs))
    save_checkpoint(path, model=model, class_names=["shoe"], serve_score_thresh=serve_score_thresh,
                    extra={"split": {"val": []}})
    return str(path)
