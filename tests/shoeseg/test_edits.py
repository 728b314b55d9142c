"""The annotator's numbers on constructed cases with known answers, the serving threshold chosen from them,
and that threshold stored in the checkpoint and served."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoeseg.edits import (
    EditCosts,
    annotator_numbers,
    choose_score_thresh,
    image_edits,
    measure_image,
    summary_text,
    tolerance_px,
    vertices_off_outline,
)
from shoeseg.geometry import mask_iou, mask_to_polygons, polygons_to_mask
from shoeseg.predict import Detection, Predictor
from tests.synth import make_shoe_dataset

# The true shoe of most cases: a 40 x 60 px rectangle (box diagonal 72.1 px: tolerance 2 % = 1.44 px).
# Traced polygons go through the boundary pixels' centres: its corners are (20.5, 20.5) ... (59.5, 79.5).


def _rect(x1, y1, x2, y2, h=120, w=120):
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


TRUE = _rect(20, 20, 60, 80)


def _edits(preds, scores=None, truth=(TRUE,), **kwargs):
    return image_edits(list(truth), preds, [mask_to_polygons(p) for p in preds], scores, **kwargs)


def test_a_perfect_prediction_needs_no_edit():
    e = _edits([TRUE])
    assert e.matched_ious == [1.0] and (e.n_missed, e.n_false_positives, e.n_to_drag) == (0, 0, 0)
    assert e.polygon_vertices == [4] and e.n_matched_vertices == 4 and e.cost() == 0


def test_a_shifted_prediction_has_its_vertices_to_drag():
    # shifted 5 px right and down: IoU 35 * 55 / (2 * 2400 - 1925) = 0.670; every corner is 5 px or more
    # off the true outline (the far corner sqrt(50) = 7.1 px), beyond the 1.44 px tolerance
    shifted = _rect(25, 25, 65, 85)
    e = _edits([shifted])
    assert e.matched_ious == [pytest.approx(1925 / 2875)] and e.n_to_drag == 4 and e.n_false_positives == 0
    # shifted by 1 px: within the tolerance, nothing to drag
    assert _edits([_rect(21, 21, 61, 81)]).n_to_drag == 0
    # the far corner alone at a tolerance of 9 % (6.5 px)
    assert _edits([shifted], drag_tolerance=0.09).n_to_drag == 1


def test_a_split_prediction_keeps_its_larger_part_and_deletes_the_other():
    # top 36 rows (IoU 0.6) and bottom 24 rows (IoU 0.4) as two predictions
    top, bottom = _rect(20, 20, 60, 56), _rect(20, 56, 60, 80)
    e = _edits([bottom, top], [0.9, 0.8])
    assert e.matched_ious == [pytest.approx(0.6)] and e.n_false_positives == 1 and e.n_missed == 0
    # one-sided distance: the cut corners lie on the true outline's sides, so nothing counts to drag
    assert e.n_to_drag == 0
    # cut 50/50: each half has IoU 0.5 exactly and one is kept
    halves = _edits([_rect(20, 20, 60, 50), _rect(20, 50, 60, 80)])
    assert halves.matched_ious == [0.5] and halves.n_false_positives == 1


def test_a_duplicate_is_deleted_and_the_better_copy_kept_whatever_the_scores():
    shifted = _rect(25, 25, 65, 85)
    e = _edits([shifted, TRUE], [0.9, 0.6])  # the higher score for the worse mask
    assert e.matched_ious == [1.0] and e.n_false_positives == 1 and e.n_to_drag == 0
    same = _edits([TRUE, TRUE], [0.9, 0.8])
    assert same.matched_ious == [1.0] and same.n_false_positives == 1


def test_a_missed_shoe_is_to_draw_and_a_poor_overlap_is_no_match():
    other = _rect(80, 10, 110, 40)
    e = _edits([TRUE], truth=(TRUE, other))
    assert (e.n_truth, len(e.matched_ious), e.n_missed, e.n_false_positives) == (2, 1, 1, 0)
    assert e.cost() == 30 and e.cost(EditCosts(draw=1)) == 1
    # IoU 0.4 is below the match: the shoe is drawn and the prediction deleted
    poor = _edits([_rect(20, 20, 60, 44)])
    assert (poor.matched_ious, poor.n_missed, poor.n_false_positives) == ([], 1, 1)
    nothing = _edits([])
    assert (nothing.n_missed, nothing.n_predictions) == (1, 0)
    assert _edits([TRUE]).n_missed == 0


def test_labels_must_agree_to_match():
    e = _edits([TRUE], true_labels=["shoe"], pred_labels=["sole"])
    assert (e.matched_ious, e.n_missed, e.n_false_positives) == ([], 1, 1)


def test_tolerance_is_a_share_of_the_diagonal_with_a_floor():
    assert tolerance_px(TRUE) == pytest.approx(0.02 * np.hypot(40, 60))
    assert tolerance_px(_rect(0, 0, 10, 10)) == 1.0  # 2 % of 14 px is under the 1 px floor
    # vertices of a polygon far from the outline, and of an empty truth
    far = [np.array([[100.0, 100.0], [110.0, 100.0], [110.0, 110.0]])]
    assert vertices_off_outline(far, TRUE) == 3
    assert vertices_off_outline(far, np.zeros_like(TRUE)) == 3


def test_numbers_over_images():
    shifted, other = _rect(25, 25, 65, 85), _rect(80, 10, 110, 40)
    speck = _rect(100, 90, 110, 100)
    a = measure_image([TRUE, other], [TRUE, shifted, speck], [mask_to_polygons(m) for m in (TRUE, shifted, speck)],
                      [0.9, 0.7, 0.3])
    b = measure_image([TRUE], [_rect(21, 21, 61, 81)], [mask_to_polygons(_rect(21, 21, 61, 81))], [0.8])
    n = annotator_numbers([a, b], 0.5)
    # image a at 0.5: TRUE matched exactly, shifted a duplicate (deleted), other missed; image b: IoU 0.934
    assert (n.n_images, n.n_truth, n.n_predictions, n.n_matched) == (2, 3, 3, 2)
    assert n.matched_share == {0.5: pytest.approx(2 / 3), 0.75: pytest.approx(2 / 3), 0.85: pytest.approx(2 / 3),
                               0.9: pytest.approx(2 / 3)}
    assert mask_iou(TRUE, _rect(21, 21, 61, 81)) == pytest.approx(39 * 59 / (2 * 2400 - 39 * 59))
    assert (n.n_missed, n.n_false_positives, n.n_to_drag) == (1, 1, 0)
    assert n.per_image(n.n_false_positives) == 0.5 and n.vertices_median == 4 and n.n_polygons == 3
    assert n.edit_cost == 31 and n.drag_share == 0
    low = annotator_numbers([a, b], 0.2)  # the speck comes in: one more to delete
    assert low.n_false_positives == 2 and low.n_predictions == 4
    doc = n.to_json()
    json.dumps(doc)
    assert doc["matched_share"]["iou>=0.75"] == pytest.approx(2 / 3) and doc["missed_per_image"] == 0.5
    assert doc["vertices_per_polygon"] == {"median": 4.0, "mean": 4.0}
    text = n.table()
    assert "to draw" in text and "to drag" in text and "0.67" in text
    empty = annotator_numbers([], 0.5)
    assert empty.matched_share[0.5] is None and empty.vertices_median is None and "n/a" in empty.table()
    # the one line a version's listing shows, from the recorded JSON
    assert summary_text(doc) == "67 % within IoU 0.85, 0.50 to draw, 0.50 to delete / image (2 images, 3 shoes)"
    assert summary_text(empty.to_json()) is None and summary_text(None) is None
    assert summary_text({"n_images": 4, "matched_share": {}}).startswith("- % within IoU 0.85, - to draw")


def test_the_threshold_with_the_least_edit_cost_is_chosen():
    # two shoes: one found exactly at 0.9, one found 5 px off (4 vertices to drag) at 0.4, a speck at 0.2
    other, shifted_other = _rect(70, 10, 100, 50), _rect(75, 15, 105, 55)
    speck = _rect(100, 90, 110, 100)
    preds = [TRUE, shifted_other, speck]
    m = measure_image([TRUE, other], preds, [mask_to_polygons(p) for p in preds], [0.9, 0.4, 0.2])
    choice = choose_score_thresh([m])
    # at <= 0.2: 4 drags + 1 delete = 5; (0.2, 0.4]: 4 drags; (0.4, 0.9]: one shoe to draw, 30; above: 60
    assert choice.cost[0.2] == 5 and choice.cost[0.25] == choice.cost[0.4] == 4 and choice.cost[0.45] == 30
    assert choice.cost[0.95] == 60
    assert choice.score_thresh == 0.4  # the least cost nearest 0.5
    # when drawing a shoe costs only one action, dropping the sloppy detection is cheaper: 0.5 (nearest 0.5)
    assert choose_score_thresh([m], costs=EditCosts(draw=1.0)).score_thresh == 0.5
    assert choose_score_thresh([]).score_thresh == 0.5  # a flat curve keeps the usual threshold
    # 0.4 saves 26 actions on this one image: a margin above that keeps 0.5, one below it moves
    assert choose_score_thresh([m], min_saving_per_image=27).score_thresh == 0.5
    assert choose_score_thresh([m], min_saving_per_image=26).score_thresh == 0.4
    # per image: two such images save 52 in all, still 26 each
    assert choose_score_thresh([m, m], min_saving_per_image=27).score_thresh == 0.5
    assert choose_score_thresh([m, m], min_saving_per_image=26).score_thresh == 0.4
    json.dumps(choice.to_json())
    with pytest.raises(ValueError):
        choose_score_thresh([m], candidates=[])


# -- evaluate(), the checkpoint and training -------------------------------------------------------------------


class _Oracle:
    """Returns the annotated shoes at score 0.99 and a false positive at 0.3 (a unit-test double)."""

    class_names = ["shoe"]

    def __init__(self, ds, images_dir):
        from via_tools.images import read_image

        self.by_sum = {int(read_image(images_dir / r.file_name).sum()): r for r in ds.images}

    def predict(self, images, *, score_thresh=None):
        out = []
        for image in images:
            rec = self.by_sum[int(image.sum())]
            h, w = image.shape[:2]
            dets = []
            for r in rec.instances:
                mask = polygons_to_mask(r.polygons, h, w)
                dets.append(Detection(label="shoe", score=0.99, box_xyxy=r.bbox_xyxy(), mask=mask,
                                      polygons=mask_to_polygons(mask)))
            fp = np.zeros((h, w), bool)
            fp[:6, :6] = True
            dets.append(Detection(label="shoe", score=0.3, box_xyxy=(0, 0, 6, 6), mask=fp,
                                  polygons=mask_to_polygons(fp, min_area_px=1)))
            out.append(dets)
        return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("edits")
    return make_shoe_dataset(d, n_images=2, size_px=(64, 80), seed=21), d


def test_evaluate_gives_the_numbers_at_the_serving_threshold(synth):
    from shoeseg.evaluate import evaluate

    ds, d = synth
    oracle = _Oracle(ds, d)
    res = evaluate(oracle, ds, images_dir=d)
    a = res.annotator
    assert a.score_thresh == 0.5 and a.n_truth == ds.count_instances() and a.matched_share[0.9] == 1.0
    assert (a.n_missed, a.n_false_positives, a.n_to_drag) == (0, 0, 0) and res.score_choice is None
    assert json.loads(json.dumps(res.to_json()))["annotator"]["false_positives"] == 0
    assert "to drag" in res.table()
    oracle.checkpoint_score_thresh = 0.2  # a checkpoint's own threshold: the false positives come in
    assert evaluate(oracle, ds, images_dir=d).annotator.n_false_positives == 2
    assert evaluate(oracle, ds, images_dir=d, serve_score_thresh=0.6).annotator.n_false_positives == 0
    chosen = evaluate(oracle, ds, images_dir=d, choose_serve_thresh=True)
    assert chosen.score_choice.score_thresh == chosen.annotator.score_thresh == 0.5
    assert chosen.score_choice.cost[0.3] == 2 and chosen.score_choice.cost[0.35] == 0
    assert "chosen on these images" in chosen.table()


def _tiny_model():
    import torch

    from shoeseg.model import build_model

    torch.manual_seed(0)
    return build_model(num_classes=1, weights=None, min_size=64, max_size=80, box_detections_per_img=8)


def test_the_checkpoint_serves_its_threshold_unless_told_otherwise(tmp_path):
    from shoeseg.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint

    model = _tiny_model()
    save_checkpoint(tmp_path / "chosen.pt", model=model, class_names=["shoe"], serve_score_thresh=0.35)
    save_checkpoint(tmp_path / "plain.pt", model=model, class_names=["shoe"])
    assert read_checkpoint_meta(tmp_path / "chosen.pt")["serve_score_thresh"] == 0.35
    assert load_checkpoint(tmp_path / "chosen.pt").serve_score_thresh == 0.35
    served = Predictor.from_checkpoint(tmp_path / "chosen.pt", device="cpu")
    assert served.score_thresh == 0.35 and served.checkpoint_score_thresh == 0.35
    told = Predictor.from_checkpoint(tmp_path / "chosen.pt", device="cpu", score_thresh=0.6)
    assert told.score_thresh == 0.6 and told.checkpoint_score_thresh == 0.35
    plain = Predictor.from_checkpoint(tmp_path / "plain.pt", device="cpu")
    assert plain.score_thresh == 0.5 and plain.checkpoint_score_thresh is None
    with pytest.raises(ValueError, match="threshold"):
        save_checkpoint(tmp_path / "bad.pt", model=model, class_names=["shoe"], serve_score_thresh=1.5)


def test_training_stores_the_threshold_chosen_on_the_validation_images(synth, tmp_path, monkeypatch):
    import shoeseg.evaluate as evaluate_module
    from shoeseg.checkpoint import load_checkpoint
    from shoeseg.edits import ThresholdChoice
    from shoeseg.train import TrainConfig, train

    ds, d = synth
    real, seen = evaluate_module.choose_score_thresh, []

    def choose(measures, **kwargs):  # the real choice, then a threshold no default could be mistaken for
        seen.append(real(measures, **kwargs))
        return ThresholdChoice(score_thresh=0.35, cost=seen[-1].cost)

    monkeypatch.setattr(evaluate_module, "choose_score_thresh", choose)
    cfg = TrainConfig(iters=2, log_period=1, min_size=64, max_size=80, roi_batch_size_per_image=16, weights="none",
                      device="cpu", progress_bar=False)
    result = train(cfg, dataset=ds, images_dir=d, out_dir=tmp_path / "run", val_dataset=ds)
    assert len(seen) == 1 and len(seen[0].cost) == 19  # chosen once, on the validation images
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.serve_score_thresh == 0.35 and result.eval.annotator.score_thresh == 0.35
    assert ckpt.metrics["annotator"]["score_thresh"] == 0.35
    assert Predictor.from_checkpoint(result.checkpoint, device="cpu").score_thresh == 0.35


def test_eval_prints_the_numbers_in_text_and_json(synth, tmp_path):
    from typer.testing import CliRunner

    from shoeseg.checkpoint import save_checkpoint
    from shoeseg_app.cli import app
    from via_tools.io import save

    ds, d = synth
    save(ds, d / "via_project.json", fmt="via2")
    save_checkpoint(tmp_path / "model.pt", model=_tiny_model(), class_names=["shoe"], serve_score_thresh=0.35)
    args = ["eval", "--model", str(tmp_path / "model.pt"), "--data", str(d / "via_project.json"), "--images", str(d),
            "--split", "all", "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    a = report["annotator"]
    assert a["score_thresh"] == 0.35 and a["n_truth"] == ds.count_instances() and "iou>=0.9" in a["matched_share"]
    assert {"missed", "false_positives_per_image", "to_drag", "vertices_per_polygon"} <= set(a)
    res = CliRunner().invoke(app, [*args, "--score-thresh", "0.6"])
    assert res.exit_code == 0, res.output
    assert "annotator at score >= 0.6" in res.output and "to draw" in res.output and "to drag" in res.output
