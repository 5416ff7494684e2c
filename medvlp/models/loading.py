"""One entry point for every kind of model: a registered config, a run or model folder, ``local-dir:``
or ``hf-hub:`` (:func:`create_model`). It sits above the factory (configs, the model class, saved folders)
and the zoo (public models), which do not import each other's private parts.

Example:
    >>> from medvlp.models import create_model
    >>> model = create_model("tiny")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from medvlp.models.factory import MedVLP, Tokenizer, build_clip, get_spec
from medvlp.models.zoo import load_model


def create_model(
    name: str = "tiny",
    *,
    device: str | torch.device = "cpu",
    init_logit_scale: float | None = None,
    init_logit_bias: float | None = None,
    concept_head: bool = False,
    seed: int | None = None,
) -> MedVLP:
    """Build a model by registered name (random init except pretrained text towers).

    Args:
        name: a name from :func:`list_models`, a run folder, ``local-dir:PATH`` or ``hf-hub:ID``
            (those three load weights; see :func:`load_model`).
        device: where to put it.
        init_logit_scale: log of the initial logit scale (objective-dependent; SigLIP uses log 10).
        init_logit_bias: initial logit bias (SigLIP uses -10); None for no bias.
        concept_head: attach the patch->concept head.
        seed: seed the initialisation, so two processes build identical weights.

    Raises:
        ModelError: unknown name, or the model needs a download while offline.
    """
    if name.startswith(("hf-hub:", "local-dir:")) or Path(name).is_dir():
        model = load_model(name, device=device)
        if concept_head:
            model.add_concept_head()
        return model
    spec = get_spec(name)
    if seed is not None:
        torch.manual_seed(seed)
    clip = build_clip(spec, init_logit_scale, init_logit_bias)
    model = MedVLP(spec, clip, Tokenizer(spec.model_cfg["text_cfg"]))
    if concept_head:
        model.add_concept_head()
    return model.to(device)
