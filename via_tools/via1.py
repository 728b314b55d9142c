"""VIA 1.x annotations (``via_region_data.json``): images keyed by file name + size, regions as a dict.

Example document::

    {"a.jpg1234": {"fileref": "", "size": 1234, "filename": "a.jpg", "base64_img_data": "",
                   "file_attributes": {}, "regions": {"0": {"shape_attributes": {"name": "polygon",
                   "all_points_x": [1, 9, 9], "all_points_y": [1, 1, 9]}, "region_attributes": {}}}}}
"""

from __future__ import annotations

from typing import Any

from via_tools.model import AnnotationSet
from via_tools.options import ReadOptions, WriteOptions
from via_tools.report import Report
from via_tools.via_common import entries_for_write, read_entries

NAME = "via1"


def read(doc: Any, *, source: str, options: ReadOptions = ReadOptions(), report: Report | None = None) -> AnnotationSet:
    """Reads a parsed VIA 1.x document into the canonical :class:`AnnotationSet`.

    Args:
        doc: the parsed JSON (a dict keyed by file name + size).
        source: the file name, for messages.
        options: label attribute and default label.
        report: receives counted fixes (clipped points, repaired polygons).

    Raises:
        AnnotationError: naming the file, image and region at fault.

    Example:
        >>> ds = read({"a.jpg5": {"filename": "a.jpg", "size": 5, "regions": {"0": {"shape_attributes":
        ...     {"name": "rect", "x": 1, "y": 1, "width": 3, "height": 2}}}}}, source="x.json")
        >>> ds.images[0].regions[0].polygons[0].shape
        (4, 2)
    """
    report = report if report is not None else Report(source=source)
    images = read_entries(doc, version=1, source=source, options=options, report=report, what="a VIA 1.x file")
    return AnnotationSet(images=images, source_format=NAME)


def write(ds: AnnotationSet, *, options: WriteOptions = WriteOptions()) -> dict[str, Any]:
    """Writes an :class:`AnnotationSet` as a VIA 1.x document (regions without a VIA shape are logged and left out).

    Example:
        >>> from via_tools.model import ImageRecord, Region
        >>> ds = AnnotationSet(images=[ImageRecord("a.jpg", file_size=5, regions=[
        ...     Region("shoe", polygons=([[0, 0], [4, 0], [4, 4]],))])])
        >>> write(ds)["a.jpg5"]["regions"]["0"]["region_attributes"]
        {'label': 'shoe'}
    """
    return entries_for_write(ds, version=1, options=options)
