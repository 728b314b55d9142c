"""VIA 2.x projects (``_via_settings``, ``_via_img_metadata``, ``_via_attributes`` ...) and annotation exports.

A project keeps its images under ``_via_img_metadata``; an annotation export is that dict alone
(images keyed by file name + size, regions as a list). Settings, attribute definitions, the image id
list and any other top-level key are kept in :attr:`AnnotationSet.meta` so that writing gives the
same document back.
"""

from __future__ import annotations

import copy
from typing import Any

from via_tools.errors import AnnotationError, json_type
from via_tools.model import AnnotationSet
from via_tools.options import ReadOptions, WriteOptions
from via_tools.report import Report
from via_tools.via_common import entries_for_write, read_entries

NAME = "via2"

PROJECT_KEYS = ("_via_settings", "_via_img_metadata", "_via_attributes", "_via_data_format_version",
                "_via_image_id_list")
FORMAT_VERSION = "2.0.10"

DEFAULT_SETTINGS: dict[str, Any] = {
    "ui": {
        "annotation_editor_height": 25,
        "annotation_editor_fontsize": 0.8,
        "leftsidebar_width": 18,
        "image_grid": {"img_height": 80, "rshape_fill": "none", "rshape_fill_opacity": 0.3,
                       "rshape_stroke": "yellow", "rshape_stroke_width": 2, "show_region_shape": True,
                       "show_image_policy": "all"},
        "image": {"region_label": "__via_region_id__", "region_color": "__via_default_region_color__",
                  "region_label_font": "10px Sans", "on_image_annotation_editor_placement": "NEAR_REGION"},
    },
    "core": {"buffer_size": 18, "filepath": {}, "default_filepath": ""},
    "project": {"name": "shoeseg"},
}


def is_project(doc: Any) -> bool:
    return isinstance(doc, dict) and "_via_img_metadata" in doc


def read(doc: Any, *, source: str, options: ReadOptions = ReadOptions(), report: Report | None = None) -> AnnotationSet:
    """Reads a parsed VIA 2.x project or annotation export into the canonical :class:`AnnotationSet`.

    Args:
        doc: the parsed JSON.
        source: the file name, for messages.
        options: label attribute and default label.
        report: receives counted fixes (clipped points, repaired polygons).

    Raises:
        AnnotationError: naming the file, image and region at fault.

    Example:
        >>> doc = {"_via_settings": {}, "_via_attributes": {"region": {}, "file": {}},
        ...        "_via_img_metadata": {"a.jpg5": {"filename": "a.jpg", "size": 5, "regions": [
        ...            {"shape_attributes": {"name": "circle", "cx": 5, "cy": 5, "r": 2},
        ...             "region_attributes": {"label": "shoe"}}], "file_attributes": {}}}}
        >>> read(doc, source="p.json").images[0].regions[0].label
        'shoe'
    """
    report = report if report is not None else Report(source=source)
    if not isinstance(doc, dict):
        raise AnnotationError(f"{source}: a VIA 2.x file must be a JSON object, got {json_type(doc)}")
    if not is_project(doc):
        images = read_entries(doc, version=2, source=source, options=options, report=report,
                              what="a VIA 2.x annotation export")
        return AnnotationSet(images=images, source_format=NAME, meta={"via2_layout": "export"})
    images = read_entries(doc["_via_img_metadata"], version=2, source=source, options=options, report=report,
                          what="_via_img_metadata")
    meta: dict[str, Any] = {"via2_layout": "project", "via2_keys": list(doc),
                            "via2_top": {k: v for k, v in doc.items() if k != "_via_img_metadata"}}
    ids = doc.get("_via_image_id_list")
    if ids is not None and not isinstance(ids, list):
        raise AnnotationError(f"{source}: _via_image_id_list must be a list, got {json_type(ids)}")
    return AnnotationSet(images=images, source_format=NAME, meta=meta)


def _attributes(ds: AnnotationSet, options: WriteOptions, entries: dict[str, Any]) -> dict[str, Any]:
    region: dict[str, Any] = {}
    for entry in entries.values():
        regions = entry.get("regions") or []
        for r in regions.values() if isinstance(regions, dict) else regions:
            attrs = r.get("region_attributes")
            for k, v in (attrs if isinstance(attrs, dict) else {}).items():
                a = region.setdefault(k, {"type": "text", "description": "", "default_value": ""})
                if isinstance(v, dict):
                    a.clear()
                    a.update(type="checkbox", description="", options={}, default_options={})
                if a["type"] == "checkbox" and isinstance(v, dict):
                    a["options"].update({o: "" for o in v})
    label = region.get(options.label_attr)
    if label is not None and label["type"] == "text":
        region[options.label_attr] = {"type": "dropdown", "description": "",
                                      "options": {lab: "" for lab in ds.collect_labels()}, "default_options": {}}
    return {"region": region, "file": {}}


def write(ds: AnnotationSet, *, options: WriteOptions = WriteOptions()) -> dict[str, Any]:
    """Writes an :class:`AnnotationSet` as a VIA 2.x project (or as an annotation export when it was read from one).

    A set from another format gets VIA's default settings and attribute definitions made from its
    region attributes (the label attribute as a dropdown of the set's labels).

    Example:
        >>> from via_tools.model import ImageRecord, Region
        >>> ds = AnnotationSet(images=[ImageRecord("a.jpg", file_size=5, regions=[
        ...     Region("shoe", polygons=([[0, 0], [4, 0], [4, 4]],))])])
        >>> doc = write(ds)
        >>> doc["_via_image_id_list"], doc["_via_attributes"]["region"]["label"]["options"]
        (['a.jpg5'], {'shoe': ''})
    """
    entries = entries_for_write(ds, version=2, options=options)
    meta = ds.meta if ds.source_format == NAME else {}
    if meta.get("via2_layout") == "export":
        return entries
    top = meta.get("via2_top", {})
    ids = top.get("_via_image_id_list")
    if not (isinstance(ids, list) and sorted(map(str, ids)) == sorted(entries)):
        ids = list(entries)
    doc: dict[str, Any] = {
        "_via_settings": top.get("_via_settings", copy.deepcopy(DEFAULT_SETTINGS)),
        "_via_img_metadata": entries,
        "_via_attributes": top.get("_via_attributes") or _attributes(ds, options, entries),
        "_via_data_format_version": top.get("_via_data_format_version", FORMAT_VERSION),
        "_via_image_id_list": ids,
    }
    keys = meta.get("via2_keys")
    if keys:
        doc = {k: doc[k] if k in doc else top[k] for k in keys if k in doc or k in top}
        doc.setdefault("_via_img_metadata", entries)
    return doc
