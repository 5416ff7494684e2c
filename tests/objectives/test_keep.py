"""keep objective: parity with a slow loop reference, hierarchy masking, edge cases, 2-process parity,
ontology relations, data hooks and a short end-to-end pretraining run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medvlp.data.manifest import Manifest, read_manifest
from medvlp.errors import ConfigError
from medvlp.objectives import build_objective
from medvlp.objectives.clip import ClipObjective
from medvlp.objectives.keep import CaptionSynthesiser, KeepObjective, group_relations, keep_loss
from medvlp.ontology import Concept, ConceptGraph


# ------------------------------------------------------------------------------------------------
# Slow reference: the DESIGN.md formula written with plain loops
# ------------------------------------------------------------------------------------------------
def reference_keep(
    img: torch.Tensor,
    txt: torch.Tensor,
    scale: torch.Tensor,
    groups: list[int],
    related: set[tuple[int, int]],
) -> torch.Tensor:
    ids = sorted(set(groups))

    def direction(anchors: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for g in ids:
            members = [i for i, x in enumerate(groups) if x == g]
            p = 0.0
            for a in members:
                inner = 0.0
                for b in members:
                    inner = inner + torch.exp(-scale * torch.dot(anchors[a], others[b]))
                p = p + 1.0 / inner
            neg = 0.0
            for h in ids:
                if h == g or (g, h) in related or (h, g) in related:
                    continue
                for a in members:
                    for b in (i for i, x in enumerate(groups) if x == h):
                        neg = neg + torch.exp(scale * torch.dot(anchors[a], others[b]))
            total = total - torch.log(p / (p + neg))
        return total / len(ids)

    return (direction(img, txt) + direction(txt, img)) / 2


def _features(n: int, d: int = 16, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    return img, txt


def _objective(related: set[tuple[int, int]], n_groups: int) -> KeepObjective:
    obj = KeepObjective()
    obj.set_relations(sorted(related), n_groups)
    return obj


# groups deliberately not contiguous, of sizes 3, 2, 4, 1, 2; groups 1 and 3 related
GROUPS = [2, 0, 1, 2, 0, 3, 2, 1, 4, 0, 2, 4]
RELATED = {(1, 3)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_matches_loop_reference(seed: int) -> None:
    img, txt = _features(len(GROUPS), seed=seed)
    scale = torch.tensor(7.5, dtype=torch.float64, requires_grad=True)
    obj = _objective(RELATED, 5)
    ours = obj(
        {"image_features": img, "text_features": txt, "logit_scale": scale}, {"group": torch.tensor(GROUPS)}
    )["keep"]
    g_ours = torch.autograd.grad(ours, (img, txt, scale))
    ref = reference_keep(img, txt, scale, GROUPS, RELATED)
    g_ref = torch.autograd.grad(ref, (img, txt, scale))
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # the masking matters: without it the loss differs
    unmasked = reference_keep(img, txt, scale, GROUPS, set())
    assert abs(unmasked.item() - ours.item()) > 1e-3


@pytest.fixture(scope="module")
def tiles_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pathology demo corpus as PNG tiles (6 classes x 16 images, 64 px); group = primary concept."""
    from medvlp.data.synthetic import demo_manifest

    out = tmp_path_factory.mktemp("keep-demo")
    return demo_manifest(
        "pathology", n_per_class=16, size=64, seed=0, out_dir=out / "corpus", progress=False, variant="tiles"
    )


def test_keep_through_registry_and_combined() -> None:
    img, txt = _features(len(GROUPS), seed=3)
    scale = torch.tensor(5.0, dtype=torch.float64)
    combined = build_objective("keep")
    combined.parts["keep"].set_relations(sorted(RELATED), 5)
    out = combined(
        {"image_features": img, "text_features": txt, "logit_scale": scale}, {"group": torch.tensor(GROUPS)}
    )
    ref = reference_keep(img, txt, scale, GROUPS, RELATED)
    assert out["keep"].item() == pytest.approx(ref.item(), abs=1e-6)
    assert out["loss"].item() == pytest.approx(ref.item(), abs=1e-6)


