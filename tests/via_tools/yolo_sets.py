"""YOLO dataset folders written for the tests (imported by the via_tools tests; not a test module)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

TRI = "0 0.1 0.1 0.5 0.1 0.5 0.6"
SQUARE = "1 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75"


def make_set(root: Path, files: dict[str, str | bytes | tuple[int, int]]) -> Path:
    """Writes ``files`` under ``root``: a ``(w, h)`` value is a PNG of that size, text or bytes as they are."""
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            Image.new("RGB", content, (30, 60, 90)).save(p, format="PNG")
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8", newline="")
    return root
