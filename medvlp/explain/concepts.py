"""Concept scores: how strongly an image shows each concept, measured against a reference prompt.

MONET / DermLIP style: for a concept ``c`` with prompts ``P_c`` (its names in the domain's templates)
and the card's reference prompt ``r`` (e.g. "an H&E stained tissue section"), the score of an image
embedding ``x`` is

    s_c(x) = mean_{p in P_c} sigmoid(t * (cos(x, p) - cos(x, r)))

with the model's learned logit scale ``t``. The reference removes what every prompt of the domain
shares ("an H&E image of ..."), so the score says whether the image is closer to *this* concept than
to a generic image of the domain; 0.5 means "no evidence either way". Ranking by ``s_c`` gives the
concept explanation of an image.

Example:
    >>> import medvlp                                                     # doctest: +SKIP
    >>> model = medvlp.load("runs/pathology-demo")                        # doctest: +SKIP
    >>> concept_scores(model, "tile.png")[:3]                             # doctest: +SKIP
    [('mucus', 0.81), ('adipose tissue', 0.62), ('necrosis', 0.55)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from medvlp.errors import ConfigError, OntologyError


@dataclass(frozen=True)
class ConceptSpec:
    """A concept to explain with: its id (or the user's text), display name and prompt names."""

    id: str  # ontology id ("path:mucus") or the user's free text when it matches no concept
    name: str  # display name (the ontology's preferred name)
    names: tuple[str, ...]  # name + synonyms put into the templates


@cache
def _graph(ontology: str) -> Any:
    from medvlp.ontology import load_ontology

    return load_ontology(ontology)


def card_graph(card: Any) -> Any | None:
    """The card's ontology, or None when it cannot be loaded (concepts then use their raw text)."""
    if card is None or not getattr(card, "ontology", ""):
        return None
    from medvlp.ontology import card_graph as _card_graph

    try:
        return _card_graph(card, strict=True, with_labels=False)
    except OntologyError:
        return None


def _humanize(cid: str) -> str:
    return cid.split(":", 1)[-1].replace("_", " ").strip()


def resolve_concepts(card: Any, concepts: Sequence[str] | None = None, *, max_synonyms: int = 3) -> list[ConceptSpec]:
    """Turn concept ids or names into :class:`ConceptSpec` (card's ``[explain]`` list by default).

    A name is looked up in the card's ontology (id, then exact name/synonym); unknown text is used as is.

    Raises:
        ConfigError: the list is empty (and the card has no ``[explain]`` concepts).
    """
    items = list(concepts) if concepts is not None else list(getattr(card, "explain_concepts", ()) or ())
    items = [str(c).strip() for c in items if str(c).strip()]
    if not items:
        raise ConfigError("no concepts to explain with: give a concept list (ids or names), or add "
                          "[explain] concepts = [...] to the domain card")
    graph = card_graph(card)
    out: list[ConceptSpec] = []
    seen: set[str] = set()
    for item in items:
        concept = None
        if graph is not None:
            concept = graph.get(item)
            if concept is None:
                hits = graph.search(item, limit=1)
                if hits and item.lower() in [t.lower() for t in hits[0].texts]:
                    concept = hits[0]
        if concept is not None:
            spec = ConceptSpec(concept.id, concept.name,
                               tuple(dict.fromkeys([concept.name, *concept.synonyms[:max_synonyms]])))
        else:
            lab = card.find_label(item) if card is not None else None
            if lab is not None:
                spec = ConceptSpec(lab.concept, lab.name, tuple(lab.names))
            else:
                name = _humanize(item) if ":" in item and " " not in item else item
                spec = ConceptSpec(item, name, (name,))
        if spec.id not in seen:
            seen.add(spec.id)
            out.append(spec)
    return out


def concept_prompts(spec: ConceptSpec, card: Any) -> list[str]:
    """Every name of the concept in every template of the card."""
    templates = list(card.prompts.templates) if card is not None else ["{}."]
    return list(dict.fromkeys(t.format(n) for n in spec.names for t in templates))


def reference_prompt(card: Any) -> str:
    return str(card.prompts.reference) if card is not None else "an image"


@torch.no_grad()
def concept_score_matrix(net: Any, image_features: torch.Tensor, specs: Sequence[ConceptSpec], card: Any,
                         *, reference: str | None = None) -> np.ndarray:
    """Scores (N, K) in [0, 1] of unit image features (N, D) for K concepts (formula in the module doc)."""
    from medvlp.eval.zeroshot import embed_texts

    prompt_sets = [concept_prompts(s, card) for s in specs]
    flat = [p for ps in prompt_sets for p in ps]
    emb = embed_texts(net, [reference or reference_prompt(card), *flat])
    ref, prompts = emb[0], emb[1:]
    feats = image_features.float().cpu()
    scale = float(net.clip.logit_scale.detach().exp())
    sims = feats @ prompts.T  # (N, P)
    ref_sim = feats @ ref  # (N,)
    probs = torch.sigmoid(scale * (sims - ref_sim[:, None]))
    out = np.empty((feats.shape[0], len(specs)), dtype=np.float64)
    k = 0
    for j, ps in enumerate(prompt_sets):
        out[:, j] = probs[:, k:k + len(ps)].mean(1).numpy()
        k += len(ps)
    return out


def rank_concepts(specs: Sequence[ConceptSpec], scores: np.ndarray) -> list[tuple[str, float]]:
    """(name, score) pairs sorted by score, highest first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return [(specs[i].name, float(scores[i])) for i in order]


def concept_scores(model: Any, image: Any, concepts: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """Ranked concept scores of one image for a :class:`medvlp.api.Model`.

    Args:
        model: a loaded model (``medvlp.load``).
        image: path, PIL image or array.
        concepts: concept ids or names; None = the card's ``[explain]`` concepts.

    Returns:
        ``[(concept name, score in [0, 1]), ...]`` highest first.
    """
    specs = resolve_concepts(model.card, concepts)
    feats = model.embed_images([image])
    return rank_concepts(specs, concept_score_matrix(model.net, feats, specs, model.card)[0])
