"""Image-text datasets with decoded-image caching, deterministic augmentation and bad-sample handling.

Speed: images are decoded, squared and resized once into a uint8 cache (RAM, or a memory-mapped file
for larger sets), captions are tokenized once per distinct text, and normalisation runs per batch.
Reproducibility: every random choice for a sample (crop, flip, which caption) comes from a generator
seeded by ``(seed, epoch, index)``, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medvlp.data.manifest import Manifest, check_row
from medvlp.errors import DataError

if TYPE_CHECKING:
    from medvlp.domains import DomainCard
    from medvlp.models import ModelSpec


@dataclass
class ImageOptions:
    """How images become model input."""

    size: int = 64  # model input size
    grayscale: bool = False  # replicate one channel to three
    pad_to_square: bool = False  # pad (CXR) instead of centre-cropping to a square
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    reader: str = "auto"
    reader_options: dict[str, Any] = field(default_factory=dict)
    augment: bool = True  # random resized crop (scale 0.7-1)
    hflip: bool = True  # horizontal flips (off for CXR: laterality matters)


def to_square(img: Image.Image, size: int, pad: bool) -> Image.Image:
    """Pad (zero) or centre-crop to a square, then resize to ``size`` (bicubic, antialiased)."""
    w, h = img.size
    if w != h:
        if pad:
            s = max(w, h)
            canvas = Image.new(img.mode, (s, s))
            canvas.paste(img, ((s - w) // 2, (s - h) // 2))
            img = canvas
        else:
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img


def load_as_array(source: str, opts: ImageOptions) -> np.ndarray:
    """Read one image (any supported format) as uint8 (size, size, 3)."""
    from medvlp.io import read_image

    img = read_image(source, reader=opts.reader, options=opts.reader_options or None)
    if opts.grayscale:
        img = img.convert("L").convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(to_square(img, opts.size, opts.pad_to_square), dtype=np.uint8)


class Normalizer(torch.nn.Module):
    """uint8 (B,3,H,W) -> normalised float, run per batch (after transfer to the device)."""

    mean: torch.Tensor  # registered buffers
    inv_std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std


def augment(img: torch.Tensor, rng: np.random.Generator, hflip: bool) -> torch.Tensor:
    """Random resized crop (scale 0.7-1, ratio 3/4-4/3) and optional flip of a uint8 CHW tensor."""
    _, h, w = img.shape
    area = h * w * rng.uniform(0.7, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(w, max(8, int(round(math.sqrt(area * ratio)))))
    ch = min(h, max(8, int(round(math.sqrt(area / ratio)))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = img[:, top:top + ch, left:left + cw]
    if (ch, cw) != (h, w):
        crop = F.interpolate(crop.unsqueeze(0).float(), size=(h, w), mode="bilinear", align_corners=False,
                             antialias=False).round_().clamp_(0, 255).to(torch.uint8).squeeze(0)
    if hflip and rng.random() < 0.5:
        crop = crop.flip(-1)
    return crop


def _cache_key(m: Manifest, opts: ImageOptions) -> str:
    h = hashlib.sha256()
    h.update(str(m.path).encode())
    h.update(json.dumps([opts.size, opts.grayscale, opts.pad_to_square, opts.reader, opts.reader_options],
                        sort_keys=True, default=str).encode())
    for i in range(len(m)):
        src = m.image_source(i)
        fp = src.partition("#")[0]
        try:
            st = os.stat(fp)
            h.update(f"{src}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{src}|missing".encode())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDVLP_CACHE", Path.home() / ".cache" / "medvlp"))


class ImageTextDataset(torch.utils.data.Dataset):
    """Rows of a manifest as (uint8 image, token ids) pairs.

    Args:
        manifest: the rows.
        tokenizer: texts -> LongTensor; None for image-only use (evaluation).
        opts: image options.
        seed: base seed of the per-sample generators.
        train: augment and sample one caption per step (else: no augmentation, first caption).
        cache: "auto" (cache decoded images when they fit in ``cache_limit_gb``), "ram", "disk", "none".
        bad_log: called with each bad row dict (row, image, reason) when it is found.
        max_bad_fraction: more unusable rows than this stops with a DataError.
        need_captions: rows without a caption are bad (training).
        progress: show a progress bar while decoding.
        concept_fn: optional row -> concept annotations, returned as ``concepts`` (objectives use it).
        row_fields: optional manifest row -> extra item fields (e.g. ``group`` ids, label vectors).
        caption_fn: optional ``(row, caption, rng) -> caption`` applied in training (KEEP caption synthesis).
    """

    def __init__(
        self,
        manifest: Manifest,
        tokenizer: Callable[[list[str]], torch.Tensor] | None,
        opts: ImageOptions,
        *,
        seed: int = 0,
        train: bool = True,
        cache: str = "auto",
        cache_limit_gb: float = 4.0,
        bad_log: Callable[[dict[str, Any]], None] | None = None,
        max_bad_fraction: float = 0.01,
        need_captions: bool = True,
        progress: bool = True,
        concept_fn: Callable[[int, str], Any] | None = None,
        row_fields: Callable[[int], dict[str, Any]] | None = None,
        caption_fn: Callable[[int, str, np.random.Generator], str] | None = None,
    ) -> None:
        self.m = manifest
        self.tokenizer = tokenizer
        self.opts = opts
        self.seed = seed
        self.train = train
        self.concept_fn = concept_fn
        self.row_fields = row_fields
        self.caption_fn = caption_fn
        self.bad_log = bad_log
        self.max_bad_fraction = max_bad_fraction
        self.bad: list[dict[str, Any]] = []
        self._bad_seen: set[int] = set()  # rows of ``bad`` (take_bad_rows records each row once)
        self._late_bad: dict[int, dict[str, Any]] = {}  # this process: item -> record of a failed decode
        self.rows: list[int] = []
        for i in range(len(manifest)):
            reason = check_row(manifest, i, need_caption=need_captions and tokenizer is not None, read=False)
            if reason is None:
                self.rows.append(i)
            else:
                self._mark_bad(i, reason, bad_log)
        nbytes = len(self.rows) * opts.size * opts.size * 3
        mode = cache
        if cache == "auto":
            mode = "ram" if nbytes <= cache_limit_gb * 2**30 else "none"
        self.cache_mode = mode
        self.images: np.ndarray | None = None
        if mode in ("ram", "disk"):
            self._fill_cache(mode, bad_log, progress)
        check_bad_fraction(self)
        if not self.rows:
            raise DataError(f"{manifest.path}: no usable rows")
        self._token_cache: dict[str, torch.Tensor] = {}
        if tokenizer is not None:
            self._pretokenize()

    # ------------------------------------------------------------------------------------------
    def _record(self, i: int, reason: str) -> dict[str, Any]:
        return {"row": i, "image": str(self.m.df["image"].iloc[i]), "reason": reason}

    def _mark_bad(self, i: int, reason: str, bad_log: Callable | None) -> None:
        rec = self._record(i, reason)
        self.bad.append(rec)
        self._bad_seen.add(i)
        if bad_log is not None:
            bad_log(rec)

    def _fill_cache(self, mode: str, bad_log: Callable | None, progress: bool) -> None:
        s = self.opts.size
        path = None
        if mode == "disk":
            d = default_cache_dir() / "images"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{_cache_key(self.m, self.opts)}.npy"
            ok_path = path.with_suffix(".rows.json")
            if path.is_file() and ok_path.is_file():
                self.rows = json.loads(ok_path.read_text())
                self.images = np.load(path, mmap_mode="r")
                return
        arr = np.zeros((len(self.rows), s, s, 3), dtype=np.uint8)
        kept: list[int] = []
        it: Any = self.rows
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(self.rows, desc="decoding images", unit="img", leave=False, mininterval=1.0)
        for i in it:
            try:
                arr[len(kept)] = load_as_array(self.m.image_source(i), self.opts)
                kept.append(i)
            except Exception as e:  # any decode failure makes the row bad, never the run
                self._mark_bad(i, f"unreadable image: {getattr(e, 'reason', None) or e}", bad_log)
        self.rows = kept
        self.images = arr[: len(kept)]
        if path is not None:
            tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, self.images)
            os.replace(tmp, path)
            path.with_suffix(".rows.json").write_text(json.dumps(kept))

    def _pretokenize(self) -> None:
        texts = sorted({c for i in self.rows for c in self.m.captions(i)})
        if texts:
            assert self.tokenizer is not None  # called only with a tokenizer
            toks = self.tokenizer(texts)
            self._token_cache = {t: toks[k] for k, t in enumerate(texts)}

    def tokens(self, text: str) -> torch.Tensor:
        tok = self._token_cache.get(text)
        if tok is None:
            assert self.tokenizer is not None  # captions are tokenized only with a tokenizer
            tok = self.tokenizer([text])[0]
            self._token_cache[text] = tok
        return tok

    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def row_of(self, k: int) -> int:
        """Manifest row of dataset item ``k``."""
        return self.rows[k]

    def drop_bad_items(self) -> list[int]:
        """Leave out the items whose rows are in ``bad`` (found while iterating, see :func:`take_bad_rows`);
        returns the old indices of the items kept, in order (to select their already computed outputs)."""
        kept = [k for k, r in enumerate(self.rows) if r not in self._bad_seen]
        if len(kept) < len(self.rows):
            self.rows = [self.rows[k] for k in kept]
            if self.images is not None:
                self.images = self.images[kept]
            self._late_bad = {}
        return kept

    def image(self, k: int) -> torch.Tensor:
        """uint8 (3, S, S) image of item ``k`` (no augmentation)."""
        if self.images is not None:
            return torch.from_numpy(np.ascontiguousarray(self.images[k])).permute(2, 0, 1)
        return torch.from_numpy(load_as_array(self.m.image_source(self.rows[k]), self.opts)).permute(2, 0, 1)

    def _decodable(self, k: int) -> tuple[int, torch.Tensor, list[dict[str, Any]]]:
        """``(k2, image, bad)``: item ``k`` if its image decodes, else the first of the following items
        (wrapping around) that does, with a ``{row, image, reason}`` record of each one that did not.

        The substitute depends only on ``k`` (and on which images are broken), so a run with broken images
        keeps its batch size and its resumed batches stay the same as an uninterrupted run's.
        """
        if self.images is not None:  # decoded up front: bad rows were already left out
            return k, self.image(k), []
        bad: list[dict[str, Any]] = []
        n = len(self.rows)
        for j in range(min(n, MAX_SUBSTITUTE_TRIES)):
            k2 = (k + j) % n
            known = self._late_bad.get(k2)
            if known is None:
                try:
                    return k2, self.image(k2), bad
                except Exception as e:  # any reader failure makes the row bad, never the run
                    known = self._record(self.rows[k2], f"unreadable image: {getattr(e, 'reason', None) or e}")
                    self._late_bad[k2] = known
            bad.append(known)
        first = bad[0]
        raise DataError(
            f"{self.m.path}: {len(bad)} consecutive images from row {first['row']} ({first['image']}) could not "
            f"be decoded, e.g. {first['reason']}; run 'medvlp data validate {self.m.path}' to list the broken ones"
        )

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """One item; when its image fails to decode, a substitute's (see :meth:`_decodable`) with the
        records of the broken rows under ``bad_rows`` (``collate`` gathers them, :func:`take_bad_rows`
        logs them)."""
        k, epoch = key if isinstance(key, tuple) else (key, 0)
        k, img, bad = self._decodable(k)
        row = self.rows[k]
        item: dict[str, Any] = {"index": k}
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, k])
            if self.opts.augment:
                img = augment(img, rng, self.opts.hflip)
            caps = self.m.captions(row)
            caption = caps[int(rng.integers(len(caps)))] if caps else ""
            if self.caption_fn is not None:
                caption = self.caption_fn(row, caption, rng)
        else:
            caps = self.m.captions(row)
            caption = caps[0] if caps else ""
        item["image"] = img
        if self.tokenizer is not None:
            item["text"] = self.tokens(caption)
            item["caption"] = caption
        if self.concept_fn is not None:
            item["concepts"] = self.concept_fn(row, caption)
        if self.row_fields is not None:
            item.update(self.row_fields(row))
        if bad:
            item["bad_rows"] = bad
        return item


MAX_SUBSTITUTE_TRIES = 64  # consecutive undecodable images before a batch gives up with a DataError


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep strings and concept lists as lists; gather ``bad_rows`` records into one list."""
    out: dict[str, Any] = {}
    bad = [rec for it in items for rec in it.get("bad_rows", ())]
    if bad:
        out["bad_rows"] = bad
    for key in items[0]:
        if key == "bad_rows":
            continue
        vals = [it[key] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], int):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


