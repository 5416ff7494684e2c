"""Build a :class:`ConceptGraph` from the project's JSON, OBO, OWL (RDF/XML) or a UMLS release.

Every loader follows the same rule for bad input: a malformed line, an undecodable byte, a duplicate
id, a dangling parent or an is-a cycle becomes a :class:`LoadIssue` (file, line, reason) in
``graph.load_issues`` and the rest of the file is still loaded. Records left out on purpose by a
filter (obsolete terms, other languages, suppressed atoms, unselected vocabularies) are counted in
``graph.filtered``. Only a file that cannot be read at all (missing, not JSON) raises
:class:`~medvlp.errors.OntologyError`.

Example:
    >>> g = load_ontology("cxr")            # a bundled graph  # doctest: +SKIP
    >>> g = load_ontology("hp.obo")         # doctest: +SKIP
    >>> g = load_umls_rrf("2024AA/META", sabs=["SNOMEDCT_US"], semantic_types=["T047"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from medvlp.errors import OntologyError
from medvlp.ontology.graph import Concept, ConceptGraph, LoadIssue, _dedupe

__all__ = [
    "bundled_names",
    "load_json",
    "load_obo",
    "load_ontology",
    "load_owl",
    "load_umls_rrf",
]


# ---------------------------------------------------------------------------- text reading
def _iter_lines(path: Path, issues: list[LoadIssue]) -> Iterator[tuple[int, str]]:
    """(line number, text) of a file read in binary, so that one bad byte costs one line, not the file."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                issues.append(LoadIssue(str(path), lineno,
                                        f"invalid UTF-8 byte at column {exc.start + 1}; line decoded "
                                        "with U+FFFD replacement characters", "invalid UTF-8"))
                line = raw.decode("utf-8", errors="replace")
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield lineno, line.rstrip("\r\n")


def _read_text(path: Path, issues: list[LoadIssue]) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\n".join(line for _, line in _iter_lines(path, issues))
    return text.removeprefix("\ufeff")


def _require_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise OntologyError(f"ontology file {str(p)!r} not found; check the path")
    return p


# ---------------------------------------------------------------------------- project JSON
_JSON_ID = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def load_json(path: str | Path) -> ConceptGraph:
    """Load an ontology in the project's JSON layout (``ontologies/<name>.json``).

    Args:
        path: the JSON file.

    Returns:
        The graph; entries without an id or a name, or with fields of the wrong type, are reported
        in ``load_issues`` with the line of their ``"id"`` where it can be found.

    Raises:
        OntologyError: the file is missing, is not JSON, or has no ``concepts`` list.
    """
    p = _require_file(path)
    issues: list[LoadIssue] = []
    text = _read_text(p, issues)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OntologyError(f"{p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
                            "fix the file (an ontology JSON holds an object with a 'concepts' list)") from exc
    if isinstance(doc, list):
        doc = {"concepts": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("concepts"), list):
        raise OntologyError(f"{p}: expected an object with a 'concepts' list (see ontologies/*.json)")
    # line of each '"id": "..."' so that validation issues can name a line
    # (the k-th entry with a given id is at the k-th line holding that id, so duplicates get their own line)
    id_lines: dict[str, list[int]] = {}
    line, pos = 1, 0
    for m in _JSON_ID.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        id_lines.setdefault(m.group(1), []).append(line)
    seen: dict[str, int] = {}
    src = str(p)
    concepts: list[Concept] = []
    origins: dict[str, tuple[str, int | None]] = {}

    def line_of(cid: object) -> int | None:
        if not isinstance(cid, str):
            return None
        lines = id_lines.get(cid, [])
        k = seen.get(cid, 0)
        return lines[k] if k < len(lines) else (lines[0] if lines else None)

    def bad(i: int, cid: object, reason: str, kind: str = "malformed entry") -> None:
        issues.append(LoadIssue(src, line_of(cid), f"concepts[{i}] ({cid!r}): {reason}", kind))

    for i, entry in enumerate(doc["concepts"]):
        if not isinstance(entry, dict):
            bad(i, None, f"expected an object, got {type(entry).__name__}; entry skipped")
            continue
        cid, name = entry.get("id"), entry.get("name")
        if not isinstance(cid, str) or not cid.strip():
            bad(i, cid, "missing or empty 'id'; entry skipped")
            continue
        if cid in origins:
            first = origins[cid][1]
            bad(i, cid, f"duplicate id (first defined at line {first}); the first definition is kept",
                "duplicate id")
            seen[cid] = seen.get(cid, 0) + 1
            continue
        if not isinstance(name, str) or not name.strip():
            bad(i, cid, "missing or empty 'name'; entry skipped")
            seen[cid] = seen.get(cid, 0) + 1
            continue
        lists: dict[str, list[str]] = {}
        for key in ("synonyms", "parents", "xrefs"):
            value = entry.get(key) or []
            if not isinstance(value, list):
                bad(i, cid, f"'{key}' must be a list of strings; ignored")
                value = []
            good = [v for v in value if isinstance(v, str)]
            if len(good) != len(value):
                bad(i, cid, f"{len(value) - len(good)} non-string item(s) in '{key}' ignored")
            lists[key] = good
        relations: list[tuple[str, str]] = []
        for r in entry.get("relations") or []:
            if isinstance(r, dict) and isinstance(r.get("type"), str) and isinstance(r.get("target"), str):
                relations.append((r["type"], r["target"]))
            elif isinstance(r, list | tuple) and len(r) == 2 and all(isinstance(x, str) for x in r):
                relations.append((r[0], r[1]))
            else:
                bad(i, cid, f"relation {r!r} is not {{'type', 'target'}}; ignored")
        definition = entry.get("definition") or ""
        stype = entry.get("semantic_type") or ""
        concepts.append(Concept(
            id=cid.strip(), name=name.strip(),
            synonyms=_dedupe(lists["synonyms"], exclude=name),
            definition=definition if isinstance(definition, str) else str(definition),
            semantic_type=stype if isinstance(stype, str) else str(stype),
            parents=[x.strip() for x in lists["parents"]], xrefs=_dedupe(lists["xrefs"]),
            relations=relations,
        ))
        origins[cid] = (src, line_of(cid))
        seen[cid] = seen.get(cid, 0) + 1
    meta = {k: str(doc[k]) for k in ("name", "title", "version", "license") if k in doc}
    meta.setdefault("name", p.stem)
    aliases = doc.get("aliases") if isinstance(doc.get("aliases"), dict) else {}
    return ConceptGraph(concepts, meta=meta, aliases=aliases, load_issues=issues, origins=origins,
                        source=src)


