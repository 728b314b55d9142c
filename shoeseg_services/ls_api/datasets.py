"""Datasets into and out of Label Studio: a dataset imported as tasks, a project's tasks exported as a dataset.

* :func:`import_dataset`: one task per image, its regions as an annotation or a prediction;
* :func:`export_dataset` (every task) and :func:`accepted_annotations` (only the accepted ones, for training).

Images reach Label Studio in one of two ways:

* the images folder lies under the server's ``LOCAL_FILES_DOCUMENT_ROOT`` (pass it as ``files_root``):
  a local-files storage is attached to the project (never synced; it grants access) and tasks point at
  ``/data/local-files/?d=<path under the root>``;
* otherwise each image is uploaded once (``POST /api/projects/{id}/import``, multipart) and tasks point
  at ``/data/upload/<project>/<hash>-<name>``.

Importing is idempotent: tasks are matched to images by ``data.file_name`` (written by this module), else
by the file name in the image URL; uploads by name and size; an annotation or prediction is created only
when the task has none with the same regions (within 0.05 px).
"""

from __future__ import annotations

import logging
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from shoeseg_services.ls_api.connection import LabelStudioError, base_url, calls, request_json
from shoeseg_services.ls_api.projects import list_tasks
from shoeseg_services.ls_config import LabelConfigError, polygon_control
from via_tools.errors import AnnotationError
from via_tools.labelstudio import (
    REGION_TYPES,
    file_name_from_ls_url,
    image_to_results,
    labeling_config,
    ls_result_to_region,
    task_to_image,
)
from via_tools.model import AnnotationSet, ImageRecord, Region
from via_tools.report import Report
from via_tools.shapes import sanitize_many

log = logging.getLogger(__name__)

#: Tasks sent per import request, and images per upload request.
TASK_BATCH = 200
UPLOAD_BATCH = 20
#: Two regions are the same when every point is this close (pixels).
SAME_TOL_PX = 0.05


@dataclass
class ImportResult:
    """What :func:`import_dataset` did.

    Attributes:
        project_id: the project that holds the tasks.
        task_ids: image file name → task id, for every image of the dataset.
        tasks_created / tasks_existing: tasks made now / found from an earlier import.
        created / skipped: annotations (or predictions) made now / already there with the same regions.
        uploaded: image files uploaded now.
        storage_id: the local-files storage used, ``None`` for uploads.
    """

    project_id: int
    as_: str
    task_ids: dict[str, int] = field(default_factory=dict)
    tasks_created: int = 0
    tasks_existing: int = 0
    created: int = 0
    skipped: int = 0
    uploaded: int = 0
    storage_id: int | None = None

    def summary(self) -> str:
        kind = self.as_
        return (
            f"project {self.project_id}: {self.tasks_created} task(s) created, {self.tasks_existing} already there; "
            f"{self.created} {kind} created, {self.skipped} already there; {self.uploaded} image(s) uploaded"
        )


def _polygon_control(project: Any) -> tuple[str, str, list[str]] | None:
    """``(from_name, to_name, labels)`` of the project's first PolygonLabels control, if any."""
    try:
        return polygon_control(getattr(project, "label_config", None) or "", where=f"project {project.id}")
    except LabelConfigError:
        return None


def _find_or_create_project(
    client: Any, *, project_id: int | None, title: str | None, labels: list[str], label_config: str | None
) -> Any:
    if project_id is not None:
        with calls(client, f"read project {project_id}"):
            return client.projects.get(id=project_id)
    assert title is not None
    with calls(client, f"list projects titled {title!r}"):
        same = [p for p in client.projects.list(title=title) if p.title == title]
    if same:
        if len(same) > 1:
            log.warning("%d projects are titled %r; using the oldest (id %d)", len(same), title, min(p.id for p in same))
        return client.projects.get(id=min(p.id for p in same))
    config = label_config or labeling_config(labels or ["shoe"])
    with calls(client, f"create project {title!r}"):
        created = client.projects.create(title=title, label_config=config)
        log.info("created Label Studio project %d %r", created.id, title)
        return client.projects.get(id=created.id)


def _task_key(task: dict[str, Any]) -> tuple[str | None, str | None]:
    data = task.get("data") or {}
    fn = data.get("file_name") if isinstance(data.get("file_name"), str) else None
    url = data.get("image")
    return fn, file_name_from_ls_url(url) if isinstance(url, str) else None


def _regions_of(results: list[dict]) -> list[Region]:
    out = []
    for res in results or []:
        if isinstance(res, dict) and res.get("type") in REGION_TYPES:
            try:
                out.append(ls_result_to_region(res))
            except AnnotationError:
                continue
    return out


