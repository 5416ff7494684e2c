"""CLIP objective: symmetric InfoNCE over ``t * x_i . y_j``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medvlp.objectives.base import Objective
from medvlp.objectives.distributed import gather_with_grad, world_info


class ClipObjective(Objective):
    """Symmetric cross-entropy over image-text logits, local rows against globally gathered columns.

    Each rank scores its own images against every text in the global batch (and vice versa), so the
    memory is linear in the global batch; the mean over ranks equals the single-process loss.
    """

    name = "clip"
    logit_init = (math.log(1 / 0.07), None)
    init_rank = 2

    def forward(self, out: dict, batch: dict | None = None) -> dict[str, torch.Tensor]:
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        rank, _ = world_info()
        all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
        logits_per_image = scale * img @ all_txt.T
        logits_per_text = scale * txt @ all_img.T
        labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return {"clip": loss}