def check_bad_fraction(ds: ImageTextDataset) -> None:
    """Raise a DataError when more than ``ds.max_bad_fraction`` of the manifest's rows are bad."""
    n_total = len(ds.m)
    frac = len(ds.bad) / max(n_total, 1)
    if frac > ds.max_bad_fraction:
        reasons = "; ".join(f"row {b['row']}: {b['reason']}" for b in ds.bad[:3])
        raise DataError(
            f"{len(ds.bad)} of {n_total} rows of {ds.m.path} are unusable ({frac:.1%} > "
            f"--max-bad-fraction {ds.max_bad_fraction:.1%}), e.g. {reasons}; run 'medvlp data validate "
            f"{ds.m.path}' for the full list"
        )


def take_bad_rows(ds: Any, batch: dict[str, Any], log_fn: Callable[[dict[str, Any]], None] | None) -> None:
    """Pop ``batch["bad_rows"]`` (images that failed to decode in a loader worker), record each row once
    in ``ds.bad`` (whichever worker or epoch met it), pass new ones to ``log_fn`` (e.g. the run's
    ``bad_samples.jsonl`` writer), and stop with a DataError, as the up-front check does, when the bad rows
    are now more than ``max_bad_fraction`` of the manifest.

    Streamed shards (whose workers replace bad samples themselves) get the records through their own
    ``note_bad``.
    """
    recs = batch.pop("bad_rows", None)
    if not recs:
        return
    if not isinstance(ds, ImageTextDataset):
        note = getattr(ds, "note_bad", None)  # streamed shards: ShardStream.note_bad (same contract)
        if note is not None:
            note(recs, log_fn)
        return
    new = False
    for rec in recs:
        if rec["row"] in ds._bad_seen:
            continue
        ds._bad_seen.add(rec["row"])
        ds.bad.append(rec)
        new = True
        if log_fn is not None:
            log_fn(rec)
    if new:
        check_bad_fraction(ds)


