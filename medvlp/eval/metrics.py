"""Classification and retrieval metrics with (cluster) bootstrap confidence intervals.

This module is the public face; the code lives in :mod:`medvlp.eval.metrics_classification`
(classification kernels), :mod:`medvlp.eval.metrics_retrieval` (retrieval kernels),
:mod:`medvlp.eval.bootstrap` (the bootstrap engine) and :mod:`medvlp.eval.reports` (the JSON reports).

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

from medvlp.eval.bootstrap import BootstrapCI, bootstrap_ci
from medvlp.eval.metrics_classification import (
    accuracy,
    balanced_accuracy,
    cohen_kappa,
    f1_macro,
    macro_auroc,
    per_class_auroc,
    sensitivity_at_specificity,
    specificity_metric_name,
)
from medvlp.eval.metrics_retrieval import invert_positives, retrieval_recall_at_k
from medvlp.eval.reports import classification_report, retrieval_report

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