def test_related_groups_get_no_repulsive_gradient() -> None:
    """d loss / d s_ab is exactly 0 for every cross pair of related groups, nonzero for unrelated ones."""
    groups = torch.tensor(GROUPS)
    n = len(GROUPS)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    uniq = torch.unique(groups)
    related = torch.zeros(len(uniq), len(uniq), dtype=torch.bool)
    related[1, 3] = True
    loss = keep_loss(logits, groups, related)
    (grad,) = torch.autograd.grad(loss, logits)
    gi, gj = groups.unsqueeze(1), groups.unsqueeze(0)
    cross_related = ((gi == 1) & (gj == 3)) | ((gi == 3) & (gj == 1))
    cross_other = (gi != gj) & ~cross_related
    assert int(cross_related.sum()) == 2 * 2 * 1  # 2 members x 1 member, both orders
    assert torch.all(grad[cross_related] == 0.0)
    # every unrelated cross pair is a negative: pushed apart (positive gradient on its logit)
    assert torch.all(grad[cross_other] > 0)
    # and the masked logits cannot change the loss at all
    moved = logits.detach().clone()
    moved[cross_related] += 50.0
    assert keep_loss(moved, groups, related).item() == pytest.approx(loss.item(), abs=1e-12)

    # through the objective: the same holds for the features (gradient of cos of masked pairs is 0)
    img, txt = _features(n, seed=4)
    obj = _objective(RELATED, 5)
    sim = (img @ txt.T).detach().requires_grad_()
    fake_out = {
        "image_features": img.detach(),
        "text_features": txt.detach(),
        "logit_scale": torch.tensor(4.0),
    }
    logits_fn = 4.0 * sim
    loss2 = keep_loss(logits_fn, groups, obj.relation_mask(uniq))
    (g_sim,) = torch.autograd.grad(loss2, sim)
    assert torch.all(g_sim[cross_related] == 0.0)
    assert obj(fake_out, {"group": groups})["keep"].item() == pytest.approx(loss2.item(), abs=1e-12)


def test_singleton_groups_equal_clip() -> None:
    img, txt = _features(10, seed=5)
    scale = torch.tensor(20.0, dtype=torch.float64)
    out = {"image_features": img, "text_features": txt, "logit_scale": scale}
    keep = KeepObjective()(out, {"group": torch.arange(10)})["keep"]
    no_groups = KeepObjective()(out, {})["keep"]
    clip = ClipObjective()(out, {})["clip"]
    assert keep.item() == pytest.approx(clip.item(), abs=1e-10)
    assert no_groups.item() == pytest.approx(clip.item(), abs=1e-10)
    g_keep = torch.autograd.grad(keep, (img, txt))
    g_clip = torch.autograd.grad(clip, (img, txt))
    for a, b in zip(g_keep, g_clip, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("case", ["single_sample_groups", "one_group", "all_related", "large_scale"])
def test_no_nan(case: str) -> None:
    n = 8
    img, txt = _features(n, seed=6, dtype=torch.float32)
    scale = torch.tensor(100.0 if case == "large_scale" else 10.0, requires_grad=True)
    obj = KeepObjective()
    if case == "single_sample_groups":
        groups = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])  # three singleton groups among others
    elif case == "one_group":
        groups = torch.zeros(n, dtype=torch.long)
    elif case == "all_related":
        groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        obj.set_relations([(a, b) for a in range(4) for b in range(4) if a != b], 4)
    else:
        groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        txt = F.normalize(
            img.detach() + 0.05 * txt.detach(), dim=-1
        ).requires_grad_()  # near-aligned: exp(100)
    loss = obj({"image_features": img, "text_features": txt, "logit_scale": scale}, {"group": groups})["keep"]
    grads = torch.autograd.grad(loss, (img, txt, scale))
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(g).all() for g in grads)
    if case in ("one_group", "all_related"):
        # nothing to contrast: the documented fallback is a zero loss with zero gradient
        assert loss.item() == pytest.approx(0.0, abs=1e-6)
        assert all(float(g.abs().max()) < 1e-6 for g in grads)
    else:
        ref = reference_keep(
            img.detach().double(), txt.detach().double(), scale.detach().double(), groups.tolist(), set()
        )
        assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-4)
        assert loss.item() > 0


