"""Stream WebDataset tar shards (written by ``medvlp data shard``) into training: elastic and exactly resumable.

``pretrain --data 'shards/{000000..000099}.tar'`` trains from shards instead of a manifest: local paths,
a folder holding ``shards.json``, ``https://`` URLs, ``s3://``/``gs://`` (with fsspec) or ``pipe:CMD``
(see :mod:`medvlp.data.shardio` for fetching, retries and the local shard cache).

Items are the same as :class:`~medvlp.data.dataset.ImageTextDataset`'s (``index``, uint8 ``image`` at the
model size after the same square/resize and the same ``augment``, ``text`` tokens, ``caption``, optional
``concepts``), so ``collate`` and ``train_step`` work unchanged.

Order. The global sample order of epoch ``e`` depends only on the seed, ``e`` and the shard list, never
on the number of processes or DataLoader workers: the shards are permuted with a generator seeded by
``(seed, e)``, consecutive shards of that order are grouped until a group holds ``shuffle_buffer``
samples, and each group's samples are permuted with a generator seeded by ``(seed, e, group)``. Epochs
follow one another, so the run is one sequence of global positions; step ``s`` takes positions
``[s * B, (s + 1) * B)`` of it (``B`` the global batch), rank ``r`` of ``W`` takes the contiguous
``r``-th ``B / W`` of those (as :class:`~medvlp.data.dataset.StepSampler` does for manifests), and a
rank's DataLoader workers take whole steps in turn. Each sample's crop, flip and caption come from a
generator seeded by ``(seed, e, position in the epoch)``.

Resume. The checkpoint records the data position (:meth:`ShardStream.position`): samples consumed, the
shard list's fingerprint and the bad samples found so far. Resuming -- on any number of processes and
workers, with the same global batch -- computes the positions of the remaining steps directly and reads
those samples by byte offset from each shard's index (``NNNNNN.tar.idx.json``): nothing before them
is read or decoded, so a resume costs the same at step 10 and at step 10 million. Shards without an index
are scanned once (tar headers and ``json`` members only, no image decoding).

Bad samples (an undecodable image, no caption, a missing member, a damaged tar) are replaced by the next
good sample of the epoch order (deterministically, so every layout fills the batch alike), reported once
through ``bad_log`` with ``{"row", "image", "reason", "shard", "ref"}``, remembered in the checkpoint (a
resumed run neither decodes nor counts them again), and more than ``max_bad_fraction`` of the epoch stops
the run with a :class:`DataError`.

Held-out samples. Samples whose ``json`` says ``split`` is ``val`` or ``test`` are never trained on.
Zero-shot metrics during ``pretrain`` need a manifest (``--val-data``); streamed shards give none on
their own, and the run's log says so.

Example:
    >>> stream = ShardStream("shards/{000000..000003}.tar", tokenizer, opts, seed=0)  # doctest: +SKIP
    >>> stream.configure(batch_size=64, total_steps=1000)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=4)  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvlp.data.dataset import ImageOptions, augment, collate, to_square
from medvlp.data.shardio import (
    Fetcher,
    ShardCache,
    build_index,
    expand_braces,
    is_url,
    local_path,
    parse_index,
    read_sample,
    shard_name,
    sidecar,
)
from medvlp.errors import ConfigError, DataError, ImageReadError

log = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
HELD_OUT_SPLITS = ("val", "test")
STATE_FORMAT = "medvlp-stream-position/1"
_IMAGE_EXTS = ("png", "jpg", "jpeg")
_MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".tsv")
_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_BRACE_RE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
_TOKEN_CACHE_MAX = 50_000
_INDEX_CACHE = 64  # shard indexes kept in memory per process


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


def _shard_urls(pattern: str) -> tuple[list[str], Path | str | None]:
    """The shard list of ``pattern`` and where its ``shards.json`` would be."""
    text = str(pattern).strip()
    if not is_url(text) and local_path(text).is_dir():
        folder = local_path(text)
        index = folder / INDEX_NAME
        names = json.loads(index.read_text(encoding="utf-8")).get("shards") or []
        if not names:
            raise DataError(f"{index} lists no shards")
        return [str(folder / n) for n in names], index
    urls = expand_braces(text)
    first = urls[0]
    if first.startswith("pipe:"):
        return urls, None
    if is_url(first):
        return urls, first.rsplit("/", 1)[0] + "/" + INDEX_NAME if "/" in first else None
    return urls, local_path(first).parent / INDEX_NAME


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
    """Tar shards as a stream of training items in one global order, split over ranks and workers.

    Without :meth:`configure`, iterating gives this rank's (and worker's) strided share of epoch 0, bad
    samples left out: for checks and tests. After ``configure(batch_size, total_steps, start_step, state)``
    iterating gives this rank's share (``batch_size / world`` items, collated) of every remaining step;
    load it with ``DataLoader(stream, batch_size=None, num_workers=W)``.

    Args:
        pattern: brace pattern, shard file, ``a::b`` list, URL(s) or a folder with ``shards.json``.
        tokenizer: texts -> LongTensor of token ids.
        opts: image options (size, square padding, greyscale, augmentation, flips).
        seed: seed of shard order, in-group shuffle and per-sample augmentation.
        rank: this process's rank; world: number of processes.
        shuffle_buffer: consecutive shards (of the epoch's shard order) are shuffled together until they
            hold this many samples (0 or 1: each shard in file order).
        bad_log: called with each bad sample's record (once).
        max_bad_fraction: more distinct bad samples than this fraction of an epoch stops with DataError.
        concept_fn: ``(row, caption) -> concepts`` (called with row -1: concepts come from the caption).
        caption_fn: optional ``(row, caption, rng) -> caption`` (row -1).
        meta_fn: optional ``(meta, key) -> fields``: extra item fields from a sample's ``json`` member and
            its key number (an objective's per-sample targets: KEEP groups, softclip label vectors).
        held_out: ``split`` values kept out of training.
        cache_dir: keep local copies of remote (or compressed) shards here (default ``$MEDVLP_SHARD_CACHE``,
            else a temporary folder per process).
        retries: tries after the first for a remote read that fails transiently.

    Raises:
        ConfigError: an empty pattern, or a scheme whose fsspec package is missing.
        DataError: shards missing (named), or no training sample in them.
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
        meta_fn: Callable[[dict[str, Any], int], dict[str, Any]] | None = None,
        held_out: tuple[str, ...] = HELD_OUT_SPLITS,
        cache_dir: str | Path | None = None,
        retries: int = 4,
    ) -> None:
        super().__init__()
        if not str(pattern).strip():
            raise ConfigError("empty shard pattern")
        self.pattern = str(pattern)
        self.urls, index_at = _shard_urls(self.pattern)
        missing = [u for u in self.urls if not is_url(u) and not local_path(u).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(self.urls)} shard(s) of {self.pattern} do not exist (first: {missing[0]}); "
                f"check the pattern against the files `medvlp data shard` wrote"
            )
        self.names = [shard_name(u) for u in self.urls]
        self.tokenizer, self.opts, self.seed = tokenizer, opts, seed
        self.rank, self.world = rank, world
        self.shuffle_buffer = max(0, int(shuffle_buffer))
        self.bad_log, self.max_bad_fraction = bad_log, max_bad_fraction
        self.concept_fn, self.caption_fn, self.meta_fn = concept_fn, caption_fn, meta_fn
        self.index: dict[str, Any] = {}  # shards.json, where there is one
        self.held_out = tuple(str(h) for h in held_out)
        self.cache = ShardCache(cache_dir, fetcher=Fetcher(retries))
        self.bad: list[dict[str, Any]] = []  # bad samples met (this process, or remembered from a checkpoint)
        self._bad_refs: set[tuple[str, int]] = set()  # refs of ``bad``
        self._known_bad: set[tuple[str, int]] = set()  # refs this process will not read again
        self.images = None  # the loop's "decoded-image cache" attribute: streams have none
        self._indexes: OrderedDict[int, tuple[list[list[Any]], int | None]] = OrderedDict()
        self._plans: OrderedDict[int, tuple[list[list[int]], list[int]]] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._pending: list[dict[str, Any]] = []  # bad records met in this process, not handed on yet
        self._scanned = 0  # shards indexed by scanning (no index file)
        self.per_shard, self.count_source = self._counts(index_at)
        self.note_bad(self._pending, bad_log, check=False)  # damaged shards found while counting
        self._pending = []
        self.count = sum(self.per_shard)
        if self.count == 0:
            raise DataError(f"{self.pattern}: the shards hold no training samples")
        self.fingerprint = hashlib.sha1(
            "\n".join(f"{n}\t{c}" for n, c in zip(self.names, self.per_shard, strict=True)).encode("utf-8")
        ).hexdigest()[:16]
        self.batch_size: int | None = None
        self.total_steps = 0
        self.start_step = 0
        self._base = 0
        self._tokens: dict[str, torch.Tensor] = {}

    # -- size and indexes -----------------------------------------------------------------------------
    def _counts(self, index_at: Path | str | None) -> tuple[list[int], str]:
        """Training samples per shard: from ``shards.json`` when it says every sample is of one split, else
        from the shards' indexes (scanned where there is none)."""
        idx = self.index = self._folder_index(index_at) or {}
        names, per, split = idx.get("shards") or [], idx.get("per_shard") or [], idx.get("split")
        if split is not None and names and len(names) == len(per):
            counts: dict[str, Any] = dict(zip(names, per, strict=True))
            if all(n in counts for n in self.names):
                keep = str(split) not in self.held_out
                return [int(counts[n]) if keep else 0 for n in self.names], INDEX_NAME
        unindexed = [u for u in self.urls if not is_url(u) and not local_path(sidecar(u) or "").is_file()]
        if unindexed:
            log.warning("%d of %d shard(s) have no %s index (first: %s): they are scanned (tar headers and json "
                        "members, no image decoding) each time a process first reads them; `medvlp data shard` "
                        "writes the index", len(unindexed), len(self.urls), "NNNNNN.tar.idx.json", unindexed[0])
        found = [len(self._entries(i)) for i in range(len(self.urls))]
        if self._scanned == 0:
            return found, "shard indexes"
        return found, "scanned shards" if self._scanned == len(self.urls) else f"shard indexes ({self._scanned} scanned)"

    def _folder_index(self, where: Path | str | None) -> dict[str, Any] | None:
        try:
            if where is None:
                return None
            if isinstance(where, Path):
                return json.loads(where.read_text(encoding="utf-8")) if where.is_file() else None
            raw = self.cache.fetch_bytes(where)
            return None if raw is None else json.loads(raw)
        except (OSError, ValueError, DataError):
            return None  # optional: without it the shards' own indexes count the samples

    def _entries(self, i: int) -> list[list[Any]]:
        """The training samples of shard ``i`` (index entries, file order); cached per process."""
        hit = self._indexes.get(i)
        if hit is not None:
            self._indexes.move_to_end(i)
            return hit[0]
        url = self.urls[i]
        idx = self._load_index(url)
        entries = [e for e in idx["samples"] if e[1] is None or str(e[1]) not in self.held_out]
        self._indexes[i] = (entries, idx.get("size"))
        while len(self._indexes) > _INDEX_CACHE:
            self._indexes.popitem(last=False)
        if idx.get("error"):
            self._pending_shard_error(url, str(idx["error"]))
        return entries

    def _load_index(self, url: str) -> dict[str, Any]:
        car = sidecar(url)
        raw: bytes | None = None
        if car is not None and not is_url(url):
            p = local_path(car)
            raw = p.read_bytes() if p.is_file() else None
        elif car is not None:
            raw = self.cache.fetch_bytes(car)
        if raw is not None:
            idx = parse_index(raw, car or url)
            if is_url(url):
                return idx
            local = self.cache.path(url)
            if local.stat().st_size == idx.get("size"):
                return idx
            log.warning("%s: its index is stale (the shard was rewritten); scanning the shard instead", car)
        self._scanned += 1
        return build_index(self.cache.path(url), shard_name(url))

    @property
    def vocabulary(self) -> dict[str, list[str]] | None:
        """The shards' distinct labels, groups and concept ids (``shards.json``), or None where it is not known."""
        vocab = self.index.get("vocabulary")
        return vocab if isinstance(vocab, dict) else None

    def __len__(self) -> int:
        """Training samples per epoch (held-out ones excluded)."""
        return self.count

    # -- the global order -----------------------------------------------------------------------------
    def _plan(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """Epoch ``epoch``'s shard groups (in order) and each group's first position."""
        hit = self._plans.get(epoch)
        if hit is not None:
            return hit
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls)).tolist()
        groups: list[list[int]] = []
        starts: list[int] = []
        cur: list[int] = []
        size = pos = 0
        for i in order:
            if self.per_shard[i] == 0:
                continue
            cur.append(i)
            size += self.per_shard[i]
            if size >= max(1, self.shuffle_buffer):
                groups.append(cur)
                starts.append(pos)
                pos += size
                cur, size = [], 0
        if cur:
            groups.append(cur)
            starts.append(pos)
        self._plans[epoch] = (groups, starts)
        while len(self._plans) > 2:
            self._plans.popitem(last=False)
        return groups, starts

    def ref_at(self, epoch: int, offset: int) -> tuple[int, int]:
        """The sample at ``offset`` of epoch ``epoch``'s order: (shard number, training sample of that shard)."""
        groups, starts = self._plan(epoch)
        g = bisect.bisect_right(starts, offset) - 1
        local = offset - starts[g]
        if self.shuffle_buffer > 1:
            key = (epoch, g)
            perm = self._perms.get(key)
            if perm is None:
                n = sum(self.per_shard[i] for i in groups[g])
                perm = self._perms[key] = np.random.default_rng([self.seed, epoch, 1, g]).permutation(n)
                while len(self._perms) > 8:
                    self._perms.popitem(last=False)
            local = int(perm[local])
        for i in groups[g]:
            if local < self.per_shard[i]:
                return i, local
            local -= self.per_shard[i]
        raise AssertionError("offset beyond its group")  # pragma: no cover - starts/sizes agree by construction

    # -- samples ------------------------------------------------------------------------------------
    def _load(self, i: int, j: int) -> tuple[dict[str, Any] | None, str | None, dict[str, Any]]:
        """Sample ``j`` of shard ``i`` decoded, or None and why; plus what a bad-sample record names."""
        url = self.urls[i]
        entries = self._entries(i)
        where: dict[str, Any] = {"row": None, "image": None, "shard": url, "ref": [self.names[i], j]}
        if j >= len(entries):
            return None, f"the shard holds {len(entries)} training samples, fewer than {INDEX_NAME} says", where
        entry = entries[j]
        where["row"] = where["image"] = entry[0]
        try:
            members = read_sample(self.cache.path(url, self._indexes[i][1]), entry)
        except OSError as e:
            return None, f"unreadable shard member ({e})", where
        sample, reason = self._prepare(entry[0], members)
        if "json" in members:
            try:
                where["image"] = json.loads(members["json"]).get("image", entry[0])
            except (ValueError, AttributeError):
                pass
        return sample, reason, where

    def _prepare(self, key: str, s: dict[str, bytes]) -> tuple[dict[str, Any] | None, str | None]:
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
            image = decode_image(s[ext], self.opts)
        except ImageReadError as e:
            return None, f"unreadable image: {e.reason}"
        return {"key": key, "image": image, "captions": caps, "meta": meta}, None

    def _pending_shard_error(self, url: str, reason: str) -> None:
        ref = (shard_name(url), -1)
        if ref not in self._known_bad:
            self._known_bad.add(ref)
            self._pending.append({"row": None, "image": None, "reason": reason, "shard": url, "ref": list(ref)})

    def _item_at(self, position: int) -> dict[str, Any]:
        """The item at a global position; a bad sample is replaced by the next good one of the epoch order."""
        epoch, offset = divmod(position, self.count)
        for t in range(self.count):
            i, j = self.ref_at(epoch, (offset + t) % self.count)
            ref = (self.names[i], j)
            if ref in self._known_bad:
                continue
            sample, reason, where = self._load(i, j)
            if sample is not None:
                return self.make_item(sample, epoch, offset)
            self._known_bad.add(ref)
            if reason != "held-out":
                self._pending.append({**where, "reason": reason or "bad sample"})
        raise DataError(f"{self.pattern}: no usable sample in epoch {epoch}; check the shards")

    def note_bad(self, records: list[dict[str, Any]], log_fn: Callable[[dict[str, Any]], None] | None = None,
                 *, check: bool = True) -> None:
        """Record bad samples once each (from any worker or rank), pass new ones to ``log_fn``, and stop
        with a DataError once they are more than ``max_bad_fraction`` of an epoch."""
        for rec in records:
            ref = (str(rec["ref"][0]), int(rec["ref"][1]))
            self._known_bad.add(ref)
            if ref in self._bad_refs:
                continue
            self._bad_refs.add(ref)
            self.bad.append(rec)
            if log_fn is not None:
                log_fn(rec)
        if check and len(self._bad_refs) > self.max_bad_fraction * self.count:
            first = self.bad[0]
            raise DataError(
                f"{self.pattern}: {len(self._bad_refs)} of {self.count} samples are unusable (more than "
                f"--max-bad-fraction {self.max_bad_fraction:.1%}); first: {first['shard']} sample {first['row']}: "
                f"{first['reason']}; all reasons in bad_samples.jsonl"
            )

    # -- items ----------------------------------------------------------------------------------------
    def tokens(self, text: str) -> torch.Tensor:
        tok = self._tokens.get(text)
        if tok is None:
            if len(self._tokens) >= _TOKEN_CACHE_MAX:
                self._tokens.clear()
            tok = self._tokens[text] = self.tokenizer([text])[0]  # type: ignore[misc]
        return tok

    def make_item(self, sample: dict[str, Any], epoch: int, offset: int) -> dict[str, Any]:
        """A training item (same keys and types as ``ImageTextDataset.__getitem__``)."""
        k = _key_number(sample["key"])
        img = torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1)
        rng = np.random.default_rng([self.seed, epoch, offset])
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
        if self.meta_fn is not None:
            item.update(self.meta_fn(sample["meta"], k))
        return item

    # -- steps and positions ----------------------------------------------------------------------------
    def configure(self, batch_size: int, total_steps: int, start_step: int = 0,
                  state: dict[str, Any] | None = None) -> None:
        """Step mode: this rank yields ``batch_size / world`` items per step in ``[start_step, total_steps)``.

        ``state`` is a checkpoint's :meth:`position`: the run goes on from the samples it had consumed, and
        the bad samples it had found are logged again (``bad_log``) but neither read nor counted again.

        Raises:
            DataError: the batch does not split evenly over the ranks.
        """
        if batch_size % self.world:
            raise DataError(f"batch size {batch_size} is not divisible by the {self.world} processes")
        self.batch_size, self.total_steps, self.start_step = int(batch_size), int(total_steps), int(start_step)
        self._base = self.start_step * self.batch_size
        if not state:
            return
        if state.get("shards") != self.fingerprint:
            log.warning("--resume: the shards differ from those the checkpoint was trained on (fingerprint %s, "
                        "now %s): the rest of the run follows the new shards' order, not the interrupted one's",
                        state.get("shards"), self.fingerprint)
            return
        self._base = int(state.get("samples_seen", self._base))
        self.note_bad(list(state.get("bad") or []), self.bad_log, check=False)

    def position(self, step: int) -> dict[str, Any]:
        """The data position after ``step`` steps, for the checkpoint (plain values only).

        Under torch.distributed every rank must call it: the bad samples of all ranks are gathered.
        """
        recs = list(self.bad)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, recs)
            seen: set[tuple[str, int]] = set()
            recs = []
            for rec in (r for part in gathered for r in part or []):
                ref = (str(rec["ref"][0]), int(rec["ref"][1]))
                if ref not in seen:
                    seen.add(ref)
                    recs.append(rec)
        assert self.batch_size is not None, "configure() first"
        return {"format": STATE_FORMAT, "step": int(step), "batch": self.batch_size, "seed": self.seed,
                "samples_seen": self._base + (int(step) - self.start_step) * self.batch_size,
                "epoch_samples": self.count, "shards": self.fingerprint, "bad": recs}

    @staticmethod
    def _worker() -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, n_workers = self._worker()
        self._pending = []
        if self.batch_size is None:
            slot, n_slots = self.rank * n_workers + worker, self.world * n_workers
            for offset in range(slot, self.count, n_slots):
                i, j = self.ref_at(0, offset)
                sample, reason, where = self._load(i, j)
                if self._pending:
                    self.note_bad(self._pending, self.bad_log, check=False)
                    self._pending = []
                if sample is None:
                    if reason != "held-out":
                        self.note_bad([{**where, "reason": reason or "bad sample"}], self.bad_log)
                    continue
                yield self.make_item(sample, 0, offset)
            self.note_bad([], None)
            return
        per_rank = self.batch_size // self.world
        # Steps go round-robin over the workers, which is the order the DataLoader returns them in.
        for step in range(self.start_step + worker, self.total_steps, n_workers):
            first = self._base + (step - self.start_step) * self.batch_size + self.rank * per_rank
            batch = collate([self._item_at(first + k) for k in range(per_rank)])
            if self._pending:
                batch["bad_rows"], self._pending = self._pending, []  # handed to note_bad by the loop
            yield batch
