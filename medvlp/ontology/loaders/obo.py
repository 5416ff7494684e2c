"""OBO and OWL (RDF/XML) ontologies (HPO, Disease Ontology, MONDO, ...)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from medvlp.errors import OntologyError
from medvlp.ontology.graph import Concept, ConceptGraph, LoadIssue, dedupe
from medvlp.ontology.loaders.common import _iter_lines, _require_file

_OBO_UNESCAPE = re.compile(r"\\(.)")

_OBO_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')

def _obo_quoted(value: str) -> tuple[str, str] | None:
    """The first quoted string of an OBO value (unescaped) and what follows it, or None."""
    m = _OBO_QUOTED.match(value)
    if m is None:
        return None
    return _OBO_UNESCAPE.sub(r"\1", m.group(1)), value[m.end():]


def _obo_ref(value: str) -> str:
    """The id at the start of a value such as ``HP:0012638 ! Abnormal nervous system physiology``."""
    return value.split("!", 1)[0].split("{", 1)[0].strip().split(" ", 1)[0]


def load_obo(
    path: str | Path, *, synonym_scopes: Iterable[str] | None = None, include_obsolete: bool = False
) -> ConceptGraph:
    """Load an OBO 1.2/1.4 file (HPO, Disease Ontology, MONDO ...) with a fast stanza parser.

    ``[Term]`` stanzas become concepts: ``name``, ``synonym`` (all scopes unless ``synonym_scopes``
    restricts them, e.g. ``("EXACT",)``), ``def``, ``namespace`` (as semantic type), ``is_a``,
    ``relationship`` (typed relations), ``xref``; ``alt_id`` and the ``replaced_by`` of obsolete terms
    become aliases that still resolve.

    Args:
        path: the ``.obo`` file.
        synonym_scopes: keep only synonyms of these scopes (EXACT, NARROW, BROAD, RELATED).
        include_obsolete: keep terms marked ``is_obsolete: true`` (counted in ``filtered`` otherwise).

    Returns:
        The graph; malformed lines, stanzas without id, duplicate ids, dangling parents and cycles
        are in ``load_issues``.
    """
    p = _require_file(path)
    src = str(p)
    issues: list[LoadIssue] = []
    scopes = {s.upper() for s in synonym_scopes} if synonym_scopes is not None else None
    concepts: list[Concept] = []
    origins: dict[str, tuple[str, int | None]] = {}
    aliases: dict[str, str] = {}
    filtered: Counter[str] = Counter()
    meta: dict[str, str] = {"name": p.stem}
    default_ns = ""

    def issue(line: int, reason: str, kind: str = "malformed line") -> None:
        issues.append(LoadIssue(src, line, reason, kind))

    stanza_kind: str | None = None  # None = header
    start = 0
    tags: list[tuple[int, str, str]] = []

    def flush() -> None:
        if stanza_kind != "Term":
            if stanza_kind is not None:
                filtered[f"[{stanza_kind}] stanzas"] += 1
            return
        cid = name = definition = namespace = ""
        synonyms: list[str] = []
        parents: list[str] = []
        xrefs: list[str] = []
        relations: list[tuple[str, str]] = []
        alt_ids: list[str] = []
        replaced_by = ""
        obsolete = False
        for lineno, tag, value in tags:
            if tag == "id":
                cid = value.split("!", 1)[0].strip()
            elif tag == "name":
                name = value
            elif tag == "synonym":
                q = _obo_quoted(value)
                if q is None:
                    issue(lineno, f"synonym without a closed quoted string: {value[:60]!r}; ignored")
                elif scopes is None or (q[1].split() or ["RELATED"])[0].upper() in scopes:
                    synonyms.append(q[0])
            elif tag == "def":
                q = _obo_quoted(value)
                if q is None:
                    issue(lineno, f"def without a closed quoted string: {value[:60]!r}; ignored")
                else:
                    definition = q[0]
            elif tag == "is_a":
                ref = _obo_ref(value)
                if ref:
                    parents.append(ref)
                else:
                    issue(lineno, "is_a without a target id; ignored")
            elif tag == "relationship":
                parts = value.split("!", 1)[0].split()
                if len(parts) >= 2:
                    relations.append((parts[0], parts[1]))
                else:
                    issue(lineno, f"relationship needs 'TYPE TARGET', got {value[:60]!r}; ignored")
            elif tag == "xref":
                ref = _obo_ref(value)
                if ref:
                    xrefs.append(ref)
            elif tag == "alt_id":
                alt_ids.append(_obo_ref(value))
            elif tag == "namespace":
                namespace = value.strip()
            elif tag == "is_obsolete":
                obsolete = value.strip().lower() == "true"
            elif tag == "replaced_by":
                replaced_by = _obo_ref(value)
        if not cid:
            issue(start, "[Term] stanza without an id; stanza skipped", "missing id")
            return
        if obsolete and not include_obsolete:
            filtered["obsolete terms"] += 1
            if replaced_by:
                aliases[cid] = replaced_by
            return
        if not name:
            issue(start, f"term {cid} has no name; its id is used as name", "missing name")
            name = cid
        for alt in alt_ids:
            if alt:
                aliases.setdefault(alt, cid)
        concepts.append(Concept(cid, name, dedupe(synonyms, exclude=name), definition,
                                namespace or default_ns, parents, dedupe(xrefs), relations))
        origins.setdefault(cid, (src, start))

    for lineno, line in _iter_lines(p, issues):
        s = line.strip()
        if not s or s.startswith("!"):
            continue
        if s[0] == "[":
            flush()
            if not s.endswith("]"):
                issue(lineno, f"malformed stanza header {s[:60]!r}; read as [{s.strip('[]')}]")
            stanza_kind, start, tags = s.strip("[]").strip(), lineno, []
            continue
        tag, sep, value = s.partition(":")
        tag = tag.strip()
        if not sep or not tag or " " in tag:
            issue(lineno, f"not a 'tag: value' line: {s[:60]!r}; ignored")
            continue
        value = value.strip()
        if stanza_kind is None:
            if tag in ("data-version", "format-version", "ontology"):
                meta["version" if tag == "data-version" else tag] = value
            elif tag == "default-namespace":
                default_ns = value
            continue
        tags.append((lineno, tag, value))
    flush()
    meta.setdefault("title", meta.get("ontology", p.stem))
    return ConceptGraph(concepts, meta=meta, aliases=aliases, load_issues=issues,
                        filtered=dict(filtered), origins=origins, source=src)


# ---------------------------------------------------------------------------- OWL (RDF/XML)
_NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "owl": "http://www.w3.org/2002/07/owl#",
    "oboInOwl": "http://www.geneontology.org/formats/oboInOwl#",
    "obo": "http://purl.obolibrary.org/obo/",
    "skos": "http://www.w3.org/2004/02/skos/core#",
}
_OWL_PROPERTY_NAMES = {"BFO_0000050": "part_of", "RO_0002202": "develops_from", "RO_0004026": "disease_has_location",
                       "RO_0000052": "inheres_in", "BFO_0000051": "has_part"}


def _q(prefix: str, local: str) -> str:
    return f"{{{_NS[prefix]}}}{local}"


def _iri_to_id(iri: str) -> str:
    """``http://purl.obolibrary.org/obo/HP_0001250`` -> ``HP:0001250``; other IRIs keep their last segment."""
    local = re.split(r"[/#]", iri.rstrip("/#"))[-1]
    if iri.startswith(_NS["obo"]) and "_" in local:
        prefix, _, rest = local.partition("_")
        return f"{prefix}:{rest}"
    return local