def _same_regions(a: list[Region], b: list[Region], *, tol_px: float = SAME_TOL_PX) -> bool:
    def key(r: Region) -> list[tuple[str, np.ndarray]]:
        return [(r.label, p) for p in r.polygons]

    pa = sorted((x for r in a for x in key(r)), key=lambda t: (t[0], len(t[1]), *t[1][0].round(1)))
    pb = sorted((x for r in b for x in key(r)), key=lambda t: (t[0], len(t[1]), *t[1][0].round(1)))
    return len(pa) == len(pb) and all(
        la == lb and p.shape == q.shape and np.allclose(p, q, atol=tol_px, rtol=0) for (la, p), (lb, q) in zip(pa, pb, strict=True)
    )


# ------------------------------------------------------------------------------------- images
def _local_url(path: Path, files_root: Path) -> str:
    rel = path.resolve().relative_to(files_root.resolve()).as_posix()
    return "/data/local-files/?d=" + quote(rel)


def _ensure_local_storage(client: Any, project_id: int, images_dir: Path, names: list[str]) -> int:
    path = str(images_dir.resolve())
    with calls(client, f"list the local storages of project {project_id}"):
        for s in client.import_storage.local.list(project=project_id):
            if s.path == path:
                return s.id
    # the storage only grants access to the folder: it is never synced (tasks are imported here), and its
    # filter lists the dataset's files so that a sync from the UI would not add other files
    regex = "^(" + "|".join(re.escape(n) for n in names) + ")$" if names else None
    with calls(client, f"attach local storage {path} to project {project_id}"):
        s = client.import_storage.local.create(
            project=project_id, path=path, use_blob_urls=True, regex_filter=regex, recursive_scan=True,
            title=f"images: {images_dir.name}",
        )
    log.info("attached local-files storage %d (%s) to project %d", s.id, path, project_id)
    return s.id


