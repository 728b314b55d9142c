"""Reading images the way Label Studio shows them: EXIF orientation applied, RGB, uint8."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Refuse images above this many pixels (decompression bombs); 50 MP covers any camera photo.
MAX_PIXELS = 50_000_000


class ImageReadError(ValueError):
    """An image that cannot be read or decoded; the message names it."""


#: EXIF orientation -> the transpose that shows the image upright (as ``ImageOps.exif_transpose``).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _fit_scale(width_px: int, height_px: int, fit_within: tuple[int, int] | None) -> float:
    """The factor (at most 1) that brings an image to ``(shorter side, cap on the longer side)``."""
    if fit_within is None:
        return 1.0
    short, long_ = min(width_px, height_px), max(width_px, height_px)
    return min(1.0, fit_within[0] / short, fit_within[1] / long_)


def decode_image_scaled(
    data: bytes, *, name: str, max_pixels: int = MAX_PIXELS, fit_within: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decodes image bytes, downscaled while decoding, and tells the full size.

    Args:
        data: the encoded file (JPEG, PNG, ...).
        name: the file name or URL, for error messages.
        max_pixels: refuse larger images (checked on the header, before any pixel is decoded).
        fit_within: ``(min_size, max_size)``: shrink (never enlarge) so that the shorter side is at most
            ``min_size`` and the longer at most ``max_size``, the resize Mask R-CNN applies to its inputs.
            JPEGs are decoded at 1/2, 1/4 or 1/8 scale by the codec itself (``Image.draft``), so a 40 MP
            photo never exists at full size in memory.

    Returns:
        ``(array, (width_px, height_px))``: the ``(H, W, 3)`` uint8 RGB pixels with EXIF orientation applied,
        and the full size of the image as displayed (after orientation).

    Example:
        >>> arr, (w, h) = decode_image_scaled(jpeg, name="big.jpg", fit_within=(800, 1333))  # doctest: +SKIP
        >>> arr.shape, (w, h)  # doctest: +SKIP
        ((800, 1067, 3), (6000, 4500))
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(f"{name}: {w}x{h} px is over the {max_pixels} pixel limit")
            orientation = im.getexif().get(0x0112, 1)
            scale = _fit_scale(w, h, fit_within)
            target = (max(1, round(w * scale)), max(1, round(h * scale)))
            if scale < 1.0:
                im.draft("RGB", target)  # JPEG: the codec decodes at the largest 1/2^k scale >= target
            im.load()
            frame = im if im.mode == "RGB" else im.convert("RGB")  # no second full-size copy for RGB files
            if frame.size != target:
                frame = frame.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
            if orientation in _EXIF_TRANSPOSE:
                frame = frame.transpose(_EXIF_TRANSPOSE[orientation])
            pixels = np.asarray(frame)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: not a readable image ({e})") from e
    full_wh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return pixels, full_wh


def decode_image(data: bytes, *, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decodes image bytes to an ``(H, W, 3)`` uint8 RGB array with EXIF orientation applied.

    Args:
        data: the encoded file (JPEG, PNG, ...).
        name: the file name or URL, for error messages.
        max_pixels: refuse larger images.

    Example:
        >>> decode_image(open("shoe.jpg", "rb").read(), name="shoe.jpg").shape  # doctest: +SKIP
        (480, 640, 3)
    """
    return decode_image_scaled(data, name=name, max_pixels=max_pixels)[0]


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Reads an image file to an ``(H, W, 3)`` uint8 RGB array (EXIF orientation applied)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read image file ({e.strerror or e})") from e
    return decode_image(data, name=str(p), max_pixels=max_pixels)


def image_size_wh(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` as displayed (after EXIF orientation), without decoding the pixels."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError) as e:
        raise ImageReadError(f"{p}: not a readable image ({e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
