"""clip and siglip equal open_clip's ClipLoss / SigLipLoss on the same inputs (single process)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from medvlp.errors import ConfigError
from medvlp.objectives import build_objective, parse_objective


def _features(n: int = 16, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    return img, txt


@pytest.mark.parametrize("seed", [0, 1])
def test_clip_equals_open_clip(seed: int) -> None:
    img, txt = _features(seed=seed)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    ours = build_objective("clip")({"image_features": img, "text_features": txt, "logit_scale": scale}, {})
    g_ours = torch.autograd.grad(ours["loss"], (img, txt))
    ref = ClipLoss()(img, txt, scale)
    g_ref = torch.autograd.grad(ref, (img, txt))
    assert ours["clip"].item() == pytest.approx(ref.item(), abs=1e-5)
    assert ours["loss"].item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_siglip_equals_open_clip(seed: int) -> None:
    img, txt = _features(seed=seed)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    out = {"image_features": img, "text_features": txt, "logit_scale": scale, "logit_bias": bias}
    ours = build_objective("siglip")(out, {})
    g_ours = torch.autograd.grad(ours["loss"], (img, txt))
    ref = SigLipLoss()(img, txt, scale, bias)
    g_ref = torch.autograd.grad(ref, (img, txt))
    assert ours["siglip"].item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_clip_perfect_alignment_is_near_zero() -> None:
    x = F.normalize(torch.eye(8, 16), dim=-1)
    loss = build_objective("clip")({"image_features": x, "text_features": x, "logit_scale": torch.tensor(100.0)}, {})
    assert loss["loss"].item() < 1e-6
    # and the uniform case is log(N)
    z = torch.zeros(8, 16)
    z[:, 0] = 1
    loss = build_objective("clip")({"image_features": z, "text_features": z, "logit_scale": torch.tensor(1.0)}, {})
    assert loss["loss"].item() == pytest.approx(math.log(8), abs=1e-6)


def test_objective_parsing() -> None:
    assert parse_objective("clip") == {"clip": 1.0}
    assert parse_objective("siglip + 0.25*clip") == {"siglip": 1.0, "clip": 0.25}
    with pytest.raises(ConfigError, match="unknown objective term 'clipp'"):
        parse_objective("clipp")
