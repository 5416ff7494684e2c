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
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medvlp.errors import ConfigError
from medvlp.objectives.base import Batching, DataNeeds, Objective
from medvlp.objectives.clip import ClipObjective
from medvlp.objectives.siglip import SigLipObjective

if TYPE_CHECKING:
    from medvlp.config import TrainConfig
    from medvlp.data.manifest import Manifest
    from medvlp.domains import DomainCard

_REGISTRY: dict[str, Callable[..., nn.Module]] = {"clip": ClipObjective, "siglip": SigLipObjective}
# (log logit scale, logit bias) the model is built with, by objective: a view of each class's ``logit_init``.
INIT: dict[str, tuple[float, float | None]] = {}
DEFAULT_INIT = (math.log(1 / 0.07), None)  # CLIP's, for combinations where no part sets one


def register(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``name`` usable in objective specs; ``factory(**options)`` builds the objective."""
    _REGISTRY[name] = factory
    init = getattr(factory, "logit_init", None)
    if init is not None:
        INIT[name] = init


for _name, _cls in list(_REGISTRY.items()):
    register(_name, _cls)


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


def _attr(part: object, name: str, default: Any) -> Any:  # a part, or a registered class
    return getattr(part, name, default)


def _call(part: object, hook: str, *args: Any) -> Any:
    """``part.hook(*args)``, or None for a part without that hook (a plain module registered as an objective)."""
    fn = getattr(part, hook, None)
    return fn(*args) if fn is not None else None


class CombinedObjective(nn.Module):
    """Weighted sum of named objectives. ``forward`` returns every part and ``loss`` (the total).

    It answers for the whole combination what :class:`~medvlp.objectives.base.Objective` declares per
    part (logit init, model needs, data needs, binding, post-step hooks), so the training loop deals with
    this one object only.
    """

    def __init__(self, parts: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.weights = weights

    @property
    def needs_tokens(self) -> bool:
        return any(_attr(p, "needs_tokens", False) for p in self.parts.values())

    @property
    def needs_concept_head(self) -> bool:
        return any(_attr(p, "needs_concept_head", False) for p in self.parts.values())

    @property
    def primary(self) -> str:
        """The part that decides the logit scale/bias init (highest ``init_rank`` among those with one)."""
        ranked = [(int(_attr(p, "init_rank", 0)), -i, name) for i, (name, p) in enumerate(self.parts.items())
                  if _attr(p, "logit_init", None) is not None]
        return max(ranked)[2] if ranked else next(iter(self.parts))

    @property
    def logit_init(self) -> tuple[float, float | None]:
        """``(log logit scale, logit bias)`` to build the model with."""
        return _attr(self.parts[self.primary], "logit_init", None) or DEFAULT_INIT

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`medvlp.models.create_model` (logit init, heads to build)."""
        log_scale, bias = self.logit_init
        return {"init_logit_scale": log_scale, "init_logit_bias": bias, "concept_head": self.needs_concept_head}

    def row_parts(self) -> list[str]:
        """Parts that need per-row manifest fields and cannot build them from streamed shards."""
        return [name for name, p in self.parts.items()
                if _attr(p, "needs_rows", False) and not _attr(p, "streams_rows", False)]

    def check_streamable(self) -> None:
        """Raise a ConfigError when a part cannot train from streamed shards."""
        rows = self.row_parts()
        if rows:
            ok = [n for n in available() if not _attr(_REGISTRY[n], "needs_rows", False)
                  or _attr(_REGISTRY[n], "streams_rows", False)]
            raise ConfigError(f"objective {', '.join(rows)} needs a manifest (per-row fields); streamed "
                              f"shards support {', '.join(ok)}: pass --data MANIFEST")

    def bind(self, model: nn.Module) -> CombinedObjective:
        for part in self.parts.values():
            hook = getattr(part, "bind", None)
            if hook is not None:
                hook(model)
        return self

    def data_needs(self, manifest: Manifest, card: DomainCard | None, model: nn.Module,
                   options: dict[str, Any]) -> DataNeeds:
        """Every part's :class:`DataNeeds`, merged (two caption functions or two samplers are refused)."""
        return self._merge({name: _call(p, "data_needs", manifest, card, model, options)
                            for name, p in self.parts.items()})

    def stream_needs(self, manifest: Manifest, vocabulary: dict[str, list[str]] | None, card: DomainCard | None,
                     model: nn.Module, options: dict[str, Any]) -> DataNeeds:
        """Every part's needs for a streamed run (:meth:`Objective.stream_needs`), merged."""
        self.check_streamable()
        return self._merge({name: (_call(p, "stream_needs", manifest, vocabulary, card, model, options)
                                   if hasattr(p, "stream_needs")  # a plain module has neither hook
                                   else _call(p, "data_needs", manifest, card, model, options))
                            for name, p in self.parts.items()})

    def _merge(self, parts: dict[str, DataNeeds | None]) -> DataNeeds:
        from medvlp.data.samplers import MetaFields, RowFields

        merged = DataNeeds()
        rows: list[Callable[[int], dict[str, Any]]] = []
        metas: list[Callable[[dict[str, Any], int], dict[str, Any]]] = []
        infos: list[str] = []
        for name, needs in parts.items():
            if needs is None:
                continue
            for key in ("caption_fn", "concept_fn", "batching"):
                value = getattr(needs, key)
                if value is not None:
                    if getattr(merged, key) is not None:
                        raise ConfigError(f"objective {name}: another part of '{'+'.join(self.parts)}' already "
                                          f"sets the {key.replace('_', ' ')}; combine objectives that do not")
                    setattr(merged, key, value)
            if needs.row_fields is not None:
                rows.append(needs.row_fields)
            if needs.meta_fields is not None:
                metas.append(needs.meta_fields)
            if needs.info:
                infos.append(f"{name}: {needs.info}")
        merged.row_fields = RowFields(rows) if rows else None
        merged.meta_fields = MetaFields(metas) if metas else None
        merged.info = "; ".join(infos)
        return merged

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
        assert total is not None  # parse_objective gives at least one part
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
        default = float(_attr(_REGISTRY[name], "default_weight", 1.0))
        weights[name] = float(m.group(1)) if m.group(1) else default
    for name in weights:
        need = tuple(_attr(_REGISTRY[name], "requires_any", ()))
        if need and not set(need) & set(weights):
            raise ConfigError(
                f"objective '{spec}': {name} needs an image-text objective to be added to (one of "
                f"{', '.join(need)}: it takes the logit scale/bias init from it); write e.g. "
                + " or ".join(f"'{n}+{name}'" for n in need[:2])
            )
    return weights


def build_objective(spec: str, **kwargs: Any) -> CombinedObjective:
    """Build the objectives of ``spec``; ``kwargs[name]`` is a dict of options for that part."""
    weights = parse_objective(spec)
    parts = {name: _REGISTRY[name](**kwargs.get(name, {})) for name in weights}
    return CombinedObjective(parts, weights)


def objective_for(cfg: TrainConfig) -> CombinedObjective:
    """The objective a training config asks for: its spec, per-part options from ``cfg.extra`` (e.g.
    ``{"concept": {"negated": "drop"}}``) and ``cfg.concept_loss_weight`` where the spec gives none."""
    _load_optional()
    names = parse_objective(cfg.objective)
    options = {n: dict(cfg.extra.get(n, {})) for n in names if n in ("concept",)}
    objective = build_objective(cfg.objective, **options)
    explicit = re.search(r"\*\s*concept\b", cfg.objective)
    if "concept" in objective.weights and not explicit:
        objective.weights["concept"] = float(cfg.concept_loss_weight)
    return objective


__all__ = ["Objective", "DataNeeds", "Batching", "ClipObjective", "SigLipObjective", "CombinedObjective",
           "build_objective", "objective_for", "parse_objective", "register", "available", "INIT"]
