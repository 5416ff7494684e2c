"""Model factory: every offline config trains (finite loss, every trainable parameter gets a gradient)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medvlp.errors import ModelError
from medvlp.models import create_model, get_spec, list_models, load_saved
from medvlp.objectives import build_objective

OFFLINE = [name for name in list_models() if get_spec(name).offline]


def test_registry_has_the_documented_configs() -> None:
    assert {"tiny", "tiny-minilm", "biomedclip-vit-b16"} <= set(list_models())
    assert {"tiny", "tiny-minilm"} <= set(OFFLINE)


@pytest.mark.parametrize("name", OFFLINE)
@pytest.mark.parametrize("objective", ["clip", "siglip"])
def test_every_offline_model_trains(name: str, objective: str) -> None:
    torch.manual_seed(0)
    log_scale, bias = (2.3, -10.0) if objective == "siglip" else (2.6, None)
    model = create_model(name, init_logit_scale=log_scale, init_logit_bias=bias, seed=0)
    model.lock(image=False, text=False)
    size = model.image_size
    images = torch.randn(4, 3, size, size)
    texts = model.tokenizer(["adipose tissue", "lymphocytes in a lymph node", "mucus", "no effusion"])
    out = model(images, texts, return_tokens=True)
    assert out["patch_tokens"].ndim == 3 and out["patch_tokens"].shape[0] == 4
    assert out["patch_tokens"].shape[1] == (size // model.patch_size) ** 2
    loss = build_objective(objective)(out, {})["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad


def test_minilm_tower_is_pretrained_and_lockable() -> None:
    model = create_model("tiny-minilm")
    assert model.tokenizer.is_hf
    ids = model.tokenizer(["pleural effusion"])[0].tolist()
    # a real vocabulary: the words are not mapped to [UNK] (id 100 in BERT vocabularies)
    assert ids.count(100) == 0 and len([i for i in ids if i != model.tokenizer.pad_id]) >= 3
    model.lock(image=False, text=True)
    text_params = [p for n, p in model.named_parameters() if n.startswith("clip.text.transformer")]
    assert text_params and not any(p.requires_grad for p in text_params)
    # related phrases sit closer than unrelated ones: the tower carries real pretrained knowledge
    with torch.no_grad():
        e = model.encode_text(model.tokenizer(["a cat sits on a mat", "a kitten rests on a rug",
                                               "quarterly tax report"]), normalize=True)
    assert (e[0] @ e[1]) > (e[0] @ e[2])


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="unknown model 'vit-huge-nope'"):
        create_model("vit-huge-nope")


def test_download_needing_model_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="download"):
        create_model("biomedclip-vit-b16")


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    model = create_model("tiny", seed=1, concept_head=True)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "open_clip_config.json").is_file()
    again = load_saved(tmp_path / "m")
    images = torch.rand(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), again.encode_image(images))
    assert again.concept_head is not None
