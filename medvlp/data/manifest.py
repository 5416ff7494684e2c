"""Manifests: the table a user hands to ``pretrain`` and ``eval`` (CSV, JSONL or Parquet).

Columns (DESIGN.md): ``image`` (required), ``caption`` (text or JSON list), ``label`` (name or JSON
list), ``concepts`` (JSON list of ids or spans), ``group``, ``patient``, ``split``; unknown columns are
kept as metadata.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> pd.DataFrame({"image": ["a.png"], "caption": ['["x", "y"]']}).to_csv(d / "m.csv", index=False)
    >>> m = read_manifest(d / "m.csv")
    >>> m.captions(0)
    ['x', 'y']
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medvlp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medvlp.domains import DomainCard

MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".parquet")  # what write_manifest writes
log = logging.getLogger(__name__)

KNOWN_COLUMNS = ("image", "caption", "label", "concepts", "group", "patient", "split")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def parse_list_cell(value: Any) -> list[Any]:
    """A cell that holds one item or a JSON list of items -> list (empty for a missing cell)."""
    if _is_missing(value):
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays from Parquet (and numpy scalars)
        value = value.tolist()
        if isinstance(value, list):
            return value
    s = str(value).strip()
    if not s:
        return []
    if s.startswith("["):
        try:
            parsed = json.loads(s)
        except (json.JSONDecodeError, RecursionError):  # not JSON after all: the text itself
            return [s]
        return parsed if isinstance(parsed, list) else [parsed]
    return [s]


@dataclass
class Manifest:
    """A loaded manifest: the table plus the folder relative image paths are resolved against."""

    df: pd.DataFrame
    root: Path
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. lines read as latin-1

    def __len__(self) -> int:
        return len(self.df)

    @property
    def columns(self) -> list[str]:
        return list(self.df.columns)

    def image_source(self, i: int) -> str:
        """The image source of row ``i`` with paths resolved against the manifest's folder.

        Tile references (``SLIDE#x,y,level,size``) keep their suffix; multichannel rows (one file
        per channel joined by ``;``) have every part resolved.
        """
        return ";".join(self._resolve(part) for part in str(self.df["image"].iloc[i]).split(";"))

    def image_files(self, i: int) -> list[Path]:
        """The files row ``i`` reads (one, or one per channel)."""
        return [Path(part.partition("#")[0]) for part in self.image_source(i).split(";")]

    def _resolve(self, part: str) -> str:
        path_part, sep, tile = part.strip().partition("#")
        p = Path(path_part).expanduser()
        if not p.is_absolute():
            p = self.root / p
        return f"{p}{sep}{tile}"

    def captions(self, i: int) -> list[str]:
        if "caption" not in self.df.columns:
            return []
        return [str(c).strip() for c in parse_list_cell(self.df["caption"].iloc[i]) if str(c).strip()]

    def labels(self, i: int) -> list[str]:
        if "label" not in self.df.columns:
            return []
        return [str(v) for v in parse_list_cell(self.df["label"].iloc[i])]

    def concepts(self, i: int) -> list[Any] | None:
        """The row's concepts (ids or spans), or None when the column is absent or the cell empty."""
        if "concepts" not in self.df.columns or _is_missing(self.df["concepts"].iloc[i]):
            return None
        return parse_list_cell(self.df["concepts"].iloc[i])

    def column(self, name: str) -> list[Any] | None:
        if name not in self.df.columns:
            return None
        return [None if _is_missing(v) else v for v in self.df[name].tolist()]

    def split(self, name: str) -> Manifest:
        """Rows whose ``split`` column equals ``name``."""
        if "split" not in self.df.columns:
            raise DataError(f"{self.path}: no 'split' column to select '{name}' from")
        df = self.df[self.df["split"].astype(str) == name].reset_index(drop=True)
        return Manifest(df, self.root, self.path)

    def subset(self, rows: list[int]) -> Manifest:
        return Manifest(self.df.iloc[rows].reset_index(drop=True), self.root, self.path)

    def label_names(self) -> list[str]:
        """Distinct labels in order of first appearance."""
        seen: dict[str, None] = {}
        for i in range(len(self)):
            for lab in self.labels(i):
                seen.setdefault(lab, None)
        return list(seen)

    def is_multilabel(self) -> bool:
        if "label" not in self.df.columns:
            return False
        return any(str(v).strip().startswith("[") for v in self.df["label"].dropna().tolist())


def _decode(p: Path, raw: bytes) -> tuple[str, list[str]]:
    """UTF-8 text of a manifest; lines that are not UTF-8 are read as latin-1 and named in a warning."""
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    bad_lines = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.append(n)
    shown = ", ".join(map(str, bad_lines[:10])) + (f" and {len(bad_lines) - 10} more" if len(bad_lines) > 10 else "")
    warning = (
        f"manifest {p}: line(s) {shown} are not valid UTF-8; read as latin-1, check those rows' text "
        "(re-save the file as UTF-8 to silence this)"
    )
    return raw.removeprefix(b"\xef\xbb\xbf").decode("latin-1"), [warning]


def _parse(p: Path, suffix: str) -> tuple[pd.DataFrame, list[str]]:
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(p), []
    text, warnings = _decode(p, p.read_bytes())
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"manifest {p}: line {line} holds a NUL byte; this is not a text manifest (binary file?)")
    buf = io.StringIO(text)
    if suffix in (".jsonl", ".ndjson"):
        return pd.DataFrame.from_records(_jsonl_records(p, text)), warnings
    if suffix == ".json":
        return pd.read_json(buf, dtype=False), warnings
    df = pd.read_csv(buf, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False, na_values=[""])
    return df, warnings


