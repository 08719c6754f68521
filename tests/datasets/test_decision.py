"""The decision rule: conservative unless a more invasive treatment is clearly better and
supported."""

import numpy as np
import pytest
from spinecast.datasets.decision import DecisionRule, decide
from spinecast.datasets.schema import TREATMENTS

PT, ESI, DECOMPRESSION, FUSION = range(4)


def members(means, spread, k=16, seed=0):
    """(1, K, 4) ensemble samples around `means` with the given spread per treatment."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((k, 4))
    return np.clip(np.asarray(means)[None, :] + noise * np.asarray(spread)[None, :], 0, 1)[None]


def test_the_conservative_option_is_kept_when_intervals_overlap():
    """Decompression has the higher mean, but its ensemble spread puts the lower bound of its
    benefit below the margin: physical therapy stays, and the argmax would have operated."""
    samples = members([0.60, 0.55, 0.66, 0.50], [0.01, 0.01, 0.15, 0.01])
    d = decide(samples, None, DecisionRule())
    assert d.argmax[0] == DECOMPRESSION and d.recommended[0] == PT
    assert d.reasons[0].startswith("physical_therapy: the conservative option is kept")
    assert d.benefit_low[0, DECOMPRESSION] < 0.02 < d.benefit[0, DECOMPRESSION]


def test_a_clearly_better_supported_surgery_is_recommended():
    samples = members([0.50, 0.52, 0.80, 0.70], [0.01, 0.01, 0.02, 0.02])
    d = decide(samples, np.array([[0.3, 0.2, 0.4, 0.1]]), DecisionRule())
    assert d.recommended[0] == DECOMPRESSION and d.reasons[0].startswith("decompression:")
    assert d.warnings[0] == []
    assert (d.low[0] <= d.mean[0]).all() and (d.mean[0] <= d.high[0]).all()


def test_fusion_must_beat_decompression_not_only_physical_therapy():
    """Climbing the ladder: fusion is compared with the current choice (decompression)."""
    samples = members([0.50, 0.50, 0.80, 0.81], [0.01, 0.01, 0.01, 0.01])
    assert decide(samples, None, DecisionRule()).recommended[0] == DECOMPRESSION
    samples = members([0.50, 0.50, 0.55, 0.81], [0.01, 0.01, 0.01, 0.01])
    assert decide(samples, None, DecisionRule()).recommended[0] == FUSION


def test_surgery_must_clear_its_own_larger_margin_where_an_injection_clears_the_usual_one():
    """The same clear gain of about 0.04 recommends the injection but not an operation when the
    surgical margin is 0.06."""
    rule = DecisionRule(margin=0.02, surgical_margin=0.06)
    operation = members([0.50, 0.50, 0.54, 0.40], [0.001, 0.001, 0.001, 0.001])
    d = decide(operation, None, rule)
    assert d.argmax[0] == DECOMPRESSION and d.recommended[0] == PT
    assert (
        decide(operation, None, DecisionRule(surgical_margin=0.02)).recommended[0] == DECOMPRESSION
    )
    injection = members([0.50, 0.54, 0.40, 0.40], [0.001, 0.001, 0.001, 0.001])
    d = decide(injection, None, rule)
    assert d.recommended[0] == ESI and "margin +0.02" in d.reasons[0]


def test_a_treatment_without_support_is_never_recommended_and_is_named():
    samples = members([0.40, 0.42, 0.50, 0.90], [0.01, 0.01, 0.01, 0.01])
    propensity = np.array([[0.6, 0.3, 0.09, 0.01]])
    d = decide(samples, propensity, DecisionRule(support_floor=0.05))
    assert d.recommended[0] == DECOMPRESSION  # fusion would win by far, but nobody like this got it
    assert not d.supported[0, FUSION] and d.supported[0, DECOMPRESSION]
    assert len(d.warnings[0]) == 1 and d.warnings[0][0].startswith(
        "fusion: few patients like this one"
    )
    assert decide(samples, propensity, DecisionRule(support_floor=0.0)).recommended[0] == FUSION


def test_one_member_is_a_point_estimate():
    d = decide(np.array([[[0.5, 0.5, 0.6, 0.4]]]), None, DecisionRule(margin=0.05))
    assert d.recommended[0] == DECOMPRESSION and d.benefit_low[0, DECOMPRESSION] == pytest.approx(
        0.1
    )


@pytest.mark.parametrize(
    "field, value", [("margin", 2.0), ("quantile", 0.7), ("support_floor", -0.1)]
)
def test_bad_settings_name_the_setting(field, value):
    with pytest.raises(ValueError, match=field):
        DecisionRule(**{field: value})


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(N, K, 4\)"):
        decide(np.zeros((3, len(TREATMENTS))), None, DecisionRule())


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_intervals_and_bounds_are_the_members_quantiles(k):
    """The rule's sort-based quantiles equal numpy's (linear method), whatever the member count."""
    samples = np.random.default_rng(k).random((6, k, 4))
    rule = DecisionRule(quantile=0.15, interval=0.7)
    d = decide(samples, None, rule)
    low, high = np.quantile(samples, [0.15, 0.85], axis=1)
    benefit = samples - samples[:, :, :1]
    np.testing.assert_allclose(d.low, low, atol=1e-12)
    np.testing.assert_allclose(d.high, high, atol=1e-12)
    np.testing.assert_allclose(d.benefit_low, np.quantile(benefit, 0.15, axis=1), atol=1e-12)
