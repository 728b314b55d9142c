"""Training: the recipe's schedule, a short run whose losses fall, NaN handling, fine-tuning lineage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoeseg.checkpoint import load_checkpoint, read_calibration_images
from shoeseg.losses import LOSS_KEYS, detectron2_losses
from shoeseg.train import TrainConfig, train
from tests.synth import make_shoe_dataset

OVERFIT_ITERS = 80  # enough for the recipe below to reach IoU 0.77-0.90 on every shoe in trial runs
TINY = dict(min_size=64, max_size=80, roi_batch_size_per_image=32, warmup_iters=4, base_lr=0.01, clip_grad_norm=10.0,
            weights="none", device="cpu", progress_bar=False)


def test_recipe_defaults_and_learning_rate_schedule():
    cfg = TrainConfig()
    assert (cfg.iters, cfg.ims_per_batch, cfg.roi_batch_size_per_image, cfg.weights) == (600, 2, 512, "auto")
    assert cfg.resolved_steps() == (450, 540)
    s = TrainConfig(iters=100, warmup_iters=10, warmup_factor=0.001, gamma=0.1)
    assert s.lr_factor(0) == pytest.approx(0.001)
    assert s.lr_factor(5) == pytest.approx(0.5005)
    assert s.lr_factor(10) == s.lr_factor(74) == 1.0
    assert s.lr_factor(75) == pytest.approx(0.1) and s.lr_factor(95) == pytest.approx(0.01)
    assert TrainConfig(iters=100, steps=(60, 20), warmup_iters=0).lr_factor(30) == pytest.approx(0.1)
    for bad in [dict(iters=0), dict(ims_per_batch=0), dict(base_lr=-1.0), dict(min_size=100, max_size=50)]:
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_loss_names_follow_detectron2():
    out = detectron2_losses({"loss_classifier": 1.0, "loss_box_reg": 2.0, "loss_mask": 3.0, "loss_objectness": 4.0,
                             "loss_rpn_box_reg": 5.0})
    assert list(out) == list(LOSS_KEYS) and out["total_loss"] == 15.0 and out["loss_rpn_loc"] == 5.0


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    ds = make_shoe_dataset(d / "images", n_images=2, size_px=(64, 80), seed=11)
    calls = []
    cfg = TrainConfig(iters=16, log_period=4, seed=1, **TINY)
    result = train(cfg, dataset=ds, images_dir=d / "images", out_dir=d / "run", progress=calls.append)
    return result, calls, ds, d


def test_losses_fall_over_a_short_run(short_run):
    result, _, _, _ = short_run
    rows = result.metrics
    assert [r["iteration"] for r in rows] == [4, 8, 12, 16]
    first, last = rows[0], rows[-1]
    # From random weights the box classifier and RPN learn "background" within a few iterations;
    # the total falls by far more than the 15% asked here (about 2.8 -> 1.8 in trial runs).
    assert last["total_loss"] < 0.85 * first["total_loss"]
    assert last["loss_cls"] < first["loss_cls"]


def test_run_directory_and_progress_reports(short_run):
    result, calls, ds, d = short_run
    run = d / "run"
    assert {p.name for p in run.iterdir()} >= {"model.pt", "metrics.jsonl", "split.json", "loss_curve.png"}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.metrics
    assert set(LOSS_KEYS) <= set(lines[0]) and {"lr", "eta_seconds", "time"} <= set(lines[0])
    # the learning rate of each row's last iteration: warm-up (4 iterations), then decay at 12 and 14
    cfg = TrainConfig(iters=16, **TINY)
    assert [r["lr"] for r in lines] == pytest.approx([0.01 * cfg.lr_factor(i - 1) for i in (4, 8, 12, 16)])
    assert lines[0]["lr"] > 0.01 * cfg.lr_factor(0) and lines[-1]["lr"] == pytest.approx(0.0001)
    assert [c["iteration"] for c in calls] == [4, 8, 12, 16] and all(c["max_iter"] == 16 for c in calls)
    assert set(calls[0]) == {"iteration", "max_iter", "losses", "lr", "eta_seconds"}
    assert calls[-1]["eta_seconds"] == 0
    assert json.loads((run / "split.json").read_text())["train"] == [r.file_name for r in ds.images]
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.version == result.version and ckpt.class_names == ["shoe"] and ckpt.parent_version is None
    assert ckpt.config["iters"] == 16 and ckpt.config["roi_batch_size_per_image"] == 32
    assert ckpt.metrics["train_losses"]["total_loss"] == pytest.approx(result.metrics[-1]["total_loss"])
    assert ckpt.model_config.min_size == 64
    # the training images kept for calibrating a static int8 export, at the model's input size
    calibration = read_calibration_images(result.checkpoint)
    assert len(calibration) == len(ds.images)
    assert all(a.dtype == np.uint8 and a.shape[2] == 3 and min(a.shape[:2]) <= 64 for a in calibration)


def test_fine_tuning_from_a_checkpoint_records_its_parent(short_run):
    result, _, ds, d = short_run
    cfg = TrainConfig(iters=1, log_period=1, init_from=str(result.checkpoint), **TINY)
    child = train(cfg, dataset=ds, images_dir=d / "images", out_dir=d / "child")
    assert load_checkpoint(child.checkpoint).parent_version == result.version


def test_a_time_budget_cuts_the_schedule_after_its_probe_and_the_decay_follows(short_run):
    _, _, ds, d = short_run
    calls = []
    # a budget nothing fits in: cut to the floor, half the schedule, once BUDGET_PROBE_ITERS (10) have run
    cfg = TrainConfig(iters=30, log_period=5, time_budget_s=1e-6, **TINY)
    result = train(cfg, dataset=ds, images_dir=d / "images", out_dir=d / "budget", progress=calls.append)
    assert [r["iteration"] for r in result.metrics] == [5, 10, 15]
    assert [c["max_iter"] for c in calls] == [30, 15, 15]  # decided at iteration 10, before its report
    # the step decay of a 15-iteration schedule (steps 11 and 14), not of the 30 planned (22 and 27)
    assert result.metrics[-1]["lr"] == pytest.approx(0.01 * 0.1 ** 2)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.config["iters"] == 15 and ckpt.config["steps"] == [11, 14]
    budget = ckpt.metrics["time_budget"]
    assert (budget["planned_iters"], budget["iters"], budget["budget_s"], budget["decided_at"]) == (30, 15, 1e-6, 10)
    assert budget["seconds_per_iter"] > 0
    # a budget that fits: the schedule stands, and what was decided is recorded all the same
    roomy = train(TrainConfig(iters=12, log_period=6, time_budget_s=1e6, **TINY), dataset=ds,
                  images_dir=d / "images", out_dir=d / "roomy")
    assert [r["iteration"] for r in roomy.metrics] == [6, 12]
    assert roomy.final_metrics["time_budget"]["iters"] == 12
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(time_budget_s=-1)


def test_the_budget_is_fitted_again_at_the_pace_of_the_last_iterations_and_only_ever_shortens():
    import torch

    from shoeseg.distributed import DistEnv
    from shoeseg.train import _fit_to_budget

    def fit(cfg, **kw):
        return _fit_to_budget(cfg, denv=DistEnv(), device=torch.device("cpu"), planned=200, **kw)

    cfg = TrainConfig(iters=200, time_budget_s=780.0)
    # the first ten iterations are the cheap ones (few shoes found yet): 196 would fit at their pace ...
    cfg, decided = fit(cfg, done=10, per_iter=3.96, elapsed_s=40.0)
    assert cfg.iters == 196 and decided["seconds_per_iter"] == 3.96
    # ... later ones take 5.2 s: what is left of the budget fits 119 more after the 40 run
    cfg, decided = fit(cfg, done=40, per_iter=5.2, elapsed_s=160.0)
    assert (cfg.iters, decided["decided_at"], decided["planned_iters"]) == (159, 40, 200)
    assert cfg.resolved_steps() == (119, 143)
    # a faster stretch does not lengthen it again (the decay must not move back), and a spent budget stops it
    # where it is, never before half the plan
    assert fit(cfg, done=50, per_iter=1.0, elapsed_s=170.0)[0].iters == 159
    assert fit(cfg, done=120, per_iter=9.0, elapsed_s=900.0)[0].iters == 120
    assert fit(cfg, done=60, per_iter=9.0, elapsed_s=900.0)[0].iters == 100


def test_nan_losses_raise(short_run):
    _, _, ds, d = short_run
    cfg = TrainConfig(iters=6, log_period=1, **{**TINY, "base_lr": 1e12, "warmup_iters": 0, "clip_grad_norm": None})
    with pytest.raises(FloatingPointError, match="iteration"):
        train(cfg, dataset=ds, images_dir=d / "images", out_dir=d / "nan")


def test_bad_training_sets_are_refused(tmp_path):
    from via_tools.images import ImageReadError
    from via_tools.model import AnnotationSet, ImageRecord

    cfg = TrainConfig(iters=1, **TINY)
    with pytest.raises(ValueError, match="no images"):
        train(cfg, dataset=AnnotationSet(images=[]), images_dir=tmp_path, out_dir=tmp_path / "r")
    ds = make_shoe_dataset(tmp_path / "img", n_images=1, size_px=(64, 64), seed=0)
    with pytest.raises(ValueError, match="no labelled"):
        train(cfg, dataset=AnnotationSet(images=[ImageRecord(file_name="x.png")], labels=["shoe"]),
              images_dir=tmp_path, out_dir=tmp_path / "r")
    with pytest.raises(ImageReadError, match="shoe_000.png"):
        train(cfg, dataset=ds, images_dir=tmp_path / "elsewhere", out_dir=tmp_path / "r")


@pytest.mark.slow
def test_a_model_overfitted_on_two_images_finds_their_shoes_again(tmp_path):
    from shoeseg.geometry import mask_iou, polygons_to_mask
    from shoeseg.predict import Predictor
    from via_tools.images import read_image

    ds = make_shoe_dataset(tmp_path / "images", n_images=2, size_px=(64, 80), seed=3)
    assert ds.count_instances() == 3
    cfg = TrainConfig(iters=OVERFIT_ITERS, log_period=10, seed=0, scale_jitter=0.0, photometric=False,
                      **{**TINY, "base_lr": 0.02, "warmup_iters": 5})
    result = train(cfg, dataset=ds, images_dir=tmp_path / "images", out_dir=tmp_path / "run")
    predictor = Predictor.from_checkpoint(result.checkpoint, device="cpu", score_thresh=0.5)
    for rec in ds.images:
        image = read_image(tmp_path / "images" / rec.file_name)
        dets = predictor.predict([image])[0]
        for region in rec.instances:
            truth = polygons_to_mask(region.polygons, 64, 80)
            best = max((mask_iou(truth, d.mask) for d in dets), default=0.0)
            # Threshold 0.5, COCO's loosest match (AP50). The shoes are small (230-1900 px): a one-pixel
            # error all along a 15x25 px outline alone costs ~0.15 IoU. An untrained model's best match,
            # even among 75-89 detections at score 0.5, stays at 0.39 or below (3 seeds tried), so
            # passing needs real learning.
            assert best >= 0.5, (rec.file_name, region.region_id, best)


def test_weight_average_follows_the_formula_and_skips_frozen_parameters():
    import torch

    from shoeseg.optim import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[0].weight.requires_grad_(False)
    frozen = net[0].weight.detach().clone()
    start = net[1].weight.detach().clone()
    ema = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net[1].weight.add_(1.0)
        net[0].weight.add_(7.0)  # frozen: never averaged, whatever happens to it
    ema.update()  # update 0: d = min(0.5, 1/10) = 0.1, the average moves 90 % of the way
    with torch.no_grad():
        net[1].weight.add_(1.0)
    ema.update()  # update 1: d = min(0.5, 2/11)
    d1 = 2 / 11
    expected = ((start * 0.1 + (start + 1) * 0.9) * d1 + (start + 2) * (1 - d1))
    ema.copy_to_model()
    assert torch.allclose(net[1].weight, expected)
    assert torch.equal(net[0].weight, frozen + 7.0)


def test_optimizer_and_average_settings_are_checked_and_used(tmp_path, monkeypatch):
    import torch

    from shoeseg.optim import WeightAverage, make_optimizer

    p = [torch.nn.Parameter(torch.zeros(2))]
    adamw = make_optimizer("AdamW", p, lr=1e-4, momentum=0.8, weight_decay=0.01)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.999) and adamw.param_groups[0]["lr"] == 1e-4
    sgd = make_optimizer("sgd", p, lr=0.005, momentum=0.9, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        make_optimizer("lamb", p, lr=1e-4, momentum=0.9, weight_decay=0.0)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)

    averages = []
    real_init = WeightAverage.__init__

    def keep(self, *args, **kwargs):  # the real class, remembered so that its average can be compared
        real_init(self, *args, **kwargs)
        averages.append(self)

    last_step = []
    real_copy = WeightAverage.copy_to_model

    def copy(self):
        last_step.append([p.detach().clone() for p in self._live])
        real_copy(self)

    monkeypatch.setattr(WeightAverage, "__init__", keep)
    monkeypatch.setattr(WeightAverage, "copy_to_model", copy)
    ds = make_shoe_dataset(tmp_path / "images", n_images=2, size_px=(64, 80), seed=11)
    cfg = TrainConfig(iters=6, log_period=3, seed=1, **{**TINY, "base_lr": 1e-3}, optimizer="adamw", ema_decay=0.9)
    result = train(cfg, dataset=ds, images_dir=tmp_path / "images", out_dir=tmp_path / "run")
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.config["optimizer"] == "adamw" and ckpt.config["ema_decay"] == 0.9
    (ema,) = averages
    assert ema.updates == 6
    saved = [p for p in ckpt.model.parameters() if p.requires_grad]
    assert len(saved) == len(ema.shadow)
    assert all(torch.equal(a, b) for a, b in zip(saved, ema.shadow, strict=True))  # the average was saved
    # and it is not the last step's weights, which the real copy replaced
    assert any(not torch.equal(a, b) for a, b in zip(last_step[0], ema.shadow, strict=True))
