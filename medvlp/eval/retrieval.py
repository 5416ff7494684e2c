"""Image <-> text retrieval evaluation from embeddings, with bootstrap CIs (metrics JSON contract).

An image may have several captions; every caption of an image counts as a correct answer for that
image (image->text), and a caption retrieves correctly when it ranks one of its images first
(text->image). Identical caption texts are merged by default into one gallery item that matches
all their images: templated medical captions ("no acute cardiopulmonary process.") are common, and
without merging, copies of one text would tie and count against each other.

Example:
    >>> import numpy as np
    >>> texts, pos = captions_to_gallery([["a cat"], ["a dog", "a puppy"], ["a cat"]])
    >>> texts, pos
    (['a cat', 'a dog', 'a puppy'], [[0], [1, 2], [0]])
    >>> img = np.eye(3)[[0, 1, 0]]; txt = np.eye(3)[[0, 1, 1]]
    >>> rep = retrieval_from_embeddings(img, txt, pos, ks=(1,), n_boot=0)
    >>> rep["image_to_text_R@1"]["value"], rep["text_to_image_R@1"]["value"]
    (1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medvlp.errors import DataError, MedvlpError
from medvlp.eval.checks import finite_matrix
from medvlp.eval.metrics import retrieval_report

__all__ = [
    "captions_to_gallery",
    "embed_manifest_images",
    "evaluate_retrieval",
    "manifest_groups",
    "retrieval_from_embeddings",
]


def captions_to_gallery(
    captions: Sequence[Sequence[str]], *, dedupe: bool = True
) -> tuple[list[str], list[list[int]]]:
    """Flatten per-image caption lists into a text gallery and per-image positive indices.

    Args:
        captions: for each image its captions (possibly empty).
        dedupe: merge identical texts (after stripping whitespace) into one gallery item.

    Returns:
        ``(texts, positives)``: the gallery texts and, per image, the sorted indices of its texts.
    """
    texts: list[str] = []
    index: dict[str, int] = {}
    positives: list[list[int]] = []
    for caps in captions:
        mine: list[int] = []
        for c in caps:
            c = str(c).strip()
            if not c:
                continue
            if dedupe and c in index:
                j = index[c]
            else:
                j = len(texts)
                texts.append(c)
                index.setdefault(c, j)
            if j not in mine:
                mine.append(j)
        positives.append(sorted(mine))
    return texts, positives


def _unit(name: str, x: Any) -> np.ndarray:
    a = finite_matrix(name, x)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise DataError(f"{name} row {int(np.flatnonzero(norm[:, 0] == 0)[0])} is an all-zero embedding")
    return a / norm


def retrieval_from_embeddings(
    image_emb: Any,
    text_emb: Any,
    positives: Sequence[Any],
    *,
    groups: Any = None,
    ks: Sequence[int] = (1, 5, 10),
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    group_unit: str = "patient",
) -> dict[str, Any]:
    """Recall@K in both directions from image and text embeddings (cosine similarity).

    Args:
        image_emb: (N_images, D) embeddings (normalised here).
        text_emb: (N_texts, D) embeddings of the gallery texts.
        positives: per image the index or indices of its matching texts (see :func:`captions_to_gallery`).
        groups: optional (N_images,) patient/slide ids for the cluster bootstrap.
        ks: recall cut-offs.
        n_boot: bootstrap resamples (0: no intervals).
        seed: bootstrap seed.
        alpha: 1 - confidence level.
        group_unit: name of the resampled unit when ``groups`` is given.

    Returns:
        The metrics JSON of :func:`medvlp.eval.metrics.retrieval_report`:
        ``image_to_text_R@k`` and ``text_to_image_R@k`` -> ``{"value", "ci_low", "ci_high"}``, ``"n"``.
    """
    img = _unit("image_emb", image_emb)
    txt = _unit("text_emb", text_emb)
    if img.shape[1] != txt.shape[1]:
        raise DataError(f"image embeddings have dimension {img.shape[1]} but text embeddings {txt.shape[1]}")
    return retrieval_report(img @ txt.T, list(positives), ks=ks, groups=groups, n_boot=n_boot, seed=seed,
                            alpha=alpha, group_unit=group_unit)


def manifest_groups(manifest: Any, rows: Sequence[int]) -> tuple[np.ndarray | None, str]:
    """Patient (or slide) ids of the given manifest rows for the cluster bootstrap.

    Uses the ``patient`` column, else ``slide``, when every selected row has a value.

    Returns:
        ``(ids or None, unit name)``.
    """
    for col in ("patient", "slide"):
        vals = manifest.column(col)
        if vals is not None and all(vals[r] is not None for r in rows):
            return np.asarray([str(vals[r]) for r in rows]), col
    return None, "sample"


def embed_manifest_images(
    model: Any, manifest: Any, rows: Sequence[int] | None = None, *, batch_size: int = 64
) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Embed the images of manifest rows with a loaded :class:`medvlp.api.Model`.

    Unreadable images are skipped (the rest is still embedded) and reported.

    Args:
        model: object with ``embed_images(list_of_paths) -> (N, D) tensor`` (``medvlp.load(...)``).
        manifest: a :class:`medvlp.data.manifest.Manifest`.
        rows: row indices to embed (default: all).
        batch_size: images per forward pass.

    Returns:
        ``(embeddings (M, D) float32, rows embedded, bad rows as {"row", "image", "reason"})``.
    """
    rows = list(range(len(manifest))) if rows is None else list(rows)
    feats: list[np.ndarray] = []
    kept: list[int] = []
    bad: list[dict[str, str]] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        srcs = [manifest.image_source(r) for r in chunk]
        try:
            feats.append(np.asarray(model.embed_images(srcs, batch_size=batch_size), dtype=np.float32))
            kept += chunk
            continue
        except MedvlpError:
            pass  # one bad image in the batch: redo it image by image to keep the good ones
        for r, src in zip(chunk, srcs, strict=True):
            try:
                feats.append(np.asarray(model.embed_images([src]), dtype=np.float32))
                kept.append(r)
            except MedvlpError as e:
                bad.append({"row": str(r), "image": src, "reason": str(e)})
    emb = np.concatenate(feats) if feats else np.zeros((0, 0), dtype=np.float32)
    return emb, kept, bad


