"""``medvlp ontology {stats,search,show,match}``: a thin shell over :mod:`medvlp.ontology`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

_ONTOLOGY_HELP = "Bundled name (cxr, pathology, ...), 'all' (bundled graphs merged), or a .json/.obo/.owl file."


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _load(source: str):
    from medvlp.ontology import load_ontology

    return load_ontology(source)


@app.command("stats", help="Counts of a graph: concepts, relations, synonyms, roots, skipped lines and why.")
def stats(
    source: Annotated[str, typer.Argument(help="OBO/OWL/JSON file, UMLS META folder (.RRF), folder of JSON "
                                               "graphs, or a bundled graph name.")],
    language: Annotated[list[str] | None, typer.Option(help="UMLS: keep atoms of this LAT (repeatable).")] = None,
    sab: Annotated[list[str] | None, typer.Option(help="UMLS: keep these source vocabularies (repeatable).")] = None,
    semantic_type: Annotated[list[str] | None, typer.Option(
        help="UMLS: keep concepts of this TUI or semantic type name (repeatable).")] = None,
    include_suppressed: Annotated[bool, typer.Option(help="UMLS: keep suppressed atoms.")] = False,
    max_issues: Annotated[int, typer.Option(help="Skipped lines listed one per line (the rest are counted).")] = 20,
) -> None:
    from medvlp.ontology import load_umls_rrf

    p = Path(source).expanduser()
    is_umls = p.is_dir() and ((p / "MRCONSO.RRF").is_file() or (p / "META" / "MRCONSO.RRF").is_file())
    if is_umls:
        graph = load_umls_rrf(p, languages=language or ("ENG",), sabs=sab or None,
                              semantic_types=semantic_type or None, include_suppressed=include_suppressed)
    else:
        if language or sab or semantic_type or include_suppressed:
            typer.echo("note: --language/--sab/--semantic-type/--include-suppressed apply to UMLS folders only",
                       err=True)
        graph = _load(source)
    s = graph.stats()
    name = graph.meta.get("name", source)
    version = graph.meta.get("version")
    typer.echo(f"ontology: {name}" + (f" ({version})" if version else ""))
    typer.echo(f"concepts: {s['concepts']}")
    typer.echo(f"relations: {s['relations']} (is-a {s['is_a']}, typed {s['typed_relations']})")
    typer.echo(f"synonyms: {s['synonyms']}")
    typer.echo(f"roots: {s['roots']}")
    if s["aliases"]:
        typer.echo(f"aliases: {s['aliases']}")
    for what, n in sorted(s["filtered"].items()):
        typer.echo(f"filtered: {n} {what}")
    typer.echo(f"skipped: {s['skipped']}")
    for kind, n in sorted(s["skipped_reasons"].items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"  {n} {kind}")
    for issue in graph.load_issues[:max_issues]:
        typer.echo(f"  {issue}")
    if len(graph.load_issues) > max_issues:
        typer.echo(f"  ... {len(graph.load_issues) - max_issues} more (raise --max-issues to list them)")


@app.command("search", help="Concepts whose id, name or a synonym contains TEXT, best first.")
def search(
    text: Annotated[str, typer.Argument(help="Words to look for (case and punctuation are ignored).")],
    ontology: Annotated[str, typer.Option(help=_ONTOLOGY_HELP)] = "all",
    limit: Annotated[int, typer.Option(help="Most results shown.")] = 10,
) -> None:
    graph = _load(ontology)
    hits = graph.search(text, limit=limit)
    if not hits:
        typer.echo(f"no concept matches {text!r} in {graph.meta.get('name', ontology)}", err=True)
        return
    for c in hits:
        syn = f"\t({'; '.join(c.synonyms[:4])}{'; ...' if len(c.synonyms) > 4 else ''})" if c.synonyms else ""
        typer.echo(f"{c.id}\t{c.name}{syn}")


@app.command("show", help="One concept: name, synonyms, definition, parents, children, cross-references.")
def show(
    concept_id: Annotated[str, typer.Argument(metavar="ID", help="Concept id, e.g. cxr:pleural_effusion.")],
    ontology: Annotated[str, typer.Option(help=_ONTOLOGY_HELP)] = "all",
) -> None:
    graph = _load(ontology)
    c = graph[concept_id]  # unknown id -> OntologyError, reported as one line by medvlp.cli.main

    def named(ids: list[str]) -> str:
        return ", ".join(f"{i} ({graph.concepts[i].name})" for i in ids) or "-"

    typer.echo(f"id: {c.id}")
    typer.echo(f"name: {c.name}")
    typer.echo(f"synonyms: {'; '.join(c.synonyms) or '-'}")
    typer.echo(f"definition: {c.definition or '-'}")
    typer.echo(f"semantic type: {c.semantic_type or '-'}")
    typer.echo(f"parents: {named(graph.parents(c.id))}")
    typer.echo(f"children: {named(graph.children(c.id))}")
    typer.echo(f"xrefs: {', '.join(c.xrefs) or '-'}")
    for rtype, target in c.relations:
        typer.echo(f"{rtype}: {target} ({graph.concepts[target].name})")


@app.command("match", help="Concept mentions in a caption: span, concept id, name, negation, uncertainty.")
def match(
    text: Annotated[str, typer.Argument(help="Caption or report text (quote it).")],
    ontology: Annotated[str, typer.Option(help=_ONTOLOGY_HELP)] = "all",
) -> None:
    from medvlp.ontology import ConceptMatcher

    mentions = ConceptMatcher(_load(ontology)).match(text)
    if not mentions:
        typer.echo("no concept mentions found", err=True)
        return
    for m in mentions:
        typer.echo(f"{m.start}-{m.end}\t{m.concept_id}\t{m.name}\tnegated: {_bool(m.negated)}"
                   f"\tuncertain: {_bool(m.uncertain)}\t{m.text!r}")
