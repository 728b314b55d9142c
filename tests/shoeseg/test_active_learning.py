"""Active-learning scores: lower means more informative, on controlled detections and a real model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from shoeseg import active_learning as al
from shoeseg_services import ls_api


def det(score: float, box=(2, 2, 10, 10), *, label: str = "shoe", size=(16, 16)):
    mask = np.zeros(size, bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return SimpleNamespace(label=label, score=score, mask=mask)


class FakePredictor:
    """Returns fixed detections per image (images are told apart by their first pixel value)."""

    def __init__(self, per_image: dict[int, list], flipped: dict[int, list] | None = None):
        self.per_image = per_image
        self.flipped = flipped or {}
        self.calls: list[tuple[str, float | None]] = []

    def predict(self, images, *, score_thresh=None):
        self.calls.append(("predict", score_thresh))
        out = []
        for im in images:
            dets = self.per_image[int(im[0, 0, 0])]
            out.append([d for d in dets if score_thresh is None or d.score >= score_thresh])
        return out

    def predict_with_flip(self, images, *, score_thresh=None):
        self.calls.append(("flip", score_thresh))
        return ([self.per_image[int(im[0, 0, 0])] for im in images],
                [self.flipped[int(im[0, 0, 0])] for im in images])


def image(i: int) -> np.ndarray:
    im = np.zeros((16, 16, 3), np.uint8)
    im[0, 0, 0] = i
    return im


# ---------------------------------------------------------------- per-image scores


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([], 0.0), ([0.2], 0.2), ([0.3, 0.95, 0.6], 0.95), ([1.0], 1.0)],
)
def test_least_confidence_is_the_best_score(scores, expected):
    assert al.least_confidence_score([det(s) for s in scores]) == pytest.approx(expected)


def test_entropy_flags_the_most_ambiguous_candidate():
    sure = al.entropy_score([det(0.99), det(0.98)])
    one_doubtful = al.entropy_score([det(0.99), det(0.5)])
    assert one_doubtful == pytest.approx(0.0)  # p = 0.5 is one full bit
    assert sure > 0.8
    # least confidence cannot tell these two images apart; entropy can
    assert al.least_confidence_score([det(0.99), det(0.98)]) == al.least_confidence_score([det(0.99), det(0.5)])
    assert one_doubtful < sure
    # candidates under the threshold are ignored
    assert al.entropy_score([det(0.99), det(0.01)]) == pytest.approx(1 - _h(0.99))
    assert al.entropy_score([]) == 0.0


def _h(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_flip_consistency_agreement_and_disagreement():
    a = [det(0.9, (0, 0, 8, 8)), det(0.8, (8, 8, 16, 16))]
    assert al.flip_consistency_score(a, a) == pytest.approx(1.0)
    # one shoe moved by half its width (IoU 1/3), the other missing in the flipped view
    b = [det(0.9, (4, 0, 12, 8))]
    assert al.flip_consistency_score(a, b) == pytest.approx((1 / 3) * (0.9 + 0.9) / (0.9 + 0.8 + 0.9))
    # with equal scores it is 2 * sum(IoU) / (n_a + n_b)
    same = [det(0.7, (0, 0, 8, 8)), det(0.7, (8, 8, 16, 16))]
    assert al.flip_consistency_score(same, [det(0.7, (4, 0, 12, 8))]) == pytest.approx(2 * (1 / 3) / 3)
    # a faint unmatched candidate costs little; a confident one costs a lot
    assert al.flip_consistency_score(a[:1], a[:1] + [det(0.06, (8, 8, 16, 16))]) > 0.95
    assert al.flip_consistency_score(a[:1], a[:1] + [det(0.95, (8, 8, 16, 16))]) < 0.7
    # candidates under min_score are ignored
    assert al.flip_consistency_score(a[:1], a[:1] + [det(0.01, (8, 8, 16, 16))]) == pytest.approx(1.0)
    assert al.flip_consistency_score(a, []) == 0.0
    assert al.flip_consistency_score([], []) == 0.0
    # labels must agree to match
    assert al.flip_consistency_score([det(0.9, label="shoe")], [det(0.9, label="boot")]) == 0.0


def test_greedy_matching_takes_best_pairs_first():
    a = [det(0.9, (0, 0, 8, 8)), det(0.9, (0, 0, 6, 8))]
    b = [det(0.9, (0, 0, 6, 8))]
    # b[0] is identical to a[1] (IoU 1) and overlaps a[0] (IoU 0.75): the best pair wins
    assert al.match_greedy(a, b) == [(1, 0, pytest.approx(1.0))]


def test_random_is_deterministic_and_spread():
    first = [al.random_score(t) for t in range(200)]
    assert first == [al.random_score(t) for t in range(200)]
    assert all(0.0 <= s < 1.0 for s in first)
    assert 0.35 < float(np.mean(first)) < 0.65
    assert al.random_score(7, seed=1) != al.random_score(7, seed=2)
    assert al.score_images("random", None, [image(0), image(1)], task_ids=[11, 12]) == [
        al.random_score(11), al.random_score(12)
    ]


# ---------------------------------------------------------------- score_images and ordering


def test_lower_score_means_more_informative_for_every_model_strategy():
    # image 1: two sure shoes found the same way in both views; image 2: a doubtful shoe that moves
    sure = [det(0.98, (0, 0, 8, 8)), det(0.97, (8, 8, 16, 16))]
    doubtful = [det(0.45, (0, 0, 8, 8))]
    fp = FakePredictor({1: sure, 2: doubtful, 3: []}, flipped={1: sure, 2: [det(0.4, (5, 0, 13, 8))], 3: []})
    for strategy in ("least_confidence", "entropy", "flip_consistency"):
        scores = al.score_images(strategy, fp, [image(1), image(2), image(3)])
        assert all(0.0 <= s <= 1.0 for s in scores), strategy
        assert scores[1] < scores[0], f"{strategy}: the doubtful image must come before the sure one"
        assert scores[2] == 0.0, f"{strategy}: an image where nothing is seen is the most informative"
        assert al.rank(scores)[-1] == 0, strategy


def test_model_strategies_look_at_low_score_candidates():
    fp = FakePredictor({1: [det(0.2)]})
    assert al.score_images("least_confidence", fp, [image(1)]) == [pytest.approx(0.2)]
    assert fp.calls == [("predict", al.CANDIDATE_SCORE_THRESH)]


def test_rank_breaks_ties_by_key_not_by_position():
    scores = [0.0] * 50
    order = al.rank(scores, keys=[f"img{i}.jpg" for i in range(50)])
    assert sorted(order) == list(range(50))
    assert order != list(range(50))
    assert order == al.rank(scores, keys=[f"img{i}.jpg" for i in range(50)])
    assert al.rank([0.5, 0.1, 0.9]) == [1, 0, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strategy="coreset", images=[image(0)]), "unknown active-learning strategy 'coreset'"),
        (dict(strategy="least_confidence", images=[image(0)]), "needs a predictor"),
        (dict(strategy="random", images=[np.zeros((4, 4), np.uint8)]), "image 0: expected an RGB"),
        (dict(strategy="random", images=[image(0)], task_ids=[1, 2]), "2 task ids for 1 images"),
    ],
)
def test_bad_inputs_are_named(kwargs, message):
    strategy = kwargs.pop("strategy")
    images = kwargs.pop("images")
    with pytest.raises(ValueError, match=message):
        al.score_images(strategy, None, images, **kwargs)


def test_task_score_reads_the_current_model_versions_prediction():
    task = {"predictions": [
        {"id": 1, "model_version": "v1", "score": 0.1, "created_at": "2024-01-01T00:00:00Z"},
        {"id": 2, "model_version": "v2", "score": 0.7, "created_at": "2024-01-02T00:00:00Z"},
        {"id": 3, "model_version": "v2", "score": 0.6, "created_at": "2024-01-03T00:00:00Z"},
    ]}
    assert ls_api.task_score(task, "v1") == 0.1
    assert ls_api.task_score(task, "v2") == 0.6  # the newest of that version
    assert ls_api.task_score(task, None) == 0.6
    assert ls_api.task_score(task, "v9") is None
    assert ls_api.task_score({"predictions": []}, None) is None


# ---------------------------------------------------------------- a real (random-init) model


def test_scores_from_a_real_random_init_predictor():
    torch = pytest.importorskip("torch")
    from shoeseg.model import build_model
    from shoeseg.predict import Predictor

    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=96, box_detections_per_img=10)
    predictor = Predictor(model, class_names=["shoe"], device="cpu")
    im = np.random.default_rng(0).integers(0, 255, (72, 96, 3), dtype=np.uint8)
    for strategy in al.STRATEGIES:
        scores = al.score_images(strategy, predictor, [im], task_ids=[10])
        assert len(scores) == 1
        assert isinstance(scores[0], float) and 0.0 <= scores[0] <= 1.0, (strategy, scores)
    # least confidence is the best candidate's score as the predictor reports it, the same on every call
    raw = predictor.predict([im], score_thresh=al.CANDIDATE_SCORE_THRESH)[0]
    assert raw, "a random-init model still proposes low-score candidates"
    assert al.score_images("least_confidence", predictor, [im, im]) == [pytest.approx(max(d.score for d in raw))] * 2


# ---------------------------------------------------------------- pool strategies (diversity)


def clusters(n_clusters=3, copies=4, dims=16, noise=1e-3, seed=0):
    """``n_clusters`` distinct directions, each with ``copies`` near-duplicates (frames of one burst)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dims))
    rows = np.concatenate([c + noise * rng.normal(size=(copies, dims)) for c in centres])
    return rows, np.repeat(np.arange(n_clusters), copies)


