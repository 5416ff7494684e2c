"""Shared parts of the importers: the import summary, caption helpers, label maps, path display."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medvlp.domains import DomainCard

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".bmp")

# Columns the importers write themselves; a metadata column with one of these names is renamed.
_RESERVED = ("image", "caption", "label", "group", "patient", "split", "concepts")
_MAX_LISTED = 20  # problems listed one by one before "... and N more"


# --------------------------------------------------------------------------------------------------
# Summary


@dataclass
class ImportSummary:
    """What an importer wrote and what it found wrong.

    Attributes:
        manifests: split name -> manifest written (``"all"`` for a single manifest without a fixed split).
        counts: split name -> label -> rows (each finding counted once for multi-label rows;
            ``"(no finding)"`` for multi-label rows with none).
        unknown_labels: labels the domain card does not know; their captions use the raw name.
        missing_images: image files named by the metadata but not found (those rows are not written).
        problems: one line per skipped item or other issue (empty folder, undecodable file name...).
        warnings: one line per thing the user should check (unknown labels, unmapped folders...).
        label_map: source class name -> label written (MedMNIST and HAM10000 imports).
        rows: split name -> rows written.
        notes: facts worth knowing that need no action (e.g. no test split in the file).
    """

    manifests: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_labels: list[str] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    label_map: dict[str, str] = field(default_factory=dict)

    rows: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        """Rows written over all manifests (multi-label rows counted once)."""
        return sum(self.rows.values())

    def format(self) -> str:
        """A short human-readable report: rows per split and label, then warnings and problems."""
        lines = []
        for split, counts in self.counts.items():
            where = self.manifests.get(split)
            head = f"{split}: {self.rows.get(split, sum(counts.values()))} rows"
            if where is not None:
                head += f" -> {where}"
            lines.append(head)
            for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {n:>7}  {label}")
        if len(self.manifests) > len(self.counts):
            for split, where in self.manifests.items():
                if split not in self.counts:
                    lines.append(f"{split}: manifest {where}")
        lines.extend(f"note: {n}" for n in self.notes)
        for w in self.warnings:
            lines.append(f"warning: {w}")
        if self.missing_images:
            lines.append(f"missing images: {len(self.missing_images)} (rows not written)")
            lines.extend(f"  {m}" for m in _clip_list(self.missing_images))
        for p in _clip_list(self.problems):
            lines.append(f"problem: {p}")
        return "\n".join(lines)


def _clip_list(items: Sequence[str], limit: int = _MAX_LISTED) -> list[str]:
    if len(items) <= limit:
        return list(items)
    return list(items[:limit]) + [f"... and {len(items) - limit} more"]


def _count_labels(labels: Iterable[Any]) -> dict[str, int]:
    c: Counter[str] = Counter()
    for lab in labels:
        if isinstance(lab, list):
            if not lab:
                c["(no finding)"] += 1
            c.update(str(x) for x in lab)
        else:
            c[str(lab)] += 1
    return dict(c)


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _relpath(path: Path, start: Path) -> str:
    """Path of an image relative to the manifest's folder, with '/' separators on every OS."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # different drives on Windows: fall back to an absolute path
        return path.resolve().as_posix()


def _template_captions(card: DomainCard, text: str) -> list[str]:
    return list(dict.fromkeys(t.format(text) for t in card.caption_templates))


def class_captions(card: DomainCard, label: str) -> tuple[list[str], bool]:
    """Captions for an image of class ``label`` and whether the card knows the label.

    Known labels get ``card.captions_for`` (templates x name and synonyms); unknown ones the card's
    templates filled with the raw label.
    """
    if card.find_label(label) is not None:
        return list(card.captions_for(label)), True
    return _template_captions(card, label), False


def _join_names(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _unknown_label_warning(card: DomainCard, labels: Sequence[str]) -> str:
    return (
        f"labels not in the '{card.name}' card: {', '.join(labels)}; their captions use the raw "
        f"label text (add them to the card, or pass a label map, for synonym captions and concept ids)"
    )
