"""COCO instances JSON (``images``, ``annotations``, ``categories``) to and from the canonical model.

Reading:

* ``segmentation`` as a list of flat ``[x0, y0, x1, y1, ...]`` lists becomes ONE region whose parts are
  those polygons (multi-part instances stay one instance).
* ``segmentation`` as run-length encoding (``{"size": [h, w], "counts": [...]}`` uncompressed, or
  ``"counts": "..."`` compressed as COCO's own string form) is decoded with pycocotools and traced to
  polygons with OpenCV (both imported only for RLE input). The original RLE is kept in ``Region.extra`` so
  that writing COCO again gives it back unchanged.
* An annotation without a segmentation but with a ``bbox`` becomes a ``rect`` region (counted).
* Image ids become ``ImageRecord.image_id`` and annotation ids ``Region.region_id`` (as strings);
  ``iscrowd`` goes to ``Region.extra["iscrowd"]``, ``score`` to ``Region.score``, and any other keys of
  an image or annotation to ``extra["coco"]``, written back as they were.

Writing computes ``bbox`` (``[x, y, width, height]`` in pixels) and ``area`` (shoelace formula, parts
added) from the polygons, reuses the source's integer ids where they are unique, and numbers the rest.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from via_tools.errors import AnnotationError, json_text, json_type
from via_tools.images import ImageReadError, image_size_wh
from via_tools.model import AnnotationSet, ImageRecord, Region, is_finite_number
from via_tools.options import ReadOptions, WriteOptions
from via_tools.perf import gc_paused
from via_tools.report import Report
from via_tools.shapes import sanitize_many

log = logging.getLogger(__name__)

NAME = "coco"

_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANN_KEYS = ("id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd", "score")


# --------------------------------------------------------------------------------------------- RLE
# Masks are encoded and decoded by pycocotools (imported when an RLE is met), so they read exactly as COCO's
# own tools read them. Its C reader checks nothing of a compressed string (a bad character, a number cut
# short, runs that do not cover the mask: the rest of the mask would be left uninitialised), so the run
# lengths are read here first, only to check them; pycocotools then decodes a string it reads the same way.

#: Run lengths, like the mask's pixel count, must fit pycocotools' 32-bit counts.
_MAX_PIXELS = 2**32 - 1
#: pycocotools reads a number of at most 6 characters (30 bits) correctly; that holds every run, and every
#: difference of two runs, of a mask of fewer than 2**29 pixels (23000 x 23000).
_MAX_CHUNKS = 6


def rle_decode(rle: dict[str, Any], *, where: str) -> np.ndarray:
    """Decodes a COCO run-length encoding to a bool ``(height, width)`` mask, with pycocotools.

    Both forms are accepted: ``counts`` as a list of run lengths (uncompressed) and ``counts`` as
    COCO's compressed string (``str`` or ``bytes``). Runs alternate background / foreground, starting with
    background, and walk the image column by column (Fortran order).

    Args:
        rle: ``{"size": [height, width], "counts": ...}``.
        where: names the file, image and annotation for error messages.

    Raises:
        AnnotationError: a bad size or bad counts (not numbers, a damaged string, runs that do not cover
            the mask exactly); the message starts with ``where``.

    Example:
        >>> rle_decode({"size": [2, 2], "counts": [1, 2, 1]}, where="a").tolist()
        [[False, True], [True, False]]
        >>> rle_decode({"size": [2, 2], "counts": "22"}, where="a").tolist()
        [[False, True], [False, True]]
    """
    size = rle.get("size")
    counts = rle.get("counts")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise AnnotationError(f"{where}: RLE 'size' must be [height, width] positive integers, got {size!r}")
    h, w = size
    if h * w > _MAX_PIXELS:
        raise AnnotationError(f"{where}: RLE size {list(size)} is too large (COCO masks have under 2**32 pixels)")
    if isinstance(counts, str | bytes):
        if isinstance(counts, str):
            if not counts.isascii():
                bad = next(c for c in counts if not c.isascii())
                raise AnnotationError(f"{where}: compressed RLE string has a bad character {bad!r}")
            counts = counts.encode("ascii")
        runs = _rle_string_to_counts(counts, where=where)
    elif isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise AnnotationError(f"{where}: RLE 'counts' must be non-negative integers")
        runs = counts
    else:
        raise AnnotationError(f"{where}: RLE 'counts' must be a list or a string, got {json_type(counts)}")
    total = sum(runs)
    if total != h * w:
        raise AnnotationError(f"{where}: RLE runs cover {total} pixels, the {w}x{h} mask has {h * w}")

    from pycocotools import mask as mask_utils

    if isinstance(counts, list):
        coco_rle = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)  # to the compressed form
    else:
        coco_rle = {"size": [h, w], "counts": counts}
    try:
        mask = mask_utils.decode(coco_rle)
    except ValueError as e:  # pragma: no cover - the runs were checked above
        raise AnnotationError(f"{where}: RLE cannot be decoded ({e})") from e
    return mask.astype(bool)


def _rle_string_to_counts(s: bytes, *, where: str) -> list[int]:
    # COCO's compressed form: each run is a signed variable-length number written 5 bits per character
    # (character = value + 48, bit 0x20 = "more follows", bit 0x10 of the last chunk = sign); from the
    # third run on, the number stored is the difference to the run two places before.
    runs: list[int] = []
    i, n = 0, len(s)
    while i < n:
        value, shift, more = 0, 0, True
        while more:
            if i >= n:
                raise AnnotationError(f"{where}: compressed RLE string ends in the middle of a number")
            c = s[i] - 48
            if not 0 <= c < 64:
                raise AnnotationError(f"{where}: compressed RLE string has a bad character {chr(s[i])!r}")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            i += 1
            shift += 1
            if more and shift == _MAX_CHUNKS:
                raise AnnotationError(f"{where}: compressed RLE string has a number longer than {_MAX_CHUNKS} "
                                      "characters (pycocotools cannot read it)")
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise AnnotationError(f"{where}: compressed RLE decodes to a negative run length")
        runs.append(value)
    return runs


def rle_encode(mask: np.ndarray, *, compressed: bool = False) -> dict[str, Any]:
    """Encodes a bool ``(height, width)`` mask as COCO RLE.

    Args:
        mask: the mask (anything :func:`numpy.asarray` makes a 2-D array of; non-zero is foreground).
        compressed: ``counts`` as COCO's compressed string (pycocotools' encoding, as ``str`` for JSON)
            instead of a list of run lengths. pycocotools writes only the string form, so the list form is
            computed here (with numpy); pycocotools reads both.

    Example:
        >>> rle_encode(np.array([[False, True], [True, False]]))
        {'size': [2, 2], 'counts': [1, 2, 1]}
        >>> rle_encode(np.array([[False, True], [True, False]]), compressed=True)
        {'size': [2, 2], 'counts': '121'}
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"a mask is a 2-D array, got shape {m.shape}")
    size = [int(m.shape[0]), int(m.shape[1])]
    if compressed:
        from pycocotools import mask as mask_utils

        enc = mask_utils.encode(np.asfortranarray(m, dtype=np.uint8))
        return {"size": size, "counts": enc["counts"].decode("ascii")}
    flat = m.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": size, "counts": runs}


