"""VIA CSV exports: one row per region, ``filename,file_size,file_attributes,region_count,region_id,
region_shape_attributes,region_attributes`` (VIA 1.x writes the header as ``#filename,...``).

An image without regions is one row with ``region_count`` 0 and empty ``{}`` cells. The attribute and
shape cells hold JSON. Old VIA versions wrote a bare ``undefined`` for unset attributes, which is not
JSON: such a cell is read with ``undefined`` as ``null``, counted in the report, and its original text
is kept so that writing gives the same cell back.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from via_tools.errors import AnnotationError, json_type
from via_tools.jsontext import dump_json, parse_json
from via_tools.model import AnnotationSet, ImageRecord
from via_tools.options import ReadOptions, WriteOptions
from via_tools.report import Report
from via_tools.via_common import PendingRegions, read_region, regions_for_write, size_out

NAME = "csv"

COLUMNS = ("filename", "file_size", "file_attributes", "region_count", "region_id", "region_shape_attributes",
           "region_attributes")
HEADER = ",".join(COLUMNS)
HEADER_V1 = "#" + HEADER

# a JSON string, or a bare `undefined` outside strings
_UNDEFINED = re.compile(r'"(?:[^"\\]|\\.)*"|\bundefined\b')


def is_csv_text(text: Any) -> bool:
    """True when ``text`` starts with a VIA CSV header."""
    if not isinstance(text, str):
        return False
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip().replace(" ", "")
    return first in (HEADER, HEADER_V1)


def _repair_undefined(cell: str) -> str:
    return _UNDEFINED.sub(lambda m: "null" if m.group(0) == "undefined" else m.group(0), cell)


def _json_cell(cell: str, *, what: str, where: str, report: Report, raw: dict[str, str]) -> Any:
    try:
        return parse_json(cell, where=f"{where}: {what}", report=report)
    except AnnotationError as e:
        err = e
    fixed = _repair_undefined(cell)
    if fixed != cell:
        try:
            value = parse_json(fixed, where=f"{where}: {what}", report=report)
        except AnnotationError:
            pass
        else:
            report.warn("CSV cells with bare 'undefined' read as null", f"{where}: {what}")
            raw[what] = cell
            return value
    raise err


def read(doc: Any, *, source: str, options: ReadOptions = ReadOptions(), report: Report | None = None) -> AnnotationSet:
    """Reads the text of a VIA CSV export into the canonical :class:`AnnotationSet`.

    Rows of one image (same file name and size) become one :class:`ImageRecord`, in order of first row.

    Args:
        doc: the CSV text.
        source: the file name, for messages.
        options: label attribute and default label.
        report: receives counted fixes (``undefined`` cells, region counts that disagree, clipped points...).

    Raises:
        AnnotationError: naming the file, row, image and region at fault.

    Example:
        >>> text = HEADER + '\\na.jpg,5,"{}",1,0,"{""name"":""rect"",""x"":1,""y"":1,""width"":3,""height"":2}","{}"'
        >>> read(text, source="a.csv").count_instances()
        1
    """
    report = report if report is not None else Report(source=source)
    if not isinstance(doc, str):
        raise AnnotationError(f"{source}: a VIA CSV export must be text, got {json_type(doc)}")
    text = doc.lstrip("\ufeff")
    newline = "\r\n" if text.split("\n", 1)[0].endswith("\r") else "\n"
    if not is_csv_text(text):
        raise AnnotationError(f"{source}: line 1: not a VIA CSV header (expected {HEADER!r})")
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows)
    images: dict[tuple[str, str], ImageRecord] = {}
    declared: dict[tuple[str, str], int] = {}
    pending = PendingRegions()
    try:
        for row in rows:
            n = rows.line_num
            if not row:
                continue
            if len(row) != len(COLUMNS):
                raise AnnotationError(f"{source}: row {n}: {len(row)} columns, expected {len(COLUMNS)}")
            name, size_text, fattr_cell, count_text, rid, shape_cell, attr_cell = row
            here = f"{source}: row {n}: image {name!r}"
            key = (name, size_text)
            image = images.get(key)
            if image is None:
                raw: dict[str, str] = {}
                fattrs = _json_cell(fattr_cell, what="file_attributes", where=here, report=report, raw=raw)
                if not isinstance(fattrs, dict):
                    raise AnnotationError(f"{here}: file_attributes must be a JSON object, got {fattr_cell[:60]!r}")
                try:
                    size_val: Any = int(size_text)
                except ValueError:
                    size_val = size_text
                extra: dict[str, Any] = {}
                size = size_val if isinstance(size_val, int) and size_val >= 0 else None
                if size is None:
                    extra["via_size"] = size_val
                if raw:
                    extra["csv_raw_cells"] = raw
                image = ImageRecord(file_name=name, file_size=size, file_attributes=fattrs,
                                    image_id=f"{name}{size_text}", extra=extra)
                images[key] = image
            try:
                count = int(count_text)
            except ValueError as e:
                raise AnnotationError(f"{here}: region_count {count_text!r} is not a number") from e
            declared[key] = count
            if count == 0 and shape_cell.strip() in ("{}", "") and attr_cell.strip() in ("{}", ""):
                continue
            where = f"{here}: region {rid}"
            raw = {}
            shape = _json_cell(shape_cell, what="region_shape_attributes", where=where, report=report, raw=raw)
            attrs = _json_cell(attr_cell, what="region_attributes", where=where, report=report, raw=raw)
            before = len(pending.items)
            read_region({"shape_attributes": shape, "region_attributes": attrs}, image=image, region_id=rid,
                        where=where, options=options, report=report, pending=pending)
            if raw:
                pending.items[before][1]["extra"]["csv_raw_cells"] = raw
    except csv.Error as e:
        raise AnnotationError(f"{source}: row {rows.line_num}: bad CSV ({e})") from e
    pending.build(report)
    for key, image in images.items():
        if declared[key] != len(image.regions):
            report.warn("images whose region_count disagrees with their rows",
                        f"{source}: image {image.file_name!r}: region_count {declared[key]}, {len(image.regions)} rows")
    meta: dict[str, Any] = {"csv_header": ",".join(header), "csv_newline": newline,
                            "csv_final_newline": text.endswith(("\n", "\r"))}
    return AnnotationSet(images=list(images.values()), source_format=NAME, meta=meta)


def _cell(value: Any, raw: dict[str, str] | None, what: str, *, where: str) -> str:
    if raw and what in raw:
        try:
            if parse_json(_repair_undefined(raw[what]), where=where) == value:
                return '"' + raw[what].replace('"', '""') + '"'
        except AnnotationError:
            pass
    text = dump_json(value, where=f"{where}: {what}")
    return '"' + text.replace('"', '""') + '"'


def _plain(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write(ds: AnnotationSet, *, options: WriteOptions = WriteOptions()) -> str:
    """Writes an :class:`AnnotationSet` as VIA CSV text (the way VIA 2.x exports it).

    Example:
        >>> from via_tools.model import ImageRecord, Region
        >>> ds = AnnotationSet(images=[ImageRecord("a.jpg", file_size=5, regions=[
        ...     Region("shoe", polygons=([[0, 0], [4, 0], [4, 4]],))])])
        >>> write(ds).splitlines()[1]
        'a.jpg,5,"{}",1,0,"{""name"":""polygon"",""all_points_x"":[0,4,4],""all_points_y"":[0,0,4]}","{""label"":""shoe""}"'
    """
    meta = ds.meta if ds.source_format == NAME else {}
    lines = [meta.get("csv_header", HEADER)]
    for image in ds.images:
        where = f"image {image.file_name!r}"
        raw_img = image.extra.get("csv_raw_cells")
        prefix = ",".join([_plain(image.file_name), str(size_out(image)),
                           _cell(image.file_attributes, raw_img, "file_attributes", where=where)])
        regions = regions_for_write(image, options=options, where=where)
        if not regions:
            lines.append(prefix + ',0,0,"{}","{}"')
            continue
        by_id = {r.region_id: r for r in image.regions}
        for i, (rid, d) in enumerate(regions):
            src = by_id.get(rid)
            raw = src.extra.get("csv_raw_cells") if src is not None else None
            here = f"{where}: region {rid if rid is not None else i}"
            lines.append(",".join([prefix, str(len(regions)), _plain(rid if rid is not None else str(i)),
                                   _cell(d.get("shape_attributes", {}), raw, "region_shape_attributes", where=here),
                                   _cell(d.get("region_attributes", {}), raw, "region_attributes", where=here)]))
    newline = meta.get("csv_newline", "\n")
    return newline.join(lines) + (newline if meta.get("csv_final_newline") else "")
