"""`shoeseg train`, `shoeseg eval`, `shoeseg predict`, `shoeseg export` and `shoeseg models list|register|promote|rollback`.

Heavy modules (torch, the model code) are imported inside the commands so that `shoeseg --help` is fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Any

import typer

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

models_app = typer.Typer(
    name="models",
    help="The model registry ($SHOESEG_MODEL_DIR, default ./models): list, register, promote, roll back.",
    no_args_is_help=True,
)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


class SplitPart(str, Enum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


def _clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input becomes one line on stderr and exit code 2 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from shoeseg.model import WeightsUnavailableError
        from shoeseg_services.registry import RegistryError
        from via_tools.errors import AnnotationError
        from via_tools.images import ImageReadError

        try:
            return fn(*args, **kwargs)
        except (AnnotationError, ImageReadError, WeightsUnavailableError, RegistryError, FileNotFoundError,
                KeyError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _images_dir_for(data: Path, images: Path | None) -> Path:
    if images is not None:
        return images
    for cand in (data.parent / "images", data.parent):
        if cand.is_dir():
            return cand
    return data.parent


def _load_dataset(data: Path, images: Path):
    from via_tools.io import load
    from via_tools.options import ReadOptions

    return load(data, options=ReadOptions(images_dir=images))


def _use_all_cores() -> None:
    """On CPU, compute with every core, unless OMP_NUM_THREADS says otherwise (a shared machine)."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def _write_json(path: Path, data: Any) -> None:
    from via_tools.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


def _loss_table(losses: dict[str, float]) -> str:
    keys = list(losses)
    return "  ".join(f"{k:>12}" for k in keys) + "\n" + "  ".join(f"{losses[k]:12.4f}" for k in keys)


REGISTRY_HELP = "Registry root: a folder or s3://bucket/prefix (default $SHOESEG_MODEL_DIR)."
#: Options of ``eval`` and ``predict``: what happens to each soft mask before it is thresholded (shoeseg.outlines).
MASK_REFINE_HELP = ("Refine each mask along the image's edges: a guided filter's radius as a fraction of the box "
                    "diagonal (0: off; default 0.04, as served).")
MASK_RESCORE_HELP = "Multiply each score by its mask's quality (the mean kept probability); served off by default."


def _mask_refine_option() -> Any:
    return typer.Option(None, "--mask-refine", min=0.0, max=0.5, help=MASK_REFINE_HELP)


def _mask_rescore_option() -> Any:
    return typer.Option(False, "--mask-rescore/--no-mask-rescore", help=MASK_RESCORE_HELP)


def _outline_options(mask_refine: float | None, mask_rescore: bool) -> dict[str, Any]:
    """The Predictor's mask settings from ``--mask-refine`` / ``--mask-rescore`` (unset: the served defaults)."""
    return {"mask_rescore": mask_rescore, **({} if mask_refine is None else {"mask_refine": mask_refine})}


def _resolve_model(model: str, registry: str | None) -> Path:
    """A checkpoint path, or a registry version id / ``current`` (on S3 downloaded to the cache once)."""
    p = Path(model)
    if p.is_file():
        return p
    from shoeseg_services.registry import ModelRegistry

    reg = ModelRegistry(registry)
    if model == "current":
        cur = reg.current()
        if cur is None:
            raise FileNotFoundError(f"no model is promoted in {reg.root}")
        return cur.checkpoint
    if reg.versions_dir is None:  # S3
        from shoeseg_services.registry import RegistryError

        try:
            return reg.get(model).checkpoint
        except RegistryError as e:
            raise FileNotFoundError(f"model {model!r} is neither a checkpoint file nor a usable version: {e}") from e
    if reg.versions_dir.is_dir() and (reg.versions_dir / model).is_dir():
        return reg.get(model).checkpoint
    raise FileNotFoundError(f"model {model!r} is neither a checkpoint file nor a version in {reg.root}")


