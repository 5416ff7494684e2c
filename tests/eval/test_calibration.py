"""Temperature scaling, ECE and split-conformal sets on held-out synthetic data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medvlp.errors import ConfigError, DataError
from medvlp.eval.calibration import (
    ConformalPredictor,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)


def _overconfident(seed: int, n: int, c: int = 4, scale: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is far too sure: true signal 1.0 per class, noise 0.9, multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return scale * (np.eye(c)[y] + rng.normal(0, 0.9, (n, c))), y


def _ece_reference(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        m = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
        if m.any():
            total += m.sum() / len(p) * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return total


def test_ece_matches_loop_reference() -> None:
    z, y = _overconfident(0, 2000)
    p = apply_temperature(z, 1.0)
    for bins in (5, 15):
        assert expected_calibration_error(p, y, n_bins=bins) == pytest.approx(_ece_reference(p, y, bins), abs=1e-9)
    perfect = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2, 1])) == 0.0


def test_temperature_is_the_nll_minimum_and_reduces_heldout_ece() -> None:
    z, y = _overconfident(1, 8000)
    z_val, y_val, z_test, y_test = z[:4000], y[:4000], z[4000:], y[4000:]
    t = fit_temperature(z_val, y_val)
    assert t > 2.0  # scale 5 on noisy logits: strongly overconfident

    def nll(temp: float) -> float:
        p = apply_temperature(z_val, temp)
        return float(-np.mean(np.log(p[np.arange(len(y_val)), y_val])))

    grid = np.exp(np.linspace(np.log(t) - 0.5, np.log(t) + 0.5, 2001))
    best = grid[np.argmin([nll(g) for g in grid])]
    assert t == pytest.approx(best, rel=1e-3)
    before = expected_calibration_error(apply_temperature(z_test, 1.0), y_test)
    after = expected_calibration_error(apply_temperature(z_test, t), y_test)
    assert before > 0.15
    assert after < 0.03 and after < before / 4
    # temperature scaling never changes the argmax
    np.testing.assert_array_equal(apply_temperature(z_test, t).argmax(1), z_test.argmax(1))


def test_underconfident_logits_get_temperature_below_one() -> None:
    z, y = _overconfident(2, 3000, scale=0.3)
    assert fit_temperature(z, y) < 1.0


def test_multilabel_temperature_uses_sigmoid_and_reduces_heldout_ece() -> None:
    rng = np.random.default_rng(3)
    true_logit = rng.normal(0, 2, (6000, 3))
    Y = (rng.random(true_logit.shape) < 1 / (1 + np.exp(-true_logit))).astype(int)
    z = 4.0 * true_logit  # four times too sure: T = 4 recovers the true probabilities
    t = fit_temperature(z[:3000], Y[:3000])
    assert t == pytest.approx(4.0, rel=0.1)
    before = expected_calibration_error(apply_temperature(z[3000:], 1.0, multilabel=True), Y[3000:])
    after = expected_calibration_error(apply_temperature(z[3000:], t, multilabel=True), Y[3000:])
    assert before > 0.1 and after < 0.03
    with pytest.raises(DataError, match="y is a matrix"):
        fit_temperature(z, Y, multilabel=False)


def test_temperature_bad_input() -> None:
    z, y = _overconfident(4, 10)
    z[3, 2] = np.nan
    with pytest.raises(DataError, match="row 3"):
        fit_temperature(z, y)
    with pytest.raises(DataError, match="outside 0..3"):
        fit_temperature(np.zeros((3, 4)), np.array([0, 1, 4]))
    with pytest.raises(ConfigError, match="positive finite"):
        apply_temperature(np.zeros((2, 2)), 0.0)


@pytest.mark.parametrize("method,randomized", [("lac", True), ("aps", True)])
def test_conformal_reaches_nominal_coverage_on_heldout_data(method: str, randomized: bool) -> None:
    z, y = _overconfident(5, 10000, c=6)
    p = apply_temperature(z, fit_temperature(z[:2000], y[:2000]))
    cal, test = slice(0, 5000), slice(5000, 10000)
    cp = ConformalPredictor(alpha=0.1, method=method, randomized=randomized, allow_empty=True).fit(p[cal], y[cal])
    ev = cp.evaluate(p[test], y[test])
    # sampling sd of a 90% coverage over 5000 rows is ~0.004 (plus the calibration draw): +-0.02 is wide
    assert abs(ev["coverage"] - 0.9) < 0.02
    assert 1.0 < ev["mean_set_size"] < 6.0  # informative: neither singletons nor every label
    sets = cp.predict_sets(p[test])
    assert np.mean([y[5000 + i] in s for i, s in enumerate(sets)]) == pytest.approx(ev["coverage"])


def test_conformal_variants_are_conservative_and_top_label_is_kept() -> None:
    z, y = _overconfident(6, 6000, c=5)
    p = apply_temperature(z, 3.0)
    exact = ConformalPredictor(0.2, allow_empty=True).fit(p[:3000], y[:3000])
    nonempty = ConformalPredictor(0.2).fit(p[:3000], y[:3000])
    assert exact.threshold == nonempty.threshold
    m_exact, m_nonempty = exact.predict_mask(p[3000:]), nonempty.predict_mask(p[3000:])
    assert np.all(m_nonempty >= m_exact) and m_nonempty.sum(1).min() == 1
    assert np.all(m_nonempty[np.arange(3000), p[3000:].argmax(1)])
    aps_plain = ConformalPredictor(0.2, method="aps", randomized=False).fit(p[:3000], y[:3000])
    assert aps_plain.evaluate(p[3000:], y[3000:])["coverage"] >= 0.8 - 0.02


def test_conformal_matches_the_rule_used_by_the_api() -> None:
    """medvlp.api keeps ``threshold`` and builds sets as {label: 1 - p <= threshold} (LAC)."""
    z, y = _overconfident(7, 2000, c=3)
    p = apply_temperature(z, 2.5)
    cp = ConformalPredictor().fit(p[:1000], y[:1000], coverage=0.9)
    assert cp.alpha == pytest.approx(0.1) and isinstance(cp.threshold, float)
    api_rule = (1.0 - p[1000:]) <= float(cp.threshold)
    exact = ConformalPredictor(allow_empty=True).fit(p[:1000], y[:1000], coverage=0.9)
    np.testing.assert_array_equal(api_rule, exact.predict_mask(p[1000:]))
    # the quantile is the ceil((n+1)(1-alpha))-th smallest score
    scores = np.sort(1.0 - p[np.arange(1000), y[:1000]])
    assert cp.threshold == scores[math.ceil(1001 * 0.9) - 1]


def test_conformal_small_calibration_set_returns_every_label() -> None:
    p = np.tile([0.6, 0.3, 0.1], (5, 1))
    cp = ConformalPredictor(alpha=0.05).fit(p, np.zeros(5, dtype=int))  # ceil(6 * 0.95) = 6 > 5
    assert cp.threshold == 1.0
    assert cp.predict_sets(p[:1], labels=["a", "b", "c"]) == [["a", "b", "c"]]
    aps = ConformalPredictor(alpha=0.05, method="aps").fit(p, np.zeros(5, dtype=int))
    assert math.isinf(aps.threshold)
    assert json.loads(json.dumps(aps.to_dict()))["threshold"] is None
    assert math.isinf(ConformalPredictor.from_dict(aps.to_dict()).threshold)


def test_conformal_save_load_roundtrip(tmp_path) -> None:
    z, y = _overconfident(8, 1500, c=3)
    p = apply_temperature(z, 2.0)
    cp = ConformalPredictor(alpha=0.15, method="aps").fit(p[:1000], y[:1000], labels=["a", "b", "c"])
    path = cp.save(tmp_path / "sub" / "conformal.json")
    state = json.loads(path.read_text())
    assert state["method"] == "aps" and state["n_cal"] == 1000 and state["coverage"] == pytest.approx(0.85)
    back = ConformalPredictor.load(path)
    assert back.threshold == cp.threshold and back.labels == ["a", "b", "c"]
    assert back.predict_sets(p[1000:]) == cp.predict_sets(p[1000:])
    assert all(isinstance(x, str) for s in back.predict_sets(p[1000:1010]) for x in s)
    with pytest.raises(ConfigError, match="does not exist"):
        ConformalPredictor.load(tmp_path / "missing.json")


def test_conformal_refuses_multilabel_and_bad_settings() -> None:
    with pytest.raises(DataError, match="single-label classification"):
        ConformalPredictor().fit(np.full((4, 2), 0.5), np.array([[1, 0], [0, 1], [1, 1], [0, 0]]))
    with pytest.raises(ConfigError, match="alpha must be in"):
        ConformalPredictor(alpha=1.5)
    with pytest.raises(ConfigError, match="'lac' or 'aps'"):
        ConformalPredictor(method="raps")
    with pytest.raises(ConfigError, match="not fitted"):
        ConformalPredictor().predict_sets(np.full((1, 2), 0.5))
