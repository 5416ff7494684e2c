"""fill_concepts (moved from medvlp.ontology.matcher into medvlp.data.concepts)."""

import json

import pandas as pd
import pytest

from medvlp.data.concepts import fill_concepts
from medvlp.data.manifest import parse_list_cell
from medvlp.ontology import Concept, ConceptGraph, ConceptMatcher


@pytest.fixture
def small_graph():
    return ConceptGraph([
        Concept("t:effusion", "pleural effusion", ["effusion"]),
        Concept("t:lobar", "lobar pneumonia"),
        Concept("t:consolidation", "consolidation"),
        Concept("t:ards", "acute respiratory distress syndrome", ["ARDS"]),
        Concept("t:pleura", "pleura"),
    ])


def test_fill_concepts(small_graph):
    df = pd.DataFrame({
        "image": ["a.png", "b.png", "c.png", "d.png"],
        "caption": ["No pleural effusion; lobar pneumonia.", '["Possible consolidation.", "no ARDS"]', "",
                    "nothing here"],
        "concepts": [None, None, None, '["t:pleura"]'],
    })
    out = fill_concepts(df, small_graph)
    assert df["concepts"].isna().sum() == 3  # input untouched
    rows = [parse_list_cell(v) for v in out["concepts"]]
    assert rows[0] == [{"id": "t:effusion", "span": [3, 19], "negated": True},
                       {"id": "t:lobar", "span": [21, 36], "negated": False}]
    assert rows[1] == [{"id": "t:consolidation", "span": [9, 22], "negated": False, "caption": 0},
                       {"id": "t:ards", "span": [3, 7], "negated": True, "caption": 1}]
    assert rows[2] == [] and rows[3] == ["t:pleura"]  # existing cells are kept
    again = fill_concepts(out.drop(columns=["concepts"]), ConceptMatcher(small_graph))
    assert json.loads(again["concepts"][0]) == rows[0] and json.loads(again["concepts"][3]) == []
    forced = fill_concepts(df, small_graph, overwrite=True)
    assert forced["concepts"][3] == "[]"
