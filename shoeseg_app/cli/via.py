"""`shoeseg via`: inspect and convert annotation files, and move datasets in and out of Label Studio."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Any

import typer

from via_tools.io import FORMATS

via_app = typer.Typer(
    name="via",
    help="VGG Image Annotator (VIA 1/2/3, CSV), COCO, Label Studio and YOLO segmentation annotations: statistics, "
    "conversion, and import into / export from a Label Studio server.",
    no_args_is_help=True,
)


#: The formats of via_tools' table (``via_tools.io.FORMATS``), as choices of ``--to`` / ``--format`` / ``--from``.
OutFormat = Enum("OutFormat", {name: name for name in FORMATS}, type=str)
InFormat = Enum("InFormat", {"auto": "auto", **{name: name for name in FORMATS}}, type=str)


class YoloImages(str, Enum):
    none = "none"
    copy = "copy"
    link = "link"


class AsKind(str, Enum):
    annotations = "annotations"
    predictions = "predictions"


def _clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input becomes one line on stderr and exit code 2 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from via_tools.errors import AnnotationError

        try:
            return fn(*args, **kwargs)
        except AnnotationError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _read_options(images: Path | None, label_attr: str, default_label: str, allow_outside: bool = False):
    from via_tools.options import ReadOptions

    return ReadOptions(label_attr=label_attr, default_label=default_label, images_dir=images,
                       allow_outside=allow_outside)


def _write_text_atomic(text: str, path: Path) -> None:
    from via_tools.files import atomic_write_text

    atomic_write_text(path, text)


def _save(ds, out: Path, fmt: str, *, as_: str = "annotations", model_version: str | None = None) -> None:
    from via_tools.io import save
    from via_tools.options import WriteOptions

    if fmt == "ls" and as_ != "annotations":
        from via_tools import labelstudio

        doc = labelstudio.write(ds, options=WriteOptions(), as_=as_, model_version=model_version)
        from via_tools.jsontext import dump_json

        _write_text_atomic(dump_json(doc, where=str(out)), out)
    else:
        save(ds, out, fmt=fmt)


IMAGES_OPT = typer.Option(
    None, "--images", help="Folder with the images: checks they exist and reads missing image sizes.",
    exists=True, file_okay=False, dir_okay=True,
)
ALLOW_OUTSIDE_OPT = typer.Option(
    False, "--allow-outside",
    help="YOLO: let the data.yaml name folders outside the dataset's folder (absolute paths, '..'); refused by default.",
)
LABEL_ATTR_OPT = typer.Option("label", "--label-attr", help="VIA region attribute that holds the class label.")
DEFAULT_LABEL_OPT = typer.Option("shoe", "--default-label", help="Label of regions that have none.")
FROM_OPT = typer.Option(InFormat.auto, "--from", help="Input format (detected by default).")
URL_OPT = typer.Option(..., "--url", envvar="LABEL_STUDIO_URL", help="Label Studio URL, e.g. http://localhost:8080.")
KEY_OPT = typer.Option(..., "--api-key", envvar="LABEL_STUDIO_API_KEY",
                       help="Label Studio API key (legacy token or personal access token).")


def _load(file: Path, fmt: InFormat, images: Path | None, label_attr: str, default_label: str, report=None,
          allow_outside: bool = False):
    from via_tools.io import load

    return load(file, fmt=None if fmt == InFormat.auto else fmt.value,
                options=_read_options(images, label_attr, default_label, allow_outside), report=report)


def _find_version(meta: Any, depth: int = 0) -> str | None:
    """The first ``*version*`` value in the format's metadata (VIA's ``_via_data_format_version``...)."""
    if not isinstance(meta, dict) or depth > 3:
        return None
    for k, v in meta.items():
        if "version" in str(k).lower() and isinstance(v, str | int | float) and not isinstance(v, bool):
            return str(v)
    for v in meta.values():
        found = _find_version(v, depth + 1)
        if found:
            return found
    return None


def dataset_stats(ds, report=None) -> dict[str, Any]:
    """Counts of a dataset: images, regions by shape and by label, and the reader's problem counts."""
    by_shape: Counter = Counter()
    by_label: Counter = Counter()
    points = 0
    for img in ds.images:
        for r in img.regions:
            by_shape[r.shape_name] += 1
            by_label[r.label] += 1
            points += sum(len(p) for p in r.polygons)
    meta_version = _find_version(ds.meta)
    yolo = {}
    if ds.source_format == "yolo":
        yolo = {"images_without_label_file": sum(1 for img in ds.images if img.extra.get("yolo_no_label_file")),
                "label_files_without_image": ds.meta.get("yolo_label_files_without_image", 0)}
    return {
        "format": ds.source_format,
        "version": meta_version,
        "images": len(ds.images),
        "images_without_regions": sum(1 for img in ds.images if not img.regions),
        "images_without_size": sum(1 for img in ds.images if img.resolution_wh is None),
        "regions": ds.count_regions(),
        "instances": ds.count_instances(),
        "polygon_points": points,
        "labels": list(ds.labels),
        "regions_by_shape": dict(by_shape.most_common()),
        "regions_by_label": dict(by_label.most_common()),
        **yolo,
        "problems": dict(report.counts) if report is not None else {},
    }


