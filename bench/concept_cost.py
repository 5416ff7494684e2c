"""Benchmark: time per training step of ``siglip`` vs ``siglip+concept`` (tiny model, CPU).

Both runs use the same model config and seed, the same training rows of the pathology demo corpus,
the same batches (same sampler seed), the same thread count and the real training step
(``medvlp.train.loop.train_step`` + AdamW); the timed step excludes data loading, which is the same
for both except the concept-span look-up, timed on its own. The baseline is what ``--objective siglip`` builds (no
concept head, no token outputs); the concept run is what ``--objective siglip+concept`` builds (concept
head, token outputs, the concept loss on top).

Steps of the two objectives run in pairs (step k of each, back to back, order alternating) so that
load from other processes on a shared machine hits both alike. The verdict is the median of the
paired ratios of CPU time (process time), the measure least disturbed by other jobs, best with
``--threads 1`` (no spinning worker threads); wall clock is reported beside it.

Usage:
    python bench/concept_cost.py [--batch 128] [--threads 1] [--steps 16] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

import torch
from _common import RESULTS_DIR, command_line, machine, median_min, write_text

RESULTS = RESULTS_DIR / "concept.md"


def _setup(spec: str, manifest, card, batch: int, seed: int, total_steps: int):
    from medvlp.data.dataset import ImageTextDataset, Normalizer, StepSampler, collate, options_for
    from medvlp.models import create_model
    from medvlp.objectives import build_objective
    from medvlp.train.loop import param_groups

    objective = build_objective(spec)
    log_scale, bias = objective.logit_init
    model = create_model("tiny", init_logit_scale=log_scale, init_logit_bias=bias,
                         concept_head="concept" in objective.weights, seed=seed)
    concept_fn = None
    if objective.needs_tokens:
        from medvlp.objectives.concept import make_concept_fn

        concept_fn = make_concept_fn(manifest, card, model)
        objective.parts["concept"].bind(model)
    opts = options_for(model.spec, card, train=True)
    ds = ImageTextDataset(manifest, model.tokenizer, opts, seed=seed, train=True, progress=False,
                          concept_fn=concept_fn)
    sampler = StepSampler(len(ds), batch, seed=seed, total_steps=total_steps)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    normalizer = Normalizer(opts.mean, opts.std)
    return {"objective": objective, "model": model, "ds": ds, "sampler": sampler, "opt": opt,
            "normalizer": normalizer, "collate": collate, "concept_fn": concept_fn}


def _batches(run: dict, steps: int) -> list[dict]:
    """Materialise the batches (the same sampler seed gives both objectives the same samples)."""
    ds, collate = run["ds"], run["collate"]
    return [collate([ds[k] for k in run["sampler"].batch_for_step(s)]) for s in range(steps)]


def _span_cost(run: dict, batches: list[dict]) -> tuple[float, float]:
    """Mean seconds per sample of the concept-span look-up, cold (caches emptied) and cached."""
    fn, ds = run["concept_fn"], run["ds"]
    pairs = [(ds.row_of(int(k)), c) for b in batches for k, c in zip(b["index"], b["caption"], strict=True)]
    fn._cache.clear()
    fn.mapper._cache.clear()
    out = []
    for _ in range(2):
        t0 = time.perf_counter()
        for row, cap in pairs:
            fn(row, cap)
        out.append((time.perf_counter() - t0) / len(pairs))
    return out[0], out[1]


@contextlib.contextmanager
def _bf16_autocast():  # what training uses on a CPU with native bf16 (medvlp.train.loop)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.MATH]):
        yield


def _step(run: dict, batch: dict) -> tuple[float, float, dict[str, float]]:
    """One optimisation step; returns (wall seconds, CPU seconds of this process, losses)."""
    from medvlp.train.step import NoScaler, train_step

    c0 = time.process_time()
    t0 = time.perf_counter()
    losses = train_step(run["model"], run["objective"], batch, normalizer=run["normalizer"],
                        device=torch.device("cpu"), accum=1, autocast=run.get("autocast", contextlib.nullcontext),
                        scaler=NoScaler())
    run["opt"].step()
    run["opt"].zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0, losses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the same for both objectives)")
    ap.add_argument("--steps", type=int, default=16, help="timed steps per objective (in pairs)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per objective first")
    ap.add_argument("--n-per-class", type=int, default=None, help="demo corpus size (default: the card's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: CPU autocast with the math attention path, as training uses on CPUs with native bf16")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from medvlp.data.manifest import read_manifest
    from medvlp.data.synthetic import demo_manifest
    from medvlp.domains import load_card

    card = load_card("pathology")
    path = demo_manifest("pathology", n_per_class=args.n_per_class, seed=0, progress=False)
    manifest = read_manifest(path).split("train")
    n_batches = args.warmup + args.steps
    specs = ["siglip", "siglip+concept"]
    runs = {s: _setup(s, manifest, card, args.batch, args.seed, n_batches) for s in specs}
    for s in specs:
        runs[s]["batches"] = _batches(runs[s], n_batches)
        if args.precision == "bf16":
            runs[s]["autocast"] = _bf16_autocast
    span_cold, span_warm = _span_cost(runs["siglip+concept"], runs["siglip+concept"]["batches"])
    wall: dict[str, list[float]] = {s: [] for s in specs}
    cpu: dict[str, list[float]] = {s: [] for s in specs}
    last: dict[str, dict[str, float]] = {}
    for k in range(n_batches):
        # Pairs: step k of each objective back to back (order alternating), so that load from other
        # processes on a shared machine hits both alike; the verdict is the median of paired ratios.
        for s in (specs if k % 2 == 0 else specs[::-1]):
            w, c, last[s] = _step(runs[s], runs[s]["batches"][k])
            if k >= args.warmup:
                wall[s].append(w)
                cpu[s].append(c)
    base, conc = specs
    ratio_wall = statistics.median(b / a for a, b in zip(wall[base], wall[conc], strict=True)) - 1
    ratio_cpu = statistics.median(b / a for a, b in zip(cpu[base], cpu[conc], strict=True)) - 1
    ratio_min = min(wall[conc]) / min(wall[base]) - 1
    overhead = ratio_cpu
    m_per_batch = last[conc].get("concept_count", float("nan"))
    for s in specs:
        assert all(math.isfinite(v) for v in last[s].values()), (s, last[s])

    cmd = command_line(__file__, argv)
    lines = [
        "## concept objective: cost per training step",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine(torch_threads=True)}; shared with other jobs while measured.  ",
        f"Setup: model `tiny` (ViT 64 px / patch 8 -> 64 patch tokens; text context 32), batch {args.batch}, "
        f"pathology demo corpus ({len(manifest)} training rows), {args.precision}, AdamW; {args.steps} timed steps per "
        f"objective after {args.warmup} warm-up steps, run in pairs (step k of both objectives back to back). "
        f"Concepts per batch (last step): {m_per_batch:.0f}.",
        "",
        "| objective | wall s/step: median (min) | CPU s/step: median (min) |",
        "|---|---|---|",
    ]
    for s in specs:
        lines.append(f"| {s} | {median_min(wall[s])} | {median_min(cpu[s])} |")
    verdict = "within" if overhead <= 0.30 else "OVER"
    lines += ["", f"Overhead of the concept objective per step: **{ratio_cpu:+.1%} CPU time** (median of the "
              f"paired ratios; the verdict: {verdict} the 30% budget); wall clock {ratio_wall:+.1%} (median of the "
              f"paired ratios), {ratio_min:+.1%} on the best step times. Data side: the concept-span look-up "
              f"costs {span_cold * 1e3:.3f} ms per sample the first time a caption is seen and "
              f"{span_warm * 1e6:.1f} us from the cache ({span_cold * args.batch:.3f} s per batch of {args.batch} "
              "at worst), done in the data loader.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        print(f"written to {write_text(RESULTS, text)}")
    return 0 if overhead <= 0.30 else 1


if __name__ == "__main__":
    raise SystemExit(main())
