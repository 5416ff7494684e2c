"""Near duplicates between a training and an evaluation set, by the evaluated model's own embeddings.

Pixel and perceptual hashes (``medvlp.data.overlap``) find copies; the model's image embeddings also
find what the model cannot tell apart (re-scans, crops, stain or contrast changes). A pair is reported
when the cosine of the two unit embeddings is at least ``threshold`` (default 0.98).

Example:
    >>> import numpy as np
    >>> tr = np.array([[1.0, 0.0], [0.0, 1.0]]); ev = np.array([[0.999, 0.04], [0.7, 0.7]])
    >>> r = embedding_near_duplicates(tr, ev)
    >>> r["n_pairs"], r["n_eval_rows"], r["pairs"][0][:2]
    (1, 1, [0, 0])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medvlp.errors import ConfigError, DataError
from medvlp.eval.checks import finite_matrix

if TYPE_CHECKING:
    from medvlp.models import MedVLP

__all__ = ["DEFAULT_THRESHOLD", "embedding_near_duplicates", "manifest_near_duplicates"]

DEFAULT_THRESHOLD = 0.98
_BLOCK = 2048  # eval rows per similarity block (block x n_train floats in memory)


def _unit(name: str, x: Any) -> np.ndarray:
    a = finite_matrix(name, x)
    n = np.linalg.norm(a, axis=1, keepdims=True)
    if np.any(n == 0):
        raise DataError(f"{name} row {int(np.flatnonzero(n[:, 0] == 0)[0])} is an all-zero embedding")
    return a / n


def embedding_near_duplicates(train_features: Any, eval_features: Any, *, threshold: float = DEFAULT_THRESHOLD,
                              max_pairs: int = 1000) -> dict[str, Any]:
    """Pairs (train row, eval row) whose embeddings have cosine >= ``threshold``.

    Returns:
        ``{"threshold", "n_pairs", "n_eval_rows" (eval rows with at least one near duplicate),
        "eval_fraction", "pairs": [[train_row, eval_row, cosine], ...] (highest first, at most
        max_pairs), "truncated"}``.

    Raises:
        ConfigError: threshold outside (-1, 1].  DataError: bad or mismatched matrices.
    """
    if not -1.0 < threshold <= 1.0:
        raise ConfigError(f"the near-duplicate cosine threshold must be in (-1, 1]; got {threshold}")
    tr, ev = _unit("train embeddings", train_features), _unit("eval embeddings", eval_features)
    if tr.shape[1] != ev.shape[1]:
        raise DataError(f"train embeddings have {tr.shape[1]} dimensions but eval embeddings {ev.shape[1]}")
    pairs: list[tuple[int, int, float]] = []
    hit_rows = np.zeros(len(ev), dtype=bool)
    for start in range(0, len(ev), _BLOCK):
        sim = ev[start:start + _BLOCK] @ tr.T  # (b, n_train)
        e_idx, t_idx = np.nonzero(sim >= threshold - 1e-9)
        hit_rows[start + e_idx] = True
        pairs += [(int(t), int(start + e), float(sim[e, t])) for e, t in zip(e_idx, t_idx, strict=True)]
    pairs.sort(key=lambda p: -p[2])
    return {"threshold": float(threshold), "n_pairs": len(pairs), "n_eval_rows": int(hit_rows.sum()),
            "eval_fraction": float(hit_rows.mean()), "pairs": [[t, e, round(c, 6)] for t, e, c in pairs[:max_pairs]],
            "truncated": len(pairs) > max_pairs}


def manifest_near_duplicates(model: MedVLP, train_manifest: Any, eval_features: Any, *, card: Any,
                             threshold: float = DEFAULT_THRESHOLD, batch_size: int = 256,
                             progress: bool = False) -> dict[str, Any]:
    """:func:`embedding_near_duplicates` of a training manifest's images (embedded with ``model``)
    against already computed eval embeddings; unreadable training images are skipped and counted."""
    from medvlp.data.dataset import ImageTextDataset, options_for
    from medvlp.eval.embedding import embed_dataset

    ds = ImageTextDataset(train_manifest, None, options_for(model.spec, card, train=False), train=False,
                          need_captions=False, progress=progress, max_bad_fraction=1.0)
    if len(ds.bad) == len(train_manifest):
        raise DataError(f"{train_manifest.path}: no readable training image to compare with")
    feats = embed_dataset(model, ds, batch_size=batch_size, progress=progress)
    out = embedding_near_duplicates(feats, eval_features, threshold=threshold)
    rows = [ds.row_of(k) for k in range(len(ds))]
    out["pairs"] = [[rows[t], e, c] for t, e, c in out["pairs"]]  # manifest rows, not dataset indices
    out["n_train_unreadable"] = len(ds.bad)
    return out
