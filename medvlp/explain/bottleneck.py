"""Concept-bottleneck classifier: a linear model on concept scores whose weights are the explanation.

Images are described only by their concept scores (:mod:`medvlp.explain.concepts`); a multinomial
logistic regression (scikit-learn) on the standardised scores predicts the label. Because every
input is a named concept, the weight of concept ``c`` for label ``y`` reads "one standard deviation
more of ``c`` adds ``w_yc`` to the log-odds of ``y``"; the contribution of ``c`` to one image's
prediction is ``w_yc * z_c``. This is the label-free concept bottleneck of Oikarinen et al. (2023)
and the post-hoc bottleneck of Yuksekgonul et al. (2023) in their simplest form.

Example:
    >>> import medvlp                                                     # doctest: +SKIP
    >>> model = medvlp.load("runs/pathology-demo")                        # doctest: +SKIP
    >>> cbm = fit_concept_bottleneck(model, "demo/manifest.csv")          # doctest: +SKIP
    >>> cbm.top_weights("mucus", 3)                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvlp.errors import ConfigError, DataError

BOTTLENECK_FILE = "concept_bottleneck.json"


@dataclass
class ConceptBottleneck:
    """A fitted concept bottleneck: concept names, label names, scaler and weights."""

    concepts: list[str]  # concept display names, the input features in order
    labels: list[str]  # class names, the outputs in order
    mean: np.ndarray  # (K,) feature means (standardisation)
    scale: np.ndarray  # (K,) feature standard deviations
    coef: np.ndarray  # (C, K) weights on standardised scores
    intercept: np.ndarray  # (C,)
    train_accuracy: float = float("nan")
    n_train: int = 0

    @classmethod
    def fit(cls, scores: np.ndarray, y: Sequence[int] | np.ndarray, concepts: Sequence[str],
            labels: Sequence[str], *, c: float = 1.0) -> ConceptBottleneck:
        """Fit on concept scores (N, K) and integer labels (N,) indexing ``labels``.

        Raises:
            DataError: fewer than two classes present, or shapes disagree.
        """
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(scores, dtype=np.float64)
        yy = np.asarray(y, dtype=int)
        if x.ndim != 2 or x.shape[1] != len(concepts) or len(yy) != len(x):
            raise DataError(f"concept bottleneck: scores {x.shape} do not match {len(concepts)} concepts and "
                            f"{len(yy)} labels")
        present = np.unique(yy)
        if len(present) < 2:
            raise DataError("concept bottleneck: the training rows hold fewer than two classes")
        mean = x.mean(0)
        scale = x.std(0)
        scale[scale < 1e-12] = 1.0
        z = (x - mean) / scale
        lr = LogisticRegression(C=c, max_iter=2000)
        lr.fit(z, yy)
        coef = np.zeros((len(labels), len(concepts)))
        icpt = np.full(len(labels), -1e3)  # absent classes: never predicted
        if len(present) == 2 and lr.coef_.shape[0] == 1:  # sklearn's binary form: one row for class 1
            coef[present[1]], icpt[present[1]] = lr.coef_[0], lr.intercept_[0]
            coef[present[0]], icpt[present[0]] = 0.0, 0.0
        else:
            coef[present], icpt[present] = lr.coef_, lr.intercept_
        model = cls(list(concepts), list(labels), mean, scale, coef, icpt, n_train=len(yy))
        model.train_accuracy = float((model.predict_proba(x).argmax(1) == yy).mean())
        return model

    def decision(self, scores: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(np.asarray(scores, dtype=np.float64)) - self.mean) / self.scale
        return z @ self.coef.T + self.intercept

    def predict_proba(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) from concept scores (N, K)."""
        d = self.decision(scores)
        d = d - d.max(1, keepdims=True)
        e = np.exp(d)
        return e / e.sum(1, keepdims=True)

    def weights(self) -> dict[str, dict[str, float]]:
        """label -> {concept: weight}: the explanation of the whole classifier."""
        return {lab: {c: float(w) for c, w in zip(self.concepts, self.coef[i], strict=True)}
                for i, lab in enumerate(self.labels)}

    def top_weights(self, label: str, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` concepts with the largest absolute weight for ``label``."""
        row = self.coef[self._index(label)]
        order = np.argsort(-np.abs(row), kind="stable")[:n]
        return [(self.concepts[i], float(row[i])) for i in order]

    def contributions(self, scores: np.ndarray, label: str | None = None) -> list[tuple[str, float]]:
        """Per-concept contributions ``w * z`` to one image's logit of ``label`` (default: the prediction)."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        k = self._index(label) if label is not None else int(self.predict_proba(s).argmax(1)[0])
        contrib = self.coef[k] * (s - self.mean) / self.scale
        order = np.argsort(-np.abs(contrib), kind="stable")
        return [(self.concepts[i], float(contrib[i])) for i in order]

    def _index(self, label: str) -> int:
        if label not in self.labels:
            raise ConfigError(f"label '{label}' is not one of the bottleneck's labels {self.labels}")
        return self.labels.index(label)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "medvlp-concept-bottleneck/1", "concepts": self.concepts, "labels": self.labels,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(), "train_accuracy": self.train_accuracy,
                "n_train": self.n_train}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=2))
        return p

    @classmethod
    def load(cls, path: str | Path) -> ConceptBottleneck:
        """Read a file written by :meth:`save`.

        Raises:
            ConfigError: not a concept-bottleneck file.
        """
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
            return cls(list(raw["concepts"]), list(raw["labels"]), np.asarray(raw["mean"]),
                       np.asarray(raw["scale"]), np.asarray(raw["coef"]), np.asarray(raw["intercept"]),
                       float(raw.get("train_accuracy", float("nan"))), int(raw.get("n_train", 0)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{p}: not a concept-bottleneck file ({e})") from e


def fit_concept_bottleneck(model: Any, manifest: Any, concepts: Sequence[str] | None = None,
                           labels: Sequence[str] | None = None, *, split: str | None = "train",
                           c: float = 1.0) -> ConceptBottleneck:
    """Fit a bottleneck of ``model``'s concept scores on a labelled manifest (single-label rows).

    Args:
        model: a :class:`medvlp.api.Model`.
        manifest: path or :class:`medvlp.data.manifest.Manifest`.
        concepts: concept ids/names (default: the card's ``[explain]`` concepts).
        labels: label set (default: the manifest's labels).
        split: use only rows of this ``split`` when the manifest has that column and value.
        c: inverse L2 strength of the logistic regression.
    """
    from medvlp.data.dataset import ImageTextDataset
    from medvlp.data.manifest import Manifest, read_manifest
    from medvlp.eval.zeroshot import embed_dataset
    from medvlp.explain.concepts import concept_score_matrix, resolve_concepts

    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    if split and "split" in m.columns and split in set(m.df["split"].astype(str)):
        m = m.split(split)
    labels = list(labels) if labels is not None else m.label_names()
    index = {lab.lower(): i for i, lab in enumerate(labels)}
    specs = resolve_concepts(model.card, concepts)
    ds = ImageTextDataset(m, None, model.opts, train=False, need_captions=False, progress=False,
                          max_bad_fraction=1.0)
    feats = embed_dataset(model.net, ds)
    keep, y = [], []
    for k in range(len(ds)):
        labs = m.labels(ds.row_of(k))
        if len(labs) == 1 and labs[0].lower() in index:
            keep.append(k)
            y.append(index[labs[0].lower()])
    if len(keep) < 4:
        raise DataError(f"concept bottleneck: only {len(keep)} readable rows with a label in {labels}")
    scores = concept_score_matrix(model.net, feats[keep], specs, model.card)
    return ConceptBottleneck.fit(scores, y, [s.name for s in specs], labels, c=c)
