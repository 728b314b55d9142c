"""Training Mask R-CNN (every family of :mod:`shoeseg.model`) with detectron2's recipe vocabulary.

The recipe: 600 iterations (``MAX_ITER``), 2 images per batch (``IMS_PER_BATCH``), 512 ROIs per image
(``ROI_HEADS.BATCH_SIZE_PER_IMAGE``), SGD with momentum (or AdamW), a linear warm-up and step decay of the
learning rate.
Losses are reported under detectron2's names: ``total_loss``, ``loss_cls``, ``loss_box_reg``, ``loss_mask``,
``loss_rpn_cls``, ``loss_rpn_loc``.

A run directory holds ``model.pt`` (the checkpoint), ``metrics.jsonl`` (one row per log period),
``split.json`` (the images trained and validated on) and ``loss_curve.png``.

Under torchrun (``WORLD_SIZE`` > 1) the same run is shared by several processes with DistributedDataParallel;
``ims_per_batch`` stays the global batch and only rank 0 writes the run directory (see
:mod:`shoeseg.distributed`).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoeseg.data import (
    ShoeDataset,
    calibration_images,
    collate,
    image_key,
    resolve_image_path,
    train_transforms,
    with_copy_paste,
)
from shoeseg.device import configure_for_speed, resolve_device
from shoeseg.losses import LOSS_KEYS
from shoeseg.model import ModelSettings
from shoeseg.optim import OPTIMIZERS, WeightAverage, make_optimizer, train_step
from via_tools.files import atomic_write_text
from via_tools.images import ImageReadError
from via_tools.model import AnnotationSet

log = logging.getLogger(__name__)

#: A run with a time budget (``TrainConfig.time_budget_s``) fits its schedule again after every this many
#: iterations, at the pace of the last ones (an iteration gets slower as the heads find more shoes to learn from).
BUDGET_PROBE_ITERS = 10

@dataclass(frozen=True)
class TrainConfig(ModelSettings):
    """Training settings, named after detectron2's config keys.

    The network's settings (``arch``, ``min_size`` / ``max_size``, ``roi_batch_size_per_image``,
    ``trainable_backbone_layers`` and the serving settings the checkpoint stores: ``rpn_post_nms_top_n_test``,
    ``box_detections_per_img``, ``int8_box_head``, ``flip_tta``) are fields of this class too, declared once
    in :class:`shoeseg.model.ModelSettings`. The others:

    Args:
        iters: iterations to run (``SOLVER.MAX_ITER``); the study ran 600.
        ims_per_batch: images per iteration (``SOLVER.IMS_PER_BATCH``), over all processes: under torchrun
            each of N processes takes ``ims_per_batch / N`` (a multiple of N is required).
        base_lr: learning rate after warm-up (``SOLVER.BASE_LR``; 0.00025 as in detectron2's fine-tuning
            tutorial; training from random weights wants more).
        optimizer: ``sgd`` (detectron2's) or ``adamw`` (decoupled weight decay; wants a base_lr near 1e-4).
        momentum / weight_decay: SGD's momentum (AdamW's beta1 stays 0.9) and the weight decay (detectron2's
            defaults for SGD).
        ema_decay: keep an exponential moving average of the weights (decay per iteration, ramped up over
            the first iterations as ``min(decay, (1 + t) / (10 + t))``) and save and evaluate it instead
            of the last weights; 0 disables.
        warmup_iters / warmup_factor: linear warm-up from ``base_lr * warmup_factor``.
        steps: iterations at which the learning rate is multiplied by ``gamma`` (``SOLVER.STEPS``); ``None``
            means 75% and 90% of ``iters``.
        gamma: the decay factor.
        scale_jitter: the shorter side is drawn from ``min_size * [1 - j, 1 + j]`` (5 choices); 0 disables.
        flip / photometric: horizontal flips and brightness/contrast/saturation jitter.
        device: ``auto``, ``cpu`` or ``cuda``.
        weights: starting weights when ``init_from`` is not given: ``auto`` (COCO R50-FPN when it can be had,
            else the ImageNet-pretrained lite2-fpn), ``coco``, ``imagenet``, ``none`` or a path.
        copy_paste: probability of Simple Copy-Paste per training image (0: off).
        init_from: a ShoeSeg checkpoint to fine-tune (its version becomes the parent version).
        log_period: iterations between log lines and ``metrics.jsonl`` rows (``window`` medians).
        seed: seeds Python, NumPy and torch (data order, augmentation, sampling).
        num_workers: data-loading processes; ``None``: 0 on CPU, up to 4 on CUDA.
        amp: mixed precision on CUDA.
        clip_grad_norm: clip the gradients' total norm to this (``SOLVER.CLIP_GRADIENTS``); ``None``: off.
        progress_bar: show a tqdm bar.
        time_budget_s: training seconds the run may take (0: no budget). Every :data:`BUDGET_PROBE_ITERS`
            iterations the schedule is cut to what fits in the rest of the budget at the seconds per iteration of
            the last ones (:func:`shoeseg.budget.budget_iters`), never below half of ``iters``; the step decay
            follows the shorter schedule (a cut only moves it earlier). The worker gives a full training
            ``SHOESEG_TRAIN_BUDGET_S``, so the first pre-labels come in about the same time on a slower machine
            (fewer iterations; idle-time training continues them).
    """

    iters: int = 600
    ims_per_batch: int = 2
    base_lr: float = 0.00025
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ema_decay: float = 0.0
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    steps: tuple[int, ...] | None = None
    gamma: float = 0.1
    scale_jitter: float = 0.1
    flip: bool = True
    photometric: bool = True
    device: str = "auto"
    weights: str | None = "auto"
    copy_paste: float = 0.0
    init_from: str | None = None
    log_period: int = 20
    seed: int = 0
    num_workers: int | None = None
    amp: bool = True
    clip_grad_norm: float | None = None
    progress_bar: bool = True
    time_budget_s: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iters < 1:
            raise ValueError(f"iters must be at least 1, got {self.iters}")
        if self.ims_per_batch < 1:
            raise ValueError(f"ims_per_batch must be at least 1, got {self.ims_per_batch}")
        if not (self.base_lr > 0 and math.isfinite(self.base_lr)):
            raise ValueError(f"base_lr must be a positive number, got {self.base_lr}")
        object.__setattr__(self, "optimizer", str(self.optimizer).lower())  # frozen: set once, here
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.copy_paste <= 1.0:
            raise ValueError(f"copy_paste must be a probability in 0..1, got {self.copy_paste}")
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(sorted(int(s) for s in self.steps)))
        object.__setattr__(self, "log_period", max(1, int(self.log_period)))
        if not (self.time_budget_s >= 0 and math.isfinite(self.time_budget_s)):
            raise ValueError(f"time_budget_s must be 0 (no budget) or a positive number of seconds, "
                             f"got {self.time_budget_s}")

    @classmethod
    def for_profile(cls, profile: str = "auto", *, device: str = "auto", **overrides: Any) -> TrainConfig:
        """A configuration from a named recipe (:data:`PROFILES`), explicit ``overrides`` winning.

        ``auto`` is ``gpu`` on CUDA and ``cpu`` otherwise. Explicit weights choose their family: ``coco``
        means ``r50-fpn``, a checkpoint path its own.

        Example:
            >>> TrainConfig.for_profile("cpu").roi_batch_size_per_image
            128
            >>> TrainConfig.for_profile("study", iters=50).iters
            50
        """
        if profile == "auto":
            profile = "gpu" if resolve_device(device).type == "cuda" else "cpu"
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r} (known: auto, {', '.join(PROFILES)})")
        given = {k: v for k, v in overrides.items() if v is not None}
        fields = {**PROFILES[profile], "device": device, **given}
        weights = str(given.get("weights", "")).lower()
        if "arch" not in given and weights not in ("", "auto", "none", "random", "imagenet"):
            # explicit weights name their family: COCO is r50-fpn's, a checkpoint keeps its own
            fields["arch"] = "r50-fpn" if weights == "coco" else None
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training settings {unknown}")
        return cls(**fields)

    def resolved_steps(self) -> tuple[int, ...]:
        if self.steps is not None:
            return self.steps
        return tuple(sorted({max(1, round(self.iters * 0.75)), max(1, round(self.iters * 0.9))}))

    def lr_factor(self, iteration: int) -> float:
        """Learning-rate multiplier at ``iteration`` (warm-up times step decay)."""
        warm = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warm = self.warmup_factor * (1 - alpha) + alpha
        return warm * self.gamma ** bisect.bisect_right(self.resolved_steps(), iteration)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.resolved_steps())
        return d


#: Named recipes (``shoeseg train --profile``); explicit settings override them.
#:
#: * ``study``: the study's recipe, unchanged: R50-FPN from COCO, 600 iterations, 512 ROIs, 800/1333 px.
#: * ``cpu``: the best pre-labels measured within about 15 minutes on 2 cores without a network
#:   (``python -m bench quality``, docs/real-data.md): lite2-fpn from its packaged ImageNet weights, 128 ROIs,
#:   multi-scale 320-448 px, AdamW at 2e-4 (weight decay 0.05) with warm-up and gradient-norm clip 5, 200
#:   iterations of 2 images: mask AP 0.43 on held-out shoes (two seeds) in 13-14 minutes on the slower of the
#:   machines measured, against 0.35 for SGD at 0.005 over 250 iterations (0.01 diverged). Served with 100
#:   proposals, 20 detections and a dynamic-int8 box head: the same AP as torchvision's 1000 / 100 in float,
#:   in half the time or less. Trained with the boundary term in the mask loss (``mask_boundary_weight`` 1, two
#:   seeds: mask AP +0.028 / +0.032, shoes within IoU 0.85 from 24 / 29 % to 36 / 47 %, at no cost in time).
#: * ``gpu``: the study's schedule and sizes (600 iterations, 512 ROIs, 800 / 1333 px) with ``auto`` weights,
#:   mixed precision (``amp``, on CUDA only) and the optimizer the CPU measurements found best (AdamW at 2e-4,
#:   weight decay 0.05: mask AP 0.43 against SGD's 0.35 on lite2-fpn). Not measured on a GPU: no GPU machine
#:   was available; SGD at 0.005 remains a flag away (``--optimizer sgd --base-lr 0.005``).
PROFILES: dict[str, dict[str, Any]] = {
    "study": {"weights": "coco", "arch": "r50-fpn", "iters": 600, "ims_per_batch": 2, "base_lr": 0.00025,
              "roi_batch_size_per_image": 512, "min_size": 800, "max_size": 1333, "amp": True},
    "cpu": {"weights": "auto", "arch": "lite2-fpn", "iters": 200, "ims_per_batch": 2, "optimizer": "adamw",
            "base_lr": 2e-4, "weight_decay": 0.05, "warmup_iters": 50, "roi_batch_size_per_image": 128,
            "min_size": 384, "max_size": 640,
            "scale_jitter": 1 / 6, "clip_grad_norm": 5.0, "rpn_post_nms_top_n_test": 100,
            "box_detections_per_img": 20, "int8_box_head": True, "amp": False, "mask_boundary_weight": 1.0},
    "gpu": {"weights": "auto", "iters": 600, "ims_per_batch": 4, "optimizer": "adamw", "base_lr": 2e-4,
            "weight_decay": 0.05, "warmup_iters": 100, "roi_batch_size_per_image": 512, "min_size": 800,
            "max_size": 1333, "clip_grad_norm": 5.0, "amp": True},
}


class TrainingStopped(Exception):
    """A run stopped early because its ``should_stop`` asked it to (``iterations``: the ones done)."""

    def __init__(self, iterations: int) -> None:
        super().__init__(f"training stopped after {iterations} iteration(s)")
        self.iterations = iterations


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        checkpoint: the saved ``model.pt``.
        metrics: the ``metrics.jsonl`` rows.
        run_dir: the run directory.
        version: the checkpoint's version id.
        class_names: the classes trained.
        eval: the validation result (``EvalResult``) when a validation set was given.
        loss_plot: the loss-curve PNG.
        wall_s: training time in seconds.
    """

    checkpoint: Path
    metrics: list[dict[str, Any]]
    run_dir: Path
    version: str
    class_names: list[str]
    eval: Any = None
    loss_plot: Path | None = None
    wall_s: float = 0.0
    final_metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (rank 0 of ``shoeseg train --result FILE`` writes it; :meth:`from_json` reads it)."""
        ev = self.eval
        return {
            "checkpoint": str(self.checkpoint),
            "run_dir": str(self.run_dir),
            "version": self.version,
            "class_names": list(self.class_names),
            "metrics": list(self.metrics),
            "final_metrics": dict(self.final_metrics),
            "loss_plot": str(self.loss_plot) if self.loss_plot else None,
            "wall_s": self.wall_s,
            "eval": None if ev is None else {"metrics": ev.metrics, "losses": ev.losses, "n_images": ev.n_images,
                                             "n_instances": ev.n_instances, "per_image": ev.per_image},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainResult:
        """The result :meth:`to_json` wrote (the worker reads a torchrun training's result back this way)."""
        from shoeseg.evaluate import EvalResult

        ev = data.get("eval")
        return cls(
            checkpoint=Path(data["checkpoint"]),
            metrics=list(data["metrics"]),
            run_dir=Path(data["run_dir"]),
            version=data["version"],
            class_names=list(data["class_names"]),
            eval=None if ev is None else EvalResult(
                metrics=dict(ev["metrics"]), losses=dict(ev.get("losses") or {}),
                per_image=list(ev.get("per_image") or []), n_images=int(ev.get("n_images", 0)),
                n_instances=int(ev.get("n_instances", 0))),
            loss_plot=Path(data["loss_plot"]) if data.get("loss_plot") else None,
            wall_s=float(data.get("wall_s", 0.0)),
            final_metrics=dict(data.get("final_metrics") or {}),
        )


def _check_images(ds: AnnotationSet, images_dir: Path, *, what: str) -> None:
    missing = []
    for r in ds.images:
        try:
            resolve_image_path(images_dir, r)
        except ImageReadError as e:
            missing.append(str(e))
    if missing:
        raise ImageReadError(f"{len(missing)} {what} image(s) cannot be found in {images_dir}: " + "; ".join(missing[:5]))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _infinite(loader, sampler=None):
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)  # a DistributedSampler reshuffles each pass, the same way on every rank
        yield from loader
        epoch += 1


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def _class_names_for(dataset: AnnotationSet, parent_classes: list[str] | None) -> list[str]:
    labels = list(dataset.labels) or dataset.collect_labels()
    if parent_classes and set(labels) <= set(parent_classes):
        return list(parent_classes)
    return labels