class StepSampler(torch.utils.data.Sampler):
    """Yields, per optimisation step, this rank's share of the global batch as (index, epoch) pairs.

    Epoch ``e`` visits a permutation seeded by ``seed + e``; batches are cut from it with the last
    partial batch dropped. Starting at ``start_step`` reproduces exactly the rest of an uninterrupted
    run, which is what makes ``--resume`` bit-exact.
    """

    def __init__(self, n: int, global_batch: int, *, seed: int, total_steps: int, start_step: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise DataError(f"batch size {global_batch} is not divisible by the {world} processes")
        if n < global_batch:
            raise DataError(f"{n} usable samples is fewer than one batch of {global_batch}; lower --batch-size")
        self.n, self.gb, self.seed = n, global_batch, seed
        self.total, self.start, self.rank, self.world = total_steps, start_step, rank, world
        self.steps_per_epoch = n // global_batch
        self._perm_epoch = -1
        self._perm: list[int] = []

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._perm_epoch = epoch
        return self._perm

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        epoch, b = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        per_rank = self.gb // self.world
        lo = b * self.gb + self.rank * per_rank
        return [(i, epoch) for i in perm[lo:lo + per_rank]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            yield self.batch_for_step(step)


def options_for(spec: ModelSpec, card: DomainCard, *, train: bool = True) -> ImageOptions:
    """Image options for a model spec and a domain card (the same at training and inference)."""
    pre = spec.preprocess_cfg
    return ImageOptions(
        size=spec.image_size, grayscale=card.image.grayscale, pad_to_square=card.image.pad_to_square,
        mean=tuple(pre.get("mean", card.image.mean)), std=tuple(pre.get("std", card.image.std)),
        reader=card.image.reader, reader_options=card.image.reader_options(),
        augment=train,
        hflip=not card.image.grayscale,  # chest films: laterality matters, never mirror
    )
