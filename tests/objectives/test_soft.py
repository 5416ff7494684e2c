"""softclip (MedCLIP-style soft targets): parity with a loop reference, the clip fallback without
labels, label vectors from a manifest, and 2-process parity."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medvlp.data.manifest import Manifest
from medvlp.errors import ConfigError
from medvlp.objectives import INIT, build_objective, parse_objective
from medvlp.objectives.clip import ClipObjective
from medvlp.objectives.soft import SoftClipObjective, soft_targets


# ------------------------------------------------------------------------------------------------
# Slow reference
# ------------------------------------------------------------------------------------------------
def _sim(a: list[float], b: list[float], kind: str) -> float:
    if kind == "cosine":
        na = math.sqrt(sum(x * x for x in a))
        nb = math.sqrt(sum(x * x for x in b))
        if na == 0 or nb == 0:
            return 0.0
        return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)
    sa = {k for k, x in enumerate(a) if x > 0}
    sb = {k for k, x in enumerate(b) if x > 0}
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def reference_targets(labels: list[list[float]], kind: str) -> list[list[float]]:
    n = len(labels)
    out = []
    for i in range(n):
        w = [1.0 if j == i else _sim(labels[i], labels[j], kind) for j in range(n)]
        total = sum(w)
        out.append([x / total for x in w])
    return out


def reference_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, targets: list[list[float]]):
    n = img.shape[0]
    total = 0.0
    for anchors, others in ((img, txt), (txt, img)):
        for i in range(n):
            logits = [scale * torch.dot(anchors[i], others[j]) for j in range(n)]
            log_z = torch.log(sum(torch.exp(v) for v in logits))
            for j in range(n):
                if targets[i][j]:
                    total = total - targets[i][j] * (logits[j] - log_z)
    return total / (2 * n)


LABELS = [
    [1, 0, 0, 1],
    [1, 0, 0, 0],
    [0, 1, 0, 0],
    [0, 0, 0, 0],
    [0, 1, 1, 0],
    [1, 0, 0, 1],
    [0, 0, 0, 0],
    [0, 0, 1, 0],
]


def _features(n: int, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    return img, txt


@pytest.mark.parametrize("kind", ["cosine", "jaccard"])
def test_targets_match_reference(kind: str) -> None:
    t = soft_targets(
        torch.tensor(LABELS, dtype=torch.float64), torch.tensor(LABELS, dtype=torch.float64), similarity=kind
    )
    torch.testing.assert_close(
        t.double(), torch.tensor(reference_targets(LABELS, kind), dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert torch.allclose(t.sum(1), torch.ones(len(LABELS)))
    # unlabelled rows are one-hot; a row sharing a label with another is not
    assert t[3].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert t[0, 5] > 0 and t[0, 0] < 1


@pytest.mark.parametrize(("kind", "seed"), [("cosine", 0), ("jaccard", 1), ("cosine", 2)])
def test_loss_matches_loop_reference(kind: str, seed: int) -> None:
    img, txt = _features(len(LABELS), seed=seed)
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    obj = SoftClipObjective(similarity=kind)
    ours = obj(
        {"image_features": img, "text_features": txt, "logit_scale": scale},
        {"soft_labels": torch.tensor(LABELS, dtype=torch.float32)},
    )["softclip"]
    g_ours = torch.autograd.grad(ours, (img, txt, scale))
    ref = reference_loss(img, txt, scale, reference_targets(LABELS, kind))
    g_ref = torch.autograd.grad(ref, (img, txt, scale))
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    clip = ClipObjective()({"image_features": img, "text_features": txt, "logit_scale": scale}, {})["clip"]
    assert abs(clip.item() - ours.item()) > 1e-3  # shared labels change the loss


def test_without_labels_equals_clip() -> None:
    img, txt = _features(6, seed=3)
    scale = torch.tensor(14.0, dtype=torch.float64)
    out = {"image_features": img, "text_features": txt, "logit_scale": scale}
    clip = ClipObjective()(out, {})["clip"]
    g_clip = torch.autograd.grad(clip, (img, txt))
    for batch in ({}, {"soft_labels": torch.zeros(6, 3)}):
        soft = build_objective("softclip")(out, batch)
        assert soft["softclip"].item() == pytest.approx(clip.item(), abs=1e-10)
        g_soft = torch.autograd.grad(soft["loss"], (img, txt))
        for a, b in zip(g_soft, g_clip, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_registry_and_init() -> None:
    assert parse_objective("softclip") == {"softclip": 1.0}
    assert INIT["softclip"] == INIT["clip"]
    with pytest.raises(ConfigError, match="similarity must be cosine or jaccard"):
        SoftClipObjective(similarity="dice")


def test_data_hooks_label_vectors() -> None:
    df = pd.DataFrame(
        {
            "image": [f"{i}.png" for i in range(4)],
            "label": [json.dumps(["effusion", "edema"]), "edema", None, "pneumonia"],
            "concepts": [
                json.dumps(["c:a"]),
                None,
                json.dumps([{"id": "c:b", "negated": True}, {"id": "c:c"}]),
                None,
            ],
        }
    )
    m = Manifest(df, Path("."))
    obj = SoftClipObjective()
    data = obj.data_hooks(m, None, {})
    assert data.vocabulary == ["edema", "effusion", "pneumonia"]
    assert data.row_fields(0)["soft_labels"].tolist() == [1.0, 1.0, 0.0]
    assert data.row_fields(2)["soft_labels"].tolist() == [0.0, 0.0, 0.0]
    assert data.info == {"labels": 3, "labelled_rows": 3}
    both = SoftClipObjective().data_hooks(m, None, {"softclip": {"source": "both", "similarity": "jaccard"}})
    assert both.vocabulary == ["c:a", "c:c", "edema", "effusion", "pneumonia"]
    assert both.row_fields(2)["soft_labels"].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]  # negated c:b left out
    with pytest.raises(ConfigError, match="unknown softclip option"):
        obj.data_hooks(m, None, {"softclip": {"temperature": 1}})


# ------------------------------------------------------------------------------------------------
# Two processes
# ------------------------------------------------------------------------------------------------
_WORKER = """
import json, sys, torch, torch.distributed as dist, torch.nn.functional as F
from medvlp.objectives.soft import SoftClipObjective
rank, world, rdv, out, labels = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
dist.init_process_group("gloo", init_method="file://" + rdv, rank=rank, world_size=world)
g = torch.Generator().manual_seed(7)
img = F.normalize(torch.randn(len(labels), 16, generator=g, dtype=torch.float64), dim=-1)
txt = F.normalize(torch.randn(len(labels), 16, generator=g, dtype=torch.float64), dim=-1)
per = len(labels) // world
sl = slice(rank * per, (rank + 1) * per)
li, lt = img[sl].clone().requires_grad_(), txt[sl].clone().requires_grad_()
scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
loss = SoftClipObjective()({"image_features": li, "text_features": lt, "logit_scale": scale},
                           {"soft_labels": torch.tensor(labels[sl], dtype=torch.float32)})["softclip"]
