"""Active-learning scores: which unlabelled images a person should label next.

Every strategy turns the current model's view of an image into ONE number per image, the
**score**, in ``[0, 1]``, where **lower means more informative**. The score is what the product
stores as the prediction's ``score`` in Label Studio, and Label Studio's Data Manager sorts by
prediction score ascending (``tasks:predictions_score``), so the first tasks a person sees are the
ones the model would learn most from. In other words ``score = 1 - informativeness``.

Strategies (:data:`STRATEGIES`):

``random``
    A baseline: a uniform number drawn from a hash of the task id and a seed. Deterministic (the
    same task always gets the same score) and needs no model. Every other strategy has to beat it.
``least_confidence``
    ``score = max detection score`` (informativeness ``1 - max score``): images where even the best
    shoe candidate is doubtful come first. An image with no candidate at all scores 0: for shoe
    photos, seeing nothing is a miss, the most useful thing to correct.
``flip_consistency``
    The model looks at the image and at its mirror image; the flipped prediction is flipped back and
    matched greedily to the original one by mask IoU. ``score = sum(IoU * (s_a + s_b)) / sum(all
    scores)`` over matched pairs: 1 when both views agree shoe for shoe, 0 when nothing matches
    (each detection weighs its own score, so faint candidates barely count). Masks that move under a
    flip, or confident shoes seen in only one view, mean the model has not learnt a stable shape:
    the boundary errors a mask metric punishes and a box score does not reveal.
``entropy``
    ``score = 1 - max binary entropy (bits) over every candidate >= 0.05``. Shoes come in pairs:
    least confidence only looks at the best candidate, so an image with one sure shoe and one
    doubtful shoe (p ~ 0.5) counts as easy. Entropy looks at every candidate and flags the image by
    its most ambiguous one, whether that candidate is a half-seen second shoe or a shoe-like
    background object; a candidate at 0.05 or 0.97 is near-certain and barely counts.

Images where neither view holds a detection score 0 under every model-based strategy.

Pool strategies (:data:`POOL_STRATEGIES`, offline simulation only for now) rank the whole unlabelled pool at
once instead of scoring each image on its own, so that near-duplicate frames are not all picked together:

``diverse_least_confidence``
    Uncertainty-weighted k-center greedy on pooled backbone features (``Predictor.embed``): each pick is the
    image with the largest ``(1 - least_confidence score) * distance to the nearest labelled or already
    picked image`` (:func:`k_center_greedy`). A near-duplicate of something labelled or picked is at
    distance ~0 and waits until every distinct image has had its turn.
``kcenter``
    The same greedy without the uncertainty weight (the core-set baseline), to tell diversity's share of a
    gain from uncertainty's.

Their per-task score is the position in the greedy order divided by the pool size (:func:`diverse_scores`;
the first pick scores 0), so sorting by score ascending gives the greedy order and any prefix of it is the
greedy selection of that size. It depends on every other unlabelled task and on the labelled set, which is
why :func:`detections_score` (one image's detections) cannot compute it and the live loop does not offer it
yet (docs/active-learning.md).

Example:
    >>> from shoeseg.active_learning import score_images
    >>> score_images("random", None, [image], task_ids=[17])  # doctest: +SKIP
    [0.7046...]
    >>> predictor = Predictor.from_checkpoint("models/v3/model.pt")  # doctest: +SKIP
    >>> score_images("least_confidence", predictor, [image_a, image_b])  # doctest: +SKIP
    [0.93, 0.12]   # image_b first: its best shoe has score 0.12
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

#: Detections below this score are not candidates (torchvision's own box score threshold).
CANDIDATE_SCORE_THRESH = 0.05
#: Seed of the ``random`` strategy, so two runs give the same order.
RANDOM_SEED = 0


class _Detection(Protocol):
    label: str
    score: float
    mask: np.ndarray


def random_score(task_id: Any, *, seed: int = RANDOM_SEED) -> float:
    """A uniform number in ``[0, 1)`` fixed by ``task_id`` and ``seed``.

    Example:
        >>> random_score(42) == random_score(42)
        True
    """
    digest = hashlib.blake2b(f"{seed}:{task_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def least_confidence_score(detections: Sequence[_Detection]) -> float:
    """The best candidate's score (0 when there is none): lower means the model is less sure.

    Example:
        >>> from types import SimpleNamespace as D
        >>> least_confidence_score([D(score=0.3), D(score=0.9)])
        0.9
    """
    if not detections:
        return 0.0
    return _clip01(max(float(d.score) for d in detections))


def _binary_entropy_bits(p: float) -> float:
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


def entropy_score(detections: Sequence[_Detection], *, min_score: float = CANDIDATE_SCORE_THRESH) -> float:
    """``1 -`` the highest binary entropy among candidates scoring at least ``min_score`` (0 when none).

    Example:
        >>> from types import SimpleNamespace as D
        >>> entropy_score([D(score=0.99), D(score=0.5)])
        0.0
    """
    candidates = [float(d.score) for d in detections if float(d.score) >= min_score]
    if not candidates:
        return 0.0
    return _clip01(1.0 - max(_binary_entropy_bits(p) for p in candidates))


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    from shoeseg.geometry import mask_iou

    return float(mask_iou(a, b))


def match_greedy(
    a: Sequence[_Detection], b: Sequence[_Detection], *, iou: Callable[[np.ndarray, np.ndarray], float] = _mask_iou
) -> list[tuple[int, int, float]]:
    """Pairs detections of ``a`` and ``b`` with the same label, highest mask IoU first, each used once.

    Returns ``(index_in_a, index_in_b, iou)`` for every pair with IoU > 0.

    Example:
        >>> match_greedy([], [])
        []
    """
    pairs = []
    for i, da in enumerate(a):
        for j, db in enumerate(b):
            if da.label != db.label:
                continue
            v = iou(da.mask, db.mask)
            if v > 0.0:
                pairs.append((v, i, j))
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches = []
    for v, i, j in pairs:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        matches.append((i, j, v))
    return matches


def flip_consistency_score(
    original: Sequence[_Detection],
    flipped_back: Sequence[_Detection],
    *,
    iou: Callable[[np.ndarray, np.ndarray], float] = _mask_iou,
    min_score: float = CANDIDATE_SCORE_THRESH,
) -> float:
    """Agreement between a prediction and the prediction on the mirrored image, flipped back.

    Candidates scoring at least ``min_score`` are matched greedily by mask IoU (same label); each
    detection weighs its own score, so a confident shoe that moves or vanishes under the flip counts
    much more than a faint candidate::

        sum over matched pairs (a, b) of IoU(a, b) * (score_a + score_b)
        ----------------------------------------------------------------
             sum of scores of both views' candidates

    1 when both views agree shoe for shoe, 0 when nothing matches or neither view sees anything.
    With equal scores this is ``2 * sum(IoU) / (n_original + n_flipped)``.

    Example:
        >>> flip_consistency_score([], [])
        0.0
    """
    a = [d for d in original if float(d.score) >= min_score]
    b = [d for d in flipped_back if float(d.score) >= min_score]
    total = sum(float(d.score) for d in a) + sum(float(d.score) for d in b)
    if total <= 0.0:
        return 0.0
    matched = match_greedy(a, b, iou=iou)
    agree = sum(v * (float(a[i].score) + float(b[j].score)) for i, j, v in matched)
    return _clip01(agree / total)


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3:
            shape = getattr(im, "shape", type(im).__name__)
            raise ValueError(f"image {i}: expected an RGB uint8 array of shape (H, W, 3), got {shape}")


def _score_random(predictor, images, task_ids):
    return [random_score(t) for t in task_ids]


def _score_least_confidence(predictor, images, task_ids):
    dets = predictor.predict(list(images), score_thresh=CANDIDATE_SCORE_THRESH)
    return [least_confidence_score(d) for d in dets]


def _score_entropy(predictor, images, task_ids):
    dets = predictor.predict(list(images), score_thresh=CANDIDATE_SCORE_THRESH)
    return [entropy_score(d) for d in dets]


def _score_flip(predictor, images, task_ids):
    original, flipped = predictor.predict_with_flip(list(images), score_thresh=CANDIDATE_SCORE_THRESH)
    return [flip_consistency_score(o, f) for o, f in zip(original, flipped, strict=True)]


#: Strategy name -> ``fn(predictor, images, task_ids) -> scores`` (lower = more informative).
STRATEGIES: dict[str, Callable[[Any, Sequence[np.ndarray], list[Any]], list[float]]] = {
    "random": _score_random,
    "least_confidence": _score_least_confidence,
    "flip_consistency": _score_flip,
    "entropy": _score_entropy,
}


#: The live default (``SHOESEG_AL_STRATEGY``): the best strategy measured on the soles, three seeds on one machine
#: (docs/active-learning.md): ahead of ``random`` at 30 and 40 labels on every seed, where ``least_confidence`` and
#: ``diverse_least_confidence`` were not. It runs each image twice (itself and its mirror image).
DEFAULT_STRATEGY = "flip_consistency"


def check_strategy(strategy: str) -> str:
    """Returns ``strategy`` when it is known, else raises ``ValueError`` listing the known ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown active-learning strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def candidates_needed(strategy: str, shown_thresh: float, *, rescored: bool = False) -> tuple[float, float]:
    """What a strategy's task score must see of the model's candidates, for a prediction that shows those scoring
    at least ``shown_thresh``: ``(score threshold, masks from)``, the lowest score a candidate is asked for and
    the lowest for which its mask is (:func:`shoeseg.inference.detect`). The same task score, for less of the
    mask head's work:

    * ``random`` needs no candidate: what is shown is enough;
    * ``least_confidence`` and ``entropy`` need every candidate's score down to :data:`CANDIDATE_SCORE_THRESH`,
      and masks only for what is shown, unless the scores are ``rescored`` by their masks' quality
      (:func:`shoeseg.outlines.maskness`, the predictor's ``mask_rescore``): then every candidate's mask;
    * ``flip_consistency`` compares the masks of every candidate with those of the mirror image.

    Example:
        >>> candidates_needed("least_confidence", 0.5)
        (0.05, 0.5)
        >>> candidates_needed("least_confidence", 0.5, rescored=True)
        (0.05, 0.05)
    """
    check_strategy(strategy)
    shown = max(float(shown_thresh), CANDIDATE_SCORE_THRESH)
    if strategy == "random":
        return shown, shown
    if strategy == "flip_consistency" or rescored:
        return CANDIDATE_SCORE_THRESH, CANDIDATE_SCORE_THRESH
    return CANDIDATE_SCORE_THRESH, shown