def _jsonl_records(p: Path, text: str) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"manifest {p}: line {n} is not valid JSON ({getattr(e, 'msg', e)}); "
                            "a JSONL manifest holds one JSON object per line") from None
        if not isinstance(rec, dict):
            raise DataError(f"manifest {p}: line {n} is a JSON {type(rec).__name__}, not an object "
                            '{"image": ..., "caption": ...}')
        records.append(rec)
    return records


def read_table(path: str | Path, *, what: str = "manifest") -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV, TSV, JSONL or Parquet table as text cells, tolerating non-UTF-8 lines.

    Returns:
        (table, warnings): warnings name the lines decoded as latin-1.

    Raises:
        DataError: the file is missing, of an unknown format, or cannot be parsed (line named where known).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist")
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise DataError(f"{what} {p}: unsupported format '{suffix}' (use .csv, .tsv, .jsonl or .parquet)")
    try:
        df, warnings = _parse(p, suffix)
    except DataError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for malformed files
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(f"{what} {p} could not be parsed: {reason}") from e
    df.columns = [str(c) for c in df.columns]
    return df, warnings


def read_manifest(path: str | Path) -> Manifest:
    """Read a CSV, TSV, JSONL or Parquet manifest.

    Lines that are not UTF-8 are decoded as latin-1; the lines are named in ``Manifest.warnings``
    (and logged) instead of rejecting the file.

    Raises:
        DataError: the file is missing, cannot be parsed (the line is named where known), is empty,
            or has no ``image`` column.
    """
    p = Path(path).expanduser()
    df, warnings = read_table(p)
    if "image" not in df.columns:
        raise DataError(
            f"manifest {p} has no 'image' column (columns: {', '.join(map(str, df.columns))}); "
            "the image column holds a path per row, relative to the manifest's folder"
        )
    if len(df) == 0:
        raise DataError(f"manifest {p} has no rows")
    if isinstance(df["image"], pd.DataFrame):
        raise DataError(f"manifest {p} has several 'image' columns; keep one")
    for w in warnings:
        log.warning(w)
    return Manifest(df.reset_index(drop=True), p.resolve().parent, p.resolve(), warnings)


@dataclass
class BadRow:
    row: int  # 0-based data row (the CSV line is row + 2)
    image: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "image": self.image, "reason": self.reason}


def check_row(m: Manifest, i: int, *, need_caption: bool = True, read: bool = True,
              reader_options: dict | None = None) -> str | None:
    """Return why row ``i`` cannot be used, or None when it can."""
    raw = m.df["image"].iloc[i]
    if _is_missing(raw) or not str(raw).strip():
        return "empty image path"
    if "\x00" in str(raw):
        return "image path holds a NUL byte"
    src = m.image_source(i)
    for file_part in m.image_files(i):
        if not file_part.exists():
            return f"image file not found: {file_part}"
    if need_caption and "caption" in m.df.columns and not m.captions(i):
        return "empty caption"
    if read:
        from medvlp.io import read_image

        try:
            read_image(src, options=reader_options)
        except Exception as e:  # the reader wraps its failures in ImageReadError; report any as bad
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            return f"unreadable image: {reason}"
    return None


def unknown_label_rows(manifest: Manifest, card: DomainCard) -> list[tuple[int, str]]:
    """(row, label) for every label of the manifest that the card does not know (name or synonym).

    Rows are 0-based data rows, as in :class:`BadRow`.
    """
    known: dict[str, bool] = {}
    out = []
    for i in range(len(manifest)):
        for lab in manifest.labels(i):
            if lab not in known:
                known[lab] = card.find_label(lab) is not None
            if not known[lab]:
                out.append((i, lab))
    return out


def unknown_labels(manifest: Manifest | str | Path, card: DomainCard) -> dict[str, int]:
    """Labels of a manifest outside the card's label sets -> the number of rows that carry them.

    Such rows are still usable for training (the label is only used for evaluation and KEEP groups),
    so callers report this as a warning, most frequent first.

    Example:
        >>> import pandas as pd, tempfile, pathlib
        >>> from medvlp.domains import load_card
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> pd.DataFrame({"image": ["a.png", "b.png"], "label": ["pneumonia", "zebra"]}).to_csv(d / "m.csv", index=False)
        >>> unknown_labels(d / "m.csv", load_card("cxr"))
        {'zebra': 1}
    """
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    counts = Counter(lab for _, lab in unknown_label_rows(m, card))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def validate_manifest(path: str | Path, *, read_images: bool = True, reader_options: dict | None = None,
                      progress: bool = False) -> tuple[Manifest, list[BadRow]]:
    """Check every row: file present, image decodable, caption non-empty, JSON cells parseable."""
    m = read_manifest(path)
    bad: list[BadRow] = []
    rows = range(len(m))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="validating", unit="row")
    for i in rows:
        reason = check_row(m, i, read=read_images, reader_options=reader_options)
        if reason is None:
            for col in ("caption", "label", "concepts"):
                if col in m.df.columns:
                    cell = m.df[col].iloc[i]
                    if isinstance(cell, str) and cell.strip().startswith("["):
                        try:
                            json.loads(cell)
                        except json.JSONDecodeError as e:
                            reason = f"column '{col}' is not valid JSON ({e.msg} at char {e.pos})"
                            break
        if reason is not None:
            bad.append(BadRow(i, str(m.df["image"].iloc[i]), reason))
    return m, bad


def check_out_manifest(path: str | Path) -> Path:
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
    p = check_out_manifest(path)
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
