"""The promotion gate: does a new version replace the current one? Decided on paired per-image evidence.

Both versions are scored on the same validation images (each image's own mask AP, from
:func:`shoeseg.evaluate.evaluate` with ``per_image_ap=True``), and the per-image differences
``new - current`` are resampled (a paired bootstrap, seeded) into an interval of their mean, widened for the
handful of images a project validates on so that its 90 % comes closer to meaning 90 % (:func:`expanded_level`).
The rule:

* **refused** when the evidence says the new version is worse: the whole interval lies below 0;
* **promoted** otherwise: not worse beyond the interval.

An optional ``tolerance`` adds a rule on the point estimate: refused as well when the new version's mean is below
the current one's by more than ``tolerance`` even if the interval reaches 0 (a negative tolerance: a new version
must gain that much). Off by default: on 9 validation images the mean alone decides by noise. In the 60-minute
runs (docs/improving.md, "Which gate rule"), of the 5 decisions that only such a 0.01 tolerance refused, 4 were
as good or better on the 23 held-out photos (+0.000 to +0.027) and one worse (-0.036, inside its interval);
three of them were rounds that held back the labels added at minute 20.

Why paired and per image: two training seeds of one recipe already differ by 0.01-0.03 mask AP on 23 images,
so comparing two AP numbers with a fixed tolerance decides by noise. Scoring both versions on the same images
removes the images' own difficulty from the comparison, and the interval says how much a handful of images
can tell: on 9 images it is wide and only a clearly worse version is refused; on 30 it is narrow.

Only numpy is imported. The decision is a plain :class:`GateDecision` that the worker records in the version's
metadata (``meta["gate"]``) and ``/versions`` and ``shoeseg models list`` show.

Example:
    >>> d = decide([0.5, 0.6, 0.7, 0.4], [0.5, 0.5, 0.6, 0.4], has_current=True)
    >>> d.promote, round(d.diff, 3)
    (True, 0.05)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from via_tools.model import is_finite_number

#: What the gate compares: each validation image's mask AP (COCO, averaged over IoU 0.5:0.95).
METRIC = "per-image mask AP"
#: How the interval of the differences is made (:func:`paired_interval`), recorded with each decision.
INTERVAL = "expanded percentile bootstrap (Student's t below 5 images)"
#: Below this many images the interval is Student's (mean +- t s / sqrt(n)), not the bootstrap's.
FEW_IMAGES = 5
#: Bootstrap resamples of the per-image differences.
N_BOOTSTRAP = 2000


@dataclass(frozen=True)
class GateDecision:
    """A gate's decision and its evidence.

    Attributes:
        promote: whether the new version replaces the current one.
        reason: the decision in words (shown to people).
        metric: what was compared (:data:`METRIC`).
        compared_on: images both versions were scored on.
        new_mean / current_mean: the mean per-image metric of each version on those images.
        diff: ``new_mean - current_mean``.
        ci_low / ci_high: the bootstrap interval of ``diff`` at ``confidence``.
        confidence: the interval's level.
        tolerance: the largest drop of the mean that can still be promoted (``None``: no rule on the mean).
        interval: how the interval was made (:data:`INTERVAL`; decisions recorded before 2026-12-08 hold none:
            a plain percentile bootstrap).
    """

    promote: bool
    reason: str
    metric: str = METRIC
    compared_on: int = 0
    new_mean: float | None = None
    current_mean: float | None = None
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.9
    tolerance: float | None = None
    interval: str = INTERVAL

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paired_interval(new: Sequence[float], current: Sequence[float], *, confidence: float = 0.9,
                    n_boot: int = N_BOOTSTRAP, seed: int = 0, expand: bool = True) -> tuple[float, float, float]:
    """The mean of the paired differences ``new - current`` and its expanded percentile bootstrap interval.

    Args:
        new / current: one value per image, in the same order.
        confidence: the interval's level, expanded for the number of images (:func:`expanded_level`; 0.9 on 9
            images: the 2.4th to the 97.6th percentile of the resampled means, on 1000 the 5th to the 95th; on 2-4
            images Student's interval, see :data:`FEW_IMAGES`).
        n_boot: resamples.
        seed: the resampling's seed (the same evidence always gives the same interval).
        expand: widen the interval for the number of images (the gate's; ``False``: the plain percentile interval,
            for comparison).

    Returns:
        ``(mean, low, high)``.

    Raises:
        ValueError: the two lists differ in length, are empty, or hold a value that is not finite; the
            confidence is not strictly between 0 and 1.

    Example:
        >>> paired_interval([1.0, 1.0], [0.5, 0.5])
        (0.5, 0.5, 0.5)
    """
    a = np.asarray(new, dtype=float)
    b = np.asarray(current, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two lists of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no paired scores to compare")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite numbers")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"an interval's confidence lies strictly between 0 and 1, got {confidence}")
    d = a - b
    if expand and 2 <= d.size < FEW_IMAGES:  # Student's interval: the resampled means cannot leave [min d, max d]
        half = _student_quantile(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
        return float(d.mean()), float(d.mean() - half), float(d.mean() + half)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(int(n_boot), d.size))].mean(axis=1)
    tail = (1.0 - (expanded_level(confidence, d.size) if expand else confidence)) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(d.mean()), float(low), float(high)


def expanded_z(confidence: float, n: int) -> float:
    """The normal quantile at which an interval of ``n`` paired differences holds its stated ``confidence``:
    ``sqrt(n / (n - 1)) * t(n - 1)`` at the upper ``(1 + confidence) / 2`` point (the normal one itself when
    ``n`` < 2). Divided by the normal quantile of ``confidence``, it is how much wider the interval is than the
    plain percentile bootstrap's (1.20 at 90 % on 9 images).

    Example:
        >>> round(expanded_z(0.9, 9), 3), round(expanded_z(0.9, 1), 3)
        (1.972, 1.645)
    """
    if n < 2:
        return NormalDist().inv_cdf(0.5 + confidence / 2)
    return math.sqrt(n / (n - 1)) * _student_quantile(0.5 + confidence / 2, n - 1)


def expanded_level(confidence: float, n: int) -> float:
    """The percentile level that gives a bootstrap interval of ``n`` paired differences its stated ``confidence``.

    A plain percentile bootstrap is too narrow on a handful of images: it treats the spread of the images it has
    as the spread of all images (it divides by ``n``, not ``n - 1``) and a normal tail where a Student one
    belongs. On 9 images its "90 %" interval held the true mean 78-84 % of the time in a simulation (normal,
    skewed and heavy-tailed differences, ``python -m bench gate_rules --coverage``), so a version no worse than
    the current one was refused in 8-18 % of decisions where 5 % is stated. The expanded percentile interval
    (Hesterberg, "What teachers should know about the bootstrap", 2015) takes the percentiles at the level whose
    normal quantile is :func:`expanded_z`: on 9 images the 90 % interval reads the 2.4th and 97.6th percentiles,
    and held the mean 84-90 % of the time in the same simulation (refused 6-14 %; a skewed difference stays
    hardest for any percentile interval). With one image there is no spread to correct: the level stays. Below
    :data:`FEW_IMAGES` images the level is near 1 and the resampled means cannot reach past the images' own
    range (on 2 images a 90 % interval would be their range and hold the mean at most half the time), so
    :func:`paired_interval` gives Student's interval there instead.

    Example:
        >>> round(expanded_level(0.9, 9), 3), round(expanded_level(0.9, 1000), 3)
        (0.951, 0.9)
    """
    return math.erf(expanded_z(confidence, n) / math.sqrt(2.0))  # the two-sided normal level of z


@functools.lru_cache(maxsize=256)
def _student_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p`` >= 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its CDF
    (the density integrated with the trapezoid rule; within 1e-6 of the tables for df 1-40 at the levels the gate
    uses).

    Example:
        >>> round(_student_quantile(0.95, 8), 4), round(_student_quantile(0.975, 4), 3)
        (1.8595, 2.776)
    """
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
        return 0.5 + float(((f[1:] + f[:-1]) * np.diff(t)).sum() / 2)

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def decide(new: Sequence[float | None], current: Sequence[float | None], *, has_current: bool,
           confidence: float = 0.9, tolerance: float | None = None, seed: int = 0) -> GateDecision:
    """Whether a new version replaces the current one, from both versions' per-image scores.

    Args:
        new / current: each version's score per validation image, in the same order; an image where either is
            ``None`` (no truth to score) is left out of the comparison.
        has_current: whether there is a current version at all (the first version is always promoted).
        confidence: the bootstrap interval's level.
        tolerance: the largest drop of the mean score that can still be promoted; ``None`` (the default): the
            interval alone decides.
        seed: the bootstrap's seed.

    Example:
        >>> decide([0.1, 0.2, 0.1], [0.6, 0.7, 0.6], has_current=True).promote
        False
        >>> decide([], [], has_current=False).reason
        'no current version'
    """
    common = dict(confidence=float(confidence), tolerance=None if tolerance is None else float(tolerance))
    if not has_current:
        return GateDecision(True, "no current version", **common)
    pairs = [(float(a), float(b)) for a, b in zip(new, current, strict=True) if a is not None and b is not None]
    if not pairs:
        return GateDecision(False, "no validation image to compare the new version with the current one", **common)
    a, b = zip(*pairs, strict=True)
    diff, low, high = paired_interval(a, b, confidence=confidence, seed=seed)
    evidence = dict(compared_on=len(pairs), new_mean=float(np.mean(a)), current_mean=float(np.mean(b)), diff=diff,
                    ci_low=low, ci_high=high, **common)
    said = (f"{METRIC} {evidence['new_mean']:.4f} vs current {evidence['current_mean']:.4f} on {len(pairs)} "
            f"image(s): difference {diff:+.4f}, {confidence:.0%} interval [{low:+.4f}, {high:+.4f}]")
    if high < 0:
        return GateDecision(False, f"worse: {said} lies below 0", **evidence)
    if tolerance is not None and diff < -tolerance:
        return GateDecision(False, f"worse on average: {said}; the mean drops by more than {tolerance:.4f}",
                            **evidence)
    return GateDecision(True, f"not worse: {said}", **evidence)