# ---------------------------------------------------------------------------- OBO
_OBO_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_OBO_UNESCAPE = re.compile(r"\\(.)")


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
        concepts.append(Concept(cid, name, _dedupe(synonyms, exclude=name), definition,
                                namespace or default_ns, parents, _dedupe(xrefs), relations))
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
            concepts.append(Concept(cid, name, _dedupe(synonyms, exclude=name), definition, "",
                                    parents, _dedupe(xrefs), relations))
    except ET.ParseError as exc:
        line = exc.position[0] if exc.position else None
        issues.append(LoadIssue(src, line, f"XML error: {exc}; classes after this point were not loaded",
                                "malformed line"))
        if root_tag is None:
            raise OntologyError(f"{p}: not readable as OWL RDF/XML ({exc})") from exc
    return ConceptGraph(concepts, meta=meta, load_issues=issues, filtered=dict(filtered), source=src)


# ---------------------------------------------------------------------------- UMLS RRF
# Column counts of the RRF tables (each line also ends with a '|', so split gives one more field).
_RRF_COLUMNS = {"MRCONSO": 18, "MRSTY": 6, "MRREL": 16, "MRDEF": 8}
# source vocabulary -> the xref prefix used by the bundled graphs (codes already 'HP:...' are kept)
_SAB_PREFIX = {"NCI": "NCIT", "SNOMEDCT_US": "SNOMEDCT", "MSH": "MESH", "FMA": "FMA", "RADLEX": "RADLEX"}


def _rrf_rows(path: Path, table: str, issues: list[LoadIssue]) -> Iterator[tuple[int, list[str]]]:
    n = _RRF_COLUMNS[table]
    for lineno, line in _iter_lines(path, issues):
        if not line:
            continue
        fields = line.split("|")
        if len(fields) == n + 1 and fields[-1] == "":
            fields.pop()
        if len(fields) != n:
            issues.append(LoadIssue(str(path), lineno, f"{table} row has {len(fields)} fields, expected {n} "
                                    "(pipe-delimited with a trailing '|'); row skipped", "malformed line"))
            continue
        yield lineno, fields


def _find_meta(directory: Path) -> Path:
    for d in (directory, directory / "META"):
        if (d / "MRCONSO.RRF").is_file():
            return d
    raise OntologyError(f"{directory}: no MRCONSO.RRF here or in META/; point to the META folder of a "
                        "UMLS release (MRCONSO.RRF, MRREL.RRF, MRSTY.RRF, MRDEF.RRF)")


