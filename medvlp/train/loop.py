"""The training loop: one explicit step, the same code on CPU, one GPU, or many through torchrun.

:func:`pretrain` resolves the run (:mod:`medvlp.train.setup`), builds the loader, fits
(:func:`fit`, one :func:`~medvlp.train.step.train_step` per optimisation step) and finishes (model
folder, held-out zero-shot metrics).

Example:
    >>> from medvlp.config import TrainConfig
    >>> from medvlp.train import pretrain
    >>> result = pretrain(TrainConfig(domain="pathology", steps=2, batch_size=8))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvlp.config import TrainConfig
from medvlp.data.dataset import Normalizer, take_bad_rows
from medvlp.errors import ConfigError, DataError
from medvlp.models import MedVLP
from medvlp.objectives.distributed import mean_over_ranks
from medvlp.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from medvlp.train.distributed import DistInfo, barrier, cleanup, init_distributed
from medvlp.train.runfolder import atomic_write_text
from medvlp.train.schedule import cosine_lr
from medvlp.train.setup import (  # noqa: F401  (RunLogger .. resolve_steps: importable from here, as before)
    Run,
    RunLogger,
    build_loader,
    default_batch_size,
    default_lr,
    describe,
    layout,
    param_groups,
    resolve_data,
    resolve_run,
    resolve_steps,
)
from medvlp.train.step import NoScaler, train_step


@dataclass
class RunResult:
    out: Path
    steps: int
    metrics: dict[str, Any] | None = None  # held-out zero-shot metrics (eval.json)
    train_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def pretrain(cfg: TrainConfig, *, quiet: bool = False) -> RunResult:
    """Train a model as ``cfg`` says; returns the run folder and held-out metrics.

    With ``cfg.dry_run`` the run is resolved and described (process layout, batch, steps) and nothing
    is trained or written.

    Raises:
        ConfigError / DataError / ModelError: for bad settings or data (clear one-line reasons).
    """
    dinfo = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, dinfo, quiet)
    finally:
        cleanup()


def _pretrain(cfg: TrainConfig, dinfo: DistInfo, quiet: bool) -> RunResult:
    t_start = time.time()
    run = resolve_run(cfg, dinfo, quiet)
    if cfg.dry_run:
        if dinfo.is_main:
            print(describe(run) + "\n" + layout(run), file=sys.stderr if quiet else sys.stdout, flush=True)
        return RunResult(out=run.out, steps=0, info={"dry_run": True, "batch": run.batch, "steps": run.steps,
                                                      "world": dinfo.world, "n_train": len(run.ds)})
    run.log.info(describe(run))
    result = fit(run, prepare_optimisation(run), quiet)
    if cfg.fsdp:
        run.model = _gathered(run)  # the full weights, on rank 0, for the model folder and the evaluation
    if dinfo.is_main:
        finish(run, result, quiet)
        run.log.info(f"done in {time.time() - t_start:.0f} s (training {result.train_seconds:.0f} s); "
                     f"model: {run.out / 'model'}")
    barrier()
    return result


SHORT_SEQUENCE = 128  # tokens: up to here the math attention path is the faster one on CPU in bf16


def sequence_lengths(model: nn.Module) -> tuple[int, int]:
    """``(image tokens, text tokens)`` of a model's towers, from its open_clip config."""
    cfg = getattr(getattr(model, "spec", None), "model_cfg", None) or {}
    vis, txt = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    size, patch = vis.get("image_size", 224), vis.get("patch_size")
    side = (size[0] if isinstance(size, (list, tuple)) else int(size)) // int(patch) if patch else 10**4
    return side * side + 1, int(txt.get("context_length", 77))


