"""ConceptGraph: closure queries, subgraphs, merge by xref, JSON round-trip, and repair of bad input."""

from __future__ import annotations

import json
import time

import pytest

from medvlp.errors import OntologyError
from medvlp.ontology import Concept, ConceptGraph, load_json, load_ontology, xref_key


def test_ancestors_descendants_children(small_graph):
    g = small_graph
    assert g.ancestors("t:lobar") == {"t:pneumonia", "t:lung", "t:finding"}
    assert g.descendants("t:lung") == {"t:pneumonia", "t:lobar", "t:consolidation", "t:ards"}
    assert g.descendants("t:lobar") == frozenset()
    assert sorted(g.children("t:lung")) == ["t:ards", "t:consolidation", "t:pneumonia"]
    assert g.parents("t:lobar") == ["t:pneumonia"]
    assert g.roots() == ["t:finding", "t:pleura"]
    assert g.path_to_root("t:lobar") == ["t:finding", "t:lung", "t:pneumonia", "t:lobar"]
    assert g.is_related("t:lobar", "t:lung") and g.is_related("t:lung", "t:lobar")
    assert not g.is_related("t:lobar", "t:consolidation")
    # cached: the second call returns the very same frozenset object
    assert g.ancestors("t:lobar") is g.ancestors("t:lobar")
    with pytest.raises(OntologyError, match="unknown concept id 't:nope'"):
        g.ancestors("t:nope")


def test_closure_is_fast_on_hpo(hpo_graph):
    g = hpo_graph
    t0 = time.perf_counter()
    sizes = [len(g.ancestors(cid)) for cid in g.concepts]
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = [len(g.ancestors(cid)) for cid in g.concepts]
    cached = time.perf_counter() - t0
    assert sizes == again
    assert first < 3.0 and cached < 0.5  # all ~19k closures; cached ones are dictionary lookups
    # every term but the root "All" descends from HP:0000001
    assert len(g.descendants("HP:0000001")) == len(g) - 1
    assert "HP:0000118" in g.ancestors("HP:0001250")  # Seizure is a Phenotypic abnormality


def test_subgraph_by_root_type_and_domain(small_graph):
    g = small_graph
    sub = g.subgraph(["t:pneumonia"])
    assert set(sub.concepts) == {"t:pneumonia", "t:lobar"}
    assert sub.roots() == ["t:pneumonia"] and sub["t:pneumonia"].parents == []
    # removed intermediate concepts are bridged: lobar pneumonia hangs under "finding" directly
    typed = g.subgraph(semantic_types=["Disease or Syndrome", "Finding"])
    assert "t:pleura" not in typed and typed["t:effusion"].relations == []
    assert typed.parents("t:lobar") == ["t:pneumonia"]
    only_disease = g.subgraph(semantic_types=["disease or syndrome"])
    assert set(only_disease.concepts) == {"t:pneumonia", "t:lobar", "t:ards"}
    assert only_disease.parents("t:lobar") == ["t:pneumonia"] and only_disease.parents("t:ards") == []
    assert len(g) == 8  # the source graph is untouched
    mixed = ConceptGraph([Concept("cxr:a", "a"), Concept("derm:b", "b"), Concept("cxr:c", "c", parents=["cxr:a"])])
    assert set(mixed.subgraph(domain="cxr").concepts) == {"cxr:a", "cxr:c"}
    assert set(mixed.subgraph(domain="dermatology").concepts) == {"derm:b"}


