"""VIA 3.x projects: ``project``, ``config``, ``attribute``, ``file``, ``view`` and ``metadata``.

Each view (``view[vid].fid_list``) becomes one :class:`ImageRecord` (``image_id`` = the view id); each
``metadata`` entry whose ``vid`` is that view becomes one :class:`Region` (``region_id`` = the metadata
id). A spatial region's ``xy`` is ``[shape_id, coordinates...]``:

====  ==================  ===============================
 id    shape               coordinates
====  ==================  ===============================
 1     point               x, y
 2     rectangle           x, y, width, height
 3     circle              cx, cy, r
 4     ellipse             cx, cy, rx, ry
 5     line                x0, y0, x1, y1
 6     polyline            x0, y0, x1, y1, ...
 7     polygon             x0, y0, x1, y1, ...
 8     extreme rectangle   four extreme points
 9     extreme circle      three points on the circle
====  ==================  ===============================

Regions with an empty or missing ``xy`` (temporal segments ``z = [t0, t1]``, file-level metadata) are kept
as regions without polygons: they round-trip (written with ``xy = []``, VIA 3's own form) but are not
trained on. A view with an empty ``fid_list`` is an image without a file name and is written back without
files. ``Region.attributes`` is the entry's ``av`` (attribute id → value) verbatim; the label is the value of
the attribute named ``options.label_attr`` (option ids of radio, select and checkbox attributes are turned
into their text).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from typing import Any

from via_tools.errors import AnnotationError, json_type
from via_tools.model import AnnotationSet, ImageRecord, Region
from via_tools.options import ReadOptions, WriteOptions
from via_tools.report import Report
from via_tools.shapes import polygon_to_shape, shape_to_polygons
from via_tools.via_common import GROUP_ATTR, PendingRegions

log = logging.getLogger(__name__)

NAME = "via3"

POINT, RECTANGLE, CIRCLE, ELLIPSE, LINE, POLYLINE, POLYGON, EXTREME_RECTANGLE, EXTREME_CIRCLE = range(1, 10)
#: VIA 3 attribute types.
TEXT, CHECKBOX, RADIO, SELECT, IMAGE = range(1, 6)
#: VIA 3 file types and locations.
FILE_IMAGE, LOC_LOCAL, LOC_URIHTTP = 2, 1, 2
DOC_KEYS = ("project", "config", "attribute", "file", "metadata", "view")


def is_via3(doc: Any) -> bool:
    return isinstance(doc, dict) and all(k in doc for k in ("project", "file", "view", "metadata"))


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _coords(xy: list, n: int | None, *, where: str) -> list[float]:
    vals = xy[1:]
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int | float) or not _finite(v):
            raise AnnotationError(f"{where}: xy holds {v!r:.40}, not a finite number")
    if n is not None and len(vals) != n:
        raise AnnotationError(f"{where}: shape {xy[0]} needs {n} coordinates in xy, got {len(vals)}")
    return vals


def _points(vals: list[float], *, minimum: int, where: str, what: str) -> tuple[list, list]:
    if len(vals) % 2 or len(vals) < 2 * minimum:
        raise AnnotationError(f"{where}: {what} needs pairs of x, y for at least {minimum} points, got {len(vals)} values")
    return list(vals[0::2]), list(vals[1::2])


def xy_to_shape(xy: Any, *, where: str) -> dict[str, Any]:
    """A VIA 2 style shape dict for a VIA 3 ``xy`` list (extreme shapes become their rect or circle).

    Example:
        >>> xy_to_shape([2, 10, 20, 30, 40], where="r")
        {'name': 'rect', 'x': 10, 'y': 20, 'width': 30, 'height': 40}
    """
    if not isinstance(xy, list) or not xy:
        raise AnnotationError(f"{where}: xy must be a non-empty list, got {xy!r:.60}")
    sid = xy[0]
    if isinstance(sid, bool) or not isinstance(sid, int):
        raise AnnotationError(f"{where}: xy must start with a shape id (1-9), got {sid!r:.40}")
    if sid == POINT:
        x, y = _coords(xy, 2, where=where)
        return {"name": "point", "cx": x, "cy": y}
    if sid == RECTANGLE:
        x, y, w, h = _coords(xy, 4, where=where)
        return {"name": "rect", "x": x, "y": y, "width": w, "height": h}
    if sid == CIRCLE:
        cx, cy, r = _coords(xy, 3, where=where)
        return {"name": "circle", "cx": cx, "cy": cy, "r": r}
    if sid == ELLIPSE:
        cx, cy, rx, ry = _coords(xy, 4, where=where)
        return {"name": "ellipse", "cx": cx, "cy": cy, "rx": rx, "ry": ry}
    if sid in (LINE, POLYLINE):
        xs, ys = _points(_coords(xy, 4 if sid == LINE else None, where=where), minimum=2, where=where,
                         what="polyline")
        return {"name": "polyline", "all_points_x": xs, "all_points_y": ys}
    if sid == POLYGON:
        xs, ys = _points(_coords(xy, None, where=where), minimum=3, where=where, what="polygon")
        return {"name": "polygon", "all_points_x": xs, "all_points_y": ys}
    if sid == EXTREME_RECTANGLE:
        xs, ys = _points(_coords(xy, 8, where=where), minimum=4, where=where, what="extreme rectangle")
        return {"name": "rect", "x": min(xs), "y": min(ys), "width": max(xs) - min(xs), "height": max(ys) - min(ys)}
    if sid == EXTREME_CIRCLE:
        (x1, x2, x3), (y1, y2, y3) = _points(_coords(xy, 6, where=where), minimum=3, where=where,
                                             what="extreme circle")
        d = 2 * (x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2))
        if d == 0:
            raise AnnotationError(f"{where}: the three points of an extreme circle are on one line")
        s1, s2, s3 = x1 * x1 + y1 * y1, x2 * x2 + y2 * y2, x3 * x3 + y3 * y3
        cx = (s1 * (y2 - y3) + s2 * (y3 - y1) + s3 * (y1 - y2)) / d
        cy = (s1 * (x3 - x2) + s2 * (x1 - x3) + s3 * (x2 - x1)) / d
        return {"name": "circle", "cx": cx, "cy": cy, "r": math.hypot(x1 - cx, y1 - cy)}
    raise AnnotationError(f"{where}: unknown VIA 3 shape id {sid} (known: 1-9)")


def shape_to_xy(shape: dict[str, Any]) -> list:
    """The VIA 3 ``xy`` list for a VIA 2 style shape dict (an ellipse's rotation is not kept)."""
    name = shape["name"]
    if name == "point":
        return [POINT, shape["cx"], shape["cy"]]
    if name == "rect":
        return [RECTANGLE, shape["x"], shape["y"], shape["width"], shape["height"]]
    if name == "circle":
        return [CIRCLE, shape["cx"], shape["cy"], shape["r"]]
    if name == "ellipse":
        if shape.get("theta"):
            log.warning("VIA 3 ellipses have no rotation: theta=%s is not written", shape["theta"])
        return [ELLIPSE, shape["cx"], shape["cy"], shape["rx"], shape["ry"]]
    sid = POLYGON if name == "polygon" else POLYLINE
    return [sid, *(v for xy in zip(shape["all_points_x"], shape["all_points_y"], strict=True) for v in xy)]


def _attribute_defs(doc_attrs: Any) -> dict[str, dict]:
    if not isinstance(doc_attrs, dict):
        return {}
    return {str(k): v for k, v in doc_attrs.items() if isinstance(v, dict)}


def _av_text(value: Any, adef: dict) -> str | None:
    options = adef.get("options") if isinstance(adef.get("options"), dict) else {}
    atype = adef.get("type")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None
    value = str(value)
    if atype in (RADIO, SELECT, IMAGE, CHECKBOX):
        first = value.split(",")[0].strip() if atype == CHECKBOX else value
        text = options.get(first, first)
        return str(text).strip() or None if isinstance(text, str | int | float) else None
    return value.strip() or None


def _label(av: dict, label_ids: list[str], defs: dict[str, dict], options: ReadOptions) -> tuple[str, bool]:
    for aid in label_ids:
        if aid in av:
            text = _av_text(av[aid], defs[aid])
            if text:
                return text, False
    return options.default_label, True


def read(doc: Any, *, source: str, options: ReadOptions = ReadOptions(), report: Report | None = None) -> AnnotationSet:
    """Reads a parsed VIA 3.x project into the canonical :class:`AnnotationSet`.

    Args:
        doc: the parsed JSON.
        source: the file name, for messages.
        options: label attribute (an attribute's ``aname``) and default label.
        report: receives counted fixes (clipped points, repaired polygons).

    Raises:
        AnnotationError: naming the file, view, image and metadata entry at fault.

    Example:
        >>> doc = {"project": {"vid_list": ["1"]}, "config": {}, "attribute": {"1": {"aname": "label", "type": 1}},
        ...        "file": {"1": {"fid": "1", "fname": "a.jpg", "type": 2, "loc": 1, "src": ""}},
        ...        "view": {"1": {"fid_list": ["1"]}},
        ...        "metadata": {"1_a": {"vid": "1", "flg": 0, "z": [], "xy": [2, 1, 1, 5, 5], "av": {"1": "shoe"}}}}
        >>> r = read(doc, source="p.json").images[0].regions[0]
        >>> r.label, r.shape["name"]
        ('shoe', 'rect')
    """
    report = report if report is not None else Report(source=source)
    if not is_via3(doc):
        raise AnnotationError(f"{source}: not a VIA 3.x project (needs project, file, view and metadata)")
    files, views, metadata = doc["file"], doc["view"], doc["metadata"]
    for what, v in (("file", files), ("view", views), ("metadata", metadata)):
        if not isinstance(v, dict):
            raise AnnotationError(f"{source}: '{what}' must be an object, got {json_type(v)}")
    defs = _attribute_defs(doc.get("attribute"))
    label_ids = [aid for aid, a in defs.items() if a.get("aname") == options.label_attr]

    images: dict[str, ImageRecord] = {}
    viewed: set[str] = set()
    for vid, view in views.items():
        here = f"{source}: view {vid!r}"
        if not isinstance(view, dict) or not isinstance(view.get("fid_list"), list):
            raise AnnotationError(f"{here}: a view must be an object with a fid_list")
        vfiles: dict[str, Any] = {}
        for fid in view["fid_list"]:
            f = files.get(str(fid)) if isinstance(fid, str | int) and not isinstance(fid, bool) else None
            if not isinstance(f, dict):
                raise AnnotationError(f"{here}: file {fid!r:.40} is not in 'file'")
            if not isinstance(f.get("fname"), str):
                raise AnnotationError(f"{here}: file {fid!r}: 'fname' must be a string, got {f.get('fname')!r:.40}")
            vfiles[str(fid)] = f
            viewed.add(str(fid))
        name = next(iter(vfiles.values()))["fname"] if vfiles else ""
        images[vid] = ImageRecord(file_name=name, image_id=vid, extra={"via3_view": view, "via3_files": vfiles})

    pending = PendingRegions()
    for mid, m in metadata.items():
        where = f"{source}: metadata {mid!r}"
        if not isinstance(m, dict):
            raise AnnotationError(f"{where}: must be an object, got {json_type(m)}")
        vid = m.get("vid")
        image = images.get(vid) if isinstance(vid, str) else None
        if image is None:
            raise AnnotationError(f"{where}: its view {vid!r:.40} is not in 'view'")
        where = f"{source}: image {image.file_name!r}: region {mid!r}"
        xy, z, av = m.get("xy", []), m.get("z", []), m.get("av", {})
        if not isinstance(xy, list) or not isinstance(z, list) or not isinstance(av, dict):
            raise AnnotationError(f"{where}: xy and z must be lists and av an object")
        label, defaulted = _label(av, label_ids, defs, options)
        extra: dict[str, Any] = {"via3_metadata": m}
        if defaulted:
            extra["label_defaulted"] = True
        shape = xy_to_shape(xy, where=where) if xy else None
        polygons = shape_to_polygons(shape, where=where) if shape is not None else ()
        pending.add(image, {"label": label, "shape": shape, "attributes": av, "region_id": mid, "extra": extra},
                    polygons, where, shape is not None and shape["name"] == "polygon")
    group_ids = [aid for aid, a in defs.items() if a.get("aname") == GROUP_ATTR]
    pending.build(report, group_key=group_ids[0] if group_ids else None)

    meta: dict[str, Any] = {"via3_keys": list(doc)}
    meta.update({f"via3_{k}": v for k, v in doc.items() if k not in ("file", "view", "metadata")})
    unviewed = {k: v for k, v in files.items() if k not in viewed}
    if unviewed:
        meta["via3_unviewed_files"] = unviewed
    return AnnotationSet(images=list(images.values()), source_format=NAME, meta=meta)


# ------------------------------------------------------------------------------------------ writing
def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return ",".join(str(k) for k, on in v.items() if on is True)
    return json.dumps(v, ensure_ascii=False)


class _Attributes:
    """Attribute definitions for a set from another format: one text attribute per region attribute name."""

    def __init__(self, label_attr: str) -> None:
        self.label_attr = label_attr
        self.defs: dict[str, dict] = {}
        self.ids: dict[str, str] = {}
        self.id_of(label_attr)

    def id_of(self, name: str) -> str:
        if name not in self.ids:
            aid = str(len(self.ids) + 1)
            self.ids[name] = aid
            self.defs[aid] = {"aname": name, "anchor_id": "FILE1_Z0_XY1", "type": TEXT, "desc": "",
                              "options": {}, "default_option_id": ""}
        return self.ids[name]

    def av(self, region: Region) -> dict[str, str]:
        av = {self.id_of(str(k)): _text(v) for k, v in region.attributes.items() if str(k) != self.label_attr}
        return {self.id_of(self.label_attr): region.label, **av}


def _text_attribute_id(defs: dict[str, dict], name: str) -> str:
    """The id of the attribute named ``name``, added to ``defs`` as a text attribute when there is none."""
    for aid, a in defs.items():
        if a.get("aname") == name:
            return aid
    aid = str(max((int(k) for k in defs if k.isdigit()), default=0) + 1)
    defs[aid] = {"aname": name, "anchor_id": "FILE1_Z0_XY1", "type": TEXT, "desc": "", "options": {},
                 "default_option_id": ""}
    return aid


def _av_for_write(region: Region, defs: dict[str, dict], label_attr: str) -> dict[str, Any]:
    av = region.attributes if isinstance(region.attributes, dict) else {}
    label_ids = [aid for aid, a in defs.items() if a.get("aname") == label_attr]
    got = next((t for aid in label_ids if aid in av and (t := _av_text(av[aid], defs[aid]))), None)
    if got == region.label or (got is None and region.extra.get("label_defaulted")):
        return av
    if not label_ids:
        aid = str(max((int(k) for k in defs if k.isdigit()), default=0) + 1)
        defs[aid] = {"aname": label_attr, "anchor_id": "FILE1_Z0_XY1", "type": TEXT, "desc": "", "options": {},
                     "default_option_id": ""}
        label_ids = [aid]
    aid = label_ids[0]
    adef = defs[aid]
    if adef.get("type") in (RADIO, SELECT, IMAGE, CHECKBOX):
        opts = adef.setdefault("options", {})
        oid = next((k for k, t in opts.items() if t == region.label), None)
        if oid is None:
            oid = str(max((int(k) for k in opts if str(k).isdigit()), default=-1) + 1)
            opts[oid] = region.label
        return {**av, aid: oid}
    return {**av, aid: region.label}


def xy_for_write(region: Region) -> list[list]:
    """The VIA 3 ``xy`` of each metadata entry written for a region (several for a multi-part instance)."""
    m = region.extra.get("via3_metadata")
    shape = region.shape
    if shape is None and not region.polygons:
        # no geometry (a temporal segment, file-level metadata, an entry read without 'xy'): VIA 3 writes xy = []
        return [[]]
    if isinstance(m, dict) and isinstance(m.get("xy"), list) and m["xy"]:
        try:
            if xy_to_shape(m["xy"], where="") == shape:
                return [m["xy"]]
        except AnnotationError:
            pass
    if isinstance(shape, dict):
        try:
            shape_to_polygons(shape, where="")
            return [shape_to_xy(shape)]
        except (AnnotationError, KeyError, ValueError):
            pass
    parts = region.extra.get("via_part_shapes")
    if shape is None and isinstance(parts, list) and len(parts) == len(region.polygons) > 1:
        try:
            return [shape_to_xy(p) for p in parts]
        except (KeyError, TypeError, ValueError):
            pass
    return [shape_to_xy(polygon_to_shape(p)) for p in region.polygons]


def write(ds: AnnotationSet, *, options: WriteOptions = WriteOptions()) -> dict[str, Any]:
    """Writes an :class:`AnnotationSet` as a VIA 3.x project.

    A set read from VIA 3 gives its document back; a set from another format gets one image view per
    image and one text attribute per region attribute name (the label attribute first).

    Example:
        >>> from via_tools.model import ImageRecord, Region
        >>> ds = AnnotationSet(images=[ImageRecord("a.jpg", regions=[
        ...     Region("shoe", polygons=([[0, 0], [4, 0], [4, 4]],))])])
        >>> doc = write(ds)
        >>> list(doc["metadata"].values())[0]["xy"], list(doc["metadata"].values())[0]["av"]
        ([7, 0, 0, 4, 0, 4, 4], {'1': 'shoe'})
    """
    own = ds.source_format == NAME
    meta = ds.meta if own else {}
    generated = None if own else _Attributes(options.label_attr)
    defs = copy.deepcopy(_attribute_defs(meta.get("via3_attribute"))) if own else None
    files: dict[str, Any] = {}
    views: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    unviewed = meta.get("via3_unviewed_files", {})
    unviewed = unviewed if isinstance(unviewed, dict) else {}
    # file ids a new file must not take: the files the views were read with and the files no view shows
    taken = {str(k) for k in unviewed}
    for image in ds.images if own else ():
        if isinstance(image.extra.get("via3_files"), dict):
            taken.update(str(k) for k in image.extra["via3_files"])
    for i, image in enumerate(ds.images):
        vid = image.image_id if own and isinstance(image.image_id, str) else str(i + 1)
        if vid in views:
            raise AnnotationError(f"image {image.file_name!r}: two images share the VIA 3 view id {vid!r}")
        vfiles = image.extra.get("via3_files") if own else None
        read_view = image.extra.get("via3_view") if own else None
        if isinstance(vfiles, dict) and vfiles:
            vfiles = dict(vfiles)
            first = next(iter(vfiles))
            if vfiles[first].get("fname") != image.file_name:
                vfiles[first] = {**vfiles[first], "fname": image.file_name}
            view = read_view if read_view is not None else {"fid_list": list(vfiles)}
        elif isinstance(vfiles, dict) and isinstance(read_view, dict) and not image.file_name:
            # a view read with an empty fid_list (an image without a file name) goes back as it was, without files
            view = read_view
        else:
            numbered = (int(k) for k in taken if k.isascii() and k.isdigit())
            fid = vid if vid not in taken else str(max(numbered, default=0) + 1)
            taken.add(fid)
            remote = image.file_name.startswith(("http://", "https://"))
            vfiles = {fid: {"fid": fid, "fname": image.file_name, "type": FILE_IMAGE,
                            "loc": LOC_URIHTTP if remote else LOC_LOCAL, "src": image.file_name if remote else ""}}
            view = {**read_view, "fid_list": [fid]} if isinstance(read_view, dict) else {"fid_list": [fid]}
        files.update(vfiles)
        views[vid] = view
        for j, region in enumerate(image.regions):
            m = region.extra.get("via3_metadata") if own else None
            base = dict(m) if isinstance(m, dict) else {"vid": vid, "flg": 0, "z": [], "xy": [], "av": {}}
            base["vid"] = vid
            base["av"] = _av_for_write(region, defs, options.label_attr) if own else generated.av(region)
            xys = xy_for_write(region)
            if len(xys) > 1:  # the parts of one instance, grouped as VIA 1 / 2 group them
                gid = _text_attribute_id(defs, GROUP_ATTR) if own else generated.id_of(GROUP_ATTR)
                base["av"] = {**base["av"], gid: base["av"].get(gid) or region.region_id or f"{vid}_{j}"}
            for k, xy in enumerate(xys):
                mid = region.region_id if own and len(xys) == 1 and isinstance(region.region_id, str) \
                    else f"{vid}_{j}" + (f"_{k}" if len(xys) > 1 else "")
                if mid in metadata:
                    mid = f"{vid}_{j}_{k}_{len(metadata)}"
                metadata[mid] = {**base, "xy": xy}
    files.update(unviewed)

    project = copy.deepcopy(meta.get("via3_project")) if isinstance(meta.get("via3_project"), dict) else {
        "pid": "__VIA_PROJECT_ID__", "rev": "__VIA_PROJECT_REV_ID__", "rev_timestamp": "__VIA_PROJECT_REV_TIMESTAMP__",
        "pname": "shoeseg", "creator": "shoeseg via_tools", "created": int(time.time() * 1000)}
    vid_list = project.get("vid_list")
    if not (isinstance(vid_list, list) and sorted(map(str, vid_list)) == sorted(views)):
        project["vid_list"] = list(views)
    attribute = defs if own else generated.defs
    config = meta.get("via3_config") if own and "via3_config" in meta else {
        "file": {"loc_prefix": {"1": "", "2": "", "3": "", "4": ""}},
        "ui": {"file_content_align": "center", "file_metadata_editor_visible": True,
               "spatial_metadata_editor_visible": True, "spatial_region_label_attribute_id": "1",
               "gtimeline_visible_row_count": "4"}}
    doc: dict[str, Any] = {"project": project, "config": config, "attribute": attribute, "file": files,
                           "metadata": metadata, "view": views}
    if own and meta.get("via3_attribute") is not None and not isinstance(meta["via3_attribute"], dict):
        doc["attribute"] = meta["via3_attribute"]
    for k, v in meta.items():
        if k.startswith("via3_") and k[5:] not in doc and k not in ("via3_keys", "via3_unviewed_files"):
            doc[k[5:]] = v
    keys = meta.get("via3_keys")
    if keys:
        doc = {k: doc[k] for k in keys if k in doc} | {k: v for k, v in doc.items() if k not in keys}
    return doc
