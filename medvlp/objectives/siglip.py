"""SigLIP objective: pairwise sigmoid loss ``-(1/N) sum_ij log sigmoid(z_ij (t x_i.y_j + b))``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medvlp.objectives.base import Objective
from medvlp.objectives.distributed import gather_with_grad, world_info


class SigLipObjective(Objective):
    """Sigmoid image-text loss; each rank scores its images against all gathered texts.

    The loss is normalised by the number of images, as in the SigLIP paper and open_clip.
    Models trained with it are built with ``t = 10`` and ``b = -10`` (see :data:`INIT`).
    """

    name = "siglip"
    logit_init = (math.log(10.0), -10.0)
    init_rank = 3

    def forward(self, out: dict, batch: dict | None = None) -> dict[str, torch.Tensor]:
        img, txt, scale, bias = out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"]
        if bias is None:
            raise ValueError("the siglip objective needs a model with a logit bias (build it with init_logit_bias)")
        rank, _ = world_info()
        all_txt = gather_with_grad(txt)
        logits = scale * img @ all_txt.T + bias
        n = img.shape[0]
        z = -torch.ones_like(logits)
        idx = torch.arange(n, device=img.device)
        z[idx, idx + rank * n] = 1.0
        loss = -F.logsigmoid(z * logits).sum() / n
        return {"siglip": loss}