@via_app.command("stats")
@_clean_errors
def stats(
    file: Path = typer.Argument(..., help="Annotation file (VIA 1/2/3 JSON, VIA CSV, COCO, Label Studio tasks), "
                                "or a YOLO data.yaml or dataset folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    fmt: InFormat = FROM_OPT,
    images: Path | None = IMAGES_OPT,
    label_attr: str = LABEL_ATTR_OPT,
    default_label: str = DEFAULT_LABEL_OPT,
    allow_outside: bool = ALLOW_OUTSIDE_OPT,
) -> None:
    """Count images and regions (by shape and by label) and list the problems the reader fixed."""
    from via_tools.report import Report

    report = Report(source=str(file))
    ds = _load(file, fmt, images, label_attr, default_label, report=report, allow_outside=allow_outside)
    s = {"file": str(file), **dataset_stats(ds, report)}
    if as_json:
        typer.echo(json.dumps(s, ensure_ascii=False))
        return
    typer.echo(f"{file}: {s['format']}" + (f" (version {s['version']})" if s["version"] else ""))
    typer.echo(f"  images            {s['images']:>8}  ({s['images_without_regions']} without regions, "
               f"{s['images_without_size']} without a known size)")
    typer.echo(f"  regions           {s['regions']:>8}  ({s['instances']} instances, {s['polygon_points']} polygon points)")
    typer.echo("  by shape          " + ", ".join(f"{k} {v}" for k, v in s["regions_by_shape"].items()))
    typer.echo("  by label          " + ", ".join(f"{k} {v}" for k, v in s["regions_by_label"].items()))
    if "images_without_label_file" in s:
        typer.echo(f"  yolo              {s['images_without_label_file']} image(s) without a label file, "
                   f"{s['label_files_without_image']} label file(s) without an image")
    typer.echo("  problems fixed    " + (", ".join(f"{k} {v}" for k, v in s["problems"].items()) or "none"))


@via_app.command("convert")
@_clean_errors
def convert(
    src: Path = typer.Argument(..., metavar="IN", help="Annotation file to read (format detected; YOLO: data.yaml or folder)."),
    to: OutFormat = typer.Option(..., "--to", help="Output format."),
    out: Path = typer.Option(..., "-o", "--out", help="File to write (written atomically; a folder for --to yolo)."),
    fmt: InFormat = FROM_OPT,
    images: Path | None = IMAGES_OPT,
    label_attr: str = LABEL_ATTR_OPT,
    default_label: str = DEFAULT_LABEL_OPT,
    as_: AsKind = typer.Option(AsKind.annotations, "--as", help="For --to ls: write annotations or predictions."),
    yolo_images: YoloImages = typer.Option(
        YoloImages.none, "--yolo-images",
        help="For --to yolo: copy or hard-link the images into OUT/images/<split>/ (from where a YOLO set was "
        "read, else from --images); by default only labels and data.yaml are written.",
    ),
    allow_outside: bool = ALLOW_OUTSIDE_OPT,
) -> None:
    """Convert an annotation file to another format (VIA 1/2/3, VIA CSV, COCO, Label Studio tasks, YOLO).

    COCO, Label Studio and YOLO need image sizes: VIA files do not store them, so pass --images.
    """
    from via_tools.io import written_count

    ds = _load(src, fmt, images, label_attr, default_label, allow_outside=allow_outside)
    n_written, unit = written_count(ds, to.value)
    if to is OutFormat.yolo and yolo_images is not YoloImages.none:
        from via_tools import yolo

        yolo.save(ds, out, images=yolo_images.value, images_dir=images)
    else:
        _save(ds, out, to.value, as_=as_.value)
    typer.echo(f"wrote {out} ({to.value}): {len(ds.images)} images, {n_written} {unit} "
               f"(from {ds.count_regions()} regions, {ds.count_instances()} instances)")


@via_app.command("import")
@_clean_errors
def import_(
    file: Path = typer.Argument(..., help="Annotation file to import (any supported format; YOLO: data.yaml or folder)."),
    images: Path = typer.Option(..., "--images", help="Folder with the images.", exists=True, file_okay=False),
    url: str = URL_OPT,
    api_key: str = KEY_OPT,
    project: int | None = typer.Option(None, "--project", help="Existing project id."),
    title: str | None = typer.Option(None, "--title", help="Project title: reused when it exists, else created."),
    as_: AsKind = typer.Option(AsKind.annotations, "--as", help="Import regions as annotations or as predictions."),
    files_root: Path | None = typer.Option(
        None, "--files-root", envvar="LOCAL_FILES_DOCUMENT_ROOT",
        help="The server's LOCAL_FILES_DOCUMENT_ROOT: images under it are served from disk, not uploaded.",
    ),
    model_version: str | None = typer.Option(None, "--model-version", help="model_version of imported predictions."),
    fmt: InFormat = FROM_OPT,
    label_attr: str = LABEL_ATTR_OPT,
    default_label: str = DEFAULT_LABEL_OPT,
    redis_url: str | None = typer.Option(
        None, "--redis-url", envvar="REDIS_URL",
        help="The retraining queue: when the project has no model yet, its first training is queued after the import.",
    ),
) -> None:
    """Import a dataset into Label Studio: one task per image, regions as polygons.

    Running it again creates nothing twice: existing tasks, uploads and identical annotations are reused.
    With a Redis (``--redis-url`` / ``REDIS_URL``) and no model yet, the project's first training is queued.
    """
    if project is not None and title is not None:
        raise typer.BadParameter("give --project or --title, not both")
    from shoeseg_services.ls_api import connect, import_dataset

    ds = _load(file, fmt, images, label_attr, default_label)
    client = connect(url, api_key)
    res = import_dataset(client, ds, images_dir=images, project_id=project, title=title, as_=as_.value,
                         files_root=files_root, model_version=model_version)
    typer.echo(res.summary())
    if as_ is AsKind.annotations and redis_url:
        from shoeseg_app.stack.up import request_first_model_after_import

        first = request_first_model_after_import(redis_url, res.project_id)
        typer.echo(f"first model: {first['action']} {first.get('job_id') or ''}".rstrip())
    typer.echo(f"{url.rstrip('/')}/projects/{res.project_id}/data")


@via_app.command("export")
@_clean_errors
def export(
    url: str = URL_OPT,
    api_key: str = KEY_OPT,
    project: int = typer.Option(..., "--project", help="Project id."),
    out: Path = typer.Option(..., "-o", "--out", help="File to write."),
    fmt: OutFormat = typer.Option(OutFormat.via2, "--format", help="Output format."),
    predictions: bool = typer.Option(False, "--predictions", help="Tasks without an annotation take their latest prediction."),
    accepted_only: bool = typer.Option(False, "--accepted-only", help="Only tasks with a non-cancelled annotation."),
) -> None:
    """Export a Label Studio project's polygons (latest non-cancelled annotation per task) to a file."""
    from shoeseg_services.ls_api import accepted_annotations, connect, export_dataset

    client = connect(url, api_key)
    ds = accepted_annotations(client, project) if accepted_only else export_dataset(client, project, include_predictions=predictions)
    _save(ds, out, fmt.value)
    typer.echo(f"wrote {out} ({fmt.value}): {len(ds.images)} images, {ds.count_regions()} regions from project {project}")


def register(app: typer.Typer) -> None:
    """Adds the `via` command group to the root app."""
    app.add_typer(via_app, name="via")
