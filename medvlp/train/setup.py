"""Resolving a run: defaults, data, model, dataset, batch and schedule, and the data loader.

Everything here is decided once, before the first step, and recorded in the run folder's
``config.yaml``; :mod:`medvlp.train.loop` only executes it. Objectives are reached only through the
:class:`~medvlp.objectives.CombinedObjective` interface (logit init, model needs, data needs), so
nothing here knows an objective by name.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medvlp.config import CPU_SAMPLE_BUDGET, GPU_DEFAULT_EPOCHS, TrainConfig
from medvlp.data.dataset import ImageTextDataset, StepSampler, collate, options_for
from medvlp.data.manifest import Manifest, read_manifest
from medvlp.domains import DomainCard, load_card
from medvlp.errors import ConfigError
from medvlp.models import MedVLP, create_model
from medvlp.objectives import CombinedObjective, DataNeeds, objective_for
from medvlp.train.checkpoint import load_checkpoint
from medvlp.train.distributed import DistInfo, barrier
from medvlp.train.runfolder import exit_with_parent, prepare_run_folder

if TYPE_CHECKING:
    from medvlp.data.dataset import ImageOptions


class RunLogger:
    """metrics.jsonl / bad_samples.jsonl writer (rank 0 only) and console printing."""

    def __init__(self, out: Path, enabled: bool, quiet: bool = False, write: bool = True) -> None:
        self.out, self.enabled, self.quiet, self.write = out, enabled, quiet, write

    def info(self, msg: str) -> None:
        if self.enabled and not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def _append(self, name: str, rec: dict[str, Any]) -> None:
        if self.enabled and self.write:
            with open(self.out / name, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def metrics(self, rec: dict[str, Any]) -> None:
        self._append("metrics.jsonl", rec)

    def bad_sample(self, rec: dict[str, Any]) -> None:
        self._append("bad_samples.jsonl", rec)


@dataclass
class Run:
    """A resolved run: what the loop trains, on what, for how long, and where it writes."""

    cfg: TrainConfig
    dinfo: DistInfo
    card: DomainCard
    out: Path
    log: RunLogger
    model: MedVLP
    objective: CombinedObjective
    needs: DataNeeds
    ds: Any  # ImageTextDataset, or ShardStream for streamed shards
    held: Manifest | None
    opts: ImageOptions
    streamed: bool
    batch: int
    steps: int
    lr: float
    warmup: int
    precision: str
    save_every: int
    resolved: TrainConfig
    ckpt: dict[str, Any] | None = None
    info: dict[str, str] = field(default_factory=dict)  # human-readable decisions for the summary

    @property
    def start(self) -> int:
        return int(self.ckpt["step"]) if self.ckpt is not None else 0


# ------------------------------------------------------------------------------------------------
# Defaults
# ------------------------------------------------------------------------------------------------
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


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_out(cfg: TrainConfig, model_name: str) -> Path:
    runs = Path("runs")
    if cfg.resume:
        prev = sorted(runs.glob(f"{cfg.domain}-*"), key=lambda p: p.stat().st_mtime)
        if not prev:
            raise ConfigError("--resume needs --out RUN_DIR (no earlier run of this domain under runs/)")
        return prev[-1]
    safe = Path(model_name).name.replace(":", "_")
    return runs / f"{cfg.domain}-{safe}-{datetime.now():%Y%m%d-%H%M%S}"


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def resolve_data(cfg: TrainConfig, card: DomainCard, dinfo: DistInfo,
                 objective: CombinedObjective | None = None) -> tuple[Manifest, Manifest | None, str]:
    """Training rows, held-out rows (or None) and a one-line description."""
    from medvlp.data.stream import is_shard_pattern

    if is_shard_pattern(cfg.data):
        # -- streamed WebDataset shards (medvlp.data.stream): no rows up front. An empty manifest stands
        # in for the training rows (caption annotations are then found in each caption).
        (objective or objective_for(cfg)).check_streamable()
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
    train = m
    if "split" in m.columns:
        splits = set(m.df["split"].astype(str))
        train = m.split("train") if "train" in splits else m
        for name in ("val", "test"):
            if name in splits and cfg.val_data is None:
                held = m.split(name)
                desc += f"; held-out = split '{name}'"
                break
    if cfg.val_data:
        held = read_manifest(cfg.val_data)
        desc += f"; held-out = {cfg.val_data}"
    return train, held, desc


def _build_model(cfg: TrainConfig, card: DomainCard, dinfo: DistInfo,
                 objective: CombinedObjective) -> tuple[MedVLP, str, bool]:
    model_name = cfg.model or card.default_model(dinfo.device.type)
    model = create_model(model_name, device=dinfo.device, seed=cfg.seed, **objective.model_kwargs())
    pretrained_text = bool(model.spec.model_cfg["text_cfg"].get("hf_model_name"))
    lock_text = pretrained_text if cfg.lock_text is None else cfg.lock_text
    model.lock(image=cfg.lock_image, text=lock_text)
    if cfg.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
    if cfg.patch_dropout > 0:
        from open_clip.transformer import PatchDropout

        model.clip.visual.patch_dropout = PatchDropout(cfg.patch_dropout)
    return model, model_name, lock_text


def _build_dataset(cfg: TrainConfig, train_m: Manifest, model: MedVLP, opts: ImageOptions,
                   objective: CombinedObjective, card: DomainCard, log: RunLogger, dinfo: DistInfo,
                   quiet: bool) -> tuple[Any, DataNeeds, bool, str]:
    """The training dataset and what the objective needs of it: ``(dataset, needs, streamed, description)``."""
    from medvlp.data.stream import ShardStream, is_shard_pattern

    if is_shard_pattern(cfg.data):
        # -- streamed shards: an IterableDataset split over ranks and workers (medvlp.data.stream). The
        # objective's per-sample fields come from each sample's json member, numbered by the shards'
        # vocabulary (shards.json), so they agree on every rank.
        stream = ShardStream(str(cfg.data), model.tokenizer, opts, seed=cfg.seed, rank=dinfo.rank,
                             world=dinfo.world, bad_log=log.bad_sample, max_bad_fraction=cfg.max_bad_fraction)
        needs = objective.stream_needs(train_m, stream.vocabulary, card, model, cfg.extra)
        for key, value in needs.stream_kwargs().items():
            setattr(stream, key, value)
        return stream, needs, True, f" ({len(stream.urls)} shard(s), epoch length from {stream.count_source})"
    needs = objective.data_needs(train_m, card, model, cfg.extra)
    ds = ImageTextDataset(train_m, model.tokenizer, opts, seed=cfg.seed, train=True, cache=cfg.cache,
                          bad_log=log.bad_sample, max_bad_fraction=cfg.max_bad_fraction,
                          progress=dinfo.is_main and not quiet, **needs.dataset_kwargs())
    return ds, needs, False, ""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (x86 AVX512-BF16 or AMX-BF16, read from
    /proc/cpuinfo on Linux). Elsewhere bf16 is emulated, and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_precision(device: torch.device) -> str:
    """bf16 autocast on CUDA and on CPUs with native bf16 (measured on the pathology demo: same held-out
    metrics, about 1.6x the samples/s of fp32 on an AVX512-BF16 CPU; bench/train_throughput.py), else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def resolve_run(cfg: TrainConfig, dinfo: DistInfo, quiet: bool = False) -> Run:
    """Resolve every default of ``cfg`` and build the model, the objective and the dataset.

    With ``cfg.dry_run`` nothing is written (no run folder) and the image cache is not filled.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    card = load_card(cfg.domain)
    dev = dinfo.device
    objective = objective_for(cfg)
    write = not cfg.dry_run
    out = Path(cfg.out) if cfg.out else default_out(cfg, cfg.model or card.default_model(dev.type))
    if dinfo.is_main and write:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    log = RunLogger(out, dinfo.is_main, quiet, write=write)
    ckpt = load_checkpoint(out / "checkpoints") if cfg.resume else None
    if cfg.resume and ckpt is None:
        raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    if dinfo.is_main and write:
        prepare_run_folder(out, int(ckpt["step"]) if ckpt is not None else None)

    model, model_name, lock_text = _build_model(cfg, card, dinfo, objective)
    train_m, held_m, data_desc = resolve_data(cfg, card, dinfo, objective)
    opts = options_for(model.spec, card, train=True)
    data_cfg = cfg if write else TrainConfig(**{**cfg.to_dict(), "cache": "none"})
    ds, needs, streamed, more = _build_dataset(data_cfg, train_m, model, opts, objective, card, log, dinfo, quiet)
    data_desc += more

    batch = cfg.batch_size or default_batch_size(dev)
    if cfg.batch_size is None:
        batch = min(batch, len(ds) - len(ds) % dinfo.world)
    if needs.batching is not None:
        batch = needs.batching.fit_batch(batch, given=cfg.batch_size is not None, world=dinfo.world,
                                         item_rows=[ds.row_of(k) for k in range(len(ds))])
    steps, steps_why = resolve_steps(cfg, len(ds), batch, dev, card.demo)
    lr = cfg.lr or default_lr(model, batch)
    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * steps))
    precision = cfg.precision or default_precision(dev)
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"--precision must be fp32, bf16 or fp16, not '{precision}'")
    if precision == "fp16" and dev.type != "cuda":
        raise ConfigError("fp16 needs CUDA; use --precision bf16 or fp32 on CPU")
    save_every = cfg.save_every or max(10, steps // 10)
    resolved = TrainConfig(**{**cfg.to_dict(), "model": model_name, "steps": steps, "epochs": None,
                              "batch_size": batch, "lr": lr, "precision": precision, "lock_text": lock_text,
                              "out": str(out), "save_every": save_every, "device": str(dev)})
    run = Run(cfg=cfg, dinfo=dinfo, card=card, out=out, log=log, model=model, objective=objective,
              needs=needs, ds=ds, held=held_m, opts=opts, streamed=streamed, batch=batch, steps=steps, lr=lr,
              warmup=warmup, precision=precision, save_every=save_every, resolved=resolved, ckpt=ckpt,
              info={"data": data_desc, "steps": steps_why, "model": model_name, "train_rows": str(len(train_m))})
    if dinfo.is_main and write:
        _record(run, train_m)
    return run


def _record(run: Run, train_m: Manifest) -> None:
    """config.yaml, the caption record (``eval`` reports ``prompt_overlap`` against it), unknown labels."""
    from medvlp.data.manifest import unknown_labels
    from medvlp.eval.hygiene import write_caption_record

    run.resolved.save(run.out / "config.yaml")
    if len(train_m) and "caption" in train_m.columns:
        write_caption_record(run.out, train_m, run.card)
    if len(train_m) and "label" in train_m.columns:
        unknown = unknown_labels(train_m, run.card)
        if unknown:
            run.info["unknown_labels"] = (
                f"labels not in the '{run.card.name}' card (kept; zero-shot uses their raw names): "
                + ", ".join(f"{k!r} x{v}" for k, v in list(unknown.items())[:8]) + (" ..." if len(unknown) > 8 else ""))


def describe(run: Run) -> str:
    """The run's summary (printed before training, and by ``--dry-run``)."""
    cfg, d = run.cfg, run.dinfo
    lines = [
        f"medvlp pretrain | domain {run.card.name} | model {run.info['model']}"
        f"{' (default for ' + d.device.type + ')' if cfg.model is None else ''} | objective {cfg.objective} "
        f"{run.objective.weights} | device {d.device}{f' x{d.world} processes' if d.distributed else ''}",
        f"  data: {run.info['data']}: {len(run.ds)} training samples ({len(run.ds.bad)} skipped)"
        f"{f', {len(run.held)} held-out' if run.held is not None else ''}",
    ]
    if "unknown_labels" in run.info:
        lines.append("  " + run.info["unknown_labels"])
    lines.append(
        f"  schedule: {run.steps} steps ({run.info['steps']}) x batch {run.batch} = "
        f"{run.steps * run.batch / max(len(run.ds), 1):.1f} epochs, lr {run.lr:.2e} cosine, warm-up {run.warmup}, "
        f"precision {run.precision}, text tower {'locked' if run.resolved.lock_text else 'trained'}")
    if run.needs.batching is not None:
        lines.append(f"  batches: {run.needs.batching.describe(run.batch)}")
    if run.needs.info:
        lines.append(f"  objective data: {run.needs.info}")
    lines.append(f"  run folder: {run.out}")
    return "\n".join(lines)


