"""Sharded data parallelism (``--fsdp``): FSDP2 ``fully_shard`` and distributed checkpoints.

Every transformer block of both towers is its own shard group and the model root holds the rest, so each
rank keeps 1/world of the weights, gradients and AdamW moments between uses (what lets ViT-L-sized runs fit).
Scalar parameters (logit scales and biases), which ``fully_shard`` cannot split, stay replicated and their
gradients are averaged over ranks by hand, so a sharded run computes what a DDP run does.

Checkpoints are written with ``torch.distributed.checkpoint`` into ``checkpoints/sharded-<step>/`` (one file
per rank plus metadata; DCP reshards on load, so a run saved on N processes resumes on M), beside the usual
``last.pt``, which then holds the step, RNG state and config and names the sharded folder. At the end the
full weights are gathered and written as the ordinary single-file ``model/`` folder.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from medvlp.train.checkpoint import save_checkpoint

BLOCKS = ("ResidualAttentionBlock", "CustomResidualAttentionBlock", "BertLayer", "RobertaLayer", "Block")
PREFIX = "sharded-"


def shard_model(model: nn.Module) -> list[nn.Parameter]:
    """Shard ``model`` in place (blocks, then the root); returns the replicated scalar parameters."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if type(module).__name__ in BLOCKS and module is not model:
            fully_shard(module)
    # a list in named_parameters order: every rank must all-reduce them in the same order
    scalars = [p for _, p in model.named_parameters() if p.ndim == 0]
    fully_shard(model, ignored_params=set(scalars))
    return scalars


def sync_replicated(scalars: list[nn.Parameter]) -> None:
    """Average the gradients of the replicated parameters over ranks (FSDP reduces the sharded ones)."""
    world = dist.get_world_size()
    for p in scalars:  # the same (named_parameters) order on every rank
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm over sharded and replicated parameters alike (as DDP's run would)."""
    sharded = [p.grad for p in params if p.grad is not None and hasattr(p.grad, "full_tensor")]
    plain = [p.grad for p in params if p.grad is not None and not hasattr(p.grad, "full_tensor")]
    sq = torch.zeros(())
    if sharded:
        sq = sq + _local(torch.nn.utils.get_total_norm(sharded)).float().cpu() ** 2
    if plain:
        sq = sq + torch.nn.utils.get_total_norm(plain).float().cpu() ** 2
    total = float(sq.sqrt())
    coef = max_norm / (total + 1e-6)
    if coef < 1 and math.isfinite(total):
        for g in sharded + plain:
            g.mul_(coef)
    return total


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # full_state_dict=True gathers every value into a plain CPU tensor
    return cast(dict[str, torch.Tensor],
                get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def save_sharded(directory: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> Path:
    """Write a distributed checkpoint of step ``meta["step"]`` (collective); rank 0 then points ``last.pt``
    at it and removes older sharded folders. A kill mid-write leaves only a ``.tmp`` folder behind."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    name = f"{PREFIX}{int(meta['step']):08d}"
    tmp = directory / f".{name}.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        final = directory / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        save_checkpoint(directory, {**meta, "sharded": name})
        for old in directory.glob(f"{PREFIX}*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return directory / name


def load_sharded(directory: Path, ckpt: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load the distributed checkpoint ``last.pt`` names into a sharded model and its optimizer, whatever
    the world size it was saved with (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, opt)
    state: dict[str, Any] = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(directory / ckpt["sharded"]))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
