"""``medvlp pretrain`` and ``medvlp models``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medvlp.config import TrainConfig


def pretrain(
    domain: Annotated[str, typer.Option(help="Domain card: cxr, pathology, dermatology, microscopy.")] = "pathology",
    data: Annotated[str | None, typer.Option(help="Manifest (CSV/JSONL/Parquet); omit for the demo corpus.")] = None,
    val_data: Annotated[str | None, typer.Option(help="Held-out manifest for zero-shot metrics.")] = None,
    model: Annotated[str | None, typer.Option(help="Model config, run folder or zoo id (default: card's, per device).")] = None,
    objective: Annotated[str, typer.Option(help="clip | siglip | keep | softclip | combos like siglip+concept or \"siglip+0.25*concept\" (concept needs clip or siglip).")] = "clip",
    epochs: Annotated[float | None, typer.Option(help="Passes over the data.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimisation steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size (split over processes).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder (default runs/<domain>-<model>-<time>).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last checkpoint.")] = False,
    precision: Annotated[str | None, typer.Option(help="fp32 | bf16 | fp16 (default bf16 on CUDA and on CPUs with native bf16, else fp32).")] = None,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per step (features cached).")] = 1,
    grad_clip: Annotated[float, typer.Option(help="Max gradient norm (0 = off).")] = 1.0,
    warmup: Annotated[float, typer.Option(help="Warm-up steps, or a fraction of steps if < 1.")] = 0.05,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.1,
    lock_text: Annotated[bool | None, typer.Option("--lock-text/--train-text", help="Freeze the text tower (default: freeze pretrained ones).")] = None,
    lock_image: Annotated[bool, typer.Option("--lock-image", help="Freeze the image tower.")] = False,
    patch_dropout: Annotated[float, typer.Option(help="FLIP patch dropout fraction.")] = 0.0,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Trade compute for memory.")] = False,
    workers: Annotated[int | None, typer.Option(help="Data-loader workers.")] = None,
    cache: Annotated[str, typer.Option(help="Decoded-image cache: auto | ram | disk | none.")] = "auto",
    max_bad_fraction: Annotated[float, typer.Option(help="Stop when more rows than this are unusable.")] = 0.01,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    log_every: Annotated[int, typer.Option(help="Steps between metrics.jsonl lines.")] = 10,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the held-out zero-shot evaluation.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Shard weights, gradients and optimizer state over the "
                                                      "processes (FSDP2; under torchrun).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve and print the run (world size, per-rank "
                                                            "batch, steps, samples/epoch); train nothing.")] = False,
) -> None:
    from medvlp.train import pretrain as run

    cfg = TrainConfig(
        domain=domain, data=data, val_data=val_data, model=model, objective=objective, epochs=epochs, steps=steps,
        batch_size=batch_size, lr=lr, out=out, seed=seed, device=device, resume=resume, precision=precision,
        grad_accum=grad_accum, grad_clip=grad_clip, warmup=warmup, weight_decay=weight_decay, lock_text=lock_text,
        lock_image=lock_image, patch_dropout=patch_dropout, grad_checkpointing=grad_checkpointing, workers=workers,
        cache=cache, max_bad_fraction=max_bad_fraction, threads=threads, save_every=save_every,
        log_every=log_every, eval=not no_eval, dry_run=dry_run, fsdp=fsdp,
    )
    result = run(cfg, quiet=quiet)
    if result.metrics is not None:
        typer.echo(f"eval.json: {Path(result.out) / 'eval.json'}")


def models(
    zoo: Annotated[bool, typer.Option("--zoo", help="List public medical models (hf-hub ids, preprocessing, "
                                                    "tokenizer, licence, citation).")] = False,
) -> None:
    if zoo:
        from medvlp.models.zoo import format_zoo

        typer.echo(format_zoo())
        return
    from medvlp.models import describe_models

    for name, desc in describe_models().items():
        typer.echo(f"{name:<22} {desc}")
