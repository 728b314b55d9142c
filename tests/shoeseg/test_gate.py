"""The promotion gate on constructed per-image scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from shoeseg.gate import INTERVAL, decide, expanded_level, paired_interval


def test_the_interval_of_identical_differences_is_that_difference():
    mean, low, high = paired_interval([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_the_interval_is_seeded_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    diffs = rng.normal(0.02, 0.1, size=200)
    base = rng.uniform(0.2, 0.6, size=200)
    small = paired_interval(base[:10] + diffs[:10], base[:10])
    assert small == paired_interval(base[:10] + diffs[:10], base[:10])  # the same evidence, the same interval
    large = paired_interval(base + diffs, base)
    assert small[2] - small[1] > 2 * (large[2] - large[1])
    assert large[1] < 0.02 < large[2]


def test_a_version_clearly_worse_on_every_image_is_refused_with_its_evidence():
    current = [0.5, 0.6, 0.4, 0.7, 0.55, 0.65]
    new = [c - 0.2 for c in current]
    d = decide(new, current, has_current=True)
    assert not d.promote and d.reason.startswith("worse:")
    assert d.compared_on == 6 and d.diff == pytest.approx(-0.2) and d.ci_high < 0
    assert d.to_json()["metric"] == "per-image mask AP"


def test_a_mean_drop_inside_the_interval_is_promoted_unless_a_tolerance_is_set():
    current = [0.5, 0.5, 0.5, 0.5]
    new = [0.9, 0.1, 0.4, 0.4]  # mean -0.05, an image that improved keeps the interval's top above 0
    default = decide(new, current, has_current=True)  # the interval alone: not worse beyond it
    assert default.ci_high > 0 and default.diff == pytest.approx(-0.05)
    assert default.promote and default.tolerance is None and default.reason.startswith("not worse")
    d = decide(new, current, has_current=True, tolerance=0.01)
    assert not d.promote and "on average" in d.reason and d.tolerance == 0.01
    assert decide(new, current, has_current=True, tolerance=0.06).promote
    gain = decide([c + 0.02 for c in current], current, has_current=True, tolerance=-0.05)
    assert gain.ci_low > 0 and not gain.promote  # a negative tolerance: the new version must gain 0.05


def test_noise_around_zero_promotes_and_a_clear_gain_promotes():
    current = [0.5, 0.3, 0.6, 0.4, 0.5]
    noisy = [0.52, 0.28, 0.61, 0.41, 0.49]
    assert decide(noisy, current, has_current=True).promote
    better = [c + 0.1 for c in current]
    d = decide(better, current, has_current=True)
    assert d.promote and d.reason.startswith("not worse") and d.ci_low > 0


def test_images_without_truth_are_left_out_and_nothing_to_compare_refuses():
    d = decide([0.5, None, 0.5], [0.5, 0.9, None], has_current=True)
    assert d.promote and d.compared_on == 1
    assert not decide([None], [0.3], has_current=True).promote
    assert decide([], [], has_current=False).promote


def test_bad_scores_are_refused_by_name():
    with pytest.raises(ValueError, match="one length"):
        paired_interval([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="finite"):
        paired_interval([float("nan")], [0.1])
    with pytest.raises(ValueError, match="no paired"):
        paired_interval([], [])


def test_evidence_text_names_difference_interval_and_images():
    from shoeseg.gate import evidence_text

    decision = decide([0.5, 0.6, 0.7], [0.4, 0.6, 0.5], has_current=True)
    text = evidence_text(decision.to_json())
    assert text == f"{decision.diff:+.3f} [{decision.ci_low:+.3f}, {decision.ci_high:+.3f}] on 3 images"
    assert evidence_text({"diff": -0.02, "compared_on": 1}) == "-0.020 on 1 image"
    assert evidence_text(decide([], [], has_current=False).to_json()) is None
    assert evidence_text({"diff": float("nan")}) is None
    assert evidence_text(None) is None


def test_the_interval_is_widened_on_a_handful_of_images_and_hardly_on_many():
    assert expanded_level(0.9, 9) == pytest.approx(0.9514, abs=1e-3)  # sqrt(9/8) * t(8) = 1.973, two-sided normal
    assert expanded_level(0.9, 2) > 0.999 and expanded_level(0.9, 1) == pytest.approx(0.9)
    assert expanded_level(0.9, 1000) == pytest.approx(0.9, abs=1e-3)
    rng = np.random.default_rng(3)
    current = rng.uniform(0.3, 0.7, size=9)
    new = current + rng.normal(-0.02, 0.08, size=9)
    mean, low, high = paired_interval(new, current)
    _, plain_low, plain_high = paired_interval(new, current, expand=False)
    assert low < plain_low <= mean <= plain_high < high
    assert (high - low) > 1.15 * (plain_high - plain_low)  # about 1.973 / 1.645 = 1.2 wider on 9 images


def test_a_version_the_plain_interval_calls_worse_on_nine_images_can_be_not_worse_beyond_the_widened_one():
    current = [0.6] * 9
    new = [0.6 + d for d in (-0.15, -0.12, -0.1, -0.08, -0.06, -0.04, 0.0, 0.03, 0.11)]  # plain top -0.003, widened +0.004
    plain = paired_interval(new, current, expand=False)
    d = decide(new, current, has_current=True)
    assert plain[2] < 0 < d.ci_high and d.promote and d.interval == INTERVAL


def test_on_two_to_four_images_the_interval_is_students_not_the_images_own_range():
    mean, low, high = paired_interval([0.49, 0.48], [0.5, 0.5])  # both a little worse
    half = 6.3138 * np.std([-0.01, -0.02], ddof=1) / np.sqrt(2)  # t(1) at 0.95
    assert mean == pytest.approx(-0.015) and (low, high) == pytest.approx((-0.015 - half, -0.015 + half), abs=1e-4)
    assert decide([0.49, 0.48], [0.5, 0.5], has_current=True).promote  # two images cannot say "worse" here
    _, plain_low, plain_high = paired_interval([0.49, 0.48], [0.5, 0.5], expand=False)
    assert plain_high < 0  # the percentile bootstrap's range would have refused it
    assert paired_interval([0.4] * 3, [0.5] * 3) == pytest.approx((-0.1, -0.1, -0.1))  # no spread, no width


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.2, -0.1])
def test_a_confidence_outside_zero_to_one_is_refused(confidence):
    with pytest.raises(ValueError, match="between 0 and 1"):
        paired_interval([0.5, 0.6], [0.4, 0.5], confidence=confidence)
