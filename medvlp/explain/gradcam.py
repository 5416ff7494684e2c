"""Grad-CAM on the vision tower, through the ``grad-cam`` package (pytorch-grad-cam).

The classifier whose gradient is taken is the zero-shot head: ``logits = t * cos(image, label)``
over the label list, so the map answers "which patches raise this label's logit". For ViT towers the
target layer is the output of the second-to-last transformer block (the tokens the last block
attends over; see :func:`target_layer`), and a reshape transform drops the class token and lays the patch tokens out on
their square grid. Needs the ``app`` extra (``pip install 'medvlp[app]'``).

Example:
    >>> import medvlp                                                     # doctest: +SKIP
    >>> model = medvlp.load("runs/pathology-demo")                        # doctest: +SKIP
    >>> cams = gradcam(model, "tile.png", labels=["mucus", "adipose tissue"])   # doctest: +SKIP
    >>> cams["mucus"].shape, float(cams["mucus"].max()) <= 1.0            # doctest: +SKIP
    ((64, 64), True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medvlp.errors import ConfigError, ModelError


class ZeroShotHead(nn.Module):
    """Image -> zero-shot logits ``t * cos(image, class embedding)``: a plain classifier for Grad-CAM."""

    def __init__(self, net: Any, class_embeddings: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("weights", class_embeddings.float())
        self.scale = float(net.clip.logit_scale.detach().exp())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.net.encode_image(images, normalize=True)
        return self.scale * feats.float() @ self.weights.to(feats.device).T


def target_layer(net: Any) -> nn.Module:
    """The layer Grad-CAM reads: the second-to-last ViT block (a one-block tower: its first norm)."""
    visual = net.clip.visual
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is not None and len(blocks) > 1:
        # The output of the second-to-last block, i.e. the tokens the last block attends over. With
        # class-token pooling the last block's *output* patch tokens get no gradient at all, and its
        # ln_1 (pytorch-grad-cam's ViT default) gave all-negative maps on medvlp's models (zero after ReLU).
        return blocks[-2]
    if blocks is not None and len(blocks):
        return getattr(blocks[-1], "ln_1", blocks[-1])
    trunk = getattr(visual, "trunk", None)  # timm towers
    if trunk is not None and hasattr(trunk, "blocks"):
        last = trunk.blocks[-1]
        return getattr(last, "norm1", last)
    raise ModelError(f"no Grad-CAM target layer found in the vision tower {type(visual).__name__}")


def vit_reshape_transform(grid: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, T, C) tokens -> (B, C, grid, grid) activations, dropping leading class/register tokens."""

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim != 3:
            return tensor  # already a feature map (convolutional towers)
        x = tensor
        if x.shape[1] != grid * grid and x.shape[0] == grid * grid + 1:  # sequence-first layout
            x = x.transpose(0, 1)
        extra = x.shape[1] - grid * grid
        if extra < 0:
            raise ModelError(f"{x.shape[1]} tokens do not fill a {grid}x{grid} patch grid")
        x = x[:, extra:]
        return x.reshape(x.shape[0], grid, grid, x.shape[2]).permute(0, 3, 1, 2)

    return reshape


def gradcam_from_pixels(net: Any, images: torch.Tensor, class_embeddings: torch.Tensor,
                        targets: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (B, K, S, S) in [0, 1] for normalised images and K target class indices.

    Raises:
        ConfigError: the ``grad-cam`` package is not installed.
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise ConfigError("Grad-CAM needs the 'grad-cam' package: pip install 'medvlp[app]'") from e
    head = ZeroShotHead(net, class_embeddings).eval()
    grid = int(net.image_size // net.patch_size)
    # Gradients must reach the target layer even when the tower was frozen (LiT) at training time.
    flags = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(True)
    try:
        out = np.zeros((images.shape[0], len(targets), images.shape[-2], images.shape[-1]), dtype=np.float32)
        with GradCAM(model=head, target_layers=[target_layer(net)],
                     reshape_transform=vit_reshape_transform(grid)) as cam:
            for j, t in enumerate(targets):
                maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t))] * images.shape[0])
                out[:, j] = maps
    finally:
        for p, f in zip(net.parameters(), flags, strict=True):
            p.requires_grad_(f)
    return out


def gradcam(model: Any, image: Any, labels: Sequence[str] | None = None,
            targets: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Grad-CAM maps of a loaded model for one image: label -> (S, S) in [0, 1].

    Args:
        model: a :class:`medvlp.api.Model`.
        image: path, PIL image or array.
        labels: the zero-shot label list (default: the card's default label set).
        targets: labels to explain (default: all of ``labels``).
    """
    clf = model.classifier(labels, multilabel=False)
    want = list(targets) if targets is not None else clf.labels
    index = {lab: i for i, lab in enumerate(clf.labels)}
    missing = [t for t in want if t not in index]
    if missing:
        raise ConfigError(f"Grad-CAM targets {missing} are not in the label list {clf.labels}")
    px = model._norm.to(model.device)(model._pixels(image)[None].to(model.device))
    maps = gradcam_from_pixels(model.net, px, clf.weights, [index[t] for t in want])
    return {t: maps[0, j] for j, t in enumerate(want)}
