"""MedMNIST v2 ``.npz`` (2D sets) to PNG files and per-split manifests; class tables in ``medmnist_labels.json``."""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections import Counter
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medvlp.data.importers.common import (
    ImportSummary,
    _count_labels,
    _join_names,
    _template_captions,
    _unknown_label_warning,
    class_captions,
)
from medvlp.data.manifest import write_manifest
from medvlp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medvlp.domains import DomainCard, Label

log = logging.getLogger(__name__)

_TABLES = json.loads(files(__package__).joinpath("medmnist_labels.json").read_text(encoding="utf-8"))

# Class names of the MedMNIST v2 2D sets, exactly as MedMNIST's INFO gives them (index -> name).
MEDMNIST_LABELS: dict[str, list[str]] = _TABLES["labels"]
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
_READABLE: dict[str, dict[str, str]] = _TABLES["readable"]

# Extra names tried against the card (after the readable and the original name), so that evaluation
# labels match the card's label set: MedMNIST uses plurals and dataset-specific wording.
_CARD_ALIASES: dict[str, dict[str, list[str]]] = _TABLES["card_aliases"]
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
                    list(dict.fromkeys(t.format(_join_names(names)) for t in card.caption_templates))
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