def test_merge_by_xref(small_graph):
    other = ConceptGraph([
        Concept("HP:0002202", "Pleural effusion", ["Fluid around lungs"], xrefs=["umls:c0032227"],
                parents=["HP:0002103"]),
        Concept("HP:0002103", "Abnormal pleura morphology"),
        Concept("HP:0002090", "Pneumonia", ["Lung inflammation"], xrefs=["UMLS_CUI:C0032285"]),
    ])
    merged = small_graph.merge(other)
    assert len(merged) == 8 + 1  # two unified by xref, one new
    eff = merged["HP:0002202"]  # the second graph's id still resolves
    assert eff.id == "t:effusion" and eff.name == "pleural effusion"
    assert "Fluid around lungs" in eff.synonyms and "Pleural effusion" not in eff.synonyms  # same as name
    assert eff.parents == ["t:finding", "HP:0002103"]
    assert merged["HP:0002090"].id == "t:pneumonia" and "Lung inflammation" in merged["t:pneumonia"].synonyms
    assert merged.ancestors("HP:0002202") == {"t:finding", "HP:0002103"}
    assert xref_key("umls_cui:c0032227") == "UMLS:C0032227" == xref_key("UMLS:C0032227")


def test_json_round_trip(small_graph, tmp_path):
    path = tmp_path / "t.json"
    small_graph.to_json(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["name"] == "t" and len(doc["concepts"]) == 8
    assert doc["concepts"][5]["relations"] == [{"type": "finding_site", "target": "t:pleura"}]
    back = load_json(path)
    assert back.to_dict() == small_graph.to_dict()
    assert back.load_issues == [] and back.stats()["synonyms"] == small_graph.stats()["synonyms"] == 10


def test_bad_json_entries_are_reported_with_lines(tmp_path):
    concepts = [
        {"id": "x:a", "name": "a", "parents": []},
        {"id": "x:b", "name": "b", "parents": ["x:a", "x:missing"]},
        {"id": "x:a", "name": "a again", "parents": []},
        {"id": "x:c", "name": "c", "parents": ["x:d"]},
        {"id": "x:d", "name": "d", "parents": ["x:c"]},
        {"name": "no id"},
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "bad", "concepts": concepts}, indent=1), encoding="utf-8")
    g = load_json(path)
    assert set(g.concepts) == {"x:a", "x:b", "x:c", "x:d"}
    assert g["x:a"].name == "a"  # first definition kept
    kinds = sorted(i.kind for i in g.load_issues)
    assert kinds == ["dangling parent", "duplicate id", "is-a cycle", "malformed entry"]
    dangling = next(i for i in g.load_issues if i.kind == "dangling parent")
    lines = path.read_text().splitlines()
    assert dangling.file == str(path) and '"x:b"' in lines[dangling.line - 1]
    duplicate = next(i for i in g.load_issues if i.kind == "duplicate id")
    assert '"x:a"' in lines[duplicate.line - 1] and '"a again"' in lines[duplicate.line]
    assert g["x:b"].parents == ["x:a"]
    # the cycle c <-> d is broken by removing one edge, so closures terminate
    assert len(g.ancestors("x:c")) + len(g.ancestors("x:d")) == 1
    assert g.stats()["skipped"] == 4


def test_non_utf8_and_not_json(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"concepts": [\n{"id": "x:a", "name": "caf\xe9"}\n]}\n')
    g = load_json(path)
    assert len(g) == 1 and g["x:a"].name == "caf\ufffd"
    assert [(i.line, i.kind) for i in g.load_issues] == [(2, "invalid UTF-8")]
    (tmp_path / "broken.json").write_text('{"concepts": [', encoding="utf-8")
    with pytest.raises(OntologyError, match="broken.json: invalid JSON at line 1"):
        load_json(tmp_path / "broken.json")
    with pytest.raises(OntologyError, match="no ontology 'nonexistent_graph'"):
        load_ontology("nonexistent_graph")


def test_bundled_cxr_loads_clean():
    g = load_ontology("cxr")
    assert len(g) >= 150 and g.load_issues == []
    assert g["cxr:pleural_effusion"].name == "pleural effusion"
    assert g.search("pleural effusion")[0].id == "cxr:pleural_effusion"
    assert g.search("cxr:pneumothorax")[0].id == "cxr:pneumothorax"
