"""Model families: each builds, trains, saves, reloads through the registry and serves through the backend;
the offline start (``--weights auto``), the packaged ImageNet weights, and the recipes (profiles)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from shoeseg import model as model_mod
from shoeseg.backbones import PLANS, EfficientNetLiteBody, imagenet_weights_path
from shoeseg.checkpoint import load_checkpoint, save_checkpoint
from shoeseg.model import ARCHS, build_model, resolve_start
from shoeseg.train import PROFILES, TrainConfig, train
from tests.helpers import POLYGON_CONFIG, jpeg_bytes
from tests.synth import make_shoe_dataset

TINY = dict(min_size=64, max_size=80, roi_batch_size_per_image=32, warmup_iters=2, base_lr=0.005, clip_grad_norm=5.0,
            device="cpu", progress_bar=False, log_period=1)


@pytest.fixture(scope="module")
def shoes(tmp_path_factory):
    d = tmp_path_factory.mktemp("families")
    return make_shoe_dataset(d / "images", n_images=2, size_px=(64, 80), seed=5), d


@pytest.mark.parametrize(("arch", "weights"), [("r50-fpn", "none"), ("lite0-fpn", "imagenet"), ("lite2-fpn", "imagenet")])
def test_each_family_trains_reloads_through_the_registry_and_serves(shoes, tmp_path, arch, weights):
    from backend.app import create_app
    from shoeseg_services.registry import ModelRegistry
    from shoeseg_services.settings import Settings

    ds, d = shoes
    cfg = TrainConfig(iters=3, arch=arch, weights=weights, **TINY)
    result = train(cfg, dataset=ds, images_dir=d / "images", out_dir=tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in result.metrics)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.model_config.arch == arch
    assert ckpt.extra["start"]["arch"] == arch and ckpt.extra["start"]["weights"] == (None if weights == "none" else weights)
    reg = ModelRegistry(tmp_path / "models")
    reg.register(result.checkpoint, metrics={}, parent=None, meta={})
    reg.promote(result.version)
    # fine-tuning from it continues in its family
    child = train(TrainConfig(iters=1, init_from=str(reg.current().checkpoint), **TINY), dataset=ds,
                  images_dir=d / "images", out_dir=tmp_path / "child")
    assert load_checkpoint(child.checkpoint).model_config.arch == arch
    settings = Settings(model_dir=reg.root, device="cpu", reload_interval_s=0.0, score_thresh=0.0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["model_version"] == result.version
        uri = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(80, 64)).decode()
        r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": uri}}], "label_config": POLYGON_CONFIG})
        assert r.status_code == 200 and "error" not in r.json()["results"][0]
        assert r.json()["results"][0]["model_version"] == result.version


@pytest.mark.parametrize("size", sorted(PLANS))
def test_the_packaged_imagenet_weights_fill_the_body(size):
    from torchvision.ops import FrozenBatchNorm2d

    model = build_model(num_classes=1, arch=f"{size}-fpn", weights="imagenet", min_size=64, max_size=64)
    state = torch.load(imagenet_weights_path(size), map_location="cpu", weights_only=True)
    body = model.backbone.body
    assert isinstance(body, EfficientNetLiteBody)
    for name, value in body.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert all(isinstance(m, FrozenBatchNorm2d) for m in body.modules() if "BatchNorm" in type(m).__name__)
    # stem and first stage frozen, the rest trained
    assert not body._conv_stem.weight.requires_grad and not body._blocks[0]._project_conv.weight.requires_grad
    assert body._blocks[1]._project_conv.weight.requires_grad
    assert model.transform.image_mean == pytest.approx([127 / 255] * 3)


def test_auto_takes_the_lite_start_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached COCO file
    monkeypatch.setattr(model_mod, "coco_weights_reachable", lambda timeout_s=5.0: False)  # no network answers
    start = resolve_start(arch=None, weights="auto")
    assert (start.arch, start.weights) == ("lite2-fpn", "imagenet") and "no COCO weights offline" in start.reason
    model = build_model(num_classes=1, weights="auto", min_size=64, max_size=64)
    assert model.shoeseg_config.arch == "lite2-fpn" and model.shoeseg_start == start
    with pytest.raises(model_mod.WeightsUnavailableError, match="--arch lite2-fpn"):
        resolve_start(arch="r50-fpn", weights="auto")


def test_auto_takes_coco_when_the_hub_cache_has_it(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = model_mod.coco_weights_cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"present")
    start = resolve_start(arch=None, weights="auto")
    assert (start.arch, start.weights) == ("r50-fpn", "coco") and str(cached) in start.reason


@pytest.mark.parametrize(("arch", "weights", "message"), [
    ("lite0-fpn", "coco", "COCO weights exist for r50-fpn only"),
    ("r50-fpn", "imagenet", "Lite families only"),
    ("mobilenet-fpn", "none", "unknown model family 'mobilenet-fpn'"),
])
def test_starts_that_do_not_fit_the_family(arch, weights, message):
    with pytest.raises(ValueError, match=message):
        resolve_start(arch=arch, weights=weights)


def test_a_checkpoint_of_an_unknown_family_names_it(tmp_path):
    model = build_model(num_classes=1, weights=None, arch="lite0-fpn", min_size=64, max_size=64)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model=model, class_names=["shoe"])
    raw = torch.load(path, weights_only=True)
    raw["meta"]["model_config"]["arch"] = "vit-det"
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"m\.pt: unknown model family 'vit-det' \(known: r50-fpn"):
        load_checkpoint(path)


def test_profiles_fill_defaults_and_flags_override():
    cpu = TrainConfig.for_profile("cpu")
    assert (cpu.arch, cpu.weights, cpu.iters, cpu.roi_batch_size_per_image, cpu.clip_grad_norm) == (
        "lite2-fpn", "auto", 200, 128, 5.0)
    assert (cpu.optimizer, cpu.base_lr, cpu.weight_decay) == ("adamw", 2e-4, 0.05)
    assert (cpu.rpn_post_nms_top_n_test, cpu.box_detections_per_img, cpu.int8_box_head) == (100, 20, True)
    assert (cpu.mask_boundary_weight, cpu.mask_resolution) == (1.0, 28)  # the outline lever measured to pay
    study = TrainConfig.for_profile("study")
    assert (study.arch, study.weights, study.iters, study.roi_batch_size_per_image, study.min_size) == (
        "r50-fpn", "coco", 600, 512, 800)
    assert study.mask_boundary_weight == 0.0  # the study's recipe, unchanged
    assert TrainConfig.for_profile("cpu", iters=10, base_lr=None).iters == 10  # None: not given
    assert TrainConfig.for_profile("auto", device="cpu").arch == PROFILES["cpu"]["arch"]
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        TrainConfig.for_profile("fast")
    assert set(ARCHS) == {"r50-fpn", "lite0-fpn", "lite2-fpn"}


def test_a_checkpoint_can_ask_for_an_int8_box_head_on_the_cpu(tmp_path):
    from shoeseg.predict import Predictor

    model = build_model(num_classes=1, weights=None, arch="lite0-fpn", min_size=64, max_size=64, int8_box_head=True)
    save_checkpoint(tmp_path / "m.pt", model=model, class_names=["shoe"])
    predictor = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu")
    fc6 = predictor.model.roi_heads.box_head.fc6
    assert "quantized" in type(fc6).__module__  # dynamic int8
    assert len(predictor.predict([np.zeros((64, 64, 3), np.uint8)])) == 1
    assert load_checkpoint(tmp_path / "m.pt").model_config.int8_box_head  # the stored weights stay float
    assert type(load_checkpoint(tmp_path / "m.pt").model.roi_heads.box_head.fc6) is torch.nn.Linear


def test_explicit_weights_choose_their_family_within_a_profile(tmp_path):
    assert TrainConfig.for_profile("cpu", weights="coco").arch == "r50-fpn"
    assert TrainConfig.for_profile("cpu", weights=str(tmp_path / "m.pt")).arch is None
    assert TrainConfig.for_profile("cpu", weights="none").arch == PROFILES["cpu"]["arch"]
    assert TrainConfig.for_profile("cpu", weights="coco", arch="lite2-fpn").arch == "lite2-fpn"  # then refused
