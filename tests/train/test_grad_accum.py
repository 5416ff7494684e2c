"""``--grad-accum k`` gives the gradients of one batch of k times the size, for every objective and every
parameter (logit scale and bias, concept head, towers), in one process and under 2-process DDP (gloo).

Before the GradCache step, each micro-batch's loss was back-propagated in full, so the parameters the loss
uses directly (logit scale/bias, the concept head's scale/bias, the text projection of cached concept
tokens) received k gradient contributions: these tests fail on that code.
"""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
import torch

from medvlp.data.dataset import Normalizer
from medvlp.models import create_model
from medvlp.objectives import build_objective
from medvlp.objectives.concept import ConceptSpan
from medvlp.train.step import NoScaler, train_step

OBJECTIVES = ["clip", "siglip", "siglip+concept", "clip+concept", "keep", "softclip"]
N = 8


def _model(spec: str, patch_dropout: float = 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    objective = build_objective(spec)
    model = create_model("tiny", seed=0, **objective.model_kwargs())
    if patch_dropout:
        from open_clip.transformer import PatchDropout

        model.clip.visual.patch_dropout = PatchDropout(patch_dropout)
    objective.bind(model)
    model.train()
    return model, objective


def _batch(model: torch.nn.Module, n: int = N, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    words = ["mucosa", "stroma", "tumour", "fat", "muscle", "debris", "lymphocytes", "mucus"]
    captions = [f"{words[i % 8]} with {words[(i * 3 + 1) % 8]} and {words[(i + 5) % 8]}" for i in range(n)]
    concepts = [[ConceptSpan(f"x:{words[i % 8]}", 1, 2), ConceptSpan(f"x:{words[(i + 5) % 8]}", 5, 6, i % 3 == 0)]
                for i in range(n)]
    return {
        "image": torch.rand(n, 3, 64, 64, generator=g),
        "text": model.tokenizer(captions),
        "concepts": concepts,
        "group": torch.tensor([i % 3 for i in range(n)]),
        "soft_labels": torch.tensor([[float(i % 2 == 0), float(i % 3 == 0), 1.0] for i in range(n)]),
    }


def _grads(model, objective, batch, accum: int, ddp_model=None) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    train_step(ddp_model or model, objective, batch, normalizer=Normalizer((0.5,) * 3, (0.25,) * 3),
               device=torch.device("cpu"), accum=accum, autocast=contextlib.nullcontext, scaler=NoScaler())
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(big: dict, acc: dict, atol: float = 1e-5) -> None:
    assert big.keys() == acc.keys()
    for name in big:
        # relative to the gradient's own size: the towers' gradients are small, the scale's large
        tol = atol * max(1.0, float(big[name].abs().max()))
        assert torch.allclose(big[name], acc[name], atol=tol, rtol=1e-4), (
            f"{name}: max |diff| {float((big[name] - acc[name]).abs().max()):.3g} (max |grad| "
            f"{float(big[name].abs().max()):.3g})")


@pytest.mark.parametrize("spec", OBJECTIVES)
@pytest.mark.parametrize("accum", [2, 4])
def test_accumulation_equals_the_big_batch(spec: str, accum: int) -> None:
    model, objective = _model(spec)
    batch = _batch(model)
    big = _grads(model, objective, batch, 1)
    acc = _grads(model, objective, batch, accum)
    for key in ("clip.logit_scale", "clip.logit_bias", "concept_head.logit_scale"):
        if key in big:
            assert big[key].abs().sum() > 0, f"{key} got no gradient"
    _assert_same(big, acc)


def test_accumulation_replays_the_random_patch_dropout() -> None:
    model, objective = _model("siglip", patch_dropout=0.5)
    batch = _batch(model)
    _assert_same(_grads(model, objective, batch, 1), _grads(model, objective, batch, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, spec: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model, objective = _model(spec)
        full = _batch(model)
        share = N // world
        local = {k: v[rank * share:(rank + 1) * share] for k, v in full.items()}
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        result = {str(a): _grads(model, objective, local, a, ddp_model=ddp) for a in (1, 2)}
        if rank == 0:
            torch.save(result, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec", ["siglip+concept", "clip", "keep"])
def test_accumulation_under_two_process_ddp_equals_one_process_big_batch(spec: str, tmp_path, monkeypatch) -> None:
    import sys

    # spawned workers re-run __main__'s file; after an in-process Streamlit AppTest that is an app script
    monkeypatch.delattr(sys.modules["__main__"], "__file__", raising=False)
    out = tmp_path / "grads.pt"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), spec, str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    model, objective = _model(spec)
    single = _grads(model, objective, _batch(model), 1)
    _assert_same(single, ddp["1"])  # DDP without accumulation = the global batch in one process
    _assert_same(single, ddp["2"])  # and with 2 micro-batches per rank, too
