"""A licensed UMLS release (MRCONSO/MRREL/MRSTY/MRDEF ``.RRF``), filtered."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from medvlp.errors import OntologyError
from medvlp.ontology.graph import Concept, ConceptGraph, LoadIssue, dedupe
from medvlp.ontology.loaders.common import _iter_lines

_SAB_PREFIX = {"NCI": "NCIT", "SNOMEDCT_US": "SNOMEDCT", "MSH": "MESH", "FMA": "FMA", "RADLEX": "RADLEX"}

_RRF_COLUMNS = {"MRCONSO": 18, "MRSTY": 6, "MRREL": 16, "MRDEF": 8}

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
                if (allowed is not None and keep_types is not None
                        and (tui.casefold() in keep_types or sty.casefold() in keep_types)):
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
            cui, name, dedupe((t for _, t in ranked[1:]), exclude=name), definitions.get(cui, ""),
            (stys.get(cui) or [""])[0], list(parents.get(cui, {})), dedupe(xrefs[cui]),
            list(relations.get(cui, {})),
        ))
    meta = {"name": "umls", "title": f"UMLS ({meta_dir})"}
    return ConceptGraph(concepts, meta=meta, load_issues=issues, filtered=dict(filtered),
                        origins=origins, source=str(conso))


# ---------------------------------------------------------------------------- dispatch