def _gate_text(version) -> str:
    """The gate's evidence in one cell: ``+0.005 [-0.078, +0.078] on 9 images``, plus where the weights came
    from when that is not the parent (an idle chunk continuing a refused one)."""
    from shoeseg.gate import evidence_text

    meta = version.meta or {}
    gate = version.recorded("gate") or {}
    text = evidence_text(gate) or str(gate.get("reason") or "-")[:38]
    if meta.get("trained_from") and meta.get("trained_from") != meta.get("current_version"):
        text += f" (from {meta['trained_from']})"
    return text


def _acceptance_text(a: dict | None) -> str:
    """A version's live acceptance in one line: ``"0.82 of 40 shoes kept (12 annotations: 33/4/3/5, 17 vertices)"``."""
    if not a:
        return "-"
    share = "-" if a.get("kept_share") is None else f"{a['kept_share']:.2f}"
    return (f"{share} of {a.get('predicted', 0)} shoes kept ({a.get('annotations', 0)} annotations: "
            f"{a.get('kept', 0)}/{a.get('moved', 0)}/{a.get('deleted', 0)}/{a.get('drawn', 0)}, "
            f"{a.get('vertices_changed', 0)} vertices)")


def version_projects(version) -> list[int]:
    """The Label Studio projects a registry version was trained for (``meta["project"]``, ``meta["projects"]``)."""
    meta = version.meta or {}
    found = [meta.get("project"), *(meta.get("projects") or [])]
    return sorted({int(p) for p in found if isinstance(p, int | str) and str(p).isdigit() and int(p) > 0})


def _push_served(version, *, reason: str) -> None:
    """Queues the push of ``version``'s predictions to every task of its projects (needs ``REDIS_URL``)."""
    from shoeseg_services.predict_queue import request_push
    from shoeseg_services.settings import Settings

    projects = version_projects(version)
    if not projects:
        typer.echo(f"{version.version} names no Label Studio project: no predictions to push")
        return
    settings = Settings.from_env()
    if not settings.redis_url:
        typer.echo(f"REDIS_URL is not set: no push queued; the tasks of project(s) "
                   f"{', '.join(map(str, projects))} keep their current pre-labels")
        return
    import redis

    conn = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        for project in projects:
            job_id = request_push(conn, project, version.version, settings=settings, reason=reason)
            typer.echo(f"project {project}: queued {job_id} (the tasks get {version.version}'s pre-labels)")
    except redis.RedisError as e:
        raise ValueError(f"{version.version} is current, but Redis at {settings.redis_url} does not answer ({e}): "
                         "no push queued") from e
    finally:
        conn.close()


