"""Train/eval overlap: exact duplicates, near duplicates (perceptual hash) and shared patients.

Exact duplicates are found twice: by the SHA-256 of the file bytes and by the SHA-256 of the decoded
pixels (the same image re-saved as another file or format). Near duplicates use a 64-bit DCT pHash
(32x32 grey, top-left 8x8 DCT block against its median) computed for the 8 dihedral variants of the
image (4 rotations x flip); a pair is near when the smallest Hamming distance over the variants is at
most ``phash_threshold`` bits (default 4), so rotated, flipped and re-compressed copies are found.
Measured on WBCAtt: a rotated + flipped + JPEG q60 copy is at 0-2 bits; distinct cells of the same
smear style are mostly at 8 or more, so 8 is too loose for centred-object images.

Example:
    >>> from medvlp.data.overlap import find_overlap
    >>> report = find_overlap("train.csv", "test.csv")  # doctest: +SKIP
    >>> report.to_dict()["counts"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.fft import dctn

from medvlp.data.manifest import Manifest, read_manifest
from medvlp.errors import DataError

PATIENT_COLUMNS = ("patient", "group")


@dataclass
class OverlapPair:
    train_row: int
    eval_row: int
    train_image: str
    eval_image: str
    kind: str  # "file" | "pixels" | "near" | "patient"
    distance: int | None = None  # pHash bits (near duplicates)
    patient: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class OverlapReport:
    """Pairs of (train row, eval row) that leak, by kind; ``unreadable`` rows could not be hashed."""

    pairs: list[OverlapPair] = field(default_factory=list)
    n_train: int = 0
    n_eval: int = 0
    unreadable: list[str] = field(default_factory=list)
    phash_threshold: int = 4

    def counts(self) -> dict[str, int]:
        c = {"file": 0, "pixels": 0, "near": 0, "patient": 0}
        for p in self.pairs:
            c[p.kind] += 1
        c["eval_rows_affected"] = len({p.eval_row for p in self.pairs})
        return c

    def to_dict(self) -> dict[str, Any]:
        return {"n_train": self.n_train, "n_eval": self.n_eval, "phash_threshold": self.phash_threshold,
                "counts": self.counts(), "pairs": [p.to_dict() for p in self.pairs], "unreadable": self.unreadable}

    def format(self, examples: int = 5) -> str:
        lines = [f"train {self.n_train} rows, eval {self.n_eval} rows"]
        for kind, n in self.counts().items():
            lines.append(f"  {kind}: {n}")
        for kind in ("file", "pixels", "near", "patient"):
            shown = [p for p in self.pairs if p.kind == kind][:examples]
            for p in shown:
                extra = f" (distance {p.distance})" if p.distance is not None else f" (patient {p.patient})" if p.patient else ""
                lines.append(f"  e.g. {kind}: train row {p.train_row} {p.train_image} ~ eval row {p.eval_row} {p.eval_image}{extra}")
        if self.unreadable:
            lines.append(f"unreadable (not hashed): {len(self.unreadable)}, e.g. {self.unreadable[0]}")
        return "\n".join(lines)


def phash(grey: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a 2-D grey image (any size)."""
    small = np.asarray(Image.fromarray(np.asarray(grey, np.float32)).resize((32, 32), Image.Resampling.BILINEAR), np.float64)
    block = dctn(small, norm="ortho")[:8, :8].ravel()
    bits = block > np.median(block[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def dihedral_phashes(grey: np.ndarray) -> list[int]:
    """pHashes of the 8 rotations/flips of ``grey``."""
    out = []
    for flipped in (grey, grey[:, ::-1]):
        for k in range(4):
            out.append(phash(np.rot90(flipped, k)))
    return out


def _hashes(m: Manifest, i: int) -> tuple[str, str, np.ndarray]:
    files = m.image_files(i)
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    with Image.open(files[0]) as img:
        arr = np.asarray(img.convert("RGB"))
    pix = hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()
    grey = arr.astype(np.float32).mean(axis=2)
    return h.hexdigest(), pix, grey


def _load(data: Manifest | str | Path) -> Manifest:
    return data if isinstance(data, Manifest) else read_manifest(data)


def find_overlap(train: Manifest | str | Path, eval: Manifest | str | Path, *, phash_threshold: int = 4,
                 near: bool = True, patients: bool = True) -> OverlapReport:
    """Find eval rows that duplicate (exactly or nearly) a training image or share its patient/group.

    Args:
        train, eval: manifests (or their paths).
        phash_threshold: largest Hamming distance (of 64 bits) for a near duplicate.
        near: compute perceptual hashes (the slow part: one decode per image).
        patients: compare the ``patient`` (else ``group``) columns.
    """
    if not 0 <= phash_threshold <= 64:
        raise DataError(f"--phash-threshold must be between 0 and 64 bits, got {phash_threshold}")
    tr, ev = _load(train), _load(eval)
    report = OverlapReport(n_train=len(tr), n_eval=len(ev), phash_threshold=phash_threshold)
    by_file: dict[str, list[int]] = defaultdict(list)
    by_pix: dict[str, list[int]] = defaultdict(list)
    train_ph: list[tuple[int, list[int]]] = []
    for i in range(len(tr)):
        try:
            fh, ph, grey = _hashes(tr, i)
        except (OSError, ValueError) as e:
            report.unreadable.append(f"train row {i}: {e}")
            continue
        by_file[fh].append(i)
        by_pix[ph].append(i)
        if near:
            train_ph.append((i, dihedral_phashes(grey)))
    img = lambda m, i: str(m.df["image"].iloc[i])  # noqa: E731
    ph_rows = [i for i, _ in train_ph]
    ph_table = np.array([v for _, v in train_ph], dtype=np.uint64).reshape(len(train_ph), 8)
    for j in range(len(ev)):
        try:
            fh, ph, grey = _hashes(ev, j)
        except (OSError, ValueError) as e:
            report.unreadable.append(f"eval row {j}: {e}")
            continue
        exact = set()
        for i in by_file.get(fh, []):
            report.pairs.append(OverlapPair(i, j, img(tr, i), img(ev, j), "file"))
            exact.add(i)
        for i in by_pix.get(ph, []):
            if i not in exact:
                report.pairs.append(OverlapPair(i, j, img(tr, i), img(ev, j), "pixels"))
                exact.add(i)
        if near and train_ph:
            dist = np.bitwise_count(ph_table ^ np.uint64(phash(grey))).min(axis=1)  # over the 8 variants
            for k in np.flatnonzero(dist <= phash_threshold):
                i = ph_rows[k]
                if i not in exact:
                    report.pairs.append(OverlapPair(i, j, img(tr, i), img(ev, j), "near", distance=int(dist[k])))
    if patients:
        col = next((c for c in PATIENT_COLUMNS if c in tr.columns and c in ev.columns), None)
        if col is not None:
            tr_vals, ev_vals = tr.column(col), ev.column(col)
            assert tr_vals is not None and ev_vals is not None  # col is a column of both
            rows: dict[str, list[int]] = defaultdict(list)
            for i, v in enumerate(tr_vals):
                if v is not None and str(v).strip():
                    rows[str(v)].append(i)
            for j, v in enumerate(ev_vals):
                for i in rows.get(str(v), []) if v is not None else []:
                    report.pairs.append(OverlapPair(i, j, img(tr, i), img(ev, j), "patient", patient=str(v)))
    return report
