"""Stream WebDataset tar shards (written by ``medvlp data shard``) into training, rank- and worker-aware.

``pretrain --data 'shards/{000000..000099}.tar'`` trains from shards instead of a manifest: local paths,
a folder holding ``shards.json``, or any URL that webdataset's ``gopen`` understands (``https://``,
``s3://`` through a ``pipe:`` command, ``pipe:curl ...``); URLs need ``pip install medvlp[shards]``.

Items are the same as :class:`~medvlp.data.dataset.ImageTextDataset`'s (``index``, uint8 ``image`` at the
model size after the same square/resize and the same ``augment``, ``text`` tokens, ``caption``, optional
``concepts``), so ``collate`` and ``train_step`` work unchanged.

Order. Every (DataLoader worker, rank) pair is a *slot*; there are ``world * workers`` slots. In epoch
``e`` the shard list is permuted with a generator seeded by ``(seed, e)``; with at least as many shards
as slots, slot ``s`` reads shards ``s, s + S, s + 2S, ...`` of that order, otherwise every slot reads
every shard and keeps every ``S``-th sample (more reading, same guarantee). Either way each sample goes to
exactly one slot per epoch. A shuffle buffer seeded by ``(seed, e, slot)`` mixes samples within a slot,
and each sample's crop, flip and caption come from a generator seeded by ``(seed, e, key)``. Training
steps go round-robin over the workers of a rank (step ``j`` is built by slot ``j mod workers``), which is
the order the DataLoader returns them in.

Resume. A run resumed at ``start_step`` skips, in each slot, the samples the steps before it consumed,
so it sees exactly the batches the uninterrupted run would have seen -- *only* with the same number of
ranks and DataLoader workers (another layout gives a different, equally valid, order). Skipped samples
are read and their images decoded (a bad one must not be counted), but not resized or augmented.

Held-out samples. Samples whose ``json`` says ``split`` is ``val`` or ``test`` are never trained on.
Zero-shot metrics during ``pretrain`` need a manifest (``--val-data``); streamed shards give none on
their own, and the run's log says so.

Bad samples (an undecodable image, no caption, a missing member, a damaged tar) are skipped, reported once
(in epoch 0) through ``bad_log`` with ``{"row", "image", "reason", "shard"}``, and more than
``max_bad_fraction`` of a slot's samples in an epoch stops the run with a :class:`DataError`.

Example:
    >>> stream = ShardStream("shards/{000000..000003}.tar", tokenizer, opts, seed=0)  # doctest: +SKIP
    >>> stream.configure(batch_size=64, total_steps=1000)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=4)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import itertools
import json
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medvlp.data.dataset import ImageOptions, augment, collate, to_square
from medvlp.errors import ConfigError, DataError, ImageReadError

INDEX_NAME = "shards.json"
HELD_OUT_SPLITS = ("val", "test")
_IMAGE_EXTS = ("png", "jpg", "jpeg")
_MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".tsv")
_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_BRACE_RE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
# webdataset's key rule: the member path up to the first dot of its file name.
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_TOKEN_CACHE_MAX = 50_000


def is_shard_pattern(s: str | Path | None) -> bool:
    """Whether ``--data`` names tar shards (a brace pattern, ``.tar`` files, a URL, a shard folder).

    A manifest (``.csv``/``.jsonl``/``.parquet``) is never a shard pattern, even behind a URL.
    """
    if s is None:
        return False
    text = str(s).strip()
    if not text:
        return False
    if text.lower().endswith(_MANIFEST_SUFFIXES):
        return False
    if _BRACE_RE.search(text) or "::" in text or text.lower().endswith(_SHARD_SUFFIXES):
        return True
    if _URL_RE.match(text) or text.startswith("pipe:"):
        return True
    return Path(text).is_dir() and (Path(text) / INDEX_NAME).is_file()


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..012}`` ranges (zero padding kept) and ``{a,b}`` alternatives, as webdataset does.

    ``a::b`` joins several patterns. Raises ConfigError for a range whose ends are not integers.
    """
    out: list[str] = []
    for part in pattern.split("::"):
        out.extend(_expand_one(part))
    return out