def train(
    config: TrainConfig,
    *,
    dataset: AnnotationSet,
    images_dir: str | Path,
    out_dir: str | Path,
    val_dataset: AnnotationSet | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    split: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult | None:
    """Trains a model and writes a run directory.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) every process calls this with the same arguments:
    they train one model together (DistributedDataParallel, ``config.ims_per_batch`` split over the
    processes) and rank 0 alone writes the run directory, evaluates and returns the result
    (:mod:`shoeseg.distributed`).

    Args:
        config: the recipe.
        dataset: training annotations (images resolved as ``images_dir / file_name``).
        images_dir: the image folder.
        out_dir: the run directory (created).
        val_dataset: evaluated at the end (COCO AP and losses); its metrics go into the checkpoint.
        progress: called every ``log_period`` iterations with ``{"iteration", "max_iter", "losses", "lr",
            "eta_seconds"}`` (the worker stores it in the RQ job's meta); on rank 0 only.
        split: the split to record in ``split.json`` (default: the file names of ``dataset`` and
            ``val_dataset``).
        should_stop: asked after every iteration; when it answers True the run stops there and raises
            :class:`TrainingStopped` (the worker's idle-time training yields to labelled work this way).

    Returns:
        A :class:`TrainResult`; ``None`` on the ranks other than 0 of a run of several processes.

    Raises:
        FloatingPointError: a loss became NaN or infinite (the message names the iteration and losses).
        TrainingStopped: ``should_stop`` asked the run to stop; nothing is saved.
        ImageReadError / ValueError: missing images, bad annotations, no instances, a global batch that the
            processes cannot share evenly.
        WeightsUnavailableError: ``weights="coco"`` offline without a cached copy.

    Example:
        >>> cfg = TrainConfig(iters=300, min_size=256, max_size=426, weights="none", base_lr=0.01)
        >>> result = train(cfg, dataset=ds, images_dir="images", out_dir="runs/shoes")  # doctest: +SKIP
        >>> result.checkpoint  # doctest: +SKIP
        PosixPath('runs/shoes/model.pt')
    """
    from shoeseg import distributed

    t_start = time.perf_counter()
    images_dir = Path(images_dir)
    run_dir = Path(out_dir)
    if len(dataset) == 0:
        raise ValueError("the training set has no images")
    if dataset.count_instances() == 0:
        raise ValueError("the training set has no labelled instances (polygons)")
    _check_images(dataset, images_dir, what="training")
    if val_dataset is not None and len(val_dataset):
        _check_images(val_dataset, images_dir, what="validation")
    denv = distributed.DistEnv.from_env()
    ims_per_process = distributed.per_process_batch(config.ims_per_batch, denv.world_size)
    device = distributed.device_for(config.device, denv)
    with distributed.process_group(denv, device):
        return _train(config, denv=denv, device=device, ims_per_process=ims_per_process, dataset=dataset,
                      images_dir=images_dir, run_dir=run_dir, val_dataset=val_dataset, progress=progress,
                      split=split, t_start=t_start, should_stop=should_stop)


def _train(
    config: TrainConfig,
    *,
    denv,
    device: torch.device,
    ims_per_process: int,
    dataset: AnnotationSet,
    images_dir: Path,
    run_dir: Path,
    val_dataset: AnnotationSet | None,
    progress: Callable[[dict[str, Any]], None] | None,
    split: dict[str, Any] | None,
    t_start: float,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult | None:
    from shoeseg import distributed
    from shoeseg.checkpoint import read_checkpoint_meta, save_checkpoint
    from shoeseg.model import ModelConfig, build_model
    from shoeseg.visualize import plot_losses

    main = denv.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    _seed_all(config.seed)
    configure_for_speed(device)
    use_amp = config.amp and device.type == "cuda"

    start_weights = config.init_from or config.weights
    parent_version, parent_classes = None, None
    if start_weights and str(start_weights).lower() not in ("none", "coco", "random", "auto", "imagenet"):
        try:
            meta = read_checkpoint_meta(start_weights)
            parent_version, parent_classes = meta["version"], list(meta["class_names"])
        except ValueError:
            pass  # a plain state dict: no parent
    class_names = _class_names_for(dataset, parent_classes)
    with distributed.local_main_first(denv, device):  # one download of the starting weights per machine
        # fine-tuning continues in the checkpoint's family
        model_config = ModelConfig.from_settings(config, num_classes=len(class_names),
                                                 arch=None if config.init_from else config.arch)
        model = build_model(model_config, weights=start_weights)
    start = model.shoeseg_start
    # The dataset's transforms resize (with scale jitter); the model must not undo it while training.
    model.transform._skip_resize = True
    model.to(device).train()
    core = model
    model = distributed.wrap(model, denv, device)  # DistributedDataParallel when several processes train
    if denv.enabled:
        _seed_all(config.seed + denv.rank)  # the same weights everywhere, each rank its own augmentation

    train_ds = with_copy_paste(ShoeDataset(dataset, images_dir=images_dir, class_names=class_names,
                                           transforms=train_transforms(
        min_size=config.min_size, max_size=config.max_size, scale_jitter=config.scale_jitter,
        flip=config.flip, photometric=config.photometric)), config.copy_paste)
    num_workers = config.num_workers
    if num_workers is None:
        num_workers = min(4, max(1, (os.cpu_count() or 1) // denv.world_size)) if device.type == "cuda" else 0
    sampler = None
    if denv.enabled:
        # each rank its share of every (reshuffled) pass; the same order on every rank, given the same seed
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=denv.world_size, rank=denv.rank,
                                                      shuffle=True, seed=config.seed, drop_last=False)
    gen = torch.Generator().manual_seed(config.seed + denv.rank)
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=ims_per_process, shuffle=sampler is None, sampler=sampler, collate_fn=collate,
        num_workers=num_workers, generator=gen, pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config.optimizer, params, lr=config.base_lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    ema = WeightAverage(core, config.ema_decay) if config.ema_decay else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    reduce = distributed.mean_over_processes(denv)

    split = split or {"train": [image_key(r) for r in dataset.images],
                      "val": [image_key(r) for r in val_dataset.images] if val_dataset is not None else []}
    if main:
        _write_json_atomic(run_dir / "split.json", split)

    metrics_path = run_dir / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    window: dict[str, list[float]] = defaultdict(list)  # LOSS_KEYS, and the outline losses when trained
    data_iter = _infinite(loader, sampler)
    if main:
        log.info("training %d iterations on %s: %d images, classes %s, %d ROIs/image, %d-%d px", config.iters,
                 device, len(train_ds), class_names, config.roi_batch_size_per_image, config.min_size,
                 config.max_size)
    if denv.enabled:
        log.info("rank %d/%d on %s: %d of the %d images per iteration", denv.rank, denv.world_size, device,
                 ims_per_process, config.ims_per_batch)
    bar = None
    if config.progress_bar and main:
        from tqdm import tqdm

        bar = tqdm(total=config.iters, desc="train", unit="it", dynamic_ncols=True)
    steps_done = images_seen = 0
    t_loop = time.perf_counter()
    mfile = open(metrics_path, "w", encoding="utf-8") if main else None
    budget: dict[str, Any] | None = None
    t_probe, planned = 0.0, config.iters
    try:
        it = 0
        while it < config.iters:
            t_data = time.perf_counter()
            images, targets = next(data_iter)
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            data_time = time.perf_counter() - t_data
            lr = optimizer.param_groups[0]["lr"]
            try:
                losses = train_step(model, images, targets, optimizer=optimizer, scaler=scaler, params=params,
                                    amp=use_amp, clip_grad_norm=config.clip_grad_norm, reduce=reduce)
            except FloatingPointError as e:
                raise FloatingPointError(f"at iteration {it + 1}: {e}") from None
            scheduler.step()
            if ema is not None:
                ema.update()
            steps_done += 1
            images_seen += len(images)
            for k, v in losses.items():
                window[k].append(v)
            if bar is not None:
                bar.update(1)
            done = it = it + 1
            if done == 1:  # the first iteration loads and warms up: in the elapsed time, not in the pace
                t_probe = time.perf_counter() - t_loop
            if config.time_budget_s > 0 and done % BUDGET_PROBE_ITERS == 0 and done < config.iters:
                elapsed = time.perf_counter() - t_loop
                per_iter = (elapsed - t_probe) / (BUDGET_PROBE_ITERS - (done == BUDGET_PROBE_ITERS))
                config, budget = _fit_to_budget(config, denv=denv, device=device, done=done, planned=planned,
                                                per_iter=per_iter, elapsed_s=elapsed)
                t_probe = elapsed
                scheduler.lr_lambdas[0] = config.lr_factor  # the step decay follows the shorter schedule
                if bar is not None:
                    bar.total = config.iters
                    bar.refresh()
            if main and (done % config.log_period == 0 or done == config.iters):
                elapsed = time.perf_counter() - t_loop
                eta = elapsed / done * (config.iters - done)
                med = {k: statistics.median(v) for k, v in window.items() if v}
                row = {"iteration": done, **med, "lr": lr, "data_time": data_time,
                       "time": elapsed / done, "eta_seconds": eta}
                rows.append(row)
                mfile.write(json.dumps(row) + "\n")
                mfile.flush()
                log.info("iter %d/%d  %s  lr %.6g  eta %s", done, config.iters,
                         "  ".join(f"{k} {v:.4f}" for k, v in med.items()), lr, _fmt_eta(eta))
                if bar is not None:
                    bar.set_postfix(total_loss=f"{med['total_loss']:.3f}")
                if progress is not None:
                    progress({"iteration": done, "max_iter": config.iters, "losses": med, "lr": lr,
                              "eta_seconds": eta})
                window = defaultdict(list)
            if should_stop is not None and done < config.iters and should_stop():
                log.info("stopped after %d of %d iterations: asked to", done, config.iters)
                raise TrainingStopped(done)
    finally:
        if bar is not None:
            bar.close()
        if mfile is not None:
            mfile.close()
    train_s = time.perf_counter() - t_loop

    # every rank has stepped: the counts come back to rank 0 (an all-reduce, which is the barrier)
    counts = distributed.per_rank(denv, device, [steps_done, images_seen])
    if denv.enabled:
        log.info("rank %d/%d: %d iterations, %d images in %.1f s", denv.rank, denv.world_size, steps_done,
                 images_seen, train_s)
        if not main:
            return None

    plot_path = plot_losses(rows, run_dir / "loss_curve.png")
    if ema is not None:
        ema.copy_to_model()
        log.info("evaluating and saving the moving average of the weights (decay %g)", config.ema_decay)
    core.eval()
    final: dict[str, Any] = {"iterations": config.iters, "train_s": round(train_s, 2),
                             "train_losses": {k: rows[-1][k] for k in LOSS_KEYS if k in rows[-1]}}
    if budget is not None:
        final["time_budget"] = budget
    if denv.enabled:
        final["distributed"] = {
            "world_size": denv.world_size, "backend": distributed.backend_for(device),
            "ims_per_batch": config.ims_per_batch, "ims_per_process": ims_per_process,
            "iterations_per_rank": [int(c[0]) for c in counts], "images_per_rank": [int(c[1]) for c in counts],
        }
    eval_result, serve_thresh = None, None
    if val_dataset is not None and len(val_dataset):
        from shoeseg.evaluate import evaluate
        from shoeseg.predict import Predictor

        predictor = Predictor(core, class_names=class_names, device=device, score_thresh=0.05)
        eval_result = evaluate(predictor, val_dataset, images_dir=images_dir, per_image_ap=True,
                               choose_serve_thresh=True)
        final.update(eval_result.metrics)
        final["val_losses"] = eval_result.losses
        # the serving threshold: the least edit cost on the validation images (shoeseg.edits)
        serve_thresh = eval_result.score_choice.score_thresh
        final["annotator"] = eval_result.annotator.to_json()
        _write_json_atomic(run_dir / "eval.json", eval_result.to_json())
    core.transform._skip_resize = False
    ckpt_path = run_dir / "model.pt"
    version = save_checkpoint(ckpt_path, model=core, class_names=class_names, config=config.to_dict(),
                              metrics=final, parent_version=parent_version,
                              extra={"split": split, "start": start.to_dict()}, serve_score_thresh=serve_thresh,
                              calibration_images=calibration_images(dataset, images_dir=images_dir,
                                                                    fit=(config.min_size, config.max_size)))
    log.info("saved %s (version %s) after %.1f s", ckpt_path, version, time.perf_counter() - t_start)
    return TrainResult(checkpoint=ckpt_path, metrics=rows, run_dir=run_dir, version=version, class_names=class_names,
                       eval=eval_result, loss_plot=plot_path, wall_s=time.perf_counter() - t_start,
                       final_metrics=final)


def _fit_to_budget(config: TrainConfig, *, denv, device: torch.device, done: int, planned: int, per_iter: float,
                   elapsed_s: float) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` with its iterations cut to what fits in ``config.time_budget_s`` after ``done`` iterations took
    ``elapsed_s``, at ``per_iter`` seconds each, never below half the ``planned`` schedule; under torchrun the
    slowest process decides, so every rank cuts alike. Returns the config and what was decided."""
    from shoeseg import distributed
    from shoeseg.budget import budget_iters

    ranks = distributed.per_rank(denv, device, [per_iter, elapsed_s])
    per_iter, elapsed_s = max(r[0] for r in ranks), max(r[1] for r in ranks)
    iters = budget_iters(config.iters, seconds_per_iter=per_iter, budget_s=config.time_budget_s,
                         floor=max(done, planned // 2), done=done, elapsed_s=elapsed_s)
    decided = {"budget_s": config.time_budget_s, "planned_iters": planned, "iters": iters, "decided_at": done,
               "seconds_per_iter": round(per_iter, 3)}
    if iters < config.iters:
        log.info("%d iterations cut to %d after %d (%.0f s): a budget of %g s at %.2f s per iteration", config.iters,
                 iters, done, elapsed_s, config.time_budget_s, per_iter)
        config = replace(config, iters=iters)
    return config, decided


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"
