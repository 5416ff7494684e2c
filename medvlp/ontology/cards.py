"""The ontology of a domain card, loaded one way for every caller.

Example:
    >>> from medvlp.domains import load_card
    >>> from medvlp.ontology import card_graph
    >>> g = card_graph(load_card("cxr"))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from medvlp.errors import MedvlpError, OntologyError
from medvlp.ontology.graph import Concept, ConceptGraph

if TYPE_CHECKING:
    from medvlp.domains import DomainCard

_CACHE: dict[tuple[str, str, bool], ConceptGraph | None] = {}


def card_graph(card: DomainCard | None, *, strict: bool = False, with_labels: bool = True,
               ontology: str | None = None) -> ConceptGraph | None:
    """The card's ontology (or ``ontology`` when given), plus the concepts its label sets name.

    Args:
        card: a domain card; None gives None (or an error when ``strict``).
        strict: raise when the ontology cannot be loaded; otherwise warn once and go on with the
            label-set concepts alone (None when there are none).
        with_labels: add the label sets' concepts that the ontology lacks (id, name, synonyms).
        ontology: a bundled name or path that overrides the card's ``ontology``.

    Raises:
        OntologyError: ``strict`` and the ontology is missing, unnamed or cannot be loaded.
    """
    from medvlp.ontology.loaders import load_ontology

    name = ontology if ontology is not None else (getattr(card, "ontology", "") or "")
    key = (getattr(card, "name", ""), str(name), with_labels)
    if key in _CACHE and not strict:
        return _CACHE[key]
    base: ConceptGraph | None = None
    if name:
        try:
            base = load_ontology(name)
        except (MedvlpError, OSError) as e:
            if strict:
                raise OntologyError(f"cannot load ontology {name!r} of domain "
                                    f"'{getattr(card, 'name', '?')}': {e}") from e
            warnings.warn(f"ontology {name!r} of domain '{getattr(card, 'name', '?')}' could not be loaded "
                          f"({e}); using the concepts of the card's label sets only", stacklevel=2)
    elif strict:
        raise OntologyError(f"domain '{getattr(card, 'name', '?')}' names no ontology; set 'ontology' in its "
                            "card or pass one")
    graph = base
    if with_labels and card is not None:
        concepts = dict(base.concepts) if base is not None else {}
        extra = []
        for lset in card.label_sets.values():
            for lab in lset.labels:
                if lab.concept and lab.concept not in concepts:
                    c = Concept(lab.concept, lab.name, [s for s in lab.synonyms if s != lab.name])
                    concepts[lab.concept] = c
                    extra.append(c)
        if extra or base is None:
            graph = ConceptGraph(list(concepts.values())) if concepts else None
    _CACHE[key] = graph
    return graph