def _expand_one(text: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", text)
    if m is None:
        return [text]
    body, head, tail = m.group(1), text[: m.start()], text[m.end():]
    if ".." in body and "," not in body:
        lo, _, hi = body.partition("..")
        if not (lo.strip().isdigit() and hi.strip().isdigit()):
            raise ConfigError(f"shard pattern {text!r}: range {{{body}}} must be two integers, e.g. {{000000..000099}}")
        width = len(lo) if lo.startswith("0") else 0
        a, b = int(lo), int(hi)
        step = 1 if b >= a else -1
        choices = [f"{v:0{width}d}" for v in range(a, b + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        choices = ["{" + body + "}"]  # not a pattern: keep the braces literally
        return [head + choices[0] + rest for rest in _expand_one(tail)]
    return [s for c in choices for s in _expand_one(head + c + tail)]


def _is_url(s: str) -> bool:
    return (bool(_URL_RE.match(s)) and not s.startswith("file://")) or s.startswith("pipe:")


def _local(s: str) -> Path:
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def _open(url: str) -> Any:
    """A binary stream of a shard: a local file, or anything webdataset's gopen opens."""
    if not _is_url(url):
        return open(_local(url), "rb")
    try:
        import webdataset as wds
    except ImportError:
        raise ConfigError(
            f"reading shards from {url.split(':', 1)[0]}: URLs needs the webdataset package: "
            f"pip install 'medvlp[shards]'"
        ) from None
    return wds.gopen(url, "rb")


def _shard_urls(pattern: str) -> tuple[list[str], Path | str | None]:
    """The shard list of ``pattern`` and where its ``shards.json`` would be."""
    text = str(pattern).strip()
    if not _is_url(text) and _local(text).is_dir():
        folder = _local(text)
        index = folder / INDEX_NAME
        names = json.loads(index.read_text(encoding="utf-8")).get("shards") or []
        if not names:
            raise DataError(f"{index} lists no shards")
        return [str(folder / n) for n in names], index
    urls = expand_braces(text)
    first = urls[0]
    if _is_url(first):
        return urls, first.rsplit("/", 1)[0] + "/" + INDEX_NAME if "/" in first else None
    return urls, _local(first).parent / INDEX_NAME


def _read_index(where: Path | str | None) -> dict[str, Any] | None:
    if where is None:
        return None
    try:
        if isinstance(where, Path):
            if not where.is_file():
                return None
            return json.loads(where.read_text(encoding="utf-8"))
        with _open(where) as fh:  # a remote index is optional: any failure means "count the samples"
            return json.loads(fh.read())
    except (OSError, ValueError, ConfigError):
        return None


def iter_tar(url: str) -> Iterator[dict[str, Any]]:
    """Samples of one shard in file order: ``{"__key__", "__url__", ext: bytes, ...}``.

    Members of a sample are consecutive in the tar (webdataset's layout). A damaged archive ends the
    shard with a final ``{"__error__": reason}`` record instead of an exception.
    """
    current: dict[str, Any] | None = None
    try:
        with _open(url) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                m = _MEMBER_RE.match(info.name)
                if m is None:
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                member = tar.extractfile(info)
                current[ext] = member.read() if member is not None else b""
    except FileNotFoundError:
        raise DataError(f"shard not found: {url}; check the --data pattern") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        if current is not None:
            yield current
        yield {"__key__": None, "__url__": url, "__error__": f"unreadable shard ({type(e).__name__}: {e})"}
        return
    if current is not None:
        yield current


def _key_number(key: str) -> int:
    """A stable integer for a sample key (its row number when numeric, else a CRC32)."""
    base = key.rsplit("/", 1)[-1]
    return int(base) if base.isdigit() else zlib.crc32(key.encode("utf-8"))


def decode_image(data: bytes, opts: ImageOptions) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (size, size, 3), exactly as ``load_as_array`` prepares a file.

    Raises:
        ImageReadError: the bytes are not a decodable image.
    """
    from medvlp.io.images import read_pil  # the same Pillow path (alpha, 16-bit, modes) as file reads

    img = read_pil(io.BytesIO(data))  # type: ignore[arg-type]  # Image.open takes a file object too
    if opts.grayscale:
        img = img.convert("L").convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(to_square(img, opts.size, opts.pad_to_square), dtype=np.uint8)  # a writable copy


def _check_image(data: bytes) -> None:
    """Decode without resizing (used while skipping on resume, where only good/bad matters)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - any decode failure makes the sample bad
        raise ImageReadError("<shard member>", f"damaged or truncated image ({type(e).__name__})") from None


def _captions(raw: bytes | None) -> list[str]:
    if raw is None:
        return []
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = text  # a plain-text caption (shards written by other tools)
    items = value if isinstance(value, list) else [value]
    return [str(c).strip() for c in items if c is not None and str(c).strip()]


class ShardStream(torch.utils.data.IterableDataset):
    """Tar shards as a stream of training items, split over ranks and DataLoader workers.

    Without :meth:`configure`, iterating gives one epoch (0) of items of this rank (each worker its part):
    for checks and tests. After ``configure(batch_size, total_steps, start_step)``, iterating gives this
    rank's share (``batch_size / world`` items, collated) of every remaining step; load it with
    ``DataLoader(stream, batch_size=None, num_workers=W)``.

    Args:
        pattern: brace pattern, shard file, ``a::b`` list, URL(s) or a folder with ``shards.json``.
        tokenizer: texts -> LongTensor of token ids.
        opts: image options (size, square padding, greyscale, augmentation, flips).
        seed: seed of shard order, shuffle buffer and per-sample augmentation.
        rank: this process's rank; world: number of processes.
        shuffle_buffer: samples held for shuffling within a slot (0: file order).
        bad_log: called with each bad sample's record (once, in epoch 0).
        max_bad_fraction: more bad samples than this fraction of a slot's epoch stops with DataError.
        concept_fn: ``(row, caption) -> concepts`` (called with row -1: concepts come from the caption).
        caption_fn: optional ``(row, caption, rng) -> caption`` (row -1).
        held_out: ``split`` values kept out of training.
        count: samples per epoch when known; else from ``shards.json``, else counted once.

    Raises:
        ConfigError: an empty pattern or a URL without webdataset installed.
        DataError: local shards missing, or no sample in them.
    """

    def __init__(
        self,
        pattern: str,
        tokenizer: Callable[[list[str]], torch.Tensor] | None,
        opts: ImageOptions,
        *,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle_buffer: int = 1000,
        bad_log: Callable[[dict[str, Any]], None] | None = None,
        max_bad_fraction: float = 0.01,
        concept_fn: Callable[[int, str], Any] | None = None,
        caption_fn: Callable[[int, str, np.random.Generator], str] | None = None,
        held_out: tuple[str, ...] = HELD_OUT_SPLITS,
        count: int | None = None,
    ) -> None:
        super().__init__()
        if not str(pattern).strip():
            raise ConfigError("empty shard pattern")
        self.pattern = str(pattern)
        self.urls, index_at = _shard_urls(self.pattern)
        missing = [u for u in self.urls if not _is_url(u) and not _local(u).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(self.urls)} shard(s) of {self.pattern} do not exist (first: {missing[0]}); "
                f"check the pattern against the files `medvlp data shard` wrote"
            )
        self.tokenizer, self.opts, self.seed = tokenizer, opts, seed
        self.rank, self.world = rank, world
        self.shuffle_buffer = max(0, int(shuffle_buffer))
        self.bad_log, self.max_bad_fraction = bad_log, max_bad_fraction
        self.concept_fn, self.caption_fn = concept_fn, caption_fn
        self.held_out = tuple(held_out)
        self.bad: list[dict[str, Any]] = []
        self.images = None  # the loop's "decoded-image cache" attribute: streams have none
        self.index = _read_index(index_at)
        self.count, self.count_source = self._count(count)
        if self.count == 0:
            raise DataError(f"{self.pattern}: the shards hold no training samples")
        self.batch_size: int | None = None
        self.total_steps = 0
        self.start_step = 0
        self._tokens: dict[str, torch.Tensor] = {}

    # -- size ---------------------------------------------------------------------------------------
    def _count(self, given: int | None) -> tuple[int, str]:
        if given is not None:
            return int(given), "given"
        idx = self.index or {}
        names, per = idx.get("shards") or [], idx.get("per_shard") or []
        # Shards written without --split may hold val/test samples the index does not count apart: local
        # ones are counted exactly (one pass over the tars, no decoding); remote ones trust the index.
        mixed = idx.get("split") is None and not any(_is_url(u) for u in self.urls)
        if len(names) == len(per) and names and not mixed:
            counts = dict(zip(names, per, strict=True))
            base = [u.rsplit("/", 1)[-1] for u in self.urls]
            if all(b in counts for b in base):
                return sum(int(counts[b]) for b in base), INDEX_NAME
        return count_samples(self.urls, held_out=self.held_out), "counted"

    def __len__(self) -> int:
        """Training samples per epoch (held-out ones excluded, except when taken from a remote index)."""
        return self.count

    # -- layout -------------------------------------------------------------------------------------
    def configure(self, batch_size: int, total_steps: int, start_step: int = 0) -> None:
        """Switch to step mode: this rank yields ``batch_size / world`` items per step in ``[start, total)``.

        Raises:
            DataError: the batch does not split evenly over the ranks.
        """
        if batch_size % self.world:
            raise DataError(f"batch size {batch_size} is not divisible by the {self.world} processes")
        self.batch_size, self.total_steps, self.start_step = int(batch_size), int(total_steps), int(start_step)

    @staticmethod
    def _worker() -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _slot_shards(self, epoch: int, slot: int, n_slots: int) -> tuple[list[str], int | None]:
        """The shards slot reads in ``epoch`` and, when shards are fewer than slots, its sample stride."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        shards = [self.urls[i] for i in order]
        if len(shards) >= n_slots:
            return shards[slot::n_slots], None
        return shards, n_slots

    # -- samples ------------------------------------------------------------------------------------
    def raw_samples(self, epoch: int, slot: int, n_slots: int, *, report: bool = True,
                    check_only: bool = False) -> Iterator[dict[str, Any]]:
        """Good samples of a slot in one epoch, shuffled: ``{"key", "image": bytes|array, "captions", "meta"}``.

        ``check_only`` decodes images only to tell good from bad (for skipping); otherwise ``image`` is
        the uint8 array at the model size (not augmented).
        """
        shards, stride = self._slot_shards(epoch, slot, n_slots)
        rng = np.random.default_rng([self.seed, epoch, slot, 1])
        buf: list[dict[str, Any]] = []
        good = bad = 0
        position = 0
        for url in shards:
            for s in iter_tar(url):
                if "__error__" not in s:
                    position += 1
                    if stride is not None and (position - 1) % stride != slot:
                        continue
                elif stride is not None and slot != 0:
                    continue  # every slot sees a damaged shard: let one report it
                sample, reason = self._prepare(s, check_only)
                if reason == "held-out":
                    continue
                if sample is None:
                    bad += 1
                    if report and epoch == 0:
                        self._report(s, reason or "bad sample")
                    self._check_bad(bad, good + bad, slot, final=False)
                    continue
                good += 1
                if self.shuffle_buffer <= 1:
                    yield sample
                    continue
                buf.append(sample)
                if len(buf) >= self.shuffle_buffer:
                    j = int(rng.integers(len(buf)))
                    buf[j], buf[-1] = buf[-1], buf[j]
                    yield buf.pop()
        while buf:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
        self._check_bad(bad, good + bad, slot, final=True)
        if good == 0:
            raise DataError(
                f"{self.pattern}: slot {slot} of {n_slots} (rank x worker) got no usable sample in epoch {epoch}; "
                f"use fewer workers or check the shards"
            )

    def _prepare(self, s: dict[str, Any], check_only: bool) -> tuple[dict[str, Any] | None, str | None]:
        if "__error__" in s:
            return None, s["__error__"]
        meta: dict[str, Any] = {}
        if "json" in s:
            try:
                meta = json.loads(s["json"])
            except ValueError:
                return None, "unreadable json member"
            if not isinstance(meta, dict):
                meta = {}
        if str(meta.get("split")) in self.held_out:
            return None, "held-out"
        ext = next((e for e in _IMAGE_EXTS if e in s), None)
        if ext is None:
            return None, "no image member (png/jpg)"
        caps = _captions(s.get("txt"))
        if self.tokenizer is not None and not caps:
            return None, "empty caption"
        try:
            if check_only:
                _check_image(s[ext])
                image: Any = None
            else:
                image = decode_image(s[ext], self.opts)
        except ImageReadError as e:
            return None, f"unreadable image: {e.reason}"
        return {"key": s["__key__"], "image": image, "captions": caps, "meta": meta}, None

    def _report(self, s: dict[str, Any], reason: str) -> None:
        image = s.get("__key__")
        try:
            image = json.loads(s["json"]).get("image", image) if "json" in s else image
        except (ValueError, AttributeError):
            pass
        rec = {"row": s.get("__key__"), "image": image, "reason": reason, "shard": s.get("__url__")}
        self.bad.append(rec)
        if self.bad_log is not None:
            self.bad_log(rec)

    def _check_bad(self, bad: int, seen: int, slot: int, *, final: bool) -> None:
        # mid-epoch only once enough samples were seen for the fraction to mean something
        if bad and (final or seen >= 200) and bad / seen > self.max_bad_fraction:
            raise DataError(
                f"{self.pattern}: {bad} of {seen} samples read by slot {slot} are unusable ({bad / seen:.1%} > "
                f"--max-bad-fraction {self.max_bad_fraction:.1%}); reasons in bad_samples.jsonl"
            )

    # -- items ----------------------------------------------------------------------------------------
    def tokens(self, text: str) -> torch.Tensor:
        tok = self._tokens.get(text)
        if tok is None:
            if len(self._tokens) >= _TOKEN_CACHE_MAX:
                self._tokens.clear()
            tok = self._tokens[text] = self.tokenizer([text])[0]  # type: ignore[misc]
        return tok

    def make_item(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        """A training item (same keys and types as ``ImageTextDataset.__getitem__``)."""
        k = _key_number(sample["key"])
        img = torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1)
        rng = np.random.default_rng([self.seed, epoch, k])
        if self.opts.augment:
            img = augment(img, rng, self.opts.hflip)
        caps = sample["captions"]
        caption = caps[int(rng.integers(len(caps)))] if caps else ""
        if self.caption_fn is not None:
            caption = self.caption_fn(-1, caption, rng)
        item: dict[str, Any] = {"index": k, "image": img}
        if self.tokenizer is not None:
            item["text"] = self.tokens(caption)
            item["caption"] = caption
        if self.concept_fn is not None:
            item["concepts"] = self.concept_fn(-1, caption)
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, n_workers = self._worker()
        n_slots = self.world * n_workers
        if self.batch_size is None:
            slot = self.rank * n_workers + worker
            for sample in self.raw_samples(0, slot, n_slots):
                yield self.make_item(sample, 0)
            return
        per_rank = self.batch_size // self.world
        # Step j is built by the worker the DataLoader asks at that moment: (j - start) mod W. Its samples
        # come from the stream of residue j mod W, so the order does not depend on where a run resumed.
        residue = (worker + self.start_step) % n_workers
        slot = self.rank * n_workers + residue
        mine = range(self.start_step + worker, self.total_steps, n_workers)
        if not len(mine):
            return
        done_before = len(range(residue, self.start_step, n_workers))
        items = self._slot_stream(slot, n_slots, skip=done_before * per_rank)
        for _ in mine:
            yield collate([next(items) for _ in range(per_rank)])

    def _slot_stream(self, slot: int, n_slots: int, *, skip: int) -> Iterator[dict[str, Any]]:
        """Items of a slot over epochs, after passing over ``skip`` samples without preparing them."""
        for epoch in itertools.count():
            if skip >= 1:
                # count this epoch's samples cheaply; if the skip ends inside it, re-read it for real
                n = sum(1 for _ in self.raw_samples(epoch, slot, n_slots, report=False, check_only=True))
                if skip >= n:
                    skip -= n
                    continue
            first = skip
            skip = 0
            # bad samples are reported in epoch 0 even when resuming inside it (a duplicate line in
            # bad_samples.jsonl is better than losing the ones the interrupted run never reached)
            for j, sample in enumerate(self.raw_samples(epoch, slot, n_slots)):
                if j >= first:
                    yield self.make_item(sample, epoch)


def count_samples(urls: list[str], *, held_out: tuple[str, ...] = HELD_OUT_SPLITS) -> int:
    """Samples over ``urls`` (one pass, no image decoding), leaving out those of a held-out split."""
    n = 0
    for url in urls:
        for s in iter_tar(url):
            if "__error__" in s:
                continue
            if "json" in s:
                try:
                    if str(json.loads(s["json"]).get("split")) in held_out:
                        continue
                except (ValueError, AttributeError):
                    pass
            n += 1
    return n