class _Optimisation:
    """Optimizer, loss scaler and autocast of a run; restores them (and the RNG) from a checkpoint."""

    def __init__(self, run: Run, replicated: list[nn.Parameter] | None = None) -> None:
        cfg, dev = run.cfg, run.dinfo.device
        self.replicated = replicated  # with --fsdp: the scalar parameters kept whole on every rank
        self.params = param_groups(run.model, cfg.weight_decay)
        self.opt = _adamw(self.params, lr=run.lr, betas=(0.9, cfg.beta2), eps=1e-6)
        use_scaler = run.precision == "fp16" and dev.type == "cuda"
        self.scaler: Any = torch.amp.GradScaler("cuda") if use_scaler else NoScaler()
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision)
        self.device_type = dev.type
        # CPU bf16: the flash-attention kernel's backward is about 2x slower than the math path on short
        # sequences (65 patches, 32 tokens) and faster on long ones (197+); bench/train_throughput.py
        self.math_attention = (dev.type == "cpu" and self.amp_dtype is torch.bfloat16
                               and max(sequence_lengths(run.model)) <= SHORT_SEQUENCE)

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        amp = torch.autocast(device_type=self.device_type, dtype=self.amp_dtype)
        if not self.math_attention:
            return amp
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack = contextlib.ExitStack()
        stack.enter_context(amp)
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return stack

    def restore(self, run: Run) -> None:
        ckpt = run.ckpt
        if ckpt is None:
            return
        if ("sharded" in ckpt) != bool(self.replicated is not None):
            raise ConfigError(f"--resume: the checkpoint in {run.out / 'checkpoints'} was written "
                              f"{'with' if 'sharded' in ckpt else 'without'} --fsdp; resume it the same way")
        if "sharded" in ckpt:
            from medvlp.train.sharding import load_sharded

            load_sharded(run.out / "checkpoints", ckpt, run.model, self.opt)
        else:
            run.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt.get("scaler", {}))
        set_rng_state(ckpt["rng"])
        run.log.info(f"  resumed from step {run.start}")

    def step(self, run: Run, lr: float) -> None:
        if self.replicated is not None:
            from medvlp.train.sharding import sync_replicated

            sync_replicated(self.replicated)
        if run.cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            params = [p for g in self.params for p in g["params"]]
            if self.replicated is not None:
                from medvlp.train.sharding import clip_grad_norm

                clip_grad_norm(params, run.cfg.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, run.cfg.grad_clip)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            run.model.clip.logit_scale.clamp_(0, math.log(100))
        run.objective.post_step(run.model)  # objectives clamp the scales they own


def prepare_optimisation(run: Run) -> tuple[_Optimisation, torch.utils.data.DataLoader]:
    """The optimisation state (restored from the checkpoint, RNG included) and then the loader.

    With ``--fsdp`` the model is sharded first (the optimizer must see the sharded parameters)."""
    replicated = None
    if run.cfg.fsdp:
        if not run.dinfo.distributed:
            raise ConfigError("--fsdp shards the model over processes: start the run with torchrun "
                              "(e.g. torchrun --nproc-per-node 2 -m medvlp pretrain ... --fsdp)")
        if run.cfg.grad_accum > 1:
            raise ConfigError("--fsdp with --grad-accum is not supported yet; raise --batch-size or the number "
                              "of processes instead")
        from medvlp.train.sharding import shard_model

        replicated = shard_model(run.model)
    optim = _Optimisation(run, replicated)
    optim.restore(run)
    return optim, build_loader(run)


