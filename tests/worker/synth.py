"""Small generated shoe-like images with polygon labels, for loop tests (no files from ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from via_tools.model import AnnotationSet, ImageRecord, Region


def shoe_polygon(cx: float, cy: float, rx: float, ry: float, *, n: int = 16) -> np.ndarray:
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
            poly = shoe_polygon(cx, cy, rx, ry)
            mask = polygons_to_mask((poly,), height_px, width_px)
            pixels[mask] = np.array([30 + 40 * k, 20, 200 - 60 * k], dtype=np.uint8)
            regions.append(Region(label="shoe", polygons=(poly,), region_id=f"r{k}"))
        name = f"{prefix}{i:03d}.png"
        Image.fromarray(pixels).save(out_dir / name)
        images.append(ImageRecord(file_name=name, width_px=width_px, height_px=height_px, regions=regions))
    return AnnotationSet(images=images, labels=["shoe"])
