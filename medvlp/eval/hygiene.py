"""Prompt hygiene: was an eval prompt a training caption?

A class seen at training time only as a label is *zero-shot* at evaluation; a class whose eval prompts
were verbatim training captions is *text-supervised* (the text tower was trained on exactly those
strings). Training writes ``captions.json`` into the run folder (:func:`write_caption_record`): the
card's caption templates the captions were made from (detected by matching) and a compact set of
hashes of the normalised unique captions. :func:`prompt_overlap` is then the share of the eval prompts
that are among them; ``eval zeroshot`` reports it.

Example:
    >>> rec = {"caption_hashes": [caption_hash("An H&E image of mucus.")]}
    >>> prompt_overlap(["an h&e image of  mucus", "a photo of mucus."], rec)
    0.5
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medvlp.domains import DomainCard
from medvlp.errors import DataError

__all__ = [
    "CAPTIONS_FILE",
    "caption_hash",
    "caption_record",
    "find_caption_record",
    "normalise_caption",
    "overlapping_prompts",
    "prompt_overlap",
    "read_caption_record",
    "write_caption_record",
]

CAPTIONS_FILE = "captions.json"
RECORD_VERSION = 1
_HASH_CHARS = 16  # 64 bits per caption: collisions are negligible for any caption corpus


def normalise_caption(text: str) -> str:
    """Lower case, whitespace folded, trailing ``.`` / ``;`` / ``,`` and spaces dropped."""
    return " ".join(str(text).lower().split()).rstrip(" .;,")


def caption_hash(text: str) -> str:
    """Short sha256 of the normalised caption (what a caption record stores)."""
    return hashlib.sha256(normalise_caption(text).encode()).hexdigest()[:_HASH_CHARS]


def _names(manifest: Any, card: DomainCard) -> list[str]:
    """Every name a caption template may have been filled with: the manifest's labels and the card's names."""
    names = dict.fromkeys(manifest.label_names())
    for lab in list(names):
        found = card.find_label(lab)
        names.update(dict.fromkeys(found.names if found else ()))
    for lset in card.label_sets.values():
        for lab in lset.labels:
            names.update(dict.fromkeys(lab.names))
    return [n for n in names if n]


def _matches(templates: Sequence[str], captions: set[str], names: Sequence[str]) -> dict[str, int]:
    """Per template, how many captions are exactly ``template.format(name)`` (normalised) for some name."""
    out = {}
    for t in dict.fromkeys(templates):
        n = len(captions & {normalise_caption(t.format(name)) for name in names}) if "{}" in t else 0
        if n:
            out[t] = n
    return out


def caption_record(manifest: Any, card: DomainCard) -> dict[str, Any]:
    """The caption record of a training manifest.

    Returns:
        ``{"version", "card", "manifest", "n_rows", "n_captions" (unique, normalised),
        "caption_templates": {template: n captions it matches} (the card's caption templates the
        captions were made from), "prompt_templates_in_captions": {template: n} (the card's *zero-shot*
        templates found in the captions: a leak), "n_templated" (captions matched by any of them),
        "caption_hashes": sorted short hashes}``.

    Raises:
        DataError: the manifest has no caption column or no caption at all.
    """
    if "caption" not in manifest.columns:
        raise DataError(f"{manifest.path}: no 'caption' column; a caption record needs the training captions")
    unique = sorted({normalise_caption(c) for i in range(len(manifest)) for c in manifest.captions(i)} - {""})
    if not unique:
        raise DataError(f"{manifest.path}: every caption is empty; nothing to record")
    names = _names(manifest, card)
    caps = set(unique)
    cap_t = _matches(list(card.caption_templates), caps, names)
    prompt_t = _matches(list(card.prompts.templates), caps, names)
    made = {normalise_caption(t.format(n)) for t in [*cap_t, *prompt_t] for n in names}
    n_templated = len(caps & made)
    return {
        "version": RECORD_VERSION,
        "card": card.name,
        "manifest": str(manifest.path) if manifest.path else None,
        "n_rows": len(manifest),
        "n_captions": len(unique),
        "caption_templates": cap_t,
        "prompt_templates_in_captions": prompt_t,
        "n_templated": n_templated,
        "caption_hashes": sorted({caption_hash(c) for c in unique}),
    }


def write_caption_record(run_dir: str | Path, manifest: Any, card: DomainCard) -> Path:
    """Write ``run_dir/captions.json`` (see :func:`caption_record`); returns its path."""
    p = Path(run_dir) / CAPTIONS_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(caption_record(manifest, card), indent=1))
    tmp.replace(p)
    return p


def read_caption_record(path: str | Path) -> dict[str, Any]:
    """Read a ``captions.json``.

    Raises:
        DataError: unreadable, not JSON, or no ``caption_hashes`` list (the message says to re-train or delete it).
    """
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: not a readable caption record ({e}); delete it or re-train to rewrite it") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("caption_hashes"), list):
        raise DataError(f"{p}: a caption record needs a 'caption_hashes' list; delete it or re-train to rewrite it")
    return rec


def find_caption_record(source: str | Path | None) -> Path | None:
    """``captions.json`` of a model's run folder: in ``source`` or, for a run's ``model/`` folder, beside it."""
    if not source:
        return None
    s = str(source)
    s = s[len("local-dir:"):] if s.startswith("local-dir:") else s
    p = Path(s).expanduser()
    if not p.is_dir():
        return None
    for cand in (p / CAPTIONS_FILE, p.parent / CAPTIONS_FILE if p.name == "model" else None):
        if cand is not None and cand.is_file():
            return cand
    return None


def _flat(prompts: Sequence[str] | Mapping[str, Sequence[str]]) -> list[str]:
    items: Iterable[str] = (p for ps in prompts.values() for p in ps) if isinstance(prompts, Mapping) else prompts
    return list(dict.fromkeys(normalise_caption(p) for p in items))


def overlapping_prompts(prompts: Sequence[str] | Mapping[str, Sequence[str]], record: Mapping[str, Any]) -> list[str]:
    """The (normalised, unique) eval prompts that are training captions of ``record``."""
    hashes = set(record.get("caption_hashes", ()))
    return [p for p in _flat(prompts) if caption_hash(p) in hashes]


def prompt_overlap(prompts: Sequence[str] | Mapping[str, Sequence[str]], record: Mapping[str, Any]) -> float:
    """Share of the unique (normalised) eval prompts that are verbatim training captions (0 = clean).

    ``prompts`` is a list, or ``{label: [prompts]}`` as :attr:`ZeroShotClassifier.prompts`.
    """
    flat = _flat(prompts)
    if not flat:
        return 0.0
    return len(overlapping_prompts(flat, record)) / len(flat)
