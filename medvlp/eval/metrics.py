"""Classification and retrieval metrics with (cluster) bootstrap confidence intervals.

Every metric is implemented once, as a *weighted* function of a batch of row weights ``W`` of
shape ``(B, N)``. The point estimate uses ``W = 1``; a bootstrap resample is the same function
with ``W[b, i]`` = how many times row ``i`` was drawn (or, for the cluster bootstrap, how many times
its patient/slide was drawn). This keeps the point estimate and the bootstrap numerically
identical in definition and lets the bootstrap run as a few array operations per chunk of
resamples instead of a Python loop (see :func:`bootstrap_ci`).

Conventions follow scikit-learn so that the values are exactly comparable:

* ``y_true``: integer class indices ``(N,)``, or ``(N, C)`` 0/1 for multi-label.
* ``y_score``: ``(N, C)`` scores or probabilities; for a binary task also ``(N,)`` scores of the
  positive class (class 1). Predictions are ``argmax(y_score, 1)`` (multi-label: ``y_score >= 0.5``).
* ``balanced_accuracy``: mean recall over the classes present in ``y_true``.
* ``f1_macro`` / ``cohen_kappa``: over the classes present in ``y_true`` or in the predictions.
* ``macro_auroc``: one-vs-rest mean over classes present in ``y_true`` (binary: AUROC of class 1).

Example:
    >>> import numpy as np
    >>> y = np.array([0, 1, 1, 0]); s = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    >>> accuracy(y, s), macro_auroc(y, s)
    (0.75, 1.0)
    >>> rep = classification_report(y, s, ["benign", "malignant"], n_boot=0)
    >>> sorted(rep["accuracy"])
    ['ci_high', 'ci_low', 'value']
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medvlp.errors import DataError

__all__ = [
    "BootstrapCI",
    "accuracy",
    "balanced_accuracy",
    "bootstrap_ci",
    "classification_report",
    "cohen_kappa",
    "f1_macro",
    "invert_positives",
    "macro_auroc",
    "per_class_auroc",
    "retrieval_recall_at_k",
    "retrieval_report",
    "sensitivity_at_specificity",
    "specificity_metric_name",
]

# Upper bound on the number of float64 cells of one chunk of bootstrap weights (B_chunk * N).
# 4e6 cells = 32 MB per array: fast, and safe on a small shared machine.
_CHUNK_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _check_finite(name: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise DataError(f"{name} has a NaN or infinite value at row {int(bad[0])}: remove or fix that row")


def _scores_2d(y_score: Any) -> np.ndarray:
    """(N, C) float scores; a 1-D binary score s becomes columns [1 - s, s]."""
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 1:
        s = np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[1] < 2:
        raise DataError(f"y_score must have shape (N, C) with C >= 2 (or (N,) for binary); got {s.shape}")
    _check_finite("y_score", s)
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
        fn._kernel = kernel_factory  # type: ignore[attr-defined]
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
    _check_finite("score", sc)
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
# --------------------------------------------------------------------------------------------


def _positive_sets(positives: Any, n_query: int, n_gallery: int) -> list[np.ndarray]:
    if isinstance(positives, np.ndarray) and positives.ndim == 1 and positives.dtype.kind in "iu":
        items: Iterable = ([int(p)] for p in positives)
    else:
        items = (
            [int(p)] if isinstance(p, int | np.integer) else sorted(int(x) for x in p) for p in positives
        )
    sets = [np.asarray(p, dtype=np.int64) for p in items]
    if len(sets) != n_query:
        raise DataError(
            f"positives has {len(sets)} entries but the similarity matrix has {n_query} query rows"
        )
    for q, p in enumerate(sets):
        if p.size and (p.min() < 0 or p.max() >= n_gallery):
            raise DataError(
                f"positives for query {q} point outside the gallery 0..{n_gallery - 1}: {p.tolist()}"
            )
    return sets


def _retrieval_hits(
    similarity: np.ndarray, sets: list[np.ndarray], ks: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(Nq_valid, len(ks)) 0/1 hits and the indices of queries that have at least one positive.

    The rank of a query is the number of non-matching gallery items scoring at least as high as
    its best match; ties are counted against the query so that a constant similarity scores 0.
    """
    valid = np.array([q for q, p in enumerate(sets) if p.size], dtype=np.int64)
    ks_arr = np.asarray(ks)[None, :]
    if valid.size and all(len(sets[q]) == 1 for q in valid):
        # one match per query (the usual paired case): one vectorised pass
        pos = np.array([sets[q][0] for q in valid], dtype=np.int64)
        best = similarity[valid, pos]
        ranks = np.count_nonzero(similarity[valid] >= best[:, None], axis=1) - 1
        return (ranks[:, None] < ks_arr).astype(np.float64), valid
    ranks = np.empty(len(valid), dtype=np.int64)
    for j, q in enumerate(valid):
        row = similarity[q]
        best = row[sets[q]].max()
        ranks[j] = int(np.count_nonzero(row >= best)) - int(np.count_nonzero(row[sets[q]] >= best))
    hits = (ranks[:, None] < ks_arr).astype(np.float64)
    return hits, valid


