"""What VIA 1.x, 2.x and the VIA CSV export share: image entries, regions, labels, and writing them back.

A VIA 1.x / 2.x image entry is ``{"filename", "size", "file_attributes", "regions"}`` (1.x adds
``fileref`` and ``base64_img_data``), with ``regions`` a dict ``{"0": region}`` in 1.x and a list in 2.x.
A region is ``{"shape_attributes": {...}, "region_attributes": {...}}``. Everything that is not one of
these standard fields, and any departure from the standard layout (a 1.x file with list regions, a
missing key, another key order), is kept in ``extra`` so that writing gives the same document back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np

from via_tools.errors import AnnotationError, json_type
from via_tools.model import AnnotationSet, ImageRecord, Region
from via_tools.options import ReadOptions, WriteOptions
from via_tools.report import Report
from via_tools.shapes import VIA_SHAPE_NAMES, polygon_to_shape, sanitize_many, shape_to_polygons

log = logging.getLogger(__name__)

#: Standard image entry keys, in the order each version writes them.
VIA1_IMAGE_KEYS = ("fileref", "size", "filename", "base64_img_data", "file_attributes", "regions")
VIA2_IMAGE_KEYS = ("filename", "size", "regions", "file_attributes")
REGION_KEYS = ("shape_attributes", "region_attributes")

#: Formats whose image ids are VIA keys (``filename`` + ``size``).
VIA_KEYED_FORMATS = frozenset({"via1", "via2"})

#: The region attribute that groups the parts of one multi-part instance. VIA has no multi-part shape: an
#: instance of several polygons (a shoe cut in two by a trouser leg, a COCO segmentation of several
#: polygons) is written as one VIA region per part, each with this attribute set to the same value (the
#: instance's id); reading gives back one region with those parts.
GROUP_ATTR = "shoeseg_instance"


def label_of(attributes: Any, label_attr: str) -> str | None:
    """The label held by ``attributes[label_attr]``, or ``None`` when there is none.

    A plain string, a dropdown or radio value (a string) and a checkbox (``{"shoe": true}``, the first
    true key) are understood; numbers are turned into strings.

    Example:
        >>> label_of({"label": {"boot": False, "shoe": True}}, "label")
        'shoe'
    """
    if not isinstance(attributes, dict):
        return None
    v = attributes.get(label_attr)
    if isinstance(v, str):
        return v.strip() or None
    if isinstance(v, dict):
        for k, on in v.items():
            if on is True and isinstance(k, str) and k.strip():
                return k.strip()
        return None
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    return None


def region_label(attributes: dict, *, options: ReadOptions, where: str, report: Report) -> tuple[str, bool]:
    """``(label, defaulted)`` for a region's attributes, counting checkboxes with several labels."""
    v = attributes.get(options.label_attr)
    if type(v) is str and v and not v[0].isspace() and not v[-1].isspace():
        return v, False
    label = label_of(attributes, options.label_attr)
    if label is None:
        return options.default_label, True
    v = attributes.get(options.label_attr)
    if isinstance(v, dict) and sum(1 for on in v.values() if on is True) > 1:
        report.warn("regions with several labels ticked (the first is used)", f"{where}: {v}")
    return label, False


def attributes_for_write(region: Region, *, label_attr: str) -> dict[str, Any]:
    """The region's attributes, with ``label_attr`` set to the region's label when they do not say it."""
    attrs = region.attributes if isinstance(region.attributes, dict) else {}
    got = label_of(attrs, label_attr)
    if got == region.label or (got is None and region.extra.get("label_defaulted")):
        return attrs
    new = dict(attrs)
    new[label_attr] = {region.label: True} if isinstance(attrs.get(label_attr), dict) else region.label
    return new