def evaluate_retrieval(
    model: Any,
    manifest: Any,
    *,
    ks: Sequence[int] = (1, 5, 10),
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    dedupe: bool = True,
) -> dict[str, Any]:
    """Image<->text retrieval metrics of a loaded model on a manifest with captions.

    Rows without a caption and unreadable images are left out and counted (``n_without_caption``,
    ``n_unreadable``); patient/slide ids, when every used row has one, drive the cluster bootstrap.

    Args:
        model: a :class:`medvlp.api.Model` (``medvlp.load(...)``).
        manifest: a :class:`medvlp.data.manifest.Manifest` with a ``caption`` column (text or JSON list).
        ks: recall cut-offs.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        batch_size: images per forward pass.
        dedupe: merge identical caption texts (see the module docstring).

    Returns:
        The metrics JSON (``image_to_text_R@k``, ``text_to_image_R@k``, ``n``, ...).

    Raises:
        DataError: no caption column, or no row with both a readable image and a caption.
    """
    where = manifest.path or "manifest"
    if "caption" not in manifest.columns:
        raise DataError(f"{where}: no 'caption' column; retrieval needs one caption (or a JSON list) per image")
    with_caption = [i for i in range(len(manifest)) if manifest.captions(i)]
    if not with_caption:
        raise DataError(f"{where}: every caption is empty; nothing to retrieve")
    img, rows, bad = embed_manifest_images(model, manifest, with_caption, batch_size=batch_size)
    if not rows:
        raise DataError(f"{where}: no readable image among the {len(with_caption)} rows with captions "
                        f"(first error: {bad[0]['reason']})")
    texts, positives = captions_to_gallery([manifest.captions(r) for r in rows], dedupe=dedupe)
    txt = np.asarray(model.embed_texts(texts), dtype=np.float32)
    groups, unit = manifest_groups(manifest, rows)
    report = retrieval_from_embeddings(img, txt, positives, groups=groups, ks=ks, n_boot=n_boot, seed=seed,
                                       group_unit=unit)
    report["n_without_caption"] = len(manifest) - len(with_caption)
    report["n_unreadable"] = len(bad)
    report["captions_per_image"] = float(np.mean([len(p) for p in positives]))
    return report
