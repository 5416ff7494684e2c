"""The objective protocol: what an objective owns, so the training loop can stay ignorant of names.

An objective is an ``nn.Module`` whose ``forward(out, batch)`` returns a dict of named losses (its own
name among them). Around that, it declares what it needs from the rest of the run (in the way open_clip's
newer ``task`` classes own ``prepare_batch``):

* ``logit_init`` / ``init_rank``: the ``(log logit scale, logit bias)`` the model is built with; in a
  combination the part with the highest ``init_rank`` decides;
* ``default_weight``: its weight in a combination when the spec gives none (``siglip+concept``);
* ``needs_tokens`` / ``needs_concept_head``: how the model is built and called;
* ``needs_rows``: it reads per-row manifest fields; with ``streams_rows`` it can also build them from
  streamed shards (:meth:`stream_needs`: each sample's ``json`` member and the shards' vocabulary);
* ``requires_any``: other objectives one of which must be in the combination;
* :meth:`bind` (model binding), :meth:`data_needs` (row fields, caption and concept functions, a batch
  sampler) and :meth:`post_step` (clamping after each optimizer step).

A new objective is one file in this package: subclass :class:`Objective`, call
:func:`medvlp.objectives.register` at the bottom. Objectives defined elsewhere (a test, a plug-in)
register the same way before :func:`medvlp.objectives.build_objective` is called.

Example:
    >>> import torch
    >>> from medvlp.objectives import Objective, register, build_objective
    >>> class Align(Objective):
    ...     name = "align_demo"
    ...     def forward(self, out, batch):
    ...         return {"align_demo": (1 - (out["image_features"] * out["text_features"]).sum(-1)).mean()}
    >>> register("align_demo", Align)
    >>> build_objective("align_demo").weights
    {'align_demo': 1.0}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from medvlp.errors import ConfigError

if TYPE_CHECKING:
    from medvlp.data.manifest import Manifest
    from medvlp.domains import DomainCard

__all__ = ["Objective", "DataNeeds", "Batching", "require_vocabulary"]


class Batching(Protocol):
    """A custom batch sampler an objective needs (KEEP's class-balanced group batches).

    ``fit_batch`` is called once with the dataset's row of every item, and returns the global batch size
    it can serve (``given``: the user set the size; keep it unless it cannot be served); ``sampler``
    returns a ``torch.utils.data.Sampler`` of per-rank index lists for steps ``start_step..total_steps``.
    """

    def fit_batch(self, batch: int, *, given: bool, world: int, item_rows: Sequence[int]) -> int: ...

    def sampler(self, batch: int, *, seed: int, total_steps: int, start_step: int, rank: int,
                world: int) -> torch.utils.data.Sampler: ...

    def describe(self, batch: int) -> str: ...


@dataclass
class DataNeeds:
    """What an objective asks of the dataset and the loader (every field optional).

    Attributes:
        row_fields: manifest row -> extra item fields (e.g. ``{"group": 3}``), collated into the batch.
        caption_fn: ``(row, caption, rng) -> caption``: replaces the sampled caption (caption synthesis).
        concept_fn: ``(row, caption) -> spans``: per-caption annotations placed in ``batch["concepts"]``.
        batching: a custom batch sampler (:class:`Batching`); None = the run's uniform sampler.
        meta_fields: ``(meta, key) -> fields``: the same extra item fields for a streamed sample, from its
            shard ``json`` member (label, concepts, group) and key number.
        info: a one-line description for the run's summary.
    """

    row_fields: Callable[[int], dict[str, Any]] | None = None
    caption_fn: Callable[..., str] | None = None
    concept_fn: Callable[..., Any] | None = None
    batching: Batching | None = None
    meta_fields: Callable[[dict[str, Any], int], dict[str, Any]] | None = None
    info: str = ""

    def dataset_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`medvlp.data.dataset.ImageTextDataset`."""
        return {"row_fields": self.row_fields, "caption_fn": self.caption_fn, "concept_fn": self.concept_fn}

    def stream_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`medvlp.data.stream.ShardStream` (no per-row fields there)."""
        return {"concept_fn": self.concept_fn, "meta_fn": self.meta_fields}


def require_vocabulary(vocabulary: dict[str, list[str]] | None, objective: str) -> dict[str, list[str]]:
    """The shards' vocabulary, or a ConfigError saying where it comes from."""
    if vocabulary is None:
        raise ConfigError(
            f"objective {objective} over streamed shards needs their vocabulary (distinct labels, groups and "
            "concept ids), which `medvlp data shard` writes into shards.json beside the shards; these shards "
            "have none (written by an older medvlp or another tool, or shards.json is not beside them): "
            "re-shard with `medvlp data shard`, or pass --data MANIFEST")
    return vocabulary


class Objective(nn.Module):
    """Base class of medvlp's objectives (see the module docstring for what each attribute means)."""

    name: ClassVar[str] = ""
    logit_init: ClassVar[tuple[float, float | None] | None] = None
    init_rank: ClassVar[int] = 0
    default_weight: ClassVar[float] = 1.0
    needs_tokens: ClassVar[bool] = False
    needs_concept_head: ClassVar[bool] = False
    needs_rows: ClassVar[bool] = False
    streams_rows: ClassVar[bool] = False
    requires_any: ClassVar[tuple[str, ...]] = ()

    def bind(self, model: nn.Module) -> Objective:
        """Attach to the model being trained (a DDP wrapper may be passed). Returns self."""
        return self

    def data_needs(self, manifest: Manifest, card: DomainCard | None, model: nn.Module,
                   options: dict[str, Any]) -> DataNeeds | None:
        """What this objective needs from the training rows; ``options`` is ``TrainConfig.extra``."""
        return None

    def stream_needs(self, manifest: Manifest, vocabulary: dict[str, list[str]] | None, card: DomainCard | None,
                     model: nn.Module, options: dict[str, Any]) -> DataNeeds | None:
        """What this objective needs when training streams shards: ``manifest`` is an empty stand-in and
        ``vocabulary`` the shards' distinct labels, groups and concept ids (``shards.json``; None when the
        shards do not say). By default the same as :meth:`data_needs`; objectives with ``streams_rows``
        return ``meta_fields`` in place of ``row_fields``."""
        return self.data_needs(manifest, card, model, options)

    @torch.no_grad()
    def post_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. to clamp a logit scale this objective owns)."""

    def forward(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
