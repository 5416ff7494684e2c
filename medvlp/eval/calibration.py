"""Calibration of classifier outputs: temperature scaling, expected calibration error, and
split-conformal prediction sets.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` fitted by minimising
the negative log-likelihood on a labelled validation set; it changes confidence, never the argmax.
Split-conformal prediction (Vovk et al.; LAC of Sadinle et al., 2019; APS of Romano et al., 2020)
turns probabilities into label sets that contain the true label with probability at least
``1 - alpha`` on exchangeable data, whatever the model.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 2000)
    >>> logits = 4.0 * (np.eye(3)[y] + rng.normal(0, 0.8, (2000, 3)))   # overconfident
    >>> t = fit_temperature(logits, y)
    >>> bool(t > 1.0)
    True
    >>> cp = ConformalPredictor(alpha=0.1).fit(apply_temperature(logits[:1000], t), y[:1000])
    >>> sets = cp.predict_sets(apply_temperature(logits[1000:], t))
    >>> round(float(np.mean([y[1000 + i] in s for i, s in enumerate(sets)])), 1)
    0.9
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvlp.errors import ConfigError, DataError
from medvlp.eval.checks import finite_matrix

__all__ = [
    "ConformalPredictor",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
]

# Temperatures are searched on log T in [1e-3, 1e3]: far beyond any useful value, and it keeps the
# optimiser away from T -> 0 / inf on degenerate data (all rows correct gives T -> 0).
_LOG_T_BOUNDS = (math.log(1e-3), math.log(1e3))


def _as_2d(name: str, a: Any) -> np.ndarray:
    return finite_matrix(name, a, what="(N, C)")


def _targets(y: Any, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """(y, multilabel): (N,) class indices, or an (N, C) 0/1 matrix for multi-label data."""
    t = np.asarray(y)
    n, c = shape
    if t.ndim == 2:
        if t.shape != shape:
            raise DataError(f"multi-label y must have the shape of the scores {shape}; got {t.shape}")
        if not np.all((t == 0) | (t == 1)):
            raise DataError("multi-label y must contain only 0 and 1")
        return t.astype(np.float64), True
    if t.ndim != 1 or t.shape[0] != n:
        raise DataError(f"y must be (N,) class indices with N = {n} (one per row); got shape {t.shape}")
    if t.dtype.kind == "f" and not np.all(t == np.round(t)):
        raise DataError("y must hold integer class indices")
    if t.dtype.kind not in "iubf":
        raise DataError(f"y must hold integer class indices; got dtype {t.dtype}")
    t = t.astype(np.int64)
    bad = np.flatnonzero((t < 0) | (t >= c))
    if bad.size:
        raise DataError(f"y row {int(bad[0])} has class {int(t[bad[0]])}, outside 0..{c - 1}")
    return t, False


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _nll(logits: np.ndarray, y: np.ndarray, multilabel: bool, temperature: float) -> float:
    z = logits / temperature
    if multilabel:
        # binary cross-entropy per (row, label), in the numerically stable log1p(exp(-|z|)) form
        return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
    return float(-np.mean(_log_softmax(z)[np.arange(len(y)), y]))


def fit_temperature(logits: Any, y: Any, *, multilabel: bool | None = None) -> float:
    """Temperature ``T`` minimising the validation negative log-likelihood of ``softmax(logits / T)``.

    The NLL is a convex function of ``1 / T``, so a bounded 1-D search on ``log T`` (Brent's method)
    finds the global optimum without tuning a learning rate as LBFGS on ``T`` would need.

    Args:
        logits: (N, C) validation logits (e.g. ``t * cos`` of a zero-shot classifier), not probabilities.
        y: (N,) true class indices; or (N, C) 0/1 for multi-label findings scored by ``sigmoid(z / T)``.
        multilabel: force the multi-label (sigmoid) reading; by default inferred from ``y``'s shape.

    Returns:
        ``T`` > 0 (``T > 1`` softens overconfident outputs). Divide logits by it at prediction time.

    Raises:
        DataError: shapes do not match, NaN input, or fewer than 2 rows.

    Example:
        >>> z = np.array([[10.0, 0.0], [0.0, 10.0], [10.0, 0.0], [10.0, 0.0]]); y = np.array([0, 1, 1, 0])
        >>> bool(fit_temperature(z, y) > 1)     # one confident mistake: soften
        True
    """
    from scipy.optimize import minimize_scalar

    z = _as_2d("logits", logits)
    t, is_multi = _targets(y, z.shape)
    if multilabel is not None and multilabel != is_multi:
        raise DataError("multilabel=True needs an (N, C) 0/1 y" if multilabel else "y is a matrix: multi-label")
    if z.shape[0] < 2:
        raise DataError(f"temperature scaling needs at least 2 labelled rows; got {z.shape[0]}")
    if not is_multi and z.shape[1] < 2:
        raise DataError("temperature scaling of a softmax needs at least 2 classes")
    res = minimize_scalar(
        lambda log_t: _nll(z, t, is_multi, math.exp(log_t)),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(res.x))


def apply_temperature(logits: Any, temperature: float, *, multilabel: bool = False) -> np.ndarray:
    """Probabilities ``softmax(logits / T)`` (or ``sigmoid(logits / T)`` per label when multi-label).

    Args:
        logits: (N, C) logits.
        temperature: ``T`` from :func:`fit_temperature`.
        multilabel: independent sigmoid per column instead of a softmax over columns.

    Returns:
        (N, C) float64 probabilities.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be a positive finite number; got {temperature}")
    z = _as_2d("logits", logits) / float(temperature)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-z))
    return np.exp(_log_softmax(z))