def load_umls_rrf(
    directory: str | Path,
    languages: Iterable[str] | None = ("ENG",),
    sabs: Iterable[str] | None = None,
    semantic_types: Iterable[str] | None = None,
    include_suppressed: bool = False,
) -> ConceptGraph:
    """Load concepts from a UMLS Rich Release Format folder (licensed; never shipped with medvlp).

    Reads ``MRCONSO.RRF`` (names; required), ``MRSTY.RRF`` (semantic types), ``MRDEF.RRF``
    (definitions) and ``MRREL.RRF`` (is-a from ``REL`` PAR/CHD or ``RELA`` isa/inverse_isa; other
    ``RELA`` values become typed relations), whichever exist. Concept ids are CUIs; xrefs hold
    ``UMLS:<CUI>`` and ``<SAB>:<CODE>`` of every kept atom.

    Args:
        directory: the ``META`` folder (or its parent).
        languages: keep atoms with ``LAT`` in this set (``None`` keeps all).
        sabs: keep atoms, definitions and relations from these source vocabularies (``None``: all).
        semantic_types: keep concepts with one of these TUIs (``T047``) or names (``Disease or Syndrome``).
        include_suppressed: keep rows whose ``SUPPRESS`` flag is not ``N``.

    Returns:
        The graph; ``filtered`` counts rows left out by each filter, ``load_issues`` malformed rows.

    Example:
        >>> g = load_umls_rrf("2024AA/META", sabs=["SNOMEDCT_US", "NCI"])  # doctest: +SKIP
    """
    meta_dir = _find_meta(Path(directory).expanduser())
    langs = {x.upper() for x in languages} if languages is not None else None
    sab_set = {x.upper() for x in sabs} if sabs is not None else None
    issues: list[LoadIssue] = []
    filtered: Counter[str] = Counter()
    conso = meta_dir / "MRCONSO.RRF"
    # CUI -> list of (rank, STR); the highest-ranked string is the preferred name
    names: dict[str, list[tuple[tuple[int, ...], str]]] = {}
    xrefs: dict[str, list[str]] = {}
    origins: dict[str, tuple[str, int | None]] = {}
    lang_rank = {lang: i for i, lang in enumerate(languages or ())}
    for lineno, f in _rrf_rows(conso, "MRCONSO", issues):
        cui, lat, ts, stt, ispref, sab, tty, code, text, suppress = (
            f[0], f[1], f[2], f[4], f[6], f[11], f[12], f[13], f[14], f[16])
        if langs is not None and lat.upper() not in langs:
            filtered["MRCONSO other language"] += 1
            continue
        if not include_suppressed and suppress not in ("N", ""):
            filtered["MRCONSO suppressed"] += 1
            continue
        if sab_set is not None and sab.upper() not in sab_set:
            filtered["MRCONSO other source"] += 1
            continue
        if not cui or not text:
            issues.append(LoadIssue(str(conso), lineno, "MRCONSO row without CUI or STR; row skipped",
                                    "malformed line"))
            continue
        # UMLS marks its preferred atom with TS=P, STT=PF, ISPREF=Y; the first language wins ties
        rank = (lang_rank.get(lat.upper(), 99), ts != "P", stt != "PF", ispref != "Y", tty != "PT")
        names.setdefault(cui, []).append((rank, text))
        origins.setdefault(cui, (str(conso), lineno))
        refs = xrefs.setdefault(cui, [f"UMLS:{cui}"])
        if code and code != "NOCODE":
            prefix = _SAB_PREFIX.get(sab.upper(), sab)
            refs.append(code if re.match(r"^[A-Za-z]+:", code) else f"{prefix}:{code}")

    stys: dict[str, list[str]] = {}
    keep_types = {s.casefold() for s in semantic_types} if semantic_types is not None else None
    allowed: set[str] | None = set() if keep_types is not None else None
    sty_path = meta_dir / "MRSTY.RRF"
    if sty_path.is_file():
        for _, f in _rrf_rows(sty_path, "MRSTY", issues):
            cui, tui, sty = f[0], f[1], f[3]
            if cui in names:
                stys.setdefault(cui, []).append(sty)
                if allowed is not None and (tui.casefold() in keep_types or sty.casefold() in keep_types):
                    allowed.add(cui)
    elif keep_types is not None:
        raise OntologyError(f"{meta_dir}: semantic_types given but MRSTY.RRF is missing")
    if allowed is not None:
        for cui in [c for c in names if c not in allowed]:
            del names[cui]
            filtered["concepts of other semantic types"] += 1

    definitions: dict[str, str] = {}
    def_path = meta_dir / "MRDEF.RRF"
    if def_path.is_file():
        for _, f in _rrf_rows(def_path, "MRDEF", issues):
            cui, sab, text, suppress = f[0], f[4], f[5], f[6]
            if cui not in names or cui in definitions:
                continue
            if not include_suppressed and suppress not in ("N", ""):
                filtered["MRDEF suppressed"] += 1
                continue
            if sab_set is not None and sab.upper() not in sab_set:
                filtered["MRDEF other source"] += 1
                continue
            definitions[cui] = text

    parents: dict[str, dict[str, None]] = {}
    relations: dict[str, dict[tuple[str, str], None]] = {}
    rel_path = meta_dir / "MRREL.RRF"
    if rel_path.is_file():
        for _, f in _rrf_rows(rel_path, "MRREL", issues):
            cui1, rel, cui2, rela, sab, suppress = f[0], f[3], f[4], f[7], f[10], f[14]
            if not include_suppressed and suppress not in ("N", ""):
                filtered["MRREL suppressed"] += 1
                continue
            if sab_set is not None and sab.upper() not in sab_set:
                filtered["MRREL other source"] += 1
                continue
            if cui1 not in names or cui2 not in names:
                filtered["MRREL to a concept not loaded"] += 1
                continue
            # REL and RELA state the relation of the SECOND concept to the first:
            # 'C1|PAR|C2' = C2 is a parent of C1; 'C1|CHD|C2' and RELA 'isa' = C2 is a child of C1.
            if rel == "PAR" or (rel not in ("PAR", "CHD") and rela == "inverse_isa"):
                child, parent = cui1, cui2
            elif rel == "CHD" or rela == "isa":
                child, parent = cui2, cui1
            elif rela:
                relations.setdefault(cui2, {})[(rela, cui1)] = None
                continue
            else:
                filtered["MRREL without is-a or RELA"] += 1
                continue
            if child != parent:
                parents.setdefault(child, {})[parent] = None

    concepts = []
    for cui, ranked in names.items():
        ranked.sort(key=lambda r: r[0])
        name = ranked[0][1]
        concepts.append(Concept(
            cui, name, _dedupe((t for _, t in ranked[1:]), exclude=name), definitions.get(cui, ""),
            (stys.get(cui) or [""])[0], list(parents.get(cui, {})), _dedupe(xrefs[cui]),
            list(relations.get(cui, {})),
        ))
    meta = {"name": "umls", "title": f"UMLS ({meta_dir})"}
    return ConceptGraph(concepts, meta=meta, load_issues=issues, filtered=dict(filtered),
                        origins=origins, source=str(conso))


