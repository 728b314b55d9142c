"""ShoeSeg's predictor and training step against plain torchvision, side by side, in one run.

For each input size (shorter side 512 and 800 px, longer side capped at 1333) and each device (CPU, and the
GPU when there is one):

* inference ms/image: ``Predictor.predict`` (uint8 image in; boxes, full-size bool masks and polygons out)
  against a bare ``maskrcnn_resnet50_fpn`` forward on the same image and weights (uint8 -> float tensor,
  ``model([x])``);
* training s/iteration: ``shoeseg.optim.train_step`` (the loop body of ``shoeseg train``) against a minimal
  plain loop (``sum(model(images, targets).values()).backward(); optimizer.step()``) on the same batch of
  two images with the study's 512 ROIs per image;
* peak memory of each: the largest resident-set growth during the measurement on CPU (sampled every
  2 ms), ``torch.cuda.max_memory_allocated`` on the GPU.

Times are medians over repeats, the two paths interleaved so that machine load hits both alike.
Settings through the environment: ``SHOESEG_BENCH_SIZES`` (default ``512,800``), ``SHOESEG_BENCH_REPEATS``
(default 5), ``SHOESEG_BENCH_TRAIN_REPEATS`` (default 3), ``SHOESEG_BENCH_CHECKPOINT`` (a trained checkpoint,
so that detections and masks look like real ones; random weights otherwise), ``SHOESEG_BENCH_DEVICES``
(default: cpu, plus cuda when available).

Run: ``python -m bench model`` (or ``python bench/bench_model.py``).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoeseg.checkpoint import load_checkpoint  # noqa: E402
from shoeseg.model import build_model  # noqa: E402
from shoeseg.optim import train_step  # noqa: E402
from shoeseg.predict import Predictor  # noqa: E402

MAX_SIZE = 1333
SCORE_THRESH = 0.5


class PeakRSS:
    """Samples this process's resident set size in a thread; ``peak_mb`` is the growth over the start."""

    def __init__(self, period_s: float = 0.002) -> None:
        self.period_s = period_s
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def measure(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(seconds, peak memory MB) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t, (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakRSS() as mem:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
    return dt, mem.peak_mb


def interleaved(a: Callable[[], object], b: Callable[[], object], device: torch.device, repeats: int):
    a(), b()  # warm-up (allocator, oneDNN / cuDNN kernels)
    ta, tb, ma, mb = [], [], [], []
    for _ in range(repeats):
        for fn, ts, ms in ((a, ta, ma), (b, tb, mb)):
            t, m = measure(fn, device)
            ts.append(t)
            ms.append(m)
    return statistics.median(ta), statistics.median(tb), max(ma), max(mb)


def shoe_scene(height_px: int, width_px: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured background with two coloured shoe silhouettes, and their masks."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    img = 110 + 40 * np.sin(xx / 9.0)[..., None] + 30 * np.cos(yy / 13.0)[..., None] + rng.normal(0, 12, (height_px, width_px, 3))
    unit = np.array([(0, .55), (.04, .32), (.16, .22), (.3, .02), (.5, 0), (.56, .26), (.72, .38), (.9, .5), (1, .68),
                     (1, .86), (.94, 1), (.06, 1), (0, .88)])
    masks = []
    for k in range(2):
        w, h = 0.4 * width_px, 0.22 * width_px
        x0, y0 = (0.05 + 0.5 * k) * width_px, (0.3 + 0.2 * k) * height_px
        pts = np.round(np.column_stack([x0 + unit[:, 0] * w, y0 + unit[:, 1] * h])).astype(np.int32)
        m = np.zeros((height_px, width_px), np.uint8)
        cv2.fillPoly(m, [pts], 1)
        img[m.astype(bool)] = rng.uniform(0, 255, 3)
        masks.append(m.astype(bool))
    return np.clip(img, 0, 255).astype(np.uint8), masks


def models_for(size: int, device: torch.device, checkpoint: str | None):
    """Our model (build_model) and torchvision's own builder with the same weights (for a Lite family, which
    torchvision cannot build, a copy of ours: its bare ``model([x])`` and plain loop are then the reference)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    if checkpoint:
        ours = load_checkpoint(checkpoint).model
        state = ours.state_dict()
        norm = ours.shoeseg_config.norm
    else:
        torch.manual_seed(0)
        ours = build_model(num_classes=1, weights=None)
        state, norm = ours.state_dict(), "bn"
    for m in (ours,):
        m.transform.min_size = (size,)
        m.transform.max_size = MAX_SIZE
        m.roi_heads.fg_bg_sampler.batch_size_per_image = 512
    if ours.shoeseg_config.arch != "r50-fpn":  # torchvision has no builder of a Lite family: the same network
        import copy

        return ours.to(device), copy.deepcopy(ours).to(device)
    plain = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, min_size=size, max_size=MAX_SIZE,
                                  box_batch_size_per_image=512, trainable_backbone_layers=5 if norm == "bn" else 3)
    if norm == "frozen_bn":
        from torchvision.ops import FrozenBatchNorm2d

        plain.backbone.body = _swap_bn(plain.backbone.body, FrozenBatchNorm2d)
    plain.load_state_dict(state, strict=False)
    return ours.to(device), plain.to(device)


def _swap_bn(module, frozen_cls):
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, frozen_cls(child.num_features, eps=0.0))
        else:
            _swap_bn(child, frozen_cls)
    return module


def bench_inference(size: int, device: torch.device, repeats: int, checkpoint: str | None) -> dict:
    h, w = size, round(size * 4 / 3)
    image, _ = shoe_scene(h, w)
    ours, plain = models_for(size, device, checkpoint)
    plain.eval()
    plain.roi_heads.score_thresh = SCORE_THRESH
    predictor = Predictor(ours, class_names=["shoe"], device=device, score_thresh=SCORE_THRESH, batch_size=1)
    n_dets = []

    def run_ours():
        n_dets.append(len(predictor.predict([image])[0]))

    def run_plain():
        with torch.inference_mode():
            x = torch.from_numpy(image).to(device).permute(2, 0, 1).float().div_(255)
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    plain([x])
            else:
                plain([x])

    t_ours, t_plain, m_ours, m_plain = interleaved(run_ours, run_plain, device, repeats)
    return {"ours": t_ours, "plain": t_plain, "mem_ours": m_ours, "mem_plain": m_plain, "dets": max(n_dets),
            "wh": (w, h)}


def bench_training(size: int, device: torch.device, repeats: int, checkpoint: str | None) -> dict:
    h, w = size, round(size * 4 / 3)
    batch = []
    for seed in (1, 2):
        image, masks = shoe_scene(h, w, seed)
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.ones(len(masks), dtype=torch.int64),
                  "masks": torch.from_numpy(np.stack(masks).astype(np.uint8))}
        batch.append((torch.from_numpy(image).permute(2, 0, 1).float().div(255), target))
    images = [b[0].to(device) for b in batch]
    targets = [{k: v.to(device) for k, v in b[1].items()} for b in batch]
    ours, plain = models_for(size, device, checkpoint)
    ours.train()
    plain.train()
    amp = device.type == "cuda"
    p_ours = [p for p in ours.parameters() if p.requires_grad]
    p_plain = [p for p in plain.parameters() if p.requires_grad]
    # Learning rate 0: the optimiser does all its work but the weights stay put, so that both models keep
    # making the same proposals and every repeat costs the same (diverging weights change the mask head's
    # share of positive ROIs).
    opt_ours = torch.optim.SGD(p_ours, lr=0.0, momentum=0.9, weight_decay=1e-4)
    opt_plain = torch.optim.SGD(p_plain, lr=0.0, momentum=0.9, weight_decay=1e-4)
    scaler_ours = torch.amp.GradScaler("cuda", enabled=amp)
    scaler_plain = torch.amp.GradScaler("cuda", enabled=amp)

    def run_ours():
        train_step(ours, images, targets, optimizer=opt_ours, scaler=scaler_ours, params=p_ours, amp=amp)

    def run_plain():
        if amp:
            with torch.autocast("cuda", dtype=torch.float16):
                loss = sum(plain(images, targets).values())
            opt_plain.zero_grad()
            scaler_plain.scale(loss).backward()
            scaler_plain.step(opt_plain)
            scaler_plain.update()
        else:
            loss = sum(plain(images, targets).values())
            opt_plain.zero_grad()
            loss.backward()
            opt_plain.step()

    t_ours, t_plain, m_ours, m_plain = interleaved(run_ours, run_plain, device, repeats)
    return {"ours": t_ours, "plain": t_plain, "mem_ours": m_ours, "mem_plain": m_plain, "wh": (w, h)}


def _devices() -> list[torch.device]:
    names = os.environ.get("SHOESEG_BENCH_DEVICES")
    if names:
        return [torch.device(n.strip()) for n in names.split(",") if n.strip()]
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _size(r: dict) -> str:
    return f"{r['wh'][0]:>5}x{r['wh'][1]:<4}"


def _costs(r: dict, w_plain: int, w_ours: int) -> str:
    """The overhead of ours over the plain loop and both peaks, as table cells."""
    return (f"{(r['ours'] / r['plain'] - 1) * 100:>8.1f}% {r['mem_plain']:>{w_plain}.0f} "
            f"{r['mem_ours']:>{w_ours}.0f}")


def main() -> None:
    sizes = [int(s) for s in os.environ.get("SHOESEG_BENCH_SIZES", "512,800").split(",")]
    repeats = int(os.environ.get("SHOESEG_BENCH_REPEATS", "5"))
    train_repeats = int(os.environ.get("SHOESEG_BENCH_TRAIN_REPEATS", "3"))
    checkpoint = os.environ.get("SHOESEG_BENCH_CHECKPOINT") or None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; weights: "
          f"{checkpoint or 'random (set SHOESEG_BENCH_CHECKPOINT for a trained model)'}; "
          f"{repeats} inference / {train_repeats} training repeats, medians", flush=True)
    for device in _devices():
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"\nInference, {name} (score threshold {SCORE_THRESH}; ours includes masks to numpy and polygons)")
        print(f"{'size':>10} {'dets':>5} {'torchvision ms':>15} {'shoeseg ms':>11} {'overhead':>9} "
              f"{'tv peak MB':>11} {'shoeseg peak MB':>16}")
        for size in sizes:
            r = bench_inference(size, device, repeats, checkpoint)
            print(f"{_size(r)} {r['dets']:>5} {r['plain'] * 1e3:>15.1f} {r['ours'] * 1e3:>11.1f} {_costs(r, 11, 16)}",
                  flush=True)
        print(f"\nTraining step, {name} (2 images per batch, 512 ROIs per image)")
        print(f"{'size':>10} {'plain loop s/it':>16} {'train_step s/it':>16} {'overhead':>9} "
              f"{'plain peak MB':>14} {'ours peak MB':>13}")
        for size in sizes:
            r = bench_training(size, device, train_repeats, checkpoint)
            print(f"{_size(r)} {r['plain']:>16.2f} {r['ours']:>16.2f} {_costs(r, 14, 13)}", flush=True)
    print("\nTargets: inference overhead <= 10%, training overhead <= 5%.")


if __name__ == "__main__":
    main()
