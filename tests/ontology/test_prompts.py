"""Prompt expansion and KEEP-style caption synthesis."""

from __future__ import annotations

import random

import pytest

from medvlp.errors import ConfigError, OntologyError
from medvlp.ontology import expand_prompts, synthesize_caption


def test_expand_prompts(small_graph):
    g = small_graph
    assert expand_prompts("t:pneumonia", g, templates=["a chest x-ray showing {}.", "{}"]) == [
        "a chest x-ray showing pneumonia.", "pneumonia",
        "a chest x-ray showing lung infection.", "lung infection",
        "a chest x-ray showing pneumonic infiltrate.", "pneumonic infiltrate",
    ]
    # a label text is resolved through names and synonyms
    assert expand_prompts("Lung Infection", g) == ["pneumonia", "lung infection", "pneumonic infiltrate"]
    full = expand_prompts("t:lobar", g, templates=["{}"], include_parents=True, include_definition=True)
    assert full == ["lobar pneumonia", "lobar consolidation pneumonia", "lobar pneumonia, a type of pneumonia",
                    "lobar pneumonia, Pneumonia of one lobe"]
    assert expand_prompts("t:pneumonia", g, max_synonyms=1) == ["pneumonia", "lung infection"]
    assert expand_prompts("unknown finding", g, templates=["x {}"]) == ["x unknown finding"]
    with pytest.raises(ConfigError, match="exactly one"):
        expand_prompts("t:lobar", g, templates=["no placeholder"])


def test_synthesize_caption(small_graph):
    g = small_graph
    assert synthesize_caption("t:lobar", g, 0, template="{}", mode="chain") == (
        "finding, lung finding, pneumonia, lobar pneumonia")
    rng = random.Random(1)
    caps = {synthesize_caption("t:pneumonia", g, rng, template="an image of {}.") for _ in range(50)}
    assert caps == {"an image of pneumonia.", "an image of lung infection.", "an image of pneumonic infiltrate."}
    mixed = {synthesize_caption("t:lobar", g, rng, template="{}", mode="random") for _ in range(40)}
    assert "finding, lung finding, pneumonia, lobar pneumonia" in mixed and "lobar pneumonia" in mixed
    # seeded: same seed, same caption (default templates drawn too)
    assert synthesize_caption("t:effusion", g, 7) == synthesize_caption("t:effusion", g, 7)
    with pytest.raises(OntologyError):
        synthesize_caption("t:unknown", g, 0)
    with pytest.raises(ConfigError):
        synthesize_caption("t:lobar", g, 0, template="{}", mode="bogus")
