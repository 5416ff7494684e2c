"""Concept graph: concepts with names, synonyms, definitions, is-a parents and typed relations.

A :class:`ConceptGraph` is built once (by a loader or by hand) and then treated as immutable: the
is-a closure (ancestors / descendants) is computed lazily and cached, so repeated hierarchy queries
cost a dictionary lookup. Building a graph validates it: duplicate ids, dangling parents or relation
targets and is-a cycles are repaired (first id kept, edge dropped, cycle edge broken) and reported as
:class:`LoadIssue` records in ``graph.load_issues``; nothing is dropped silently.

Example:
    >>> g = ConceptGraph([Concept("x:lesion", "skin lesion"),
    ...                   Concept("x:nevus", "nevus", synonyms=["mole"], parents=["x:lesion"])])
    >>> sorted(g.ancestors("x:nevus")), g.is_related("x:lesion", "x:nevus")
    (['x:lesion'], True)
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvlp.errors import OntologyError

__all__ = ["DOMAIN_PREFIXES", "Concept", "ConceptGraph", "LoadIssue", "xref_key"]

# medvlp domain -> id prefix of its bundled ontology (ontologies/<domain>.json)
DOMAIN_PREFIXES = {"cxr": "cxr", "pathology": "path", "dermatology": "derm", "microscopy": "micro"}


@dataclass
class Concept:
    """One concept of an ontology.

    Attributes:
        id: unique id with a prefix, e.g. ``cxr:pleural_effusion``, ``HP:0001250`` or a UMLS CUI.
        name: preferred name.
        synonyms: other names (the preferred name is not repeated here).
        definition: one sentence, may be empty.
        semantic_type: e.g. ``Finding``, ``Disease or Syndrome``; may be empty.
        parents: ids of is-a parents (empty for a root).
        xrefs: cross-references such as ``UMLS:C0032227`` or ``DOID:1234``; used to merge graphs.
        relations: typed non-is-a relations as ``(type, target_id)`` pairs.
    """

    id: str
    name: str
    synonyms: list[str] = field(default_factory=list)
    definition: str = ""
    semantic_type: str = ""
    parents: list[str] = field(default_factory=list)
    xrefs: list[str] = field(default_factory=list)
    relations: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # relations may be given as JSON-style dicts {"type", "target"}; keep one form internally
        self.relations = [
            (r["type"], r["target"]) if isinstance(r, dict) else (r[0], r[1]) for r in self.relations
        ]

    @property
    def texts(self) -> list[str]:
        """The preferred name followed by the synonyms."""
        return [self.name, *self.synonyms]

    def to_dict(self) -> dict[str, Any]:
        """The concept as an entry of the project's ontology JSON."""
        return {
            "id": self.id,
            "name": self.name,
            "synonyms": list(self.synonyms),
            "definition": self.definition,
            "semantic_type": self.semantic_type,
            "parents": list(self.parents),
            "xrefs": list(self.xrefs),
            "relations": [{"type": t, "target": target} for t, target in self.relations],
        }


@dataclass(frozen=True)
class LoadIssue:
    """A problem met while loading or validating an ontology; the rest was still loaded.

    Attributes:
        file: the file (or source name) the problem is in.
        line: 1-based line number, or ``None`` where the format has no meaningful line.
        reason: what was wrong and what was done about it.
        kind: short category used for counts (``malformed line``, ``duplicate id``, ``dangling parent``,
            ``is-a cycle``, ``invalid UTF-8`` ...).
    """

    file: str
    line: int | None
    reason: str
    kind: str = "other"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


def dedupe(items: Iterable[str], exclude: str = "") -> list[str]:
    """Unique non-empty strings, order kept, compared case-insensitively, ``exclude`` left out."""
    seen = {exclude.casefold()} if exclude else set()
    out = []
    for item in items:
        item = item.strip()
        key = item.casefold()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
    return out


# prefixes that different sources spell differently for the same vocabulary
_XREF_PREFIXES = {"UMLS_CUI": "UMLS", "SNOMEDCT_US": "SNOMEDCT", "SNOMED": "SNOMEDCT", "SCTID": "SNOMEDCT",
                  "NCI": "NCIT", "MSH": "MESH", "HPO": "HP"}


