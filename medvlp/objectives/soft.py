"""MedCLIP-style soft targets: pairs that share a diagnosis are not pure negatives.

A CLIP variant whose target distribution over the batch is proportional to label (or concept)
overlap instead of the identity. With multi-hot vectors ``l_i`` of each sample's labels,

    w_ij = sim(l_i, l_j)  (cosine or Jaccard; 0 when either sample has no labels),  w_ii = 1,
    T_ij = w_ij / sum_k w_ik,
    L = -(1/2N) sum_i [ sum_j T_ij log softmax_j(t x_i.y_j) + sum_j T_ij log softmax_j(t y_i.x_j) ].

Samples without labels get the one-hot target, so without any labels this is exactly ``clip``
(MedCLIP's semantic matching loss, Wang et al. 2022, with the label similarity normalised
directly rather than through a second softmax).

Data parallelism: like :mod:`clip`, each rank scores its own rows against the gathered columns; label
vectors are gathered too. The batch carries ``soft_labels`` (float ``(B, L)`` multi-hot), which
:meth:`SoftClipObjective.data_hooks` provides through the dataset.

Options (``TrainConfig.extra["softclip"]``): ``similarity`` (``"cosine"`` | ``"jaccard"``),
``source`` (``"label"`` | ``"concepts"`` | ``"both"``).

Example:
    >>> import torch
    >>> soft_targets(torch.tensor([[1., 0.], [1., 0.], [0., 1.]]), torch.tensor([[1., 0.], [1., 0.], [0., 1.]]))
    tensor([[0.5000, 0.5000, 0.0000],
            [0.5000, 0.5000, 0.0000],
            [0.0000, 0.0000, 1.0000]])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvlp.data.samplers import RowValue
from medvlp.errors import ConfigError
from medvlp.objectives import register
from medvlp.objectives.base import DataNeeds, Objective, require_vocabulary
from medvlp.objectives.clip import ClipObjective
from medvlp.objectives.distributed import gather_no_grad, gather_with_grad, world_info

__all__ = [
    "SoftClipObjective",
    "SoftData",
    "ShardLabelVectors",
    "label_vocabulary",
    "soft_clip_loss",
    "soft_targets",
    "SOFT_OPTIONS",
]

SOFT_OPTIONS = {"similarity": "cosine", "source": "label"}


def soft_targets(
    rows: torch.Tensor, cols: torch.Tensor, offset: int = 0, similarity: str = "cosine"
) -> torch.Tensor:
    """Target distribution ``T`` (rows sum to 1) from multi-hot label vectors.

    Args:
        rows: ``(B, L)`` label vectors of the anchors (this rank's samples).
        cols: ``(N, L)`` label vectors of the candidates (the global batch).
        offset: global index of ``rows[0]`` (its own pair is column ``offset``).
        similarity: ``"cosine"`` or ``"jaccard"`` (on the binarised vectors).
    """
    rows, cols = rows.float(), cols.float()
    if similarity == "cosine":
        w = F.normalize(rows, dim=1) @ F.normalize(cols, dim=1).T  # zero vectors stay zero
    elif similarity == "jaccard":
        rb, cb = (rows > 0).float(), (cols > 0).float()
        inter = rb @ cb.T
        union = rb.sum(1, keepdim=True) + cb.sum(1).unsqueeze(0) - inter
        w = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    else:
        raise ConfigError(f"softclip similarity must be cosine or jaccard, not {similarity!r}")
    w = w.clamp_min(0)
    idx = torch.arange(rows.shape[0], device=rows.device)
    w[idx, idx + offset] = 1.0
    return w / w.sum(dim=1, keepdim=True)


def soft_clip_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    all_img: torch.Tensor,
    all_txt: torch.Tensor,
    scale: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Symmetric soft-target cross-entropy of local rows against global columns.

    Args:
        img, txt: this rank's unit features ``(B, D)``.
        all_img, all_txt: the global batch ``(N, D)``.
        scale: the logit scale ``t``.
        targets: ``(B, N)`` from :func:`soft_targets` (label similarity is symmetric, so the same
            targets serve both directions).
    """
    log_p_i2t = F.log_softmax(scale * img @ all_txt.T, dim=1)
    log_p_t2i = F.log_softmax(scale * txt @ all_img.T, dim=1)
    return -((targets * log_p_i2t).sum(1).mean() + (targets * log_p_t2i).sum(1).mean()) / 2


def sample_names(labels: list[str], concepts: Any, source: str = "label") -> list[str]:
    """The names a sample's soft-target vector marks: its labels and/or non-negated concept ids."""
    from medvlp.data.shards import concept_ids

    names = list(labels) if source in ("label", "both") else []
    if source in ("concepts", "both"):
        names += concept_ids(concepts)
    return list(dict.fromkeys(names))


def label_vocabulary(manifest: Any, source: str = "label") -> tuple[list[str], list[list[str]]]:
    """``(vocabulary, names per row)`` of a manifest's labels and/or non-negated concept ids."""
    per_row = [sample_names(manifest.labels(i), manifest.concepts(i), source) for i in range(len(manifest))]
    vocab = sorted({n for names in per_row for n in names})
    return vocab, per_row


class ShardLabelVectors:
    """``(meta, key) -> {"soft_labels": FloatTensor(L)}`` for a streamed sample, over the shards' vocabulary
    (the same on every rank); picklable, for loader workers."""

    def __init__(self, vocabulary: list[str], source: str) -> None:
        self.index = {n: j for j, n in enumerate(vocabulary)}
        self.size, self.source = max(len(vocabulary), 1), source

    def __call__(self, meta: dict[str, Any], key: int) -> dict[str, Any]:
        from medvlp.data.shards import meta_labels

        vec = torch.zeros(self.size)
        for n in sample_names(meta_labels(meta), meta.get("concepts"), self.source):
            j = self.index.get(n)
            if j is not None:
                vec[j] = 1.0
        return {"soft_labels": vec}


@dataclass
class SoftData:
    """Hooks for the dataset: ``row_fields(row) -> {"soft_labels": FloatTensor(L)}``."""

    vocabulary: list[str]
    row_fields: Callable[[int], dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


class SoftClipObjective(Objective):
    """CLIP with MedCLIP-style soft targets (see the module docstring). Returns ``{"softclip": loss}``.

    Args:
        similarity: ``"cosine"`` or ``"jaccard"`` overlap of the label vectors.
        source: where labels come from in :meth:`data_hooks`: ``"label"``, ``"concepts"`` or ``"both"``.
    """

    name = "softclip"
    logit_init = ClipObjective.logit_init  # soft targets start from CLIP's temperature
    init_rank = 1
    needs_rows = True
    streams_rows = True

    def __init__(self, similarity: str = "cosine", source: str = "label") -> None:
        super().__init__()
        self._configure(similarity, source)

    def _configure(self, similarity: str, source: str) -> None:
        if similarity not in ("cosine", "jaccard"):
            raise ConfigError(f"softclip similarity must be cosine or jaccard, not {similarity!r}")
        if source not in ("label", "concepts", "both"):
            raise ConfigError(f"softclip source must be label, concepts or both, not {source!r}")
        self.similarity, self.source = similarity, source

    def forward(self, out: dict, batch: dict | None = None) -> dict[str, torch.Tensor]:
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        rank, _ = world_info()
        all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
        labels = (batch or {}).get("soft_labels")
        b = img.shape[0]
        if labels is None:
            targets = torch.zeros(b, all_img.shape[0], dtype=img.dtype, device=img.device)
            targets[torch.arange(b), torch.arange(b) + rank * b] = 1.0
        else:
            local = torch.as_tensor(labels, device=img.device).float()
            targets = soft_targets(local, gather_no_grad(local), rank * b, self.similarity).to(img.dtype)
        return {"softclip": soft_clip_loss(img, txt, all_img, all_txt, scale, targets)}

    def _options(self, options: dict[str, Any] | None) -> None:
        raw = dict((options or {}).get("softclip") or {})
        unknown = set(raw) - set(SOFT_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown softclip option(s) {sorted(unknown)}; known: {sorted(SOFT_OPTIONS)}")
        self._configure(str(raw.get("similarity", self.similarity)), str(raw.get("source", self.source)))

    def stream_needs(self, manifest: Any, vocabulary: dict[str, list[str]] | None, card: Any, model: nn.Module,
                     options: dict[str, Any]) -> DataNeeds:
        """Label vectors for streamed shards, over the shards' vocabulary of labels and/or concept ids."""
        self._options(options)
        vocab = require_vocabulary(vocabulary, "softclip")
        names = set(vocab.get("labels", [])) if self.source in ("label", "both") else set()
        if self.source in ("concepts", "both"):
            names |= set(vocab.get("concepts", []))
        return DataNeeds(meta_fields=ShardLabelVectors(sorted(names), self.source),
                         info=f"{len(names)} labels from the shards' vocabulary")

    def data_hooks(self, manifest: Any, card: Any = None, options: dict[str, Any] | None = None) -> SoftData:
        """Label vectors for the dataset; ``options["softclip"]`` may set ``similarity`` and ``source``."""
        self._options(options)
        vocab, per_row = label_vocabulary(manifest, self.source)
        index = {n: j for j, n in enumerate(vocab)}
        vectors = torch.zeros(len(per_row), max(len(vocab), 1))
        for i, names in enumerate(per_row):
            for n in names:
                vectors[i, index[n]] = 1.0
        n_labelled = sum(bool(names) for names in per_row)
        return SoftData(
            vocabulary=vocab,
            row_fields=RowValue("soft_labels", vectors),
            info={"labels": len(vocab), "labelled_rows": n_labelled},
        )


    def data_needs(self, manifest: Any, card: Any, model: nn.Module, options: dict[str, Any]) -> DataNeeds:
        data = self.data_hooks(manifest, card, options)
        return DataNeeds(row_fields=data.row_fields,
                         info=f"{data.info['labels']} labels, {data.info['labelled_rows']} labelled rows")


register("softclip", SoftClipObjective)
