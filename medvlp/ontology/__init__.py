"""Ontologies: concept graphs, loaders (project JSON, OBO/OWL, UMLS RRF), matcher, prompts, encoder."""

from medvlp.ontology.cards import card_graph
from medvlp.ontology.graph import Concept, ConceptGraph, LoadIssue, xref_key
from medvlp.ontology.loaders import (
    bundled_names,
    load_json,
    load_obo,
    load_ontology,
    load_owl,
    load_umls_rrf,
)
from medvlp.ontology.matcher import (
    ConceptMatcher,
    Mention,
    mentions_to_concepts,
    normalize_token,
    tokenize,
)
from medvlp.ontology.prompts import expand_prompts, synthesize_caption

# The encoder needs torch/transformers: import it lazily so that graph and matcher stay light.
_LAZY = {"ConceptEncoder", "TrainResult", "concept_texts", "contrastive_loss", "evaluate_retrieval",
         "holdout_synonyms", "train_concept_encoder"}


def __getattr__(name: str):
    if name in _LAZY:
        from medvlp.ontology import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'medvlp.ontology' has no attribute {name!r}")


__all__ = [
    "Concept",
    "ConceptEncoder",
    "ConceptGraph",
    "ConceptMatcher",
    "LoadIssue",
    "Mention",
    "TrainResult",
    "bundled_names",
    "card_graph",
    "concept_texts",
    "contrastive_loss",
    "evaluate_retrieval",
    "expand_prompts",
    "holdout_synonyms",
    "load_json",
    "load_obo",
    "load_ontology",
    "load_owl",
    "load_umls_rrf",
    "mentions_to_concepts",
    "normalize_token",
    "synthesize_caption",
    "tokenize",
    "train_concept_encoder",
    "xref_key",
]
