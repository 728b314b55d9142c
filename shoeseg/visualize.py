"""Pictures: detection overlays, in-painting masks for Stable Diffusion, and the training loss curve."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from via_tools.files import atomic_path, atomic_write_bytes

LOSS_PLOT_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


def instance_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (golden-ratio hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((0.08 + i * 0.618034) % 1.0, 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def draw_overlay(image: np.ndarray, detections: Sequence[Any], *, alpha: float = 0.5, show_boxes: bool = True) -> np.ndarray:
    """Coloured masks, outlines, boxes and ``label score`` captions over a copy of an RGB image.

    Args:
        image: RGB uint8 ``(H, W, 3)``.
        detections: :class:`shoeseg.predict.Detection` objects (``mask``, ``box_xyxy``, ``label``, ``score``,
            ``polygons``).
        alpha: mask opacity.
        show_boxes: draw the boxes.

    Example:
        >>> out = draw_overlay(image, predictor.predict([image])[0])  # doctest: +SKIP
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    colours = instance_colours(len(detections))
    for det, colour in zip(detections, colours, strict=True):
        m = det.mask
        if m.any():
            out[m] = (out[m] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
    thick = max(1, round(max(out.shape[:2]) / 400))
    scale = max(0.35, max(out.shape[:2]) / 1400)
    for det, colour in zip(detections, colours, strict=True):
        for poly in det.polygons:
            cv2.polylines(out, [np.round(poly - 0.5).astype(np.int32).reshape(-1, 1, 2)], True, colour, thick, cv2.LINE_AA)
        x1, y1, x2, y2 = (int(round(v)) for v in det.box_xyxy)
        if show_boxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        caption = f"{det.label} {det.score:.2f}"
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(y1, th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base - 2), (x1 + tw + 4, ty), colour, -1)
        cv2.putText(out, caption, (x1 + 2, ty - base - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def dilate_mask(mask: np.ndarray, dilate_px: int) -> np.ndarray:
    """Grows a bool mask by ``dilate_px`` pixels (elliptical kernel); 0 returns it unchanged."""
    if dilate_px <= 0:
        return mask.astype(bool)
    k = 2 * int(dilate_px) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def inpainting_masks(
    detections: Sequence[Any], height_px: int, width_px: int, *, dilate_px: int = 0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Binary masks for Stable Diffusion in-painting (white = repaint): the union and one per shoe.

    Args:
        detections: objects with a bool ``mask`` at the image's size.
        height_px / width_px: image size.
        dilate_px: grow every mask by this many pixels so the in-painting covers the outline.

    Returns:
        ``(union, per_instance)`` as uint8 arrays of 0 and 255.

    Example:
        >>> union, each = inpainting_masks(dets, 480, 640, dilate_px=8)  # doctest: +SKIP
    """
    union = np.zeros((height_px, width_px), dtype=bool)
    each = []
    for det in detections:
        m = dilate_mask(np.asarray(det.mask, bool), dilate_px)
        if m.shape != union.shape:
            raise ValueError(f"mask of size {m.shape} for a {height_px}x{width_px} image")
        union |= m
        each.append(m.astype(np.uint8) * 255)
    return union.astype(np.uint8) * 255, each


def write_image_atomic(path: str | Path, image: np.ndarray) -> Path:
    """Writes an RGB (or single-channel) uint8 image as PNG/JPEG, atomically (temporary file, then rename)."""
    path = Path(path)
    arr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix or ".png", arr)
    if not ok:
        raise ValueError(f"{path}: cannot encode an image of shape {image.shape}")
    return atomic_write_bytes(path, buf.tobytes())


def plot_losses(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "Mask R-CNN training losses") -> Path:
    """Plots the loss curves of ``metrics.jsonl`` rows (detectron2's names) into a PNG, atomically.

    Example:
        >>> plot_losses([{"iteration": 20, "total_loss": 2.1, "loss_mask": 0.6}], "loss_curve.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    its = [r["iteration"] for r in rows]
    for key in LOSS_PLOT_KEYS:
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(its, ys, label=key, linewidth=2.2 if key == "total_loss" else 1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median over the log period)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