def test_pool_strategies_are_simulation_only():
    for name in al.POOL_STRATEGIES:
        assert name not in al.STRATEGIES  # the live loop's task score cannot pick them
        assert al.check_simulation_strategy(name) == name and al.is_pool_strategy(name)
        with pytest.raises(ValueError, match="unknown active-learning strategy"):
            al.check_strategy(name)
    for name in al.STRATEGIES:
        assert al.check_simulation_strategy(name) == name and not al.is_pool_strategy(name)
    with pytest.raises(ValueError, match="unknown active-learning strategy 'nope'.*kcenter"):
        al.check_simulation_strategy("nope")


def test_kcenter_greedy_does_not_pick_a_near_duplicate_before_every_distinct_item():
    x, group = clusters(n_clusters=3, copies=4)
    order = al.k_center_greedy(x)
    assert sorted(order) == list(range(len(x)))
    assert len(set(group[order[:3]])) == 3, "the first three picks come from three different bursts"
    # uncertainty alone would take the four frames of the most uncertain burst first ...
    scores = [0.1] * 4 + [0.5] * 4 + [0.6] * 4
    assert set(group[al.rank(scores)[:4]]) == {0}
    # ... the uncertainty-weighted greedy still covers every burst first, the most uncertain one first
    ranked = al.rank(al.diverse_scores(scores, x))
    assert len(set(group[ranked[:3]])) == 3 and group[ranked[0]] == 0