def mask_to_polygons_cv(mask: np.ndarray, *, where: str) -> tuple[np.ndarray, ...]:
    """Traces the outer boundaries of a bool mask to polygons (pixel centres), with OpenCV.

    Holes are not kept (COCO polygons cannot express them); parts with fewer than 3 points are dropped.
    """
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - opencv is a project dependency
        raise AnnotationError(f"{where}: reading RLE masks needs opencv-python-headless ({e})") from e
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) >= 3:
            parts.append(pts + 0.5)
    return tuple(parts)


# ------------------------------------------------------------------------------------------- read
def _id_str(v: Any, *, what: str, where: str) -> str:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise AnnotationError(f"{where}: {what} must be an integer or a string, got {json_text(v)}")
    return str(v)


def read(doc: Any, *, source: str, options: ReadOptions = ReadOptions(), report: Report | None = None) -> AnnotationSet:
    """Reads a parsed COCO instances document.

    Args:
        doc: the parsed JSON (a dict with ``images``, ``annotations``, ``categories``).
        source: the file name, for messages.
        options: ``images_dir`` fills missing image sizes from the files (and checks they exist).
        report: receives counted fixes (clipped points, repaired polygons, RLE traced, bbox-only).

    Raises:
        AnnotationError: naming the file, image and annotation at fault.

    Example:
        >>> doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        ...        "annotations": [{"id": 5, "image_id": 1, "category_id": 1,
        ...                         "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 0}],
        ...        "categories": [{"id": 1, "name": "shoe"}]}
        >>> ds = read(doc, source="a.json")
        >>> ds.images[0].regions[0].region_id, ds.labels
        ('5', ['shoe'])
    """
    report = report if report is not None else Report(source=source)
    if not isinstance(doc, dict):
        raise AnnotationError(f"{source}: a COCO file is a JSON object, got {json_type(doc)}")
    for key in ("images", "categories"):
        if not isinstance(doc.get(key), list):
            raise AnnotationError(f"{source}: COCO '{key}' must be a list, got {json_type(doc.get(key))}")
    anns = doc.get("annotations", [])
    if not isinstance(anns, list):
        raise AnnotationError(f"{source}: COCO 'annotations' must be a list, got {json_type(anns)}")

    # categories
    cat_name: dict[str, str] = {}
    cats_sorted: list[tuple[Any, str]] = []
    for k, c in enumerate(doc["categories"]):
        where = f"{source}: category #{k}"
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise AnnotationError(f"{where}: a category needs an 'id' and a string 'name', got {c!r}")
        cid = _id_str(c["id"], what="category id", where=where)
        if cid in cat_name:
            raise AnnotationError(f"{where}: category id {c['id']!r} appears twice")
        cat_name[cid] = c["name"]
        cats_sorted.append((c["id"], c["name"]))
    cats_sorted.sort(key=lambda t: (not isinstance(t[0], int), t[0] if isinstance(t[0], int) else 0, str(t[0])))
    labels: list[str] = []
    for _, name in cats_sorted:
        if name not in labels:
            labels.append(name)

    # images
    images: list[ImageRecord] = []
    by_id: dict[str, ImageRecord] = {}
    for k, im in enumerate(doc["images"]):
        where = f"{source}: image #{k}"
        if not isinstance(im, dict):
            raise AnnotationError(f"{where}: an image entry must be an object, got {json_type(im)}")
        if "id" not in im or not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise AnnotationError(f"{where}: an image needs an 'id' and a 'file_name', got keys {sorted(im)}")
        where = f"{source}: image {im['file_name']!r}"
        iid = _id_str(im["id"], what="image id", where=where)
        if iid in by_id:
            raise AnnotationError(f"{where}: image id {im['id']!r} is used twice")
        width, height = im.get("width"), im.get("height")
        if options.images_dir is not None:
            path = options.images_dir / im["file_name"]
            if not path.is_file():
                raise AnnotationError(f"{where}: image file {path} does not exist")
            if width is None or height is None:
                try:
                    width, height = image_size_wh(path)
                except ImageReadError as e:
                    raise AnnotationError(f"{where}: {e}") from e
        other = {k2: v for k2, v in im.items() if k2 not in _IMAGE_KEYS}
        extra = {"coco": other} if other else {}
        try:
            rec = ImageRecord(file_name=im["file_name"], width_px=width, height_px=height, image_id=iid, extra=extra)
        except AnnotationError as e:
            raise AnnotationError(f"{source}: {e}") from e
        images.append(rec)
        by_id[iid] = rec

    # annotations: geometry first, then one vectorised sanitize pass over all of them
    pending: list[tuple[ImageRecord, Region | None, dict, str, tuple[np.ndarray, ...], bool]] = []
    seen_ann: set[str] = set()
    for k, a in enumerate(anns):
        if not isinstance(a, dict):
            raise AnnotationError(f"{source}: annotation #{k} must be an object, got {json_type(a)}")
        aid = _id_str(a["id"], what="annotation id", where=f"{source}: annotation #{k}") if "id" in a else None
        where = f"{source}: annotation {a['id'] if aid is not None else '#' + str(k)}"
        if aid is not None:
            if aid in seen_ann:
                raise AnnotationError(f"{where}: annotation id is used twice")
            seen_ann.add(aid)
        if "image_id" not in a:
            raise AnnotationError(f"{where}: no 'image_id'")
        img = by_id.get(_id_str(a["image_id"], what="image_id", where=where))
        if img is None:
            raise AnnotationError(f"{where}: image_id {a['image_id']!r} is not in 'images'")
        where = f"{source}: image {img.file_name!r}: annotation {a.get('id', '#' + str(k))}"
        cid = a.get("category_id")
        if cid is None or _id_str(cid, what="category_id", where=where) not in cat_name:
            raise AnnotationError(f"{where}: category_id {cid!r} is not in 'categories'")
        label = cat_name[str(cid)]
        seg = a.get("segmentation")
        other = {k2: v for k2, v in a.items() if k2 not in _ANN_KEYS}
        iscrowd = a.get("iscrowd", 0)
        if iscrowd not in (None, 0, 1) or isinstance(iscrowd, float):
            raise AnnotationError(f"{where}: iscrowd must be 0 or 1, got {json_text(iscrowd)}")
        extra: dict[str, Any] = {"iscrowd": iscrowd}
        if other:
            extra["coco"] = other
        shape = None
        check = True
        if isinstance(seg, list) and seg:
            parts = tuple(_flat_to_polygon(p, where=f"{where}: polygon {j}") for j, p in enumerate(seg))
        elif isinstance(seg, dict):
            mask = rle_decode(seg, where=where)
            if img.height_px is not None and mask.shape != (img.height_px, img.width_px):
                raise AnnotationError(
                    f"{where}: RLE size {list(mask.shape)} differs from the image's [height, width] "
                    f"[{img.height_px}, {img.width_px}]"
                )
            parts = mask_to_polygons_cv(mask, where=where)
            if not parts:
                raise AnnotationError(f"{where}: RLE mask is empty")
            extra["coco_rle"] = seg
            extra["coco_area"] = int(mask.sum())
            report.warn("RLE masks traced to polygons", where)
        elif seg in (None, []) and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4:
            x, y, w, h = a["bbox"]
            if not all(is_finite_number(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                raise AnnotationError(f"{where}: bbox must be [x, y, width, height] with a positive size, got {a['bbox']!r}")
            shape = {"name": "rect", "x": x, "y": y, "width": w, "height": h}
            parts = (np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64),)
            check = False
            report.warn("annotations with a bbox only (read as rect)", where)
        else:
            raise AnnotationError(
                f"{where}: 'segmentation' must be a list of polygons or an RLE object, got {seg!r:.80}"
            )
        score = a.get("score")
        if score is not None and not (is_finite_number(score) and 0.0 <= score <= 1.0):
            raise AnnotationError(f"{where}: score must be a number in [0, 1], got {score!r}")
        pending.append((img, None, {"label": label, "shape": shape, "score": score, "region_id": aid,
                                    "extra": extra}, where, parts, check))

    fixed = sanitize_many(
        [(parts, img.width_px, img.height_px, where) for img, _, _, where, parts, _ in pending],
        report=report,
        check_validity=[check for *_, check in pending],
    )
    for (img, _, kw, where, _, _), parts in zip(pending, fixed, strict=True):
        try:
            img.regions.append(Region(polygons=parts, **kw))
        except AnnotationError as e:
            raise AnnotationError(f"{where}: {e}") from e

    meta: dict[str, Any] = {"coco_categories": [c for c in doc["categories"]]}
    for key in ("info", "licenses"):
        if key in doc:
            meta[f"coco_{key}"] = doc[key]
    return AnnotationSet(images=images, labels=labels, source_format=NAME, meta=meta)


def _flat_to_polygon(flat: Any, *, where: str) -> np.ndarray:
    if not isinstance(flat, list):
        raise AnnotationError(f"{where}: a polygon must be a flat list [x0, y0, x1, y1, ...], got {json_type(flat)}")
    if len(flat) % 2:
        raise AnnotationError(f"{where}: polygon has an odd number of coordinates ({len(flat)})")
    if len(flat) < 6:
        raise AnnotationError(f"{where}: polygon has {len(flat) // 2} points, at least 3 are needed")
    try:
        arr = np.asarray(flat, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:
        raise AnnotationError(f"{where}: polygon coordinates must be numbers ({e})") from e
    if arr.ndim != 1 or any(isinstance(v, bool) for v in flat):
        raise AnnotationError(f"{where}: polygon coordinates must be numbers")
    if not np.isfinite(arr).all():
        raise AnnotationError(f"{where}: polygon has NaN or infinite coordinates")
    return arr.reshape(-1, 2)


# ------------------------------------------------------------------------------------------ write
def _int_ids(values: list[str | None]) -> list[int] | None:
    """The ids as ints when every one is an integer string and they are unique; else ``None``."""
    out = []
    for v in values:
        if v is None:
            return None
        try:
            i = int(v)
        except ValueError:
            return None
        if str(i) != v:
            return None
        out.append(i)
    return out if len(set(out)) == len(out) else None


def _categories(ds: AnnotationSet) -> tuple[list[dict[str, Any]], dict[str, int]]:
    labels = list(ds.labels)
    for lab in ds.collect_labels():
        if lab not in labels:
            labels.append(lab)
    source_cats = {c["name"]: c for c in ds.meta.get("coco_categories", []) if isinstance(c, dict) and "name" in c}
    used_ids = {c["id"] for c in source_cats.values() if isinstance(c.get("id"), int) and c["name"] in labels}
    next_id = 1
    cats, ids = [], {}
    for lab in labels:
        src = source_cats.get(lab)
        if src is not None and isinstance(src.get("id"), int) and src["id"] not in ids.values():
            cat = dict(src)
        else:
            while next_id in used_ids or next_id in ids.values():
                next_id += 1
            cat = {"id": next_id, "name": lab, "supercategory": ""}
        cats.append(cat)
        ids[lab] = cat["id"]
    return cats, ids




def write(ds: AnnotationSet, *, options: WriteOptions = WriteOptions()) -> dict[str, Any]:
    """Writes the canonical set as a COCO instances document.

    ``bbox`` and ``area`` are computed from the polygons. Regions without polygons (polylines, points)
    cannot be COCO instances: they are left out and counted in a logged warning. Images without a known
    size are written without ``width`` / ``height`` (also counted in a warning).

    Args:
        ds: the annotation set.
        options: unused by COCO (kept for the common writer signature).

    Returns:
        The JSON-able document.

    Example:
        >>> from via_tools.model import as_polygon
        >>> img = ImageRecord("a.jpg", 8, 8, regions=[Region("shoe", (as_polygon([(0, 0), (4, 0), (4, 4)]),))])
        >>> doc = write(AnnotationSet([img]))
        >>> doc["annotations"][0]["bbox"], doc["annotations"][0]["area"]
        ([0.0, 0.0, 4.0, 4.0], 8.0)
    """
    with gc_paused():
        return _write(ds)


def _write(ds: AnnotationSet) -> dict[str, Any]:
    cats, cat_ids = _categories(ds)
    image_ids = _int_ids([img.image_id for img in ds.images])
    if image_ids is None:
        image_ids = list(range(1, len(ds.images) + 1))
    regions = [(i, r) for i, img in enumerate(ds.images) for r in img.regions if r.is_instance]
    n_skipped = sum(1 for img in ds.images for r in img.regions if not r.is_instance)
    ann_ids = _int_ids([r.region_id for _, r in regions])
    if ann_ids is None:
        ann_ids = list(range(1, len(regions) + 1))

    images_out = []
    n_nosize = 0
    for img, iid in zip(ds.images, image_ids, strict=True):
        d: dict[str, Any] = {"id": iid, "file_name": img.file_name}
        if img.width_px is not None and img.height_px is not None:
            d["width"] = img.width_px
            d["height"] = img.height_px
        else:
            n_nosize += 1
        for k, v in (img.extra.get("coco") or {}).items():
            d.setdefault(k, v)
        images_out.append(d)

    bboxes, areas = _bbox_area([r.polygons for _, r in regions])
    anns = []
    for (i, r), aid, bb, area in zip(regions, ann_ids, bboxes.tolist(), areas.tolist(), strict=True):
        rle = r.extra.get("coco_rle")
        a: dict[str, Any] = {
            "id": aid,
            "image_id": image_ids[i],
            "category_id": cat_ids[r.label],
            "segmentation": rle if rle is not None else [p.ravel().tolist() for p in r.polygons],
            "area": float(r.extra.get("coco_area", area)) if rle is not None else area,
            "bbox": [bb[0], bb[1], bb[2] - bb[0], bb[3] - bb[1]],
            "iscrowd": int(r.extra.get("iscrowd", 0) or 0),
        }
        if r.score is not None:
            a["score"] = r.score
        for k, v in (r.extra.get("coco") or {}).items():
            a.setdefault(k, v)
        anns.append(a)

    if n_skipped:
        log.warning("COCO output leaves out %d region(s) without area (polylines, points)", n_skipped)
    if n_nosize:
        log.warning("COCO output: %d image(s) have no known size and are written without width/height "
                    "(read the source with the images folder to fill them)", n_nosize)
    doc: dict[str, Any] = {}
    if "coco_info" in ds.meta:
        doc["info"] = ds.meta["coco_info"]
    if "coco_licenses" in ds.meta:
        doc["licenses"] = ds.meta["coco_licenses"]
    doc.update(images=images_out, annotations=anns, categories=cats)
    return doc


def _bbox_area(polys_per_region: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(R, 4)`` xyxy and areas ``(R,)`` of many regions at once (vectorised over every point)."""
    n = len(polys_per_region)
    if n == 0:
        return np.zeros((0, 4)), np.zeros(0)
    parts = [p for ps in polys_per_region for p in ps]
    part_region = np.repeat(np.arange(n), [len(ps) for ps in polys_per_region])
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    pts = np.concatenate(parts)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nxt = np.arange(len(pts)) + 1
    nxt[starts + lengths - 1] = starts
    x, y = pts[:, 0], pts[:, 1]
    part_of_pt = np.repeat(np.arange(len(parts)), lengths)
    area2 = np.bincount(part_of_pt, weights=x * y[nxt] - x[nxt] * y, minlength=len(parts))
    areas = np.bincount(part_region, weights=0.5 * np.abs(area2), minlength=n)
    # regions' points are contiguous: reduce per region
    region_start = starts[np.concatenate([[0], np.cumsum([len(ps) for ps in polys_per_region])[:-1]])]
    x0 = np.minimum.reduceat(x, region_start)
    y0 = np.minimum.reduceat(y, region_start)
    x1 = np.maximum.reduceat(x, region_start)
    y1 = np.maximum.reduceat(y, region_start)
    return np.stack([x0, y0, x1, y1], axis=1), areas
