"""Building the model, COCO weights offline, and checkpoint round trips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from shoeseg.checkpoint import load_checkpoint, read_calibration_images, read_checkpoint_meta, save_checkpoint
from shoeseg.model import (
    WeightsUnavailableError,
    build_model,
    coco_weights_cache_path,
    coco_weights_reachable,
    load_coco_state_dict,
)

SMALL = dict(min_size=64, max_size=96)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(num_classes=1, weights=None, roi_batch_size_per_image=32, **SMALL)


def test_random_model_has_the_requested_heads_and_recipe_settings(small_model):
    m = small_model
    assert m.roi_heads.box_predictor.cls_score.out_features == 2  # background + shoe
    assert m.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert m.transform.min_size == (64,) and m.transform.max_size == 96
    # detectron2's small-normal init of the mask logits (torchvision's Kaiming init gives |logits| ~ 16)
    assert m.roi_heads.mask_predictor.mask_fcn_logits.weight.std() < 0.01
    with pytest.raises(ValueError, match="num_classes"):
        build_model(num_classes=0, weights=None)


def test_coco_weights_offline_fail_at_once_naming_the_alternatives(tmp_path, monkeypatch):
    if coco_weights_reachable(timeout_s=2):
        pytest.skip("the network is reachable here, so the offline failure cannot be shown")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(WeightsUnavailableError) as err:
        build_model(num_classes=1, weights="coco", progress=False)
    msg = str(err.value)
    assert "--weights none" in msg and "--weights PATH" in msg and str(coco_weights_cache_path()) in msg


def test_coco_weights_are_read_from_the_torch_hub_cache(tmp_path, monkeypatch):
    # An offline user who placed torchvision's file in the cache: a 91-class state dict with frozen BN.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.manual_seed(1)
    coco_like = build_model(num_classes=90, weights=None, **SMALL)
    state = {k: v for k, v in coco_like.state_dict().items() if not k.endswith("num_batches_tracked")}
    cache = coco_weights_cache_path()
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    m = build_model(num_classes=1, weights="coco", **SMALL)
    assert torch.equal(m.backbone.body.layer1[0].conv1.weight, state["backbone.body.layer1.0.conv1.weight"])
    assert torch.equal(m.rpn.head.conv[0][0].weight, state["rpn.head.conv.0.0.weight"])
    assert m.roi_heads.box_predictor.cls_score.out_features == 2  # class heads re-made for one class
    from torchvision.ops import FrozenBatchNorm2d

    bns = [x for x in m.modules() if isinstance(x, FrozenBatchNorm2d)]
    assert bns and all(b.eps == 0.0 for b in bns)  # as torchvision does for these weights
    assert not m.backbone.body.conv1.weight.requires_grad and m.backbone.body.layer2[0].conv1.weight.requires_grad


def test_coco_weights_are_downloaded_into_the_cache_with_their_hash_and_read_weights_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    state = {"backbone.body.conv1.weight": torch.arange(6.0).reshape(1, 1, 2, 3)}
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw) or real_load(*a, **kw))
    got = load_coco_state_dict(progress=False)
    assert torch.equal(got["backbone.body.conv1.weight"], state["backbone.body.conv1.weight"])
    url, dst, hash_prefix = calls[0]
    assert url.endswith("/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth") and dst == str(coco_weights_cache_path())
    assert hash_prefix == "bf2d0c1e"  # checked by torch.hub's downloader, as torchvision asks it to
    assert loads and all(kw.get("weights_only") is True for kw in loads)
    load_coco_state_dict(progress=False)
    assert len(calls) == 1  # the cached copy is used from then on


class _Payload:
    """Unpickling this runs ``os.mkdir(path)``: a stand-in for code hidden in a weights file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_downloaded_weights_file_with_code_in_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    marker = tmp_path / "code-ran"
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, hash_prefix=None, progress=True: torch.save({"w": _Payload(str(marker))}, dst))
    with pytest.raises(WeightsUnavailableError, match="not a plain weights file") as err:
        load_coco_state_dict(progress=False)
    assert not marker.exists() and "--weights none" in str(err.value)


def test_a_failed_coco_download_names_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def bad_hash(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", bad_hash)
    with pytest.raises(WeightsUnavailableError, match="invalid hash value") as err:
        load_coco_state_dict(progress=False)
    assert "--weights PATH" in str(err.value) and not coco_weights_cache_path().exists()


def test_checkpoint_round_trip_keeps_weights_metadata_and_predictions(small_model, tmp_path):
    path = tmp_path / "run" / "model.pt"
    version = save_checkpoint(path, model=small_model, class_names=["shoe"], config={"iters": 7, "steps": (5, 6)},
                              metrics={"segm_AP": np.float32(0.25)}, parent_version="20240101-000000-abcdef")
    raw = torch.load(path, weights_only=True)  # loads safely: plain tensors and JSON-able data only
    assert raw["meta"]["version"] == version
    ckpt = load_checkpoint(path)
    assert ckpt.version == version and ckpt.class_names == ["shoe"]
    assert ckpt.config == {"iters": 7, "steps": [5, 6]} and ckpt.metrics == {"segm_AP": 0.25}
    assert ckpt.parent_version == "20240101-000000-abcdef"
    assert ckpt.model_config.min_size == 64 and ckpt.model_config.roi_batch_size_per_image == 32
    a, b = small_model.state_dict(), ckpt.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not ckpt.model.training
    small_model.eval()
    img = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))]
    with torch.inference_mode():
        out_a, out_b = small_model(img)[0], ckpt.model(img)[0]
    assert torch.equal(out_a["boxes"], out_b["boxes"]) and torch.equal(out_a["masks"], out_b["masks"])
    assert read_checkpoint_meta(path)["class_names"] == ["shoe"]
    assert not list(path.parent.glob(".*tmp"))  # the temporary file was renamed away


