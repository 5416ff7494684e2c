"""Embedding primitives of zero-shot scoring: label checks, text/image embeddings, class prompt embeddings.

Shared by :mod:`medvlp.eval.zeroshot` (which re-exports them), concept mode and the near-duplicate search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from medvlp.domains import DomainCard
from medvlp.errors import ConfigError

if TYPE_CHECKING:
    from medvlp.models import MedVLP

DEFAULT_TEMPLATES = ("a photo of {}.", "an image of {}.", "{}.")


def check_labels(labels: Sequence[str]) -> list[str]:
    """Validate a label list: non-empty, no duplicates (case-insensitive), no blanks."""
    labels = [str(lab).strip() for lab in labels]
    if not labels:
        raise ConfigError("the label list is empty; give at least two labels (e.g. --labels 'normal,pneumonia')")
    if any(not lab for lab in labels):
        raise ConfigError(f"the label list {labels} has an empty label")
    seen: dict[str, str] = {}
    for lab in labels:
        key = lab.lower()
        if key in seen:
            raise ConfigError(f"duplicate label '{lab}' (same as '{seen[key]}'); each label once")
        seen[key] = lab
    return labels


def default_graph(card: DomainCard | None) -> Any:
    """The card's ontology for prompt expansion (:func:`medvlp.ontology.card_graph`, warn-and-go-on mode)."""
    if card is None:
        return None
    from medvlp.ontology import card_graph

    return card_graph(card)


@torch.no_grad()
def embed_texts(model: MedVLP, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Unit text embeddings (N, D) in float32 on the CPU."""
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        tok = model.tokenize(list(texts[i:i + batch_size])).to(dev)
        out.append(model.encode_text(tok, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


def class_embeddings(model: MedVLP, prompt_sets: list[list[str]]) -> torch.Tensor:
    """Mean of unit prompt embeddings per class, renormalised; cached on the model per prompt set."""
    cache: dict[str, torch.Tensor] = model.__dict__.setdefault("_medvlp_text_cache", {})
    key = hashlib.sha256(repr(prompt_sets).encode()).hexdigest()
    if key not in cache:
        flat = [p for ps in prompt_sets for p in ps]
        emb = embed_texts(model, flat)
        rows, k = [], 0
        for ps in prompt_sets:
            rows.append(torch.nn.functional.normalize(emb[k:k + len(ps)].mean(0), dim=-1))
            k += len(ps)
        cache[key] = torch.stack(rows)
    return cache[key]




@torch.no_grad()
def embed_dataset(model: MedVLP, ds: Any, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Unit image embeddings of every item of an :class:`ImageTextDataset` (N, D), float32 CPU.

    Items whose image fails to decode only now (the dataset was not decoded up front, e.g. too large for
    the cache) are recorded in ``ds.bad`` and left out of ``ds`` and of the result, so that item ``k`` of
    ``ds`` stays the row of embedding ``k``.
    """
    from medvlp.data.dataset import Normalizer, collate, take_bad_rows

    dev = next(model.parameters()).device
    norm = Normalizer(ds.opts.mean, ds.opts.std).to(dev)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    it: Any = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="embedding images", unit="batch", leave=False)
    feats = []
    for b in it:
        take_bad_rows(ds, b, getattr(ds, "bad_log", None))
        feats.append(model.encode_image(norm(b["image"].to(dev)), normalize=True).float().cpu())
    out = torch.cat(feats)
    drop = getattr(ds, "drop_bad_items", None)
    if drop is not None:
        kept = drop()
        if len(kept) < len(out):
            out = out[kept]
    return out