class PendingRegions:
    """Regions read but not yet built: their polygons are sanitized together, in one vectorised pass."""

    def __init__(self) -> None:
        self.items: list[tuple[ImageRecord, dict[str, Any], tuple[np.ndarray, ...] | None, str, bool]] = []
        self.raw: list[tuple[int, list, list]] = []

    def add(self, image: ImageRecord, kwargs: dict[str, Any], polygons: tuple[np.ndarray, ...], where: str,
            check: bool) -> None:
        self.items.append((image, kwargs, polygons, where, check))

    def add_polygon(self, image: ImageRecord, kwargs: dict[str, Any], xs: list, ys: list, where: str) -> None:
        """Adds a VIA polygon whose coordinate lists are converted, with all others, in one numpy call."""
        self.raw.append((len(self.items), xs, ys))
        self.items.append((image, kwargs, None, where, True))

    def _convert_raw(self) -> None:
        if not self.raw:
            return
        lengths = [len(xs) for _, xs, _ in self.raw]
        try:
            xs = np.array(list(chain.from_iterable(x for _, x, _ in self.raw)))
            ys = np.array(list(chain.from_iterable(y for _, _, y in self.raw)))
            ok = xs.dtype.kind in "iuf" and ys.dtype.kind in "iuf"
            pts = np.stack([xs, ys], axis=1).astype(np.float64, copy=False) if ok else None
            ok = ok and bool(np.isfinite(pts).all())
        except (ValueError, TypeError, OverflowError):
            ok = False
        if not ok:
            # find and name the bad polygon
            for i, _, _ in self.raw:
                shape_to_polygons(self.items[i][1]["shape"], where=self.items[i][3])
            raise AnnotationError(f"{self.items[self.raw[0][0]][3]}: polygon coordinates are not all numbers")
        ends = np.cumsum(lengths)
        for (i, _, _), end, n in zip(self.raw, ends.tolist(), lengths, strict=True):
            img, kw, _, where, check = self.items[i]
            self.items[i] = (img, kw, (pts[end - n:end],), where, check)
        self.raw = []

    def build(self, report: Report, *, group_key: str | None = GROUP_ATTR) -> None:
        """Sanitizes every polygon and appends the regions to their images, in reading order.

        Regions of one image whose attribute ``group_key`` holds the same value are the parts of one
        instance (see :data:`GROUP_ATTR`): they become one region, at the first part's place.
        """
        self._convert_raw()
        fixed = sanitize_many(
            [(p, img.width_px, img.height_px, where) for img, _, p, where, _ in self.items],
            report=report,
            check_validity=[c for *_, c in self.items],
            keep_degenerate=True,
        )
        groups: dict[tuple[int, str], tuple[Region, str]] = {}
        for (img, kw, _, where, _), polygons in zip(self.items, fixed, strict=True):
            try:
                region = Region(**kw)
            except AnnotationError as e:
                raise AnnotationError(f"{where}: {e}") from e
            # already checked above: float (N, 2) arrays, N >= 3, finite, with area
            region.polygons = polygons
            group = _group_value(region.attributes, group_key) if polygons else None
            if group is None:
                img.regions.append(region)
                continue
            first = groups.get((id(img), group))
            if first is None:
                groups[(id(img), group)] = (region, where)
                img.regions.append(region)
                continue
            _merge_part(first[0], region, where=where, first_where=first[1], group=group, group_key=group_key)


def _group_value(attributes: Any, group_key: str | None) -> str | None:
    if group_key is None or not isinstance(attributes, dict):
        return None
    v = attributes.get(group_key)
    if isinstance(v, int | float) and not isinstance(v, bool):
        v = str(v)
    return v if isinstance(v, str) and v else None


def _merge_part(first: Region, part: Region, *, where: str, first_where: str, group: str, group_key: str) -> None:
    """Adds ``part``'s polygons to ``first``: two VIA regions of one multi-part instance."""
    if part.label != first.label:
        raise AnnotationError(
            f"{where}: a part of instance {group!r} (region attribute {group_key}) labelled {part.label!r}, "
            f"but its first part ({first_where.rsplit(': ', 1)[-1]}) is labelled {first.label!r}"
        )
    shapes = first.extra.get("via_part_shapes") or [first.shape]
    first.extra["via_part_shapes"] = [*shapes, part.shape]
    first.polygons = (*first.polygons, *part.polygons)
    first.shape = None


def _size(raw: Any) -> int | None:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    return None


def _key_layout(d: dict, standard: tuple[str, ...]) -> list[str] | None:
    keys = tuple(d)
    return None if keys == standard else list(keys)


