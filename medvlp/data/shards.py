"""Write a manifest as WebDataset tar shards, for data that outgrows one disk or machine.

Each manifest row becomes one sample of three tar members sharing a key (the manifest row number,
zero-padded, so a sample can always be traced back to its row):

- ``KEY.png`` or ``KEY.jpg``: the image. PNG and JPEG files are stored byte for byte (no re-encoding
  loss); anything else (DICOM, TIFF, multichannel microscopy, a whole-slide tile reference) is read
  with :func:`medvlp.io.read_image`, with the domain card's reader settings, and stored as RGB PNG.
- ``KEY.txt``: the captions as a JSON list of strings (one is sampled per step when training).
- ``KEY.json``: ``{"label", "concepts", "group", "patient", "split", "image", "metadata"}``:
  ``label`` is a list of names for a multi-label manifest and one name (or null) otherwise,
  ``concepts`` the row's concept ids/spans (null when absent), ``image`` the manifest's reference,
  and ``metadata`` every other column (age, sex, Fitzpatrick type, ...).

Shards are named ``000000.tar``, ``000001.tar``, ... and written to a temporary name first, then
renamed, so a crash never leaves a half-written shard under a final name. Beside each shard,
``NNNNNN.tar.idx.json`` records every sample's member offsets (see :mod:`medvlp.data.shardio`): a
resumed stream seeks to its samples instead of reading those before them. ``shards.json`` beside them
records the brace pattern to hand to ``pretrain --data``, the sample count per shard (webdataset
needs the epoch length) and what was skipped; skipped rows go to ``bad_samples.jsonl`` with their
reason. Rows are shuffled by default: importers write class-sorted manifests, and a streaming
shuffle buffer cannot undo shards that each hold a single class.

The ``webdataset`` package writes the tar files when it is installed (``pip install medvlp[shards]``);
otherwise the standard library's :mod:`tarfile` writes the same members.

Example:
    >>> from medvlp.data.shards import write_shards
    >>> summary = write_shards("data/train.csv", "shards/", shard_size=1000)  # doctest: +SKIP
    >>> summary.pattern  # doctest: +SKIP
    'shards/{000000..000012}.tar'
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvlp.data.manifest import KNOWN_COLUMNS, Manifest, read_manifest
from medvlp.data.shardio import IDX_SUFFIX, write_index
from medvlp.errors import ConfigError, DataError, ImageReadError

log = logging.getLogger(__name__)

SHARD_NAME = "{:06d}.tar"
INDEX_NAME = "shards.json"
BAD_NAME = "bad_samples.jsonl"
_SHARD_RE = re.compile(r"^\d{6}\.tar$")
# Fixed member metadata: the same manifest and seed always give byte-identical shards.
_MTIME = 0
_MODE = 0o444
BACKENDS = ("auto", "webdataset", "tarfile")


@dataclass
class ShardSummary:
    """What :func:`write_shards` wrote.

    Attributes:
        shards: the shard files, in order.
        per_shard: samples in each shard.
        pattern: brace pattern over the shards (``DIR/{000000..000003}.tar``) for ``pretrain --data``.
        index: the ``shards.json`` file.
        backend: ``"webdataset"`` or ``"tarfile"``.
        rows: manifest rows considered (after ``split`` selection).
        skipped: one ``{"row", "image", "reason"}`` per row left out (also in ``bad_samples.jsonl``).
        image_formats: member extension -> samples (``png``/``jpg``).
    """

    shards: list[Path] = field(default_factory=list)
    per_shard: list[int] = field(default_factory=list)
    pattern: str = ""
    index: Path | None = None
    backend: str = ""
    rows: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    image_formats: dict[str, int] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        """Samples written over all shards."""
        return sum(self.per_shard)

    def format(self) -> str:
        """A short report: samples, shards, pattern and skipped rows."""
        fmts = ", ".join(f"{n} {k}" for k, n in sorted(self.image_formats.items()))
        lines = [
            f"wrote {self.samples} samples ({fmts or 'none'}) in {len(self.shards)} shard(s) with {self.backend}",
            f"pattern: {self.pattern}",
        ]
        if self.index is not None:
            lines.append(f"index: {self.index}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} of {self.rows} rows (reasons in {BAD_NAME}):")
            for s in self.skipped[:20]:
                lines.append(f"  row {s['row']}: {s['image']}: {s['reason']}")
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def shard_pattern(out_dir: str | Path, n_shards: int) -> str:
    """The brace pattern webdataset expands to the shard list: ``DIR/{000000..000009}.tar``."""
    if n_shards <= 0:
        return ""
    if n_shards == 1:
        return str(Path(out_dir) / SHARD_NAME.format(0))
    return str(Path(out_dir) / f"{{{0:06d}..{n_shards - 1:06d}}}.tar")


# --------------------------------------------------------------------------------------------------
# Sample encoding


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list | tuple | dict | np.ndarray):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    """A manifest cell as a JSON-ready value (numpy scalars/arrays to Python, NaN to None)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if _missing(value):
        return None
    if isinstance(value, int | float | str | bool):
        return value
    return str(value)