def expected_calibration_error(probs: Any, y: Any, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins.

    Single-label: the confidence is the top probability and a row is correct when its argmax is the
    true class (top-label ECE, Guo et al. 2017). Multi-label: every (row, label) probability is one
    binary prediction compared with its 0/1 truth.

    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|`` with bins ``(i/n, (i+1)/n]``
    (the first bin also takes confidence 0).

    Args:
        probs: (N, C) probabilities.
        y: (N,) class indices, or (N, C) 0/1 for multi-label.
        n_bins: number of bins.

    Returns:
        ECE in [0, 1].

    Example:
        >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
        >>> round(expected_calibration_error(p, np.array([0, 0, 1, 1]), n_bins=10), 4)
        0.3
    """
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1; got {n_bins}")
    p = _as_2d("probs", probs)
    t, is_multi = _targets(y, p.shape)
    if is_multi:
        conf = p.ravel()
        correct = t.ravel()
    else:
        conf = p.max(axis=1)
        correct = (p.argmax(axis=1) == t).astype(np.float64)
    # bin index ceil(conf * n) - 1: conf exactly on an edge falls in the lower bin. sum_b |B_b|/N *
    # |acc_b - conf_b| equals sum_b |sum_acc_b - sum_conf_b| / N, so no per-bin counts are needed.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    return float(np.abs(sum_acc - sum_conf).sum() / conf.size)


class ConformalPredictor:
    """Split-conformal prediction sets for single-label classification.

    Fit on a labelled calibration set that was *not* used to train or tune the model; on new data
    from the same distribution the sets then contain the true label with probability >= 1 - alpha.

    Scores:
        ``"lac"`` (least ambiguous classifier): score ``1 - p_true``; the set is every label with
        ``1 - p <= threshold``. Smallest sets on average.
        ``"aps"`` (adaptive prediction sets): score = probability mass of the labels ranked above
        the true one, plus a uniform share ``u * p_true`` (``randomized=True``) or all of it; sets
        grow on hard inputs. Randomised APS reaches the nominal coverage; non-randomised is
        conservative.

    Args:
        alpha: miscoverage level (0.1 gives 90% sets).
        method: ``"lac"`` or ``"aps"``.
        randomized: APS only: randomise the score of the last label (exact coverage).
        allow_empty: keep empty sets (the exact conformal rule). By default the top label is
            always included, which can only increase coverage.
        seed: seed of the APS randomisation at prediction time.

    Attributes:
        threshold: the fitted conformal quantile of the scores (``inf``: every label, when the
            calibration set is too small for the requested coverage).
        n_cal: number of calibration rows.

    Example:
        >>> p = np.array([[0.7, 0.2, 0.1]] * 9 + [[0.2, 0.7, 0.1]])
        >>> cp = ConformalPredictor(alpha=0.2).fit(p, np.zeros(10, dtype=int))
        >>> cp.predict_sets(np.array([[0.6, 0.3, 0.1]]), labels=["a", "b", "c"])
        [['a']]
    """

    def __init__(self, alpha: float = 0.1, method: str = "lac", *, randomized: bool = True,
                 allow_empty: bool = False, seed: int = 0) -> None:
        if not 0.0 < alpha < 1.0:
            raise ConfigError(f"alpha must be in (0, 1) (e.g. 0.1 for 90% coverage); got {alpha}")
        if method not in ("lac", "aps"):
            raise ConfigError(f"unknown conformal method '{method}'; use 'lac' or 'aps'")
        self.alpha = float(alpha)
        self.method = method
        self.randomized = bool(randomized)
        self.allow_empty = bool(allow_empty)
        self.seed = int(seed)
        self.threshold: float | None = None
        self.n_cal = 0
        self.labels: list[str] | None = None

    @property
    def coverage_target(self) -> float:
        """The nominal coverage ``1 - alpha``."""
        return 1.0 - self.alpha

    @property
    def is_fitted(self) -> bool:
        return self.threshold is not None

    def _scores(self, p: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """Nonconformity score of every label of every row (N, C)."""
        if self.method == "lac":
            return 1.0 - p
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of the labels ranked above
        share = sorted_p if u is None else u[:, None] * sorted_p
        scores = np.empty_like(p)
        np.put_along_axis(scores, order, before + share, axis=1)
        return scores

    def _uniform(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        return rng.random(n) if (self.method == "aps" and self.randomized) else None

    def fit(self, probs: Any, y: Any, *, coverage: float | None = None,
            labels: Sequence[str] | None = None) -> ConformalPredictor:
        """Fit the threshold on calibration probabilities and true labels.

        Args:
            probs: (N, C) calibrated probabilities (after temperature scaling, if any).
            y: (N,) true class indices. Multi-label matrices are refused.
            coverage: optional target coverage; overrides ``alpha`` with ``1 - coverage``.
            labels: optional C label names, stored with the predictor and used by
                :meth:`predict_sets`.

        Returns:
            self.

        Raises:
            DataError: multi-label ``y``, shape mismatch, or NaN probabilities.
        """
        if coverage is not None:
            if not 0.0 < coverage < 1.0:
                raise ConfigError(f"coverage must be in (0, 1) (e.g. 0.9); got {coverage}")
            self.alpha = 1.0 - float(coverage)
        p = _as_2d("probs", probs)
        if np.asarray(y).ndim == 2:
            raise DataError(
                "conformal prediction sets here are for single-label classification; for multi-label "
                "findings threshold each finding's probability separately (one binary task per finding)"
            )
        t, _ = _targets(y, p.shape)
        if labels is not None:
            if len(labels) != p.shape[1]:
                raise DataError(f"{len(labels)} labels given for probabilities with {p.shape[1]} columns")
            self.labels = [str(x) for x in labels]
        rng = np.random.default_rng(self.seed)
        s = self._scores(p, self._uniform(len(t), rng))[np.arange(len(t)), t]
        n = len(s)
        # finite-sample correction: the ceil((n + 1)(1 - alpha))-th smallest score
        k = math.ceil((n + 1) * (1.0 - self.alpha))
        if k > n:
            thr = math.inf
        else:
            thr = float(np.sort(s)[k - 1])
        if self.method == "lac":
            thr = min(thr, 1.0)  # 1 - p <= 1 always: the same sets, and a finite number to store
        self.threshold = thr
        self.n_cal = n
        return self

    def predict_mask(self, probs: Any) -> np.ndarray:
        """(N, C) boolean membership of each label in each row's prediction set."""
        if self.threshold is None:
            raise ConfigError("ConformalPredictor is not fitted: call fit(probs, y) on calibration data first")
        p = _as_2d("probs", probs)
        rng = np.random.default_rng(self.seed + 1)
        mask = self._scores(p, self._uniform(len(p), rng)) <= self.threshold
        if not self.allow_empty:
            mask[np.arange(len(p)), p.argmax(axis=1)] = True
        return mask

    def predict_sets(self, probs: Any, labels: Sequence[str] | None = None) -> list[list[Any]]:
        """Prediction set of each row, labels in decreasing probability.

        Args:
            probs: (N, C) probabilities, calibrated like the calibration data.
            labels: names to return instead of class indices (default: the names given to
                :meth:`fit`, else indices).

        Returns:
            One list per row.
        """
        p = _as_2d("probs", probs)
        mask = self.predict_mask(p)
        names = list(labels) if labels is not None else self.labels
        out: list[list[Any]] = []
        for row, m in zip(p, mask, strict=True):
            idx = [int(c) for c in np.argsort(-row, kind="stable") if m[c]]
            out.append([names[c] for c in idx] if names is not None else idx)
        return out

    def evaluate(self, probs: Any, y: Any) -> dict[str, float]:
        """Empirical coverage and mean set size on labelled held-out data."""
        p = _as_2d("probs", probs)
        t, multi = _targets(y, p.shape)
        if multi:
            raise DataError("conformal evaluation needs single-label y (class indices)")
        mask = self.predict_mask(p)
        return {"coverage": float(mask[np.arange(len(t)), t].mean()), "mean_set_size": float(mask.sum(1).mean()),
                "target": self.coverage_target, "n": len(t)}

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (an infinite threshold is written as null)."""
        thr = self.threshold
        return {"method": self.method, "alpha": self.alpha, "coverage": self.coverage_target,
                "threshold": None if thr is None or math.isinf(thr) else thr,
                "threshold_is_infinite": thr is not None and math.isinf(thr),
                "randomized": self.randomized, "allow_empty": self.allow_empty, "seed": self.seed,
                "n_cal": self.n_cal, "labels": self.labels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalPredictor:
        """Rebuild a predictor written by :meth:`to_dict`."""
        try:
            cp = cls(float(d["alpha"]), str(d.get("method", "lac")), randomized=bool(d.get("randomized", True)),
                     allow_empty=bool(d.get("allow_empty", False)), seed=int(d.get("seed", 0)))
        except KeyError as e:
            raise ConfigError(f"conformal predictor state lacks the key {e}") from e
        if d.get("threshold_is_infinite"):
            cp.threshold = math.inf
        elif d.get("threshold") is not None:
            cp.threshold = float(d["threshold"])
        cp.n_cal = int(d.get("n_cal", 0))
        cp.labels = list(d["labels"]) if d.get("labels") is not None else None
        return cp

    def save(self, path: str | Path) -> Path:
        """Write the predictor as JSON."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2))
        return p

    @classmethod
    def load(cls, path: str | Path) -> ConformalPredictor:
        """Read a predictor written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"conformal predictor file {p} does not exist")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e}); re-save it with ConformalPredictor.save") from e
        return cls.from_dict(d)

    def __repr__(self) -> str:
        return (f"ConformalPredictor(alpha={self.alpha}, method={self.method!r}, threshold={self.threshold}, "
                f"n_cal={self.n_cal})")