def test_bad_group_shape_is_a_clear_error() -> None:
    img, txt = _features(4)
    with pytest.raises(ValueError, match="batch\\['group'\\] has shape"):
        KeepObjective()(
            {"image_features": img, "text_features": txt, "logit_scale": torch.tensor(1.0)},
            {"group": torch.tensor([0, 1])},
        )


# ------------------------------------------------------------------------------------------------
# Two processes (gloo) equal one process with the same global batch
# ------------------------------------------------------------------------------------------------
# Each rank runs this script in a fresh interpreter (plain subprocesses: forking a process whose
# OpenMP pool is live can deadlock, and multiprocessing's spawn would re-import pytest and this module).
_WORKER = """
import json, sys, torch, torch.distributed as dist, torch.nn.functional as F
from medvlp.objectives.keep import KeepObjective
rank, world, rdv, out, groups, related = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], \\
    json.loads(sys.argv[5]), json.loads(sys.argv[6])
dist.init_process_group("gloo", init_method="file://" + rdv, rank=rank, world_size=world)
g = torch.Generator().manual_seed(11)
img = F.normalize(torch.randn(len(groups), 16, generator=g, dtype=torch.float64), dim=-1)
txt = F.normalize(torch.randn(len(groups), 16, generator=g, dtype=torch.float64), dim=-1)
per = len(groups) // world
sl = slice(rank * per, (rank + 1) * per)
li, lt = img[sl].clone().requires_grad_(), txt[sl].clone().requires_grad_()
scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
obj = KeepObjective()
obj.set_relations([tuple(p) for p in related], 5)
loss = obj({"image_features": li, "text_features": lt, "logit_scale": scale},
           {"group": torch.tensor(groups[sl])})["keep"]
gi, gt, gs = torch.autograd.grad(loss, (li, lt, scale))
torch.save({"loss": loss.detach(), "gi": gi, "gt": gt, "gs": gs}, out + f"/r{rank}.pt")
dist.destroy_process_group()
"""