def test_near_duplicates_of_labelled_images_come_last():
    x, group = clusters(n_clusters=4, copies=3)
    labelled = x[group == 2][:1] + 1e-4  # one frame of burst 2 is labelled already
    scores = [0.0 if g == 2 else 0.7 for g in group]  # and its burst looks the most uncertain
    assert set(group[al.rank(scores)[:3]]) == {2}  # uncertainty alone: three copies of what is labelled
    ranked = al.rank(al.diverse_scores(scores, x, labelled))
    assert set(group[ranked[:3]]) == {0, 1, 3}  # every unlabelled burst before a copy of a labelled frame


def test_diverse_scores_map_the_greedy_order_to_task_scores():
    x, _ = clusters(n_clusters=3, copies=2)
    scores = [0.3, 0.4, 0.2, 0.9, 0.5, 0.5]
    out = al.diverse_scores(scores, x, k=2)
    assert sorted(out) == [i / 6 for i in range(6)]  # the position in the order over the pool size
    assert min(out) == 0.0 and max(out) < 1.0
    assert al.rank(out)[:2] == al.k_center_greedy(x / np.linalg.norm(x, axis=1, keepdims=True),
                                                  weights=[1 - s for s in scores], k=2)[:2]
    assert out == al.diverse_scores(scores, x, k=2)  # deterministic
    assert al.diverse_scores(None, x) == al.diverse_scores([0.5] * 6, x)  # equal weights: plain k-center


def test_kcenter_ties_are_broken_by_key_and_inputs_are_checked():
    same = np.ones((5, 3))
    order = al.k_center_greedy(same, keys=[f"f{i}" for i in range(5)])
    assert sorted(order) == list(range(5)) and order == al.k_center_greedy(same, keys=[f"f{i}" for i in range(5)])
    assert al.k_center_greedy(np.zeros((0, 3))) == []
    with pytest.raises(ValueError, match="2-D"):
        al.k_center_greedy(np.zeros(3))
    with pytest.raises(ValueError, match="weights"):
        al.k_center_greedy(same, weights=[1, 1, 1, 1, -1])
    with pytest.raises(ValueError, match="labelled features"):
        al.k_center_greedy(same, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="2 scores for 5"):
        al.diverse_scores([0.1, 0.2], same)


def test_pooled_features_of_a_real_model_see_near_duplicates():
    torch = pytest.importorskip("torch")
    from shoeseg.model import build_model
    from shoeseg.predict import Predictor

    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, arch="lite0-fpn", min_size=64, max_size=96)
    predictor = Predictor(model, class_names=["shoe"], device="cpu", batch_size=3)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    a2 = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)  # a near-duplicate
    b = rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)
    feats = predictor.embed([a, a2, b])
    assert feats.shape[0] == 3 and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    assert np.linalg.norm(feats[0] - feats[1]) < 0.5 * np.linalg.norm(feats[0] - feats[2])
    # an image's row does not depend on the images beside it
    np.testing.assert_allclose(predictor.embed([a])[0], feats[0], atol=1e-5)
    np.testing.assert_allclose(predictor.embed([b, a])[1], feats[0], atol=1e-5)
    assert predictor.embed([]).shape[0] == 0
