"""The project's ontology JSON (``ontologies/*.json``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from medvlp.errors import OntologyError
from medvlp.ontology.graph import Concept, ConceptGraph, LoadIssue, dedupe
from medvlp.ontology.loaders.common import _read_text, _require_file

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
            synonyms=dedupe(lists["synonyms"], exclude=name),
            definition=definition if isinstance(definition, str) else str(definition),
            semantic_type=stype if isinstance(stype, str) else str(stype),
            parents=[x.strip() for x in lists["parents"]], xrefs=dedupe(lists["xrefs"]),
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