def needs_flip(strategy: str) -> bool:
    """True when ``strategy`` scores an image from its mirror image too (:func:`detections_score`'s ``flipped``)."""
    return check_strategy(strategy) == "flip_consistency"


def detections_score(strategy: str, detections: Sequence[_Detection], *, flipped: Sequence[_Detection] | None = None,
                     task_id: Any = None) -> float:
    """The task score of one image from what the model saw: every candidate (score >= 0.05), lower = label first.

    The one rule behind every prediction's ``score`` (``shoeseg_services.predictions``), the backend's and the worker's.

    Args:
        strategy: one of :data:`STRATEGIES`.
        detections: the image's candidates.
        flipped: the candidates on the mirror image, mapped back (``Predictor.predict_with_flip``); needed by
            ``flip_consistency`` only.
        task_id: seeds ``random``.

    Example:
        >>> from types import SimpleNamespace as D
        >>> detections_score("least_confidence", [D(score=0.3), D(score=0.9)])
        0.9
    """
    check_strategy(strategy)
    if strategy == "random":
        return random_score(task_id)
    if strategy == "least_confidence":
        return least_confidence_score(detections)
    if strategy == "entropy":
        return entropy_score(detections)
    if flipped is None:
        raise ValueError("flip_consistency needs the detections on the mirror image (flipped=...)")
    return _clip01(flip_consistency_score(detections, flipped))


