"""Models: a factory over open_clip with medvlp's configs, a concept head, and loading of saved models."""

from medvlp.models.factory import (
    ConceptHead,
    MedVLP,
    ModelSpec,
    Tokenizer,
    describe_models,
    get_spec,
    list_models,
    load_saved,
)
from medvlp.models.loading import create_model
from medvlp.models.zoo import load_model

__all__ = [
    "ConceptHead", "MedVLP", "ModelSpec", "Tokenizer", "create_model", "describe_models", "get_spec",
    "list_models", "load_model", "load_saved",
]