gi, gt, gs = torch.autograd.grad(loss, (li, lt, scale))
torch.save({"loss": loss.detach(), "gi": gi, "gt": gt, "gs": gs}, out + f"/r{rank}.pt")
dist.destroy_process_group()
"""


def run_ranks(script: str, world: int, tmp_path: Path, *args: str) -> None:
    """Run ``script`` as ``world`` gloo ranks (one interpreter each) and wait; fail with their stderr.

    Plain subprocesses: forking a process whose OpenMP pool is live can deadlock, and
    multiprocessing's spawn would re-import pytest and this module in every rank.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(r), str(world), str(tmp_path / "rdv"), str(tmp_path), *args],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err[-2000:]


@pytest.mark.slow  # two fresh interpreters importing torch: 5-12 s on the shared 2-core machine
def test_two_processes_equal_one(tmp_path: Path) -> None:
    world = 2
    run_ranks(_WORKER, world, tmp_path, json.dumps(LABELS))
    img, txt = _features(len(LABELS), seed=7)
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    loss = SoftClipObjective()(
        {"image_features": img, "text_features": txt, "logit_scale": scale},
        {"soft_labels": torch.tensor(LABELS, dtype=torch.float32)},
    )["softclip"]
    gi, gt, gs = torch.autograd.grad(loss, (img, txt, scale))
    per = len(LABELS) // world
    results = [torch.load(tmp_path / f"r{r}.pt") for r in range(world)]
    # each rank's loss is the mean over its rows; the mean over ranks is the global loss
    assert sum(r["loss"].item() for r in results) / world == pytest.approx(loss.item(), abs=1e-10)
    # DDP averages the parameter gradients; the logit scale's is the mean of the ranks'
    torch.testing.assert_close(sum(r["gs"] for r in results) / world, gs, atol=1e-10, rtol=0)
    for r, res in enumerate(results):
        # all_gather's backward sums over ranks: W x the gradient of the global (mean) loss, as for clip
        torch.testing.assert_close(res["gi"] / world, gi[r * per : (r + 1) * per], atol=1e-10, rtol=0)
        torch.testing.assert_close(res["gt"] / world, gt[r * per : (r + 1) * per], atol=1e-10, rtol=0)
