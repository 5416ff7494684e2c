"""Classification metric kernels: each metric once, as a weighted function of bootstrap row weights.

See :mod:`medvlp.eval.metrics` for the conventions (scikit-learn compatible).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medvlp.errors import DataError
from medvlp.eval.checks import check_finite

_CHUNK_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _scores_2d(y_score: Any) -> np.ndarray:
    """(N, C) float scores; a 1-D binary score s becomes columns [1 - s, s]."""
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 1:
        s = np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[1] < 2:
        raise DataError(f"y_score must have shape (N, C) with C >= 2 (or (N,) for binary); got {s.shape}")
    check_finite("y_score", s)
    return s


def _labels_1d(y_true: Any, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise DataError(f"y_true must be 1-D class indices here; got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"y_true has {y.shape[0]} rows but y_score has {n}: they must match row for row")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError("y_true must hold integer class indices")
    elif y.dtype.kind not in "iub":
        raise DataError(f"y_true must hold integer class indices; got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        raise DataError(
            f"y_true row {int(bad[0])} has class index {int(y[bad[0]])}, outside 0..{n_classes - 1} "
            f"(y_score has {n_classes} columns)"
        )
    return y


def _labels_multi(y_true: Any, shape: tuple[int, int]) -> np.ndarray:
    y = np.asarray(y_true)
    if y.shape != shape:
        raise DataError(f"multi-label y_true must have the shape of y_score {shape}; got {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise DataError("multi-label y_true must contain only 0 and 1")
    return y.astype(np.int8)


def _prep(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Returns (y, scores, multilabel)."""
    s = _scores_2d(y_score)
    if np.asarray(y_true).ndim == 2:
        return _labels_multi(y_true, s.shape), s, True
    return _labels_1d(y_true, s.shape[0], s.shape[1]), s, False


def _ones(n: int) -> np.ndarray:
    return np.ones((1, n), dtype=np.float64)



# --------------------------------------------------------------------------------------------
# Weighted (batched) metric kernels. Each takes W of shape (B, N) and returns (B,) values,
# NaN where the metric is undefined for that resample.
# --------------------------------------------------------------------------------------------


def _confusion_w(t: np.ndarray, p: np.ndarray, n_classes: int, W: np.ndarray) -> np.ndarray:
    """Weighted confusion matrices (B, C, C): one bincount over the whole chunk."""
    b, n = W.shape
    cc = n_classes * n_classes
    codes = t * n_classes + p
    flat = (np.arange(b)[:, None] * cc + codes[None, :]).ravel()
    return np.bincount(flat, weights=W.ravel(), minlength=b * cc).reshape(b, n_classes, n_classes)


