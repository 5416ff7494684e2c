"""Reports: the metrics JSON contract (classification and retrieval reports with bootstrap CIs)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medvlp.errors import DataError
from medvlp.eval.bootstrap import _bootstrap_kernels, _group_index
from medvlp.eval.metrics_classification import (
    _auroc_columns,
    _confusion_w,
    _evaluable,
    _from_confusion,
    _multilabel_f1_kernel,
    _prep,
    _RankAUROC,
    _scores_2d,
    _sens_at_spec_kernel,
    _weighted_mean,
    specificity_metric_name,
)
from medvlp.eval.metrics_retrieval import _positive_sets, _retrieval_hits, _sim, invert_positives


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