def _upload_images(client: Any, project_id: int, files: list[tuple[str, Path]]) -> tuple[dict[str, str], int]:
    """Uploads the files not yet uploaded to the project; returns ``{file_name: url}`` and the upload count."""
    known = request_json(client, f"api/projects/{project_id}/file-uploads", method="GET", what="list uploaded files") or []
    by_name_size: dict[tuple[str, int], str] = {}
    for fu in known:
        name = file_name_from_ls_url("/data/" + fu["file"])
        by_name_size.setdefault((name, int(fu.get("size") or -1)), "/data/" + fu["file"])
    urls: dict[str, str] = {}
    todo: list[tuple[str, Path]] = []
    for file_name, path in files:
        hit = by_name_size.get((path.name, path.stat().st_size))
        if hit:
            urls[file_name] = hit
        else:
            todo.append((file_name, path))
    uploaded = 0
    from tqdm import tqdm

    for start in tqdm(range(0, len(todo), UPLOAD_BATCH), desc="uploading images", unit="batch", disable=len(todo) < 50):
        batch = todo[start:start + UPLOAD_BATCH]
        payload = {
            f"file{k}": (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            for k, (_, path) in enumerate(batch)
        }
        r = request_json(client, f"api/projects/{project_id}/import", method="POST", what=f"upload {len(batch)} image(s)",
                  params={"commit_to_project": "false"}, files=payload)
        ids = r.get("file_upload_ids") or []
        got = request_json(client, f"api/projects/{project_id}/file-uploads", method="GET", what="read uploaded files",
                    params={"ids": "[" + ",".join(str(i) for i in ids) + "]"}) or []
        by_name: dict[str, list[str]] = {}
        for fu in got:
            by_name.setdefault(file_name_from_ls_url("/data/" + fu["file"]), []).append("/data/" + fu["file"])
        for file_name, path in batch:
            cands = by_name.get(path.name)
            if not cands:
                raise LabelStudioError(f"Label Studio at {base_url(client)} did not keep the upload of {path}")
            urls[file_name] = cands.pop(0)
            uploaded += 1
    return urls, uploaded


# --------------------------------------------------------------------------------------- import
def import_dataset(
    client: Any,
    ds: AnnotationSet,
    *,
    images_dir: str | Path,
    project_id: int | None = None,
    title: str | None = None,
    as_: str = "annotations",
    label_config: str | None = None,
    files_root: str | Path | None = None,
    model_version: str | None = None,
) -> ImportResult:
    """Imports a dataset into a Label Studio project: one task per image, its regions as an annotation or a prediction.

    Running it again creates nothing twice (see the module notes on matching).

    Args:
        client: a client made by :func:`~shoeseg_services.ls_api.connection.connect` (uploads use its connection).
        ds: the dataset (image sizes must be known: read it with ``ReadOptions(images_dir=...)``).
        images_dir: the folder holding the images (``images_dir / file_name``).
        project_id: an existing project; else the project titled ``title`` (created when missing).
        title: the project's title (default: ``"<images folder name> (imported)"``).
        as_: ``"annotations"`` (human labels) or ``"predictions"`` (pre-annotations).
        label_config: the labeling config of a new project (default: PolygonLabels over the dataset's labels).
        files_root: the server's ``LOCAL_FILES_DOCUMENT_ROOT``; images under it are served from disk.
        model_version: the predictions' model version (default: ``"<source format>-import"``).

    Raises:
        LabelStudioError: server unreachable, key refused, request refused (the message names the URL).
        AnnotationError: a missing image file, unknown image size, or a label missing from the project.

    Example:
        >>> ls = connect("http://127.0.0.1:8080", "...")  # doctest: +SKIP
        >>> import_dataset(ls, load("via_project.json"), images_dir="images", title="shoes").summary()  # doctest: +SKIP
        'project 3: 76 task(s) created, 0 already there; 76 annotations created, 0 already there; 76 image(s) uploaded'
    """
    if as_ not in ("annotations", "predictions"):
        raise AnnotationError(f"as_ must be 'annotations' or 'predictions', got {as_!r}")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise AnnotationError(f"images folder {images_dir} does not exist")
    if project_id is None and not title:
        title = f"{images_dir.resolve().name} (imported)"
    labels = ds.labels or ds.collect_labels()
    project = _find_or_create_project(client, project_id=project_id, title=title, labels=labels, label_config=label_config)
    pid = int(project.id)
    control = _polygon_control(project)
    if control is None:
        raise AnnotationError(f"Label Studio project {pid} has no PolygonLabels control in its labeling config")
    from_name, to_name, project_labels = control
    missing = [lab for lab in ds.collect_labels() if lab not in project_labels]
    if missing:
        raise AnnotationError(
            f"Label Studio project {pid} has no label(s) {', '.join(map(repr, missing))} in its PolygonLabels "
            f"control {from_name!r} (it has {project_labels}); add them to the labeling config first"
        )
    mv = model_version or f"{ds.source_format or 'dataset'}-import"
    result = ImportResult(project_id=pid, as_=as_)

    # every image file must exist before anything is sent
    paths: dict[str, Path] = {}
    for img in ds.images:
        p = images_dir / img.file_name
        if not p.is_file():
            raise AnnotationError(f"image {img.file_name!r}: file {p} does not exist")
        paths[img.file_name] = p
    results_by_image = {img.file_name: image_to_results(img, from_name=from_name, to_name=to_name) for img in ds.images}

    # match existing tasks
    tasks = list_tasks(client, pid)
    by_fn: dict[str, dict] = {}
    by_base: dict[str, list[dict]] = {}
    for t in tasks:
        fn, base = _task_key(t)
        if fn:
            by_fn.setdefault(fn, t)
        if base:
            by_base.setdefault(base, []).append(t)
    existing: dict[str, dict] = {}
    new: list[ImageRecord] = []
    for img in ds.images:
        t = by_fn.get(img.file_name)
        if t is None:
            cands = [c for c in by_base.get(Path(img.file_name).name, []) if _task_key(c)[0] in (None, img.file_name)]
            if len(cands) > 1:
                log.warning("image %r matches %d tasks of project %d by name; using task %d",
                            img.file_name, len(cands), pid, cands[0]["id"])
            t = cands[0] if cands else None
        if t is not None:
            existing[img.file_name] = t
        else:
            new.append(img)
    result.tasks_existing = len(existing)

    # make the new images reachable
    urls: dict[str, str] = {}
    if new:
        root = Path(files_root).resolve() if files_root is not None else None
        if root is not None and images_dir.resolve().is_relative_to(root):
            result.storage_id = _ensure_local_storage(client, pid, images_dir, [img.file_name for img in ds.images])
            urls = {img.file_name: _local_url(paths[img.file_name], root) for img in new}
        else:
            urls, result.uploaded = _upload_images(client, pid, [(img.file_name, paths[img.file_name]) for img in new])

    # new tasks, with their annotations or predictions inline
    from tqdm import tqdm

    for start in tqdm(range(0, len(new), TASK_BATCH), desc="importing tasks", unit="batch", disable=len(new) < 2 * TASK_BATCH):
        batch = new[start:start + TASK_BATCH]
        payload = []
        for img in batch:
            task: dict[str, Any] = {"data": {"image": urls[img.file_name], "file_name": img.file_name}}
            res = results_by_image[img.file_name]
            if res:
                task[as_] = [_item(as_, res, img, mv)]
                result.created += 1
            payload.append(task)
        with calls(client, f"import {len(payload)} task(s) into project {pid}"):
            r = client.projects.import_tasks(id=pid, request=payload, return_task_ids=True)
        ids = list(r.task_ids or [])
        if len(ids) != len(batch):
            raise LabelStudioError(f"Label Studio at {base_url(client)} created {len(ids)} task(s) for {len(batch)} image(s)")
        for img, tid in zip(batch, ids, strict=True):
            result.task_ids[img.file_name] = int(tid)
        result.tasks_created += len(batch)

    # existing tasks: add what is not there yet
    for img in ds.images:
        t = existing.get(img.file_name)
        if t is None:
            continue
        tid = int(t["id"])
        result.task_ids[img.file_name] = tid
        res = results_by_image[img.file_name]
        if not res:
            continue
        ours = _regions_of(res)
        if as_ == "annotations":
            theirs = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        else:
            theirs = [p for p in t.get("predictions") or [] if p.get("model_version") == mv]
        if any(_same_regions(_regions_of(x.get("result")), ours) for x in theirs):
            result.skipped += 1
            continue
        item = _item(as_, res, img, mv)
        with calls(client, f"add {as_[:-1]} to task {tid} ({img.file_name})"):
            if as_ == "annotations":
                client.annotations.create(id=tid, result=item["result"], project=pid)
            else:
                client.predictions.create(task=tid, result=item["result"], score=item.get("score"),
                                          model_version=mv, project=pid)
        result.created += 1
    log.info("%s", result.summary())
    return result


def _item(as_: str, results: list[dict], img: ImageRecord, model_version: str) -> dict[str, Any]:
    if as_ == "annotations":
        return {"result": results}
    item: dict[str, Any] = {"result": results, "model_version": model_version}
    scores = [r.score for r in img.regions if r.score is not None]
    if scores:
        item["score"] = float(np.mean(scores))
    return item


# --------------------------------------------------------------------------------------- export
def _project_labels(client: Any, project_id: int) -> list[str]:
    with calls(client, f"read project {project_id}"):
        project = client.projects.get(id=project_id)
    control = _polygon_control(project)
    return control[2] if control else []


def _tasks_to_dataset(
    client: Any, project_id: int, *, only_annotated: bool, include_predictions: bool
) -> AnnotationSet:
    labels = _project_labels(client, project_id)
    tasks = list_tasks(client, project_id)
    report = Report(source=f"{base_url(client)} project {project_id}")
    images, pending = [], []
    for t in tasks:
        where = f"project {project_id}"
        img, polys = task_to_image(t, where=where, report=report, use_predictions=include_predictions)
        if only_annotated and "ls_annotation_id" not in img.extra:
            continue
        images.append(img)
        for r, parts in zip(img.regions, polys, strict=True):
            pending.append((r, (parts, img.width_px, img.height_px, f"{where}: task {t['id']}: result {r.region_id}")))
    fixed = sanitize_many([p for _, p in pending], report=report)
    for (r, _), parts in zip(pending, fixed, strict=True):
        r.polygons = parts
    report.log()
    ds = AnnotationSet(images=images, labels=list(labels), source_format="ls",
                       meta={"ls_url": base_url(client), "ls_project": project_id})
    for lab in ds.collect_labels():
        if lab not in ds.labels:
            ds.labels.append(lab)
    return ds


def export_dataset(client: Any, project_id: int, *, include_predictions: bool = False) -> AnnotationSet:
    """Every task of a project as an image, with the regions of its latest non-cancelled annotation.

    ``image_id`` is the task id; ``file_name`` is the ``file_name`` this module stored in the task, else
    the image URL's file name (upload hash prefix stripped); the URL stays in ``extra["ls_image"]``.
    Labels come in the order of the project's PolygonLabels control.

    Args:
        client: a client made by :func:`~shoeseg_services.ls_api.connection.connect`.
        project_id: the project.
        include_predictions: tasks without an annotation take their latest prediction's regions (with scores).

    Raises:
        LabelStudioError: server unreachable, key refused, project missing (names the URL).

    Example:
        >>> ds = export_dataset(connect(URL, KEY), 3)  # doctest: +SKIP
        >>> ds.images[0].image_id, ds.images[0].file_name  # doctest: +SKIP
        ('17', 'IMG_0001.jpg')
    """
    return _tasks_to_dataset(client, project_id, only_annotated=False, include_predictions=include_predictions)


def accepted_annotations(client: Any, project_id: int) -> AnnotationSet:
    """Only the tasks with an accepted annotation (latest not cancelled), for training.

    ``image_id`` is the task id; ``extra["ls_task_id"]`` and ``extra["ls_annotation_id"]`` record where
    each image's regions came from.

    Example:
        >>> ds = accepted_annotations(client, 3)  # doctest: +SKIP
        >>> ds.images[0].extra["ls_annotation_id"]  # doctest: +SKIP
        42
    """
    return _tasks_to_dataset(client, project_id, only_annotated=True, include_predictions=False)
