"""Objectives: one registry; combinations by weights, e.g. ``siglip+0.5*concept``.

Example:
    >>> from medvlp.objectives import build_objective
    >>> obj = build_objective("siglip+concept")
    >>> obj.weights
    {'siglip': 1.0, 'concept': 0.5}
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
from collections.abc import Callable

import torch
from torch import nn

from medvlp.errors import ConfigError
from medvlp.objectives.clip import ClipObjective
from medvlp.objectives.siglip import SigLipObjective

_REGISTRY: dict[str, Callable[..., nn.Module]] = {"clip": ClipObjective, "siglip": SigLipObjective}
DEFAULT_WEIGHTS = {"concept": 0.5}
# (log logit scale, logit bias) the model is built with, by contrastive objective.
INIT = {"clip": (math.log(1 / 0.07), None), "siglip": (math.log(10.0), -10.0), "keep": (math.log(1 / 0.04), None)}


def register(name: str, factory: Callable[..., nn.Module]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    _load_optional()
    return sorted(_REGISTRY)


_NOT_OBJECTIVES = {"base", "distributed"}
_loaded = False


def _load_optional() -> None:
    """Import every module of this package once; each objective module registers itself on import.

    A new built-in objective is one file (no import list to edit). An ImportError inside such a module
    propagates: a broken objective must fail with its own error, not as "unknown objective".
    """
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_OBJECTIVES and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


class CombinedObjective(nn.Module):
    """Weighted sum of named objectives. ``forward`` returns every part and ``loss`` (the total)."""

    def __init__(self, parts: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.weights = weights

    @property
    def needs_tokens(self) -> bool:
        return any(getattr(p, "needs_tokens", False) for p in self.parts.values())

    @property
    def primary(self) -> str:
        """The image-text objective that decides the logit scale/bias init."""
        for name in ("siglip", "clip", "keep"):
            if name in self.parts:
                return name
        return next(iter(self.parts))

    @torch.no_grad()
    def post_step(self, model: nn.Module) -> None:
        """After each optimizer step: let every part clamp the scales it owns (``part.post_step(model)``)."""
        for part in self.parts.values():
            hook = getattr(part, "post_step", None)
            if hook is not None:
                hook(model)

    def forward(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        total = None
        for name, part in self.parts.items():
            for key, value in part(out, batch).items():
                losses[key] = value
            w = self.weights[name]
            term = w * losses[name]
            total = term if total is None else total + term
        losses["loss"] = total
        return losses


def parse_objective(spec: str) -> dict[str, float]:
    """Parse ``"siglip+0.5*concept"`` / ``"clip"`` / ``"siglip+concept"`` into name -> weight."""
    _load_optional()
    weights: dict[str, float] = {}
    for term in spec.replace(" ", "").split("+"):
        m = re.fullmatch(r"(?:(\d*\.?\d+)\*)?([a-z_]+)", term)
        if not m or m.group(2) not in _REGISTRY:
            raise ConfigError(
                f"unknown objective term '{term}' in '{spec}'; known: {', '.join(sorted(_REGISTRY))} "
                "(combine with '+', weight with '0.5*concept')"
            )
        name = m.group(2)
        weights[name] = float(m.group(1)) if m.group(1) else DEFAULT_WEIGHTS.get(name, 1.0)
    if "concept" in weights and not ({"clip", "siglip"} & set(weights)):
        raise ConfigError(
            f"objective '{spec}': the concept loss needs an image-text objective to be added to (it sets the "
            "logit scale/bias init); write e.g. 'siglip+concept' or 'clip+0.5*concept'"
        )
    return weights


def build_objective(spec: str, **kwargs) -> CombinedObjective:
    weights = parse_objective(spec)
    parts = {name: _REGISTRY[name](**kwargs.get(name, {})) for name in weights}
    return CombinedObjective(parts, weights)


__all__ = ["ClipObjective", "SigLipObjective", "CombinedObjective", "build_objective", "parse_objective",
           "register", "available", "INIT"]