def score_images(
    strategy: str, predictor, images: Sequence[np.ndarray], *, task_ids: Sequence[Any] | None = None
) -> list[float]:
    """Scores images for active learning: one number in ``[0, 1]`` per image, LOWER = MORE informative.

    Label Studio sorts tasks by prediction score ascending, so storing this number as the
    prediction's ``score`` puts the images the model would learn most from first.

    Args:
        strategy: one of :data:`STRATEGIES` (``random``, ``least_confidence``, ``flip_consistency``, ``entropy``).
        predictor: a :class:`shoeseg.predict.Predictor` (unused, may be ``None``, for ``random``).
        images: RGB uint8 arrays ``(H, W, 3)``; scored in one batch, so pass a few at a time.
        task_ids: ids that seed the ``random`` strategy (default: the positions ``0..n-1``).

    Returns:
        One score per image, in order.

    Raises:
        ValueError: unknown strategy, an image that is not ``(H, W, 3)``, or ``task_ids`` of the wrong length.

    Example:
        >>> score_images("random", None, [np.zeros((8, 8, 3), np.uint8)], task_ids=[5]) == [random_score(5)]
        True
    """
    fn = STRATEGIES[check_strategy(strategy)]
    images = list(images)
    _check_images(images)
    ids = list(range(len(images))) if task_ids is None else list(task_ids)
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} task ids for {len(images)} images")
    if not images:
        return []
    if predictor is None and strategy != "random":
        raise ValueError(f"strategy {strategy!r} needs a predictor")
    scores = fn(predictor, images, ids)
    log.debug("%s scores: %s", strategy, scores)
    return [_clip01(s) for s in scores]


