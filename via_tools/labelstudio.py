"""Label Studio tasks JSON (import files and JSON exports) to and from the canonical model.

A task is ``{"data": {"image": URL}, "annotations": [...], "predictions": [...]}`` (a bare
``{"image": URL}`` data object is accepted too). Each annotation or prediction holds a ``result`` list;
image regions are results of type ``polygonlabels`` (``value.points`` as ``[x%, y%]`` pairs,
``value.closed``) or ``rectanglelabels`` (``value.x / y / width / height`` in percent, ``rotation`` in
degrees around the top-left corner), each with ``original_width`` / ``original_height`` in pixels.

Reading takes, per task, the latest annotation that was not cancelled, or, when there is none, the
latest prediction (its regions keep their ``score``). Results of other types (choices, brushes,
keypoints...) are not instances: they are counted and kept in ``ImageRecord.extra["ls_other_results"]``
so that writing Label Studio again gives them back.

Label Studio has no multi-part polygon: a region with several parts is written as one result per part.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import quoteattr

import numpy as np

from via_tools.errors import AnnotationError, json_text, json_type
from via_tools.images import ImageReadError, image_size_wh
from via_tools.model import (
    DEFAULT_LABEL,
    AnnotationSet,
    ImageRecord,
    Region,
    as_points,
    as_polygon,
    check_points,
    is_finite_number,
)
from via_tools.options import ReadOptions, WriteOptions
from via_tools.report import Report
from via_tools.shapes import sanitize_many

log = logging.getLogger(__name__)

NAME = "ls"

#: Result types read as regions.
REGION_TYPES = frozenset({"polygonlabels", "polygon", "rectanglelabels", "rectangle"})

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


# ------------------------------------------------------------------------------------ helpers
def polygon_to_ls_points(poly: np.ndarray, width_px: int, height_px: int) -> list[list[float]]:
    """Pixel polygon ``(N, 2)`` to Label Studio ``points`` (percent of the image width and height).

    Example:
        >>> polygon_to_ls_points(np.array([[0, 0], [50, 0], [50, 25]]), 200, 100)
        [[0.0, 0.0], [25.0, 0.0], [25.0, 25.0]]
    """
    pts = np.asarray(poly, dtype=np.float64) * (100.0 / width_px, 100.0 / height_px)
    return pts.tolist()


def ls_points_to_polygon(points_pct: Any, width_px: int, height_px: int, *, where: str = "") -> np.ndarray:
    """Label Studio ``points`` (percent) to a pixel polygon ``(N, 2)``.

    Example:
        >>> ls_points_to_polygon([[0, 0], [25, 0], [25, 25]], 200, 100).tolist()
        [[0.0, 0.0], [50.0, 0.0], [50.0, 25.0]]
    """
    return _to_pixels(as_polygon(points_pct, where=where), width_px, height_px, where=where, what="polygon")


def _to_pixels(pct: np.ndarray, width_px: int, height_px: int, *, where: str, what: str) -> np.ndarray:
    """Percent points to pixels, checked again after scaling (huge percentages overflow there)."""
    with np.errstate(over="ignore", invalid="ignore"):
        pts = pct * (width_px / 100.0, height_px / 100.0)
    return check_points(pts, where=where, what=what)


def labeling_config(labels: list[str] | tuple[str, ...], *, from_name: str = "label", to_name: str = "image") -> str:
    """A Label Studio labeling config with one ``PolygonLabels`` control over an ``Image``.

    Args:
        labels: the class names, in order.
        from_name: the control tag's name (results' ``from_name``).
        to_name: the image tag's name (results' ``to_name``); the task field is ``$image``.

    Example:
        >>> print(labeling_config(["shoe"]))
        <View>
          <Image name="image" value="$image" zoom="true"/>
          <PolygonLabels name="label" toName="image" strokeWidth="2" pointSize="small" opacity="0.4">
            <Label value="shoe"/>
          </PolygonLabels>
        </View>
    """
    if not labels:
        raise AnnotationError("a labeling config needs at least one label")
    lines = [
        "<View>",
        f'  <Image name={quoteattr(to_name)} value="$image" zoom="true"/>',
        f"  <PolygonLabels name={quoteattr(from_name)} toName={quoteattr(to_name)} "
        'strokeWidth="2" pointSize="small" opacity="0.4">',
        *(f"    <Label value={quoteattr(lab)}/>" for lab in labels),
        "  </PolygonLabels>",
        "</View>",
    ]
    return "\n".join(lines)


def file_name_from_ls_url(url: str) -> str:
    """The image's file name from a task's image URL.

    ``/data/local-files/?d=shoes/a.jpg`` and ``http://host/img/a.jpg?x=1`` give ``a.jpg``;
    uploads (``/data/upload/3/1a2b3c4d-a.jpg``) lose the 8-hex-digit prefix Label Studio adds;
    a plain relative path is returned unchanged.

    Example:
        >>> file_name_from_ls_url("/data/upload/3/1a2b3c4d-left%20shoe.jpg")
        'left shoe.jpg'
    """
    parts = urlsplit(url)
    if parts.path.rstrip("/").endswith("/data/local-files"):
        d = parse_qs(parts.query).get("d")
        path = d[0] if d else ""
    elif parts.scheme or parts.netloc or url.startswith("/data/"):
        path = unquote(parts.path)
    else:
        return url
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if "/data/upload/" in parts.path or parts.path.startswith("/data/upload/"):
        m = _UPLOAD_PREFIX.match(name)
        if m:
            name = m.group(1)
    return name or url


def _result_id(region: Region, part: int) -> str:
    base = region.region_id or ""
    return base if part == 0 else f"{base}_{part + 1}"


def region_to_ls_results(
    region: Region, width_px: int, height_px: int, *, from_name: str = "label", to_name: str = "image"
) -> list[dict[str, Any]]:
    """Label Studio results for one region: one ``polygonlabels`` result per polygon part.

    A ``polyline`` region becomes an open polygon (``closed: false``); a ``point`` region has no
    Label Studio polygon form and gives ``[]``.

    Example:
        >>> r = Region("shoe", (as_polygon([(0, 0), (50, 0), (50, 25)]),), region_id="r1")
        >>> region_to_ls_results(r, 200, 100)[0]["value"]["points"]
        [[0.0, 0.0], [25.0, 0.0], [25.0, 25.0]]
    """
    base = {
        "from_name": from_name,
        "to_name": to_name,
        "type": "polygonlabels",
        "original_width": int(width_px),
        "original_height": int(height_px),
        "image_rotation": 0,
    }
    if region.is_instance:
        parts, closed = region.polygons, True
    elif region.shape_name == "polyline" and region.shape:
        xs, ys = region.shape.get("all_points_x") or [], region.shape.get("all_points_y") or []
        if len(xs) < 2 or len(xs) != len(ys):
            return []
        parts, closed = (np.stack([np.asarray(xs, float), np.asarray(ys, float)], axis=1),), False
    else:
        return []
    out = []
    for k, poly in enumerate(parts):
        res = dict(base)
        rid = _result_id(region, k)
        if rid:
            res["id"] = rid
        res["value"] = {
            "points": polygon_to_ls_points(poly, width_px, height_px),
            "closed": closed,
            "polygonlabels": [region.label],
        }
        if region.score is not None:
            res["score"] = region.score
        out.append(res)
    return out


def region_to_ls_result(
    region: Region, width_px: int, height_px: int, *, from_name: str = "label", to_name: str = "image"
) -> dict[str, Any]:
    """The Label Studio ``polygonlabels`` result of a one-part region.

    Raises:
        AnnotationError: the region has several parts (use :func:`region_to_ls_results`) or none.

    Example:
        >>> r = Region("shoe", (as_polygon([(0, 0), (50, 0), (50, 25)]),), region_id="r1", score=0.9)
        >>> res = region_to_ls_result(r, 200, 100)
        >>> res["type"], res["value"]["polygonlabels"], res["score"]
        ('polygonlabels', ['shoe'], 0.9)
    """
    results = region_to_ls_results(region, width_px, height_px, from_name=from_name, to_name=to_name)
    if len(results) != 1:
        raise AnnotationError(
            f"region {region.region_id}: a {region.shape_name} with {len(region.polygons)} polygon part(s) is "
            f"{len(results)} Label Studio results; use region_to_ls_results"
        )
    return results[0]


def _size(result: dict, *, where: str) -> tuple[int, int]:
    w, h = result.get("original_width"), result.get("original_height")
    if not (is_finite_number(w) and is_finite_number(h) and w > 0 and h > 0):
        raise AnnotationError(
            f"{where}: result needs original_width and original_height in pixels, got {json_text(w)} x {json_text(h)}"
        )
    return int(round(w)), int(round(h))


def ls_result_to_region(
    result: dict[str, Any], *, where: str = "", default_label: str = DEFAULT_LABEL, index: int | None = None,
) -> Region:
    """A region from one Label Studio result (``polygonlabels``, ``polygon``, ``rectanglelabels``, ``rectangle``).

    Points become pixels with the result's ``original_width`` / ``original_height``. An open polygon
    (``closed: false``) becomes a ``polyline`` region without area. A rectangle becomes a VIA ``rect``
    shape (a rotated one a 4-point polygon).

    Args:
        result: the result dict.
        where: names the file, task and result for error messages.
        default_label: the label of a result that has none (``polygon`` / ``rectangle`` types).
        index: the result's place in its ``result`` array, naming a result without an ``id``.

    Raises:
        AnnotationError: unsupported type, missing size, bad points.

    Example:
        >>> res = {"type": "polygonlabels", "original_width": 200, "original_height": 100, "id": "a",
        ...        "value": {"points": [[0, 0], [25, 0], [25, 25]], "polygonlabels": ["shoe"], "closed": True}}
        >>> ls_result_to_region(res).polygons[0].tolist()
        [[0.0, 0.0], [50.0, 0.0], [50.0, 25.0]]
    """
    if not isinstance(result, dict):
        raise AnnotationError(f"{where}: a result must be an object, got {json_type(result)}")
    raw_type = result.get("type")
    rtype = raw_type if isinstance(raw_type, str) else ""
    rid = result.get("id")
    if rid is not None:
        where = f"{where}: result {rid}"
    elif index is not None:
        where = f"{where}: result #{index}"
    if rtype not in REGION_TYPES:
        raise AnnotationError(f"{where}: result type {json_text(raw_type)} is not a polygon or rectangle")
    value = result.get("value")
    if not isinstance(value, dict):
        raise AnnotationError(f"{where}: result has no 'value' object")
    w, h = _size(result, where=where)
    labels = value.get(rtype) if rtype.endswith("labels") else None
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise AnnotationError(f"{where}: '{rtype}' must be an array of label names, got {json_text(labels)}")
    label = labels[0] if labels else default_label
    attributes: dict[str, Any] = {}
    if labels and len(labels) > 1:
        attributes["ls_labels"] = list(labels)
    score = result.get("score")
    if score is not None and not (is_finite_number(score) and 0 <= score <= 1):
        raise AnnotationError(f"{where}: score must be a number in [0, 1], got {json_text(score)}")
    extra = {k: result[k] for k in ("from_name", "to_name") if k in result}
    rid_s = None if rid is None else str(rid)
    if rtype.startswith("polygon"):
        pts = value.get("points")
        if value.get("closed", True) is False:
            arr = _to_pixels(as_points(pts, where=where, what="open polygon", minimum=2), w, h, where=where,
                             what="open polygon")
            shape = {"name": "polyline", "all_points_x": arr[:, 0].tolist(), "all_points_y": arr[:, 1].tolist()}
            return Region(label=label, shape=shape, attributes=attributes, score=score, region_id=rid_s, extra=extra)
        poly = ls_points_to_polygon(pts, w, h, where=where)
        return Region(label=label, polygons=(poly,), attributes=attributes, score=score, region_id=rid_s, extra=extra)
    nums = [value.get(k) for k in ("x", "y", "width", "height")]
    if not all(is_finite_number(v) for v in nums) or nums[2] <= 0 or nums[3] <= 0:
        raise AnnotationError(f"{where}: rectangle needs numeric x, y and positive width, height; got {json_text(nums)}")
    rotation = value.get("rotation") or 0
    if not is_finite_number(rotation):
        raise AnnotationError(f"{where}: rotation must be a number, got {json_text(rotation)}")
    sx, sy = w / 100.0, h / 100.0
    x, y, rw, rh = nums[0] * sx, nums[1] * sy, nums[2] * sx, nums[3] * sy
    with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow here and are refused below
        corners = np.array([[0, 0], [rw, 0], [rw, rh], [0, rh]], dtype=np.float64)
        if rotation:
            t = math.radians(rotation)
            c, s = math.cos(t), math.sin(t)
            corners = corners @ np.array([[c, s], [-s, c]])
        corners = check_points(corners + (x, y), where=where, what="rectangle")
    shape = None if rotation else {"name": "rect", "x": x, "y": y, "width": rw, "height": rh}
    return Region(label=label, polygons=(corners,), shape=shape, attributes=attributes, score=score,
                  region_id=rid_s, extra=extra)


# ----------------------------------------------------------------------------------------- read
def _latest(items: list[dict]) -> dict | None:
    """The most recently updated item (dates, then integer ids decide; the last listed on ties)."""
    if not items:
        return None

    def key(it: dict) -> tuple:
        stamp = it.get("updated_at") or it.get("created_at") or ""
        return (str(stamp), it.get("id") if isinstance(it.get("id"), int) else -1)

    return max(reversed(items), key=key)


def task_image_url(task: dict[str, Any], *, where: str) -> str:
    """The image URL of a task (``data.image``, else the only string in ``data`` that looks like an image)."""
    data = task.get("data") if isinstance(task.get("data"), dict) else task
    url = data.get("image")
    if isinstance(url, str) and url:
        return url
    candidates = [v for k, v in data.items() if isinstance(v, str) and k not in ("file_name",)
                  and re.search(r"\.(jpe?g|png|bmp|gif|tiff?|webp)(\?|$)", v, re.I)]
    if len(candidates) == 1:
        return candidates[0]
    raise AnnotationError(f"{where}: task has no image URL in data.image (data keys: {sorted(data)})")


def task_to_image(
    task: dict[str, Any], *, where: str, report: Report, default_label: str = DEFAULT_LABEL,
    use_predictions: bool = True,
) -> tuple[ImageRecord, list[tuple[np.ndarray, ...]]]:
    """One task to an :class:`ImageRecord` (regions not yet sanitized) — shared by files and the server client."""
    if not isinstance(task, dict):
        raise AnnotationError(f"{where}: a task must be an object, got {json_type(task)}")
    tid = task.get("id")
    if tid is not None:
        where = f"{where}: task {tid}"
    url = task_image_url(task, where=where)
    data = task.get("data") if isinstance(task.get("data"), dict) else task
    anns = task.get("annotations", task.get("completions")) or []
    preds = task.get("predictions") or []
    if not isinstance(anns, list) or not isinstance(preds, list):
        raise AnnotationError(f"{where}: 'annotations' and 'predictions' must be lists")
    live = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")]
    chosen, kind = _latest(live), "annotation"
    if len(live) > 1:
        report.warn("tasks with several annotations (latest kept)", where)
    if chosen is None and use_predictions:
        chosen, kind = _latest([p for p in preds if isinstance(p, dict)]), "prediction"
    file_name = data.get("file_name") if isinstance(data.get("file_name"), str) else file_name_from_ls_url(url)
    extra: dict[str, Any] = {"ls_image": url}
    if tid is not None:
        extra["ls_task_id"] = tid
    regions: list[Region] = []
    size: tuple[int, int] | None = None
    other: list[dict] = []
    if chosen is not None:
        extra[f"ls_{kind}_id"] = chosen.get("id")
        if kind == "prediction":
            extra["ls_model_version"] = chosen.get("model_version")
            if chosen.get("score") is not None:
                extra["ls_score"] = chosen.get("score")
        results = chosen.get("result")
        results = [] if results is None else results
        if not isinstance(results, list):
            raise AnnotationError(f"{where}: {kind} {chosen.get('id')}: 'result' must be a list")
        for j, res in enumerate(results):
            if isinstance(res, dict) and isinstance(res.get("type"), str) and res["type"] in REGION_TYPES:
                reg = ls_result_to_region(res, where=f"{where}: {kind} {json_text(chosen.get('id'))}",
                                          default_label=default_label, index=j)
                if kind == "prediction" and reg.score is None and is_finite_number(chosen.get("score")) \
                        and 0 <= chosen["score"] <= 1:
                    reg.score = float(chosen["score"])
                regions.append(reg)
                size = size or _size(res, where=where)
            else:
                other.append(res)
                rtype = res.get("type") if isinstance(res, dict) else "?"
                report.warn(f"results of type {rtype if isinstance(rtype, str) else json_text(rtype)} kept aside", where)
    if other:
        extra["ls_other_results"] = other
    w, h = size if size else (None, None)
    try:
        img = ImageRecord(file_name=file_name, width_px=w, height_px=h, regions=regions,
                          image_id=None if tid is None else str(tid), extra=extra)
    except AnnotationError as e:
        raise AnnotationError(f"{where}: {e}") from None
    return img, [r.polygons for r in regions]


def read(doc: Any, *, source: str, options: ReadOptions = ReadOptions(), report: Report | None = None) -> AnnotationSet:
    """Reads Label Studio tasks (an import file or a JSON export).

    Args:
        doc: the parsed JSON: a list of tasks (or one task object).
        source: the file name, for messages.
        options: ``default_label`` for unlabelled results; ``images_dir`` fills sizes of images without results.
        report: receives counts (several annotations per task, clipped points, results kept aside).

    Raises:
        AnnotationError: naming the file, task and result at fault.

    Example:
        >>> tasks = [{"id": 7, "data": {"image": "/data/upload/1/0a1b2c3d-a.jpg"}, "annotations": [{"id": 3, "result": [
        ...     {"id": "r", "type": "polygonlabels", "original_width": 100, "original_height": 100,
        ...      "value": {"points": [[0, 0], [10, 0], [10, 10]], "polygonlabels": ["shoe"], "closed": True}}]}]}]
        >>> ds = read(tasks, source="export.json")
        >>> ds.images[0].file_name, ds.images[0].image_id, ds.count_instances()
        ('a.jpg', '7', 1)
    """
    report = report if report is not None else Report(source=source)
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise AnnotationError(f"{source}: Label Studio tasks are a JSON list, got {json_type(doc)}")
    images: list[ImageRecord] = []
    pending = []
    for k, task in enumerate(doc):
        where = f"{source}: task #{k}"
        try:
            img, polys = task_to_image(task, where=where, report=report, default_label=options.default_label)
        except AnnotationError:
            raise
        if options.images_dir is not None:
            path = options.images_dir / img.file_name
            if not path.is_file():
                raise AnnotationError(f"{where}: image file {path} does not exist")
            if img.width_px is None:
                try:
                    img.width_px, img.height_px = image_size_wh(path)
                except ImageReadError as e:
                    raise AnnotationError(f"{where}: {e}") from e
        images.append(img)
        for j, r in enumerate(img.regions):
            pending.append((r, (polys[j], img.width_px, img.height_px, f"{where}: image {img.file_name!r}: result "
                                                                   f"{r.region_id if r.region_id is not None else '#' + str(j)}")))
    fixed = sanitize_many([p for _, p in pending], report=report)
    for (r, _), parts in zip(pending, fixed, strict=True):
        r.polygons = parts
    return AnnotationSet(images=images, source_format=NAME)


# ---------------------------------------------------------------------------------------- write
def image_to_results(img: ImageRecord, *, from_name: str = "label", to_name: str = "image", where: str = "") -> list[dict]:
    """Every Label Studio result of one image (regions, then results of other types kept from a read)."""
    results: list[dict] = []
    if img.regions:
        if img.width_px is None or img.height_px is None:
            raise AnnotationError(
                f"{where}image {img.file_name!r}: Label Studio points are percentages and the image size is "
                "unknown; read the source with the images folder (--images DIR)"
            )
        for k, r in enumerate(img.regions):
            part_results = region_to_ls_results(r, img.width_px, img.height_px, from_name=from_name, to_name=to_name)
            for j, res in enumerate(part_results):
                res.setdefault("id", f"r{k + 1}" if j == 0 else f"r{k + 1}_{j + 1}")
            results.extend(part_results)
    results.extend(img.extra.get("ls_other_results") or [])
    return results


def _mean_score(regions: list[Region]) -> float | None:
    scores = [r.score for r in regions if r.score is not None]
    return float(np.mean(scores)) if scores else None


def write(
    ds: AnnotationSet, *, options: WriteOptions = WriteOptions(), as_: str = "annotations",
    model_version: str | None = None,
) -> list[dict[str, Any]]:
    """Writes importable Label Studio tasks: one per image, ``data.image`` = the image's URL or file name.

    Args:
        ds: the annotation set.
        options: ``from_name`` / ``to_name`` of the results.
        as_: ``"annotations"`` (human labels) or ``"predictions"`` (pre-annotations; the task score is
            the mean region score when regions have scores).
        model_version: the predictions' ``model_version`` (default: the source format, e.g. ``"via2"``).

    Example:
        >>> from via_tools.model import as_polygon
        >>> img = ImageRecord("a.jpg", 200, 100, regions=[Region("shoe", (as_polygon([(0, 0), (50, 0), (50, 25)]),))])
        >>> task = write(AnnotationSet([img]))[0]
        >>> task["data"], task["annotations"][0]["result"][0]["value"]["points"][1]
        ({'image': 'a.jpg'}, [25.0, 0.0])
    """
    if as_ not in ("annotations", "predictions"):
        raise AnnotationError(f"as_ must be 'annotations' or 'predictions', got {as_!r}")
    tasks = []
    n_points = 0
    for img in ds.images:
        task: dict[str, Any] = {"data": {"image": img.extra.get("ls_image") or img.file_name}}
        n_points += sum(1 for r in img.regions if r.shape_name == "point")
        results = image_to_results(img, from_name=options.from_name, to_name=options.to_name)
        if results:
            if as_ == "annotations":
                task["annotations"] = [{"result": results}]
            else:
                pred: dict[str, Any] = {"result": results, "model_version": model_version or ds.source_format or "import"}
                score = _mean_score(img.regions)
                if score is not None:
                    pred["score"] = score
                task["predictions"] = [pred]
        tasks.append(task)
    if n_points:
        log.warning("Label Studio output leaves out %d point region(s) (no polygon form)", n_points)
    return tasks