def _memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (MB) and, on CUDA, peak allocated tensor memory (MB)."""
    rec = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        rec["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return rec


def fit(run: Run, state: tuple[_Optimisation, torch.utils.data.DataLoader], quiet: bool) -> RunResult:
    """Run the remaining steps; metrics.jsonl gets a line every ``log_every`` steps with the losses, the
    throughput, the time split (data wait, forward, backward, optimizer) and peak memory."""
    optim, loader = state
    cfg, dinfo, model, dev = run.cfg, run.dinfo, run.model, run.dinfo.device
    train_model: nn.Module = model
    if dinfo.distributed and not cfg.fsdp:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    normalizer = Normalizer(run.opts.mean, run.opts.std).to(dev)
    pbar = None
    if dinfo.is_main and not quiet:
        from tqdm.auto import tqdm

        pbar = tqdm(total=run.steps, initial=run.start, desc="training", unit="step", dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr)
    model.train()
    t_train = t_last = time.time()
    times: dict[str, float] = {}
    n_interval, step, last_losses = 0, run.start, {}
    for batch_data in loader:
        take_bad_rows(run.ds, batch_data, run.log.bad_sample)  # rows that failed to decode in a worker
        t_data = time.time()
        times["data"] = times.get("data", 0.0) + t_data - t_last
        lr_now = cosine_lr(step, peak=run.lr, total=run.steps, warmup=run.warmup)
        timed = (step + 1) % cfg.log_every == 0 or step + 1 == run.steps
        parts: dict[str, float] | None = {} if timed else None
        losses = train_step(train_model, run.objective, batch_data, normalizer=normalizer, device=dev,
                            accum=cfg.grad_accum, autocast=optim.autocast, scaler=optim.scaler, timings=parts)
        if not math.isfinite(losses["loss"]):
            raise DataError(f"loss became {losses['loss']} at step {step}; lower --lr or use --precision fp32")
        t_opt = time.perf_counter()
        optim.step(run, lr_now)
        if parts is not None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            parts["optimizer"] = time.perf_counter() - t_opt
        step += 1
        now = time.time()
        times["batch"] = times.get("batch", 0.0) + now - t_data
        t_last, n_interval, last_losses = now, n_interval + 1, losses
        if parts is not None:
            losses = last_losses = mean_over_ranks(losses)  # each rank's loss covers its rows; the mean is global
            elapsed = times.get("data", 0.0) + times.get("batch", 0.0)
            rec = {"step": step, "epoch": round(step * run.batch / len(run.ds), 3),
                   **{k: round(v, 6) for k, v in losses.items()}, "lr": lr_now,
                   "logit_scale": round(model.clip.logit_scale.detach().exp().item(), 4),
                   "samples_per_s": round(n_interval * run.batch / max(elapsed, 1e-9), 2),
                   "data_time": round(times.get("data", 0.0) / n_interval, 5),
                   "batch_time": round(times.get("batch", 0.0) / n_interval, 5),
                   **{f"{k}_time": round(v, 5) for k, v in parts.items()}, **_memory(dev)}
            run.log.metrics(rec)
            if pbar is not None:
                pbar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr_now:.1e}", sps=f"{rec['samples_per_s']:.0f}")
            times, n_interval = {}, 0
        if pbar is not None:
            pbar.update(1)
        if step % run.save_every == 0 or step == run.steps:
            _save(run.out, model, optim.opt, optim.scaler, step, run.resolved, dinfo, sharded=cfg.fsdp,
                  data=run.ds.position(step) if run.streamed else None)  # every rank: it gathers bad samples
    if pbar is not None:
        pbar.close()
    return RunResult(out=run.out, steps=step, train_seconds=time.time() - t_train,
                     info={"n_train": len(run.ds), "n_bad": len(run.ds.bad), "final_loss": last_losses.get("loss")})


def finish(run: Run, result: RunResult, quiet: bool) -> None:
    """Rank 0: write the model folder and, with held-out rows, the zero-shot metrics (eval.json)."""
    cfg, card, model = run.cfg, run.card, run.model
    model.eval()
    label_set = card.demo.get("label_set") if cfg.data is None else None
    model.save(run.out / "model", extra={"domain": card.name, "objective": cfg.objective,
                                          "label_set": label_set or card.default_label_set,
                                          "trained_steps": result.steps})
    if cfg.eval and run.held is not None:
        from medvlp.eval.zeroshot import evaluate_manifest

        metrics = evaluate_manifest(model, run.held, card=card, progress=not quiet)
        atomic_write_text(run.out / "eval.json", json.dumps(metrics, indent=2))
        result.metrics = metrics
        run.log.info(format_metrics(metrics, title=f"held-out zero-shot ({metrics['n']} images)"))


def _adamw(params: list[dict[str, Any]], **kw: Any) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has it (CPU and CUDA): on 2 CPU cores its step is 4-5x
    faster than the default multi-tensor one (the tiny model's 6M-row token embedding dominates)."""
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device/dtype the fused kernel lacks
        return torch.optim.AdamW(params, **kw)


def _save(out: Path, model: MedVLP, opt: torch.optim.Optimizer, scaler: Any, step: int, cfg: TrainConfig,
          dinfo: DistInfo, sharded: bool = False, data: dict[str, Any] | None = None) -> None:
    meta = {"scaler": scaler.state_dict(), "rng": rng_state(), "step": step, "config": cfg.to_dict()}
    if data is not None:
        meta["data"] = data  # streamed shards: the data position (ShardStream.position)
    if sharded:
        from medvlp.train.sharding import save_sharded

        save_sharded(out / "checkpoints", model, opt, meta)  # every rank writes its shard
        return
    if dinfo.is_main:
        save_checkpoint(out / "checkpoints", {"model": model.state_dict(), "optimizer": opt.state_dict(), **meta})
    barrier()


def _gathered(run: Run) -> MedVLP:
    """With ``--fsdp``: the full weights gathered (every rank takes part) into an unsharded model on rank 0."""
    from medvlp.models import create_model
    from medvlp.train.sharding import full_state_dict

    state = full_state_dict(run.model)
    if not run.dinfo.is_main:
        return run.model
    plain = create_model(run.info["model"], device="cpu", seed=run.cfg.seed, **run.objective.model_kwargs())
    plain.load_state_dict(state)
    return plain.to(run.dinfo.device)


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def format_metrics(metrics: dict[str, Any], title: str = "metrics") -> str:
    """Human-readable table of a metrics JSON (value and 95% CI)."""
    lines = [title]
    for k, v in metrics.items():
        if isinstance(v, dict) and "value" in v:
            lines.append(f"  {k:<28} {_num(v['value'])}  [{_num(v.get('ci_low'))}, {_num(v.get('ci_high'))}]")
    return "\n".join(lines)
