"""Reading images the way Label Studio shows them: EXIF orientation applied, RGB, uint8."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Refuse images above this many pixels (decompression bombs); 50 MP covers any camera photo.
MAX_PIXELS = 50_000_000


class ImageReadError(ValueError):
    """An image that cannot be read or decoded; the message names it."""


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
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise ImageReadError(f"{name}: {im.width}x{im.height} px is over the {max_pixels} pixel limit")
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: not a readable image ({e})") from e


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
