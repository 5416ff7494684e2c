"""Fill a manifest's ``concepts`` column from its captions with the ontology matcher.

This lives in :mod:`medvlp.data` (not the ontology) because it reads and writes manifest cells; the
ontology only knows concepts and text.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from medvlp.data.manifest import parse_list_cell
from medvlp.ontology import ConceptGraph, ConceptMatcher, mentions_to_concepts

__all__ = ["fill_concepts"]


def _cell_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    if isinstance(value, str):
        return not value.strip()
    return value is pd.NA


def fill_concepts(
    manifest_df: pd.DataFrame,
    graph: ConceptGraph | ConceptMatcher,
    *,
    caption_column: str = "caption",
    overwrite: bool = False,
) -> pd.DataFrame:
    """Fill a manifest's ``concepts`` column from its captions where it is absent or empty.

    Each filled cell is a JSON list (a string, so that CSV manifests round-trip and
    :func:`medvlp.data.manifest.parse_list_cell` reads it back) of ``{"id", "span": [start, end],
    "negated"}``; spans index the caption. A row whose ``caption`` cell is a JSON list of several
    captions gets ``"caption": k`` in each entry, naming the caption the span belongs to. Cells that
    already hold concepts are kept unless ``overwrite``.

    Args:
        manifest_df: the manifest table (``Manifest.df``); not modified.
        graph: the ontology whose concepts are matched (or a ready :class:`ConceptMatcher`).
        caption_column: column with the captions.
        overwrite: re-match every row, replacing existing concepts.

    Returns:
        A copy of ``manifest_df`` with a filled ``concepts`` column (``"[]"`` where no concept is found
        or the row has no caption).

    Example:
        >>> import pandas as pd
        >>> from medvlp.ontology import Concept, ConceptGraph
        >>> g = ConceptGraph([Concept("cxr:pneumothorax", "pneumothorax")])
        >>> fill_concepts(pd.DataFrame({"image": ["a.png"], "caption": ["No pneumothorax."]}), g)["concepts"][0]
        '[{"id": "cxr:pneumothorax", "span": [3, 15], "negated": true}]'
    """
    matcher = graph if isinstance(graph, ConceptMatcher) else ConceptMatcher(graph)
    df = manifest_df.copy()
    n = len(df)
    existing = df["concepts"].tolist() if "concepts" in df.columns else [None] * n
    captions = df[caption_column].tolist() if caption_column in df.columns else [None] * n
    filled: list[Any] = []
    for old, cell in zip(existing, captions, strict=True):
        if not overwrite and not _cell_missing(old):
            filled.append(old)
            continue
        texts = [str(c) for c in parse_list_cell(cell) if str(c).strip()]
        if len(texts) == 1:
            concepts = mentions_to_concepts(matcher.match(texts[0]))
        else:
            concepts = [d for k, t in enumerate(texts) for d in mentions_to_concepts(matcher.match(t), k)]
        filled.append(json.dumps(concepts, ensure_ascii=False))
    df["concepts"] = _object_column(filled)
    return df


def _object_column(values: list[Any]) -> Any:
    """A list as an object-dtype column (keeps JSON strings and existing lists as they are)."""
    return pd.Series(values, dtype=object).values
