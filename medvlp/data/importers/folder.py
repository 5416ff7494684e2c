"""Folder import: one subfolder per class (ImageNet style), optionally one file per channel."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from medvlp.data.importers.common import (
    IMAGE_EXTENSIONS,
    ImportSummary,
    _count_labels,
    _relpath,
    _unknown_label_warning,
    class_captions,
)
from medvlp.data.manifest import check_out_manifest, write_manifest
from medvlp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medvlp.domains import DomainCard

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Folder import


def _load_label_map(label_map: Mapping[str, str] | str | Path | None) -> dict[str, str] | None:
    if label_map is None:
        return None
    where = "label map"
    if isinstance(label_map, str | Path):
        p = Path(label_map)
        where = f"label map {p}"
        if not p.is_file():
            raise ConfigError(f'{where} does not exist; give a JSON file {{"folder_name": "label name"}}')
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(
                f'{where}: not valid JSON ({e}); expected {{"folder_name": "label name"}}'
            ) from e
    else:
        raw = dict(label_map)
    if not isinstance(raw, dict):
        raise ConfigError(
            f'{where}: expected a JSON object {{"folder_name": "label name"}}, got {type(raw).__name__}'
        )
    bad = [k for k, v in raw.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ConfigError(f"{where}: entries {bad} must map to a non-empty label name")
    return {str(k): v.strip() for k, v in raw.items()}


def _show(path: str | Path) -> str:
    """A path as printable text: undecodable bytes shown as escapes instead of crashing the print."""
    text = str(path)
    return text if _name_ok(text) else repr(os.fsencode(text))[2:-1]


def _name_ok(name: str) -> bool:
    """False for names with bytes that are not UTF-8 (surrogate escapes) or line breaks."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\n" not in name and "\r" not in name


