"""The concept (patch-concept) objective and its span provider.

The loss is checked against a slow loop reference written here (forward and gradient, 1e-5), for
negation, empty concept lists, two gloo processes against one, and a short real training run.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medvlp.errors import DataError, ModelError
from medvlp.models.factory import Tokenizer, get_spec
from medvlp.models.spans import TokenSpanMapper
from medvlp.objectives import build_objective
from medvlp.objectives.concept import (
    ConceptObjective,
    ConceptSpan,
    concept_loss,
    make_concept_fn,
    text_token_shift,
)

N, K, D, L, W = 5, 4, 6, 7, 8


# ------------------------------------------------------------------------------------------------
# The reference: loops over images, concepts and patches, nothing vectorised
# ------------------------------------------------------------------------------------------------
def reference_loss(P, T, concepts, proj, t, b, negated="negative", mask_same=True):
    embs, owners, positive, ids = [], [], [], []
    for j, spans in enumerate(concepts):
        for sp in spans:
            if sp.negated and negated == "drop":
                continue
            total = torch.zeros(T.shape[2], dtype=T.dtype)
            for q in range(sp.start, sp.end):
                total = total + T[j, q]
            c = (total / (sp.end - sp.start)) @ proj
            embs.append(c / torch.sqrt((c * c).sum()))
            owners.append(j)
            positive.append(not sp.negated)
            ids.append(sp.concept_id)
    m = len(embs)
    if m == 0:
        return torch.zeros((), dtype=T.dtype)
    loss = torch.zeros((), dtype=T.dtype)
    for i in range(P.shape[0]):
        mentioned = {sp.concept_id for sp in concepts[i] if not sp.negated}
        for c, owner, pos, cid in zip(embs, owners, positive, ids, strict=True):
            if mask_same and owner != i and cid in mentioned:
                continue  # the same concept in another image's caption is not a negative for image i
            best = None
            for k in range(P.shape[1]):
                s = t * (P[i, k] * c).sum() + b
                best = s if best is None or s > best else best
            z = 1.0 if (owner == i and pos) else -1.0
            loss = loss - torch.log(torch.sigmoid(z * best))
    return loss / m


def _inputs(seed: int, n: int = N):
    g = torch.Generator().manual_seed(seed)
    raw_p = torch.randn(n, K, D, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.randn(n, L, W, generator=g, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(W, D, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    return raw_p, T, proj, t, b


def _random_concepts(seed: int, n: int = N, p_empty: float = 0.3, p_neg: float = 0.3) -> list[list[ConceptSpan]]:
    g = torch.Generator().manual_seed(1000 + seed)
    out = []
    for _ in range(n):
        spans = []
        if torch.rand((), generator=g) >= p_empty:
            for _ in range(int(torch.randint(1, 4, (), generator=g))):
                a = int(torch.randint(0, L - 1, (), generator=g))
                e = int(torch.randint(a + 1, L + 1, (), generator=g))
                cid = f"x:c{int(torch.randint(0, 4, (), generator=g))}"
                spans.append(ConceptSpan(cid, a, e, bool(torch.rand((), generator=g) < p_neg)))
        out.append(spans)
    return out


def _ours(raw_p, T, proj, t, b, concepts, negated="negative"):
    loss, m = concept_loss(F.normalize(raw_p, dim=-1), T, concepts, project=lambda x: x @ proj,
                           logit_scale=t, logit_bias=b, negated=negated)
    return loss, m


@pytest.mark.parametrize("negated", ["negative", "drop"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_forward_and_gradient(seed: int, negated: str) -> None:
    raw_p, T, proj, t, b = _inputs(seed)
    concepts = _random_concepts(seed)
    assert sum(map(len, concepts)) > 0
    ours, m = _ours(raw_p, T, proj, t, b, concepts, negated)
    ref = reference_loss(F.normalize(raw_p, dim=-1), T, concepts, proj, t, b, negated)
    expected_m = sum(1 for c in concepts for s in c if not (negated == "drop" and s.negated))
    assert m == expected_m
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    g_ours = torch.autograd.grad(ours, (raw_p, T, proj, t, b))
    g_ref = torch.autograd.grad(ref, (raw_p, T, proj, t, b))
    for a, r in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0)
    assert all(a.abs().sum() > 0 for a in g_ours)  # every input receives a gradient


def test_single_concept_closed_form_and_negation() -> None:
    # one image, one concept: the loss is softplus(-s) for a positive and softplus(s) for a negated one
    P = F.normalize(torch.tensor([[[1.0, 0.0], [0.6, 0.8]]], dtype=torch.float64), dim=-1)
    T = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [5.0, 5.0]]], dtype=torch.float64)
    t, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)

    def run(neg: bool, mode: str):
        return concept_loss(P, T, [[ConceptSpan("x", 0, 2, neg)]], project=lambda x: x, logit_scale=t,
                            logit_bias=b, negated=mode)

    # c = normalize(mean([0,1],[1,1])) = normalize([0.5, 1]); best patch [0.6, 0.8]
    c = torch.tensor([0.5, 1.0], dtype=torch.float64) / math.sqrt(1.25)
    s = 10.0 * float(torch.tensor([0.6, 0.8], dtype=torch.float64) @ c) - 5.0
    pos, m = run(False, "negative")
    assert m == 1 and pos.item() == pytest.approx(math.log1p(math.exp(-s)), abs=1e-12)
    neg, m = run(True, "negative")
    assert m == 1 and neg.item() == pytest.approx(math.log1p(math.exp(s)), abs=1e-12)
    dropped, m = run(True, "drop")
    assert m == 0 and dropped.item() == 0.0


def test_negated_mention_is_never_a_positive() -> None:
    raw_p, T, proj, t, b = _inputs(3)
    base = [[ConceptSpan("a", 1, 3)], [ConceptSpan("b", 0, 2)], [], [ConceptSpan("c", 2, 5)], []]
    negd = [list(x) for x in base]
    negd[0] = [ConceptSpan("a", 1, 3, negated=True)]
    P = F.normalize(raw_p, dim=-1)
    loss_pos, _ = concept_loss(P, T, base, project=lambda x: x @ proj, logit_scale=t, logit_bias=b)
    loss_neg, _ = concept_loss(P, T, negd, project=lambda x: x @ proj, logit_scale=t, logit_bias=b)
    # only the (image 0, concept a) term differs: -log sig(s) became -log sig(-s), i.e. by exactly s / M
    with torch.no_grad():
        c = F.normalize(T[0, 1:3].mean(0) @ proj, dim=0)
        s = t * (P[0] @ c).max() + b
    assert (loss_pos - loss_neg).item() == pytest.approx(-s.item() / 3, abs=1e-9)
    # raising the own image's score for a negated concept increases the loss (it is pushed away)
    g = torch.autograd.grad(loss_neg, b)[0]
    assert g.item() > 0


def test_empty_concepts_zero_loss_with_graph() -> None:
    raw_p, T, proj, t, b = _inputs(4)
    loss, m = _ours(raw_p, T, proj, t, b, [[] for _ in range(N)])
    assert m == 0 and loss.item() == 0.0 and loss.requires_grad
    grads = torch.autograd.grad(loss, (raw_p, T, t, b))
    assert all(torch.isfinite(g).all() and g.abs().sum() == 0 for g in grads)
    # captions without concepts still take part as images (scored against the others' concepts)
    concepts = [[], [ConceptSpan("a", 0, 1)], [], [], []]
    ours, m = _ours(raw_p, T, proj, t, b, concepts)
    ref = reference_loss(F.normalize(raw_p, dim=-1), T, concepts, proj, t, b)
    assert m == 1 and ours.item() == pytest.approx(ref.item(), abs=1e-9)
    assert torch.autograd.grad(ours, raw_p)[0][0].abs().sum() > 0


def test_bad_spans_and_missing_inputs() -> None:
    raw_p, T, proj, t, b = _inputs(5)
    for bad in [(0, 0), (3, 2), (-1, 2), (0, L + 1)]:
        with pytest.raises(ValueError, match="outside"):
            _ours(raw_p, T, proj, t, b, [[ConceptSpan("x", *bad)]] + [[]] * (N - 1))
    with pytest.raises(ValueError, match="captions"):
        _ours(raw_p, T, proj, t, b, [[]])
    with pytest.raises(ValueError, match="negated"):
        ConceptObjective(negated="ignore")
    obj = ConceptObjective()
    out = {"patch_embeddings": F.normalize(raw_p, dim=-1), "text_tokens": T, "concept_logit_scale": t,
           "concept_logit_bias": b}
    with pytest.raises(ModelError, match="bind"):
        obj(out, {"concepts": [[]] * N})
    with pytest.raises(ModelError, match="concept head"):
        obj({**out, "patch_embeddings": None}, {"concepts": [[]] * N})


def test_combined_with_siglip_through_the_registry() -> None:
    raw_p, T, proj, t, b = _inputs(6)
    concepts = _random_concepts(6)
    g = torch.Generator().manual_seed(6)
    img = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=-1)
    obj = build_objective("siglip+concept")
    assert obj.weights == {"siglip": 1.0, "concept": 0.5} and obj.needs_tokens
    obj.parts["concept"].bind(SimpleNamespace(project_text_tokens=lambda x: x @ proj))
    out = {"image_features": img, "text_features": txt, "logit_scale": torch.tensor(10.0, dtype=torch.float64),
           "logit_bias": torch.tensor(-10.0, dtype=torch.float64), "patch_embeddings": F.normalize(raw_p, dim=-1),
           "text_tokens": T, "concept_logit_scale": t, "concept_logit_bias": b}
    losses = obj(out, {"concepts": concepts})
    ref = reference_loss(F.normalize(raw_p, dim=-1), T, concepts, proj, t, b)
    assert losses["concept"].item() == pytest.approx(ref.item(), abs=1e-9)
    assert losses["concept_count"].item() == sum(map(len, concepts))
    assert losses["loss"].item() == pytest.approx(losses["siglip"].item() + 0.5 * ref.item(), abs=1e-9)


def test_real_model_forward_backward() -> None:
    from medvlp.models import create_model

    model = create_model("tiny", concept_head=True, init_logit_scale=math.log(10), init_logit_bias=-10.0, seed=0)
    obj = build_objective("siglip+concept")
    obj.parts["concept"].bind(model)
    caps = ["Adipose tissue with lymphocytes.", "Mucus.", "No debris seen.", "An H&E tile."]
    mapper = TokenSpanMapper(model.tokenizer)
    # spans by hand: "adipose tissue", "lymphocytes"; "mucus"; "debris" (negated); none
    concepts = []
    for cap, words, negs in [(caps[0], ["Adipose tissue", "lymphocytes"], [False, False]),
                             (caps[1], ["Mucus"], [False]), (caps[2], ["debris"], [True]), (caps[3], [], [])]:
        spans = [(cap.index(w), cap.index(w) + len(w)) for w in words]
        concepts.append([ConceptSpan(w, a, e, n) for w, (a, e), n in
                         zip(words, mapper.token_spans(cap, spans), negs, strict=True)])
    out = model(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)), model.tokenize(caps),
                return_tokens=True)
    losses = obj(out, {"concepts": concepts})
    assert losses["concept_count"].item() == 4
    assert math.isfinite(losses["concept"].item()) and losses["concept"].item() > 0
    losses["loss"].backward()
    head = model.concept_head
    assert head.logit_scale.grad is not None and head.logit_bias.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.net.parameters())
    assert model.clip.text.text_projection.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# Two processes (gloo) against one
# ------------------------------------------------------------------------------------------------
def _dist_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for case, concepts in _dist_cases().items():
            raw_p, T, proj, t, b = _inputs(7, n=2 * N)
            n = N
            sl = slice(rank * n, (rank + 1) * n)
            p_loc = raw_p.detach()[sl].clone().requires_grad_()
            t_loc = T.detach()[sl].clone().requires_grad_()
            proj_l, t_l, b_l = (x.detach().clone().requires_grad_() for x in (proj, t, b))
            loss, m = concept_loss(F.normalize(p_loc, dim=-1), t_loc, concepts[sl], project=lambda x, w=proj_l: x @ w,
                                   logit_scale=t_l, logit_bias=b_l)
            loss.backward()
            shared = torch.cat([proj_l.grad.flatten(), t_l.grad.view(1), b_l.grad.view(1)])
            dist.all_reduce(shared)  # what DDP does with parameter gradients (sum; divided below)
            losses = torch.tensor([loss.item()], dtype=torch.float64)
            dist.all_reduce(losses)
            gp = [torch.empty_like(p_loc.grad) for _ in range(world)]
            gt = [torch.empty_like(t_loc.grad) for _ in range(world)]
            dist.all_gather(gp, p_loc.grad)
            dist.all_gather(gt, t_loc.grad)
            results[case] = {"loss": losses.item() / world, "m": m, "shared": shared / world,
                             "grad_p": torch.cat(gp) / world, "grad_t": torch.cat(gt) / world}
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def _dist_cases() -> dict[str, list[list[ConceptSpan]]]:
    uneven = _random_concepts(8, n=2 * N, p_empty=0.2)
    one_side = _random_concepts(9, n=2 * N, p_empty=0.0)
    for j in range(N, 2 * N):  # rank 1 holds no concept at all
        one_side[j] = []
    return {"uneven": uneven, "rank1_empty": one_side, "all_empty": [[] for _ in range(2 * N)]}


def test_two_processes_equal_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import torch.multiprocessing as mp

    out_file = tmp_path / "dist.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # spawn re-runs the parent's __main__ file in each child; inside pytest that may be whatever script
    # ran last as __main__ (Streamlit's AppTest runs the apps that way), so give the children a blank one
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    results = torch.load(out_file, weights_only=True)
    for case, concepts in _dist_cases().items():
        raw_p, T, proj, t, b = _inputs(7, n=2 * N)
        loss, m = concept_loss(F.normalize(raw_p, dim=-1), T, concepts, project=lambda x, w=proj: x @ w,
                               logit_scale=t, logit_bias=b)
        got = results[case]
        assert got["m"] == m, case
        assert got["loss"] == pytest.approx(loss.item(), abs=1e-9), case
        if m == 0:
            assert got["loss"] == 0.0 and got["shared"].abs().sum() == 0
            continue
        gp, gT, gproj, gt, gb = torch.autograd.grad(loss, (raw_p, T, proj, t, b))
        torch.testing.assert_close(got["shared"], torch.cat([gproj.flatten(), gt.view(1), gb.view(1)]),
                                   atol=1e-9, rtol=0)
        # per-sample gradients on each rank are the world size times the global ones (DDP divides)
        torch.testing.assert_close(got["grad_p"], gp, atol=1e-9, rtol=0)
        torch.testing.assert_close(got["grad_t"], gT, atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------------------
# Spans for the dataset: make_concept_fn
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_stub() -> SimpleNamespace:
    # make_concept_fn needs only the tokenizer (and the text tower to know the position shift)
    return SimpleNamespace(tokenizer=Tokenizer(get_spec("tiny").model_cfg["text_cfg"]))


@pytest.fixture(scope="module")
def cxr_card():
    from medvlp.domains import load_card

    return load_card("cxr")


def _manifest(tmp_path: Path, rows: list[dict]) -> object:
    from medvlp.data.manifest import read_manifest

    df = pd.DataFrame(rows)
    df.to_csv(tmp_path / "m.csv", index=False)
    return read_manifest(tmp_path / "m.csv")


def _spelled(stub, caption: str, span: ConceptSpan) -> str:
    tok = stub.tokenizer._tok
    return tok.decode(stub.tokenizer(caption)[0].tolist()[span.start:span.end]).strip()


def test_concept_fn_matcher_ids_and_spans(tmp_path: Path, tiny_model_stub, cxr_card) -> None:
    cap0 = "Small left pleural effusion. No pneumothorax."
    rows = [
        {"image": "a.png", "caption": cap0, "concepts": None},  # matcher fills it
        {"image": "b.png", "caption": cap0, "concepts": json.dumps(["cxr:pleural_effusion", "cxr:pneumothorax",
                                                                      "cxr:cardiomegaly"])},
        {"image": "c.png", "caption": cap0, "concepts": json.dumps([[11, 27], [32, 44]])},
        {"image": "d.png", "caption": cap0, "concepts": json.dumps([{"id": "cxr:pneumothorax", "start": 32,
                                                                      "end": 44, "negated": False}])},
        {"image": "e.png", "caption": cap0, "concepts": "[]"},
        {"image": "f.png", "caption": "Marked tortuous aorta_thing seen.", "concepts": '["x:tortuous_aorta_thing"]'},
    ]
    m = _manifest(tmp_path, rows)
    fn = make_concept_fn(m, cxr_card, tiny_model_stub)

    got0 = fn(0, cap0)
    ids0 = [s.concept_id for s in got0]
    assert ids0[-2:] == ["cxr:pleural_effusion", "cxr:pneumothorax"]
    by_id = {s.concept_id: s for s in got0}
    assert (by_id["cxr:pleural_effusion"].start, by_id["cxr:pleural_effusion"].end) == (3, 7)
    assert _spelled(tiny_model_stub, cap0, by_id["cxr:pleural_effusion"]) == "pleural effusion"
    assert _spelled(tiny_model_stub, cap0, by_id["cxr:pneumothorax"]) == "pneumothorax"
    assert by_id["cxr:pneumothorax"].negated and not by_id["cxr:pleural_effusion"].negated

    # ids only: those concepts (not 'small'/'left'), negation from the matcher; cardiomegaly is not written
    got1 = fn(1, cap0)
    assert [(s.concept_id, s.negated) for s in got1] == [("cxr:pleural_effusion", False), ("cxr:pneumothorax", True)]
    assert [(s.start, s.end) for s in got1] == [(by_id[s.concept_id].start, by_id[s.concept_id].end) for s in got1]
    assert fn.stats["id_not_in_caption"] == 1

    # plain character spans: ids and negation from the matcher's mention at that span
    got2 = fn(2, cap0)
    assert [(s.concept_id, s.negated) for s in got2] == [("cxr:pleural_effusion", False), ("cxr:pneumothorax", True)]
    # dict spans: their own flags win
    assert fn(3, cap0) == [ConceptSpan("cxr:pneumothorax", by_id["cxr:pneumothorax"].start,
                                       by_id["cxr:pneumothorax"].end, False)]
    assert fn(4, cap0) == []
    # an id the ontology does not know is searched as a phrase
    got5 = fn(5, "Marked tortuous aorta_thing seen.")
    assert len(got5) == 1 and _spelled(tiny_model_stub, "Marked tortuous aorta_thing seen.", got5[0]) == \
        "tortuous aorta _ thing"


def test_concept_fn_other_caption_and_cache(tmp_path: Path, tiny_model_stub, cxr_card) -> None:
    caps = ["Left pleural effusion.", "Effusion on the left, pleural effusion small."]
    m = _manifest(tmp_path, [{"image": "a.png", "caption": json.dumps(caps), "concepts": "[[5, 21]]"}])
    fn = make_concept_fn(m, cxr_card, tiny_model_stub)
    first = fn(0, caps[0])
    assert len(first) == 1 and _spelled(tiny_model_stub, caps[0], first[0]) == "pleural effusion"
    # the other caption of the row: the same phrase ("pleural effusion") is found in it
    second = fn(0, caps[1])
    assert len(second) == 1 and _spelled(tiny_model_stub, caps[1], second[0]) == "pleural effusion"
    assert second[0].concept_id == "cxr:pleural_effusion"
    n = fn.stats["captions"]
    assert fn(0, caps[1]) == second and fn.stats["captions"] == n  # cached
    assert fn(0, "Nothing here.") == [] and fn.stats["span_not_in_caption"] == 1


def test_concept_fn_overlapping_spans_kept(tmp_path: Path, tiny_model_stub, cxr_card) -> None:
    cap = "Left pleural effusion."
    m = _manifest(tmp_path, [{"image": "a.png", "caption": cap, "concepts": "[[5, 21], [13, 21], [13, 21]]"}])
    got = make_concept_fn(m, cxr_card, tiny_model_stub)(0, cap)
    # both kept (the duplicate once), each its own concept; the inner one is a sub-range of the outer
    assert [_spelled(tiny_model_stub, cap, s) for s in got] == ["pleural effusion", "effusion"]
    assert got[0].start < got[1].start and got[0].end == got[1].end


def test_missing_ontology_falls_back_to_label_concepts(tmp_path: Path, tiny_model_stub) -> None:
    import dataclasses

    from medvlp.domains import load_card

    card = dataclasses.replace(load_card("pathology"), ontology="no_such_ontology")
    cap = "Adipocytes next to mucin; no debris."
    m = _manifest(tmp_path, [{"image": "a.png", "caption": cap}])
    fn = make_concept_fn(m, card, tiny_model_stub)
    with pytest.warns(UserWarning, match="no_such_ontology"):
        got = fn(0, cap)
    # synonyms from the card's label sets: adipocytes -> adipose tissue, mucin -> mucus; negation kept
    assert [(s.concept_id, s.negated) for s in got] == [
        ("path:adipose_tissue", False), ("path:mucus", False), ("path:debris", True)]


@pytest.mark.parametrize("cell, msg", [
    ("[[5, 99]]", "outside caption"),
    ("[[-1, 3]]", "outside caption"),
    ("[[4, 4]]", "outside caption"),
    ('[[1.5, 3]]', "two integers"),
    ("[42]", "neither a concept id"),
])
def test_concept_fn_bad_cells(tmp_path: Path, tiny_model_stub, cxr_card, cell: str, msg: str) -> None:
    m = _manifest(tmp_path, [{"image": "a.png", "caption": "Left pleural effusion.", "concepts": "[]"},
                             {"image": "b.png", "caption": "Left pleural effusion.", "concepts": cell}])
    with pytest.raises(DataError, match=f"row 1.*{msg}"):
        make_concept_fn(m, cxr_card, tiny_model_stub)


def test_concept_fn_truncation_and_hf_shift(tmp_path: Path, tiny_model_stub, cxr_card) -> None:
    long_cap = "Pleural effusion. " + "Stable appearance. " * 20 + "Pneumothorax."
    m = _manifest(tmp_path, [{"image": "a.png", "caption": long_cap,
                              "concepts": '["cxr:pleural_effusion", "cxr:pneumothorax"]'}])
    fn = make_concept_fn(m, cxr_card, tiny_model_stub)
    got = fn(0, long_cap)
    assert [s.concept_id for s in got] == ["cxr:pleural_effusion"]  # pneumothorax was truncated away
    assert fn.stats["span_without_tokens"] == 1 and fn.stats["id_not_in_caption"] == 0
    # CLS-pooled Hugging Face towers drop position 0 from their token features
    from open_clip.hf_model import ClsPooler, MeanPooler

    assert text_token_shift(SimpleNamespace(clip=SimpleNamespace(text=SimpleNamespace(pooler=ClsPooler())))) == -1
    assert text_token_shift(SimpleNamespace(clip=SimpleNamespace(text=SimpleNamespace(pooler=MeanPooler())))) == 0


# ------------------------------------------------------------------------------------------------
# End to end: a few steps of siglip+concept on the pathology demo corpus
# ------------------------------------------------------------------------------------------------
def test_pretrain_siglip_plus_concept(small_demo: Path, tmp_path: Path) -> None:
    from medvlp.config import TrainConfig
    from medvlp.train import pretrain

    out = tmp_path / "run"
    cfg = TrainConfig(domain="pathology", data=str(small_demo), objective="siglip+concept", steps=3, batch_size=16,
                      device="cpu", workers=0, eval=False, out=str(out), log_every=1, threads=2, warmup=0,
                      seed=0)
    result = pretrain(cfg, quiet=True)
    assert result.steps == 3
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 3
    for r in recs:
        assert all(math.isfinite(r[k]) for k in ("loss", "siglip", "concept"))
        assert r["concept"] > 0 and r["concept_count"] >= 16  # demo captions name 1-2 concepts each
        assert r["loss"] == pytest.approx(r["siglip"] + 0.5 * r["concept"], abs=1e-4)
    assert (out / "model" / "medvlp_heads.safetensors").is_file()  # the concept head is saved


def test_same_concept_in_another_caption_is_not_a_negative() -> None:
    """Images 0 and 1 both mention x:a: the loss matches the loop reference that skips those pairs."""
    raw_p, T, proj, t, b = _inputs(11, n=3)
    concepts = [[ConceptSpan("x:a", 0, 2)], [ConceptSpan("x:a", 2, 4), ConceptSpan("x:b", 4, 5)],
                [ConceptSpan("x:b", 1, 3, negated=True)]]
    P = F.normalize(raw_p, dim=-1)
    stats: dict = {}
    loss, m = concept_loss(P, T, concepts, project=lambda x: x @ proj, logit_scale=t, logit_bias=b, stats=stats)
    # masked: (0, x:a of 1), (1, x:a of 0), and (1, "no x:b" of 2): image 1 mentions x:b itself
    assert m == 4 and stats["concept_masked"] == 3.0
    ref = reference_loss(P, T, concepts, proj, t, b)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-9)
    unmasked, _ = concept_loss(P, T, concepts, project=lambda x: x @ proj, logit_scale=t, logit_bias=b,
                               mask_same=False)
    assert unmasked.item() == pytest.approx(reference_loss(P, T, concepts, proj, t, b, mask_same=False).item(),
                                            abs=1e-9)


@pytest.mark.parametrize("mask_same", [True, False])
def test_masked_pairs_get_exactly_zero_gradient(mask_same: bool) -> None:
    """Two images that both mention x:a: with masking, image 0's gradient does not depend on caption 1."""
    raw_p, T, proj, t, b = _inputs(13, n=2)
    concepts = [[ConceptSpan("x:a", 0, 2)], [ConceptSpan("x:a", 2, 4)]]

    def grad_p0(tokens):
        P = F.normalize(raw_p.detach(), dim=-1).requires_grad_(True)
        loss, _ = concept_loss(P, tokens, concepts, project=lambda x: x @ proj.detach(),
                               logit_scale=t.detach(), logit_bias=b.detach(), mask_same=mask_same)
        return torch.autograd.grad(loss, P)[0][0]

    other = T.detach().clone()
    other[1] = torch.randn_like(other[1])
    same = torch.equal(grad_p0(T.detach()), grad_p0(other))
    assert same is mask_same  # the only path from caption 1 to image 0 is the (masked) negative pair


def test_objective_reports_masked_count() -> None:
    raw_p, T, proj, t, b = _inputs(12, n=2)
    obj = ConceptObjective(project=lambda x: x @ proj)
    out = {"patch_embeddings": F.normalize(raw_p, dim=-1), "text_tokens": T, "concept_logit_scale": t,
           "concept_logit_bias": b}
    losses = obj(out, {"concepts": [[ConceptSpan("x:a", 0, 2)], [ConceptSpan("x:a", 1, 3)]]})
    assert losses["concept_masked"].item() == 2.0


def test_post_step_clamps_the_concept_logit_scale() -> None:
    head = SimpleNamespace(logit_scale=torch.nn.Parameter(torch.tensor(9.0)))
    obj = build_objective("siglip+concept")
    obj.post_step(SimpleNamespace(concept_head=head))
    assert head.logit_scale.item() == pytest.approx(math.log(100))
