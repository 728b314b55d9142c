"""Reading and writing annotation files in any supported format, with detection and atomic writes.

Example:
    >>> from via_tools.io import load, save  # doctest: +SKIP
    >>> ds = load("balloon/train/via_region_data.json")  # doctest: +SKIP
    >>> save(ds, "balloon.coco.json", fmt="coco")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from via_tools.errors import AnnotationError, json_type
from via_tools.files import atomic_write_text
from via_tools.images import ImageReadError, image_size_wh
from via_tools.jsontext import MAX_FILE_BYTES, dump_json, parse_json
from via_tools.model import AnnotationSet
from via_tools.options import ReadOptions, WriteOptions
from via_tools.perf import gc_paused
from via_tools.report import Report
from via_tools.shapes import sanitize_many

log = logging.getLogger(__name__)

_MODULES = {
    "via1": "via_tools.via1",
    "via2": "via_tools.via2",
    "via3": "via_tools.via3",
    "csv": "via_tools.via_csv",
    "coco": "via_tools.coco",
    "ls": "via_tools.labelstudio",
    "yolo": "via_tools.yolo",
}

#: Formats stored as a folder of files (read from a path, written to a folder), not as one document.
_FOLDER_FORMATS = frozenset({"yolo"})


class _Formats(Mapping[str, ModuleType]):
    """Format name → module with ``read`` / ``write``, imported on first use."""

    def __getitem__(self, name: str) -> ModuleType:
        if name not in _MODULES:
            raise KeyError(name)
        return importlib.import_module(_MODULES[name])

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


#: Every format by name: ``via1``, ``via2``, ``via3``, ``csv``, ``coco``, ``ls``, ``yolo``.
FORMATS: Mapping[str, ModuleType] = _Formats()




def _format_module(fmt: str) -> ModuleType:
    if fmt not in _MODULES:
        raise AnnotationError(f"unknown format {fmt!r} (known: {', '.join(_MODULES)})")
    return FORMATS[fmt]


def _looks_like_ls_task(t: Any) -> bool:
    return isinstance(t, dict) and ("data" in t or "annotations" in t or "predictions" in t)


#: Most images read from one file.
MAX_IMAGES = 1_000_000


def detect_format(doc_or_text: Any, *, source: str, report: Report | None = None) -> str:
    """Names the format of a parsed document (or of text: CSV, or JSON that is parsed first).

    ``via1``: a dict of image entries with ``regions`` as objects (or 1.x ``fileref`` /
    ``base64_img_data`` fields); ``via2``: a project (``_via_img_metadata``) or a dict of image entries
    with ``regions`` as lists; ``via3``: ``project`` / ``file`` / ``view`` / ``metadata``; ``csv``: text
    with a VIA CSV header; ``coco``: ``images`` and ``annotations``; ``ls``: a list of Label Studio tasks.

    Raises:
        AnnotationError: when the document is none of these, naming the source and what it found.

    Example:
        >>> detect_format({"a.jpg5": {"filename": "a.jpg", "size": 5, "regions": []}}, source="x.json")
        'via2'
    """
    from via_tools.via_csv import is_csv_text

    doc = doc_or_text
    if isinstance(doc, bytes):
        doc = doc.decode("utf-8-sig", errors="replace")
    if isinstance(doc, str):
        if is_csv_text(doc):
            return "csv"
        stripped = doc.lstrip("\ufeff \t\r\n")
        if not stripped.startswith(("{", "[")):
            raise AnnotationError(f"{source}: neither JSON nor a VIA CSV export (starts with {stripped[:40]!r})")
        doc = parse_json(stripped, where=source, report=report)
    if isinstance(doc, list):
        if all(_looks_like_ls_task(t) for t in doc[:50]):
            return "ls"
        raise AnnotationError(f"{source}: a JSON list that is not a list of Label Studio tasks")
    if not isinstance(doc, dict):
        raise AnnotationError(f"{source}: a JSON {json_type(doc)} is no annotation format")
    if "_via_img_metadata" in doc:
        return "via2"
    if all(k in doc for k in ("project", "file", "view", "metadata")):
        return "via3"
    if "images" in doc and "annotations" in doc and isinstance(doc.get("images"), list):
        return "coco"
    if not doc:
        return "via2"
    entries = [v for v in doc.values() if isinstance(v, dict) and "filename" in v]
    if len(entries) * 2 < len(doc):
        raise AnnotationError(
            f"{source}: not a recognised annotation file (top-level keys: {', '.join(map(str, list(doc)[:6]))})"
        )
    for v in entries:
        if "fileref" in v or "base64_img_data" in v or isinstance(v.get("regions"), dict):
            return "via1"
        if isinstance(v.get("regions"), list) and v["regions"]:
            return "via2"
    return "via2"


def load(
    path: str | Path,
    *,
    fmt: str | None = None,
    options: ReadOptions = ReadOptions(),
    report: Report | None = None,
) -> AnnotationSet:
    """Reads an annotation file in any supported format into the canonical :class:`AnnotationSet`.

    A YOLO dataset is read from its ``data.yaml`` or its folder (a ``.yaml`` path, or a folder holding a
    ``data.yaml`` or ``images/`` and ``labels/``, is detected as ``yolo``).

    Args:
        path: the file (for ``yolo``: the data.yaml or the dataset folder).
        fmt: its format (see :data:`FORMATS`); detected when ``None``.
        options: label attribute, default label, and ``images_dir``: when given, every image must be
            there, missing sizes are read from the files, and polygons are clipped to them.
        report: receives counted fixes; logged at the end either way.

    Raises:
        AnnotationError: a missing or unreadable file, invalid JSON (with line and column), an unknown
            format, bad annotations, or images missing from ``images_dir``.

    Example:
        >>> ds = load("via_region_data.json", options=ReadOptions(images_dir=Path("train")))  # doctest: +SKIP
        >>> ds.count_instances()  # doctest: +SKIP
        255
    """
    p = Path(path)
    source = str(p)
    report = report if report is not None else Report(source=source)
    if fmt is None and FORMATS["yolo"].is_yolo_path(p):
        fmt = "yolo"
    if fmt in _FOLDER_FORMATS:
        ds = FORMATS[fmt].read(p, source=source, options=options, report=report)
        _check_count(ds, source=source)
        if options.images_dir is not None:
            _check_images(ds, Path(options.images_dir), source=source, report=report)
        report.log()
        return ds
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise AnnotationError(f"{source}: {size} bytes, larger than the limit of {MAX_FILE_BYTES} bytes "
                                  "for an annotation file")
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise AnnotationError(f"{source}: no such file") from e
    except OSError as e:
        raise AnnotationError(f"{source}: cannot read ({e.strerror or e})") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{source}: byte {e.start}: not UTF-8 text ({e.reason})") from e
    from via_tools.via_csv import is_csv_text

    if fmt is None and is_csv_text(text):
        fmt = "csv"
    if fmt == "csv":
        doc: Any = text
    else:
        with gc_paused():
            doc = parse_json(text, where=source, report=report)
        if fmt is None:
            if isinstance(doc, str):  # parsed JSON, not text to detect
                raise AnnotationError(f"{source}: a JSON string is no annotation format")
            fmt = detect_format(doc, source=source)
    module = _format_module(fmt)
    with gc_paused():
        ds = module.read(doc, source=source, options=options, report=report)
    _check_count(ds, source=source)
    if options.images_dir is not None:
        _check_images(ds, Path(options.images_dir), source=source, report=report)
    report.log()
    return ds


def _check_count(ds: AnnotationSet, *, source: str) -> None:
    if len(ds.images) > MAX_IMAGES:
        raise AnnotationError(f"{source}: {len(ds.images)} images, more than the limit of {MAX_IMAGES} per file")


def _check_images(ds: AnnotationSet, images_dir: Path, *, source: str, report: Report) -> None:
    missing = [img.file_name for img in ds.images if not (images_dir / img.file_name).is_file()]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise AnnotationError(f"{source}: {len(missing)} image(s) missing from {images_dir}: {shown}{more}")
    sized = []
    for img in ds.images:
        if img.width_px is None or img.height_px is None:
            try:
                img.width_px, img.height_px = image_size_wh(images_dir / img.file_name)
            except ImageReadError as e:
                raise AnnotationError(f"{source}: image {img.file_name!r}: {e}") from e
            sized.append(img)
    regions = [(img, r) for img in sized for r in img.regions if r.is_instance]
    fixed = sanitize_many(
        [(r.polygons, img.width_px, img.height_px, f"{source}: image {img.file_name!r}: region {r.region_id}")
         for img, r in regions],
        report=report,
        check_validity=[False] * len(regions),
    )
    for (_, r), polygons in zip(regions, fixed, strict=True):
        r.polygons = polygons


def save(ds: AnnotationSet, path: str | Path, *, fmt: str, options: WriteOptions = WriteOptions()) -> Path:
    """Writes ``ds`` in format ``fmt`` atomically (a temporary file in the same folder, then renamed).

    ``yolo`` writes a dataset folder (``data.yaml`` and ``labels/``, each file atomically; the images are
    not copied: :func:`via_tools.yolo.save` copies or links them) and returns its ``data.yaml``.

    Args:
        ds: the annotation set.
        path: the file to write (for ``yolo``: the dataset folder).
        fmt: one of :data:`FORMATS`.
        options: label attribute and Label Studio tag names.

    Returns:
        The path written.

    Example:
        >>> save(ds, "out/via_project.json", fmt="via2")  # doctest: +SKIP
    """
    p = Path(path)
    if fmt in _FOLDER_FORMATS:
        return FORMATS[fmt].save(ds, p, options=options)
    with gc_paused():
        doc = _format_module(fmt).write(ds, options=options)
        text = doc if isinstance(doc, str) else dump_json(doc, where=str(p))
    return atomic_write_text(p, text, fsync=True)


def written_count(ds: AnnotationSet, fmt: str) -> tuple[int, str]:
    """How many records the writer of ``fmt`` writes for ``ds``, and what the format calls them.

    A multi-part region is one COCO annotation, but one VIA region (grouped by
    :data:`via_tools.via_common.GROUP_ATTR`), Label Studio result or YOLO line per part; regions without
    area are left out of COCO and YOLO.

    Example:
        >>> from via_tools.model import ImageRecord, Region, as_polygon
        >>> sq = as_polygon([(0, 0), (4, 0), (4, 4)])
        >>> ds = AnnotationSet([ImageRecord("a.jpg", 8, 8, regions=[Region("shoe", (sq, sq + 4))])])
        >>> written_count(ds, "via2"), written_count(ds, "coco")
        ((2, 'VIA regions'), (1, 'annotations'))
    """
    regions = [(img, r) for img in ds.images for r in img.regions]
    if fmt in ("via1", "via2", "csv"):
        from via_tools.via_common import shape_for_write

        return sum(len(shape_for_write(r)) for _, r in regions), "VIA regions"
    if fmt == "via3":
        from via_tools.via3 import xy_for_write

        return sum(len(xy_for_write(r)) for _, r in regions), "VIA 3 metadata entries"
    if fmt == "ls":
        from via_tools.labelstudio import region_to_ls_results

        return sum(len(region_to_ls_results(r, img.width_px or 100, img.height_px or 100)) for img, r in regions), \
            "Label Studio results"
    if fmt == "yolo":
        return sum(len(r.polygons) for _, r in regions), "label lines"
    return ds.count_instances(), "annotations"
