"""Image tables with free text or attributes (CSV/TSV/Parquet/JSONL) to a manifest.

- ``text_col``: captions are the text itself (split into sentence groups of at most ``max_words`` words
  when long, written as a JSON list); concepts come from the ontology matcher. Negated mentions are kept
  with ``"negated": true`` (never positives); uncertain mentions ("possible pneumonia") go to the
  ``concepts_uncertain`` column instead of ``concepts``, since the objectives read only ``negated``.
- ``attribute_cols``: each ``column=value`` is the ontology concept ``<prefix>:<column>_<value>``
  (e.g. ``micro:nucleus_shape_segmented-bilobed``); captions are seeded natural sentences built from a
  random subset of the attributes, with the spans of each concept mention in ``concepts``. They never
  name the class (the label is only in ``label``) unless ``label_in_captions``.

Rows that cannot be used (missing image, empty text, unknown attribute value) are skipped and written
with their reason to ``bad_samples.jsonl`` next to the output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medvlp.data.importers.common import (
    _RESERVED,
    ImportSummary,
    _count_labels,
    _relpath,
)
from medvlp.data.manifest import check_out_manifest, read_table, write_manifest
from medvlp.errors import ConfigError, DataError
from medvlp.ontology import ConceptMatcher, card_graph, mentions_to_concepts

if TYPE_CHECKING:
    from medvlp.domains import DomainCard
    from medvlp.ontology import ConceptGraph

# Sentence frames for attribute captions: "{}" is the list of attribute phrases.
_FRAMES = (
    "{}.",
    "A stained blood cell with {}.",
    "Peripheral blood smear, cell showing {}.",
    "Morphology: {}.",
    "This cell has {}.",
    "Microscopy of a cell with {}.",
    "Cell with {}, Romanowsky stain.",
)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+(?=\S)")


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", value.strip().lower()).strip("-")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip()


def text_captions(text: str, max_words: int = 60) -> list[str]:
    """The text as one caption, or sentence groups of at most ``max_words`` words when longer.

    A single sentence longer than ``max_words`` stays whole (it is never cut mid-sentence).
    """
    text = " ".join(text.split())
    if len(text.split()) <= max_words:
        return [text]
    groups: list[str] = []
    cur: list[str] = []
    n = 0
    for sent in _SENTENCE.split(text):
        w = len(sent.split())
        if cur and n + w > max_words:
            groups.append(" ".join(cur))
            cur, n = [], 0
        cur.append(sent)
        n += w
    if cur:
        groups.append(" ".join(cur))
    return groups


def _join_spans(phrases: list[tuple[str, str]], frame: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Caption text from (concept id, phrase) pairs in a frame, with the character span of each phrase."""
    head, _, tail = frame.partition("{}")
    text, spans = head, []
    for k, (cid, phrase) in enumerate(phrases):
        if k:
            text += " and " if k == len(phrases) - 1 else ", "
        if not text:  # first word of the sentence
            phrase = phrase[:1].upper() + phrase[1:]
        spans.append((len(text), len(text) + len(phrase), cid))
        text += phrase
    return text + tail, spans


def attribute_captions(
    attrs: list[tuple[str, str]], rng: np.random.Generator, n: int = 3
) -> tuple[list[str], list[dict[str, Any]]]:
    """``n`` captions from random subsets of (concept id, phrase) attributes, and their span entries."""
    caps: list[str] = []
    concepts: list[dict[str, Any]] = []
    for _ in range(n * 3):  # a few tries for distinct captions
        if len(caps) == n or not attrs:
            break
        k = int(rng.integers(min(2, len(attrs)), min(5, len(attrs)) + 1))
        pick = [attrs[i] for i in sorted(rng.choice(len(attrs), size=k, replace=False))]
        text, spans = _join_spans(pick, str(rng.choice(_FRAMES)))
        if text in caps:
            continue
        concepts += [{"id": c, "span": [s, e], "negated": False, "caption": len(caps)} for s, e, c in spans]
        caps.append(text)
    return caps, concepts


def _attribute_index(graph: ConceptGraph | None) -> dict[str, Any]:
    if graph is None:
        return {}
    return {c.id.split(":", 1)[-1]: c for c in graph.concepts.values()}


