"""YOLO segmentation datasets (Ultralytics' layout, Roboflow's exports) to and from the canonical model.

A dataset is a folder of images and, for each image, a label text file with one line per instance::

    <class id> <x1> <y1> <x2> <y2> ... <xn> <yn>

where the coordinates are fractions of the image's width and height (``0..1``, origin at the top-left).

Reading takes one of:

* a ``data.yaml`` (or a folder holding one): ``names`` (a list, or a mapping ``id -> name`` with ids
  ``0..n-1``), optional ``nc`` (must equal the number of names), ``train`` / ``val`` / ``test`` (each one
  images folder or a list of them; a ``.txt`` list of image paths is refused), relative to ``path`` when
  given (itself relative to the yaml's folder) or else to the yaml's folder. As Ultralytics does, an entry
  ``../x`` that does not exist is tried as ``x`` too (Roboflow writes ``train: ../train/images`` beside
  a ``train/`` folder). A ``path`` or split folder outside the yaml's folder (absolute, or leaving it by
  ``..``) is refused unless ``ReadOptions.allow_outside`` (``--allow-outside``) allows it, which is logged
  and counted.
* a bare folder with ``images/`` and ``labels/``: no yaml. The class names are, in this order, the
  ``names`` argument, one name per line of a ``classes.txt`` in the folder (Label Studio's YOLO export),
  or else the class ids themselves as strings (``"0"``, ``"1"``, ... up to the largest id used, so that
  writing gives the same ids back). An image in ``images/train/``, ``images/val/`` or ``images/test/``
  belongs to that split; any other image has no split.

Every image of a split folder (any depth, the extensions Ultralytics reads, hidden files skipped) is an
:class:`ImageRecord`; its label file is found by Ultralytics' rule (:func:`label_path`: the last
``/images/`` folder of the path becomes ``/labels/``, the suffix ``.txt``). An image without a label file
and an image with an empty one both have no instance (the writer gives back which was which).

* ``ImageRecord.file_name``: the image's path relative to its split folder (``a.jpg``, ``sub/b.png``), as
  Roboflow's COCO exports name them; give that folder as ``--images`` to the tools that look images up.
* ``ImageRecord.extra["split"]``: ``train``, ``val`` or ``test`` (absent without one);
  ``extra["yolo_image"]``: the image's path as read, for copying it on write.
* image sizes are read from the image headers only (EXIF orientation applied, as Ultralytics applies it);
  a missing or unreadable image is an error naming it.
* a region per line, ``region_id`` its line number; lines of 4 numbers (boxes ``cx cy w h``, a detection
  label in a segmentation set) are read as ``rect`` regions and counted, and written back as 4-point
  polygons; coordinates outside ``0..1`` are clipped and counted; polygons then go through the checks of
  every reader (:func:`via_tools.shapes.sanitize_many`: self-intersections repaired and counted, zero
  area refused).

Numbers are ASCII decimal (``1_000`` and other scripts' digits are refused) and class ids ASCII digits
(``0.0`` is refused). Bad input (an odd number of coordinates, fewer than 3 points, a token that is not a finite number, a
class id that is not a whole number or outside ``names``, a yaml without ``names`` or with
``nc != len(names)``) raises :class:`AnnotationError` naming the file and the line.

Writing (:func:`write` gives the text files, :func:`save` writes them) lays out::

    data.yaml                    train/val/test: images/<split>, nc, names (and the source yaml's other keys)
    labels/<split>/<stem>.txt    one line per polygon part, coordinates as exact as a float (``repr``)
    images/<split>/<file_name>   copied or hard-linked only when asked (images="copy" | "link")

An image without a split goes to ``train``. Without ``images=`` the image folders are created empty and
the log says where the images are expected. Ultralytics needs a ``val`` split to train; a set without one
is written without one. A region with several parts is written as one line per part (YOLO has no
multi-part instance), regions without area (polylines, points) are left out; both are counted in the log.
So reading what was written gives every polygon back, each region the same, except a self-intersecting
line, read as one region of several parts, which comes back as one region per part.

Example:
    >>> from via_tools.io import load, save  # doctest: +SKIP
    >>> ds = load("shoe-soles-yoloseg/data.yaml")  # doctest: +SKIP
    >>> ds.images[0].extra["split"], ds.labels  # doctest: +SKIP
    ('train', ['shoes'])
    >>> save(ds, "out/yolo", fmt="yolo")  # doctest: +SKIP
    PosixPath('out/yolo/data.yaml')
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np

from via_tools.errors import AnnotationError
from via_tools.files import atomic_write_text
from via_tools.images import ImageReadError, image_size_wh
from via_tools.model import AnnotationSet, ImageRecord, Region
from via_tools.options import ReadOptions, WriteOptions
from via_tools.perf import gc_paused
from via_tools.report import Report
from via_tools.shapes import sanitize_many

log = logging.getLogger(__name__)

NAME = "yolo"

#: The dataset description file, read in a folder and written by :func:`save`.
YAML_NAME = "data.yaml"
#: The splits a data.yaml names, in the order they are written.
SPLITS = ("train", "val", "test")
#: Where an image without a split is written.
DEFAULT_SPLIT = "train"
#: Image file suffixes read from a split folder (those Ultralytics reads).
IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"})
#: How :func:`save` puts the images in place.
IMAGE_MODES = ("none", "copy", "link")

_YAML_KEYS = ("path", "train", "val", "test", "nc", "names")
#: Most images read from one dataset.
MAX_IMAGES = 1_000_000


class LabelLine(NamedTuple):
    """One instance line of a label file.

    Args:
        line: its line number in the file (from 1).
        class_id: the class id.
        points: ``(N, 2)`` normalised coordinates, clipped to ``0..1``.
        is_box: the line was a box (``cx cy w h``); ``points`` are then its 4 corners.
    """

    line: int
    class_id: int
    points: np.ndarray
    is_box: bool


# ------------------------------------------------------------------------------------------- paths
def label_path(image_path: str | os.PathLike[str]) -> Path:
    """The label file of an image, by Ultralytics' rule: the last ``images`` folder becomes ``labels``, ``.txt``.

    An image whose path has no ``images`` folder has its label file beside it.

    Example:
        >>> label_path("ds/train/images/sub/a.jpg").as_posix()
        'ds/train/labels/sub/a.txt'
        >>> label_path("ds/pics/a.jpg").as_posix()
        'ds/pics/a.txt'
    """
    p = Path(image_path)
    parts = list(p.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def is_yolo_path(path: str | os.PathLike[str]) -> bool:
    """True for a ``.yaml`` / ``.yml`` file, or a folder holding a ``data.yaml`` or ``images/`` and ``labels/``.

    Example:
        >>> is_yolo_path("shoe-soles/data.yaml"), is_yolo_path("shoes/coco.json")
        (True, False)
    """
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        return not p.is_dir()
    return p.is_dir() and ((p / YAML_NAME).is_file() or ((p / "images").is_dir() and (p / "labels").is_dir()))


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - PyYAML comes with the project's dependencies
        raise AnnotationError(f"reading or writing a YOLO data.yaml needs PyYAML (pip install pyyaml): {e}") from e
    return yaml


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (any depth), sorted by their path; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / f)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


# ------------------------------------------------------------------------------------ label lines
#: A number as YOLO label files write it: ASCII decimal, optional sign, fraction and exponent.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CLASS_ID = re.compile(r"[0-9]+")


def _number_error(tokens: list[str], *, where: str, first: int) -> AnnotationError:
    for k, tok in enumerate(tokens):
        if tok.lstrip("+-").lower() in ("nan", "inf", "infinity"):
            return AnnotationError(f"{where}: token {first + k} ({tok[:20]!r}) is not a finite number")
        if not _NUMBER.fullmatch(tok):
            return AnnotationError(f"{where}: token {first + k} ({tok[:20]!r}) is not a number (ASCII decimal)")
        if not math.isfinite(float(tok)):
            return AnnotationError(f"{where}: token {first + k} ({tok[:20]!r}) is too large for a 64-bit float")
    return AnnotationError(f"{where}: coordinates are not numbers")  # pragma: no cover - the regex and float agree


def _class_id(tok: str, *, where: str, n_classes: int | None) -> int:
    if not _CLASS_ID.fullmatch(tok):
        if tok.startswith("-") and _CLASS_ID.fullmatch(tok[1:]):
            raise AnnotationError(f"{where}: class id {tok} is outside names (ids start at 0)")
        raise AnnotationError(f"{where}: class id {tok[:20]!r} is not a whole number (ASCII digits)")
    cid = int(tok)
    if n_classes is not None and cid >= n_classes:
        known = f"{n_classes} class(es): ids 0-{n_classes - 1}" if n_classes else "no class names"
        raise AnnotationError(f"{where}: class id {cid} is outside names ({known})")
    return cid


def parse_label_text(
    text: str, *, source: str, n_classes: int | None = None, report: Report | None = None
) -> list[LabelLine]:
    """Parses the text of one YOLO label file.

    Blank lines are skipped (line numbers count them); whitespace is any run of spaces or tabs, lines end
    in ``\\n`` or ``\\r\\n``, and a final newline is optional.

    Args:
        text: the file's content.
        source: the label file's name, for messages.
        n_classes: class ids must be below it (``None``: any id ``>= 0``).
        report: receives ``clipped points`` (coordinates outside ``0..1``) and
            ``box lines in a segmentation file (read as rect)`` counts.

    Raises:
        AnnotationError: ``"<source>: line <n>: ..."``: a line without coordinates, an odd number of
            coordinates, fewer than 3 points, a token that is not a finite number, a bad class id.

    Example:
        >>> (ln,) = parse_label_text("0 0.1 0.1 0.5 0.1 0.5 0.6\\n", source="a.txt")
        >>> ln.class_id, ln.points.tolist()
        (0, [[0.1, 0.1], [0.5, 0.1], [0.5, 0.6]])
    """
    report = report if report is not None else Report(source=source)
    out: list[LabelLine] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        where = f"{source}: line {n}"
        cid = _class_id(tokens[0], where=where, n_classes=n_classes)
        coords = tokens[1:]
        if not coords:
            raise AnnotationError(f"{where}: class id {cid} without coordinates")
        if len(coords) % 2:
            raise AnnotationError(f"{where}: odd number of coordinates ({len(coords)}): x y pairs are needed")
        if not all(_NUMBER.fullmatch(t) for t in coords):
            raise _number_error(coords, where=where, first=2)
        values = np.array(coords, dtype=np.float64)
        if not np.isfinite(values).all():
            raise _number_error(coords, where=where, first=2)
        is_box = len(coords) == 4
        if is_box:
            cx, cy, bw, bh = values.tolist()
            if bw <= 0 or bh <= 0:
                raise AnnotationError(f"{where}: box (cx cy w h) {' '.join(coords)} has no area")
            x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
            pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
            report.warn("box lines in a segmentation file (read as rect)", where)
        else:
            if len(coords) < 6:
                raise AnnotationError(f"{where}: polygon has {len(coords) // 2} point(s), at least 3 are needed")
            pts = values.reshape(-1, 2)
        outside = ((pts < 0.0) | (pts > 1.0)).any(axis=1)
        if outside.any():
            report.warn("clipped points", f"{where}: {int(outside.sum())} of {len(pts)} points outside 0..1")
            pts = np.clip(pts, 0.0, 1.0)
        out.append(LabelLine(n, cid, pts, is_box))
    return out


def _read_text(path: Path, *, what: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read {what} ({e.strerror or e})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: byte {e.start}: not UTF-8 text ({e.reason})") from e


# ------------------------------------------------------------------------------------------ yaml
def _names_from(value: Any, *, where: str) -> tuple[list[str], str]:
    """The names of a yaml's ``names`` (or of the ``names`` argument) in id order, and their style."""
    if isinstance(value, Mapping):
        by_id: dict[int, str] = {}
        for k, v in value.items():
            try:
                kid = int(k)
            except (TypeError, ValueError):
                kid = -1
            if isinstance(k, bool) or kid < 0 or str(kid) != str(k).strip():
                raise AnnotationError(f"{where}: names: key {k!r} is not a class id (0, 1, ...)")
            by_id[kid] = str(v)
        if sorted(by_id) != list(range(len(by_id))):
            raise AnnotationError(f"{where}: names: ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        names, style = [by_id[i] for i in range(len(by_id))], "dict"
    elif isinstance(value, list | tuple):
        if any(isinstance(v, list | dict) for v in value):
            raise AnnotationError(f"{where}: names must be a list of strings")
        names, style = [str(v) for v in value], "list"
    else:
        raise AnnotationError(f"{where}: names must be a list or a mapping id -> name, got {_yaml_type(value)}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise AnnotationError(f"{where}: names: {name!r} appears twice")
        seen.add(name)
    return names, style


def _inside(folder: Path, home: Path) -> bool:
    """True when ``folder`` is ``home`` or under it, by the path's text (``..`` and absolute paths; links are not followed)."""
    f, h = os.path.normpath(os.path.abspath(folder)), os.path.normpath(os.path.abspath(home))
    return f == h or f.startswith(h.rstrip(os.sep) + os.sep)


def _check_inside(folder: Path, *, key: str, value: str, yaml_path: Path, allow: bool, report: Report) -> None:
    if _inside(folder, yaml_path.parent):
        return
    if not allow:
        raise AnnotationError(f"{yaml_path}: {key}: {value!r} leaves the dataset's folder {yaml_path.parent} "
                              "(refused; allow it with --allow-outside)")
    log.warning("%s: %s: %r is outside the dataset's folder (allowed)", yaml_path, key, value)
    report.warn("data.yaml folders outside the dataset's folder (allowed)", f"{yaml_path}: {key}: {value!r}")


def _split_folders(cfg: dict[str, Any], *, yaml_path: Path, allow_outside: bool = False,
                   report: Report | None = None) -> list[tuple[str, Path]]:
    report = report if report is not None else Report(source=str(yaml_path))
    root_value = cfg.get("path")
    root = yaml_path.parent
    if root_value not in (None, ""):
        if not isinstance(root_value, str):
            raise AnnotationError(f"{yaml_path}: 'path' must be a folder, got {root_value!r}")
        root = root / root_value
        _check_inside(root, key="path", value=root_value, yaml_path=yaml_path, allow=allow_outside, report=report)
        if not root.is_dir():
            raise AnnotationError(f"{yaml_path}: path {root_value!r}: folder {root} does not exist")
    folders: list[tuple[str, Path]] = []
    for split in SPLITS:
        value = cfg.get(split)
        if value in (None, ""):
            continue
        entries = value if isinstance(value, list) else [value]
        for entry in entries:
            if not isinstance(entry, str) or not entry:
                raise AnnotationError(f"{yaml_path}: {split}: must be an images folder or a list of them, got {entry!r}")
            folder = root / entry
            if not folder.exists() and entry.startswith("../") and (root / entry[3:]).exists():
                folder = root / entry[3:]  # Roboflow's "../train/images" beside train/ (Ultralytics reads it so too)
            if folder.is_file():
                raise AnnotationError(f"{yaml_path}: {split}: {entry!r} is a file; only images folders are supported "
                                      "(lists of image paths in a .txt file are not)")
            _check_inside(folder, key=split, value=entry, yaml_path=yaml_path, allow=allow_outside, report=report)
            if not folder.is_dir():
                raise AnnotationError(f"{yaml_path}: {split}: images folder {folder} does not exist")
            folders.append((split, folder))
    if not folders:
        raise AnnotationError(f"{yaml_path}: has no images folder (train, val or test)")
    return folders


#: Largest data.yaml read, in bytes.
MAX_YAML_BYTES = 2**20
#: Deepest nesting of a data.yaml's mappings and lists.
MAX_YAML_DEPTH = 32


def _yaml_depth(value: Any) -> int:
    """Nesting depth of loaded YAML (shared nodes, YAML's aliases, walked once)."""
    deepest, stack, seen = 0, [(value, 1)], set()
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list) and id(v) not in seen:
            seen.add(id(v))
            deepest = max(deepest, d)
            if deepest > MAX_YAML_DEPTH:
                break
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _read_yaml(path: Path) -> dict[str, Any]:
    yaml = _yaml()
    try:
        size = path.stat().st_size
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read the dataset file ({e.strerror or e})") from e
    if size > MAX_YAML_BYTES:
        raise AnnotationError(f"{path}: {size} bytes, larger than the limit of {MAX_YAML_BYTES} for a data.yaml")
    text = _read_text(path, what="the dataset file")
    try:
        cfg = yaml.safe_load(text)
    except RecursionError:
        raise AnnotationError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels (the limit)") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise AnnotationError(f"{path}: {at}not valid YAML ({e.problem})") from e
    except yaml.YAMLError as e:
        raise AnnotationError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise AnnotationError(f"{path}: a data.yaml is a mapping (names, train, val...), got {_yaml_type(cfg)}")
    if _yaml_depth(cfg) > MAX_YAML_DEPTH:
        raise AnnotationError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels (the limit)")
    return cfg


def _yaml_type(value: Any) -> str:
    """The YAML name of a loaded value's type, for messages."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a " + type(value).__name__


# ------------------------------------------------------------------------------------------ read
def read(
    doc: str | os.PathLike[str],
    *,
    source: str | None = None,
    options: ReadOptions = ReadOptions(),
    report: Report | None = None,
    names: Sequence[str] | Mapping[int, str] | None = None,
) -> AnnotationSet:
    """Reads a YOLO segmentation dataset: a ``data.yaml``, a folder holding one, or a bare ``images/`` + ``labels/`` folder.

    Args:
        doc: the path of the data.yaml or of the dataset folder.
        source: names the dataset in messages (``doc`` by default); files are named by their own paths.
        options: ``allow_outside``: let the yaml name folders outside the dataset's folder (refused by default).
        report: receives counted fixes (clipped points, box lines, repaired polygons, orphan label files).
        names: the class names of a bare folder (a list, or a mapping id -> name); refused with a yaml,
            whose ``names`` are used.

    Raises:
        AnnotationError: naming the yaml, the image or the label file and line at fault.

    Example:
        >>> ds = read("shoe-soles-yoloseg/data.yaml")  # doctest: +SKIP
        >>> len(ds), ds.count_instances(), ds.labels  # doctest: +SKIP
        (1369, 1476, ['shoes'])
        >>> read("ls-export", names=["shoe", "boot"]).labels  # doctest: +SKIP
        ['shoe', 'boot']
    """
    with gc_paused():
        return _read(Path(doc), source=source, report=report, names=names, allow_outside=options.allow_outside)


def _read(p: Path, *, source: str | None, report: Report | None, names: Any, allow_outside: bool) -> AnnotationSet:
    source = source or str(p)
    report = report if report is not None else Report(source=source)
    meta: dict[str, Any] = {}
    yaml_path = p / YAML_NAME if p.is_dir() and (p / YAML_NAME).is_file() else p
    if not p.exists():
        raise AnnotationError(f"{source}: no such file or folder")
    if yaml_path.is_file():
        if names is not None:
            raise AnnotationError(f"{yaml_path}: names come from the data.yaml; give names only for a bare folder")
        cfg = _read_yaml(yaml_path)
        if "names" not in cfg or cfg["names"] is None:
            raise AnnotationError(f"{yaml_path}: no 'names' (the class names)")
        labels, style = _names_from(cfg["names"], where=str(yaml_path))
        nc = cfg.get("nc")
        if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc != len(labels)):
            raise AnnotationError(f"{yaml_path}: nc is {nc!r} but names lists {len(labels)} class(es)")
        folders = _split_folders(cfg, yaml_path=yaml_path, allow_outside=allow_outside, report=report)
        meta.update(yolo_names_style=style, yolo_nc="nc" in cfg,
                    yolo_yaml={k: v for k, v in cfg.items() if k not in _YAML_KEYS})
        n_classes: int | None = len(labels)
    elif p.is_dir() and (p / "images").is_dir() and (p / "labels").is_dir():
        images = p / "images"
        labels_given: list[str] | None = None
        if names is not None:
            labels_given, _ = _names_from(names, where=f"{source}: names")
        elif (p / "classes.txt").is_file():
            lines = _read_text(p / "classes.txt", what="the class names").splitlines()
            labels_given, _ = _names_from([ln.strip() for ln in lines if ln.strip()], where=str(p / "classes.txt"))
        labels = labels_given or []
        n_classes = len(labels) if labels_given is not None else None
        split_dirs = [s for s in SPLITS if (images / s).is_dir()]
        folders = [(s, images / s) for s in split_dirs]
        folders.append(("", images))  # images outside the split folders (skipped below when in one)
    else:
        raise AnnotationError(f"{source}: neither a data.yaml nor a folder with a {YAML_NAME} or images/ and labels/")

    records: list[ImageRecord] = []
    pending: list[tuple[ImageRecord, LabelLine, str]] = []
    seen_images: dict[str, str] = {}
    names_by_split: dict[str, set[str]] = {}
    label_files: set[str] = set()
    label_dirs: dict[str, Path] = {}
    for split, folder in folders:
        ld = label_path(folder / "x.jpg").parent
        if ld != folder:
            label_dirs.setdefault(os.path.abspath(ld), ld)
        found = _image_files(folder)
        if split and not found:
            report.warn("split folders without images", f"{source}: {split}: {folder}")
        if len(records) + len(found) > MAX_IMAGES:
            raise AnnotationError(f"{source}: more than the limit of {MAX_IMAGES} images in one dataset")
        for img_path in found:
            rel = img_path.relative_to(folder).as_posix()
            if split == "" and PurePosixPath(rel).parts[0] in SPLITS and len(PurePosixPath(rel).parts) > 1:
                continue  # a bare folder's images/train/...: read with its split
            key = os.path.abspath(img_path)
            if key in seen_images:
                report.warn("images in several splits (kept in the first)",
                            f"{source}: image {img_path} in {seen_images[key]} and {split}")
                continue
            seen_images[key] = split
            where = f"{source}: image {img_path}"
            try:
                w, h = image_size_wh(img_path)
            except ImageReadError as e:
                raise AnnotationError(f"{source}: image {rel!r}: {e}") from e
            extra: dict[str, Any] = {"yolo_image": str(img_path)}
            if split:
                extra["split"] = split
            lp = label_path(img_path)
            label_files.add(os.path.abspath(lp))
            try:
                text = lp.read_bytes()
            except FileNotFoundError:
                text = None
            except OSError as e:
                raise AnnotationError(f"{lp}: cannot read the label file ({e.strerror or e})") from e
            if text is None:
                extra["yolo_no_label_file"] = True
            rec = ImageRecord(file_name=rel, width_px=w, height_px=h, image_id=rel, extra=extra)
            splits_of_name = names_by_split.setdefault(rel, set())
            if splits_of_name:
                report.warn("file names used in several splits", f"{where}: {rel!r} also in {sorted(splits_of_name)}")
            splits_of_name.add(split)
            records.append(rec)
            if text is None:
                continue
            try:
                content = text.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise AnnotationError(f"{lp}: byte {e.start}: not UTF-8 text ({e.reason})") from e
            for ln in parse_label_text(content, source=str(lp), n_classes=n_classes, report=report):
                pending.append((rec, ln, f"{lp}: line {ln.line}"))

    orphans: dict[str, str] = {}
    for ld in label_dirs.values():
        for dirpath, _, filenames in os.walk(ld):
            for f in filenames:
                full = os.path.join(dirpath, f)
                if f.endswith(".txt") and not f.startswith(".") and os.path.abspath(full) not in label_files:
                    orphans.setdefault(os.path.abspath(full), full)
    for full in sorted(orphans.values()):
        report.warn("label files without an image (ignored)", full)
    meta["yolo_label_files_without_image"] = len(orphans)

    if n_classes is None:  # a bare folder without names: the ids are the names
        top = max((ln.class_id for _, ln, _ in pending), default=-1)
        labels = [str(i) for i in range(top + 1)]

    fixed = sanitize_many(
        [(tuple([ln.points * (rec.width_px, rec.height_px)]), rec.width_px, rec.height_px, where)
         for rec, ln, where in pending],
        report=report,
        check_validity=[not ln.is_box for _, ln, _ in pending],
    )
    for (rec, ln, where), parts in zip(pending, fixed, strict=True):
        shape = None
        if ln.is_box:
            (x0, y0), (x1, y1) = parts[0].min(axis=0), parts[0].max(axis=0)
            shape = {"name": "rect", "x": float(x0), "y": float(y0), "width": float(x1 - x0), "height": float(y1 - y0)}
        try:
            rec.regions.append(Region(label=labels[ln.class_id], polygons=parts, shape=shape, region_id=str(ln.line)))
        except AnnotationError as e:
            raise AnnotationError(f"{where}: {e}") from e
    return AnnotationSet(images=records, labels=labels, source_format=NAME, meta=meta)


# ----------------------------------------------------------------------------------------- write
def _fmt(v: float) -> str:
    """The shortest text that reads back as the same float, never in exponent form (``0``, ``1``, ``0.25``)."""
    v += 0.0  # no "-0"
    if v.is_integer():
        return str(int(v))
    s = repr(v)
    return s if "e" not in s else np.format_float_positional(v, unique=True, trim="-")


def _relpath(img: ImageRecord) -> str:
    """Where the image goes under ``images/<split>/``: its relative file name, else its base name."""
    name = img.file_name.replace("\\", "/")
    parts = urlsplit(name)
    if len(parts.scheme) > 1 or name.startswith("/") or parts.query:  # a URL or an absolute path
        return PurePosixPath(parts.path or name).name
    pp = PurePosixPath(name)
    if ".." in pp.parts or not pp.parts:
        return pp.name
    return pp.as_posix()


def _layout(ds: AnnotationSet) -> list[tuple[ImageRecord, str, str]]:
    """``(image, split, path under images/<split>/)`` per image, refusing two images at one place."""
    out = []
    taken: dict[tuple[str, str], str] = {}
    for img in ds.images:
        split = img.extra.get("split") or DEFAULT_SPLIT
        if split not in SPLITS:
            raise AnnotationError(f"image {img.file_name!r}: split {split!r} is not one of {', '.join(SPLITS)}")
        rel = _relpath(img)
        if not rel or not PurePosixPath(rel).suffix:
            raise AnnotationError(f"image {img.file_name!r}: no image file name to write its label file for")
        key = (split, PurePosixPath(rel).with_suffix("").as_posix())
        if key in taken:
            raise AnnotationError(f"image {img.file_name!r}: same label file labels/{split}/{key[1]}.txt as "
                                  f"image {taken[key]!r}")
        taken[key] = img.file_name
        out.append((img, split, rel))
    return out


def _labels(ds: AnnotationSet) -> list[str]:
    labels = list(ds.labels)
    for lab in ds.collect_labels():
        if lab not in labels:
            labels.append(lab)
    return labels


def write(ds: AnnotationSet, *, options: WriteOptions = WriteOptions()) -> dict[str, str]:
    """Writes the canonical set as the text files of a YOLO segmentation dataset.

    Args:
        ds: the annotation set; every image with an instance needs its size.
        options: unused by YOLO (kept for the common writer signature).

    Returns:
        ``{path relative to the dataset folder: text}``: ``data.yaml`` and ``labels/<split>/<stem>.txt``
        (an empty file for an image without instances, none where the source had none).

    Raises:
        AnnotationError: an image without a known size, a split other than train/val/test, two images
            that would share a label file.

    Example:
        >>> from via_tools.model import as_polygon
        >>> img = ImageRecord("a.jpg", 200, 100, regions=[Region("shoe", (as_polygon([(0, 0), (50, 0), (50, 25)]),))])
        >>> files = write(AnnotationSet([img]))
        >>> files["labels/train/a.txt"]
        '0 0 0 0.25 0 0.25 0.25\\n'
        >>> print(files["data.yaml"], end="")
        train: images/train
        nc: 1
        names:
        - shoe
    """
    with gc_paused():
        return _write(ds)


def _write(ds: AnnotationSet) -> dict[str, str]:
    labels = _labels(ds)
    ids = {lab: i for i, lab in enumerate(labels)}
    files: dict[str, str] = {}
    splits: set[str] = set()
    n_passive = n_parts = n_clipped = 0
    for img, split, rel in _layout(ds):
        splits.add(split)
        lines = []
        for r in img.regions:
            if not r.is_instance:
                n_passive += 1
                continue
            if img.width_px is None or img.height_px is None:
                raise AnnotationError(f"image {img.file_name!r}: no known size, and YOLO coordinates are fractions "
                                      "of it (read the source with its images folder)")
            if len(r.polygons) > 1:
                n_parts += 1
            for p in r.polygons:
                pts = p / (img.width_px, img.height_px)
                if ((pts < 0.0) | (pts > 1.0)).any():
                    n_clipped += 1
                    pts = np.clip(pts, 0.0, 1.0)
                lines.append(" ".join([str(ids[r.label]), *map(_fmt, pts.ravel().tolist())]))
        if not lines and img.extra.get("yolo_no_label_file"):
            continue
        stem = PurePosixPath(rel).with_suffix(".txt").as_posix()
        files[f"labels/{split}/{stem}"] = "".join(line + "\n" for line in lines)
    if n_passive:
        log.warning("YOLO output leaves out %d region(s) without area (polylines, points)", n_passive)
    if n_parts:
        log.warning("YOLO output: %d multi-part region(s) written as one line per part", n_parts)
    if n_clipped:
        log.warning("YOLO output: %d polygon(s) outside their image clipped to it", n_clipped)

    meta = ds.meta if ds.source_format == NAME else {}
    cfg: dict[str, Any] = {s: f"images/{s}" for s in SPLITS if s in splits}
    if not cfg:
        cfg[DEFAULT_SPLIT] = f"images/{DEFAULT_SPLIT}"
    if meta.get("yolo_nc", True):
        cfg["nc"] = len(labels)
    cfg["names"] = dict(enumerate(labels)) if meta.get("yolo_names_style") == "dict" else labels
    for k, v in (meta.get("yolo_yaml") or {}).items():
        cfg.setdefault(k, v)
    yaml = _yaml()
    files[YAML_NAME] = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    return files


def _image_source(img: ImageRecord, images_dir: Path | None) -> Path | None:
    src = img.extra.get("yolo_image")
    if isinstance(src, str) and Path(src).is_file():
        return Path(src)
    if images_dir is not None and (images_dir / img.file_name).is_file():
        return images_dir / img.file_name
    return None


def _place_image(src: Path, dest: Path, *, mode: str) -> bool:
    """Copies or hard-links ``src`` to ``dest`` (replaced atomically); False when a link fell back to a copy."""
    if dest.exists() and os.path.samefile(src, dest):
        return True
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{secrets.token_hex(8)}.tmp")
    linked = True
    try:
        if mode == "link":
            try:
                os.link(src, tmp)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                linked = False
        if mode == "copy" or not linked:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return linked


def save(
    ds: AnnotationSet,
    out_dir: str | os.PathLike[str],
    *,
    options: WriteOptions = WriteOptions(),
    images: str = "none",
    images_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Writes ``ds`` as a YOLO segmentation dataset in ``out_dir`` (each file atomically, ``data.yaml`` last).

    Args:
        ds: the annotation set.
        out_dir: the dataset folder (created; files of an earlier write are replaced, other files kept).
        options: unused by YOLO (kept for the common writer signature).
        images: ``"none"`` (default): only labels and yaml, ``images/<split>/`` created empty and the
            expected image paths logged; ``"copy"``: copy each image to ``images/<split>/<file_name>``;
            ``"link"``: hard-link it (copied where the file system cannot link).
        images_dir: where the images are for ``copy`` / ``link`` (``images_dir / file_name``), for images
            not read from a YOLO dataset (those are taken from where they were read).

    Returns:
        The path of the ``data.yaml`` written.

    Raises:
        AnnotationError: what :func:`write` raises, an unknown ``images`` mode, or images to copy that are
            not found (all named, before anything is written).

    Example:
        >>> save(load("shoes/coco.json"), "shoes-yolo", images="link", images_dir="shoes/images")  # doctest: +SKIP
        PosixPath('shoes-yolo/data.yaml')
    """
    if images not in IMAGE_MODES:
        raise AnnotationError(f"images={images!r}: must be one of {', '.join(IMAGE_MODES)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AnnotationError(f"{out}: a YOLO dataset is a folder, and this is a file")
    files = write(ds, options=options)
    layout = _layout(ds)
    sources: list[tuple[Path, Path]] = []
    if images != "none":
        idir = Path(images_dir) if images_dir is not None else None
        missing = []
        for img, split, rel in layout:
            src = _image_source(img, idir)
            if src is None:
                missing.append(img.file_name)
            else:
                sources.append((src, out / "images" / split / rel))
        if missing:
            shown = ", ".join(repr(m) for m in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            where = f"in {idir}" if idir is not None else "(give images_dir)"
            raise AnnotationError(f"{out}: {len(missing)} image(s) to {images} not found {where}: {shown}{more}")
    with gc_paused():
        for rel, text in files.items():
            if rel != YAML_NAME:
                atomic_write_text(out / rel, text)
        n_copied = sum(not _place_image(src, dest, mode=images) for src, dest in sources)
        for split in {s for _, s, _ in layout} or {DEFAULT_SPLIT}:
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        yaml_path = atomic_write_text(out / YAML_NAME, files[YAML_NAME], fsync=True)
    if n_copied:
        log.warning("%s: %d image(s) copied: the file system cannot hard-link them", out, n_copied)
    if images == "none" and layout:
        img, split, rel = layout[0]
        log.warning("%s: images not written: put each one at images/<split>/<file name> (e.g. images/%s/%s), "
                    "or save with images='copy' or 'link'", out, split, rel)
    written = {os.path.abspath(out / rel) for rel in files}
    stale = [os.path.join(d, f) for d, _, fs in os.walk(out / "labels") for f in fs
             if f.endswith(".txt") and os.path.abspath(os.path.join(d, f)) not in written]
    if stale:
        log.warning("%s: %d label file(s) of images not in this set left as they are (e.g. %s)", out, len(stale), stale[0])
    return yaml_path
