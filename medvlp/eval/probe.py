"""Linear probe and k-shot evaluation on frozen embeddings (scikit-learn logistic regression).

The probe is ``StandardScaler -> LogisticRegression`` (L2). Standardising puts every embedding
dimension on one scale, so one regularisation strength ``C`` means the same thing across models;
``C`` is chosen by stratified cross-validation on the training rows (log-loss) unless given.

k-shot repeats: draw ``k`` training rows per class, fit with a fixed ``C``, score the whole test
set; the reported value is the mean over draws and the interval the 95% t-interval of that mean.
Cross-validating ``C`` on one or a few shots per class is noise, hence the fixed ``C``.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200); x = rng.normal(0, 1, (200, 8)) + 3 * y[:, None]
    >>> rep = linear_probe(x[:100], y[:100], x[100:], y[100:], ["neg", "pos"], n_boot=0)
    >>> rep["accuracy"]["value"]
    1.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from medvlp.errors import ConfigError, DataError
from medvlp.eval.checks import finite_matrix
from medvlp.eval.metrics import classification_report

__all__ = ["C_GRID", "DEFAULT_C", "evaluate_linear_probe", "few_shot", "fit_linear_probe", "linear_probe"]

DEFAULT_C = 1.0  # fixed strength for k-shot fits (and when too few rows per class for CV)
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))  # 1e-4 ... 1e2, one per decade
_MAX_ITER = 2000


def _features(name: str, x: Any) -> np.ndarray:
    a = finite_matrix(name, x)
    return a


def _targets(name: str, y: Any, n: int, n_classes: int) -> tuple[np.ndarray, bool]:
    t = np.asarray(y)
    if t.ndim == 2:
        if t.shape != (n, n_classes):
            raise DataError(f"multi-label {name} must have shape ({n}, {n_classes}); got {t.shape}")
        if not np.all((t == 0) | (t == 1)):
            raise DataError(f"multi-label {name} must contain only 0 and 1")
        return t.astype(np.int64), True
    if t.shape != (n,):
        raise DataError(f"{name} must hold one class index per embedding row ({n}); got shape {t.shape}")
    if t.dtype.kind not in "iu" and not (t.dtype.kind == "f" and np.all(t == np.round(t))):
        raise DataError(f"{name} must hold integer class indices; got dtype {t.dtype}")
    t = t.astype(np.int64)
    bad = np.flatnonzero((t < 0) | (t >= n_classes))
    if bad.size:
        raise DataError(f"{name} row {int(bad[0])} has class {int(t[bad[0]])}, outside 0..{n_classes - 1}")
    return t, False


def _pipeline(C: float, seed: int, multilabel: bool) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lr = LogisticRegression(C=C, max_iter=_MAX_ITER, random_state=seed)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(lr) if multilabel else lr)


def fit_linear_probe(
    x: Any,
    y: Any,
    *,
    C: float | None = None,
    c_grid: Sequence[float] = C_GRID,
    cv: int = 5,
    seed: int = 0,
) -> tuple[Any, float]:
    """Fit ``StandardScaler + LogisticRegression`` on frozen embeddings.

    Args:
        x: (N, D) training embeddings.
        y: (N,) class indices, or (N, C) 0/1 for multi-label (one-vs-rest).
        C: inverse L2 strength; ``None`` picks it from ``c_grid`` by stratified ``cv``-fold
            cross-validation on log-loss (fewer folds when a class is small; ``DEFAULT_C`` when a
            class has a single row).
        c_grid: candidate values of ``C``.
        cv: number of folds.
        seed: seed of the folds and the solver.

    Returns:
        ``(fitted sklearn pipeline, C used)``.

    Raises:
        DataError: only one class in ``y`` (or a multi-label column with one value).
    """
    xa = _features("train embeddings", x)
    ya = np.asarray(y)
    multi = ya.ndim == 2
    if multi:
        flat = [c for c in range(ya.shape[1]) if ya[:, c].min() == ya[:, c].max()]
        if flat:
            raise DataError(f"multi-label training labels {flat} are all 0 or all 1; a probe cannot learn them")
        counts = np.minimum(ya.sum(0), len(ya) - ya.sum(0))
    else:
        _, counts = np.unique(ya, return_counts=True)
        if counts.size < 2:
            raise DataError(f"the training set has a single class ({np.unique(ya).tolist()}); a probe needs two or more")
    if C is not None:
        if not C > 0:
            raise ConfigError(f"C must be > 0; got {C}")
        return _pipeline(float(C), seed, multi).fit(xa, ya), float(C)
    folds = int(min(cv, counts.min()))
    if folds < 2:
        warnings.warn(f"a class has a single training row: no cross-validation, C = {DEFAULT_C}", stacklevel=2)
        return _pipeline(DEFAULT_C, seed, multi).fit(xa, ya), DEFAULT_C
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    splitter = (KFold if multi else StratifiedKFold)(n_splits=folds, shuffle=True, random_state=seed)
    key = "onevsrestclassifier__estimator__C" if multi else "logisticregression__C"
    # log-loss separates values of C that tie on accuracy (common on easy, near-separable data)
    search = GridSearchCV(_pipeline(DEFAULT_C, seed, multi), {key: list(c_grid)}, cv=splitter,
                          scoring="roc_auc" if multi else "neg_log_loss", refit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny C values of the grid
        search.fit(xa, ya)
    return search.best_estimator_, float(search.best_params_[key])


def _proba(pipe: Any, x: np.ndarray, n_classes: int, multilabel: bool) -> np.ndarray:
    p = pipe.predict_proba(x)
    if multilabel:
        return p
    # the probe only knows the classes seen in training: put their columns in place
    full = np.zeros((len(x), n_classes))
    full[:, pipe.classes_.astype(np.int64)] = p
    return full


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    labels: Sequence[str],
    *,
    C: float | None = None,
    cv: int = 5,
    groups: Any = None,
    train_groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    group_unit: str = "patient",
) -> dict[str, Any]:
    """Train a linear probe on frozen training embeddings and score it on test embeddings.

    Args:
        train_x: (N_train, D) embeddings.
        train_y: (N_train,) class indices into ``labels`` (or (N_train, C) 0/1 multi-label).
        test_x: (N_test, D) embeddings.
        test_y: (N_test,) class indices (or (N_test, C) 0/1).
        labels: the C label names.
        C: fixed inverse regularisation; ``None`` = cross-validated (see :func:`fit_linear_probe`).
        cv: folds for choosing ``C``.
        groups: optional (N_test,) patient/slide ids for the cluster bootstrap of the test metrics.
        train_groups: optional (N_train,) ids; a warning is raised when they overlap ``groups``
            (the same patient in train and test inflates the metrics).
        n_boot: bootstrap resamples of the test set.
        seed: seed of the folds, solver and bootstrap.
        group_unit: name of the resampled unit.

    Returns:
        The metrics JSON of :func:`medvlp.eval.metrics.classification_report` plus
        ``"probe": {"C", "n_train", "cv_folds", "standardized"}``.
    """
    labels = [str(x) for x in labels]
    trx, tex = _features("train embeddings", train_x), _features("test embeddings", test_x)
    if trx.shape[1] != tex.shape[1]:
        raise DataError(f"train embeddings have dimension {trx.shape[1]} but test embeddings {tex.shape[1]}")
    tr_y, multi = _targets("train labels", train_y, len(trx), len(labels))
    te_y, multi_te = _targets("test labels", test_y, len(tex), len(labels))
    if multi != multi_te:
        raise DataError("train and test labels must both be single-label or both multi-label")
    if groups is not None and train_groups is not None:
        shared = set(map(str, np.asarray(groups))) & set(map(str, np.asarray(train_groups)))
        if shared:
            warnings.warn(f"{len(shared)} {group_unit} ids appear in both train and test (e.g. "
                          f"{sorted(shared)[:3]}): the probe's test metrics are optimistic", stacklevel=2)
    pipe, c_used = fit_linear_probe(trx, tr_y, C=C, cv=cv, seed=seed)
    probs = _proba(pipe, tex, len(labels), multi)
    report = classification_report(te_y, probs, labels, groups=groups, n_boot=n_boot, seed=seed,
                                   multilabel=multi, group_unit=group_unit)
    report["probe"] = {"C": c_used, "n_train": int(len(trx)), "cv_folds": None if C is not None else int(cv),
                       "standardized": True, "model": "StandardScaler + LogisticRegression (L2)"}
    return report


def _t_quantile(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def few_shot(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    labels: Sequence[str],
    k: int,
    *,
    n_draws: int = 10,
    C: float = DEFAULT_C,
    seed: int = 0,
) -> dict[str, Any]:
    """k-shot linear probes: ``n_draws`` random draws of ``k`` training rows per class.

    Args:
        train_x: (N_train, D) pool of training embeddings.
        train_y: (N_train,) class indices into ``labels`` (single-label only).
        test_x: (N_test, D) test embeddings.
        test_y: (N_test,) class indices.
        labels: the C label names.
        k: shots per class (every class needs at least ``k`` training rows).
        n_draws: repeated draws.
        C: fixed inverse regularisation.
        seed: seed of the draws.

    Returns:
        ``{metric: {"value": mean over draws, "ci_low", "ci_high"} (95% t-interval of the mean), "n": N_test,
        "labels", "few_shot": {"k", "n_draws", "C", "std": {metric: sd over draws},
        "per_draw": {metric: [...]}}}``. Metrics undefined on the test set are null.

    Raises:
        DataError: multi-label labels, or a class with fewer than ``k`` training rows.
    """
    labels = [str(x) for x in labels]
    if k < 1:
        raise ConfigError(f"k (shots per class) must be >= 1; got {k}")
    if n_draws < 1:
        raise ConfigError(f"n_draws must be >= 1; got {n_draws}")
    trx, tex = _features("train embeddings", train_x), _features("test embeddings", test_x)
    if np.asarray(train_y).ndim == 2:
        raise DataError("k-shot sampling needs single-label data (k rows per class); use linear_probe for multi-label")
    tr_y, _ = _targets("train labels", train_y, len(trx), len(labels))
    te_y, _ = _targets("test labels", test_y, len(tex), len(labels))
    present = np.unique(tr_y)
    by_class = {int(c): np.flatnonzero(tr_y == c) for c in present}
    short = {labels[c]: len(rows) for c, rows in by_class.items() if len(rows) < k}
    if short:
        raise DataError(f"k={k} shots per class, but these classes have fewer training rows: {short}")
    if len(present) < 2:
        raise DataError("the training pool has a single class; a probe needs two or more")
    rng = np.random.default_rng(seed)
    per_draw: dict[str, list[float | None]] = {}
    for d in range(n_draws):
        idx = np.concatenate([rng.choice(rows, size=k, replace=False) for rows in by_class.values()])
        pipe, _ = fit_linear_probe(trx[idx], tr_y[idx], C=C, seed=seed + d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-draw degeneracy warnings repeat; the summary says it once
            rep = classification_report(te_y, _proba(pipe, tex, len(labels), False), labels, n_boot=0)
        for name, v in rep.items():
            if isinstance(v, dict) and "value" in v:
                per_draw.setdefault(name, []).append(v["value"])
    out: dict[str, Any] = {}
    std: dict[str, float | None] = {}
    for name, vals in per_draw.items():
        arr = np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
        ok = arr[np.isfinite(arr)]
        if ok.size == 0:
            out[name] = {"value": None, "ci_low": None, "ci_high": None}
            std[name] = None
            continue
        mean = float(ok.mean())
        sd = float(ok.std(ddof=1)) if ok.size > 1 else 0.0
        half = _t_quantile(ok.size - 1) * sd / math.sqrt(ok.size) if ok.size > 1 else math.nan
        out[name] = {"value": mean, "ci_low": None if math.isnan(half) else mean - half,
                     "ci_high": None if math.isnan(half) else mean + half}
        std[name] = sd
    out["n"] = int(len(tex))
    out["labels"] = labels
    out["few_shot"] = {"k": int(k), "n_draws": int(n_draws), "C": float(C), "seed": int(seed),
                       "interval": "95% t-interval of the mean over draws", "std": std, "per_draw": per_draw}
    return out


def _labelled_rows(manifest: Any, labels: list[str], multilabel: bool) -> tuple[list[int], np.ndarray]:
    """Rows usable for a label set and their targets (class indices or 0/1 vectors)."""
    index = {lab.lower(): k for k, lab in enumerate(labels)}
    rows: list[int] = []
    ys: list[Any] = []
    for i in range(len(manifest)):
        labs = manifest.labels(i)
        if multilabel:
            known = [index[lab.lower()] for lab in labs if lab.lower() in index]
            if not labs:
                continue  # an unlabelled row says nothing about the findings
            vec = np.zeros(len(labels), dtype=np.int64)
            vec[known] = 1
            rows.append(i)
            ys.append(vec)
        elif len(labs) == 1 and labs[0].lower() in index:
            rows.append(i)
            ys.append(index[labs[0].lower()])
    return rows, np.asarray(ys)


def evaluate_linear_probe(
    model: Any,
    train_manifest: Any,
    test_manifest: Any,
    *,
    labels: Sequence[str] | None = None,
    k: int | None = None,
    n_draws: int = 10,
    C: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Linear probe (or k-shot probes) of a loaded model's frozen image embeddings on two manifests.

    Args:
        model: a :class:`medvlp.api.Model` (``medvlp.load(...)``).
        train_manifest: labelled :class:`~medvlp.data.manifest.Manifest` to fit on.
        test_manifest: labelled manifest to score.
        labels: label set (default: the training manifest's distinct labels). Rows whose label is
            outside it are left out and counted (``n_excluded``).
        k: shots per class for k-shot probes; ``None`` trains on every training row.
        n_draws: k-shot repetitions.
        C: fixed inverse regularisation (default: cross-validated; k-shot: ``DEFAULT_C``).
        n_boot: bootstrap resamples of the test metrics (full probe only).
        seed: seed of folds, draws and bootstrap.
        batch_size: images per forward pass.

    Returns:
        The metrics JSON from :func:`linear_probe` or :func:`few_shot`, plus ``n_train``,
        ``n_excluded`` ({"train", "test"}) and ``n_unreadable`` ({"train", "test"}).
    """
    from medvlp.eval.retrieval import embed_manifest_images, manifest_groups

    multi = bool(train_manifest.is_multilabel() or test_manifest.is_multilabel())
    label_list = [str(x).strip() for x in (labels if labels is not None else train_manifest.label_names())]
    if len(label_list) < 2:
        raise DataError(f"{train_manifest.path}: the probe needs at least two labels; found {label_list}")
    if len({lab.lower() for lab in label_list}) != len(label_list):
        raise ConfigError(f"duplicate labels in {label_list}; each label once")
    parts: dict[str, Any] = {}
    for name, man in (("train", train_manifest), ("test", test_manifest)):
        rows, y = _labelled_rows(man, label_list, multi)
        if not rows:
            raise DataError(f"{man.path}: no row has a label in the label set {label_list}")
        emb, kept, bad = embed_manifest_images(model, man, rows, batch_size=batch_size)
        if not kept:
            raise DataError(f"{man.path}: no readable image ({bad[0]['reason']})")
        pos = {r: j for j, r in enumerate(rows)}
        parts[name] = {"x": emb, "y": y[[pos[r] for r in kept]], "rows": kept, "excluded": len(man) - len(rows),
                       "bad": len(bad), "groups": manifest_groups(man, kept)}
    tr, te = parts["train"], parts["test"]
    if k is not None:
        report = few_shot(tr["x"], tr["y"], te["x"], te["y"], label_list, k, n_draws=n_draws,
                          C=DEFAULT_C if C is None else C, seed=seed)
    else:
        groups, unit = te["groups"]
        train_groups, _ = tr["groups"]
        report = linear_probe(tr["x"], tr["y"], te["x"], te["y"], label_list, C=C, groups=groups,
                              train_groups=train_groups, n_boot=n_boot, seed=seed,
                              group_unit=unit if groups is not None else "patient")
    report["n_train"] = len(tr["rows"])
    report["n_excluded"] = {"train": tr["excluded"], "test": te["excluded"]}
    report["n_unreadable"] = {"train": tr["bad"], "test": te["bad"]}
    return report