def _config_from_file(path: Path, *, given: dict[str, Any]):
    """A TrainConfig from a JSON of its fields; the recipe options may not be given beside it."""
    from shoeseg.train import TrainConfig

    clash = sorted(name for name, value in given.items() if value is not None)
    if clash:
        raise ValueError(f"--config {path} holds every training setting: leave out {', '.join(clash)}")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({e})") from e
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a JSON object of training settings")
    unknown = sorted(set(fields) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{path}: unknown training settings {unknown}")
    if fields.get("steps") is not None:
        fields["steps"] = tuple(fields["steps"])
    return TrainConfig(**fields)


def register(app: typer.Typer) -> None:
    """Adds this area's commands to the root app."""

    @app.command("train")
    @_clean_errors
    def train_cmd(
        data: Path = typer.Option(..., "--data", help="Annotations (VIA 1/2/3, VIA CSV, COCO or Label Studio)."),
        out: Path = typer.Option(..., "--out", help="Run directory (model.pt, metrics.jsonl, split.json, plot)."),
        images: Path | None = typer.Option(None, "--images", help="Image folder (default: images/ beside --data)."),
        profile: str = typer.Option("auto", "--profile",
                                    help="Recipe that fills the defaults: cpu, study, gpu, or auto (from the device)."),
        arch: str | None = typer.Option(None, "--arch", help="Model family: r50-fpn, lite0-fpn or lite2-fpn."),
        iters: int | None = typer.Option(None, "--iters", help="Iterations (MAX_ITER)."),
        time_budget: float | None = typer.Option(
            None, "--time-budget", min=0, help="Training seconds: every 10 iterations the schedule is cut to what "
            "fits the rest at their pace (at least half of it; 0: none)."),
        ims_per_batch: int | None = typer.Option(None, "--ims-per-batch", help="Images per iteration (IMS_PER_BATCH)."),
        base_lr: float | None = typer.Option(None, "--base-lr", help="Learning rate after warm-up (BASE_LR)."),
        warmup_iters: int | None = typer.Option(None, "--warmup-iters", help="Linear warm-up iterations."),
        roi_batch: int | None = typer.Option(None, "--roi-batch", help="ROIs per image (ROI_HEADS.BATCH_SIZE_PER_IMAGE)."),
        min_size: int | None = typer.Option(None, "--min-size", help="Shorter image side in pixels."),
        max_size: int | None = typer.Option(None, "--max-size", help="Cap on the longer side in pixels."),
        mask_resolution: int | None = typer.Option(
            None, "--mask-resolution", help="Mask head output per shoe in pixels: 28 (the default) or 56 (finer)."),
        mask_boundary_weight: float | None = typer.Option(
            None, "--mask-boundary-weight", help="Weight of the outline term added to the mask loss (0: off)."),
        mask_point_steps: int | None = typer.Option(
            None, "--mask-point-steps", help="PointRend subdivision steps of a point head refining each mask "
            "(2: 28 to 112 px per shoe; 0: no point head)."),
        device: Device = typer.Option(Device.auto, "--device", help="auto, cpu or cuda."),
        weights: str | None = typer.Option(
            None, "--weights", help="auto (COCO R50-FPN when it can be had, else ImageNet lite2-fpn), coco, "
            "imagenet, none, or a PATH."),
        copy_paste: float | None = typer.Option(None, "--copy-paste", help="Simple Copy-Paste probability (0: off)."),
        init_from: Path | None = typer.Option(None, "--init-from", help="Fine-tune this checkpoint (parent version)."),
        split: Path | None = typer.Option(None, "--split", help="Reuse this split.json instead of making one."),
        seed: int = typer.Option(0, "--seed", help="Seed of the split, data order and augmentation."),
        train_frac: float = typer.Option(0.7, "--train-frac", help="Share of images to train on."),
        val_frac: float = typer.Option(0.2, "--val-frac", help="Share of images to validate on."),
        log_period: int = typer.Option(20, "--log-period", help="Iterations between log lines / metrics rows."),
        clip_grad: float | None = typer.Option(None, "--clip-grad", help="Clip the gradient norm to this."),
        optimizer: str | None = typer.Option(None, "--optimizer", help="sgd (detectron2's) or adamw (the cpu profile's); "
                                              "give --base-lr with it when changing it."),
        ema_decay: float | None = typer.Option(
            None, "--ema-decay", help="Save a moving average of the weights with this decay per iteration (0: off)."),
        config_file: Path | None = typer.Option(
            None, "--config", help="Every training setting from this JSON of TrainConfig fields (as the worker "
            "writes it for a torchrun launch), in place of --profile and the recipe options."),
        result_file: Path | None = typer.Option(
            None, "--result", help="Write the result (checkpoint, version, metrics) to this JSON (rank 0)."),
    ) -> None:
        """Trains Mask R-CNN from a recipe: --profile study is the study's (R50-FPN from COCO, 600 iterations,
        512 ROIs, 800 px); cpu trains lite2-fpn from ImageNet weights (AdamW, 200 iterations) in about 14 minutes on
        the slower 2-core machines measured.

        On several GPUs, under torchrun (--ims-per-batch is the global batch, split over the processes; rank 0
        writes the run directory):  torchrun --standalone --nproc-per-node 4 -m shoeseg_app train ...

        Example: shoeseg train --data shoes/via_project.json --out runs/shoes --profile cpu
        """
        from shoeseg.data import split_dataset, subset
        from shoeseg.distributed import DistEnv
        from shoeseg.model import coco_weights_cache_path, load_coco_state_dict
        from shoeseg.train import TrainConfig, train

        rank = DistEnv.from_env()  # torchrun's RANK / LOCAL_RANK / WORLD_SIZE; one process without them
        if config_file is not None:
            config = _config_from_file(config_file, given={
                "--profile": profile if profile != "auto" else None, "--arch": arch, "--iters": iters,
                "--ims-per-batch": ims_per_batch, "--base-lr": base_lr, "--warmup-iters": warmup_iters,
                "--roi-batch": roi_batch, "--min-size": min_size, "--max-size": max_size,
                "--mask-resolution": mask_resolution, "--mask-boundary-weight": mask_boundary_weight,
                "--mask-point-steps": mask_point_steps,
                "--device": device.value if device is not Device.auto else None, "--weights": weights,
                "--copy-paste": copy_paste, "--init-from": init_from, "--clip-grad": clip_grad,
                "--optimizer": optimizer, "--ema-decay": ema_decay, "--time-budget": time_budget})
        else:
            config = TrainConfig.for_profile(
                profile, device=device.value, arch=arch, iters=iters, ims_per_batch=ims_per_batch, base_lr=base_lr,
                warmup_iters=warmup_iters, roi_batch_size_per_image=roi_batch, min_size=min_size,
                max_size=max_size, mask_resolution=mask_resolution,
                mask_boundary_weight=mask_boundary_weight, mask_point_steps=mask_point_steps, weights=weights,
                copy_paste=copy_paste,
                init_from=str(init_from) if init_from else None, log_period=log_period, seed=seed,
                clip_grad_norm=clip_grad, optimizer=optimizer, ema_decay=ema_decay, time_budget_s=time_budget,
            )
        if (config.init_from is None and str(config.weights).lower() == "coco" and rank.local_rank == 0
                and not coco_weights_cache_path().is_file()):
            load_coco_state_dict()  # downloads into the torch.hub cache, or stops here offline
        images_dir = _images_dir_for(data, images)
        ds = _load_dataset(data, images_dir)
        if split is not None:
            try:
                parts = json.loads(split.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{split}: not a readable split file ({e})") from e
        else:
            parts = split_dataset(ds, train_frac=train_frac, val_frac=val_frac, seed=seed)
        train_ds = subset(ds, parts["train"])
        val_ds = subset(ds, parts.get("val", [])) if parts.get("val") else None
        _use_all_cores()
        if rank.is_main:
            typer.echo(f"training on {len(train_ds)} images, validating on {len(val_ds) if val_ds else 0} "
                       f"({images_dir})" + (f", {rank.world_size} processes" if rank.enabled else ""))
        result = train(config, dataset=train_ds, images_dir=images_dir, out_dir=out, val_dataset=val_ds, split=parts)
        if result is None:
            return  # a rank other than 0 of a torchrun launch: rank 0 reports
        if result_file is not None:
            _write_json(result_file, result.to_json())
        typer.echo(f"\nmodel {result.checkpoint} (version {result.version}), {result.wall_s:.0f} s")
        typer.echo("final training losses (median of the last log period):")
        typer.echo(_loss_table(result.final_metrics["train_losses"]))
        if result.eval is not None:
            typer.echo("\nvalidation:")
            typer.echo(result.eval.table())

    @app.command("eval")
    @_clean_errors
    def eval_cmd(
        model: str = typer.Option(..., "--model", help="Checkpoint path, exported .onnx / .ts file, registry "
                                  "version id, or 'current'."),
        data: Path = typer.Option(..., "--data", help="Annotations to evaluate against."),
        images: Path | None = typer.Option(None, "--images", help="Image folder (default: images/ beside --data)."),
        split: SplitPart = typer.Option(SplitPart.val, "--split", help="Part of the model's split, or all."),
        split_file: Path | None = typer.Option(None, "--split-file",
                                               help="split.json (default: the checkpoint's, else beside it)."),
        out: Path | None = typer.Option(None, "--out", help="JSON results (default: eval-<split>.json beside the model)."),
        device: Device = typer.Option(Device.auto, "--device", help="auto, cpu or cuda."),
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
        score_thresh: float | None = typer.Option(
            None, "--score-thresh", min=0.0, max=1.0,
            help="Serving threshold of the annotator's numbers (default: the checkpoint's, else 0.5)."),
        mask_refine: float | None = _mask_refine_option(),
        mask_rescore: bool = _mask_rescore_option(),
        as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    ) -> None:
        """COCO box and mask AP / AP50 / AP75, the loss table and the annotator's numbers (shoes matched, missed,
        false positives, vertices per polygon and to drag, at the serving score threshold) on a part of the split.

        Example: shoeseg eval --model runs/shoes/model.pt --data shoes/via_project.json --split val
        """
        from shoeseg.checkpoint import read_checkpoint_meta
        from shoeseg.data import subset
        from shoeseg.evaluate import evaluate
        from shoeseg.export import export_format_of, read_export_meta
        from shoeseg.runtime import load_predictor

        ckpt = _resolve_model(model, registry)
        images_dir = _images_dir_for(data, images)
        ds = _load_dataset(data, images_dir)
        if split != SplitPart.all:
            if split_file is not None:
                parts = json.loads(split_file.read_text(encoding="utf-8"))
            elif export_format_of(ckpt) is not None:
                parts = read_export_meta(ckpt).get("split")
                if parts is None and (ckpt.parent / "split.json").is_file():
                    parts = json.loads((ckpt.parent / "split.json").read_text(encoding="utf-8"))
                if parts is None:
                    raise FileNotFoundError(f"{ckpt}: no split recorded; pass --split-file or --split all")
            else:
                parts = read_checkpoint_meta(ckpt).get("extra", {}).get("split")
                if parts is None and (ckpt.parent / "split.json").is_file():
                    parts = json.loads((ckpt.parent / "split.json").read_text(encoding="utf-8"))
                if parts is None:
                    raise FileNotFoundError(f"{ckpt}: no split recorded; pass --split-file or --split all")
            if not parts.get(split.value):
                raise ValueError(f"the split has no {split.value!r} images")
            ds = subset(ds, parts[split.value])
        _use_all_cores()
        predictor = load_predictor(ckpt, runtime="torch", device=device.value, score_thresh=0.05,
                                   **_outline_options(mask_refine, mask_rescore))
        result = evaluate(predictor, ds, images_dir=images_dir, progress_bar=True, serve_score_thresh=score_thresh)
        out = out or ckpt.parent / f"eval-{split.value}.json"
        report = {"model": str(ckpt), "version": predictor.model_version, "split": split.value,
                  "masks": {"refine": predictor.mask_refine, "rescore": predictor.mask_rescore}, **result.to_json()}
        _write_json(out, report)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        typer.echo(f"model {ckpt} (version {predictor.model_version}), split {split.value}")
        typer.echo(result.table())
        typer.echo(f"\nwritten {out}")

    @app.command("predict")
    @_clean_errors
    def predict_cmd(
        images: list[Path] = typer.Argument(..., help="Image files or folders."),
        model: str = typer.Option(..., "--model", help="Checkpoint path, exported .onnx / .ts file, registry "
                                  "version id, or 'current'."),
        out: Path = typer.Option(..., "--out", help="Output folder."),
        score_thresh: float | None = typer.Option(
            None, "--score-thresh",
            help="Drop detections below this score (default: the checkpoint's serving threshold, else 0.5)."),
        overlay: bool = typer.Option(False, "--overlay", help="Write coloured mask / box / score overlays."),
        masks: bool = typer.Option(False, "--masks", help="Write binary in-painting masks (union and per shoe)."),
        dilate: int = typer.Option(0, "--dilate", help="Grow in-painting masks by this many pixels."),
        tolerance: float = typer.Option(1.0, "--tolerance", help="Polygon simplification tolerance in pixels."),
        device: Device = typer.Option(Device.auto, "--device", help="auto, cpu or cuda."),
        batch_size: int = typer.Option(2, "--batch-size", help="Images per forward pass."),
        mask_refine: float | None = _mask_refine_option(),
        mask_rescore: bool = _mask_rescore_option(),
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
    ) -> None:
        """Finds shoes: polygons as JSON and VIA, and optionally overlays and in-painting masks.

        Example: shoeseg predict photos/ --model current --out preds --overlay --masks --dilate 8
        """
        from tqdm import tqdm

        from shoeseg.runtime import load_predictor
        from shoeseg.visualize import draw_overlay, inpainting_masks, write_image_atomic
        from via_tools.images import read_image
        from via_tools.io import save
        from via_tools.model import AnnotationSet, ImageRecord

        if dilate < 0:
            raise ValueError(f"--dilate must be 0 or more pixels, got {dilate}")
        files: list[Path] = []
        for p in images:
            if p.is_dir():
                files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
            elif p.is_file():
                files.append(p)
            else:
                raise FileNotFoundError(f"image {p} does not exist")
        if not files:
            raise FileNotFoundError("no images found in " + ", ".join(map(str, images)))
        stems = [f.stem for f in files]
        if len(set(stems)) != len(stems):
            raise ValueError("two input images share a file name; outputs would overwrite each other")
        ckpt = _resolve_model(model, registry)
        _use_all_cores()
        predictor = load_predictor(ckpt, runtime="torch", device=device.value, score_thresh=score_thresh,
                                   tolerance_px=tolerance, batch_size=batch_size,
                                   **_outline_options(mask_refine, mask_rescore))
        out.mkdir(parents=True, exist_ok=True)
        records, rows = [], []
        for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch"):
            chunk = files[start : start + batch_size]
            arrays = [read_image(f) for f in chunk]
            for f, image, dets in zip(chunk, arrays, predictor.predict(arrays), strict=True):
                h, w = image.shape[:2]
                rows.append({"file_name": f.name, "width_px": w, "height_px": h, "detections": [
                    {"label": d.label, "score": d.score, "box_xyxy": list(d.box_xyxy),
                     "polygons": [p.round(2).tolist() for p in d.polygons]} for d in dets]})
                records.append(ImageRecord(file_name=f.name, width_px=w, height_px=h,
                                           file_size=f.stat().st_size,
                                           regions=[d.to_region() for d in dets]))
                if overlay:
                    write_image_atomic(out / "overlays" / f"{f.stem}.jpg", draw_overlay(image, dets))
                if masks:
                    union, each = inpainting_masks(dets, h, w, dilate_px=dilate)
                    write_image_atomic(out / "masks" / f"{f.stem}_mask.png", union)
                    for k, m in enumerate(each, start=1):
                        write_image_atomic(out / "masks" / f"{f.stem}_shoe{k}.png", m)
        _write_json(out / "predictions.json", {"model": str(ckpt), "version": predictor.model_version,
                                               "score_thresh": predictor.score_thresh, "images": rows})
        save(AnnotationSet(images=records, labels=list(predictor.class_names)), out / "predictions_via.json",
             fmt="via2")
        n = sum(len(r["detections"]) for r in rows)
        typer.echo(f"{n} shoes in {len(rows)} images -> {out}/predictions.json, predictions_via.json"
                   + (", overlays/" if overlay else "") + (", masks/" if masks else ""))

    @app.command("export")
    @_clean_errors
    def export_cmd(
        model: str = typer.Argument(..., help="Checkpoint path, registry version id, or 'current'."),
        fmt: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="onnx or torchscript."),
        out: Path = typer.Option(..., "--out", help="The file to write (.onnx; .ts for TorchScript)."),
        int8: bool = typer.Option(False, "--int8", help="ONNX: quantise to int8 with ONNX Runtime's quantiser: the "
                                  "matrix products (the box head) dynamically and, calibrated on the training "
                                  "images the checkpoint keeps, the pyramid's and RPN's convolutions statically."),
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
    ) -> None:
        """Exports the whole detector (resize and normalisation, body, FPN, RPN, box and mask heads) to one file
        with its classes, input size, serving thresholds and version; `shoeseg predict --model FILE` and
        `shoeseg eval --model FILE` run it. The int8 box head and flip TTA are serving choices of PyTorch and
        are not exported (use --int8 for ONNX Runtime's int8).

        Example: shoeseg export current --format onnx --out model.onnx
        """
        from shoeseg.export import ExportError, export_format_of, export_model

        suffix_fmt = export_format_of(out)
        if suffix_fmt != fmt.value:
            wanted = ".onnx" if fmt is ExportFormat.onnx else ".ts or .torchscript"
            raise ValueError(f"--out {out}: a {fmt.value} file needs the suffix {wanted}, so that it is read back "
                             "as one")
        ckpt = _resolve_model(model, registry)
        try:
            meta = export_model(ckpt, out, fmt=fmt.value, int8=int8)
        except ExportError as e:
            raise ValueError(str(e)) from e
        notes = "".join(f"\n  not exported: {n}" for n in meta["left_out"])
        typer.echo(f"exported {meta['version']} ({meta['arch']}, classes {', '.join(meta['class_names'])}, input "
                   f"{meta['input']['min_size']}-{meta['input']['max_size']} px, dynamic size) -> {out}"
                   + (f" ({meta['quantized']})" if meta.get("quantized") else "") + notes)

    app.add_typer(models_app)

    @models_app.command("list")
    @_clean_errors
    def models_list(
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Lists registered versions (the promoted one marked with *)."""
        from shoeseg.edits import summary_text
        from shoeseg_services.registry import ModelRegistry

        reg = ModelRegistry(registry)
        versions = reg.versions()
        accepted = {v.version: reg.acceptance(v.version) for v in versions}
        if as_json:
            typer.echo(json.dumps([{**v.to_dict(), "acceptance": accepted[v.version]} for v in versions], indent=2))
            return
        if not versions:
            typer.echo(f"no model versions in {reg.root}")
            return
        typer.echo(f"  {'version':<24} {'status':<10} {'segm_AP':>8} {'bbox_AP':>8}  {'parent':<24} {'created':<25} "
                   f"{'gate: difference [interval] on images':<38} {'pre-labels on its validation images':<80} "
                   "live acceptance (annotations: kept/moved/deleted/drawn, vertices changed)")
        for v in versions:
            mark = "*" if v.status == "promoted" else " "
            ap = "  ".join(f"{v.metrics.get(k):8.3f}" if isinstance(v.metrics.get(k), int | float) else f"{'-':>8}"
                           for k in ("segm_AP", "bbox_AP"))
            typer.echo(f"{mark} {v.version:<24} {v.status:<10} {ap}  {v.parent or '-':<24} {v.created_at:<25} "
                       f"{_gate_text(v):<38} {summary_text(v.recorded('annotator')) or '-':<80} "
                       f"{_acceptance_text(accepted[v.version])}")

    @models_app.command("register")
    @_clean_errors
    def models_register(
        checkpoint: Path = typer.Argument(..., help="A model.pt written by `shoeseg train`."),
        promote: bool = typer.Option(False, "--promote", help="Also make it the current version."),
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
    ) -> None:
        """Adds a checkpoint to the registry as a candidate (its metrics and parent come with it)."""
        from shoeseg_services.registry import ModelRegistry

        reg = ModelRegistry(registry)
        v = reg.register(checkpoint, metrics=None, parent=None, meta={"source": str(checkpoint)})
        if promote:
            v = reg.promote(v.version)
        typer.echo(f"registered {v.version} ({v.status}) in {reg.root}")

    @models_app.command("promote")
    @_clean_errors
    def models_promote(
        version: str = typer.Argument(..., help="The version id to serve."),
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
    ) -> None:
        """Makes a version the current one (atomic pointer swap)."""
        from shoeseg_services.registry import ModelRegistry

        v = ModelRegistry(registry).promote(version)
        typer.echo(f"current model: {v.version}")
        _push_served(v, reason="promotion (`shoeseg models promote`)")

    @models_app.command("rollback")
    @_clean_errors
    def models_rollback(
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
    ) -> None:
        """Goes back to the previously promoted version (else the current one's parent)."""
        from shoeseg_services.registry import ModelRegistry

        v = ModelRegistry(registry).rollback()
        typer.echo(f"current model: {v.version}")
        _push_served(v, reason="rollback (`shoeseg models rollback`)")