# ---------------------------------------------------------------------------- dispatch
def _bundled_dir() -> Path | None:
    from medvlp.resources import ontologies_dir

    try:
        return ontologies_dir()
    except FileNotFoundError:
        return None


def bundled_names() -> list[str]:
    """Names of the graphs bundled with medvlp (``ontologies/<name>.json``), sorted."""
    d = _bundled_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d is not None else []


def _merge_all(paths: list[Path], what: str) -> ConceptGraph:
    if not paths:
        raise OntologyError(f"no ontology JSON files in {what}")
    graph = load_json(paths[0])
    for path in paths[1:]:
        graph = graph.merge(load_json(path))
    graph.meta["name"] = "all" if what == "the bundled ontologies" else graph.meta.get("name", "")
    return graph


def load_ontology(name_or_path: str | Path | ConceptGraph) -> ConceptGraph:
    """Load a graph by bundled name, ``"all"``, or path (JSON, OBO, OWL, UMLS META folder).

    Args:
        name_or_path: ``"cxr"`` / ``"pathology"`` / ... (bundled), ``"all"`` (every bundled graph merged
            by cross-reference), a ``.json`` / ``.obo`` / ``.owl`` file, a folder with ``MRCONSO.RRF``
            (UMLS) or a folder of ontology JSON files (merged). A ConceptGraph is returned as is.

    Raises:
        OntologyError: nothing of that name or path exists, or the file type is unknown.

    Example:
        >>> g = load_ontology("all")  # doctest: +SKIP
        >>> g["cxr:pleural_effusion"].synonyms  # doctest: +SKIP
    """
    if isinstance(name_or_path, ConceptGraph):
        return name_or_path
    s = str(name_or_path)
    bundled = _bundled_dir()
    if s == "all":
        return _merge_all(sorted(bundled.glob("*.json")) if bundled else [], "the bundled ontologies")
    if bundled is not None and re.fullmatch(r"[\w-]+", s) and (bundled / f"{s}.json").is_file():
        return load_json(bundled / f"{s}.json")
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / "MRCONSO.RRF").is_file() or (p / "META" / "MRCONSO.RRF").is_file():
            return load_umls_rrf(p)
        return _merge_all(sorted(p.glob("*.json")), str(p))
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".json":
            return load_json(p)
        if suffix == ".obo":
            return load_obo(p)
        if suffix in (".owl", ".rdf", ".xml"):
            return load_owl(p)
        raise OntologyError(f"{p}: unknown ontology format {suffix!r}; use .json, .obo, .owl or a UMLS META folder")
    names = ", ".join(bundled_names()) or "none bundled"
    raise OntologyError(f"no ontology {s!r}: not a file or folder and not a bundled name ({names}, all)")