def import_table(
    table: str | Path,
    *,
    card: DomainCard,
    out_manifest: str | Path,
    image_col: str,
    label_col: str | None = None,
    text_col: str | None = None,
    attribute_cols: Sequence[str] | None = None,
    group_col: str | None = None,
    split_col: str | None = None,
    label_in_captions: bool = False,
    n_captions: int = 3,
    max_words: int = 60,
    seed: int = 0,
) -> ImportSummary:
    """Write a manifest for an image table with free text and/or attribute columns.

    Image paths are relative to ``table``'s folder (or absolute); the manifest stores them relative to
    its own folder. ``group_col`` becomes ``patient`` (for leakage-free splits), ``split_col`` becomes
    ``split``; other columns are kept as metadata.

    Raises:
        ConfigError: a named column is missing, or neither text, attributes nor labels are given.
        DataError: the table cannot be read, or no row is usable.
    """
    table = Path(table)
    out = check_out_manifest(out_manifest)
    df, read_warnings = read_table(table, what="table")
    attribute_cols = [c.strip() for c in (attribute_cols or []) if c.strip()]
    named = {"--image-col": image_col, "--label-col": label_col, "--text-col": text_col,
             "--group-col": group_col, "--split-col": split_col}
    missing = [f"{opt} {col}" for opt, col in named.items() if col and col not in df.columns]
    missing += [f"--attribute-cols {c}" for c in attribute_cols if c not in df.columns]
    if missing:
        raise ConfigError(f"table {table}: no column for {', '.join(sorted(set(missing)))}; columns: {', '.join(df.columns)}")
    if not (text_col or attribute_cols or label_col):
        raise ConfigError("give --text-col, --attribute-cols or --label-col: captions are built from them")
    graph = card_graph(card)
    index = _attribute_index(graph)
    matcher = ConceptMatcher(graph) if (text_col and graph is not None) else None
    used = {c for c in (image_col, label_col, text_col, group_col, split_col) if c}
    meta_cols = [c for c in df.columns if c not in used]
    summary = ImportSummary(warnings=list(read_warnings))
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    unknown: dict[str, None] = {}
    first_line = 2 if table.suffix.lower() in (".csv", ".tsv", ".txt") else 1
    for i, rec in enumerate(df.to_dict("records")):
        where = {"row": i, "line": i + first_line}

        def skip(reason: str, image: str = "", where: dict = where) -> None:
            bad.append({**where, "image": image, "reason": reason})

        raw = "" if _missing(rec[image_col]) else str(rec[image_col]).strip()
        if not raw:
            skip(f"empty image path in column '{image_col}'")
            continue
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else table.parent / path
        if not path.is_file():
            skip(f"image file not found: {path}", raw)
            continue
        label = "" if not label_col or _missing(rec[label_col]) else str(rec[label_col]).strip()
        if label:
            lab = card.find_label(label)
            if lab is None:
                unknown.setdefault(label, None)
            else:
                label = lab.name
        captions: list[str] = []
        concepts: list[dict[str, Any]] = []
        uncertain: list[dict[str, Any]] = []
        if text_col:
            text = "" if _missing(rec[text_col]) else str(rec[text_col])
            if not text.strip():
                skip(f"empty text in column '{text_col}'", raw)
                continue
            captions = text_captions(text, max_words)
            if matcher is not None:
                multi = len(captions) > 1
                for k, cap in enumerate(captions):
                    for m, d in zip(matches := matcher.match(cap), mentions_to_concepts(matches, k if multi else None), strict=True):
                        (uncertain if m.uncertain else concepts).append({**d, "uncertain": True} if m.uncertain else d)
        if attribute_cols:
            attrs, problem = [], None
            for col in attribute_cols:
                value = "" if _missing(rec[col]) else str(rec[col]).strip()
                concept = index.get(f"{col}_{_slug(value)}") if value else None
                if concept is None:
                    problem = (f"unknown attribute value {col}={value!r}: no concept '<prefix>:{col}_{_slug(value)}' "
                               f"in the '{card.ontology}' ontology (add it there, or fix the cell)")
                    break
                if _slug(value) != "nil":  # "no granule type": not something a caption says
                    attrs.append((concept.id, concept.name))
            if problem:
                skip(problem, raw)
                continue
            rng = np.random.default_rng([seed, i])
            caps, spans = attribute_captions(attrs, rng, n_captions)
            offset = len(captions)
            captions += caps
            concepts += [{**d, "caption": d["caption"] + offset} for d in spans]
        if label and (label_in_captions or not (text_col or attribute_cols)):
            captions += [c for c in card.captions_for(label) if c not in captions]
        if not captions:
            skip("no caption could be built (no text and no attribute to describe)", raw)
            continue
        row: dict[str, Any] = {
            "image": _relpath(path, out.parent),
            "caption": captions[0] if len(captions) == 1 else json.dumps(captions, ensure_ascii=False),
        }
        if label_col:
            row["label"] = label or None
        row["concepts"] = json.dumps(concepts, ensure_ascii=False)
        if text_col:
            row["concepts_uncertain"] = json.dumps(uncertain, ensure_ascii=False)
        if group_col:
            row["patient"] = None if _missing(rec[group_col]) else str(rec[group_col]).strip()
        if split_col:
            row["split"] = None if _missing(rec[split_col]) else str(rec[split_col]).strip().lower()
        for c in meta_cols:
            row[f"source_{c}" if c in _RESERVED or c in row else c] = rec[c]
        rows.append(row)
    bad_path = out.parent / "bad_samples.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(bad_path, "w", encoding="utf-8") as fh:
        for b in bad:
            fh.write(json.dumps(b, ensure_ascii=False) + "\n")
    summary.problems = [f"{table}:{b['line']}: {b['reason']}" for b in bad]
    if bad:
        summary.notes.append(f"{len(bad)} rows skipped; reasons in {bad_path}")
    if not rows:
        raise DataError(f"table {table}: no usable row ({len(bad)} skipped; reasons in {bad_path})")
    out_df = pd.DataFrame(rows)
    summary.manifests["all"] = write_manifest(out_df, out)
    summary.rows["all"] = len(out_df)
    summary.counts["all"] = _count_labels(out_df["label"].fillna("(no label)")) if label_col else {}
    if unknown:
        summary.unknown_labels = list(unknown)
        summary.warnings.append(
            f"labels not in the '{card.name}' card: {', '.join(unknown)}; they are kept as written "
            "(add them to the card for zero-shot evaluation on them)"
        )
    return summary
