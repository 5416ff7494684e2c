"""HAM10000-style dermatology metadata to a lesion-disjoint manifest; tables in ``ham10000.json``."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medvlp.data.importers.common import (
    _RESERVED,
    IMAGE_EXTENSIONS,
    ImportSummary,
    _count_labels,
    _relpath,
    _unknown_label_warning,
    class_captions,
)
from medvlp.data.manifest import check_out_manifest, write_manifest
from medvlp.data.splits import group_split
from medvlp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medvlp.domains import DomainCard

log = logging.getLogger(__name__)

_TABLES = json.loads(files(__package__).joinpath("ham10000.json").read_text(encoding="utf-8"))

# HAM10000 diagnosis codes -> label names (matched against the card's labels and synonyms).
HAM10000_DX: dict[str, str] = _TABLES["dx"]
_DX_TYPE_PHRASE: dict[str, str] = _TABLES["dx_type_phrase"]
_SITE_PHRASE: dict[str, str] = _TABLES["site_phrase"]
_ROMAN = {int(k): v for k, v in _TABLES["roman"].items()}
_DDI_TONE = {
    int(k): v for k, v in _TABLES["ddi_tone"].items()
}  # DDI groups Fitzpatrick types in pairs  # DDI's skin_tone groups Fitzpatrick types in pairs
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
    out = check_out_manifest(out_manifest)
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