def layout(run: Run) -> str:
    """The resolved process layout, as ``--dry-run`` prints it."""
    d = run.dinfo
    env = {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                      "GROUP_RANK", "TORCHELASTIC_RUN_ID") if k in os.environ}
    return (f"layout: world size {d.world} (this is rank {d.rank}), global batch {run.batch}, per-rank batch "
            f"{run.batch // d.world} x grad-accum {run.cfg.grad_accum}, steps {run.steps}, samples/epoch "
            f"{len(run.ds)}, epochs {run.steps * run.batch / max(len(run.ds), 1):.2f}, device {d.device}"
            + (f", env {env}" if env else ""))


def build_loader(run: Run) -> torch.utils.data.DataLoader:
    """The data loader of the remaining steps (from the checkpoint's step on)."""
    cfg, d, ds = run.cfg, run.dinfo, run.ds
    pin = d.device.type == "cuda"
    if run.streamed:
        # -- streamed shards: the stream yields this rank's collated share of each remaining step
        ds.configure(run.batch, run.steps, run.start, state=(run.ckpt or {}).get("data"))
        workers = cfg.workers if cfg.workers is not None else min(8, cpus())
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin,
                                           worker_init_fn=exit_with_parent)
    if run.needs.batching is not None:
        sampler: Any = run.needs.batching.sampler(run.batch, seed=cfg.seed, total_steps=run.steps,
                                                  start_step=run.start, rank=d.rank, world=d.world)
    else:
        sampler = StepSampler(len(ds), run.batch, seed=cfg.seed, total_steps=run.steps, start_step=run.start,
                              rank=d.rank, world=d.world)
    # With decoded images cached in RAM the workers only augment; two of them take that off the training
    # thread (measured +11% samples/s on 2 cores), more would only compete with the step for the cores.
    workers = cfg.workers if cfg.workers is not None else (min(2, cpus()) if ds.images is not None
                                                           else min(8, cpus()))
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                       pin_memory=pin, persistent_workers=workers > 0,
                                       worker_init_fn=exit_with_parent)
