"""Resume cost of streamed shards: time to the first batch of a resumed :class:`ShardStream` vs samples seen.

Writes ``--shards`` synthetic shards of ``--per-shard`` samples (64-px PNGs, with their ``.idx.json``
indexes) to a temporary folder, then, for runs resumed after 0 .. 10^9 samples, times building the stream,
``configure(start_step=...)`` and the first batch (``--batch`` samples, one process, no workers). The
seek computes the positions directly and reads those samples by byte offset, so the time must not grow
with the samples seen. For comparison, the decode-and-skip resume that streamed shards used before
(read every earlier sample of the order from the tars and decode its image to know whether it was bad)
is timed for the smaller points; it grows linearly.

Usage::

    python bench/resume_seek.py                          # 40 shards x 500 samples, batch 64
    python bench/resume_seek.py --shards 8 --per-shard 250 --write   # also bench/results/resume_seek.md and
                                                                     # its section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def write_shards(folder: Path, n_shards: int, per_shard: int) -> str:
    from PIL import Image

    from medvlp.data.shardio import write_index

    rng = np.random.default_rng(0)
    for s in range(n_shards):
        path = folder / f"{s:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
                key = f"{s * per_shard + i:09d}"
                for ext, data in (("json", json.dumps({"split": "train"}).encode()), ("png", buf.getvalue()),
                                  ("txt", json.dumps([f"tile {i}"]).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        write_index(path)
    return str(folder / f"{{000000..{n_shards - 1:06d}}}.tar")


def _tok(texts: list[str]) -> object:
    import torch

    return torch.zeros((len(texts), 4), dtype=torch.long)


def seek_time(pattern: str, seen: int, batch: int) -> float:
    """Seconds from a fresh stream to the first batch of a run resumed after ``seen`` samples."""
    import torch

    from medvlp.data.dataset import ImageOptions
    from medvlp.data.stream import ShardStream

    t0 = time.perf_counter()
    ds = ShardStream(pattern, _tok, ImageOptions(size=64), seed=0)  # type: ignore[arg-type]
    start = seen // batch
    ds.configure(batch, start + 1, start)
    next(iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)))
    return time.perf_counter() - t0


def skip_time(pattern: str, seen: int, batch: int) -> float:
    """The old way: read and decode every earlier sample (in file order here, which only flatters it)."""
    from PIL import Image

    from medvlp.data.dataset import ImageOptions
    from medvlp.data.stream import decode_image, expand_braces

    t0 = time.perf_counter()
    todo, n = seen + batch, 0
    for url in expand_braces(pattern):
        with tarfile.open(url, "r|") as tar:
            for info in tar:
                if not info.name.endswith(".png"):
                    continue
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if n < seen:
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
                else:
                    decode_image(data, ImageOptions(size=64))
                n += 1
                if n >= todo:
                    return time.perf_counter() - t0
    raise ValueError("fewer samples than asked for: only the first epoch is read this way")


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write bench/results/resume_seek.md")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pattern = write_shards(Path(tmp), args.shards, args.per_shard)
        epoch = args.shards * args.per_shard
        made = time.perf_counter() - t0
        points = sorted({0, 1_000, epoch // 2, epoch - args.batch, 10**6, 10**9})
        rows = ["| samples seen | epochs | seek: first batch, s, median (min) | decode-and-skip, s |",
                "|---:|---:|---:|---:|"]
        for seen in points:
            seek = [seek_time(pattern, seen, args.batch) for _ in range(args.repeats)]
            skip = _common.median_min([skip_time(pattern, seen, args.batch)]) if seen + args.batch <= epoch else "-"
            rows.append(f"| {seen:,} | {seen / epoch:,.2f} | {_common.median_min(seek)} | {skip} |")
    text = "\n".join([
        "# Resume seek (streamed shards)", "",
        f"{args.shards} shards x {args.per_shard} samples (64-px PNG), batch {args.batch}, one process, no workers; "
        f"shards written in {made:.1f} s.", f"Machine: {_common.machine(torch_threads=True)}; load "
        f"{_common.load_average()}.", f"Command: `{_common.command_line(__file__, argv)}`", "", *rows, ""])
    print(text)
    if args.write:
        _common.write_text(_common.RESULTS_DIR / "resume_seek.md", text)
        body = text.replace("# Resume seek (streamed shards)", "## Resume seek (streamed shards): time to the first "
                            "batch does not grow with the samples already seen", 1)
        _common.write_section(_common.RESULTS_DIR.parent / "RESULTS.md", "resume-seek", body)
    return text


if __name__ == "__main__":
    main()
