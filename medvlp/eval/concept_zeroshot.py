"""Concept-mode zero-shot: a class is scored from the ontology concepts that define it.

Prompt mode compares an image with the *name* of a class; concept mode compares it with the class's
defining concepts (its ``has_feature`` / ``has_morphology`` / ... relations in the ontology, optionally
its is-a parents' too), so a class never seen by name can still be recognised from features the model
knows. Each concept is a prompt ensemble (its name and synonyms x the card's templates). The image-concept
score is the concept head's best patch (ConceptCLIP) when the model has a head and patch embeddings are
given, else the global image-concept cosine. Scores are centred per image across concepts; a class
score is the mean of its presence concepts minus the mean of its absence concepts (``lacks_*`` /
``has_no_*`` relations), and probabilities are ``softmax(t * score)`` across classes.

Example:
    >>> from medvlp.ontology import Concept, ConceptGraph
    >>> g = ConceptGraph([Concept("x:f", "granules"), Concept("x:a", "cell a", relations=[("has_feature", "x:f")])])
    >>> defining_concepts(g, "x:a")
    (['x:f'], [])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medvlp.domains import DomainCard, load_card
from medvlp.errors import ConfigError

if TYPE_CHECKING:
    from medvlp.models import MedVLP

__all__ = ["ABSENCE_PREFIXES", "PRESENCE_TYPES", "ConceptZeroShot", "defining_concepts"]

# relation types that define a class by a feature it shows / lacks; others (finding_site, associated_with,
# marks, part_of ...) describe context, not appearance
PRESENCE_TYPES = ("has_feature", "has_morphology", "has_finding", "has_part", "has_component",
                  "has_attribute", "characterized_by", "defined_by")
ABSENCE_PREFIXES = ("lacks", "has_no_", "absent_", "without_", "not_")


def _kind(rel_type: str) -> str | None:
    t = rel_type.strip().lower().replace("-", "_").replace(" ", "_")
    if t.startswith(ABSENCE_PREFIXES):
        return "absent"
    if t in PRESENCE_TYPES or t.startswith("has_"):
        return "present"
    return None


def defining_concepts(graph: Any, concept_id: str, *, include_parents: bool = False) -> tuple[list[str], list[str]]:
    """(presence concept ids, absence concept ids) that define ``concept_id`` in ``graph``.

    With ``include_parents`` the defining relations of every is-a ancestor are added (a class inherits
    its parents' features); a concept listed both ways counts as absent.
    """
    ids = [concept_id] + (sorted(graph.ancestors(concept_id)) if include_parents else [])
    present: dict[str, None] = {}
    absent: dict[str, None] = {}
    for cid in ids:
        for rel_type, target in graph[cid].relations:
            kind = _kind(rel_type)
            if kind == "absent":
                absent[target] = None
            elif kind == "present":
                present[target] = None
    return [c for c in present if c not in absent], list(absent)


class ConceptZeroShot:
    """Zero-shot classifier over a label list, scored through the labels' defining concepts.

    Args:
        model: a :class:`medvlp.models.MedVLP` (any object with ``tokenize``/``encode_text``/``clip.logit_scale``).
        labels: class names: card labels (their ``concept``) or names/synonyms/ids of ontology concepts.
        card: domain card (templates; its ontology when ``graph`` is not given).
        graph: the concept graph (default: :func:`medvlp.ontology.card_graph` of the card).
        include_parents: also use the is-a ancestors' defining concepts.
        templates: prompt templates for the concepts (default: the card's).

    Raises:
        ConfigError: a label that is no concept of the graph, or one without defining concepts (named,
            with what to do).
    """

    def __init__(self, model: MedVLP, labels: Sequence[str], *, card: DomainCard | str | None = None,
                 graph: Any = None, include_parents: bool = False, templates: Sequence[str] | None = None) -> None:
        from medvlp.eval.embedding import DEFAULT_TEMPLATES, check_labels, class_embeddings, default_graph
        from medvlp.ontology.prompts import expand_prompts, resolve_label

        self.model = model
        self.labels = check_labels(labels)
        self.card = load_card(card) if isinstance(card, str) else card
        self.graph = graph if graph is not None else default_graph(self.card)
        if self.graph is None:
            raise ConfigError("concept mode needs an ontology: the domain card names none; pass a graph or use "
                              "--mode prompts")
        self.multilabel = False
        self.unknown_labels: list[str] = []
        templates = list(templates or (self.card.prompts.templates if self.card else DEFAULT_TEMPLATES))
        self.definitions: dict[str, dict[str, list[str]]] = {}
        missing, undefined = [], []
        for label in self.labels:
            lab = self.card.find_label(label) if self.card else None
            concept = self.graph.get(lab.concept) if lab is not None and lab.concept else None
            concept = concept or resolve_label(label, self.graph)
            if concept is None:
                missing.append(label)
                continue
            present, absent = defining_concepts(self.graph, concept.id, include_parents=include_parents)
            if not present and not absent:
                undefined.append(f"'{label}' ({concept.id})")
            self.definitions[label] = {"concept": [concept.id], "present": present, "absent": absent}
        if missing:
            raise ConfigError(f"concept mode: labels {missing} are no concept of the ontology "
                              f"'{self.graph.meta.get('name', '?')}'; use their ontology names or --mode prompts")
        if undefined:
            raise ConfigError(f"concept mode: class {', '.join(undefined)} has no defining concepts (has_feature / "
                              "has_morphology / lacks_* relations) in the ontology; add them, pass "
                              "--include-parents if a parent has them, or use --mode prompts")
        self.concepts = list(dict.fromkeys(c for d in self.definitions.values() for c in d["present"] + d["absent"]))
        self.prompts = {c: expand_prompts(self.graph[c], self.graph, templates, max_synonyms=3) for c in self.concepts}
        self.weights = class_embeddings(model, [self.prompts[c] for c in self.concepts])  # (K, D)
        idx = {c: k for k, c in enumerate(self.concepts)}
        n, k = len(self.labels), len(self.concepts)
        self._plus, self._minus = np.zeros((n, k)), np.zeros((n, k))
        for j, name in enumerate(self.labels):
            d = self.definitions[name]
            for c in d["present"]:
                self._plus[j, idx[c]] = 1.0 / len(d["present"])
            for c in d["absent"]:
                self._minus[j, idx[c]] = 1.0 / len(d["absent"])

    def all_prompts(self) -> list[str]:
        return list(dict.fromkeys(p for ps in self.prompts.values() for p in ps))

    @property
    def logit_scale(self) -> float:
        return float(self.model.clip.logit_scale.detach().exp())

    def concept_scores(self, image_features: torch.Tensor | None,
                       patch_embeddings: torch.Tensor | None = None) -> np.ndarray:
        """(N, K) image-concept scores: best patch of the concept head when given, else global cosine."""
        w = self.weights.float()
        if patch_embeddings is not None:
            sim = patch_embeddings.float().cpu() @ w.T  # (N, P, K)
            return sim.max(dim=1).values.numpy().astype(np.float64)
        assert image_features is not None, "concept scores need image features or patch embeddings"
        return (image_features.float().cpu() @ w.T).numpy().astype(np.float64)

    @torch.no_grad()
    def head_concept_scores(self, ds: Any, batch_size: int = 64) -> np.ndarray | None:
        """(N, K) best-patch concept scores of a dataset through the model's concept head; None without a head."""
        head = getattr(self.model, "concept_head", None)
        if head is None:
            return None
        from medvlp.data.dataset import Normalizer, collate

        dev = next(self.model.parameters()).device
        norm = Normalizer(ds.opts.mean, ds.opts.std).to(dev)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
        out = []
        for b in loader:
            feats, tokens = self.model.encode_image(norm(b["image"].to(dev)), return_tokens=True)
            out.append(self.concept_scores(feats, head(tokens).cpu()))
        return np.concatenate(out)

    def class_scores(self, image_features: torch.Tensor | None, patch_embeddings: torch.Tensor | None = None, *,
                     concept_scores: np.ndarray | None = None) -> np.ndarray:
        """(N, C): mean centred score of each class's presence concepts minus that of its absence concepts."""
        s = concept_scores if concept_scores is not None else self.concept_scores(image_features, patch_embeddings)
        s = s - s.mean(axis=1, keepdims=True)
        return s @ self._plus.T - s @ self._minus.T

    def predict_proba(self, image_features: torch.Tensor | None, patch_embeddings: torch.Tensor | None = None, *,
                      concept_scores: np.ndarray | None = None) -> np.ndarray:
        z = self.logit_scale * self.class_scores(image_features, patch_embeddings, concept_scores=concept_scores)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
