"""Reading tar shards by byte offset -- local, ``https://``, ``s3://``/``gs://`` (fsspec) or ``pipe:`` -- with a
per-shard sample index and a local shard cache.

Index. ``medvlp data shard`` writes beside each shard ``NNNNNN.tar.idx.json``::

    {"format": "medvlp-shard-index/1", "shard": "000000.tar", "size": 123456,
     "samples": [[key, split, start, end, {"png": [offset, size], "txt": [...], "json": [...]}], ...]}

``start``/``end`` span the sample's tar members (headers included), so one read gets a whole sample and
:class:`~medvlp.data.stream.ShardStream` can seek to any sample without reading those before it. A
shard without an index (written by another tool, or compressed) is scanned once when first read: the
members' offsets are taken from the tar headers and only the small ``json`` members are read, no image is
decoded.

Remote shards. A remote (or compressed) shard is fetched whole into a local cache the first time a
process needs it, then read by offset like a local one: ``cache_dir`` (or ``MEDVLP_SHARD_CACHE``) keeps
the copies for later epochs and runs; without it each process keeps its most recent shards in a
temporary folder. ``http(s)://`` uses the standard library; ``s3://``, ``gs://`` and other schemes need
``fsspec`` with the scheme's package (``s3fs``, ``gcsfs``); ``pipe:CMD`` runs CMD and reads its output.
Transient failures (HTTP 5xx/429, timeouts, broken connections, a failing pipe) are retried with
backoff; a missing shard (HTTP 404) or the last failed try stops with a :class:`DataError` that names it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from pathlib import Path
from typing import Any

from medvlp.errors import ConfigError, DataError

IDX_SUFFIX = ".idx.json"
INDEX_FORMAT = "medvlp-shard-index/1"
CACHE_ENV = "MEDVLP_SHARD_CACHE"
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# webdataset's key rule: the member path up to the first dot of its file name.
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_PIPE_NAME_RE = re.compile(r"([^\s/'\"]+\.(?:tar|tar\.gz|tgz))(?=[\s'\"]|$)")
_RETRY_HTTP = (408, 425, 429, 500, 502, 503, 504)
_CHUNK = 1 << 20


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


def is_url(s: str) -> bool:
    """Whether ``s`` is remote (a URL other than ``file://``, or a ``pipe:`` command)."""
    return (bool(_URL_RE.match(s)) and not s.startswith("file://")) or s.startswith("pipe:")


def local_path(s: str) -> Path:
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def shard_name(url: str) -> str:
    """The shard's file name (what indexes, checkpoints and bad-sample records call it); for a ``pipe:``
    command, the last ``*.tar`` (``.tar.gz``, ``.tgz``) it names, else the command itself."""
    if url.startswith("pipe:"):
        names = _PIPE_NAME_RE.findall(url)
        return names[-1] if names else url[len("pipe:"):].strip()
    return url.rstrip("/").rsplit("/", 1)[-1]


def sidecar(url: str) -> str | None:
    """Where a shard's index lives (None for a ``pipe:`` command)."""
    return None if url.startswith("pipe:") else url + IDX_SUFFIX


# --------------------------------------------------------------------------------------------------
# Building and reading the index


def build_index(path: Path, name: str | None = None) -> dict[str, Any]:
    """Scan an uncompressed tar (no image decoding) into the index described in the module docstring.

    A damaged archive ends the scan: the samples before the damage are kept and ``error`` says why.
    """
    samples: list[list[Any]] = []
    error = None
    current: list[Any] | None = None

    def close() -> None:
        if current is not None:
            samples.append(current)

    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                m = _MEMBER_RE.match(info.name)
                if m is None:
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if current is None or current[0] != key:
                    close()
                    current = [key, None, info.offset, 0, {}]
                current[3] = info.offset_data + info.size
                current[4][ext] = [info.offset_data, info.size]
                if ext == "json":
                    current[1] = _split_of(tar, info)
    except (tarfile.TarError, OSError, EOFError) as e:
        error = f"unreadable shard ({type(e).__name__}: {e})"
    close()
    size = path.stat().st_size
    samples = [s for s in samples if s[3] <= size]  # a member cut off by truncation is not a sample
    out: dict[str, Any] = {"format": INDEX_FORMAT, "shard": name or path.name, "size": size, "samples": samples}
    if error:
        out["error"] = error
    return out


def _split_of(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str | None:
    fh = tar.extractfile(info)
    try:
        meta = json.loads(fh.read()) if fh is not None else {}
    except ValueError:
        return None
    split = meta.get("split") if isinstance(meta, dict) else None
    return None if split is None else str(split)


def write_index(path: str | Path) -> Path:
    """Write ``PATH.idx.json`` for a local uncompressed shard; returns the index file."""
    p = Path(path)
    out = p.with_name(p.name + IDX_SUFFIX)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(build_index(p), separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def parse_index(raw: bytes | str, where: str) -> dict[str, Any]:
    try:
        idx = json.loads(raw)
    except ValueError as e:
        raise DataError(f"{where}: not a readable shard index ({e}); delete it to have the shard scanned") from None
    if not isinstance(idx, dict) or idx.get("format") != INDEX_FORMAT or not isinstance(idx.get("samples"), list):
        raise DataError(f"{where}: not a {INDEX_FORMAT} shard index; delete it to have the shard scanned")
    return idx


def read_sample(path: Path, entry: list[Any]) -> dict[str, bytes]:
    """The members of one indexed sample (``{ext: bytes}``), read in one seek.

    Raises:
        OSError: the file is shorter than the index says (truncated, or a stale index).
    """
    start, end, members = int(entry[2]), int(entry[3]), entry[4]
    with open(path, "rb") as fh:
        fh.seek(start)
        span = fh.read(end - start)
    if len(span) != end - start:
        raise OSError(f"shard ends at byte {start + len(span)}, the index says {end}")
    return {ext: span[off - start: off - start + size] for ext, (off, size) in members.items()}


# --------------------------------------------------------------------------------------------------
# Fetching


class Fetcher:
    """Fetch remote files with retries; every error names the URL."""

    def __init__(self, retries: int = 4, backoff: float = 0.5, timeout: float = 60.0) -> None:
        self.retries, self.backoff, self.timeout = max(0, int(retries)), backoff, timeout

    def get(self, url: str, dest: Path, *, optional: bool = False) -> bool:
        """Download ``url`` to ``dest`` (atomically); False when ``optional`` and it does not exist."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
        last = ""
        for attempt in range(self.retries + 1):
            try:
                with open(tmp, "wb") as out:
                    self._copy(url, out)
                os.replace(tmp, dest)
                return True
            except FileNotFoundError as e:
                tmp.unlink(missing_ok=True)
                if optional:
                    return False
                raise DataError(f"shard {url} not found ({e}); check the --data pattern") from None
            except _Transient as e:
                last = str(e)
            except OSError as e:  # connection reset, timeouts, DNS hiccups
                last = f"{type(e).__name__}: {e}"
            tmp.unlink(missing_ok=True)
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise DataError(f"shard {url}: could not be read after {self.retries + 1} tries (last: {last}); "
                        f"check the network or the URL")

    def _copy(self, url: str, out: Any) -> None:
        if url.startswith(("http://", "https://")):
            self._http(url, out)
        elif url.startswith("pipe:"):
            self._pipe(url[len("pipe:"):], out)
        else:
            self._fsspec(url, out)

    def _http(self, url: str, out: Any) -> None:
        req = urllib.request.Request(url, headers={"User-Agent": "medvlp"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 - http(s) only here
                shutil.copyfileobj(r, out, _CHUNK)
        except urllib.error.HTTPError as e:
            if e.code == 404 or e.code == 410:
                raise FileNotFoundError(f"HTTP {e.code} {e.reason}") from None
            if e.code in _RETRY_HTTP:
                raise _Transient(f"HTTP {e.code} {e.reason}") from None
            raise DataError(f"shard {url}: HTTP {e.code} {e.reason}; check the URL and its access rights") from None
        except urllib.error.URLError as e:
            raise _Transient(f"URLError: {e.reason}") from None

    def _pipe(self, cmd: str, out: Any) -> None:
        proc = subprocess.run(cmd, shell=True, stdout=out, stderr=subprocess.PIPE, timeout=None)  # noqa: S602
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise _Transient(f"command exited with {proc.returncode}: {err[0][:200]}")

    def _fsspec(self, url: str, out: Any) -> None:
        scheme = url.split("://", 1)[0]
        try:
            import fsspec

            opened = fsspec.open(url, "rb")
        except (ImportError, ValueError) as e:
            raise ConfigError(
                f"reading {url}: {scheme}:// needs fsspec and its {scheme} package ({e}); pip install fsspec "
                f"{ {'s3': 's3fs', 'gs': 'gcsfs', 'gcs': 'gcsfs'}.get(scheme, scheme + 'fs')}, or give "
                f"the shards as 'pipe:CMD' (e.g. 'pipe:aws s3 cp {url} -')"
            ) from None
        with opened as fh:
            shutil.copyfileobj(fh, out, _CHUNK)


class _Transient(Exception):
    """A failure worth another try."""


# --------------------------------------------------------------------------------------------------
# Local copies


class ShardCache:
    """Local, uncompressed, seekable copies of shards.

    Local uncompressed shards are used in place. Remote or compressed ones are copied into ``cache_dir``
    (kept: later epochs and runs read the copy; a copy whose size disagrees with the index is fetched
    again) or, without one, into a temporary folder of this process that keeps the ``keep`` most recent.
    """

    def __init__(self, cache_dir: str | Path | None = None, *, keep: int = 8, fetcher: Fetcher | None = None) -> None:
        given = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
        self.cache_dir = Path(given).expanduser() if given else None
        self.keep = max(1, keep)
        self.fetcher = fetcher or Fetcher()
        self._tmp: tuple[int, Path] | None = None
        self._recent: OrderedDict[str, Path] = OrderedDict()

    def _folder(self) -> Path:
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            return self.cache_dir
        if self._tmp is None or self._tmp[0] != os.getpid():  # a forked DataLoader worker gets its own
            self._tmp = (os.getpid(), Path(tempfile.mkdtemp(prefix="medvlp-shards-")))
            self._recent.clear()
        return self._tmp[1]

    def _slot(self, url: str) -> Path:
        digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", shard_name(url))[-80:]
        return self._folder() / f"{digest}-{name}"

    def path(self, url: str, size: int | None = None) -> Path:
        """A local uncompressed copy of ``url`` (fetched or decompressed on first use)."""
        if not is_url(url):
            p = local_path(url)
            if not p.is_file():
                raise DataError(f"shard not found: {url}; check the --data pattern")
            if not _is_gzip(p):
                return p
        dest = self._slot(url)
        if dest.is_file() and (size is None or dest.stat().st_size == size):
            self._touch(url, dest)
            return dest
        raw = dest.with_name(f".{dest.name}.download-{os.getpid()}")  # processes sharing a cache do not collide
        if is_url(url):
            self.fetcher.get(url, raw)
        else:
            shutil.copyfile(local_path(url), raw)
        if _is_gzip(raw):
            with gzip.open(raw, "rb") as src, open(raw.with_name(raw.name + ".tar"), "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            raw.unlink()
            raw = raw.with_name(raw.name + ".tar")
        os.replace(raw, dest)
        self._touch(url, dest)
        return dest

    def _touch(self, url: str, dest: Path) -> None:
        if self.cache_dir is not None:
            return
        self._recent[url] = dest
        self._recent.move_to_end(url)
        while len(self._recent) > self.keep:
            _, old = self._recent.popitem(last=False)
            old.unlink(missing_ok=True)

    def fetch_bytes(self, url: str) -> bytes | None:
        """A small remote file (an index), or None when it does not exist."""
        folder = self._folder()
        dest = folder / f".{hashlib.sha1(url.encode('utf-8')).hexdigest()[:16]}.small"
        try:
            if not self.fetcher.get(url, dest, optional=True):
                return None
            return dest.read_bytes()
        finally:
            dest.unlink(missing_ok=True)


def _is_gzip(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"
