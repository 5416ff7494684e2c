"""Turn common dataset layouts into medvlp manifests with captions from a domain card.

Three importers, each returning an :class:`ImportSummary`:

- :func:`import_folder`: one subfolder per class (ImageNet style).
- :func:`import_medmnist`: a MedMNIST v2 ``.npz`` (2D sets, any resolution) to PNGs plus
  ``train.csv`` / ``val.csv`` / ``test.csv``.
- :func:`import_ham10000`: HAM10000-style dermatology metadata (diagnosis, body site, age, sex,
  optional skin type), split by lesion/patient so no lesion lands in two splits.

Manifests follow DESIGN.md: ``image`` relative to the manifest's folder, ``caption`` a JSON list of
texts, ``label`` a class name (a JSON list for multi-label rows), then ``group``/``patient``/``split``
and metadata columns.

Example:
    >>> from medvlp.domains import load_card
    >>> from medvlp.data.importers import import_folder
    >>> summary = import_folder("images/", card=load_card("pathology"), out_manifest="data/train.csv")  # doctest: +SKIP
    >>> print(summary.format())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medvlp.data.splits import group_split
from medvlp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medvlp.domains import DomainCard, Label

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".bmp")
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".parquet")
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


def _check_out_manifest(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--out {p} is a folder; give a manifest file name such as {p / 'manifest.csv'}")
    if p.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ConfigError(f"--out {p}: manifest must end in one of {', '.join(MANIFEST_SUFFIXES)}")
    return p


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest (CSV, JSONL or Parquet by suffix) atomically: a crash never leaves half a file.

    List-valued cells (captions, multi-label labels) must already be JSON text, so the three formats
    hold the same strings.
    """
    p = _check_out_manifest(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        elif suffix == ".jsonl":
            # Written by hand: pandas escapes "/" in paths as "\\/", valid JSON but unreadable.
            clean = df.astype(object).where(df.notna(), None)
            with open(tmp, "w", encoding="utf-8") as fh:
                for rec in clean.to_dict("records"):
                    fh.write(json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n")
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy ints/floats in metadata columns
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a JSONL manifest")


def _relpath(path: Path, start: Path) -> str:
    """Path of an image relative to the manifest's folder, with '/' separators on every OS."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # different drives on Windows: fall back to an absolute path
        return path.resolve().as_posix()


def _template_captions(card: DomainCard, text: str) -> list[str]:
    return list(dict.fromkeys(t.format(text) for t in card.prompts.templates))


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
    out = _check_out_manifest(out_manifest)
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
            row = {
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


# --------------------------------------------------------------------------------------------------
# MedMNIST

# Class names of the MedMNIST v2 2D sets, exactly as MedMNIST's INFO gives them (index -> name).
MEDMNIST_LABELS: dict[str, list[str]] = {
    "pathmnist": [
        "adipose",
        "background",
        "debris",
        "lymphocytes",
        "mucus",
        "smooth muscle",
        "normal colon mucosa",
        "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium",
    ],
    "chestmnist": [
        "atelectasis",
        "cardiomegaly",
        "effusion",
        "infiltration",
        "mass",
        "nodule",
        "pneumonia",
        "pneumothorax",
        "consolidation",
        "edema",
        "emphysema",
        "fibrosis",
        "pleural",
        "hernia",
    ],
    "dermamnist": [
        "actinic keratoses and intraepithelial carcinoma",
        "basal cell carcinoma",
        "benign keratosis-like lesions",
        "dermatofibroma",
        "melanoma",
        "melanocytic nevi",
        "vascular lesions",
    ],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["0", "1", "2", "3", "4"],
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": [
        "basophil",
        "eosinophil",
        "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    ],
    "tissuemnist": [
        "Collecting Duct, Connecting Tubule",
        "Distal Convoluted Tubule",
        "Glomerular endothelial cells",
        "Interstitial endothelial cells",
        "Leukocytes",
        "Podocytes",
        "Proximal Tubule Segments",
        "Thick Ascending Limb",
    ],
}
for _organ_flag in ("organamnist", "organcmnist", "organsmnist"):
    MEDMNIST_LABELS[_organ_flag] = [
        "bladder",
        "femur-left",
        "femur-right",
        "heart",
        "kidney-left",
        "kidney-right",
        "liver",
        "lung-left",
        "lung-right",
        "pancreas",
        "spleen",
    ]
MULTILABEL_MEDMNIST = frozenset({"chestmnist"})

# Label text written when the card has no matching label: MedMNIST's own names where they read well
# in a caption, otherwise the clinical name (RetinaMNIST's INFO names are bare grades "0".."4";
# ChestMNIST's "pleural" is NIH ChestX-ray14's Pleural_Thickening).
_READABLE: dict[str, dict[str, str]] = {
    "chestmnist": {"effusion": "pleural effusion", "pleural": "pleural thickening"},
    "retinamnist": {
        "0": "no diabetic retinopathy",
        "1": "mild non-proliferative diabetic retinopathy",
        "2": "moderate non-proliferative diabetic retinopathy",
        "3": "severe non-proliferative diabetic retinopathy",
        "4": "proliferative diabetic retinopathy",
    },
    "breastmnist": {"normal, benign": "normal or benign"},
    "bloodmnist": {
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)": "immature granulocytes (myelocytes, metamyelocytes and promyelocytes)",
    },
    "tissuemnist": {
        "Collecting Duct, Connecting Tubule": "collecting duct or connecting tubule",
        "Distal Convoluted Tubule": "distal convoluted tubule",
        "Glomerular endothelial cells": "glomerular endothelial cells",
        "Interstitial endothelial cells": "interstitial endothelial cells",
        "Leukocytes": "leukocytes",
        "Podocytes": "podocytes",
        "Proximal Tubule Segments": "proximal tubule segments",
        "Thick Ascending Limb": "thick ascending limb",
    },
    **{
        f: {
            "femur-left": "left femur",
            "femur-right": "right femur",
            "kidney-left": "left kidney",
            "kidney-right": "right kidney",
            "lung-left": "left lung",
            "lung-right": "right lung",
        }
        for f in ("organamnist", "organcmnist", "organsmnist")
    },
}

# Extra names tried against the card (after the readable and the original name), so that evaluation
# labels match the card's label set: MedMNIST uses plurals and dataset-specific wording.
_CARD_ALIASES: dict[str, dict[str, list[str]]] = {
    "dermamnist": {
        "actinic keratoses and intraepithelial carcinoma": ["actinic keratosis", "actinic keratoses"],
        "benign keratosis-like lesions": ["benign keratosis", "benign keratosis-like lesion"],
        "melanocytic nevi": ["melanocytic nevus", "nevus"],
        "vascular lesions": ["vascular lesion"],
    },
    "pathmnist": {
        "adipose": ["adipose tissue"],
        "lymphocytes": ["lymphocyte"],
        "normal colon mucosa": ["normal mucosa", "colon mucosa"],
        "cancer-associated stroma": ["tumor stroma", "cancer associated stroma"],
        "colorectal adenocarcinoma epithelium": ["tumor epithelium", "colorectal adenocarcinoma"],
    },
    "chestmnist": {
        "effusion": ["pleural effusion"],
        "pleural": ["pleural thickening"],
        "edema": ["pulmonary edema"],
        "mass": ["lung mass", "pulmonary mass"],
        "nodule": ["lung nodule", "pulmonary nodule"],
        "infiltration": ["infiltrate"],
    },
    "bloodmnist": {
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)": [
            "immature granulocyte",
            "immature granulocytes",
        ],
    },
    "octmnist": {"choroidal neovascularization": ["CNV"], "diabetic macular edema": ["DME"]},
    "breastmnist": {"normal, benign": ["normal or benign"]},
    "retinamnist": {
        "0": ["no apparent retinopathy", "no DR"],
        "4": ["PDR"],
    },
}
# Names tried for a ChestMNIST row with no finding, for its captions.
_NO_FINDING_NAMES = ("no finding", "normal")


def medmnist_flags() -> list[str]:
    """The MedMNIST 2D dataset names with built-in class names."""
    return sorted(MEDMNIST_LABELS)


def infer_medmnist_flag(path: str | Path) -> str:
    """MedMNIST dataset name from a file name: ``pneumoniamnist_224.npz`` -> ``pneumoniamnist``.

    Raises:
        ConfigError: the name does not start with a known 2D dataset name (or names a 3D set).
    """
    stem = Path(path).name.lower()
    m = re.match(r"([a-z]+mnist)(3d)?", stem)
    if m and m.group(2):
        raise ConfigError(f"{path}: 3D MedMNIST volumes ({m.group(0)}) are not supported; use a 2D set")
    if m and m.group(1) in MEDMNIST_LABELS:
        return m.group(1)
    raise ConfigError(
        f"cannot tell the MedMNIST dataset from the file name {Path(path).name}; pass --flag with one of: "
        f"{', '.join(medmnist_flags())}"
    )


def _match_card_label(card: DomainCard, candidates: Iterable[str]) -> Label | None:
    for name in candidates:
        lab = card.find_label(name)
        if lab is not None:
            return lab
    return None


def medmnist_label_names(flag: str, card: DomainCard | None = None) -> tuple[list[str], list[str]]:
    """Labels written for each MedMNIST class index, mapped to the card's labels where it has them.

    Two classes that would map to the same card label keep their own names instead (merging classes
    would silently change the task).

    Returns:
        (labels, unmapped): the label per class index, and the MedMNIST names the card does not know.
    """
    if flag not in MEDMNIST_LABELS:
        raise ConfigError(f"unknown MedMNIST flag '{flag}'; known: {', '.join(medmnist_flags())}")
    originals = MEDMNIST_LABELS[flag]
    readable = [_READABLE.get(flag, {}).get(o, o) for o in originals]
    if card is None:
        return readable, list(originals)
    matched: list[Label | None] = []
    for orig, read in zip(originals, readable, strict=True):
        cands = [read, orig, *_CARD_ALIASES.get(flag, {}).get(orig, [])]
        matched.append(_match_card_label(card, cands))
    hits = Counter(lab.name for lab in matched if lab is not None)
    labels, unmapped = [], []
    for orig, read, lab in zip(originals, readable, matched, strict=True):
        if lab is not None and hits[lab.name] == 1:
            labels.append(lab.name)
        else:
            if lab is not None:
                log.warning(
                    "MedMNIST %s: several classes match card label '%s'; keeping '%s'", flag, lab.name, read
                )
            labels.append(read)
            unmapped.append(orig)
    return labels, unmapped


def _to_uint8(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.number):
        raise DataError(f"{where}: images have dtype {images.dtype}; expected uint8")
    arr = images.astype(np.float64)
    if np.issubdtype(images.dtype, np.floating) and arr.size and np.nanmax(arr) <= 1.0:
        arr = arr * 255.0  # float images in [0, 1]
    return np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)


def import_medmnist(
    npz_path: str | Path,
    *,
    card: DomainCard,
    out_dir: str | Path,
    flag: str | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> ImportSummary:
    """Convert a MedMNIST v2 ``.npz`` into PNG files and per-split manifests.

    Writes ``out_dir/images/<split>/<idx>.png`` (grayscale sets as L-mode PNG, colour sets as RGB)
    and ``train.csv``, ``val.csv`` and, when the file has a test split, ``test.csv``. Each row has
    ``image``, ``caption`` (JSON list from the card's templates), ``label`` (the card's label name
    where the card has the class, else the MedMNIST name), ``split``, ``group`` (concept id, or the
    label when the card lacks it), ``medmnist_label`` (MedMNIST's own class name) and
    ``medmnist_index``.

    ChestMNIST is multi-label: ``label`` is a JSON list of the findings present. A row with no
    finding gets an empty list ``[]`` (all 14 findings negative) rather than a made-up "No Finding"
    class, so the label set stays the 14 findings; its captions describe "no finding".

    Args:
        npz_path: the ``.npz`` with ``train_images``/``train_labels``, ``val_*`` and optionally ``test_*``.
        card: domain card for captions and label names.
        out_dir: output folder (created).
        flag: MedMNIST dataset name; inferred from the file name when None.
        progress: show a tqdm progress bar.
        limit: write only the first ``limit`` images of each split (a quick trial of the pipeline).

    Raises:
        DataError: missing/unreadable file, missing keys, or labels that do not fit the dataset.
        ConfigError: unknown flag.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    npz_path = Path(npz_path)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1 image per split, got {limit}")
    if not npz_path.is_file():
        raise DataError(f"MedMNIST file {npz_path} does not exist")
    flag = (flag or infer_medmnist_flag(npz_path)).lower()
    if flag not in MEDMNIST_LABELS:
        raise ConfigError(f"unknown MedMNIST flag '{flag}'; known: {', '.join(medmnist_flags())}")
    try:
        data = np.load(npz_path, allow_pickle=False)
        keys = set(data.files)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{npz_path}: not a readable .npz file ({e})") from e
    splits = [s for s in ("train", "val", "test") if f"{s}_images" in keys]
    missing = [k for s in ("train", "val") for k in (f"{s}_images", f"{s}_labels") if k not in keys]
    missing += [f"{s}_labels" for s in splits if f"{s}_labels" not in keys]
    if missing:
        raise DataError(f"{npz_path}: missing arrays {sorted(set(missing))}; found {sorted(keys)}")

    originals = MEDMNIST_LABELS[flag]
    n_classes = len(originals)
    multilabel = flag in MULTILABEL_MEDMNIST
    labels, unmapped = medmnist_label_names(flag, card)
    concepts = []
    for lab in labels:
        hit = card.find_label(lab)
        concepts.append(hit.concept if hit is not None else lab)
    summary = ImportSummary(label_map=dict(zip(originals, labels, strict=True)))
    if unmapped:
        readable = [labels[originals.index(o)] for o in unmapped]
        summary.unknown_labels = readable
        msg = _unknown_label_warning(card, readable)
        summary.warnings.append(msg)
        log.warning(msg)

    class_caps = [class_captions(card, lab)[0] for lab in labels]
    no_finding = _match_card_label(card, _NO_FINDING_NAMES)
    empty_caps = (
        card.captions_for(no_finding.name)
        if no_finding is not None
        else _template_captions(card, _NO_FINDING_NAMES[0])
    )

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in splits:
        where = f"{npz_path} [{split}]"
        try:
            images = _to_uint8(np.asarray(data[f"{split}_images"]), where)
            y = np.asarray(data[f"{split}_labels"])
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:  # truncated or corrupt member
            raise DataError(f"{where}: arrays cannot be read ({e}); the file may be truncated") from e
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise DataError(f"{where}: images have shape {images.shape}; expected (N, H, W) or (N, H, W, 3)")
        if len(y) != len(images):
            raise DataError(f"{where}: {len(images)} images but {len(y)} labels")
        if multilabel:
            y = y.reshape(len(y), -1)
            if y.shape[1] != n_classes or not np.isin(y, (0, 1)).all():
                raise DataError(
                    f"{where}: {flag} labels must be 0/1 with {n_classes} columns, got shape {y.shape}"
                )
        else:
            y = y.reshape(len(y), -1)
            if y.shape[1] != 1:
                raise DataError(f"{where}: expected one label per image, got shape {y.shape}")
            y = y[:, 0].astype(np.int64)
            bad = np.flatnonzero((y < 0) | (y >= n_classes))
            if bad.size:
                raise DataError(
                    f"{where}: label {int(y[bad[0]])} at index {int(bad[0])} is outside 0..{n_classes - 1} "
                    f"for {flag}; check the flag (--flag)"
                )
        if limit is not None:
            images, y = images[:limit], y[:limit]
        arrays[split] = (images, y)
    data.close()

    out_dir = Path(out_dir)
    total = sum(len(a[0]) for a in arrays.values())
    bar = tqdm(total=total, desc=f"{flag} -> PNG", unit="img", disable=not progress)
    for split, (images, y) in arrays.items():
        img_dir = out_dir / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        for idx in range(len(images)):
            Image.fromarray(np.ascontiguousarray(images[idx])).save(img_dir / f"{idx}.png")
            row: dict[str, Any] = {"image": f"images/{split}/{idx}.png"}
            if multilabel:
                present = [int(k) for k in np.flatnonzero(y[idx])]
                names = [labels[k] for k in present]
                caps = (
                    list(dict.fromkeys(t.format(_join_names(names)) for t in card.prompts.templates))
                    if len(names) > 1
                    else class_caps[present[0]]
                    if names
                    else list(empty_caps)
                )
                row.update(
                    caption=json.dumps(caps, ensure_ascii=False),
                    label=names,
                    split=split,
                    medmnist_label=json.dumps([originals[k] for k in present]),
                    medmnist_index=json.dumps(present),
                )
            else:
                k = int(y[idx])
                row.update(
                    caption=json.dumps(class_caps[k], ensure_ascii=False),
                    label=labels[k],
                    split=split,
                    group=concepts[k],
                    medmnist_label=originals[k],
                    medmnist_index=k,
                )
            rows.append(row)
            bar.update(1)
        df = pd.DataFrame(rows)
        summary.counts[split] = _count_labels(df["label"])
        summary.rows[split] = len(df)
        if multilabel:
            df["label"] = [json.dumps(v, ensure_ascii=False) for v in df["label"]]
        summary.manifests[split] = write_manifest(df, out_dir / f"{split}.csv")
    bar.close()
    if "test" not in arrays:
        summary.notes.append(f"{npz_path.name} has no test split; no test.csv written")
    return summary


# --------------------------------------------------------------------------------------------------
# HAM10000-style dermatology metadata

# HAM10000 diagnosis codes -> label names (matched against the card's labels and synonyms).
HAM10000_DX: dict[str, str] = {
    "akiec": "actinic keratosis",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
_DX_TYPE_PHRASE = {
    "histo": "confirmed by histopathology",
    "follow_up": "diagnosed by follow-up examination",
    "consensus": "diagnosed by expert consensus",
    "confocal": "confirmed by in-vivo confocal microscopy",
}
_SITE_PHRASE = {"acral": "on acral skin", "genital": "in the genital area"}
_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
_DDI_TONE = {12: "I-II", 34: "III-IV", 56: "V-VI"}  # DDI's skin_tone groups Fitzpatrick types in pairs
_HAM_REQUIRED = ("lesion_id", "image_id", "dx")


def _clean(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    s = str(value).strip()
    return "" if s.lower() in ("", "nan", "none", "unknown") else s


# Skin-type columns of common dermatology datasets: Fitzpatrick17k `fitzpatrick_scale` (1-6, -1 unknown),
# PAD-UFES-20 `fitspatrick` (sic), SCIN-style `fitzpatrick_skin_type`/`fitzpatrick`, DDI `skin_tone`.
_FITZPATRICK_COLUMNS = ("fitzpatrick", "fitzpatrick_scale", "fitzpatrick_skin_type", "fitspatrick")
_SKIN_TONE_COLUMNS = (*_FITZPATRICK_COLUMNS, "skin_tone")
FITZPATRICK_COLUMN = "fitzpatrick_type"  # normalised skin type written by import_ham10000


def _skin_type(row: Mapping[str, Any]) -> str:
    """Fitzpatrick type as Roman numerals (``"III"``, or ``"I-II"`` for DDI's pairs), ``""`` if unknown."""
    for key in _SKIN_TONE_COLUMNS:
        raw = _clean(row.get(key))
        if not raw:
            continue
        roman = raw.upper().removeprefix("FST").removeprefix("TYPE").strip()
        if roman in _ROMAN.values():
            return roman
        try:
            val = int(float(raw))
        except ValueError:
            continue
        table = _DDI_TONE if key == "skin_tone" else _ROMAN
        if val in table:  # -1 (unknown in Fitzpatrick17k) and other codes fall through
            return table[val]
    return ""


def ham_captions(
    card: DomainCard, label: str, row: Mapping[str, Any], modality: str = "dermoscopy"
) -> list[str]:
    """Captions for one HAM10000-style row: metadata-rich sentences first, then the card's templates.

    Example: ``"dermoscopy image of melanoma on the back of a 45-year-old male"``,
    ``"melanoma on the back, confirmed by histopathology"``,
    ``"dermoscopy image of melanoma in a patient with Fitzpatrick skin type III"``.
    """
    site = _clean(row.get("localization")).lower()
    site_phrase = f" {_SITE_PHRASE.get(site, f'on the {site}')}" if site else ""
    age_txt = _clean(row.get("age"))
    try:
        age = float(age_txt) if age_txt else math.nan
    except ValueError:
        age = math.nan
    # Age 0 in HAM10000 marks infants or a missing value; neither reads well as "0-year-old".
    age_phrase = f"{int(round(age))}-year-old" if not math.isnan(age) and age >= 1 else ""
    sex = _clean(row.get("sex")).lower()
    sex = sex if sex in ("male", "female") else ""
    if age_phrase and sex:
        who = f" of a {age_phrase} {sex}"
    elif age_phrase:
        who = f" of a {age_phrase} patient"
    elif sex:
        who = f" of a {sex} patient"
    else:
        who = ""
    caps = [f"{modality} image of {label}{site_phrase}{who}"]
    how = _DX_TYPE_PHRASE.get(_clean(row.get("dx_type")).lower(), "")
    if site_phrase or how:
        caps.append(f"{label}{site_phrase}" + (f", {how}" if how else ""))
    skin = _skin_type(row)
    if skin:
        caps.append(f"{modality} image of {label} in a patient with Fitzpatrick skin type {skin}")
    caps.extend(class_captions(card, label)[0])
    return list(dict.fromkeys(caps))


def _index_images(image_dirs: Sequence[Path], exts: set[str]) -> tuple[dict[str, Path], list[str]]:
    index: dict[str, Path] = {}
    dupes: list[str] = []
    for d in image_dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames.sort()
            for fname in sorted(filenames):
                p = Path(dirpath) / fname
                if p.suffix.lower() not in exts or fname.startswith("."):
                    continue
                if p.stem in index:
                    dupes.append(f"{p} (also {index[p.stem]}; the first is used)")
                    continue
                index[p.stem] = p
    return index, dupes


def import_ham10000(
    metadata_csv: str | Path,
    image_dirs: str | Path | Sequence[str | Path],
    *,
    card: DomainCard,
    out_manifest: str | Path,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    dx_map: Mapping[str, str] | None = None,
    modality: str = "dermoscopy",
) -> ImportSummary:
    """Import HAM10000-style dermatology metadata into one manifest with a lesion-disjoint split.

    The metadata has ``lesion_id, image_id, dx`` and optionally ``dx_type, age, sex, localization``,
    ``fitzpatrick_scale`` (1-6, -1 unknown) or DDI ``skin_tone`` (12/34/56), and ``patient_id``.
    Each image ``<image_id>.jpg`` (or another image extension) is looked up in ``image_dirs``
    (searched recursively; HAM10000 ships in two folders).

    Columns written: ``image``, ``caption`` (JSON list: metadata sentences plus the card's template
    captions), ``label`` (card label for ``dx``), ``group`` (the label's concept id), ``patient``
    (``patient_id`` when the metadata has it, else ``lesion_id``), ``split`` (whole patients/lesions
    per split, stratified by label), then every metadata column (a metadata column named like one of
    these is kept as ``meta_<name>``). When the metadata has a skin-type column (``fitzpatrick_scale``,
    ``fitzpatrick``, ``fitspatrick``, ``fitzpatrick_skin_type`` or DDI ``skin_tone``), a normalised
    ``fitzpatrick_type`` column (``"I"``..``"VI"``, ``"I-II"``.. for DDI, empty when unknown) is added
    for fairness analyses; the original column is kept too.

    Args:
        metadata_csv: the metadata CSV.
        image_dirs: one folder or several.
        card: domain card (normally ``dermatology``).
        out_manifest: manifest to write; image paths relative to its folder.
        seed: seed of the split.
        val_fraction: fraction of rows (approximately, whole lesions) for validation.
        test_fraction: fraction for test.
        dx_map: extra or replacement ``dx`` code -> label name entries (e.g. ``{"scc": "squamous cell carcinoma"}``).
        modality: imaging modality word used in captions ("dermoscopy", "clinical").

    Returns:
        The summary; rows whose image is missing are listed in ``missing_images`` and not written.

    Raises:
        DataError: missing file/folder or columns, unknown ``dx`` codes, or no image found at all.
        ConfigError: fractions outside [0, 1) or summing to 1 or more.
    """
    metadata_csv = Path(metadata_csv)
    out = _check_out_manifest(out_manifest)
    dirs = [Path(image_dirs)] if isinstance(image_dirs, str | Path) else [Path(d) for d in image_dirs]
    if not dirs:
        raise ConfigError("give at least one image folder (--images DIR)")
    if not metadata_csv.is_file():
        raise DataError(f"metadata file {metadata_csv} does not exist")
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"image folder {d} does not exist or is not a folder")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    try:
        meta = pd.read_csv(metadata_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{metadata_csv}: not a readable CSV ({e})") from e
    meta.columns = [str(c).strip() for c in meta.columns]
    missing_cols = [c for c in _HAM_REQUIRED if c not in meta.columns]
    if missing_cols:
        raise DataError(f"{metadata_csv}: missing columns {missing_cols}; found {list(meta.columns)}")
    if meta.empty:
        raise DataError(f"{metadata_csv}: no rows")

    dx_names = {**HAM10000_DX, **{k.lower(): v for k, v in (dx_map or {}).items()}}
    dx = meta["dx"].str.strip().str.lower()
    unknown = sorted(set(dx) - set(dx_names))
    if unknown:
        where = {c: int(np.flatnonzero(dx.to_numpy() == c)[0]) + 2 for c in unknown}  # +2: header, 1-based
        detail = ", ".join(f"'{c}' ({int((dx == c).sum())} rows, first on line {where[c]})" for c in unknown)
        raise DataError(
            f"{metadata_csv}: unknown dx codes {detail}; known: {', '.join(sorted(dx_names))} "
            f"(pass dx_map to add codes)"
        )
    summary = ImportSummary()
    label_of: dict[str, str] = {}
    concept_of: dict[str, str] = {}
    unknown_labels: list[str] = []
    for code in sorted(set(dx)):
        base = dx_names[code]
        lab = card.find_label(base) or card.find_label(code)
        label_of[code] = lab.name if lab is not None else base
        concept_of[code] = lab.concept if lab is not None else base
        if lab is None:
            unknown_labels.append(base)
    summary.label_map = {c: label_of[c] for c in sorted(label_of)}
    if unknown_labels:
        summary.unknown_labels = unknown_labels
        msg = _unknown_label_warning(card, unknown_labels)
        summary.warnings.append(msg)
        log.warning(msg)

    exts = set(IMAGE_EXTENSIONS)
    index, dupes = _index_images(dirs, exts)
    summary.problems.extend(f"duplicate image file name {d}" for d in dupes)

    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    renamed = {c: (f"meta_{c}" if c in _RESERVED else c) for c in meta.columns}
    has_patient = "patient_id" in meta.columns
    add_skin_type = FITZPATRICK_COLUMN not in meta.columns and any(
        c in meta.columns for c in _SKIN_TONE_COLUMNS
    )
    for i, rec in enumerate(meta.to_dict("records")):
        line = i + 2
        image_id = rec["image_id"].strip()
        if not image_id:
            summary.problems.append(f"{metadata_csv} line {line}: empty image_id; row skipped")
            continue
        stem = Path(image_id).stem if Path(image_id).suffix.lower() in exts else image_id
        if stem in seen_ids:
            summary.problems.append(
                f"{metadata_csv} line {line}: image_id {image_id} repeated; later row skipped"
            )
            continue
        seen_ids.add(stem)
        path = index.get(stem)
        if path is None:
            summary.missing_images.append(f"{image_id} (line {line})")
            continue
        code = dx.iloc[i]
        label = label_of[code]
        patient = (_clean(rec.get("patient_id")) if has_patient else "") or _clean(rec["lesion_id"]) or stem
        row: dict[str, Any] = {
            "image": _relpath(path, out.parent),
            "caption": json.dumps(ham_captions(card, label, rec, modality=modality), ensure_ascii=False),
            "label": label,
            "group": concept_of[code],
            "patient": patient,
        }
        row.update({renamed[c]: v for c, v in rec.items()})
        if add_skin_type:
            # One column, one coding across datasets, for fairness analyses by skin type.
            row[FITZPATRICK_COLUMN] = _skin_type(rec)
        rows.append(row)
    if summary.missing_images:
        log.warning(
            "%d images named in %s were not found in %s",
            len(summary.missing_images),
            metadata_csv,
            ", ".join(map(str, dirs)),
        )
    if not rows:
        raise DataError(
            f"none of the {len(meta)} images in {metadata_csv} were found in {', '.join(map(str, dirs))} "
            f"(looked for <image_id> with extensions {', '.join(sorted(exts))})"
        )
    df = pd.DataFrame(rows)
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    df.insert(
        5, "split", group_split(df["patient"].tolist(), fractions, seed=seed, stratify=df["label"].tolist())
    )
    summary.manifests["all"] = write_manifest(df, out)
    for split in ("train", "val", "test"):
        part = df[df["split"] == split]
        if len(part):
            summary.counts[split] = _count_labels(part["label"])
            summary.rows[split] = len(part)
    return summary