def test_a_checkpoint_keeps_its_calibration_images(small_model, tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]
    images = [np.stack([xx * 4, yy * 5, (xx + yy + k * 30) % 256], axis=-1).astype(np.uint8) for k in range(3)]
    save_checkpoint(tmp_path / "with.pt", model=small_model, class_names=["shoe"], calibration_images=images)
    save_checkpoint(tmp_path / "without.pt", model=small_model, class_names=["shoe"])
    back = read_calibration_images(tmp_path / "with.pt")
    assert [a.shape for a in back] == [a.shape for a in images]
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() < 8 for a, b in zip(images, back, strict=True))  # JPEG
    assert read_calibration_images(tmp_path / "without.pt") == []
    assert load_checkpoint(tmp_path / "with.pt").version  # the model loads as before
    with pytest.raises(ValueError, match="RGB uint8"):
        save_checkpoint(tmp_path / "bad.pt", model=small_model, class_names=["shoe"],
                        calibration_images=[np.zeros((8, 8), np.uint8)])
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        read_calibration_images(tmp_path / "gone.pt")


def test_checkpoint_as_starting_weights_keeps_the_body_and_remakes_heads_for_new_classes(small_model, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model=small_model, class_names=["shoe"])
    m = build_model(num_classes=2, weights=path, **SMALL)
    assert m.roi_heads.box_predictor.cls_score.out_features == 3
    assert torch.equal(m.backbone.fpn.inner_blocks[0][0].weight, small_model.backbone.fpn.inner_blocks[0][0].weight)


def test_a_finer_mask_head_warm_starts_from_a_28_checkpoint_and_is_kept_by_its_own(small_model, tmp_path):
    path = tmp_path / "model28.pt"
    save_checkpoint(path, model=small_model, class_names=["shoe"])
    fine = build_model(num_classes=1, weights=path, mask_resolution=56, **SMALL)
    assert fine.roi_heads.mask_roi_pool.output_size == (28, 28)
    mp = "roi_heads.mask_head.0.0.weight"
    assert torch.equal(fine.state_dict()[mp], small_model.state_dict()[mp])  # every weight carried over
    fine.train()
    boxes = torch.tensor([[8.0, 10.0, 50.0, 60.0]])
    masks = torch.zeros(1, 64, 80, dtype=torch.uint8)
    masks[0, 12:58, 10:48] = 1
    target = [{"boxes": boxes, "labels": torch.tensor([1]), "masks": masks}]
    roi = fine.roi_heads
    seen = {}
    hook = roi.mask_predictor.register_forward_hook(lambda _m, _i, out: seen.update(shape=out.shape))
    losses = fine([torch.rand(3, 64, 80)], target)
    hook.remove()
    assert seen["shape"][-2:] == (56, 56) and torch.isfinite(losses["loss_mask"])  # targets projected at 56
    out = tmp_path / "model56.pt"
    save_checkpoint(out, model=fine, class_names=["shoe"])
    back = load_checkpoint(out)
    assert back.model_config.mask_resolution == 56 and back.model.roi_heads.mask_roi_pool.output_size == (28, 28)
    assert load_checkpoint(path).model_config.mask_resolution == 28  # the default for older checkpoints too
    with pytest.raises(ValueError, match="mask_resolution"):
        build_model(num_classes=1, weights=None, mask_resolution=57)


def test_bad_weights_and_checkpoints_are_named(tmp_path, small_model):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_model(num_classes=1, weights=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="plain.pt"):
        load_checkpoint(plain)
    with pytest.raises(ValueError, match="class names"):
        save_checkpoint(tmp_path / "x.pt", model=small_model, class_names=["shoe", "boot"])


def _two_overlapping_detections(model) -> int:
    """Detections the box head keeps from two confident proposals of IoU 0.45 (a toe cap in its shoe)."""
    proposals = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 40.0, 18.0]])]  # IoU 720 / 1600 = 0.45
    class_logits = torch.tensor([[-5.0, 5.0], [-5.0, 4.0]])
    box_regression = torch.zeros(2, 8)  # no change to either box
    boxes, scores, labels = model.roi_heads.postprocess_detections(class_logits, box_regression, proposals,
                                                                   [(64, 64)])
    return len(boxes[0])


def test_the_box_heads_nms_is_a_stored_setting_and_drops_a_nested_box_at_its_default(small_model, tmp_path):
    from shoeseg.model import ModelConfig, model_config_of

    assert small_model.roi_heads.nms_thresh == 0.4 and model_config_of(small_model).box_nms_thresh == 0.4
    assert _two_overlapping_detections(small_model) == 1
    loose = build_model(num_classes=1, weights=None, box_nms_thresh=0.5, **SMALL)
    assert _two_overlapping_detections(loose) == 2
    save_checkpoint(tmp_path / "m.pt", model=loose, class_names=["shoe"], config={})
    assert load_checkpoint(tmp_path / "m.pt").model.roi_heads.nms_thresh == 0.5
    # a checkpoint stored before the setting existed serves at today's default
    old = {k: v for k, v in model_config_of(loose).to_dict().items() if k != "box_nms_thresh"}
    assert ModelConfig.from_dict(old).box_nms_thresh == 0.4
    with pytest.raises(ValueError, match="box_nms_thresh"):
        build_model(num_classes=1, weights=None, box_nms_thresh=0.0, **SMALL)
