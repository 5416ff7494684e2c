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

import re
from pathlib import Path

from medvlp.errors import OntologyError
from medvlp.ontology.graph import ConceptGraph
from medvlp.ontology.loaders.obo import load_obo, load_owl
from medvlp.ontology.loaders.project_json import load_json
from medvlp.ontology.loaders.umls import load_umls_rrf

__all__ = [
    "bundled_names",
    "load_json",
    "load_obo",
    "load_ontology",
    "load_owl",
    "load_umls_rrf",
]


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