def run_ranks(script: str, world: int, tmp_path: Path, *args: str) -> None:
    """Run ``script`` as ``world`` gloo ranks (one interpreter each) and wait; fail with their stderr."""
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
    run_ranks(_WORKER, world, tmp_path, json.dumps(GROUPS), json.dumps(sorted(RELATED)))
    img, txt = _features(len(GROUPS), seed=11)
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    loss = _objective(RELATED, 5)(
        {"image_features": img, "text_features": txt, "logit_scale": scale}, {"group": torch.tensor(GROUPS)}
    )["keep"]
    gi, gt, gs = torch.autograd.grad(loss, (img, txt, scale))
    per = len(GROUPS) // world
    for r in range(world):
        res = torch.load(tmp_path / f"r{r}.pt")
        assert res["loss"].item() == pytest.approx(loss.item(), abs=1e-10)
        # all_gather's backward sums the identical losses of all ranks: W x the gradient, which DDP's
        # averaging turns back into the global gradient (the same convention as clip and siglip)
        torch.testing.assert_close(res["gi"] / world, gi[r * per : (r + 1) * per], atol=1e-10, rtol=0)
        torch.testing.assert_close(res["gt"] / world, gt[r * per : (r + 1) * per], atol=1e-10, rtol=0)
        torch.testing.assert_close(res["gs"], gs, atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------------------------
# Ontology relations and data hooks
# ------------------------------------------------------------------------------------------------
def _graph() -> ConceptGraph:
    return ConceptGraph(
        [
            Concept("d:lesion", "skin lesion"),
            Concept("d:benign", "benign lesion", parents=["d:lesion"]),
            Concept("d:nevus", "melanocytic nevus", ["mole"], parents=["d:benign"]),
            Concept("d:malignant", "malignant lesion", parents=["d:lesion"]),
            Concept("d:melanoma", "melanoma", ["malignant melanoma"], parents=["d:malignant"]),
            Concept("d:bcc", "basal cell carcinoma", ["BCC"], parents=["d:malignant"]),
        ],
        meta={"name": "toy"},
    )


def test_group_relations_from_hierarchy() -> None:
    g = _graph()
    concepts = ["d:nevus", "d:benign", "d:melanoma", "d:malignant", None, "d:bcc", "d:nevus"]
    pairs = set(group_relations(concepts, g))
    expected_undirected = {
        (0, 1),
        (0, 6),
        (1, 6),  # nevus-benign, nevus-nevus, benign-nevus
        (2, 3),
        (3, 5),
    }  # melanoma-malignant, malignant-bcc (siblings 2,5 not related)
    expected = expected_undirected | {(b, a) for a, b in expected_undirected}
    assert pairs == expected
    # without an ontology only identical concepts relate
    assert set(group_relations(concepts, None)) == {(0, 6), (6, 0)}

    obj = KeepObjective()
    obj.set_relations(sorted(pairs), len(concepts))
    mask = obj.relation_mask(torch.tensor([0, 1, 2, 5]))
    assert mask.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    # ids outside the table are never related
    assert not obj.relation_mask(torch.tensor([3, 40])).any()


def _toy_manifest() -> Manifest:
    df = pd.DataFrame(
        {
            "image": [f"{i}.png" for i in range(8)],
            "caption": [
                "a mole",
                "a nevus here",
                "melanoma",
                "melanoma again",
                "benign thing",
                "bcc",
                "x",
                "y",
            ],
            "label": ["nevus", "nevus", "melanoma", "melanoma", "benign", "basal cell carcinoma", "", ""],
            "concepts": [None, None, None, None, None, None, json.dumps(["d:melanoma"]), None],
            "group": ["d:nevus", "d:nevus", "d:melanoma", "d:melanoma", "d:benign", None, None, None],
        }
    )
    return Manifest(df, Path("."))


def test_data_hooks_groups_relations_and_captions() -> None:
    obj = KeepObjective()
    data = obj.data_hooks(
        _toy_manifest(),
        None,
        {"keep": {"ontology": _graph(), "n_per_group": 2, "caption_p": 1.0, "caption_mode": "synonym"}},
    )
    # rows 0-4 from the group column, row 5 from its label (resolved by name), row 6 from its concept,
    # row 7 has nothing: a group of its own
    assert data.group_names == ["d:bcc", "d:benign", "d:melanoma", "d:nevus", "row:7"]
    assert data.group_of_row == [3, 3, 2, 2, 1, 0, 2, 4]
    assert data.group_concepts == ["d:bcc", "d:benign", "d:melanoma", "d:nevus", None]
    assert data.info["related_pairs"] == 1  # benign-nevus
    assert obj.relation_mask(torch.tensor([1, 3])).tolist() == [[False, True], [True, False]]
    assert data.row_fields(4) == {"group": 1}
    assert data.n_per_group == 2
    # caption synthesis: always replaced (p = 1) by a name or synonym of the row's concept
    rng = np.random.default_rng(0)
    caps = {data.caption_fn(0, "orig", rng) for _ in range(40)}
    assert caps and all(any(t in c for t in ("melanocytic nevus", "mole")) for c in caps)
    assert data.caption_fn(7, "orig", rng) == "orig"  # no concept: unchanged


def test_caption_probability_and_chain_mode() -> None:
    synth = CaptionSynthesiser(_graph(), ["d:melanoma"], 0.25, "chain")
    rng = np.random.default_rng(1)
    out = [synth(0, "orig", rng) for _ in range(2000)]
    replaced = [c for c in out if c != "orig"]
    assert abs(len(replaced) / len(out) - 0.25) < 0.03
    assert all("skin lesion, malignant lesion, melanoma" in c for c in replaced)


def test_bad_keep_options() -> None:
    with pytest.raises(ConfigError, match="unknown keep option"):
        KeepObjective().data_hooks(_toy_manifest(), None, {"keep": {"groups": 3}})
    with pytest.raises(ConfigError, match="caption_p must be in"):
        KeepObjective().data_hooks(_toy_manifest(), None, {"keep": {"caption_p": 2}})
    with pytest.raises(ConfigError, match="cannot load ontology"):
        KeepObjective().data_hooks(_toy_manifest(), None, {"keep": {"ontology": "/nonexistent/x.json"}})


def test_demo_corpus_groups_with_a_parent_group(tiles_demo: Path) -> None:
    """On the pathology demo with the bundled ontology: a group named by a parent concept is masked."""
    from medvlp.domains import load_card

    m = read_manifest(tiles_demo)
    card = load_card("pathology")
    df = m.df.copy()
    df.loc[df["group"] == "path:adipose_tissue", "group"] = [
        "path:adipose_tissue",
        "path:connective_tissue",
    ] * (int((df["group"] == "path:adipose_tissue").sum()) // 2)
    data = KeepObjective().data_hooks(Manifest(df, m.root, m.path), card, {})
    assert len(data.group_names) == 7
    if data.info["ontology"] is None:
        pytest.skip("the bundled pathology ontology could not be loaded")
    assert data.info["related_pairs"] == 1
    assert "path:connective_tissue" in data.group_names


# ------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pretrain_keep_end_to_end(tiles_demo: Path, tmp_path: Path) -> None:
    """A few steps of ``pretrain`` with objective keep on the small demo corpus: group batches, caption
    synthesis and the hierarchy mask in the real loop, finite positive losses (~20-45 s on 2 busy cores)."""
    from medvlp.config import TrainConfig
    from medvlp.train import pretrain

    cfg = TrainConfig(
        domain="pathology",
        data=str(tiles_demo),
        model="tiny",
        objective="keep",
        steps=3,
        batch_size=12,
        out=str(tmp_path / "run"),
        eval=False,
        workers=0,
        log_every=1,
        seed=0,
        extra={"keep": {"n_per_group": 3, "caption_p": 0.5}},
    )
    result = pretrain(cfg, quiet=True)
    assert result.steps == 3
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(math.isfinite(r["keep"]) and r["keep"] > 0 for r in recs)
    assert all(r["loss"] == pytest.approx(r["keep"]) for r in recs)


def test_masked_pairs_counts_same_group_and_hierarchy_pairs() -> None:
    from medvlp.objectives.keep import masked_pairs

    groups = torch.tensor([0, 0, 1, 2])
    related = torch.tensor([[False, False, False], [False, False, True], [False, False, False]])  # 1 ~ 2
    got = masked_pairs(groups, related)
    assert got["keep_masked"].item() == 4 and got["keep_related_masked"].item() == 2
    assert masked_pairs(groups, None)["keep_masked"].item() == 2


def test_uniform_batching_option_uses_the_runs_sampler() -> None:
    from medvlp.errors import ConfigError

    needs = KeepObjective().data_needs(_toy_manifest(), None, None, {"keep": {"batching": "uniform"}})
    assert needs.batching is None and needs.row_fields is not None
    assert KeepObjective().data_needs(_toy_manifest(), None, None, {}).batching is not None
    with pytest.raises(ConfigError, match="batching"):
        KeepObjective().data_needs(_toy_manifest(), None, None, {"keep": {"batching": "rows"}})