def _sim(similarity: Any) -> np.ndarray:
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise DataError(f"similarity must be a 2-D (queries, gallery) matrix; got shape {sim.shape}")
    _check_finite("similarity", sim)
    return sim


def retrieval_recall_at_k(similarity: Any, positives: Any, k: int) -> float:
    """Recall@k: fraction of queries with at least one correct item among the k most similar.

    Rows are queries and columns the gallery: pass ``sim`` for image->text and ``sim.T`` with
    :func:`invert_positives` for text->image. Queries without any correct item are left out.

    Args:
        similarity: (Nq, Ng) similarities (higher = more similar).
        positives: per query the index of its correct gallery item, or a list/set of indices.
        k: cut-off.

    Returns:
        Recall@k in [0, 1].

    Example:
        >>> sim = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.0, 0.5, 0.4]])
        >>> retrieval_recall_at_k(sim, [0, 0, 1], k=1), retrieval_recall_at_k(sim, [0, 0, 1], k=2)
        (0.6666666666666666, 1.0)
    """
    sim = _sim(similarity)
    if k < 1:
        raise DataError(f"k must be >= 1; got {k}")
    hits, valid = _retrieval_hits(sim, _positive_sets(positives, *sim.shape), [k])
    if valid.size == 0:
        return float("nan")
    return float(hits[:, 0].mean())