def load_owl(path: str | Path, *, include_obsolete: bool = False) -> ConceptGraph:
    """Load an OWL ontology in RDF/XML (the usual ``.owl`` release of OBO Foundry ontologies).

    ``owl:Class`` elements become concepts: ``rdfs:label`` / ``skos:prefLabel`` (name),
    ``oboInOwl:has{Exact,Related,Broad,Narrow}Synonym`` / ``skos:altLabel``, ``IAO:0000115`` /
    ``skos:definition``, ``oboInOwl:hasDbXref``, ``rdfs:subClassOf`` (is-a, or a typed relation when
    it holds an ``owl:Restriction``). Other OWL syntaxes (Turtle, OWL/XML, functional) are not read:
    convert them to OBO, e.g. with ``robot convert``.

    Raises:
        OntologyError: missing file or not RDF/XML. An XML error part-way through is a load issue,
            and what came before it is kept.
    """
    import xml.etree.ElementTree as ET

    p = _require_file(path)
    src = str(p)
    issues: list[LoadIssue] = []
    concepts: list[Concept] = []
    filtered: Counter[str] = Counter()
    meta = {"name": p.stem, "title": p.stem}
    resource = _q("rdf", "resource")
    about = _q("rdf", "about")
    syn_tags = {_q("oboInOwl", f"has{s}Synonym") for s in ("Exact", "Related", "Broad", "Narrow")}
    syn_tags.add(_q("skos", "altLabel"))
    label_tags = {_q("rdfs", "label"), _q("skos", "prefLabel")}
    def_tags = {_q("obo", "IAO_0000115"), _q("skos", "definition")}
    root_tag = None
    try:
        for event, elem in ET.iterparse(p, events=("start", "end")):
            if event == "start":
                if root_tag is None:
                    root_tag = elem.tag
                    if root_tag != _q("rdf", "RDF"):
                        raise OntologyError(f"{p}: not an OWL file in RDF/XML (root element {elem.tag}); "
                                            "convert it to OBO or RDF/XML, e.g. with `robot convert`")
                continue
            if elem.tag != _q("owl", "Class") or about not in elem.attrib:
                continue
            iri = elem.attrib[about]
            cid = _iri_to_id(iri)
            name = definition = ""
            synonyms: list[str] = []
            parents: list[str] = []
            xrefs: list[str] = []
            relations: list[tuple[str, str]] = []
            deprecated = False
            for child in elem:
                tag, text = child.tag, (child.text or "").strip()
                if tag == _q("oboInOwl", "id") and text:
                    cid = text
                elif tag in label_tags and text and not name:
                    name = text
                elif tag in syn_tags and text:
                    synonyms.append(text)
                elif tag in def_tags and text:
                    definition = text
                elif tag == _q("oboInOwl", "hasDbXref") and text:
                    xrefs.append(text)
                elif tag == _q("owl", "deprecated"):
                    deprecated = text.lower() == "true"
                elif tag == _q("rdfs", "subClassOf"):
                    if resource in child.attrib:
                        parents.append(_iri_to_id(child.attrib[resource]))
                    restriction = child.find(_q("owl", "Restriction"))
                    if restriction is not None:
                        prop = restriction.find(_q("owl", "onProperty"))
                        target = restriction.find(_q("owl", "someValuesFrom"))
                        if prop is not None and target is not None and resource in target.attrib:
                            pid = _iri_to_id(prop.attrib.get(resource, "")).replace(":", "_")
                            relations.append((_OWL_PROPERTY_NAMES.get(pid, pid),
                                              _iri_to_id(target.attrib[resource])))
            elem.clear()
            if deprecated and not include_obsolete:
                filtered["obsolete terms"] += 1
                continue
            if not name:
                issues.append(LoadIssue(src, None, f"class {cid} has no label; its id is used as name",
                                        "missing name"))
                name = cid
            concepts.append(Concept(cid, name, dedupe(synonyms, exclude=name), definition, "",
                                    parents, dedupe(xrefs), relations))
    except ET.ParseError as exc:
        line = exc.position[0] if exc.position else None
        issues.append(LoadIssue(src, line, f"XML error: {exc}; classes after this point were not loaded",
                                "malformed line"))
        if root_tag is None:
            raise OntologyError(f"{p}: not readable as OWL RDF/XML ({exc})") from exc
    return ConceptGraph(concepts, meta=meta, load_issues=issues, filtered=dict(filtered), source=src)


# ---------------------------------------------------------------------------- UMLS RRF
# Column counts of the RRF tables (each line also ends with a '|', so split gives one more field).
# source vocabulary -> the xref prefix used by the bundled graphs (codes already 'HP:...' are kept)


