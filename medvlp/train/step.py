"""One optimisation step's forward and backward, with gradient accumulation that equals the big batch.

With ``accum = k > 1`` the batch is split into k micro-batches and the gradient is computed the
GradCache way (Gao et al. 2021; open_clip's accumulation caches features the same way):

1. every micro-batch is encoded without gradient and its features are cached;
2. the loss is computed once on the whole batch of cached features (made leaves that require
   gradient) plus the model's live logit terms (:meth:`MedVLP.logit_terms`): one backward gives the
   gradient of the loss with respect to every feature, and the full gradient of every parameter the
   loss uses directly (logit scales and biases, the text projection an objective applies to cached
   token features): once, not k times;
3. each micro-batch is encoded again with gradient and ``sum(features * d loss / d features)`` is
   back-propagated through the towers.

Random layers (patch dropout) draw the same numbers in steps 1 and 3 (the RNG state is replayed), so the
gradients equal those of one batch of k times the size, up to float rounding. Under DDP the last
micro-batch's backward is the synchronised one, and every trainable parameter takes part in it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from medvlp.data.dataset import Normalizer

if TYPE_CHECKING:
    from medvlp.models import MedVLP

# Per-sample outputs of the model (cached and concatenated across micro-batches); the other outputs
# (logit scale/bias) come live from ``logit_terms``.
BATCH_KEYS = ("image_features", "text_features", "patch_tokens", "text_tokens", "patch_embeddings")


class NoScaler:
    """The GradScaler interface for fp32/bf16 (no loss scaling)."""

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def unscale_(self, opt: Any) -> None:
        pass

    def step(self, opt: torch.optim.Optimizer) -> None:
        opt.step()

    def update(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


def _floats(out: dict) -> dict:
    return {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in out.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Wall time of the step's phases; synchronises CUDA only when asked (``timings`` given)."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None) -> None:
        self.device, self.timings = device, timings
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is None:
            return
        _sync(self.device)
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.t
        self.t = now


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def train_step(model: nn.Module, objective: nn.Module, batch: dict, *, normalizer: Normalizer,
               device: torch.device, accum: int, autocast: Callable[[], Any], scaler: Any,
               timings: dict[str, float] | None = None) -> dict[str, float]:
    """Forward, loss and backward of one optimisation step (the optimizer step is the caller's).

    Args:
        model: the :class:`~medvlp.models.MedVLP` (or its DDP wrapper).
        objective: the :class:`~medvlp.objectives.CombinedObjective`.
        accum: micro-batches (see the module docstring); 1 = one forward and backward.
        timings: when given, the seconds of ``forward`` and ``backward`` are added to it (CUDA is
            synchronised for that, so ask on logging steps only).

    Returns:
        The losses of the step as floats (``loss`` is the weighted total).
    """
    clock = _Clock(device, timings)
    images = normalizer(batch["image"].to(device, non_blocking=True))
    texts = batch["text"].to(device, non_blocking=True)
    tokens = bool(objective.needs_tokens)
    if accum == 1:
        with autocast():
            out = model(images, texts, return_tokens=tokens)
        losses = objective(_floats(out), batch)
        clock.lap("forward")
        scaler.scale(losses["loss"]).backward()
        clock.lap("backward")
        return {k: float(v.detach()) for k, v in losses.items()}

    chunks = list(zip(images.chunk(accum), texts.chunk(accum), strict=True))
    states, cached = [], []
    with torch.no_grad():
        for i, t in chunks:
            states.append(_rng_state(device))
            with autocast():
                cached.append(_floats(model(i, t, return_tokens=tokens)))
    after = _rng_state(device)
    leaves = {k: torch.cat([c[k] for c in cached]).detach().requires_grad_(True)
              for k in BATCH_KEYS if cached[0].get(k) is not None}
    inner = cast("MedVLP", getattr(model, "module", model))
    out = {k: v for k, v in cached[0].items() if k not in BATCH_KEYS}
    out.update(_floats(inner.logit_terms()))
    out.update(leaves)
    losses = objective(out, batch)
    clock.lap("forward")
    scaler.scale(losses["loss"]).backward()
    sizes = [c["image_features"].shape[0] for c in cached]
    grads = {k: v.grad.split(sizes) for k, v in leaves.items() if v.grad is not None}
    no_sync = getattr(model, "no_sync", None)
    for j, (i, t) in enumerate(chunks):
        last = j == len(chunks) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx:
            _set_rng_state(states[j], device)
            with autocast():
                live = _floats(model(i, t, return_tokens=tokens))
            surrogate = sum((live[k] * g[j]).sum() for k, g in grads.items())
            if last and no_sync is not None:
                # DDP reduces a parameter's gradient only when it takes part in the synchronised backward;
                # the logit terms got theirs in the loss backward above.
                surrogate = surrogate + sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            if isinstance(surrogate, torch.Tensor):
                surrogate.backward()
    _set_rng_state(after, device)
    clock.lap("backward")
    return {k: float(v.detach()) for k, v in losses.items()}
