"""The training loop: one explicit step, the same code on CPU, one GPU, or many through torchrun.

Example:
    >>> from medvlp.config import TrainConfig
    >>> from medvlp.train import pretrain
    >>> result = pretrain(TrainConfig(domain="pathology", steps=2, batch_size=8))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvlp.config import CPU_SAMPLE_BUDGET, GPU_DEFAULT_EPOCHS, TrainConfig
from medvlp.data.dataset import ImageTextDataset, Normalizer, StepSampler, collate, options_for, take_bad_rows
from medvlp.data.manifest import Manifest, read_manifest
from medvlp.data.samplers import GroupBatchSampler, RowFields, fit_group_batch
from medvlp.domains import DomainCard, load_card
from medvlp.errors import ConfigError, DataError
from medvlp.models import MedVLP, create_model
from medvlp.objectives import INIT, CombinedObjective, build_objective
from medvlp.objectives.distributed import mean_over_ranks
from medvlp.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medvlp.train.distributed import DistInfo, barrier, cleanup, init_distributed
from medvlp.train.runfolder import atomic_write_text, exit_with_parent, prepare_run_folder
from medvlp.train.schedule import cosine_lr


@dataclass
class RunResult:
    out: Path
    steps: int
    metrics: dict[str, Any] | None = None  # held-out zero-shot metrics (eval.json)
    train_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class RunLogger:
    """metrics.jsonl / bad_samples.jsonl writer (rank 0 only) and console printing."""

    def __init__(self, out: Path, enabled: bool, quiet: bool = False) -> None:
        self.out, self.enabled, self.quiet = out, enabled, quiet
        self._bad = None

    def info(self, msg: str) -> None:
        if self.enabled and not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def metrics(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def bad_sample(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.out / "bad_samples.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")


# ------------------------------------------------------------------------------------------------
# Resolution of defaults
# ------------------------------------------------------------------------------------------------
def resolve_data(cfg: TrainConfig, card: DomainCard, dinfo: DistInfo) -> tuple[Manifest, Manifest | None, str]:
    """Training rows, held-out rows (or None) and a one-line description."""
    from medvlp.data.stream import is_shard_pattern

    if is_shard_pattern(cfg.data):
        # -- streamed WebDataset shards (medvlp.data.stream): no rows up front. An empty manifest stands
        # in for the training rows (the concept objective then finds concepts in each caption).
        parts = build_objective(cfg.objective).parts
        needs_rows = [name for name, part in parts.items() if hasattr(part, "data_hooks")]
        if needs_rows:
            raise ConfigError(f"objective {', '.join(needs_rows)} needs a manifest (per-row groups/labels); "
                              f"streamed shards support clip, siglip and concept: pass --data MANIFEST")
        import pandas as pd

        stub = Manifest(pd.DataFrame({"image": [], "caption": []}), Path("."), None)
        if cfg.val_data:
            return stub, read_manifest(cfg.val_data), f"shards {cfg.data}; held-out = {cfg.val_data}"
        return stub, None, (f"shards {cfg.data} (samples with split val/test are left out of training); "
                            f"no held-out metrics: pass --val-data MANIFEST for zero-shot evaluation")
    if cfg.data is None:
        from medvlp.demos.corpora import demo_manifest

        demo = card.demo
        kwargs = {k: demo[k] for k in ("n_per_class", "size") if k in demo}
        if dinfo.is_main:
            path = demo_manifest(card.name, seed=int(demo.get("seed", 0)), **kwargs)
        barrier()
        path = demo_manifest(card.name, seed=int(demo.get("seed", 0)), progress=False, **kwargs)
        desc = f"demo corpus ({path.parent})"
    else:
        path = Path(cfg.data)
        desc = str(path)
    m = read_manifest(path)
    held: Manifest | None = None
    if "split" in m.columns:
        splits = set(m.df["split"].astype(str))
        train = m.split("train") if "train" in splits else m
        for name in ("val", "test"):
            if name in splits and cfg.val_data is None:
                held = m.split(name)
                desc += f"; held-out = split '{name}'"
                break
    else:
        train = m
    if cfg.val_data:
        held = read_manifest(cfg.val_data)
        desc += f"; held-out = {cfg.val_data}"
    return train, held, desc


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 128


def default_lr(model: MedVLP, batch: int) -> float:
    # Small from-scratch towers tolerate a higher rate; scale with sqrt(batch/256) (Adam rule of thumb).
    base = 1e-3 if model.spec.model_cfg["vision_cfg"]["width"] <= 256 else 5e-4
    return base * math.sqrt(batch / 256)


def resolve_steps(cfg: TrainConfig, n: int, batch: int, device: torch.device, demo: dict) -> tuple[int, str]:
    if cfg.steps is not None and cfg.epochs is not None:
        raise ConfigError("give --steps or --epochs, not both")
    if cfg.steps is not None:
        return int(cfg.steps), "--steps"
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * n / batch)), f"--epochs {cfg.epochs}"
    if cfg.data is None and "steps" in demo:
        return int(demo["steps"]), "demo default"
    if device.type == "cpu":
        # About ten minutes of the tiny model on two cores, whatever the data size; at least one epoch.
        steps = max(math.ceil(CPU_SAMPLE_BUDGET / batch), math.ceil(n / batch))
        return steps, f"CPU default: ~{CPU_SAMPLE_BUDGET} samples"
    return max(200, math.ceil(GPU_DEFAULT_EPOCHS * n / batch)), f"GPU default: {GPU_DEFAULT_EPOCHS} epochs"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices only (not biases, norms, embeddings of scale, logit scale/bias)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_" in name or "norm" in name.lower() or ".ln" in name or "bias" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------
_BATCH_KEYS = ("image_features", "text_features", "patch_tokens", "text_tokens", "patch_embeddings")


def _forward_loss(model: nn.Module, objective: CombinedObjective, images: torch.Tensor, texts: torch.Tensor,
                  batch: dict, autocast: Any) -> tuple[dict, dict[str, torch.Tensor]]:
    with autocast():
        out = model(images, texts, return_tokens=objective.needs_tokens)
    out = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in out.items()}
    return out, objective(out, batch)


def train_step(model: nn.Module, objective: CombinedObjective, batch: dict, *, normalizer: Normalizer,
               device: torch.device, accum: int, autocast: Any, scaler: Any) -> dict[str, float]:
    """Forward, loss and backward for one optimisation step (the optimizer step is the caller's).

    With ``accum > 1`` the batch is split into micro-batches; features of all micro-batches are
    computed first without gradient and cached, then each micro-batch is recomputed with gradient
    and its slice swapped in, so the contrastive loss always sees the whole batch (open_clip's way).
    """
    images = normalizer(batch["image"].to(device, non_blocking=True))
    texts = batch["text"].to(device, non_blocking=True)
    if accum == 1:
        _, losses = _forward_loss(model, objective, images, texts, batch, autocast)
        scaler.scale(losses["loss"]).backward()
        return {k: float(v.detach()) for k, v in losses.items()}
    chunks = list(zip(images.chunk(accum), texts.chunk(accum), strict=False))
    with torch.no_grad(), autocast():
        cached = [model(i, t, return_tokens=objective.needs_tokens) for i, t in chunks]
    cached = [{k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
               for k, v in c.items()} for c in cached]
    result: dict[str, float] = {}
    no_sync = getattr(model, "no_sync", None)
    for j, (i, t) in enumerate(chunks):
        ctx = no_sync() if (no_sync is not None and j < accum - 1) else contextlib.nullcontext()
        with ctx:
            with autocast():
                live = model(i, t, return_tokens=objective.needs_tokens)
            live = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                    for k, v in live.items()}
            merged = dict(live)
            for key in _BATCH_KEYS:
                if key in live:
                    merged[key] = torch.cat([live[key] if c == j else cached[c][key] for c in range(accum)])
            losses = objective(merged, batch)
            scaler.scale(losses["loss"]).backward()
        result = {k: float(v.detach()) for k, v in losses.items()}
    return result


class _NoScaler:
    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def unscale_(self, opt: Any) -> None:
        pass

    def step(self, opt: torch.optim.Optimizer) -> None:
        opt.step()

    def update(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def _default_out(cfg: TrainConfig, model_name: str) -> Path:
    runs = Path("runs")
    if cfg.resume:
        prev = sorted(runs.glob(f"{cfg.domain}-*"), key=lambda p: p.stat().st_mtime)
        if not prev:
            raise ConfigError("--resume needs --out RUN_DIR (no earlier run of this domain under runs/)")
        return prev[-1]
    safe = Path(model_name).name.replace(":", "_")
    return runs / f"{cfg.domain}-{safe}-{datetime.now():%Y%m%d-%H%M%S}"


def pretrain(cfg: TrainConfig, *, quiet: bool = False) -> RunResult:
    """Train a model as ``cfg`` says; returns the run folder and held-out metrics.

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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    card = load_card(cfg.domain)
    dev = dinfo.device
    model_name = cfg.model or card.default_model(dev.type)
    # per-objective options from the config (e.g. extra: {concept: {negated: drop}})
    objective = build_objective(cfg.objective, concept=dict(cfg.extra.get("concept", {})))
    if "concept" in objective.weights and cfg.concept_loss_weight != 0.5:
        objective.weights["concept"] = cfg.concept_loss_weight
    out = Path(cfg.out) if cfg.out else _default_out(cfg, model_name)
    if dinfo.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    log = RunLogger(out, dinfo.is_main, quiet)

    ckpt = load_checkpoint(out / "checkpoints") if cfg.resume else None
    if cfg.resume and ckpt is None:
        raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    if dinfo.is_main:
        prepare_run_folder(out, int(ckpt["step"]) if ckpt is not None else None)

    log_scale, bias = INIT[objective.primary]
    model = create_model(model_name, device=dev, init_logit_scale=log_scale, init_logit_bias=bias,
                         concept_head=objective.needs_tokens and "concept" in objective.weights, seed=cfg.seed)
    pretrained_text = bool(model.spec.model_cfg["text_cfg"].get("hf_model_name"))
    lock_text = pretrained_text if cfg.lock_text is None else cfg.lock_text
    model.lock(image=cfg.lock_image, text=lock_text)
    if cfg.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
    if cfg.patch_dropout > 0:
        from open_clip.transformer import PatchDropout

        model.clip.visual.patch_dropout = PatchDropout(cfg.patch_dropout)

    train_m, held_m, data_desc = resolve_data(cfg, card, dinfo)
    opts = options_for(model.spec, card, train=True)
    concept_fn = None
    if objective.needs_tokens:
        from medvlp.objectives.concept import make_concept_fn

        concept_fn = make_concept_fn(train_m, card, model)
        if "concept" in objective.parts:
            objective.parts["concept"].bind(model)  # its concept embeddings use the model's text projection
    # objectives that need per-row data (keep: group ids, caption synthesis; softclip: label vectors)
    hooks = {name: part.data_hooks(train_m, card, cfg.extra) for name, part in objective.parts.items()
             if hasattr(part, "data_hooks")}
    row_fns = [h.row_fields for h in hooks.values()]
    caption_fns = [h.caption_fn for h in hooks.values() if getattr(h, "caption_fn", None) is not None]
    from medvlp.data.stream import ShardStream, is_shard_pattern

    streamed = is_shard_pattern(cfg.data)
    ds: Any
    if streamed:
        # -- streamed shards: an IterableDataset split over ranks and workers (medvlp.data.stream)
        ds = ShardStream(str(cfg.data), model.tokenizer, opts, seed=cfg.seed, rank=dinfo.rank,
                         world=dinfo.world, bad_log=log.bad_sample, max_bad_fraction=cfg.max_bad_fraction,
                         concept_fn=concept_fn)
        data_desc += f" ({len(ds.urls)} shard(s), epoch length from {ds.count_source})"
    else:
        ds = ImageTextDataset(train_m, model.tokenizer, opts, seed=cfg.seed, train=True, cache=cfg.cache,
                              bad_log=log.bad_sample, max_bad_fraction=cfg.max_bad_fraction,
                              progress=dinfo.is_main and not quiet, concept_fn=concept_fn,
                              row_fields=RowFields(row_fns) if row_fns else None,
                              caption_fn=caption_fns[0] if caption_fns else None)
    keep_data = hooks.get("keep")
    group_ids = [keep_data.group_of_row[ds.row_of(k)] for k in range(len(ds))] if keep_data else None
    batch = cfg.batch_size or default_batch_size(dev)
    batch = min(batch, len(ds) - len(ds) % dinfo.world) if cfg.batch_size is None else batch
    if keep_data is not None:
        n_groups = len(set(group_ids))
        if n_groups < batch // keep_data.n_per_group:
            # Fewer groups than the batch has room for (e.g. a 6-class corpus): take more samples per group
            # instead of shrinking the batch, so the contrastive loss keeps its negatives.
            keep_data.n_per_group = max(keep_data.n_per_group, batch // max(n_groups, 1))
        if cfg.batch_size is None or batch % keep_data.n_per_group or batch // keep_data.n_per_group > n_groups:
            batch = fit_group_batch(batch, keep_data.n_per_group, n_groups, dinfo.world)
    steps, steps_why = resolve_steps(cfg, len(ds), batch, dev, card.demo)
    lr = cfg.lr or default_lr(model, batch)
    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * steps))
    precision = cfg.precision or ("bf16" if dev.type == "cuda" else "fp32")
    save_every = cfg.save_every or max(10, steps // 10)

    unknown: dict[str, int] = {}
    if dinfo.is_main and len(train_m) and "caption" in train_m.columns:
        from medvlp.eval.hygiene import write_caption_record

        write_caption_record(out, train_m, card)  # eval reports prompt_overlap against it
    if len(train_m) and "label" in train_m.columns:
        from medvlp.data.manifest import unknown_labels

        unknown = unknown_labels(train_m, card)
    resolved = TrainConfig(**{**cfg.to_dict(), "model": model_name, "steps": steps, "epochs": None,
                              "batch_size": batch, "lr": lr, "precision": precision, "lock_text": lock_text,
                              "out": str(out), "save_every": save_every, "device": str(dev)})
    if dinfo.is_main:
        resolved.save(out / "config.yaml")
    log.info(
        f"medvlp pretrain | domain {card.name} | model {model_name}"
        f"{' (default for ' + dev.type + ')' if cfg.model is None else ''} | objective {cfg.objective} "
        f"{objective.weights} | device {dev}{f' x{dinfo.world} processes' if dinfo.distributed else ''}\n"
        f"  data: {data_desc}: {len(ds)} training samples ({len(ds.bad)} skipped)"
        f"{f', {len(held_m)} held-out' if held_m is not None else ''}\n"
        + (f"  labels not in the '{card.name}' card (kept; zero-shot uses their raw names): "
           f"{', '.join(f'{k!r} x{v}' for k, v in list(unknown.items())[:8])}"
           f"{' ...' if len(unknown) > 8 else ''}\n" if unknown else "") +
        f"  schedule: {steps} steps ({steps_why}) x batch {batch} = {steps * batch / len(ds):.1f} epochs, "
        f"lr {lr:.2e} cosine, warm-up {warmup}, precision {precision}, text tower "
        f"{'locked' if lock_text else 'trained'}\n  run folder: {out}"
    )

    # -- optimisation state --
    params = param_groups(model, cfg.weight_decay)
    opt = _adamw(params, lr=lr, betas=(0.9, cfg.beta2), eps=1e-6)
    use_scaler = precision == "fp16" and dev.type == "cuda"
    scaler: Any = torch.amp.GradScaler("cuda") if use_scaler else _NoScaler()
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"--precision must be fp32, bf16 or fp16, not '{precision}'")
    if precision == "fp16" and dev.type != "cuda":
        raise ConfigError("fp16 needs CUDA; use --precision bf16 or fp32 on CPU")

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=amp_dtype)

    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
        set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
        log.info(f"  resumed from step {start}")
    train_model: nn.Module = model
    if dinfo.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)

    if streamed:
        # -- streamed shards: the stream yields this rank's collated share of each remaining step; resuming
        # is exact for the same number of ranks and workers (see medvlp.data.stream)
        ds.configure(batch, steps, start)
        workers = cfg.workers if cfg.workers is not None else min(8, _cpus())
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                             pin_memory=dev.type == "cuda", worker_init_fn=exit_with_parent)
    elif keep_data is not None:
        n_per = keep_data.n_per_group
        if batch % n_per:
            raise ConfigError(f"objective keep: batch size {batch} is not a multiple of keep n_per_group {n_per}")
        sampler: Any = GroupBatchSampler(group_ids, batch // n_per, n_per, seed=cfg.seed, total_steps=steps,
                                         start_step=start, rank=dinfo.rank, world=dinfo.world)
        log.info(f"  keep: {batch // n_per} groups x {n_per} per batch; {keep_data.info}")
    else:
        sampler = StepSampler(len(ds), batch, seed=cfg.seed, total_steps=steps, start_step=start,
                              rank=dinfo.rank, world=dinfo.world)
    if not streamed:
        # With decoded images cached in RAM the workers only augment; two of them take that off the training
        # thread (measured +11% samples/s on 2 cores), more would only compete with the step for the cores.
        workers = cfg.workers if cfg.workers is not None else (min(2, _cpus()) if ds.images is not None
                                                               else min(8, _cpus()))
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                             pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
                                             worker_init_fn=exit_with_parent)
    normalizer = Normalizer(opts.mean, opts.std).to(dev)
    pbar = None
    if dinfo.is_main and not quiet:
        from tqdm.auto import tqdm

        pbar = tqdm(total=steps, initial=start, desc="training", unit="step", dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr)
    model.train()
    t_train = time.time()
    t_last = time.time()
    data_time = batch_time = 0.0
    n_interval = 0
    step = start
    last_losses: dict[str, float] = {}
    for batch_data in loader:
        take_bad_rows(ds, batch_data, log.bad_sample)
        t_data = time.time()
        data_time += t_data - t_last
        lr_now = cosine_lr(step, peak=lr, total=steps, warmup=warmup)
        for g in opt.param_groups:
            g["lr"] = lr_now
        losses = train_step(train_model, objective, batch_data, normalizer=normalizer, device=dev,
                            accum=cfg.grad_accum, autocast=autocast, scaler=scaler)
        if not math.isfinite(losses["loss"]):
            raise DataError(f"loss became {losses['loss']} at step {step}; lower --lr or use --precision fp32")
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.clip.logit_scale.clamp_(0, math.log(100))
        objective.post_step(model)  # objectives clamp their own scales
        step += 1
        now = time.time()
        batch_time += now - t_data
        t_last = now
        n_interval += 1
        last_losses = losses
        if step % cfg.log_every == 0 or step == steps:
            # each rank's loss covers its own rows; their mean is the global-batch loss
            losses = last_losses = mean_over_ranks(losses)
            elapsed = data_time + batch_time
            rec = {"step": step, "epoch": round(step * batch / len(ds), 3), **{k: round(v, 6) for k, v in losses.items()},
                   "lr": lr_now, "logit_scale": round(model.clip.logit_scale.detach().exp().item(), 4),
                   "samples_per_s": round(n_interval * batch / max(elapsed, 1e-9), 2),
                   "data_time": round(data_time / n_interval, 5), "batch_time": round(batch_time / n_interval, 5)}
            log.metrics(rec)
            if pbar is not None:
                pbar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr_now:.1e}", sps=f"{rec['samples_per_s']:.0f}")
            data_time = batch_time = 0.0
            n_interval = 0
        if pbar is not None:
            pbar.update(1)
        if step % save_every == 0 or step == steps:
            _save(out, model, opt, scaler, step, resolved, dinfo)
    if pbar is not None:
        pbar.close()
    train_seconds = time.time() - t_train
    result = RunResult(out=out, steps=step, train_seconds=train_seconds,
                       info={"n_train": len(ds), "n_bad": len(ds.bad), "final_loss": last_losses.get("loss")})
    if dinfo.is_main:
        model.eval()
        label_set = card.demo.get("label_set") if cfg.data is None else None
        model.save(out / "model", extra={"domain": card.name, "objective": cfg.objective,
                                          "label_set": label_set or card.default_label_set,
                                          "trained_steps": step})
        if cfg.eval and held_m is not None:
            from medvlp.eval.zeroshot import evaluate_manifest

            metrics = evaluate_manifest(model, held_m, card=card, progress=not quiet)
            atomic_write_text(out / "eval.json", json.dumps(metrics, indent=2))
            result.metrics = metrics
            log.info(format_metrics(metrics, title=f"held-out zero-shot ({metrics['n']} images)"))
        log.info(f"done in {time.time() - t_start:.0f} s (training {train_seconds:.0f} s); model: {out / 'model'}")
    barrier()
    return result


def _adamw(params: list[dict[str, Any]], **kw: Any) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has it (CPU and CUDA): on 2 CPU cores its step is 4-5x
    faster than the default multi-tensor one (the tiny model's 6M-row token embedding dominates)."""
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device/dtype the fused kernel lacks
        return torch.optim.AdamW(params, **kw)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _save(out: Path, model: MedVLP, opt: torch.optim.Optimizer, scaler: Any, step: int, cfg: TrainConfig,
          dinfo: DistInfo) -> None:
    if dinfo.is_main:
        save_checkpoint(out / "checkpoints", {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state(), "step": step, "config": cfg.to_dict(),
        })
    barrier()


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def format_metrics(metrics: dict[str, Any], title: str = "metrics") -> str:
    """Human-readable table of a metrics JSON (value and 95% CI)."""
    lines = [title]
    for k, v in metrics.items():
        if isinstance(v, dict) and "value" in v:
            lines.append(f"  {k:<28} {_num(v['value'])}  [{_num(v.get('ci_low'))}, {_num(v.get('ci_high'))}]")
    return "\n".join(lines)