def evidence_text(gate: Mapping[str, Any] | None) -> str | None:
    """A recorded decision's evidence in one line, ``"+0.005 [-0.078, +0.078] on 9 images"``, as
    ``shoeseg models list``, the status page and the benchmarks show it; ``None`` when the decision holds no
    comparison (the first version, or no image to compare on). Plain text: a page escapes it.

    Args:
        gate: :meth:`GateDecision.to_json`'s dictionary, as stored in a version's ``meta["gate"]``.

    Example:
        >>> evidence_text({"diff": 0.005, "ci_low": -0.078, "ci_high": 0.078, "compared_on": 9})
        '+0.005 [-0.078, +0.078] on 9 images'
        >>> evidence_text({"reason": "no current version"}) is None
        True
    """
    if not isinstance(gate, Mapping) or not is_finite_number(gate.get("diff")):
        return None
    text = f"{gate['diff']:+.3f}"
    if is_finite_number(gate.get("ci_low")) and is_finite_number(gate.get("ci_high")):
        text += f" [{gate['ci_low']:+.3f}, {gate['ci_high']:+.3f}]"
    on = gate.get("compared_on")
    if isinstance(on, int) and not isinstance(on, bool):
        text += f" on {on} image{'' if on == 1 else 's'}"
    elif isinstance(on, str) and on:
        text += f" on {on}"
    return text


__all__ = ["INTERVAL", "METRIC", "GateDecision", "decide", "evidence_text", "expanded_level", "expanded_z", "paired_interval"]
