"""Typed run configuration, resolved once and saved as ``config.yaml`` beside every run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# CPU default schedule: about this many training samples (~8 minutes of the tiny model on 2 cores).
CPU_SAMPLE_BUDGET = 75_000
# GPU default schedule: this many passes over the data, bounded below by a minimum number of steps.
GPU_DEFAULT_EPOCHS = 30


@dataclass
class TrainConfig:
    domain: str = "pathology"  # domain card name (domains/<name>.toml)
    data: str | None = None  # manifest (CSV/JSONL/Parquet) or shard pattern; None = the domain's demo corpus
    val_data: str | None = None  # held-out manifest for zero-shot metrics; None = the data's val/test split
    model: str | None = None  # model config / run folder / zoo id; None = the card's default for the device
    objective: str = "clip"  # clip | siglip | concept | keep | combos like siglip+concept
    epochs: float | None = None  # passes over the data (exclusive with steps)
    steps: int | None = None  # optimisation steps; None = derived from epochs or the device default
    batch_size: int | None = None  # GLOBAL batch (split evenly over processes); None = device default
    lr: float | None = None  # peak learning rate; None = model-size default
    weight_decay: float = 0.1  # AdamW decay on weight matrices (not on biases, norms, scales)
    warmup: float = 0.05  # warm-up: fraction of steps (< 1) or a number of steps (>= 1)
    beta2: float = 0.98  # AdamW beta2 (CLIP practice for stability)
    grad_accum: int = 1  # micro-batches per step; features are cached so the loss sees the full batch
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    precision: str | None = None  # fp32 | bf16 | fp16; None = bf16 on CUDA and on CPUs with native bf16, else fp32
    lock_text: bool | None = None  # freeze the text tower (LiT-style); None = lock pretrained text towers
    lock_image: bool = False  # freeze the image tower
    patch_dropout: float = 0.0  # FLIP: fraction of patch tokens dropped in training (0 = off)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    seed: int = 0
    out: str | None = None  # run folder; None = runs/<domain>-<model>-<time>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | None = None  # data-loader workers; None = min(2, cpus) with the image cache, else min(8, cpus)
    cache: str = "auto"  # decoded-image cache: auto | ram | disk | none
    log_every: int = 10  # steps between metrics.jsonl lines
    save_every: int | None = None  # steps between checkpoints; None = about 10 per run
    eval: bool = True  # held-out zero-shot evaluation at the end
    max_bad_fraction: float = 0.01  # more unusable rows than this stops the run
    threads: int | None = None  # torch intra-op threads on CPU; None = torch's default
    resume: bool = False  # continue from the run folder's last checkpoint
    concept_loss_weight: float = 0.5  # lambda of the concept objective when combined
    fsdp: bool = False  # shard weights, gradients and optimizer state over processes (FSDP2); torchrun only
    dry_run: bool = False  # resolve and print the run (layout, batch, steps) without training or writing
    extra: dict[str, Any] = field(default_factory=dict)  # objective-specific options

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