def read_region(
    r: Any, *, image: ImageRecord, region_id: str, where: str, options: ReadOptions, report: Report,
    pending: PendingRegions,
) -> None:
    """Reads one VIA region dict into ``pending``."""
    if not isinstance(r, dict):
        raise AnnotationError(f"{where}: a region must be an object, got {json_type(r)}")
    shape = r.get("shape_attributes")
    if shape is None:
        raise AnnotationError(f"{where}: region has no shape_attributes")
    attrs = r.get("region_attributes", {})
    if not isinstance(attrs, dict):
        raise AnnotationError(f"{where}: region_attributes must be an object, got {json_type(attrs)}")
    xs = shape.get("all_points_x") if isinstance(shape, dict) and shape.get("name") == "polygon" else None
    ys = shape.get("all_points_y") if xs is not None else None
    fast = type(xs) is list and type(ys) is list and len(xs) == len(ys) >= 3
    polygons = () if fast else shape_to_polygons(shape, where=where)
    label, defaulted = region_label(attrs, options=options, where=where, report=report)
    extra: dict[str, Any] = {}
    if defaulted:
        extra["label_defaulted"] = True
    layout = None if len(r) == 2 and next(iter(r)) == "shape_attributes" and "region_attributes" in r \
        else list(r)
    if layout is not None:
        extra["via_keys"] = layout
        fields = {k: v for k, v in r.items() if k not in REGION_KEYS}
        if fields:
            extra["via_fields"] = fields
    kwargs = {"label": label, "shape": shape, "attributes": attrs, "region_id": region_id, "extra": extra}
    if fast:
        pending.add_polygon(image, kwargs, xs, ys, where)
    else:
        pending.add(image, kwargs, polygons, where, shape.get("name") == "polygon")


def read_image_entry(
    key: str, v: Any, *, version: int, source: str, options: ReadOptions, report: Report,
    pending: PendingRegions,
) -> ImageRecord:
    """Reads one VIA 1.x / 2.x image entry (``version`` says which layout is standard)."""
    if not isinstance(v, dict):
        raise AnnotationError(f"{source}: image {key!r}: entry must be an object, got {json_type(v)}")
    name = v.get("filename")
    if not isinstance(name, str):
        raise AnnotationError(f"{source}: image {key!r}: 'filename' must be a string, got {name!r:.60}")
    here = f"{source}: image {name!r}"
    fattrs = v.get("file_attributes", {})
    if not isinstance(fattrs, dict):
        raise AnnotationError(f"{here}: file_attributes must be an object, got {json_type(fattrs)}")
    regions = v.get("regions", [])
    raw_size = v.get("size", -1)
    extra: dict[str, Any] = {}
    size = _size(raw_size)
    if size is None:
        extra["via_size"] = raw_size
    standard = VIA1_IMAGE_KEYS if version == 1 else VIA2_IMAGE_KEYS
    layout = _key_layout(v, standard)
    if layout is not None:
        extra["via_keys"] = layout
        fields = {k: x for k, x in v.items() if k not in standard}
        if fields:
            extra["via_fields"] = fields
    if version == 1:
        for k in ("fileref", "base64_img_data"):
            if v.get(k, "") != "":
                extra[f"via_{k}"] = v[k]
    image = ImageRecord(file_name=name, file_size=size, file_attributes=fattrs, image_id=key, extra=extra)
    if isinstance(regions, dict):
        if version != 1:
            extra["via_regions"] = "dict"
        items: Iterable[tuple[str, Any]] = regions.items()
    elif isinstance(regions, list):
        if version == 1:
            extra["via_regions"] = "list"
        items = ((str(i), r) for i, r in enumerate(regions))
    else:
        raise AnnotationError(f"{here}: 'regions' must be a list or an object, got {json_type(regions)}")
    for rid, r in items:
        read_region(r, image=image, region_id=rid, where=f"{here}: region {rid}", options=options,
                    report=report, pending=pending)
    return image


def read_entries(
    entries: Any, *, version: int, source: str, options: ReadOptions, report: Report, what: str,
) -> list[ImageRecord]:
    """Reads a ``{key: image entry}`` dict of VIA 1.x / 2.x images."""
    if not isinstance(entries, dict):
        raise AnnotationError(f"{source}: {what} must be an object keyed by image, got {json_type(entries)}")
    pending = PendingRegions()
    images = [
        read_image_entry(k, v, version=version, source=source, options=options, report=report, pending=pending)
        for k, v in entries.items()
    ]
    pending.build(report)
    return images


# ------------------------------------------------------------------------------------------ writing
def image_key(image: ImageRecord, ds: AnnotationSet) -> str:
    """The VIA key of an image: its id when it came from VIA JSON, else ``filename`` + ``size``."""
    if ds.source_format in VIA_KEYED_FORMATS and isinstance(image.image_id, str):
        return image.image_id
    return f"{image.file_name}{size_out(image)}"


def size_out(image: ImageRecord) -> Any:
    if "via_size" in image.extra:
        return image.extra["via_size"]
    return -1 if image.file_size is None else image.file_size