def rank(scores: Sequence[float], *, keys: Sequence[Any] | None = None, seed: int = RANDOM_SEED) -> list[int]:
    """Indices of ``scores`` from most to least informative (ascending score).

    Ties (common early on, when a weak model sees nothing in many images) are broken by a seeded
    hash of ``keys`` (default: positions), never by input order.

    Example:
        >>> rank([0.9, 0.1, 0.5])
        [1, 2, 0]
    """
    keys = list(range(len(scores))) if keys is None else list(keys)
    return sorted(range(len(scores)), key=lambda i: (float(scores[i]), random_score(keys[i], seed=seed + 1)))


# ---------------------------------------------------------------- pool strategies (diversity)

#: Uncertainty weights never go below this, so an image the model is sure of still has its turn by
#: diversity once only near-duplicates of picked images are left.
DIVERSITY_WEIGHT_FLOOR = 0.01

#: Pool strategy name -> the per-image strategy whose score weighs the distances (``None``: pure k-center).
POOL_STRATEGIES: dict[str, str | None] = {
    "diverse_least_confidence": "least_confidence",
    "kcenter": None,
}


def check_simulation_strategy(strategy: str) -> str:
    """Returns ``strategy`` when the offline simulation knows it (:data:`STRATEGIES` or :data:`POOL_STRATEGIES`)."""
    if strategy not in STRATEGIES and strategy not in POOL_STRATEGIES:
        known = ", ".join([*STRATEGIES, *POOL_STRATEGIES])
        raise ValueError(f"unknown active-learning strategy {strategy!r}; choose one of {known}")
    return strategy