def xref_key(xref: str) -> str:
    """Canonical form of a cross-reference for matching: ``umls_cui:c0032227`` -> ``UMLS:C0032227``."""
    prefix, sep, local = xref.strip().partition(":")
    if not sep:
        return prefix.upper()
    prefix = prefix.strip().upper()
    return f"{_XREF_PREFIXES.get(prefix, prefix)}:{local.strip().upper()}"


def _norm_query(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))


class ConceptGraph:
    """A validated, immutable-by-convention graph of :class:`Concept` objects.

    Args:
        concepts: the concepts (a list or an id->concept dict). The graph takes ownership.
        meta: ``name``, ``title``, ``version``, ``license`` of the source.
        aliases: old or alternative id -> kept id (from merges and OBO ``alt_id``).
        load_issues: problems already found by a loader; validation appends its own.
        filtered: record counts deliberately excluded by a loader filter (language, obsolete ...).
        origins: concept id -> (file, line) where it was defined, so validation issues name a line.
        source: file name used in validation issues when ``origins`` has no entry.
    """

    def __init__(
        self,
        concepts: Iterable[Concept] | dict[str, Concept] = (),
        *,
        meta: dict[str, str] | None = None,
        aliases: dict[str, str] | None = None,
        load_issues: list[LoadIssue] | None = None,
        filtered: dict[str, int] | None = None,
        origins: dict[str, tuple[str, int | None]] | None = None,
        source: str = "<memory>",
    ) -> None:
        self.meta: dict[str, str] = dict(meta or {})
        self.load_issues: list[LoadIssue] = list(load_issues or [])
        self.filtered: dict[str, int] = dict(filtered or {})
        self._origins = origins or {}
        self._source = source
        items = concepts.values() if isinstance(concepts, dict) else concepts
        self.concepts: dict[str, Concept] = {}
        for c in items:
            if c.id in self.concepts:
                self._issue(c.id, f"duplicate id {c.id!r} ({c.name!r}); the first definition is kept",
                            "duplicate id")
                continue
            self.concepts[c.id] = c
        self.aliases: dict[str, str] = {}
        for old, new in (aliases or {}).items():
            if old not in self.concepts:
                self.aliases[old] = new
        self._resolve_alias_chains()
        self._validate_edges()
        self._break_cycles()
        self._children: dict[str, list[str]] = {cid: [] for cid in self.concepts}
        for c in self.concepts.values():
            for p in c.parents:
                self._children[p].append(c.id)
        self._anc: dict[str, frozenset[str]] = {}
        self._desc: dict[str, frozenset[str]] = {}
        self._search_index: list[tuple[str, str, bool]] | None = None

    # ------------------------------------------------------------------ validation
    def _issue(self, cid: str, reason: str, kind: str) -> None:
        file, line = self._origins.get(cid, (self._source, None))
        self.load_issues.append(LoadIssue(file, line, reason, kind))

    def _resolve_alias_chains(self) -> None:
        for old in list(self.aliases):
            seen = {old}
            target = self.aliases[old]
            while target in self.aliases and target not in seen:
                seen.add(target)
                target = self.aliases[target]
            if target in self.concepts:
                self.aliases[old] = target
            else:
                del self.aliases[old]
                self._issue(old, f"alias {old!r} points to unknown id {target!r}; alias dropped",
                            "dangling alias")

    def _validate_edges(self) -> None:
        """Map aliased parents/targets to kept ids; drop (and report) dangling ones and self-loops."""
        concepts, aliases = self.concepts, self.aliases
        for cid, c in concepts.items():
            parents = c.parents
            if any(p not in concepts or p == cid for p in parents) or len(set(parents)) != len(parents):
                kept: list[str] = []
                for p in parents:
                    q = aliases.get(p, p)
                    if q not in concepts:
                        self._issue(cid, f"{cid}: parent {p!r} is not defined; is-a edge dropped",
                                    "dangling parent")
                    elif q == cid:
                        self._issue(cid, f"{cid}: is-a edge to itself dropped", "is-a cycle")
                    elif q not in kept:
                        kept.append(q)
                c.parents = kept
            rels = c.relations
            if any(t not in concepts for _, t in rels):
                kept_rels: list[tuple[str, str]] = []
                for rtype, target in rels:
                    q = aliases.get(target, target)
                    if q in concepts:
                        kept_rels.append((rtype, q))
                    else:
                        self._issue(cid, f"{cid}: {rtype} target {target!r} is not defined; relation dropped",
                                    "dangling relation")
                c.relations = kept_rels

    def _break_cycles(self) -> None:
        """Iterative DFS over parent edges; every back edge closes a cycle and is removed."""
        concepts = self.concepts
        color: dict[str, int] = {}  # 1 = on the DFS path, 2 = finished
        removed: list[tuple[str, str]] = []
        for start in concepts:
            if start in color:
                continue
            color[start] = 1
            path = [start]
            stack: list[tuple[str, Iterator[str]]] = [(start, iter(concepts[start].parents))]
            while stack:
                node, it = stack[-1]
                for p in it:
                    state = color.get(p)
                    if state is None:
                        color[p] = 1
                        path.append(p)
                        stack.append((p, iter(concepts[p].parents)))
                        break
                    if state == 1:
                        cycle = path[path.index(p):] + [p]
                        removed.append((node, p))
                        self._issue(node, "is-a cycle " + " -> ".join(cycle)
                                    + f"; edge {node} is_a {p} removed", "is-a cycle")
                else:
                    color[node] = 2
                    stack.pop()
                    path.pop()
        for child, parent in removed:
            concepts[child].parents = [p for p in concepts[child].parents if p != parent]

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self.concepts)

    def __contains__(self, cid: object) -> bool:
        return cid in self.concepts or cid in self.aliases

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts.values())

    def __getitem__(self, cid: str) -> Concept:
        c = self.get(cid)
        if c is None:
            raise OntologyError(
                f"unknown concept id {cid!r} in ontology {self.meta.get('name', self._source)!r}; "
                "find ids with `medvlp ontology search TEXT`"
            )
        return c

    def __repr__(self) -> str:
        return f"ConceptGraph(name={self.meta.get('name', '')!r}, concepts={len(self)})"

    def resolve(self, cid: str) -> str:
        """The kept id for ``cid`` (follows aliases); ``cid`` itself when unknown."""
        return cid if cid in self.concepts else self.aliases.get(cid, cid)

    def get(self, cid: str, default: Concept | None = None) -> Concept | None:
        """The concept with id ``cid`` (or an alias of it), else ``default``."""
        return self.concepts.get(self.resolve(cid), default)

    def _known(self, cid: str) -> str:
        rid = self.resolve(cid)
        if rid not in self.concepts:
            self[cid]  # raises a helpful OntologyError
        return rid

    def parents(self, cid: str) -> list[str]:
        """Direct is-a parents of ``cid``."""
        return list(self.concepts[self._known(cid)].parents)

    def children(self, cid: str) -> list[str]:
        """Direct is-a children of ``cid``."""
        return list(self._children[self._known(cid)])

    def roots(self) -> list[str]:
        """Ids of concepts without parents, in graph order."""
        return [cid for cid, c in self.concepts.items() if not c.parents]

    # ------------------------------------------------------------------ closure
    def _closure(self, cid: str, cache: dict[str, frozenset[str]], edges: Any) -> frozenset[str]:
        """Memoised transitive closure along ``edges(id)``; iterative, so deep graphs cannot overflow."""
        hit = cache.get(cid)
        if hit is not None:
            return hit
        stack = [cid]
        while stack:
            node = stack[-1]
            if node in cache:
                stack.pop()
                continue
            nexts = edges(node)
            pending = [n for n in nexts if n not in cache]
            if pending:
                stack.extend(pending)
                continue
            acc: set[str] = set(nexts)
            for n in nexts:
                acc |= cache[n]
            cache[node] = frozenset(acc)
            stack.pop()
        return cache[cid]

    def ancestors(self, cid: str) -> frozenset[str]:
        """All is-a ancestors of ``cid`` (not including itself); cached after the first call."""
        concepts = self.concepts
        return self._closure(self._known(cid), self._anc, lambda n: concepts[n].parents)

    def descendants(self, cid: str) -> frozenset[str]:
        """All is-a descendants of ``cid`` (not including itself); cached after the first call."""
        return self._closure(self._known(cid), self._desc, self._children.__getitem__)

    def is_related(self, a: str, b: str) -> bool:
        """True when ``a`` and ``b`` are the same concept or one is an ancestor of the other."""
        a, b = self._known(a), self._known(b)
        return a == b or b in self.ancestors(a) or a in self.ancestors(b)

    def path_to_root(self, cid: str) -> list[str]:
        """Ancestor chain from a root down to ``cid`` (inclusive), following the first parent."""
        node = self._known(cid)
        chain = [node]
        while self.concepts[node].parents:
            node = self.concepts[node].parents[0]
            chain.append(node)
        return chain[::-1]

    # ------------------------------------------------------------------ derived graphs
    def subgraph(
        self,
        root_ids: Iterable[str] | None = None,
        semantic_types: Iterable[str] | None = None,
        domain: str | None = None,
    ) -> ConceptGraph:
        """Concepts under ``root_ids`` (inclusive), of ``semantic_types``, of ``domain``; all filters combine.

        Args:
            root_ids: keep these concepts and their descendants.
            semantic_types: keep concepts of these semantic types (case-insensitive).
            domain: keep concepts of a medvlp domain (``cxr``, ``pathology``, ``dermatology``,
                ``microscopy``) or of an id prefix (``HP``): the concept's id or one of its aliases (ids
                merged into it from another graph) has that prefix.

        A kept concept whose parents were removed is attached to its nearest kept ancestors, so the
        hierarchy stays connected.
        """
        keep: set[str] | None = None
        if domain is not None:
            prefix = DOMAIN_PREFIXES.get(domain, domain).casefold()
            keep = {cid for cid in self.concepts if cid.partition(":")[0].casefold() == prefix}
            keep |= {t for a, t in self.aliases.items() if a.partition(":")[0].casefold() == prefix}
        if root_ids is not None:
            under: set[str] = set()
            for r in root_ids:
                rid = self._known(r)
                under.add(rid)
                under |= self.descendants(rid)
            keep = under if keep is None else keep & under
        if semantic_types is not None:
            wanted = {s.casefold() for s in semantic_types}
            typed = {cid for cid, c in self.concepts.items() if c.semantic_type.casefold() in wanted}
            keep = typed if keep is None else keep & typed
        if keep is None:
            keep = set(self.concepts)
        out = []
        for cid, c in self.concepts.items():
            if cid not in keep:
                continue
            parents: list[str] = []
            frontier = list(c.parents)
            seen: set[str] = set()
            while frontier:  # walk up through removed concepts to the nearest kept ones
                p = frontier.pop(0)
                if p in seen:
                    continue
                seen.add(p)
                if p in keep:
                    if p not in parents:
                        parents.append(p)
                else:
                    frontier.extend(self.concepts[p].parents)
            rels = [(t, x) for t, x in c.relations if x in keep]
            out.append(dataclasses.replace(c, parents=parents, relations=rels,
                                           synonyms=list(c.synonyms), xrefs=list(c.xrefs)))
        aliases = {a: t for a, t in self.aliases.items() if t in keep}
        return ConceptGraph(out, meta=self.meta, aliases=aliases, filtered=self.filtered,
                            source=self._source)

    def merge(self, other: ConceptGraph) -> ConceptGraph:
        """Union of two graphs; concepts with the same id or a shared xref become one.

        The unified concept keeps the id (and preferred name) of the first graph; names, synonyms and
        xrefs are united, parents and relations of both are kept, and the second graph's id becomes an
        alias that still resolves (``merged["other:id"]`` works). Cycles created by the union are
        broken and reported like any other load issue.
        """
        out: dict[str, Concept] = {}
        xref_index: dict[str, str] = {}
        for cid, c in self.concepts.items():
            out[cid] = dataclasses.replace(c, synonyms=list(c.synonyms), parents=list(c.parents),
                                           xrefs=list(c.xrefs), relations=list(c.relations))
            for x in c.xrefs:
                xref_index.setdefault(xref_key(x), cid)
        aliases = dict(self.aliases)
        added: list[str] = []
        for cid, c in other.concepts.items():
            target = cid if cid in out else None
            if target is None:
                target = next((xref_index[k] for x in c.xrefs if (k := xref_key(x)) in xref_index), None)
            if target is None:
                out[cid] = dataclasses.replace(c, synonyms=list(c.synonyms), parents=list(c.parents),
                                               xrefs=list(c.xrefs), relations=list(c.relations))
                added.append(cid)
                for x in c.xrefs:
                    xref_index.setdefault(xref_key(x), cid)
                continue
            t = out[target]
            t.synonyms = dedupe([*t.synonyms, c.name, *c.synonyms], exclude=t.name)
            t.xrefs = dedupe([*t.xrefs, *c.xrefs])
            t.parents = [*t.parents, *(p for p in c.parents if p not in t.parents)]
            t.relations = [*t.relations, *(r for r in c.relations if r not in t.relations)]
            t.definition = t.definition or c.definition
            t.semantic_type = t.semantic_type or c.semantic_type
            if target != cid:
                aliases[cid] = target
            added.append(target)
        for old, new in other.aliases.items():
            aliases.setdefault(old, aliases.get(new, new))
        # parents/targets written in the second graph's ids now point at unified ids
        for cid in added:
            c = out[cid]
            c.parents = list(dict.fromkeys(aliases.get(p, p) for p in c.parents))
            c.relations = list(dict.fromkeys((t, aliases.get(x, x)) for t, x in c.relations))
        meta = dict(self.meta)
        if other.meta.get("name"):
            meta["name"] = "+".join(filter(None, [self.meta.get("name"), other.meta.get("name")]))
        filtered = Counter(self.filtered)
        filtered.update(other.filtered)
        origins = {**other._origins, **self._origins}
        return ConceptGraph(out, meta=meta, aliases=aliases,
                            load_issues=[*self.load_issues, *other.load_issues],
                            filtered=dict(filtered), origins=origins,
                            source=f"{self._source}+{other._source}")

    # ------------------------------------------------------------------ search and stats
    def search(self, text: str, limit: int = 10) -> list[Concept]:
        """Concepts whose id, name or a synonym contains ``text`` (case- and punctuation-insensitive).

        Ranking: exact id, exact name, exact synonym, name prefix, synonym prefix, whole-word match,
        any substring; ties go to the shorter matching name.
        """
        q = _norm_query(text)
        if not q:
            return []
        exact_id = self.get(text.strip())
        if self._search_index is None:
            self._search_index = [
                (_norm_query(s), cid, i == 0)
                for cid, c in self.concepts.items()
                for i, s in enumerate(c.texts)
            ]
        best: dict[str, tuple[int, int, str]] = {}
        padded_q = f" {q} "
        for s, cid, is_name in self._search_index:
            if q not in s:
                continue
            if s == q:
                rank = 1 if is_name else 2
            elif s.startswith(q):
                rank = 3 if is_name else 4
            elif padded_q in f" {s} ":
                rank = 5
            else:
                rank = 6
            key = (rank, len(s), cid)
            if cid not in best or key < best[cid]:
                best[cid] = key
        if exact_id is not None:
            best[exact_id.id] = (0, 0, exact_id.id)
        order = sorted(best.items(), key=lambda kv: kv[1])
        return [self.concepts[cid] for cid, _ in order[:limit]]

    def stats(self) -> dict[str, Any]:
        """Counts: concepts, relations (is-a + typed), synonyms, roots, skipped (load issues) and why."""
        n_isa = sum(len(c.parents) for c in self.concepts.values())
        n_typed = sum(len(c.relations) for c in self.concepts.values())
        return {
            "concepts": len(self.concepts),
            "relations": n_isa + n_typed,
            "is_a": n_isa,
            "typed_relations": n_typed,
            "synonyms": sum(len(c.synonyms) for c in self.concepts.values()),
            "roots": sum(1 for c in self.concepts.values() if not c.parents),
            "aliases": len(self.aliases),
            "skipped": len(self.load_issues),
            "skipped_reasons": dict(Counter(i.kind for i in self.load_issues)),
            "filtered": dict(self.filtered),
        }

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The graph in the project's ontology JSON layout (see ``ontologies/*.json``)."""
        d: dict[str, Any] = {k: self.meta[k] for k in ("name", "title", "version", "license") if k in self.meta}
        d["concepts"] = [c.to_dict() for c in self.concepts.values()]
        if self.aliases:
            d["aliases"] = dict(self.aliases)
        return d

    def to_json(self, path: str | Path) -> None:
        """Write the graph as the project's ontology JSON (UTF-8, indented)."""
        import json

        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n",
                              encoding="utf-8")


_dedupe = dedupe  # the name used before it was public