def shape_for_write(region: Region, *, where: str = "") -> list[dict[str, Any]]:
    """VIA ``shape_attributes`` for a region: its own shape when it is a VIA shape, else one per part
    (the parts' shapes as read from VIA when there are as many, else one polygon per part)."""
    shape = region.shape
    if isinstance(shape, dict) and shape.get("name") in VIA_SHAPE_NAMES:
        return [shape]
    parts = region.extra.get("via_part_shapes")
    if isinstance(parts, list) and len(parts) == len(region.polygons) and len(parts) > 1 \
            and all(isinstance(p, dict) and p.get("name") in VIA_SHAPE_NAMES for p in parts):
        return parts
    return [polygon_to_shape(p) for p in region.polygons]


_EMPTY = (None, -1, "", {}, [])


def _relayout(d: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    fields = extra.get("via_fields")
    if fields:
        d.update(fields)
    keys = extra.get("via_keys")
    if keys is not None:
        layout = {k: d[k] for k in keys if k in d}
        for k, v in d.items():
            if k not in layout and not any(v is e or (type(v) is type(e) and v == e) for e in _EMPTY):
                layout[k] = v
        d = layout
    return d


def regions_for_write(image: ImageRecord, *, options: WriteOptions, where: str) -> list[tuple[str, dict]]:
    """``(region id, VIA region dict)`` pairs for an image's regions, skipping (and logging) shapeless ones.

    Region ids are kept when they are unique numbers; otherwise every region is numbered from ``0``.
    """
    out: list[tuple[Any, dict]] = []
    skipped = 0
    taken = {v for r in image.regions if (v := _group_value(r.attributes, GROUP_ATTR)) is not None}
    for k, r in enumerate(image.regions):
        shapes = shape_for_write(r, where=f"{where}: region {r.region_id}")
        if not shapes:
            skipped += 1
            continue
        attrs = attributes_for_write(r, label_attr=options.label_attr)
        if len(shapes) > 1 and _group_value(attrs, GROUP_ATTR) is None:
            attrs = {**attrs, GROUP_ATTR: _new_group(r, k, taken)}
        for shape in shapes:
            rid = r.region_id if len(shapes) == 1 else None
            out.append((rid, _relayout({"shape_attributes": shape, "region_attributes": attrs}, r.extra)))
    if skipped:
        log.warning("%s: %d region(s) without a VIA shape (temporal segments or empty) not written", where, skipped)
    ids = [rid for rid, _ in out]
    if any(not (isinstance(rid, str) and rid.isdigit()) for rid in ids) or len(set(ids)) != len(ids):
        return [(str(i), d) for i, (_, d) in enumerate(out)]
    return out


def _new_group(region: Region, index: int, taken: set[str]) -> str:
    """A group value for a multi-part region that no other region of its image uses."""
    base = region.region_id if isinstance(region.region_id, str) and region.region_id else str(index + 1)
    value, n = base, 1
    while value in taken:
        n += 1
        value = f"{base}_{n}"
    taken.add(value)
    return value


def image_entry_for_write(
    image: ImageRecord, *, version: int, options: WriteOptions, where: str,
) -> dict[str, Any]:
    """The VIA 1.x / 2.x entry of one image."""
    regions = regions_for_write(image, options=options, where=where)
    container = image.extra.get("via_regions") or ("dict" if version == 1 else "list")
    reg: Any = dict(regions) if container == "dict" else [d for _, d in regions]
    if version == 1:
        d = {
            "fileref": image.extra.get("via_fileref", ""),
            "size": size_out(image),
            "filename": image.file_name,
            "base64_img_data": image.extra.get("via_base64_img_data", ""),
            "file_attributes": image.file_attributes,
            "regions": reg,
        }
    else:
        d = {"filename": image.file_name, "size": size_out(image), "regions": reg,
             "file_attributes": image.file_attributes}
    return _relayout(d, image.extra)


def entries_for_write(ds: AnnotationSet, *, version: int, options: WriteOptions) -> dict[str, Any]:
    """``{VIA key: image entry}`` for every image; two images with one key are an error."""
    out: dict[str, Any] = {}
    for image in ds.images:
        key = image_key(image, ds)
        if key in out:
            raise AnnotationError(f"image {image.file_name!r}: two images share the VIA key {key!r}")
        out[key] = image_entry_for_write(image, version=version, options=options, where=f"image {image.file_name!r}")
    return out