def is_pool_strategy(strategy: str) -> bool:
    """True when ``strategy`` ranks the whole pool at once (:data:`POOL_STRATEGIES`), needing pooled features."""
    return check_simulation_strategy(strategy) in POOL_STRATEGIES


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (images, dims), got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def k_center_greedy(
    features: np.ndarray,
    labelled: np.ndarray | None = None,
    *,
    weights: Sequence[float] | None = None,
    k: int | None = None,
    keys: Sequence[Any] | None = None,
    seed: int = RANDOM_SEED,
) -> list[int]:
    """The pool's indices in (weighted) k-center greedy order.

    Each of the first ``k`` steps picks the image with the largest ``weight * d``, where ``d`` is the Euclidean
    distance to the nearest row of ``labelled`` or of the images picked before (with no labelled row, the
    first pick is the largest weight). ``weights=None`` is plain k-center greedy (core-set). After ``k`` picks
    the rest follow by that same objective, largest first, without further updates. Ties are broken by a
    seeded hash of ``keys`` (default: positions), as in :func:`rank`.

    Args:
        features: ``(n, d)`` rows of the unlabelled pool.
        labelled: ``(m, d)`` rows of the labelled images, or ``None``.
        weights: ``n`` non-negative numbers (informativeness), or ``None`` for all ones.
        k: greedy steps (default: every image).

    Example:
        >>> x = np.array([[0.0, 0.0], [0.0, 0.01], [5.0, 0.0]])
        >>> k_center_greedy(x, np.array([[0.0, 0.1]]))
        [2, 0, 1]
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (images, dims), got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return []
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be {n} finite non-negative numbers")
    keys = list(range(n)) if keys is None else list(keys)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} images")
    tie = np.array([random_score(key, seed=seed + 1) for key in keys])
    steps = n if k is None else max(0, min(int(k), n))

    d = np.full(n, np.inf)
    if labelled is not None and len(labelled):
        lab = np.asarray(labelled, dtype=np.float64)
        if lab.ndim != 2 or lab.shape[1] != x.shape[1]:
            raise ValueError(f"labelled features must have shape (m, {x.shape[1]}), got {lab.shape}")
        for row in lab:  # one labelled row at a time keeps memory at O(n)
            np.minimum(d, np.linalg.norm(x - row, axis=1), out=d)
    taken = np.zeros(n, bool)
    order: list[int] = []

    def objective() -> np.ndarray:
        obj = w * d if np.isfinite(d).any() else w.copy()  # nothing to be far from yet: weights alone
        obj = np.where(np.isinf(obj), np.finfo(np.float64).max, obj)
        obj[taken] = -np.inf
        return obj

    for _ in range(steps):
        obj = objective()
        best = obj.max()
        candidates = np.flatnonzero(obj >= best - 1e-12 * max(1.0, abs(best)))
        i = int(candidates[np.argmin(tie[candidates])])
        order.append(i)
        taken[i] = True
        np.minimum(d, np.linalg.norm(x - x[i], axis=1), out=d)
    if len(order) < n:
        obj = objective()
        rest = [i for i in range(n) if not taken[i]]
        rest.sort(key=lambda i: (-obj[i], tie[i]))
        order += rest
    return order


def diverse_scores(
    scores: Sequence[float] | None,
    features: np.ndarray,
    labelled_features: np.ndarray | None = None,
    *,
    k: int | None = None,
    keys: Sequence[Any] | None = None,
    seed: int = RANDOM_SEED,
    floor: float = DIVERSITY_WEIGHT_FLOOR,
) -> list[float]:
    """Per-task scores of a pool strategy: the position in the k-center greedy order over the pool size.

    Features are L2-normalised first (distances in ``[0, 2]``). With ``scores`` (a per-image strategy's, lower
    = more informative), each image's weight is ``max(1 - score, floor)``; without, plain k-center.

    Returns:
        ``n`` numbers in ``[0, 1)``, lower = label first; the first pick scores 0.

    Example:
        >>> x = np.array([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]])
        >>> diverse_scores([0.1, 0.2, 0.9], x)   # 0 first, then 2 (distinct) before 1 (a near-copy of 0)
        [0.0, 0.6666666666666666, 0.3333333333333333]
    """
    x = _unit_rows(features)
    n = x.shape[0]
    weights = None
    if scores is not None:
        if len(scores) != n:
            raise ValueError(f"{len(scores)} scores for {n} feature rows")
        weights = [max(1.0 - _clip01(s), float(floor)) for s in scores]
    lab = None if labelled_features is None or len(labelled_features) == 0 else _unit_rows(labelled_features)
    order = k_center_greedy(x, lab, weights=weights, k=k, keys=keys, seed=seed)
    out = [0.0] * n
    for pos, i in enumerate(order):
        out[i] = pos / n
    return out
