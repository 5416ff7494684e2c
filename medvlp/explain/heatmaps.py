"""Patch heatmaps: where in the image a concept or label is seen, and overlays for display.

Two sources, chosen by what the model has:

* **concept head** (models trained with the ``concept`` objective): each patch token goes through the
  head to a unit vector ``p_k``; the concept embedding is built exactly as in training, as the
  projected mean of the text tower's token features over the concept's name inside a prompt (averaged
  over the card's templates); the map is ``sigmoid(t_c p_k . c + b_c)``, the head's own calibrated
  patch score.
* **patch-text similarity** (any CLIP-style model): the patch tokens are mapped into the joint space
  with the vision tower's projection (MaskCLIP's observation that the projection applies per token),
  and the map is the softmax over labels of ``t * cos(patch, label)``; for a single concept it is the
  cosine against the concept's prompt embedding, min-max scaled.

Maps are on the model's input grid (``image_size / patch_size`` patches per side) and bilinearly
upsampled to the input size.

Example:
    >>> import medvlp                                                     # doctest: +SKIP
    >>> model = medvlp.load("runs/pathology-demo")                        # doctest: +SKIP
    >>> maps = patch_heatmaps(model, "tile.png", ["mucus", "adipose tissue"])   # doctest: +SKIP
    >>> maps["mucus"].shape                                               # doctest: +SKIP
    (64, 64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medvlp.errors import ModelError

SOURCES = ("auto", "concept_head", "patch_text")


def patch_grid(net: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Patch tokens (B, g*g, W) without a class token, and the grid side ``g``."""
    n = tokens.shape[1]
    g = int(net.image_size // net.patch_size)
    if n == g * g + 1:  # a tower that returns the class token with the patches
        tokens = tokens[:, 1:]
    elif n != g * g:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ModelError(f"cannot arrange {n} patch tokens on a square grid (image {net.image_size}, "
                             f"patch {net.patch_size})")
        g = side
    return tokens, g


def project_patch_tokens(net: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Vision patch tokens (B, N, W) -> unit joint-space vectors (B, N, D) via the visual projection."""
    visual = net.clip.visual
    if getattr(visual, "final_ln_after_pool", False) and hasattr(visual, "ln_post"):
        tokens = visual.ln_post(tokens)  # this tower normalises after pooling, so tokens are raw
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        out = tokens @ proj
    elif isinstance(proj, torch.nn.Module):
        out = proj(tokens)
    elif isinstance(getattr(visual, "head", None), torch.nn.Module):  # timm towers: head = projection
        out = visual.head(tokens)
    else:
        out = tokens
    if out.shape[-1] != net.embed_dim:
        raise ModelError(f"the vision tower's projection gives width {out.shape[-1]}, not the joint width "
                         f"{net.embed_dim}; patch-text heatmaps need a linear projection")
    return F.normalize(out, dim=-1)


def _upsample(grid_maps: torch.Tensor, size: int) -> np.ndarray:
    """(K, g, g) -> (K, size, size) float32, bilinear."""
    up = F.interpolate(grid_maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    return up[:, 0].numpy().astype(np.float32)


@torch.no_grad()
def span_concept_embeddings(net: Any, names_per_concept: Sequence[Sequence[str]], templates: Sequence[str]) -> torch.Tensor:
    """Concept embeddings (K, D) as the concept objective builds them: projected span means, unit norm.

    For each name and template, the prompt is tokenised, the tokens spelling the name are found
    (:class:`medvlp.models.spans.TokenSpanMapper`), their text-tower features are averaged, projected
    with the text projection and normalised; the concept's embedding is the renormalised mean.
    """
    import hashlib

    from medvlp.models.spans import TokenSpanMapper
    from medvlp.objectives.concept import text_token_shift

    # Cached on the model per (names, templates): the app re-explains many images with one concept list.
    cache: dict[str, torch.Tensor] = net.__dict__.setdefault("_medvlp_span_cache", {})
    key = hashlib.sha256(repr((list(map(list, names_per_concept)), list(templates))).encode()).hexdigest()
    if key in cache:
        return cache[key]
    mapper = TokenSpanMapper(net.tokenizer)
    shift = text_token_shift(net)
    dev = next(net.parameters()).device
    prompts: list[str] = []
    spans: list[tuple[int, int]] = []
    owner: list[int] = []
    for k, names in enumerate(names_per_concept):
        for name in names:
            for t in templates:
                text = t.format(name)
                start = t.index("{}")
                span = mapper.token_spans(text, [(start, start + len(name))])[0]
                if span is None:
                    continue
                prompts.append(text)
                spans.append((span[0] + shift, span[1] + shift))
                owner.append(k)
    if not prompts:
        raise ModelError("no concept name survived tokenisation (all cut off by the context length)")
    _, tok = net.encode_text(net.tokenize(prompts).to(dev), return_tokens=True)
    vecs = torch.stack([tok[i, a:b].mean(0) for i, (a, b) in enumerate(spans)])
    emb = F.normalize(net.project_text_tokens(vecs).float(), dim=-1).cpu()
    owner_t = torch.tensor(owner)
    out = torch.zeros(len(names_per_concept), emb.shape[-1])
    for k in range(len(names_per_concept)):
        sel = emb[owner_t == k]
        if len(sel):
            out[k] = F.normalize(sel.mean(0), dim=-1)
    cache[key] = out
    return out


@torch.no_grad()
def heatmaps_from_pixels(net: Any, images: torch.Tensor, names_per_key: Sequence[Sequence[str]],
                         templates: Sequence[str], *, source: str = "auto",
                         text_embeddings: torch.Tensor | None = None) -> tuple[np.ndarray, str]:
    """Heatmaps (B, K, S, S) for normalised input images (B, 3, S, S) and K concepts/labels.

    Args:
        net: the :class:`medvlp.models.MedVLP`.
        images: normalised pixels, as the vision tower takes them.
        names_per_key: for each of the K keys, the names to prompt with.
        templates: prompt templates (each with one ``{}``).
        source: ``"concept_head"``, ``"patch_text"`` or ``"auto"`` (the head when the model has one).
        text_embeddings: optional (K, D) unit class embeddings for ``patch_text`` (e.g. a zero-shot
            classifier's weights), instead of prompting ``names_per_key``.

    Returns:
        The maps and the source used. ``concept_head`` maps are patch probabilities in [0, 1];
        ``patch_text`` maps are a softmax over the K keys (K > 1) or min-max scaled cosines (K = 1).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    if source == "auto":
        source = "concept_head" if getattr(net, "concept_head", None) is not None else "patch_text"
    if source == "concept_head" and getattr(net, "concept_head", None) is None:
        raise ModelError("this model has no concept head (train with objective 'siglip+concept' or 'concept'); "
                         "use source='patch_text'")
    _, tokens = net.encode_image(images, return_tokens=True)
    tokens, g = patch_grid(net, tokens)
    size = int(images.shape[-1])
    if source == "concept_head":
        head = net.concept_head
        patches = head(tokens).float().cpu()  # (B, N, D) unit
        concepts = span_concept_embeddings(net, names_per_key, templates)
        logits = head.logit_scale.exp().float().cpu() * patches @ concepts.T + head.logit_bias.float().cpu()
        maps = torch.sigmoid(logits)  # (B, N, K)
    else:
        patches = project_patch_tokens(net, tokens).float().cpu()
        if text_embeddings is None:
            from medvlp.eval.zeroshot import class_embeddings

            text_embeddings = class_embeddings(net, [[t.format(n) for n in names for t in templates]
                                                      for names in names_per_key])
        cos = patches @ text_embeddings.float().T  # (B, N, K)
        if cos.shape[-1] > 1:
            maps = torch.softmax(float(net.clip.logit_scale.detach().exp()) * cos, dim=-1)
        else:
            lo = cos.amin(dim=1, keepdim=True)
            hi = cos.amax(dim=1, keepdim=True)
            maps = (cos - lo) / (hi - lo).clamp_min(1e-8)
    b, _, k = maps.shape
    grid = maps.permute(0, 2, 1).reshape(b * k, g, g)
    return _upsample(grid, size).reshape(b, k, size, size), source


def patch_heatmaps(model: Any, image: Any, keys: Sequence[str], *, source: str = "auto") -> dict[str, np.ndarray]:
    """Heatmaps (S x S, model input size) of labels or concepts for one image and a loaded model.

    Each key is a label of the card (prompted with its synonyms), a concept id or name of the card's
    ontology, or free text.
    """
    from medvlp.explain.concepts import resolve_concepts

    names = [list(s.names) for s in resolve_concepts(model.card, keys)]
    px = model._pixels(image)[None].to(model.device)
    maps, _ = heatmaps_from_pixels(model.net, model._norm.to(model.device)(px), names,
                                   list(model.card.prompts.templates), source=source)
    return {k: maps[0, i] for i, k in enumerate(keys)}


# --------------------------------------------------------------------------------------------------
# Display and scoring helpers
# --------------------------------------------------------------------------------------------------
def colorize(heatmap: np.ndarray, cmap: str = "jet", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """A (H, W) map -> uint8 RGB (H, W, 3) through a matplotlib colour map (NaN -> black)."""
    import matplotlib

    h = np.asarray(heatmap, dtype=np.float64)
    finite = np.isfinite(h)
    lo = float(np.nanmin(h)) if vmin is None and finite.any() else (vmin or 0.0)
    hi = float(np.nanmax(h)) if vmax is None and finite.any() else (vmax if vmax is not None else 1.0)
    norm = np.where(finite, (h - lo) / max(hi - lo, 1e-12), 0.0).clip(0, 1)
    rgb = matplotlib.colormaps[cmap](norm)[..., :3]
    rgb[~finite] = 0.0
    return (rgb * 255).round().astype(np.uint8)


def overlay(image: Any, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet",
            vmin: float | None = None, vmax: float | None = None) -> Image.Image:
    """Blend a colourised heatmap over an image (resized to the image); ``alpha`` is the map's opacity.

    NaN pixels of the map (e.g. slide regions without tiles) show the image unchanged.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    base = base.convert("RGB")
    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape != (base.height, base.width):
        h = np.asarray(Image.fromarray(h, mode="F").resize(base.size, Image.Resampling.BILINEAR), dtype=np.float32)
    colour = colorize(h, cmap, vmin, vmax).astype(np.float32)
    a = np.where(np.isfinite(h), alpha, 0.0)[..., None]
    out = np.asarray(base, dtype=np.float32) * (1 - a) + colour * a
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum (the first one on ties; NaN ignored)."""
    h = np.where(np.isfinite(heatmap), heatmap, -np.inf)
    r, c = np.unravel_index(int(np.argmax(h)), h.shape)
    return int(r), int(c)


def pointing_hit(heatmap: np.ndarray, region: np.ndarray) -> bool:
    """Pointing game (Zhang et al. 2016): does the map's peak fall inside the boolean ``region``?

    The region is resized (nearest) to the map's shape when they differ.
    """
    reg = np.asarray(region, dtype=bool)
    if reg.shape != heatmap.shape:
        reg = np.asarray(Image.fromarray(reg.astype(np.uint8) * 255).resize(
            (heatmap.shape[1], heatmap.shape[0]), Image.Resampling.NEAREST)) > 127
    r, c = peak(heatmap)
    return bool(reg[r, c])
