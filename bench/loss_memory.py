"""Loss memory per rank vs the global batch: local-loss objectives grow linearly, a full logit matrix
quadratically.

Each of W gloo processes (W = 1, 2, 4 by default) holds a fixed per-rank batch of ``--batch`` unit image
and text features (``--dim`` wide) and runs one forward + backward of the loss; the global batch is
``W x --batch``. Measured per rank: the peak resident memory of that step above the memory before it
(Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; glibc's mmap threshold is pinned so
that freed blocks go back to the system), median of ``--repeats``, max over ranks. Losses:

- medvlp ``clip`` and ``siglip``: each rank scores its own rows against the gathered columns
  (``B_local x N_global`` logits), what open_clip calls ``--local-loss``; medvlp always does this;
- open_clip ``ClipLoss(local_loss=True, gather_with_grad=True)`` (open_clip_train ``--local-loss
  --gather-with-grad``): the same design;
- open_clip ``ClipLoss(local_loss=False, gather_with_grad=True)`` (open_clip_train's default): every rank
  builds the full ``N_global x N_global`` matrix;
- medvlp ``keep``: its group masks span the global batch, so it also builds ``N x N`` per rank (stated in
  its docstring; listed here so that nobody is surprised).

    python bench/loss_memory.py [--batch 1024] [--dim 512] [--worlds 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LOSSES = ["medvlp clip", "medvlp siglip", "open_clip local-loss", "open_clip full matrix", "medvlp keep"]


def _status_kb(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: the peak since the last reset), in kB."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))  # type: ignore[union-attr]


def _loss_fn(name: str, rank: int, world: int) -> Any:
    import torch

    from medvlp.objectives import build_objective

    if name.startswith("medvlp"):
        obj = build_objective(name.split()[1])
        part = obj.parts[name.split()[1]]

        def run(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            out = {"image_features": img, "text_features": txt, "logit_scale": scale, "logit_bias": bias}
            batch = {"group": torch.arange(img.shape[0]) // 4 + rank * 1000} if "keep" in name else {}
            return part(out, batch)[name.split()[1]]
        return run
    from open_clip.loss import ClipLoss

    loss = ClipLoss(local_loss="local" in name, gather_with_grad=True, rank=rank, world_size=world)
    return lambda img, txt, scale, bias: loss(img, txt, scale)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(rank)
    img0 = F.normalize(torch.randn(args.batch, args.dim, generator=g), dim=-1)
    txt0 = F.normalize(torch.randn(args.batch, args.dim, generator=g), dim=-1)
    result: dict[str, float] = {}
    for name in LOSSES:
        fn = _loss_fn(name, rank, world)
        peaks = []
        for rep in range(args.repeats + 1):  # the first is a warm-up (gloo buffers, lazy allocations)
            img, txt = img0.clone().requires_grad_(), txt0.clone().requires_grad_()
            scale = torch.tensor(10.0, requires_grad=True)
            bias = torch.tensor(-10.0, requires_grad=True)
            if world > 1:
                dist.barrier()
            Path("/proc/self/clear_refs").write_text("5")
            base = _status_kb("VmRSS")
            fn(img, txt, scale, bias).backward()
            peak = _status_kb("VmHWM") - base
            del img, txt, scale, bias
            if rep:
                peaks.append(peak / 1024)
        result[name] = statistics.median(peaks)
    queue.put((rank, result))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(world: int, args: argparse.Namespace) -> dict[str, float]:
    """Peak MB per rank (max over ranks) of each loss for ``world`` processes."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise SystemExit(f"a worker of the {world}-process run failed (exit {p.exitcode})")
    return {name: max(r[name] for _, r in got) for name in LOSSES}


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1024, help="per-rank batch (fixed; the global batch grows)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # freed blocks return to the OS (read at process start)
    os.environ["OMP_NUM_THREADS"] = "1"
    worlds = [int(w) for w in args.worlds.split(",")]
    table = {w: measure(w, args) for w in worlds}
    w0, wn = worlds[0], worlds[-1]
    growth = wn / w0
    rows = ["| loss | " + " | ".join(f"W={w} (global {w * args.batch})" for w in worlds)
            + f" | W={wn} / W={w0} |", "|---|" + "---:|" * (len(worlds) + 1)]
    for name in LOSSES:
        r = table[wn][name] / max(table[w0][name], 1e-9)
        rows.append(f"| {name} | " + " | ".join(f"{table[w][name]:.1f}" for w in worlds) + f" | {r:.2f}x |")
    lines = [
        "## Loss memory per rank vs the global batch (gloo, CPU)", "",
        f"Command: `{_common.command_line(__file__, argv)}`  ",
        f"Machine: {_common.machine()}; load {_common.load_average()}  ",
        f"Per-rank batch {args.batch}, features {args.dim}; peak resident MB of one loss forward + backward above "
        f"the memory before it, median of {args.repeats}, max over ranks. The global batch grows {growth:.0f}x "
        f"from W={w0} to W={wn}: linear growth is {growth:.0f}x, quadratic {growth ** 2:.0f}x.", "", *rows, "",
        f"local-loss logit memory per rank, W={wn} vs W={w0}: medvlp clip "
        f"{table[wn]['medvlp clip'] / max(table[w0]['medvlp clip'], 1e-9):.2f}x, open_clip full matrix "
        f"{table[wn]['open_clip full matrix'] / max(table[w0]['open_clip full matrix'], 1e-9):.2f}x "
        f"(linear {growth:.0f}x, quadratic {growth ** 2:.0f}x)",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        _common.write_text(_common.RESULTS_DIR / "loss_memory.md", text + "\n")
        _common.write_section(_common.RESULTS_DIR.parent / "RESULTS.md", "loss-memory", text)
    return text


if __name__ == "__main__":
    main()