_TILE_SUFFIX = re.compile(r"#-?\d+,-?\d+,\d+,\d+$")  # SLIDE_PATH#x,y,level,size


def _image_parts(m: Manifest, i: int) -> tuple[list[Path], str]:
    """The file(s) a row's image needs (one file, a slide, or ';'-joined channel files), and its tile suffix."""
    raw = str(m.df["image"].iloc[i]).strip()
    tile = _TILE_SUFFIX.search(raw)
    path_part = raw[: tile.start()] if tile else raw
    parts = [path_part]
    if ";" in path_part and not _resolve(m, path_part).exists():
        parts = [p.strip() for p in path_part.split(";") if p.strip()]
    return [_resolve(m, p) for p in parts], tile.group(0) if tile else ""


def _resolve(m: Manifest, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else m.root / path


def encode_image(
    m: Manifest,
    i: int,
    *,
    reader: str = "auto",
    reader_options: Mapping[str, Any] | None = None,
    check: bool = True,
) -> tuple[str, bytes]:
    """The image member of row ``i``: ``("png" | "jpg", bytes)``.

    PNG/JPEG files are returned unchanged (after a full decode when ``check``, so a damaged file is
    caught here rather than mid-training); every other source is decoded to RGB and PNG-encoded.

    Raises:
        ImageReadError: the image is missing or cannot be decoded.
    """
    from medvlp.io import read_image, sniff_format

    parts, tile = _image_parts(m, i)
    # Every path resolved against the manifest's folder; channel files re-joined with ';'.
    src = ";".join(str(p) for p in parts) + tile
    if not tile and len(parts) == 1 and reader in ("auto", "image"):
        fmt = sniff_format(parts[0])
        if fmt in ("png", "jpeg"):
            if check:
                read_image(parts[0], reader=reader, options=reader_options)
            try:
                return ("png" if fmt == "png" else "jpg"), parts[0].read_bytes()
            except OSError as e:
                raise ImageReadError(parts[0], f"cannot be read ({e.strerror})") from None
    img = read_image(src, reader=reader, options=reader_options)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "png", buf.getvalue()


class Vocabulary:
    """The distinct labels, groups and (non-negated) concept ids of the sharded rows, kept in
    ``shards.json`` so that objectives with per-sample targets (keep, softclip) can number them
    identically on every rank before any shard is read."""

    def __init__(self) -> None:
        self.labels: set[str] = set()
        self.groups: set[str] = set()
        self.concepts: set[str] = set()

    def add(self, m: Manifest, i: int) -> None:
        self.labels.update(m.labels(i))
        if "group" in m.df.columns and not _missing(m.df["group"].iloc[i]):
            self.groups.add(str(m.df["group"].iloc[i]).strip())
        self.concepts.update(concept_ids(m.concepts(i)))

    def to_dict(self) -> dict[str, list[str]]:
        return {"labels": sorted(self.labels), "groups": sorted(g for g in self.groups if g),
                "concepts": sorted(self.concepts)}


def concept_ids(items: Any) -> list[str]:
    """The non-negated concept ids among ``concepts`` items (ids, or matcher dicts), in order."""
    out: list[str] = []
    for item in items or ():
        if isinstance(item, str) and item.strip():
            out.append(item)
        elif isinstance(item, dict) and item.get("id") and not item.get("negated"):
            out.append(str(item["id"]))
    return list(dict.fromkeys(out))


def meta_labels(meta: dict[str, Any]) -> list[str]:
    """The label names of a sample's ``json`` member (a list for multi-label shards, else one name or null)."""
    value = meta.get("label")
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def sample_json(m: Manifest, i: int, multilabel: bool) -> dict[str, Any]:
    """The ``json`` member of row ``i``: label(s), concepts, ids, split and the other columns."""
    row = m.df.iloc[i]
    labels = m.labels(i)
    meta = {str(c): _plain(row[c]) for c in m.df.columns if c not in KNOWN_COLUMNS}
    return {
        "label": labels if multilabel else (labels[0] if labels else None),
        "concepts": _plain(m.concepts(i)),
        "group": _plain(row["group"]) if "group" in m.df.columns else None,
        "patient": _plain(row["patient"]) if "patient" in m.df.columns else None,
        "split": _plain(row["split"]) if "split" in m.df.columns else None,
        "image": str(row["image"]),
        "metadata": meta,
    }


def _row_problem(m: Manifest, i: int) -> str | None:
    """Why row ``i`` cannot become a sample before decoding (missing file, empty caption), or None."""
    raw = m.df["image"].iloc[i]
    if _missing(raw) or not str(raw).strip():
        return "empty image path"
    for p in _image_parts(m, i)[0]:
        if not p.exists():
            return f"image file not found: {p}"
    if "caption" in m.df.columns and not m.captions(i):
        return "empty caption"
    return None


# --------------------------------------------------------------------------------------------------
# Tar writers


class _StdlibTarWriter:
    """Writes samples as tar members in webdataset's layout with only the standard library."""

    def __init__(self, path: Path) -> None:
        self._tar = tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT)

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if k != "__key__"):  # webdataset's member order
            data = sample[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = _MTIME
            info.mode = _MODE
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown shard backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if backend == "tarfile":
        return "tarfile"
    try:
        import webdataset  # noqa: F401
    except ImportError:
        if backend == "webdataset":
            raise ConfigError(
                "the webdataset package is not installed; pip install 'medvlp[shards]' (or use backend='tarfile')"
            ) from None
        return "tarfile"
    return "webdataset"


def _open_writer(backend: str, path: Path) -> Any:
    if backend == "webdataset":
        import webdataset as wds

        # encoder=False: members are already bytes, so both backends write identical archives.
        return wds.TarWriter(str(path), encoder=False, mtime=_MTIME, mode=_MODE)
    return _StdlibTarWriter(path)


# --------------------------------------------------------------------------------------------------
# Entry point


def write_shards(
    manifest: str | Path | Manifest,
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    split: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
    reader: str = "auto",
    reader_options: Mapping[str, Any] | None = None,
    check: bool = True,
    max_bad_fraction: float = 0.01,
    overwrite: bool = False,
    backend: str = "auto",
    progress: bool = False,
    on_sample: Callable[[int], None] | None = None,
) -> ShardSummary:
    """Write a manifest as WebDataset tar shards (see the module docstring for the sample layout).

    Args:
        manifest: manifest path (CSV/JSONL/Parquet) or a loaded :class:`Manifest`.
        out_dir: folder for the shards, ``shards.json`` and ``bad_samples.jsonl`` (created).
        shard_size: samples per shard (the last shard holds the rest).
        split: only rows whose ``split`` column equals this (e.g. ``"train"``); None: all rows.
        shuffle: write rows in a seeded random order (recommended: imported manifests are sorted by class).
        seed: seed of the shuffle.
        reader: image reader for non-PNG/JPEG sources (the domain card's ``[image].reader``).
        reader_options: the card's reader settings (DICOM VOI, microscopy channel colours).
        check: decode PNG/JPEG files before storing them, so damaged files are skipped here.
        max_bad_fraction: stop with an error once more than this fraction of rows is unusable.
        overwrite: replace shards already in ``out_dir`` (otherwise an error: stale shards from an
            earlier run would silently join the pattern).
        backend: ``"auto"`` (webdataset when installed), ``"webdataset"`` or ``"tarfile"``.
        progress: show a progress bar.
        on_sample: called with the running sample count after each sample (for UIs and tests).

    Returns:
        The summary of what was written.

    Raises:
        ConfigError: bad shard size, fraction or backend; existing shards without ``overwrite``.
        DataError: unreadable manifest, unknown split, no usable row, or too many bad rows (the
            shards written so far are removed; ``bad_samples.jsonl`` says why each row failed).
    """
    if shard_size < 1:
        raise ConfigError(f"shard size must be at least 1 sample, got {shard_size}")
    if not 0 <= max_bad_fraction <= 1:
        raise ConfigError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    where = m.path or "manifest"
    if split is not None:
        if "split" not in m.df.columns:
            raise DataError(
                f"{where} has no 'split' column to select '{split}' from; drop --split or run "
                f"`medvlp data split` first"
            )
        present = sorted(set(m.df["split"].dropna().astype(str)))
        m = m.split(split)
        if len(m) == 0:
            raise DataError(f"{where} has no rows with split '{split}'; its splits are: {', '.join(present)}")
    used = _resolve_backend(backend)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the shards")
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(p for p in out.iterdir() if _SHARD_RE.match(p.name))
    if stale and not overwrite:
        raise ConfigError(
            f"{out} already holds {len(stale)} shard(s) ({stale[0].name}...); pass --overwrite to replace "
            f"them or choose an empty folder"
        )
    for p in stale:
        p.unlink()
        p.with_name(p.name + IDX_SUFFIX).unlink(missing_ok=True)

    n = len(m)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    width = max(9, len(str(n - 1)))
    multilabel = m.is_multilabel()
    summary = ShardSummary(backend=used, rows=n)
    max_bad = int(math.floor(max_bad_fraction * n))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="sharding", unit="img")
    writer: Any = None
    tmp: Path | None = None
    count = 0
    vocab = Vocabulary()

    def finish_shard() -> None:
        nonlocal writer, tmp, count
        if writer is None or tmp is None:
            return
        writer.close()
        final = out / SHARD_NAME.format(len(summary.shards))
        os.replace(tmp, final)
        write_index(final)  # NNNNNN.tar.idx.json: member offsets, so a stream can seek to any sample
        summary.shards.append(final)
        summary.per_shard.append(count)
        writer, tmp, count = None, None, 0

    try:
        for i in order.tolist():
            reason = _row_problem(m, i)
            sample: dict[str, Any] | None = None
            if reason is None:
                try:
                    ext, data = encode_image(m, i, reader=reader, reader_options=reader_options, check=check)
                except ImageReadError as e:
                    reason = f"unreadable image: {e.reason}"
                else:
                    sample = {
                        "__key__": f"{i:0{width}d}",
                        ext: data,
                        "txt": json.dumps(m.captions(i), ensure_ascii=False).encode("utf-8"),
                        "json": json.dumps(sample_json(m, i, multilabel), ensure_ascii=False).encode("utf-8"),
                    }
            if sample is None:
                summary.skipped.append({"row": i, "image": str(m.df["image"].iloc[i]), "reason": reason})
                if len(summary.skipped) > max_bad:
                    raise DataError(
                        f"{where}: {len(summary.skipped)} of {n} rows are unusable (more than "
                        f"--max-bad-fraction {max_bad_fraction:g}); first: row {summary.skipped[0]['row']}: "
                        f"{summary.skipped[0]['reason']}; all reasons in {out / BAD_NAME}"
                    )
            else:
                if writer is None:
                    tmp = out / f".{SHARD_NAME.format(len(summary.shards))}.tmp-{os.getpid()}"
                    writer = _open_writer(used, tmp)
                writer.write(sample)
                vocab.add(m, i)
                count += 1
                summary.image_formats[ext] = summary.image_formats.get(ext, 0) + 1
                if count >= shard_size:
                    finish_shard()
                if on_sample is not None:
                    on_sample(summary.samples + count)
            if bar is not None:
                bar.update(1)
        finish_shard()
    except BaseException:
        # Leave nothing half-done: an interrupted or failed run removes its shards, keeps its reasons.
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - already failing; the original error matters
                pass
        if tmp is not None and tmp.exists():
            tmp.unlink()
        for p in summary.shards:
            p.unlink(missing_ok=True)
            p.with_name(p.name + IDX_SUFFIX).unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
        _write_bad(out / BAD_NAME, summary.skipped)

    if not summary.shards:
        raise DataError(
            f"{where}: no usable rows to shard ({len(summary.skipped)} skipped; see {out / BAD_NAME})"
        )
    summary.pattern = shard_pattern(out, len(summary.shards))
    index = {
        "pattern": summary.pattern,
        "shards": [p.name for p in summary.shards],
        "per_shard": summary.per_shard,
        "samples": summary.samples,
        "manifest": str(m.path) if m.path else None,
        "split": split,
        "shuffled": shuffle,
        "seed": seed,
        "multilabel": multilabel,
        "skipped": len(summary.skipped),
        "image_formats": summary.image_formats,
        "vocabulary": vocab.to_dict(),
        "members": {
            "png|jpg": "the image (PNG/JPEG stored unchanged, other formats as RGB PNG)",
            "txt": "captions, a JSON list of strings",
            "json": "label, concepts, group, patient, split, image (manifest reference), metadata",
        },
    }
    summary.index = out / INDEX_NAME
    summary.index.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return summary


def _write_bad(path: Path, skipped: list[dict[str, Any]]) -> None:
    if not skipped:
        path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
        return
    with open(path, "w", encoding="utf-8") as fh:
        for s in skipped:
            fh.write(json.dumps(s, ensure_ascii=False) + "\n")


def read_shard(path: str | Path) -> list[dict[str, Any]]:
    """Read one shard back with :mod:`tarfile` (for checks and tests; training streams with webdataset).

    Returns:
        One dict per sample in file order: ``{"__key__", "<image ext>": bytes, "txt": list[str],
        "json": dict}``.

    Raises:
        DataError: the file is not a tar archive or a sample lacks a member.
    """
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, mode="r") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                fh = tar.extractfile(info)
                data = fh.read() if fh is not None else b""
                sample = samples.setdefault(key, {"__key__": key})
                sample[ext] = json.loads(data) if ext in ("txt", "json") else data
    except (tarfile.TarError, OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable shard ({e})") from e
    for key, sample in samples.items():
        missing = [k for k in ("txt", "json") if k not in sample]
        if missing or not ({"png", "jpg"} & set(sample)):
            raise DataError(f"{path}: sample {key} lacks members {missing or ['png|jpg']}")
    return list(samples.values())
