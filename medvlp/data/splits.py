"""Leakage-free train/val/test splits: whole groups (patient, lesion, slide) go to one split.

Images of one patient or one lesion are strongly correlated; a split that puts some of them in
train and others in test measures memorisation, not generalisation. :func:`group_split` assigns
whole groups, optionally stratified by label, deterministically under a seed.

Example:
    >>> from medvlp.data.splits import group_split
    >>> splits = group_split(["p1", "p1", "p2", "p3", "p3", "p4"], seed=0)
    >>> len(splits)
    6
    >>> splits[0] == splits[1] and splits[3] == splits[4]
    True
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvlp.data.manifest import parse_list_cell, read_manifest, write_manifest
from medvlp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


def check_fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """Validate split fractions: non-negative numbers that sum to 1.

    Raises:
        ConfigError: a negative fraction, or a sum other than 1.
    """
    fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if not fr:
        raise ConfigError("split fractions are empty; give e.g. {'train': 0.7, 'val': 0.15, 'test': 0.15}")
    for name, value in fr.items():
        if not isinstance(value, int | float) or math.isnan(value) or value < 0:
            raise ConfigError(f"split fraction for '{name}' must be a number >= 0, got {value!r}")
    total = sum(fr.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {total:.6g} from {fr}")
    return {k: float(v) for k, v in fr.items()}


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and other containers are never "missing"
        return False


def _hashable(value: Any) -> Hashable:
    """Lists (multi-label) and dicts become their JSON text so they can be counted."""
    if isinstance(value, list | tuple | dict | np.ndarray):
        return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, sort_keys=True)
    return value


def group_split(
    ids_or_groups: Sequence[Any],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    stratify: Sequence[Any] | None = None,
) -> list[str]:
    """Assign each row a split so that all rows of one group land in the same split.

    Groups are visited in a seeded random order; each goes to the split whose row count is furthest
    below its target. With ``stratify``, each group takes its most common label and the targets are
    kept per label (ties between equally far splits go to the one furthest below its overall
    target), so label proportions are approximately the same in every split. Group disjointness is
    exact; row proportions are approximate (off by at most about one group per split and label).

    Args:
        ids_or_groups: one group id per row (patient, lesion, slide); a missing id (None/NaN) makes
            that row its own group.
        fractions: split name -> fraction of rows, summing to 1 (default train 0.7, val 0.15,
            test 0.15). A split with fraction 0 gets no rows.
        seed: the same seed and input always give the same result.
        stratify: optional label per row (lists, as for multi-label rows, are compared as a whole).

    Returns:
        The split name of each row, in input order.

    Raises:
        ConfigError: bad fractions, or ``stratify`` of another length than the ids.

    Example:
        >>> group_split(["a", "a", "b"], {"train": 0.5, "test": 0.5}, seed=1).count("train") in (1, 2)
        True
    """
    fr = check_fractions(fractions)
    n = len(ids_or_groups)
    if stratify is not None and len(stratify) != n:
        raise ConfigError(f"stratify has {len(stratify)} labels for {n} rows; give one label per row")
    if n == 0:
        return []
    names = [s for s, f in fr.items() if f > 0]

    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(ids_or_groups):
        key: Hashable = ("__row__", i) if _is_missing(g) else ("id", str(_hashable(g)))
        members.setdefault(key, []).append(i)

    strata: dict[str, list[Hashable]] = {}
    for key, rows in members.items():
        if stratify is None:
            stratum = ""
        else:
            counts = Counter(str(_hashable(stratify[i])) for i in rows)
            # Most common label of the group; ties broken by name so the result is deterministic.
            stratum = min(counts, key=lambda lab: (-counts[lab], lab))
        strata.setdefault(stratum, []).append(key)

    rng = np.random.default_rng(seed)
    split_of_group: dict[Hashable, str] = {}
    global_rows = dict.fromkeys(names, 0)
    seen_rows = 0
    for stratum in sorted(strata):
        # Sort before shuffling: the order of first appearance must not leak into the result.
        groups = sorted(strata[stratum], key=str)
        stratum_total = sum(len(members[g]) for g in groups)
        rows_in = dict.fromkeys(names, 0)
        for idx in rng.permutation(len(groups)):
            g = groups[idx]
            size = len(members[g])
            seen_rows += size
            # Furthest below its target within this label; ties go to the split furthest below its
            # overall target, so equal fractions (val/test) alternate across small strata.
            deficits = [
                (fr[s] * stratum_total - rows_in[s], fr[s] * seen_rows - global_rows[s]) for s in names
            ]
            best = names[max(range(len(names)), key=deficits.__getitem__)]
            split_of_group[g] = best
            rows_in[best] += size
            global_rows[best] += size

    out = [""] * n
    for g, rows in members.items():
        for i in rows:
            out[i] = split_of_group[g]
    return out


def leaking_groups(groups: Sequence[Any], splits: Sequence[str]) -> dict[str, list[str]]:
    """Groups whose rows fall in more than one split (empty when the split is leakage-free).

    Returns:
        group id -> sorted split names, only for groups found in two or more splits.
    """
    if len(groups) != len(splits):
        raise ConfigError(f"{len(groups)} group ids but {len(splits)} splits; give one of each per row")
    seen: dict[str, set[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        if _is_missing(g):
            continue
        seen.setdefault(str(g), set()).add(str(s))
    return {g: sorted(s) for g, s in sorted(seen.items()) if len(s) > 1}


def assign_splits(
    manifest_df: pd.DataFrame,
    by: str = "patient",
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    stratify: str | None = "label",
) -> pd.DataFrame:
    """Return a copy of a manifest with a ``split`` column assigned by :func:`group_split`.

    Any existing ``split`` column is replaced in the copy; the input frame is not changed.

    Args:
        manifest_df: the manifest rows.
        by: column holding the group id (``patient``, ``lesion_id``, a slide id...). Use
            ``by="image"`` to split row by row when rows are independent.
        fractions: split name -> fraction (default train 0.7, val 0.15, test 0.15).
        seed: random seed of the assignment.
        stratify: column of labels to keep balanced across splits, or None.

    Raises:
        DataError: ``by`` or ``stratify`` names a column the manifest does not have.

    Example:
        >>> df = pd.DataFrame({"image": ["a.png", "b.png"], "patient": ["p1", "p1"], "label": ["x", "y"]})
        >>> assign_splits(df, seed=0)["split"].nunique()
        1
    """
    cols = list(manifest_df.columns)
    if by not in manifest_df.columns:
        raise DataError(
            f"manifest has no '{by}' column to split by (columns: {cols}); pass by=<column> "
            f"(by='image' splits row by row)"
        )
    if stratify is not None and stratify not in manifest_df.columns:
        raise DataError(
            f"manifest has no '{stratify}' column to stratify by (columns: {cols}); pass stratify=None"
        )
    labels = None if stratify is None else manifest_df[stratify].tolist()
    splits = group_split(manifest_df[by].tolist(), fractions, seed=seed, stratify=labels)
    out = manifest_df.copy()
    out["split"] = splits
    fr = check_fractions(fractions)
    empty = [s for s, f in fr.items() if f > 0 and s not in set(splits)]
    if empty and len(out):
        log.warning("splits %s received no rows: only %d distinct '%s' groups", empty, out[by].nunique(), by)
    return out


# --------------------------------------------------------------------------------------------------
# Manifest files

# `--by` names -> manifest columns tried in order (HAM10000 and ISIC call them lesion_id / patient_id).
BY_COLUMNS: dict[str, tuple[str, ...]] = {
    "patient": ("patient", "patient_id"),
    "lesion": ("lesion_id", "lesion"),
    "group": ("group",),
}
_TILE_SUFFIX = re.compile(r"#-?\d+,-?\d+,\d+,\d+$")


def resolve_by(columns: Sequence[str], by: str) -> str:
    """The manifest column that ``--by`` names: ``patient``, ``lesion``, ``group`` or any column.

    Raises:
        DataError: no such column.
    """
    for col in BY_COLUMNS.get(by, (by,)):
        if col in columns:
            return col
    tried = " or ".join(f"'{c}'" for c in BY_COLUMNS.get(by, (by,)))
    raise DataError(
        f"manifest has no {tried} column to split by (columns: {', '.join(map(str, columns))}); "
        f"choose --by patient|lesion|group or another column (--by image splits row by row)"
    )


def rebase_image(value: Any, old_root: Path, new_root: Path) -> Any:
    """An image reference relative to ``old_root`` rewritten relative to ``new_root``.

    Absolute paths, missing values, the ``#x,y,level,size`` suffix of a tile and ``;``-joined channel
    files are handled; paths use ``/`` on every OS.
    """
    if _is_missing(value):
        return value
    raw = str(value)
    tile = _TILE_SUFFIX.search(raw)
    path_part = raw[: tile.start()] if tile else raw
    parts = path_part.split(";") if ";" in path_part and not (old_root / path_part).exists() else [path_part]
    out = []
    for p in parts:
        p = p.strip()
        if not p or Path(p).expanduser().is_absolute():
            out.append(p)
            continue
        target = (old_root / p).resolve()
        try:
            out.append(Path(os.path.relpath(target, new_root.resolve())).as_posix())
        except ValueError:  # another drive on Windows: an absolute path still works
            out.append(target.as_posix())
    return ";".join(out) + (tile.group(0) if tile else "")


@dataclass
class SplitSummary:
    """What :func:`split_manifest` wrote.

    Attributes:
        out: the manifest written.
        by: the column whose values were kept together.
        stratify: the column balanced across splits, or None.
        rows: split -> rows.
        groups: split -> distinct groups.
        labels: split -> label -> rows (each label of a multi-label row counted once).
        leaks: groups found in two or more splits (always empty; reported as a check).
        notes: things worth knowing (replaced split column, rebased paths, empty splits).
    """

    out: Path
    by: str
    stratify: str | None
    rows: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    leaks: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """Rows, groups and labels per split, then notes."""
        strat = f", stratified by '{self.stratify}'" if self.stratify else ""
        lines = [f"split by '{self.by}'{strat} -> {self.out}"]
        for split, n in self.rows.items():
            labels = ", ".join(f"{k} {v}" for k, v in sorted(self.labels.get(split, {}).items()))
            lines.append(
                f"{split}: {n} rows, {self.groups.get(split, 0)} groups" + (f" ({labels})" if labels else "")
            )
        lines.append(f"groups in more than one split: {len(self.leaks)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _cell_labels(value: Any) -> list[str]:

    return [str(v) for v in parse_list_cell(value)]


def _to_text_cells(df: pd.DataFrame) -> pd.DataFrame:
    """List/dict cells (from JSONL or Parquet) as JSON text, as manifests store them in CSV."""
    out = df.copy()
    for col in out.columns:
        if (
            out[col].dtype == object
            and out[col].map(lambda v: isinstance(v, list | tuple | dict | np.ndarray)).any()
        ):
            out[col] = [
                json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, ensure_ascii=False)
                if isinstance(v, list | tuple | dict | np.ndarray)
                else v
                for v in out[col]
            ]
    return out


def split_manifest(
    manifest: str | Path,
    out: str | Path,
    *,
    by: str = "patient",
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    stratify: str | None = "label",
) -> SplitSummary:
    """Read a manifest, assign a leakage-free ``split`` column and write it (CSV/JSONL/Parquet by suffix).

    Image paths are rewritten when ``out`` is in another folder, so they still point at the images.

    Args:
        manifest: the manifest to split.
        out: the manifest to write (may be the same file).
        by: ``patient``, ``lesion`` (``lesion_id``), ``group``, or any column; ``image`` splits row by row.
        val: fraction of rows for validation.
        test: fraction of rows for test (train gets the rest).
        seed: seed of the assignment.
        stratify: label column to balance across splits; None for no stratification. When the default
            ``label`` column is absent the split is simply not stratified.

    Raises:
        ConfigError: fractions outside [0, 1) or summing to 1 or more.
        DataError: unreadable manifest, or ``by``/``stratify`` naming a missing column.
    """

    for name, value in (("--val", val), ("--test", test)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be a fraction in [0, 1), got {value}")
    if val + test >= 1:
        raise ConfigError(f"--val + --test must be below 1 so train gets rows, got {val + test:g}")
    m = read_manifest(manifest)
    cols = list(m.df.columns)
    col = resolve_by(cols, by)
    notes: list[str] = []
    if stratify is not None and stratify not in cols:
        if stratify != "label":
            raise DataError(f"{m.path}: no '{stratify}' column to stratify by (columns: {', '.join(cols)})")
        notes.append("no 'label' column: split not stratified")
        stratify = None
    if "split" in cols:
        notes.append("the manifest's existing 'split' column was replaced")
    fractions = {"train": 1.0 - val - test, "val": val, "test": test}
    df = assign_splits(m.df, by=col, fractions=fractions, seed=seed, stratify=stratify)
    out = Path(out)
    new_root = out.expanduser().resolve().parent
    if new_root != m.root:
        df["image"] = [rebase_image(v, m.root, new_root) for v in df["image"]]
        notes.append(f"image paths rewritten relative to {new_root}")
    leaks = leaking_groups(df[col].tolist(), df["split"].tolist())
    if leaks:  # group_split guarantees disjointness; this guards the guarantee itself
        raise DataError(f"internal error: groups {sorted(leaks)[:5]} fell into two splits; please report")
    summary = SplitSummary(out=out, by=col, stratify=stratify, leaks=leaks, notes=notes)
    for split in ("train", "val", "test"):
        part = df[df["split"] == split]
        if fractions[split] > 0 and part.empty:
            notes.append(
                f"split '{split}' received no rows: only {df[col].nunique()} distinct '{col}' values"
            )
        if part.empty:
            continue
        summary.rows[split] = len(part)
        summary.groups[split] = int(part[col].nunique(dropna=False))
        if stratify is not None:
            counts: Counter[str] = Counter()
            for v in part[stratify]:
                counts.update(_cell_labels(v))
            summary.labels[split] = dict(counts)
    summary.out = write_manifest(_to_text_cells(df), out)
    return summary
