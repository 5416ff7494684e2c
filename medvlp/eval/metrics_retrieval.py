"""Retrieval metric kernels (recall@k over a similarity matrix), weighted like the classification ones."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medvlp.errors import DataError
from medvlp.eval.checks import check_finite

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
    check_finite("similarity", sim)
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


