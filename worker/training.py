"""The training job's work: accepted annotations in, a registered (and maybe promoted) version out."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

from shoeseg.losses import LOSS_KEYS
from shoeseg_services.ls_api import LabelStudioUnavailable, connect, is_transient
from shoeseg_services.processes import stop_process_group
from shoeseg_services.settings import Settings
from shoeseg_services.trigger import FIRST_MODEL_REASON
from worker.plumbing import Progress
from worker.promotion import rotate_validation, validation_task_ids

log = logging.getLogger(__name__)


def _subset(ds, keep):
    from via_tools.model import AnnotationSet

    return AnnotationSet(images=[im for im in ds.images if keep(im)], labels=list(ds.labels),
                         source_format=ds.source_format, meta=dict(ds.meta))


def _localise_images(ds, fetcher, access, progress: Progress) -> Path:
    """Fetches every image into the shared image cache (once) and points ``file_name`` at its cached file.

    Returns:
        The directory the ``file_name`` values are relative to.
    """
    from shoeseg_services.fetch import ImageFetchError
    from via_tools.images import image_size_wh

    root = fetcher.settings.cache_dir / "images"
    total = len(ds.images)
    for k, im in enumerate(ds.images):
        url = im.extra.get("ls_image") or im.file_name
        try:
            path = fetcher.cached_file(url, task_id=im.image_id, access=access)
        except ImageFetchError as e:
            if is_transient(e.__cause__ or e):
                raise LabelStudioUnavailable(str(e)) from e
            raise
        im.file_name = str(path.relative_to(root))
        if im.width_px is None or im.height_px is None:
            im.width_px, im.height_px = image_size_wh(path)
        progress.update(stage="fetching images", images_done=k + 1, images_total=total)
    return root


def new_images(ds, current) -> int:
    """Labelled images of ``ds`` that the current version has not seen, or whose annotation changed since."""
    if current is None:
        return len(ds.images)
    seen = {str(k): v for k, v in (current.meta.get("annotation_ids") or {}).items()}
    return sum(1 for im in ds.images if seen.get(str(im.image_id)) != im.extra.get("ls_annotation_id"))


def new_to_training(train_ds, current) -> int:
    """Training images the current version did not train on (new labels, and its validation tasks that now
    train) or whose annotation changed since: what sizes a round."""
    if current is None:
        return len(train_ds.images)
    seen = {str(k): v for k, v in (current.meta.get("annotation_ids") or {}).items()}
    trained = {str(t) for t in current.meta.get("task_ids") or []} - {
        str(t) for t in current.meta.get("val_task_ids") or []}
    return sum(1 for im in train_ds.images
               if str(im.image_id) not in trained or seen.get(str(im.image_id)) != im.extra.get("ls_annotation_id"))


def train_config(settings: Settings, *, weights: str | None, init_from: str | None, seed: int,
                  new: int | None = None, parent_meta: dict | None = None):
    """The job's training settings: the profile (``SHOESEG_PROFILE``), then what the environment sets.

    A fine-tuning round (``init_from`` set) is sized by :func:`shoeseg.schedule.round_iters` to the ``new``
    labelled images, unless ``SHOESEG_TRAIN_ITERS`` fixes the iterations. With the parent version's metadata
    (``parent_meta``): a parent that idle-time training enlarged keeps its input size (a round at a smaller one
    would undo it), and the round's iterations are cut to ``SHOESEG_ROUND_BUDGET_S`` at the parent's seconds per
    iteration (:func:`shoeseg.budget.budget_iters`; scaled by the pixels when the sizes differ). A full training
    (no ``init_from``) runs with ``SHOESEG_TRAIN_BUDGET_S`` as its time budget: it fits its schedule to its own
    pace as it runs (``TrainConfig.time_budget_s``). ``SHOESEG_TRAIN_ITERS`` turns both budgets off.
    """
    from shoeseg.budget import budget_iters
    from shoeseg.schedule import MIN_ROUND_ITERS, fine_tune_config, round_iters
    from shoeseg.train import TrainConfig

    config = TrainConfig.for_profile(settings.profile, device=settings.device, weights=weights, init_from=init_from,
                                     seed=seed, progress_bar=False, **settings.train_overrides())
    parent = (parent_meta or {}).get("train_config") or {}
    if settings.min_size is None and int(parent.get("min_size") or 0) > config.min_size:
        config = replace(config, min_size=int(parent["min_size"]),
                         max_size=max(config.max_size, int(parent.get("max_size") or 0)))
    if init_from is None and settings.train_iters is None:
        config = replace(config, time_budget_s=settings.train_budget_s)  # cut while it runs, to its own pace
    if init_from is not None and new is not None and settings.train_iters is None:
        iters = round_iters(config.iters, new)
        per_iter = parent_seconds_per_iter(parent_meta, min_size=config.min_size)
        budgeted = budget_iters(iters, seconds_per_iter=per_iter, budget_s=settings.round_budget_s,
                                floor=MIN_ROUND_ITERS)
        if budgeted < iters:
            log.info("round of %d iterations cut to %d: SHOESEG_ROUND_BUDGET_S=%g at %.1f s per iteration; idle "
                     "training continues after it", iters, budgeted, settings.round_budget_s, per_iter)
        config = fine_tune_config(config, init_from=init_from, iters=budgeted)
    return replace(config, log_period=max(1, min(20, config.iters // 10 or 1)))


def parent_seconds_per_iter(parent_meta: dict | None, *, min_size: int) -> float | None:
    """Seconds one training iteration of the parent version took, scaled to ``min_size`` by the pixels (``None``:
    unknown): the ``time`` of its last training-log row (``meta.final_losses``). A parent trained as an idle chunk
    ran at a lower priority: an upper bound here."""
    meta = parent_meta or {}
    per_iter = (meta.get("final_losses") or {}).get("time")
    parent_size = int((meta.get("train_config") or {}).get("min_size") or 0)
    if not per_iter or per_iter <= 0 or parent_size <= 0:
        return None
    return float(per_iter) * (min_size / parent_size) ** 2


def _evaluate(checkpoint: Path, val_ds, images_dir: Path, settings: Settings):
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device=settings.device, score_thresh=0.05)
    return evaluate(predictor, val_ds, images_dir=images_dir, device=settings.device, with_losses=False,
                    per_image_ap=True)


def clean_old_runs(runs_dir: Path) -> None:
    # Only one training per project runs at a time (see shoeseg_services.trigger): older run dirs are leftovers of
    # killed workers.
    if runs_dir.is_dir():
        for old in runs_dir.iterdir():
            if old.is_dir() and old.name.startswith("run-"):
                shutil.rmtree(old, ignore_errors=True)


def _numeric(task_id):
    return int(task_id) if str(task_id).isdigit() else task_id


def read_labels(project_id: int, settings: Settings, progress: Progress):
    """The project's accepted annotations with their images in the shared cache: ``(dataset, images_dir)``;
    ``(empty dataset, None)`` when there is none."""
    from shoeseg_services.fetch import ImageFetcher, configured_access
    from shoeseg_services.ls_api import LabelStudioError, accepted_annotations

    progress.update(force=True, stage="reading annotations")
    client = connect(settings.label_studio_url, settings.label_studio_api_key)
    try:
        ds = accepted_annotations(client, project_id)
    except LabelStudioError as e:
        if is_transient(e):
            raise LabelStudioUnavailable(f"project {project_id}: {e}") from e
        raise
    if not ds.images:
        return ds, None
    fetcher = ImageFetcher(settings)
    try:
        images_dir = _localise_images(ds, fetcher, configured_access(settings), progress)
    finally:
        fetcher.close()
    return ds, images_dir


def split_labels(ds, settings: Settings, current):
    """``(train, validation)``: a version is only ever judged on images neither it nor the current version
    trained on. The first version's validation is the hash subset (:func:`worker.promotion.validation_task_ids`);
    later ones rotate (:func:`worker.promotion.rotate_validation`: the newest labels judge, the oldest validation
    tasks move into training) unless ``SHOESEG_VAL_ROTATION=fixed`` keeps the hash subset less the tasks the
    current version trained on."""
    ids = [str(im.image_id) for im in ds.images]
    val_ids = validation_task_ids(ids, modulo=settings.val_modulo, max_size=settings.val_max)
    if current is not None:
        held = {str(t) for t in current.meta.get("val_task_ids") or []}
        trained = {str(t) for t in current.meta.get("task_ids") or []} - held
        if settings.val_rotation == "newest":
            age = {str(im.image_id): im.extra.get("ls_annotation_id") for im in ds.images}
            val_ids = rotate_validation(ids, held=held, trained=trained, size=len(val_ids), age=age)
        else:
            val_ids = {t for t in val_ids if t not in trained}
    return (_subset(ds, lambda im: str(im.image_id) not in val_ids),
            _subset(ds, lambda im: str(im.image_id) in val_ids))


def validation_rule(settings: Settings, current) -> str:
    """How :func:`split_labels` chose a version's validation tasks, in words (its metadata's ``validation``)."""
    if current is None or settings.val_rotation == "fixed":
        return "task-id hash"
    return "newest labels"


def judge(result, current, val_ds, images_dir: Path, settings: Settings):
    """The gate (:func:`shoeseg.gate.decide`) on both versions' per-image mask AP over ``val_ds``: the
    candidate's from its training's own evaluation (``result.eval``), the current version's evaluated here.

    Returns:
        ``(decision, current_metrics)``: the :class:`shoeseg.gate.GateDecision` and the current version's
        metrics on the same images (``{}`` without a current version or validation images).
    """
    from shoeseg.gate import decide

    candidate_eval = result.eval
    if current is None or not len(val_ds) or candidate_eval is None:
        return decide([], [], has_current=current is not None, confidence=settings.gate_confidence,
                      tolerance=settings.promote_tolerance), {}
    if len(candidate_eval.per_image) != len(val_ds) or any("segm_AP" not in r for r in candidate_eval.per_image):
        candidate_eval = _evaluate(result.checkpoint, val_ds, images_dir, settings)
    current_eval = _evaluate(current.checkpoint, val_ds, images_dir, settings)
    new = [row.get("segm_AP") for row in candidate_eval.per_image]
    old = [row.get("segm_AP") for row in current_eval.per_image]
    decision = decide(new, old, has_current=True, confidence=settings.gate_confidence,
                      tolerance=settings.promote_tolerance)
    return decision, dict(current_eval.metrics)


def export_for_serving(checkpoint: Path, settings: Settings) -> Path | None:
    """The file the backend and the push will serve a version from (ONNX Runtime's, ``SHOESEG_RUNTIME``),
    exported once, before the version is promoted: the backend's first request after a promotion then loads it
    instead of exporting it while the push does the same (17-34 s for the first version on 2 cores). A model
    that cannot be exported is promoted all the same (served as the runtime allows, with a warning)."""
    from shoeseg.export import ExportError
    from shoeseg.runtime import serving_export

    t0 = time.perf_counter()
    try:
        path = serving_export(checkpoint, runtime=settings.runtime, device=settings.device)
    except (ExportError, OSError, ValueError) as e:
        log.warning("%s: not exported before its promotion (%s)", checkpoint, e)
        return None
    if path is not None:
        log.info("exported %s for serving in %.1f s", path, time.perf_counter() - t0)
    return path


def register_and_promote(registry, result, *, current, decision, current_metrics: dict, project_id: int,
                         kind: str, reason: str, config, ds, train_ds, val_ds, settings: Settings, job,
                         trained_from: str | None = None) -> dict:
    """Registers a trained candidate with its evidence, promotes it when the gate says so (and the current
    version is still the one it was judged against), and queues the push of its predictions.

    The version's ``parent`` is the version it was judged against (the current one); ``meta.trained_from`` the
    one its weights started from (``trained_from``, default the current one: an idle chunk continuing a refused
    candidate differs)."""
    from shoeseg_services.predict_queue import request_push

    new_metrics = dict(result.eval.metrics) if result.eval is not None else {}
    train_losses = result.metrics[-1] if getattr(result, "metrics", None) else {}
    ran = getattr(result, "final_metrics", None) or {}
    annotation_ids = {im.image_id: im.extra.get("ls_annotation_id") for im in ds.images}
    promote = decision.promote
    version = registry.register(
        result.checkpoint,
        metrics={**new_metrics, "val_tasks": len(val_ds), "train_tasks": len(train_ds)},
        parent=current.version if current else None,
        meta={
            "project": project_id,
            "label_studio": settings.label_studio_url,
            "kind": kind,
            "reason": reason,
            "job_id": job.id if job is not None else None,
            "task_ids": [_numeric(im.image_id) for im in ds.images],
            "annotation_ids": annotation_ids,
            "val_task_ids": sorted(_numeric(im.image_id) for im in val_ds.images),
            "validation": validation_rule(settings, current),
            "current_version": current.version if current else None,
            "trained_from": trained_from or (current.version if current and config.init_from else None),
            "current_metrics_on_val": current_metrics,
            "decision": decision.reason,
            "gate": decision.to_json(),
            "promoted": promote,
            # the iterations that ran: a time budget may have cut the schedule the config planned
            "train_config": {**{f.name: getattr(config, f.name) for f in fields(config)},
                             "iters": int(ran.get("iterations") or config.iters)},
            "time_budget": ran.get("time_budget"),
            "final_losses": train_losses if isinstance(train_losses, dict) else {},
        },
    )
    predict_job_id = None
    if promote:
        export_for_serving(version.checkpoint, settings)
    if promote and current is not None and registry.current_version_id() != current.version:
        promote = False
        log.warning("project %s: %s not promoted: the current version changed while it trained", project_id,
                    version.version)
    if promote:
        registry.promote(version.version)
        log.info("project %s: promoted %s (%s)", project_id, version.version, decision.reason)
        if job is not None:
            predict_job_id = request_push(job.connection, project_id, version.version, settings=settings,
                                          reason=f"{kind} {version.version} promoted", meta={"trained_by": job.id})
    else:
        log.warning("project %s: %s kept as a candidate: %s", project_id, version.version, decision.reason)
    return {
        "project": project_id,
        "version": version.version,
        "kind": kind,
        "promoted": promote,
        "decision": decision.reason,
        "gate": decision.to_json(),
        "metrics": new_metrics,
        "current_version": current.version if current else None,
        "current_metrics": current_metrics,
        "train_tasks": len(train_ds),
        "val_tasks": len(val_ds),
        "predict_job_id": predict_job_id,
    }


def run_training(project_id: int, *, reason: str, settings: Settings, job, progress: Progress) -> dict:
    from shoeseg.train import train
    from shoeseg_services.registry import ModelRegistry

    if settings.cache_dir is None:
        settings = settings.with_(cache_dir=Path(".cache/shoeseg"))
    registry = ModelRegistry(settings.model_dir, cache_dir=settings.cache_dir)
    current = registry.current()
    ds, images_dir = read_labels(project_id, settings, progress)
    if not ds.images:
        log.info("project %s has no accepted annotation: nothing to train", project_id)
        return {"project": project_id, "skipped": "no accepted annotation in the project", "promoted": False}
    if reason == FIRST_MODEL_REASON and current is None and len(ds.images) < settings.min_new_annotations:
        why = (f"{len(ds.images)} accepted annotation(s); the first model waits for {settings.min_new_annotations} "
               "(SHOESEG_MIN_NEW_ANNOTATIONS)")
        log.info("project %s: %s", project_id, why)
        return {"project": project_id, "skipped": why, "promoted": False}
    if current is not None and new_images(ds, current) == 0:
        why = f"no new or changed label since version {current.version}, which it would fine-tune"
        log.info("project %s: %s: not trained", project_id, why)
        return {"project": project_id, "skipped": why, "promoted": False}
    train_ds, val_ds = split_labels(ds, settings, current)
    # The first model starts from SHOESEG_INIT_WEIGHTS; later ones fine-tune the current version, in its family.
    weights = None if current else settings.init_weights
    init_from = str(current.checkpoint) if current else None
    new = new_to_training(train_ds, current)
    config = train_config(settings, weights=weights, init_from=init_from,
                           seed=int(job.meta.get("seed", 0)) if job is not None else 0, new=new,
                           parent_meta=current.meta if current else None)
    progress.update(force=True, stage="training", train_tasks=len(train_ds), val_tasks=len(val_ds), new_images=new,
                    iteration=0, iters=config.iters)

    runs_dir = settings.cache_dir / "runs" / str(project_id)
    runs_dir.mkdir(parents=True, exist_ok=True)
    clean_old_runs(runs_dir)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
    try:
        def on_progress(values: dict) -> None:
            progress.update(stage="training", **values)

        if settings.gpus_per_job > 1:
            result = train_in_processes(config, settings.gpus_per_job, dataset=train_ds, images_dir=images_dir,
                                        out_dir=run_dir / "train", val_dataset=val_ds if len(val_ds) else None,
                                        progress=on_progress)
        else:
            result = train(config, dataset=train_ds, images_dir=images_dir, out_dir=run_dir,
                           val_dataset=val_ds if len(val_ds) else None, progress=on_progress)
        progress.update(force=True, stage="evaluating")
        decision, current_metrics = judge(result, current, val_ds, images_dir, settings)
        progress.update(force=True, stage="registering", decision=decision.reason)
        return register_and_promote(registry, result, current=current, decision=decision,
                                    current_metrics=current_metrics, project_id=project_id, kind="round",
                                    reason=reason, config=config, ds=ds, train_ds=train_ds, val_ds=val_ds,
                                    settings=settings, job=job)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m shoeseg_app train ARGS`` (torchrun;
    ``--standalone`` finds a free port, so several workers of one machine can each run one)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "shoeseg_app", "train", *train_args]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # torchrun stops with the work horse even when the horse is killed with SIGKILL (Linux; elsewhere a no-op)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read_rows(path: Path, seen: int) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines[seen:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a row being written: read it next time
    return rows


def train_in_processes(config, nproc: int, *, dataset, images_dir: Path, out_dir: Path, val_dataset=None,
                       progress=None, poll_s: float = 1.0):
    """:func:`shoeseg.train.train` as ``nproc`` processes under torchrun (``SHOESEG_GPUS_PER_JOB`` > 1).

    The annotations (COCO), the split, and ``config`` (every field) are written beside ``out_dir``; the
    command is :func:`torchrun_command`; its rank 0 writes the result that is read back. Progress comes
    from the ``metrics.jsonl`` rows as they are written. The processes are stopped when the job is
    (timeout, or the work horse killed).

    Raises:
        ValueError: more processes than GPUs on CUDA.
        RuntimeError: the training exited with an error (the message ends with its last output lines).
    """
    import subprocess
    from dataclasses import asdict

    import torch

    from shoeseg.device import resolve_device
    from shoeseg.train import TrainResult
    from via_tools.io import save
    from via_tools.model import AnnotationSet

    if resolve_device(config.device).type == "cuda" and torch.cuda.device_count() < nproc:
        raise ValueError(f"SHOESEG_GPUS_PER_JOB={nproc} but {torch.cuda.device_count()} GPU(s) are visible here")
    job_dir = out_dir.parent / f"{out_dir.name}-launch"
    job_dir.mkdir(parents=True, exist_ok=True)
    val_images = list(val_dataset.images) if val_dataset is not None else []
    everything = AnnotationSet(images=list(dataset.images) + val_images, labels=list(dataset.labels),
                               source_format=dataset.source_format, meta=dict(dataset.meta))
    data = save(everything, job_dir / "annotations.coco.json", fmt="coco")
    split = job_dir / "split.json"
    split.write_text(json.dumps({"train": [im.file_name for im in dataset.images],
                                 "val": [im.file_name for im in val_images]}), encoding="utf-8")
    config_path = job_dir / "config.json"
    config_path.write_text(json.dumps(asdict(config)), encoding="utf-8")
    result_path = job_dir / "result.json"
    cmd = torchrun_command(nproc, ["--data", str(data), "--images", str(images_dir), "--split", str(split),
                                   "--out", str(out_dir), "--config", str(config_path),
                                   "--result", str(result_path)])
    log_path = job_dir / "train.log"
    log.info("training in %d processes: %s", nproc, " ".join(cmd))
    seen = 0
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            while True:
                finished = proc.poll() is not None
                for row in _read_rows(out_dir / "metrics.jsonl", seen):
                    seen += 1
                    if progress is not None:
                        progress({"iteration": row["iteration"], "max_iter": config.iters,
                                  "losses": {k: row[k] for k in LOSS_KEYS if k in row}, "lr": row.get("lr"),
                                  "eta_seconds": row.get("eta_seconds")})
                if finished:
                    break
                time.sleep(poll_s)
        finally:
            stop_process_group(proc, timeout_s=30)  # the job is being stopped: stop the training with it
    if proc.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"training in {nproc} processes exited with {proc.returncode}: " + "\n".join(tail))
    return TrainResult.from_json(json.loads(result_path.read_text(encoding="utf-8")))
