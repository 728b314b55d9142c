"""The one prediction writer: label matching, the threshold, the task score, scaling, stable region ids."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from shoeseg.active_learning import entropy_score, random_score
from shoeseg_services.ls_config import parse_label_config
from shoeseg_services.predictions import ImagePrediction, PredictionWriter, as_ls, combine

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<PolygonLabels name="label" toName="image"><Label value="Shoe" predicted_values="boot"/></PolygonLabels>'
    '<RectangleLabels name="box" toName="image"><Label value="shoe"/></RectangleLabels></View>'
)


def det(label: str, score: float, x0: float = 10, y0: float = 10, size: float = 20):
    poly = np.array([[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size]], float)
    mask = np.zeros((64, 64), bool)
    mask[int(y0):int(y0 + size), int(x0):int(x0 + size)] = True
    return SimpleNamespace(label=label, score=score, box_xyxy=(x0, y0, x0 + size, y0 + size), mask=mask,
                           polygons=(poly,))


@pytest.fixture
def writer():
    return PredictionWriter(parse_label_config(CONFIG), ["shoe", "boot"], strategy="least_confidence",
                            score_thresh=0.5)


def test_regions_for_every_control_with_one_label_rule(writer):
    p = writer.write([det("shoe", 0.9), det("boot", 0.7, x0=30), det("shoe", 0.3)], image_name="image",
                     width_px=64, height_px=64)
    polygons = [r for r in p.result if r["type"] == "polygonlabels"]
    boxes = [r for r in p.result if r["type"] == "rectanglelabels"]
    # case-insensitive match ("shoe" -> "Shoe") and predicted_values ("boot" -> "Shoe"); 0.3 is under the threshold
    assert [r["value"]["polygonlabels"] for r in polygons] == [["Shoe"], ["Shoe"]]
    # the rectangle control has only "shoe": the boot maps to nothing there (two classes, no predicted_values)
    assert [r["value"]["rectanglelabels"] for r in boxes] == [["shoe"]]
    assert [r["score"] for r in polygons] == [0.9, 0.7]
    assert p.region_scores == (0.9, 0.7)


def test_the_task_score_is_the_strategys_over_every_candidate(writer):
    dets = [det("shoe", 0.9), det("shoe", 0.3)]
    assert writer.write(dets, image_name="image", width_px=64, height_px=64).score == 0.9
    entropy = PredictionWriter(writer.config, ["shoe", "boot"], strategy="entropy")
    assert entropy.write(dets, image_name="image", width_px=64, height_px=64).score == pytest.approx(entropy_score(dets))
    rnd = PredictionWriter(writer.config, ["shoe", "boot"], strategy="random")
    assert rnd.write(dets, image_name="image", width_px=64, height_px=64, task_id=17).score == random_score(17)
    assert writer.write([], image_name="image", width_px=64, height_px=64).score == 0.0  # nothing seen: label first


def test_flip_consistency_needs_the_mirror_view():
    w = PredictionWriter(parse_label_config(CONFIG), ["shoe"], strategy="flip_consistency")
    assert w.needs_flip
    d = det("shoe", 0.9)
    assert w.write([d], image_name="image", width_px=64, height_px=64, flipped=[d]).score == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mirror image"):
        w.write([d], image_name="image", width_px=64, height_px=64)


def test_detections_are_scaled_to_the_full_image_and_ids_are_stable(writer):
    a = writer.write([det("shoe", 0.9)], image_name="image", width_px=128, height_px=128, scale_xy=(2.0, 2.0))
    b = writer.write([det("shoe", 0.9)], image_name="image", width_px=128, height_px=128, scale_xy=(2.0, 2.0))
    poly = a.result[0]
    assert poly["value"]["points"][0] == pytest.approx([100 * 20 / 128, 100 * 20 / 128])
    assert (poly["original_width"], poly["original_height"]) == (128, 128)
    assert [r["id"] for r in a.result] == [r["id"] for r in b.result] == ["image-1", "image-2"]


def test_a_forced_label_wins(writer):
    p = writer.write([det("boot", 0.8)], image_name="image", width_px=64, height_px=64, forced_label="shoe")
    # the rectangle control has the drawn label: it wins there; the polygon control has no "shoe", so its rule maps
    labels = [(r["type"], r["value"].get("polygonlabels") or r["value"].get("rectanglelabels")) for r in p.result]
    assert labels == [("polygonlabels", ["Shoe"]), ("rectanglelabels", ["shoe"])]
    plain = writer.write([det("boot", 0.8)], image_name="image", width_px=64, height_px=64)
    assert [r["type"] for r in plain.result] == ["polygonlabels"]  # without it, the boot has no rectangle label


def test_combine_and_as_ls():
    a = ImagePrediction(result=[{"id": "a"}], score=0.7, region_scores=(0.7,))
    b = ImagePrediction(result=[{"id": "b"}], score=0.2, region_scores=(0.9,))
    both = combine([a, b])
    assert both.score == 0.2 and [r["id"] for r in both.result] == ["a", "b"]
    assert both.mean_region_score == pytest.approx(0.8)
    assert as_ls(both, task_id=5, model_version="v1") == {"task": 5, "result": both.result, "score": 0.2,
                                                          "model_version": "v1"}
    assert "task" not in as_ls(ImagePrediction(), task_id=None, model_version="v1")


@pytest.mark.parametrize(("strategy", "rescore"), [("least_confidence", False), ("least_confidence", True),
                                                   ("random", True), ("entropy", False), ("flip_consistency", True)])
def test_the_model_is_asked_for_no_more_than_the_strategy_needs_and_the_prediction_is_the_same(strategy, rescore):
    """A real (random-weight) model: the writer's candidates (masks only for what is shown, unless the strategy
    compares masks or the scores are rescored by their masks) give the same regions and task score as every
    candidate down to 0.05 with every mask, with the threshold set so that some images show a detection and some
    show none."""
    torch = pytest.importorskip("torch")
    from shoeseg.active_learning import CANDIDATE_SCORE_THRESH
    from shoeseg.model import build_model
    from shoeseg.predict import Predictor, mirror_back, mirror_images

    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=96, box_detections_per_img=20)
    predictor = Predictor(model, class_names=["shoe"], device="cpu", batch_size=2, mask_rescore=rescore)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (72, 96, 3), dtype=np.uint8) for _ in range(6)]
    every = predictor.predict(images, score_thresh=CANDIDATE_SCORE_THRESH, polygons_from=1.0)
    best = sorted(max(d.score for d in dets) for dets in every if dets)
    assert len(best) >= 4, "a random-weight model proposes candidates on most images"
    thresh = (best[1] + best[2]) / 2  # two images show nothing, the others something

    asked: list[tuple] = []
    masks: list[tuple[int, int]] = []
    real_forward = predictor.forward_raw

    def forward_raw(batch, **kw):
        asked.append((kw["score_thresh"], kw["masks_from"]))
        outs = real_forward(batch, **kw)
        masks.extend((len(o["masks"]), len(o["scores"])) for o in outs)
        return outs

    predictor.forward_raw = forward_raw
    w = PredictionWriter(parse_label_config(CONFIG), ["shoe"], strategy=strategy, score_thresh=thresh)
    lean = w.candidates(predictor, images)
    views = images + (mirror_images(images) if w.needs_flip else [])
    dets = predictor.detections(real_forward(views, score_thresh=CANDIDATE_SCORE_THRESH, flip_tta=False),
                                views, polygons_from=thresh, min_score=CANDIDATE_SCORE_THRESH)
    full = list(zip(dets[:6], mirror_back(dets[6:], [96] * 6) if w.needs_flip else [None] * 6, strict=True))
    for k, ((a, fa), (b, fb)) in enumerate(zip(lean, full, strict=True)):
        pa = w.write(a, image_name="image", width_px=96, height_px=72, task_id=k, flipped=fa)
        pb = w.write(b, image_name="image", width_px=96, height_px=72, task_id=k, flipped=fb)
        assert pa.result == pb.result and pa.score == pytest.approx(pb.score), (strategy, k)
    n_batches = 6 if w.needs_flip else 3
    if strategy == "random":  # nothing under what is shown
        assert asked == [(thresh, thresh)] * n_batches
    elif strategy == "flip_consistency" or rescore:  # every candidate's mask (on both views for flips)
        assert asked == [(CANDIDATE_SCORE_THRESH, CANDIDATE_SCORE_THRESH)] * n_batches
        assert all(m == n for m, n in masks)
    else:  # every candidate's score, the shown ones' masks
        assert asked == [(CANDIDATE_SCORE_THRESH, thresh)] * n_batches
        assert sum(m for m, _ in masks) < sum(n for _, n in masks)