def _from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, balanced accuracy, macro F1 and Cohen's kappa from (B, C, C) confusion matrices."""
    with np.errstate(divide="ignore", invalid="ignore"):
        total = cm.sum(axis=(1, 2))
        tp = np.diagonal(cm, axis1=1, axis2=2)
        support = cm.sum(axis=2)  # true counts per class
        predicted = cm.sum(axis=1)
        acc = tp.sum(axis=1) / total
        # balanced accuracy: classes with no true rows are ignored (scikit-learn's convention)
        recall = np.where(support > 0, tp / np.where(support > 0, support, 1), np.nan)
        bal = _nanmean_rows(recall)
        # macro F1 over classes present in truth or predictions; F1 = 0 where tp = 0
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
        f1m = _nanmean_rows(f1)
        po = acc
        pe = (support * predicted).sum(axis=1) / (total * total)
        kappa = np.where(pe < 1, (po - pe) / (1 - pe), np.nan)
    return {"accuracy": acc, "balanced_accuracy": bal, "f1_macro": f1m, "cohen_kappa": kappa}


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    cnt = np.sum(~np.isnan(a), axis=1)
    tot = np.nansum(a, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


class _RankAUROC:
    """Weighted binary AUROC for many weight vectors at once (Mann-Whitney, ties count 1/2).

    AUROC = sum over positives i of w_i * (weight of negatives scoring below i, plus half the
    weight of negatives tied with i), divided by (positive weight * negative weight). The
    ranks do not depend on the resample, so for each positive the number of negatives below it
    is computed once; a resample then costs one cumulative sum over the negatives' weights and
    one gather at the positives.
    """

    def __init__(self, y_bin: np.ndarray, score: np.ndarray) -> None:
        y_bin = np.asarray(y_bin, dtype=bool)
        neg_order = np.flatnonzero(~y_bin)[np.argsort(score[~y_bin], kind="mergesort")]
        neg_sorted = score[neg_order]
        self.neg_order = neg_order
        self.pos_rows = np.flatnonzero(y_bin)
        pos_scores = score[self.pos_rows]
        self.k_lo = np.searchsorted(neg_sorted, pos_scores, side="left")  # negatives strictly below
        self.k_hi = np.searchsorted(neg_sorted, pos_scores, side="right")  # ... or tied
        self.has_ties = bool(np.any(self.k_lo != self.k_hi))

    def __call__(self, W: np.ndarray) -> np.ndarray:
        b = W.shape[0]
        cn = np.zeros((b, self.neg_order.size + 1), dtype=W.dtype)
        np.cumsum(W[:, self.neg_order], axis=1, out=cn[:, 1:])
        below = cn[:, self.k_lo]
        if self.has_ties:
            below = 0.5 * (below + cn[:, self.k_hi])
        wp = W[:, self.pos_rows]
        num = np.sum(wp * below, axis=1, dtype=np.float64)
        tp = np.sum(wp, axis=1, dtype=np.float64)
        tn = cn[:, -1].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((tp > 0) & (tn > 0), num / (tp * tn), np.nan)


def _auroc_columns(
    y: np.ndarray, s: np.ndarray, multilabel: bool
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class index, binary truth, score) for each one-vs-rest column."""
    if multilabel:
        return [(c, y[:, c], s[:, c]) for c in range(s.shape[1])]
    return [(c, (y == c), s[:, c]) for c in range(s.shape[1])]


def _evaluable(y_bin: np.ndarray) -> bool:
    return bool(y_bin.any() and not y_bin.all())


def _macro_auroc_kernel(y: np.ndarray, s: np.ndarray, multilabel: bool) -> tuple[Callable, list[int]]:
    """Kernel for macro AUROC and the list of classes skipped because they cannot be scored.

    A class is scored when the full data has positives and negatives for it; a resample that
    loses all positives or negatives of a scored class is degenerate (NaN) and is skipped by the
    bootstrap rather than silently averaging over fewer classes.
    """
    if not multilabel and s.shape[1] == 2:
        yb = y == 1
        if not _evaluable(yb):
            return (lambda W: np.full(W.shape[0], np.nan)), [0, 1]
        return _RankAUROC(yb, s[:, 1]), []
    kernels, skipped = [], []
    for c, yb, sc in _auroc_columns(y, s, multilabel):
        if _evaluable(yb):
            kernels.append(_RankAUROC(yb, sc))
        else:
            skipped.append(c)

    def fn(W: np.ndarray) -> np.ndarray:
        if not kernels:
            return np.full(W.shape[0], np.nan)
        # NaN in any class (a class lost in the resample) makes the resample degenerate
        return np.mean(np.stack([k(W) for k in kernels], axis=1), axis=1)

    return fn, skipped


def _sens_at_spec_kernel(y_bin: np.ndarray, score: np.ndarray, specificity: float) -> Callable:
    """Weighted sensitivity at a specificity for many weight vectors at once.

    With negatives sorted by decreasing score and grouped by ties, let u be the score of the
    first group whose cumulative weight pushes the false-positive rate over 1 - specificity.
    Every observed threshold above u is allowed and none at or below it, so the best
    sensitivity is the weight of positives scoring strictly above u.
    """
    y_bin = np.asarray(y_bin, dtype=bool)
    neg_order = np.flatnonzero(~y_bin)[np.argsort(-score[~y_bin], kind="mergesort")]
    neg_sorted = score[neg_order]
    # last index of each run of tied negative scores: a tie group enters the FP count together
    group_ends = (
        np.flatnonzero(np.r_[neg_sorted[1:] != neg_sorted[:-1], True])
        if neg_sorted.size
        else np.empty(0, int)
    )
    pos_order = np.flatnonzero(y_bin)[np.argsort(-score[y_bin], kind="mergesort")]
    pos_sorted_asc = score[pos_order][::-1]
    # positives scoring strictly above each negative group's score
    n_pos_above = pos_order.size - np.searchsorted(pos_sorted_asc, neg_sorted[group_ends], side="right")
    max_fpr = 1.0 - specificity + 1e-12  # 1e-12 absorbs 1 - 0.95 != 0.05 in binary floating point

    def fn(W: np.ndarray) -> np.ndarray:
        b = W.shape[0]
        cn = np.cumsum(W[:, neg_order], axis=1)[:, group_ends]
        cp = np.zeros((b, pos_order.size + 1), dtype=np.float64)
        np.cumsum(W[:, pos_order], axis=1, dtype=np.float64, out=cp[:, 1:])
        tot_p = cp[:, -1]
        tot_n = cn[:, -1].astype(np.float64) if cn.shape[1] else np.zeros(b)
        with np.errstate(divide="ignore", invalid="ignore"):
            exceed = cn / tot_n[:, None] > max_fpr
            has = exceed.any(axis=1)
            m = np.where(has, n_pos_above[exceed.argmax(axis=1)] if cn.shape[1] else 0, pos_order.size)
            sens = cp[np.arange(b), m] / tot_p
        return np.where((tot_p > 0) & (tot_n > 0), sens, np.nan)

    return fn


def _multilabel_f1_kernel(y: np.ndarray, s: np.ndarray, threshold: float) -> Callable:
    """Macro F1 over all labels at a threshold; undefined labels count 0 (scikit-learn's default)."""
    yt = y.astype(np.float64)
    yp = (s >= threshold).astype(np.float64)
    both = yt * yp

    def fn(W: np.ndarray) -> np.ndarray:
        tp = W @ both.astype(W.dtype, copy=False)
        denom = W @ yt.astype(W.dtype, copy=False) + W @ yp.astype(W.dtype, copy=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
        return f1.mean(axis=1)

    return fn


def _weighted_mean(W: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row-weighted mean of a 0/1 vector; the matmul runs in W's dtype (exact for counts)."""
    num = (W @ v.astype(W.dtype, copy=False)).astype(np.float64)
    return num / W.sum(axis=1, dtype=np.float64)


def _single(kernel: Callable, n: int) -> float:
    return float(kernel(_ones(n))[0])


# --------------------------------------------------------------------------------------------
# Public metric functions (each carries its weighted kernel for the fast bootstrap)
# --------------------------------------------------------------------------------------------


def _confusion_metric(name: str) -> Callable:
    def kernel(y_true: Any, y_score: Any) -> Callable:
        y, s, multi = _prep(y_true, y_score)
        if multi:
            raise DataError(f"{name} needs single-label y_true (class indices); got a multi-label matrix")
        pred = s.argmax(axis=1)
        n_classes = s.shape[1]

        if name == "accuracy":
            correct = (pred == y).astype(np.float64)
            return lambda W: _weighted_mean(W, correct)
        return lambda W: _from_confusion(_confusion_w(y, pred, n_classes, W))[name]

    return kernel


_accuracy_kernel = _confusion_metric("accuracy")
_balanced_kernel = _confusion_metric("balanced_accuracy")
_f1_single_kernel = _confusion_metric("f1_macro")
_kappa_kernel = _confusion_metric("cohen_kappa")


def _f1_kernel(y_true: Any, y_score: Any, threshold: float = 0.5) -> Callable:
    y, s, multi = _prep(y_true, y_score)
    if multi:
        return _multilabel_f1_kernel(y, s, threshold)
    return _f1_single_kernel(y, s)


def _with_kernel(kernel_factory: Callable) -> Callable:
    """Attach the weighted-kernel factory so :func:`bootstrap_ci` can vectorise the metric."""

    def deco(fn: Callable) -> Callable:
        fn._kernel = kernel_factory  # type: ignore[attr-defined]  # a function attribute; Callable cannot declare it
        return fn

    return deco


@_with_kernel(_accuracy_kernel)
def accuracy(y_true: Any, y_score: Any) -> float:
    """Fraction of rows whose top-scored class is the true class.

    Args:
        y_true: (N,) integer class indices.
        y_score: (N, C) scores or probabilities, or (N,) positive-class scores for a binary task.

    Returns:
        Accuracy in [0, 1]; equals ``sklearn.metrics.accuracy_score(y_true, y_score.argmax(1))``.
    """
    y, s, _ = _prep(y_true, y_score)
    return _single(_accuracy_kernel(y, s), len(y))


@_with_kernel(_balanced_kernel)
def balanced_accuracy(y_true: Any, y_score: Any) -> float:
    """Mean per-class recall over the classes present in ``y_true``.

    Args:
        y_true: (N,) integer class indices.
        y_score: (N, C) scores, or (N,) positive-class scores for a binary task.

    Returns:
        Balanced accuracy; equals ``sklearn.metrics.balanced_accuracy_score``.
    """
    y, s, _ = _prep(y_true, y_score)
    return _single(_balanced_kernel(y, s), len(y))


@_with_kernel(_f1_kernel)
def f1_macro(y_true: Any, y_score: Any, threshold: float = 0.5) -> float:
    """Macro-averaged F1.

    Args:
        y_true: (N,) class indices, or (N, C) 0/1 for multi-label.
        y_score: (N, C) scores. Single-label predictions are the argmax; multi-label predictions are
            ``y_score >= threshold``.
        threshold: decision threshold for multi-label scores.

    Returns:
        Macro F1; equals ``sklearn.metrics.f1_score(..., average="macro")`` (single-label: over the
        classes present in the truth or the predictions).
    """
    y, s, _ = _prep(y_true, y_score)
    return _single(_f1_kernel(y, s, threshold), len(y))


@_with_kernel(_kappa_kernel)
def cohen_kappa(y_true: Any, y_score: Any) -> float:
    """Cohen's kappa between the true classes and the argmax predictions (unweighted).

    Args:
        y_true: (N,) integer class indices.
        y_score: (N, C) scores, or (N,) positive-class scores for a binary task.

    Returns:
        Kappa in [-1, 1] (NaN when chance agreement is 1); equals ``sklearn.metrics.cohen_kappa_score``.
    """
    y, s, _ = _prep(y_true, y_score)
    return _single(_kappa_kernel(y, s), len(y))


def _macro_auroc_factory(y_true: Any, y_score: Any) -> Callable:
    y, s, multi = _prep(y_true, y_score)
    return _macro_auroc_kernel(y, s, multi)[0]


@_with_kernel(_macro_auroc_factory)
def macro_auroc(y_true: Any, y_score: Any) -> float:
    """Macro one-vs-rest AUROC (binary: AUROC of class 1; multi-label: mean over labels).

    Classes that have no positive (or no negative) rows in ``y_true`` cannot be scored; they are
    skipped with a warning and the mean is over the remaining classes.

    Args:
        y_true: (N,) class indices, or (N, C) 0/1 for multi-label.
        y_score: (N, C) scores, or (N,) positive-class scores for a binary task.

    Returns:
        Macro AUROC; equals ``sklearn.metrics.roc_auc_score`` (``multi_class="ovr"``,
        ``average="macro"``) when every class is present. NaN when no class can be scored.
    """
    y, s, multi = _prep(y_true, y_score)
    kernel, skipped = _macro_auroc_kernel(y, s, multi)
    if skipped:
        warnings.warn(
            f"AUROC: classes {skipped} have no positive or no negative rows in y_true and were skipped",
            stacklevel=2,
        )
    return _single(kernel, len(y))


def per_class_auroc(y_true: Any, y_score: Any, labels: Sequence[str] | None = None) -> dict[Any, float]:
    """One-vs-rest AUROC of each class (each label for multi-label data).

    Args:
        y_true: (N,) class indices, or (N, C) 0/1 for multi-label.
        y_score: (N, C) scores.
        labels: optional names of the C columns, used as keys; default: the column index.

    Returns:
        ``{label: auroc}`` for the classes that have both positive and negative rows; the others
        are left out with a warning.
    """
    y, s, multi = _prep(y_true, y_score)
    keys = list(labels) if labels is not None else list(range(s.shape[1]))
    if len(keys) != s.shape[1]:
        raise DataError(f"{len(keys)} labels given for a y_score with {s.shape[1]} columns")
    out: dict[Any, float] = {}
    skipped = []
    for c, yb, sc in _auroc_columns(y, s, multi):
        if _evaluable(yb):
            out[keys[c]] = _single(_RankAUROC(yb, sc), len(yb))
        else:
            skipped.append(keys[c])
    if skipped:
        warnings.warn(
            f"AUROC: {skipped} have no positive or no negative rows and were left out", stacklevel=2
        )
    return out


def _sens_factory(y_true_binary: Any, score: Any, specificity: float = 0.95) -> Callable:
    yb, sc = _binary_inputs(y_true_binary, score)
    return _sens_at_spec_kernel(yb, sc, specificity)


def _binary_inputs(y_true_binary: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    yb = np.asarray(y_true_binary)
    sc = np.asarray(score, dtype=np.float64)
    if yb.ndim != 1 or sc.shape != yb.shape:
        raise DataError(
            f"y_true_binary and score must be 1-D of the same length; got {yb.shape} and {sc.shape}"
        )
    if not np.all((yb == 0) | (yb == 1)):
        raise DataError("y_true_binary must contain only 0 and 1 (or False/True)")
    check_finite("score", sc)
    return yb.astype(bool), sc


@_with_kernel(_sens_factory)
def sensitivity_at_specificity(y_true_binary: Any, score: Any, specificity: float = 0.95) -> float:
    """Highest sensitivity reachable with a threshold whose specificity is at least ``specificity``.

    A row is called positive when ``score >= threshold``; every threshold between distinct
    scores is considered. Equals ``max(tpr[fpr <= 1 - specificity])`` from
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    Args:
        y_true_binary: (N,) 0/1 (1 = disease present).
        score: (N,) scores, higher = more likely positive.
        specificity: required specificity in (0, 1].

    Returns:
        Sensitivity in [0, 1]; NaN when there are no positives or no negatives.
    """
    if not 0.0 < specificity <= 1.0:
        raise DataError(f"specificity must be in (0, 1]; got {specificity}")
    yb, sc = _binary_inputs(y_true_binary, score)
    return _single(_sens_at_spec_kernel(yb, sc, specificity), len(yb))


def specificity_metric_name(specificity: float) -> str:
    """Metric key for a specificity, e.g. 0.95 -> ``sensitivity_at_95_specificity``."""
    return f"sensitivity_at_{round(specificity * 100, 6):g}_specificity"


# --------------------------------------------------------------------------------------------
# Retrieval