def invert_positives(positives: Any, n_query: int, n_gallery: int) -> list[list[int]]:
    """Turn query->gallery positives into gallery->query positives (for text->image retrieval).

    Args:
        positives: per query (row) the index or indices of its correct gallery items.
        n_query: number of queries (rows).
        n_gallery: number of gallery items (columns).

    Returns:
        For each gallery item the sorted list of queries that count it as correct.
    """
    sets = _positive_sets(positives, n_query, n_gallery)
    inv: list[list[int]] = [[] for _ in range(n_gallery)]
    for q, p in enumerate(sets):
        for g in p:
            inv[int(g)].append(q)
    return inv


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a percentile bootstrap interval; unpacks as ``value, low, high``.

    Attributes:
        value: the metric on the full data.
        low: lower bound (``alpha / 2`` quantile of the resampled values).
        high: upper bound (``1 - alpha / 2`` quantile).
        n_boot: resamples drawn.
        n_skipped: resamples where the metric was undefined (e.g. a class absent) and left out.
        unit: what was resampled: ``"sample"`` or the group unit (``"patient"``, ``"slide"``).
    """

    value: float
    low: float
    high: float
    n_boot: int
    n_skipped: int
    unit: str = "sample"

    def __iter__(self):  # lets `v, lo, hi = bootstrap_ci(...)` work
        return iter((self.value, self.low, self.high))

    def to_dict(self) -> dict[str, float | None]:
        """``{"value", "ci_low", "ci_high"}`` with NaN as ``None`` so the JSON stays valid."""
        return {
            "value": _json_float(self.value),
            "ci_low": _json_float(self.low),
            "ci_high": _json_float(self.high),
        }


def _json_float(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, int]:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise DataError(f"groups must have one id per row ({n}); got shape {g.shape}")
    if g.dtype.kind == "f" and np.isnan(g).any():
        raise DataError(f"groups has a missing id at row {int(np.flatnonzero(np.isnan(g))[0])}")
    if g.dtype == object and any(x is None for x in g):
        raise DataError(f"groups has a missing id at row {[i for i, x in enumerate(g) if x is None][0]}")
    _, inv = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    return inv.astype(np.int64), int(inv.max()) + 1 if n else 0


def _weight_chunks(n: int, n_boot: int, seed: int, groups: Any) -> Iterable[np.ndarray]:
    """Yield (b, n) resample-count matrices covering ``n_boot`` resamples.

    Row bootstrap: counts of n draws with replacement from the rows. Cluster bootstrap: draw as
    many groups as there are, with replacement; every row of a drawn group gets the group's count.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        inv, n_units = None, n
    else:
        inv, n_units = _group_index(groups, n)
    chunk = max(1, min(n_boot, _CHUNK_CELLS // max(n, n_units, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, n_units, size=(b, n_units))
        flat = (draws + (np.arange(b) * n_units)[:, None]).ravel()
        # float32 halves the memory traffic; counts and their sums stay exact below 2**24
        counts = np.bincount(flat, minlength=b * n_units).reshape(b, n_units).astype(np.float32)
        yield counts if inv is None else counts[:, inv]
        done += b


def _summarise(
    value: float, samples: np.ndarray, alpha: float, n_boot: int, unit: str, name: str
) -> BootstrapCI:
    ok = samples[np.isfinite(samples)]
    skipped = int(n_boot - ok.size)
    if ok.size == 0:
        if n_boot:
            warnings.warn(
                f"bootstrap for {name}: all {n_boot} resamples were degenerate; no interval", stacklevel=3
            )
        return BootstrapCI(value, float("nan"), float("nan"), n_boot, skipped, unit)
    if skipped > 0.1 * n_boot:
        warnings.warn(
            f"bootstrap for {name}: {skipped} of {n_boot} resamples were degenerate and skipped "
            "(e.g. a class absent); the interval may be optimistic",
            stacklevel=3,
        )
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(value, float(lo), float(hi), n_boot, skipped, unit)


def _bootstrap_kernels(
    kernels: Mapping[str, Callable[[np.ndarray], Any]],
    n: int,
    *,
    n_boot: int,
    seed: int,
    groups: Any,
    alpha: float,
    unit: str,
) -> dict[str, BootstrapCI]:
    """Run several weighted kernels on the *same* resamples. A kernel may return a dict of arrays."""
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be in (0, 1); got {alpha}")
    if n_boot < 0:
        raise DataError(f"n_boot must be >= 0; got {n_boot}")
    point: dict[str, float] = {}
    parts: dict[str, list[np.ndarray]] = {}

    def collect(out: dict[str, list], name: str, res: Any) -> None:
        if isinstance(res, dict):
            for k, v in res.items():
                out.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
        else:
            out.setdefault(name, []).append(np.asarray(res, dtype=np.float64))

    pt: dict[str, list] = {}
    for name, kern in kernels.items():
        collect(pt, name, kern(_ones(n)))
    point = {k: float(v[0][0]) for k, v in pt.items()}
    if n_boot:
        for W in _weight_chunks(n, n_boot, seed, groups):
            for name, kern in kernels.items():
                collect(parts, name, kern(W))
    return {
        k: _summarise(point[k], np.concatenate(parts[k]) if n_boot else np.empty(0), alpha, n_boot, unit, k)
        for k in point
    }


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Any = None,
    alpha: float = 0.05,
    unit: str | None = None,
) -> BootstrapCI:
    """Percentile bootstrap interval of a metric, resampling rows or whole groups.

    The metrics of this module (also wrapped in ``functools.partial``) run vectorised: all
    resamples are expressed as row weights and evaluated in a few array operations per chunk.
    Any other ``metric_fn(*arrays) -> float`` works too, through a Python loop over resamples.

    Args:
        metric_fn: e.g. :func:`macro_auroc`, or any function of the arrays.
        *arrays: arrays with the same number of rows, passed to ``metric_fn``.
        n_boot: number of resamples.
        seed: seed of the resampling generator (same seed, same interval).
        groups: optional (N,) patient or slide ids. When given, whole groups are drawn with
            replacement (cluster bootstrap), so correlated rows of one patient do not make the
            interval falsely narrow.
        alpha: 1 - confidence level (0.05 gives a 95% interval).
        unit: name of the resampled unit for reports; default ``"sample"`` / ``"group"``.

    Returns:
        A :class:`BootstrapCI` (unpacks to ``value, low, high``). Resamples where the metric is
        undefined (one class only for AUROC, ...) are skipped and counted in ``n_skipped``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 500); s = rng.random(500) + 0.5 * y
        >>> v, lo, hi = bootstrap_ci(macro_auroc, y, s, n_boot=200)
        >>> bool(lo < v < hi)
        True
    """
    if not arrays:
        raise DataError("bootstrap_ci needs at least one array")
    n = len(arrays[0])
    for a in arrays:
        if len(a) != n:
            raise DataError(f"all arrays must have the same number of rows; got {[len(x) for x in arrays]}")
    unit = unit or ("sample" if groups is None else "group")
    name = getattr(metric_fn, "__name__", None) or getattr(
        getattr(metric_fn, "func", None), "__name__", "metric"
    )

    factory, kwargs = getattr(metric_fn, "_kernel", None), {}
    if factory is None and isinstance(metric_fn, functools.partial):
        factory = getattr(metric_fn.func, "_kernel", None)
        if metric_fn.args:
            factory = None  # positional partials change the array order: use the generic path
        kwargs = dict(metric_fn.keywords)
    if factory is not None:
        # the public function validates and warns once on the full data
        value = float(metric_fn(*arrays))
        kern = factory(*arrays, **kwargs)
        res = _bootstrap_kernels(
            {name: kern}, n, n_boot=n_boot, seed=seed, groups=groups, alpha=alpha, unit=unit
        )
        r = res[name]
        return BootstrapCI(value, r.low, r.high, r.n_boot, r.n_skipped, unit)

    # Generic path: materialise each resample as row indices.
    value = float(metric_fn(*arrays))
    arrs = [np.asarray(a) for a in arrays]
    vals = np.full(n_boot, np.nan)
    i = 0
    for W in _weight_chunks(n, n_boot, seed, groups):
        counts = W.astype(np.int64)
        for row in counts:
            idx = np.repeat(np.arange(n), row)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    vals[i] = float(metric_fn(*[a[idx] for a in arrs]))
            except (ValueError, ZeroDivisionError, DataError):
                pass  # undefined on this resample: counted as skipped
            i += 1
    return _summarise(value, vals, alpha, n_boot, unit, name)


# --------------------------------------------------------------------------------------------
# Reports (the metrics JSON contract)
# --------------------------------------------------------------------------------------------


def _check_labels(labels: Sequence[str], n_columns: int) -> list[str]:
    labels = [str(x) for x in labels]
    if len(labels) < 2:
        raise DataError(f"a classification report needs at least 2 labels; got {labels}")
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise DataError(f"duplicate labels {dup}: each label must appear once")
    if len(labels) != n_columns:
        raise DataError(f"{len(labels)} labels given but y_score has {n_columns} columns")
    return labels


def _label_indices(y_true: Any, labels: list[str]) -> Any:
    """Accept label names as well as indices for single-label y_true."""
    y = np.asarray(y_true)
    if y.ndim == 1 and y.dtype.kind in "USO":
        index = {name: i for i, name in enumerate(labels)}
        out = np.empty(len(y), dtype=np.int64)
        for i, v in enumerate(y):
            if str(v) not in index:
                raise DataError(f"row {i}: label {str(v)!r} is not in the label set {labels}")
            out[i] = index[str(v)]
        return out
    return y_true


def classification_report(
    y_true: Any,
    y_score: Any,
    labels: Sequence[str],
    *,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    multilabel: bool = False,
    specificity: float = 0.95,
    alpha: float = 0.05,
    group_unit: str = "patient",
) -> dict[str, Any]:
    """All classification metrics with bootstrap CIs, in the metrics JSON shape of DESIGN.md.

    Single-label: accuracy, balanced_accuracy, auroc (macro one-vs-rest), f1_macro, cohen_kappa
    and, for two labels, ``sensitivity_at_<S>_specificity`` (label index 1 is the positive class).
    Multi-label: auroc (macro over labels), f1_macro at threshold 0.5. Both add
    ``per_class_auroc``. All metrics share the same resamples.

    Args:
        y_true: (N,) class indices (or label names), or (N, C) 0/1 with ``multilabel=True``.
        y_score: (N, C) probabilities or scores, columns in the order of ``labels``.
        labels: the C label names.
        groups: optional (N,) patient/slide ids for the cluster bootstrap.
        n_boot: bootstrap resamples (0: no intervals, ``ci_low``/``ci_high`` are null).
        seed: resampling seed.
        multilabel: y_true is an (N, C) 0/1 matrix.
        specificity: specificity for the binary sensitivity metric.
        alpha: 1 - confidence level.
        group_unit: name recorded as the bootstrap unit when ``groups`` is given.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high"}, "per_class_auroc": {label: {...}}, "n": N,
        "labels": [...], "bootstrap": {"n_boot", "seed", "unit", "alpha", "skipped": {...}}}``;
        undefined numbers are ``None``.

    Example:
        >>> y = np.array([0, 1, 2, 1]); s = np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.1
        >>> rep = classification_report(y, s, ["a", "b", "c"], n_boot=0)
        >>> rep["accuracy"]["value"], rep["n"]
        (0.75, 4)
    """
    s = _scores_2d(y_score)
    labels = _check_labels(labels, s.shape[1])
    y_true = _label_indices(y_true, labels)
    y, s, is_multi = _prep(y_true, s)
    if multilabel != is_multi:
        raise DataError(
            "multilabel=True needs an (N, C) 0/1 y_true"
            if multilabel
            else "y_true is a matrix: pass multilabel=True"
        )
    n = len(y)
    if n == 0:
        raise DataError("no rows to evaluate")

    # One AUROC kernel per class; the macro AUROC is derived from the same per-class values.
    per_class: dict[int, _RankAUROC] = {}
    skipped = []
    for c, yb, sc in _auroc_columns(y, s, multilabel):
        if _evaluable(yb):
            per_class[c] = _RankAUROC(yb, sc)
        else:
            skipped.append(c)
    if skipped:
        warnings.warn(
            f"AUROC: labels {[labels[c] for c in skipped]} have no positive or no negative rows and were skipped",
            stacklevel=2,
        )
    binary = not multilabel and s.shape[1] == 2
    per_class_names = [(labels[c], f"per_class_auroc[{labels[c]}]") for c in per_class]

    def auroc_all(W: np.ndarray) -> dict[str, np.ndarray]:
        vals = {c: k(W) for c, k in per_class.items()}
        out = {name: vals[c] for c, (_, name) in zip(per_class, per_class_names, strict=True)}
        if binary:
            out["auroc"] = vals.get(1, np.full(W.shape[0], np.nan))
        elif vals:
            # a class lost in a resample gives NaN: that resample is skipped, not averaged over fewer
            out["auroc"] = np.mean(np.stack(list(vals.values()), axis=1), axis=1)
        else:
            out["auroc"] = np.full(W.shape[0], np.nan)
        return out

    kernels: dict[str, Callable] = {"auroc": auroc_all}
    if multilabel:
        kernels["f1_macro"] = _multilabel_f1_kernel(y, s, 0.5)
    else:
        pred = s.argmax(axis=1)
        n_classes = s.shape[1]
        kernels["confusion"] = lambda W: _from_confusion(_confusion_w(y, pred, n_classes, W))
        if binary:
            kernels[specificity_metric_name(specificity)] = _sens_at_spec_kernel(y == 1, s[:, 1], specificity)

    unit = "sample" if groups is None else group_unit
    res = _bootstrap_kernels(kernels, n, n_boot=n_boot, seed=seed, groups=groups, alpha=alpha, unit=unit)
    order = [
        "accuracy",
        "balanced_accuracy",
        "auroc",
        "f1_macro",
        "cohen_kappa",
        specificity_metric_name(specificity),
    ]
    report: dict[str, Any] = {k: res[k].to_dict() for k in order if k in res}
    report["per_class_auroc"] = {label: res[key].to_dict() for label, key in per_class_names}
    if skipped:
        report["auroc_skipped_labels"] = [labels[c] for c in skipped]
    report["n"] = int(n)
    if groups is not None:
        report["n_groups"] = _group_index(groups, n)[1]
    report["labels"] = list(labels)
    report["bootstrap"] = {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "unit": unit,
        "alpha": float(alpha),
        "skipped": {k: res[k].n_skipped for k in order if k in res},
    }
    return report


def retrieval_report(
    sim: Any,
    positives: Any,
    ks: Sequence[int] = (1, 5, 10),
    groups: Any = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    group_unit: str = "patient",
) -> dict[str, Any]:
    """Image->text and text->image recall@k with bootstrap CIs, in the metrics JSON shape.

    Args:
        sim: (N_images, N_texts) similarity matrix (rows: images, columns: texts).
        positives: per image the index (or list/set of indices) of its matching text(s).
        ks: cut-offs.
        groups: optional (N_images,) patient/slide ids; a text query inherits the group of its
            first matching image, and groups are resampled whole.
        n_boot: bootstrap resamples.
        seed: resampling seed.
        alpha: 1 - confidence level.
        group_unit: name recorded as the bootstrap unit when ``groups`` is given.

    Returns:
        ``{"image_to_text_R@1": {"value", "ci_low", "ci_high"}, ..., "text_to_image_R@1": ...,
        "n": N_images, "n_texts": ..., "bootstrap": {...}}``. Queries with no match are left out
        (counted in ``n_queries_without_match``).

    Example:
        >>> rep = retrieval_report(np.eye(3), [0, 1, 2], ks=(1,), n_boot=0)
        >>> rep["image_to_text_R@1"]["value"], rep["text_to_image_R@1"]["value"]
        (1.0, 1.0)
    """
    s = _sim(sim)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise DataError(f"ks must be positive integers; got {ks}")
    n_img, n_txt = s.shape
    sets_i2t = _positive_sets(positives, n_img, n_txt)
    inv = invert_positives(sets_i2t, n_img, n_txt)
    sets_t2i = [np.asarray(p, dtype=np.int64) for p in inv]
    unit = "sample" if groups is None else group_unit
    g_img = None if groups is None else np.asarray(groups)
    if g_img is not None and g_img.shape != (n_img,):
        raise DataError(f"groups must have one id per image row ({n_img}); got shape {g_img.shape}")

    report: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    without_match = {}
    for direction, matrix, sets in (("image_to_text", s, sets_i2t), ("text_to_image", s.T, sets_t2i)):
        hits, valid = _retrieval_hits(matrix, sets, ks)
        without_match[direction] = int(len(sets) - valid.size)
        if g_img is None:
            g = None
        elif direction == "image_to_text":
            g = g_img[valid]
        else:
            g = g_img[[int(sets[q][0]) for q in valid]]
        kernels = {
            f"{direction}_R@{k}": (lambda W, h=hits[:, j]: _weighted_mean(W, h)) for j, k in enumerate(ks)
        }
        if valid.size == 0:
            for name in kernels:
                report[name] = {"value": None, "ci_low": None, "ci_high": None}
            continue
        res = _bootstrap_kernels(
            kernels, valid.size, n_boot=n_boot, seed=seed, groups=g, alpha=alpha, unit=unit
        )
        for name, r in res.items():
            report[name] = r.to_dict()
            skipped[name] = r.n_skipped
    report["n"] = int(n_img)
    report["n_texts"] = int(n_txt)
    report["n_queries_without_match"] = without_match
    if groups is not None:
        report["n_groups"] = _group_index(groups, n_img)[1]
    report["bootstrap"] = {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "unit": unit,
        "alpha": float(alpha),
        "skipped": skipped,
    }
    return report
