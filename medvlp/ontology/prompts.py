"""Prompt expansion for zero-shot labels and KEEP-style caption synthesis from a concept graph.

Example:
    >>> from medvlp.ontology.graph import Concept, ConceptGraph
    >>> g = ConceptGraph([Concept("d:lesion", "skin lesion"), Concept("d:benign", "benign", parents=["d:lesion"]),
    ...                   Concept("d:nevus", "melanocytic nevus", ["mole"], parents=["d:benign"])])
    >>> expand_prompts("d:nevus", g, templates=["a photo of {}."])
    ['a photo of melanocytic nevus.', 'a photo of mole.']
    >>> synthesize_caption("d:nevus", g, random.Random(0), template="{}", mode="chain")
    'skin lesion, benign, melanocytic nevus'
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

from medvlp.errors import ConfigError
from medvlp.ontology.graph import Concept, ConceptGraph, _norm_query

__all__ = ["DEFAULT_CAPTION_TEMPLATES", "expand_prompts", "resolve_label", "synthesize_caption"]

DEFAULT_CAPTION_TEMPLATES = (
    "{}.",
    "an image of {}.",
    "findings consistent with {}.",
    "this image shows {}.",
    "a case of {}.",
)


def _check_templates(templates: Sequence[str]) -> None:
    for t in templates:
        if t.count("{}") != 1:
            raise ConfigError(f"prompt template {t!r} must contain exactly one '{{}}' for the label")


def resolve_label(label_or_concept: str | Concept, graph: ConceptGraph | None = None) -> Concept | None:
    """The concept meant by a label: a Concept, a concept id, or a name/synonym of one; else None."""
    if isinstance(label_or_concept, Concept):
        return label_or_concept
    if graph is None:
        return None
    found = graph.get(label_or_concept)
    if found is not None:
        return found
    q = _norm_query(label_or_concept)
    for c in graph.search(label_or_concept, limit=5):
        if any(_norm_query(t) == q for t in c.texts):
            return c
    return None


def _fill(template: str, term: str) -> str:
    # str.replace, not format(): terms may contain braces
    return template.replace("{}", term, 1)


def expand_prompts(
    label_or_concept: str | Concept,
    graph: ConceptGraph | None = None,
    templates: Sequence[str] = ("{}",),
    include_parents: bool = False,
    include_definition: bool = False,
    max_synonyms: int | None = None,
) -> list[str]:
    """Prompts for one label: (name + synonyms [+ parent / definition forms]) x templates.

    Args:
        label_or_concept: a :class:`Concept`, a concept id of ``graph``, or a label text (looked up as
            a name or synonym in ``graph``; used as it is when not found).
        graph: the ontology to resolve ids and parents.
        templates: each with exactly one ``{}``.
        include_parents: add ``"<name>, a type of <parent name>"`` for each is-a parent.
        include_definition: add ``"<name>, <definition>"``.
        max_synonyms: use at most this many synonyms (in ontology order).

    Returns:
        Prompts, terms in the outer loop and templates in the inner, deduplicated, order stable.

    Raises:
        ConfigError: a template without exactly one ``{}``.
    """
    _check_templates(templates)
    concept = resolve_label(label_or_concept, graph)
    if concept is None:
        terms = [str(label_or_concept)]
    else:
        synonyms = concept.synonyms if max_synonyms is None else concept.synonyms[:max_synonyms]
        terms = [concept.name, *synonyms]
        if include_parents and graph is not None:
            for pid in concept.parents:
                parent = graph.get(pid)
                if parent is not None:
                    terms.append(f"{concept.name}, a type of {parent.name}")
        if include_definition and concept.definition:
            terms.append(f"{concept.name}, {concept.definition.strip().rstrip('.')}")
    prompts = (_fill(t, term) for term in terms for t in templates)
    return list(dict.fromkeys(prompts))


def _choice(rng: Any, items: Sequence[Any]) -> Any:
    """One element picked by a ``random.Random`` or a ``numpy.random.Generator``."""
    if isinstance(rng, random.Random):
        return items[rng.randrange(len(items))]
    return items[int(rng.integers(len(items)))]


def synthesize_caption(
    concept_id: str,
    graph: ConceptGraph,
    rng: Any = None,
    template: str | None = None,
    mode: Literal["synonym", "chain", "random"] = "synonym",
) -> str:
    """A KEEP-style synthetic caption for a concept.

    Args:
        concept_id: the concept (aliases resolve).
        graph: its ontology.
        rng: ``random.Random`` or ``numpy.random.Generator`` (an int seeds a new ``random.Random``).
        template: with one ``{}``; by default one of :data:`DEFAULT_CAPTION_TEMPLATES` at random.
        mode: ``"synonym"`` fills in a random name or synonym; ``"chain"`` the ancestor chain
            root-to-leaf joined by commas (``"skin lesion, benign, melanocytic nevus"``);
            ``"random"`` picks one of the two with equal chance.

    Raises:
        OntologyError: unknown concept id. ConfigError: bad template or mode.
    """
    if rng is None or isinstance(rng, int):
        rng = random.Random(rng)
    concept = graph[concept_id]
    if mode == "random":
        mode = _choice(rng, ("synonym", "chain"))
    if template is None:
        template = _choice(rng, DEFAULT_CAPTION_TEMPLATES)
    _check_templates([template])
    if mode == "synonym":
        term = _choice(rng, concept.texts)
    elif mode == "chain":
        term = ", ".join(graph.concepts[c].name for c in graph.path_to_root(concept.id))
    else:
        raise ConfigError(f"caption mode {mode!r} is not one of synonym, chain, random")
    return _fill(template, term)