def import_folder(
    root: str | Path,
    *,
    card: DomainCard,
    out_manifest: str | Path,
    label_map: Mapping[str, str] | str | Path | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    channel_pattern: str | None = None,
) -> ImportSummary:
    r"""Write a manifest for a folder with one subfolder per class.

    Images are found recursively inside each class folder (extensions compared case-insensitively),
    in sorted order, so the same folder always gives the same manifest.

    Args:
        root: folder whose subfolders are the classes; hidden folders (``.name``) are ignored.
        card: domain card giving the caption templates and known labels.
        out_manifest: manifest to write (``.csv``, ``.jsonl`` or ``.parquet``); image paths are
            written relative to its folder.
        label_map: folder name -> label name (a mapping or a JSON file). Folders without an entry
            use their own name with underscores turned into spaces.
        extensions: image file endings to include.
        channel_pattern: for microscopy with one file per channel: a regular expression with a
            named group ``channel`` searched in each file name (e.g. ``r"d(?P<channel>\d)\.tif$"`` for
            ``D03f00d0.tif``, ``D03f00d1.tif``, ...). Files whose names differ only in that group
            become one row whose ``image`` joins them with ``;`` in channel order (read with the
            card's ``multichannel`` reader), with a ``channels`` column listing the channel ids.
            Sets missing a channel are skipped and listed in ``problems``; files the pattern does
            not match stay single-file rows.

    Returns:
        The summary; ``counts["all"]`` holds rows per label.

    Raises:
        DataError: ``root`` is missing, has no class folders, or no images at all.
        ConfigError: a bad label map (not JSON, or keys that are not folders), or a channel pattern
            that is not a valid regular expression with a ``channel`` group.
    """
    root = Path(root)
    out = check_out_manifest(out_manifest)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    mapping = _load_label_map(label_map)
    channel_re = _compile_channel_pattern(channel_pattern)
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    summary = ImportSummary()

    class_dirs, loose = [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if not _name_ok(entry.name):
                summary.problems.append(
                    f"{_show(root / entry.name)}: folder name is not valid UTF-8; skipped, rename it"
                )
                continue
            class_dirs.append(entry.name)
        elif Path(entry.name).suffix.lower() in exts:
            loose.append(entry.name)
    if loose:
        summary.problems.append(
            f"{len(loose)} image(s) directly under {root} ignored (e.g. {_show(loose[0])}): images must be inside "
            f"one subfolder per class"
        )
    if not class_dirs:
        raise DataError(
            f"{root} has no class subfolders; expected one subfolder per class (e.g. {root}/normal/)"
        )
    if mapping is not None:
        unknown = sorted(set(mapping) - set(class_dirs))
        if unknown:
            raise ConfigError(
                f"label map keys {unknown} are not folders of {root}; its folders are: {', '.join(class_dirs)}"
            )
        unmapped = [d for d in class_dirs if d not in mapping]
        if unmapped:
            summary.warnings.append(
                f"folders without a label-map entry use their folder name: {', '.join(unmapped)}"
            )

    rows: list[dict[str, Any]] = []
    unknown_labels: list[str] = []
    for folder in class_dirs:
        label = (
            mapping[folder] if mapping and folder in mapping else " ".join(folder.replace("_", " ").split())
        )
        lab = card.find_label(label)
        group = lab.concept if lab is not None else label
        files: list[Path] = []
        skipped_ext = 0
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in filenames:
                if fname.startswith("."):
                    continue
                fpath = Path(dirpath) / fname
                if Path(fname).suffix.lower() not in exts:
                    skipped_ext += 1
                    continue
                if not _name_ok(fname) or not _name_ok(str(fpath)):
                    summary.problems.append(
                        f"{_show(fpath)}: file name is not valid UTF-8 (or has a line break); skipped, rename it"
                    )
                    continue
                try:
                    if fpath.stat().st_size == 0:
                        summary.problems.append(f"{fpath}: empty file (0 bytes); skipped")
                        continue
                except OSError as e:  # broken symlink, permission
                    summary.problems.append(f"{fpath}: cannot be read ({e.strerror}); skipped")
                    continue
                files.append(fpath)
        if skipped_ext:
            summary.problems.append(
                f"{root / folder}: {skipped_ext} file(s) without an image extension ({', '.join(sorted(exts))}) ignored"
            )
        if not files:
            summary.problems.append(f"{root / folder}: no images; class '{label}' has no rows")
            continue
        files.sort(key=lambda p: p.relative_to(root).as_posix())
        captions, known = class_captions(card, label)
        if not known and label not in unknown_labels:
            unknown_labels.append(label)
        cap = json.dumps(captions, ensure_ascii=False)
        samples = (
            _group_channels(files, channel_re, summary.problems)
            if channel_re is not None
            else [([f], None) for f in files]
        )
        for paths, channel_ids in samples:
            row: dict[str, Any] = {
                "image": ";".join(_relpath(f, out.parent) for f in paths),
                "caption": cap,
                "label": label,
                "group": group,
                "folder": folder,
            }
            if channel_re is not None:
                row["channels"] = json.dumps(channel_ids) if channel_ids is not None else None
            rows.append(row)
    if not rows:
        raise DataError(f"no images found under {root} (extensions {', '.join(sorted(exts))})")
    if unknown_labels:
        msg = _unknown_label_warning(card, unknown_labels)
        summary.warnings.insert(0, msg)
        log.warning(msg)
    summary.unknown_labels = unknown_labels
    df = pd.DataFrame(rows)
    summary.manifests["all"] = write_manifest(df, out)
    summary.counts["all"] = _count_labels(df["label"])
    summary.rows["all"] = len(df)
    return summary


def _compile_channel_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"channel pattern {pattern!r} is not a valid regular expression ({e})") from e
    if "channel" not in regex.groupindex:
        raise ConfigError(
            f"channel pattern {pattern!r} needs a named group 'channel', e.g. r'd(?P<channel>\\d)\\.tif$'"
        )
    return regex


def _channel_key(ch: str) -> tuple[int, int | str]:
    """Numeric channel ids in numeric order (d2 before d10), others by name after them."""
    return (0, int(ch)) if ch.isdigit() else (1, ch)


def _group_channels(
    files: Sequence[Path], regex: re.Pattern[str], problems: list[str]
) -> list[tuple[list[Path], list[str] | None]]:
    """Per-channel files -> one sample per field of view: ``(files in channel order, channel ids)``.

    Files whose names differ only in the ``channel`` group (and sit in the same folder) belong
    together. The channel set seen most often is expected; a set with other channels is skipped.
    """
    sets: dict[tuple[str, str], dict[str, Path]] = {}
    samples: list[tuple[list[Path], list[str] | None]] = []
    for f in files:
        m = regex.search(f.name)
        if m is None or m.group("channel") is None:
            samples.append(([f], None))
            continue
        rest = f.name[: m.start("channel")] + "\0" + f.name[m.end("channel") :]
        sets.setdefault((str(f.parent), rest), {})[m.group("channel")] = f
    if not sets:
        return samples
    shapes = Counter(tuple(sorted(chans, key=_channel_key)) for chans in sets.values())
    expected = max(shapes, key=lambda k: (shapes[k], len(k)))
    for chans in sets.values():
        have = tuple(sorted(chans, key=_channel_key))
        if have != expected:
            first = chans[have[0]]
            problems.append(
                f"{first}: channels {list(have)} but the other fields of view have {list(expected)}; skipped"
            )
            continue
        samples.append(([chans[c] for c in have], list(have)))
    samples.sort(key=lambda s: s[0][0].as_posix())
    return samples
