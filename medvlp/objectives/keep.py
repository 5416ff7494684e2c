"""KEEP objective: knowledge-enhanced group alignment with hierarchy-aware negatives.

Batches hold G groups x n samples (:class:`~medvlp.data.samplers.GroupBatchSampler`); a group is a
set of image-text pairs about one disease concept. With ``s_ab/tau = t x_a.y_b`` (``t`` the model's
logit scale), per group ``g``:

- soft hardest positive ``P_g = sum_{a in g} (sum_{b in g} exp(-s_ab/tau))^-1`` (each anchor's soft
  minimum over its group's partners: the hardest positives dominate),
- negatives ``N_gh = sum_{a in g} sum_{b in h} exp(s_ab/tau)`` for every other group ``h`` whose
  concept is neither the same as, an ancestor of, nor a descendant of ``g``'s concept; related groups
  are masked out (never pushed apart),
- ``L = -mean_g log(P_g / (P_g + sum_h N_gh))``, image->text (``a`` images, ``b`` texts) and
  text->image, averaged.

Everything is computed in log space with per-block shifts, so large logit scales cannot overflow.
With every sample its own group this is exactly the CLIP loss. A group with one sample is fine; a
batch with one group, or whose groups are all related, has nothing to contrast: the loss is 0 with
zero gradient (documented fallback, not an error).

Data parallelism: features (and group ids) are gathered from every rank and each rank computes the
loss of the whole global batch (memory ``N_global^2``); through ``all_gather``'s summing backward and
DDP's averaging every parameter gets exactly the gradient of the global loss, as with :mod:`clip`.

Options (``TrainConfig.extra["keep"]`` / ``--extra``): ``n_per_group`` (4), ``caption_p`` (0.0, the
probability of replacing a training caption by one synthesised from the ontology), ``caption_mode``
(``"random"`` | ``"synonym"`` | ``"chain"``), ``ontology`` (the domain card's by default).

Example:
    >>> import torch, torch.nn.functional as F
    >>> x = F.normalize(torch.randn(6, 8), dim=-1)
    >>> obj = KeepObjective()
    >>> out = obj({"image_features": x, "text_features": x, "logit_scale": torch.tensor(10.0)},
    ...           {"group": torch.tensor([0, 0, 1, 1, 2, 2])})
    >>> sorted(out)
    ['keep']
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvlp.data.samplers import RowValue
from medvlp.errors import ConfigError, MedvlpError
from medvlp.objectives import register
from medvlp.objectives.base import DataNeeds, Objective, require_vocabulary
from medvlp.objectives.distributed import gather_no_grad, gather_with_grad

__all__ = ["CaptionSynthesiser", "KeepData", "KeepObjective", "ShardGroups", "group_relations", "keep_loss",
           "KEEP_OPTIONS"]

# batching: "groups" (G groups x n_per_group samples, KEEP's sampler) or "uniform" (the run's random batches,
# e.g. to compare objectives on identical batches)
KEEP_OPTIONS = {"n_per_group": 4, "caption_p": 0.0, "caption_mode": "random", "ontology": None, "batching": "groups"}


# ------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------
def _block_logsumexp(z: torch.Tensor, inv: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``out[g, h] = log sum_{a in g, b in h} exp(z_ab)`` for rows and columns grouped by ``inv``.

    Each block is shifted by its own (detached) maximum, so every block sum is >= 1: no overflow, no
    underflow to log(0), and the gradient is exactly the within-block softmax.
    """
    n = z.shape[0]
    with torch.no_grad():
        row_max = z.new_full((n, n_groups), float("-inf")).scatter_reduce(
            1, inv.unsqueeze(0).expand(n, n), z, "amax"
        )
        bmax = z.new_full((n_groups, n_groups), float("-inf")).scatter_reduce(
            0, inv.unsqueeze(1).expand(n, n_groups), row_max, "amax"
        )
    shifted = torch.exp(z - bmax[inv][:, inv])
    onehot = F.one_hot(inv, n_groups).to(z.dtype)
    return (onehot.T @ shifted @ onehot).log() + bmax


def _one_direction(z: torch.Tensor, inv: torch.Tensor, n_groups: int, blocked: torch.Tensor) -> torch.Tensor:
    """Mean over groups of ``-log(P_g / (P_g + sum_h N_gh))`` with anchors on the rows of ``z``."""
    neg_inf = torch.tensor(float("-inf"), dtype=z.dtype, device=z.device)
    same = inv.unsqueeze(1) == inv.unsqueeze(0)
    # log of each anchor's (sum_b exp(-z_ab))^-1 over its own group's partners
    inv_softmin = -torch.where(same, -z, neg_inf).logsumexp(dim=1)
    member = F.one_hot(inv, n_groups).T.bool()  # (G, N)
    log_p = torch.where(member, inv_softmin.unsqueeze(0), neg_inf).logsumexp(dim=1)  # (G,)
    log_n = torch.where(blocked, neg_inf, _block_logsumexp(z, inv, n_groups))  # (G, G)
    log_denominator = torch.cat([log_p.unsqueeze(1), log_n], dim=1).logsumexp(dim=1)
    return (log_denominator - log_p).mean()


def keep_loss(
    logits: torch.Tensor, groups: torch.Tensor, related: torch.Tensor | None = None
) -> torch.Tensor:
    """The KEEP loss of one (global) batch.

    Args:
        logits: ``(N, N)`` image-text logits ``t x_i . y_j`` (row i image, column j text; pairs on the diagonal).
        groups: ``(N,)`` integer group id of each pair.
        related: optional ``(G, G)`` bool over ``torch.unique(groups)`` (sorted): True where two groups
            must not be contrasted (hierarchy relatives). The diagonal is always excluded.

    Returns:
        Scalar loss, the mean of the image->text and text->image directions.
    """
    uniq, inv = torch.unique(groups, return_inverse=True)
    n_groups = len(uniq)
    blocked = torch.eye(n_groups, dtype=torch.bool, device=logits.device)
    if related is not None:
        if related.shape != (n_groups, n_groups):
            raise ValueError(
                f"related mask has shape {tuple(related.shape)}; expected ({n_groups}, {n_groups})"
            )
        blocked = blocked | related.to(logits.device) | related.to(logits.device).T
    i2t = _one_direction(logits, inv, n_groups, blocked)
    t2i = _one_direction(logits.T, inv, n_groups, blocked)
    return (i2t + t2i) / 2


@torch.no_grad()
def masked_pairs(groups: torch.Tensor, related: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """How many off-diagonal (image, text) pairs of the batch are not negatives: ``keep_masked`` (same
    group or related groups) and ``keep_related_masked`` (by the ontology's hierarchy alone)."""
    _, inv = torch.unique(groups, return_inverse=True)
    same = inv.unsqueeze(1) == inv.unsqueeze(0)
    n = len(groups)
    rel = torch.zeros_like(same)
    if related is not None and related.numel():
        r = related | related.T
        rel = r[inv][:, inv] & ~same
    return {"keep_masked": (same.sum() - n + rel.sum()).float(), "keep_related_masked": rel.sum().float()}


# ------------------------------------------------------------------------------------------------
# Group relations from the ontology
# ------------------------------------------------------------------------------------------------
def group_relations(group_concepts: Sequence[str | None], graph: Any) -> list[tuple[int, int]]:
    """Pairs of distinct group ids whose concepts are equal or ancestor/descendant of each other.

    Args:
        group_concepts: concept id per group id (None where a group has no concept).
        graph: a :class:`~medvlp.ontology.ConceptGraph` (None: only groups with the same concept relate).

    Returns:
        Sorted ``(a, b)`` pairs, both orders, ``a != b``.
    """
    by_concept: dict[str, list[int]] = {}
    for gid, c in enumerate(group_concepts):
        if c is not None:
            key = graph.resolve(c) if graph is not None else c
            by_concept.setdefault(key, []).append(gid)
    pairs: set[tuple[int, int]] = set()
    for c, gids in by_concept.items():
        near = {c}
        if graph is not None and c in graph:
            # relatives present among the groups only: the closure of a root can be the whole ontology
            for rel in (graph.ancestors(c), graph.descendants(c)):
                near |= (
                    {r for r in rel if r in by_concept}
                    if len(rel) <= len(by_concept)
                    else {r for r in by_concept if r in rel}
                )
        for other in near:
            for a in gids:
                for b in by_concept.get(other, ()):
                    if a != b:
                        pairs.add((a, b))
                        pairs.add((b, a))
    return sorted(pairs)


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------
@dataclass
class KeepData:
    """What the training loop needs from :meth:`KeepObjective.data_hooks`.

    Attributes:
        group_of_row: group id of every manifest row (give the sampler ``group_of_row[ds.row_of(k)]``).
        group_names: key (concept id or group name) of every group id.
        group_concepts: concept id of every group id (None where unknown).
        n_per_group: samples per group and batch.
        row_fields: manifest row -> extra item fields (``{"group": id}``), for the dataset.
        caption_fn: ``(row, caption, rng) -> caption`` synthesising captions, or None.
    """

    group_of_row: list[int]
    group_names: list[str]
    group_concepts: list[str | None]
    n_per_group: int
    row_fields: Callable[[int], dict[str, Any]]
    caption_fn: Callable[[int, str, np.random.Generator], str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class KeepObjective(Objective):
    """KEEP group alignment (see the module docstring). Returns ``{"keep": loss}``.

    The batch carries ``group`` (LongTensor of group ids); without it every sample is its own group
    and the loss equals CLIP. Hierarchy masking needs :meth:`set_relations` (done by
    :meth:`data_hooks`); without it only samples of the same group id are kept apart from negatives.
    """

    name = "keep"
    logit_init = (math.log(1 / 0.04), None)
    init_rank = 1
    needs_rows = True
    streams_rows = True

    def __init__(self) -> None:
        super().__init__()
        self.n_relation_groups = 0
        self.related_keys = torch.empty(0, dtype=torch.long)

    def set_relations(self, pairs: Iterable[tuple[int, int]], n_groups: int) -> None:
        """Groups ``(a, b)`` never contrasted with each other (ids < ``n_groups``); both orders are added."""
        keys = {a * n_groups + b for a, b in pairs} | {b * n_groups + a for a, b in pairs}
        self.n_relation_groups = n_groups
        self.related_keys = torch.tensor(sorted(keys), dtype=torch.long)

    def relation_mask(self, groups: torch.Tensor) -> torch.Tensor:
        """``(G, G)`` bool over the given (distinct) group ids: True where related."""
        k = self.n_relation_groups
        if k == 0 or self.related_keys.numel() == 0:
            return torch.zeros(len(groups), len(groups), dtype=torch.bool, device=groups.device)
        known = (groups >= 0) & (groups < k)
        keys = groups.unsqueeze(1) * k + groups.unsqueeze(0)
        hit = torch.isin(keys, self.related_keys.to(groups.device))
        return hit & known.unsqueeze(1) & known.unsqueeze(0)

    def forward(self, out: dict, batch: dict | None = None) -> dict[str, torch.Tensor]:
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
        groups = (batch or {}).get("group")
        if groups is None:
            all_groups = torch.arange(all_img.shape[0], device=img.device)
        else:
            local = torch.as_tensor(groups, device=img.device).long()
            if local.shape != (img.shape[0],):
                raise ValueError(f"batch['group'] has shape {tuple(local.shape)}; expected ({img.shape[0]},)")
            all_groups = gather_no_grad(local)
        logits = scale * all_img @ all_txt.T
        related = self.relation_mask(torch.unique(all_groups)) if groups is not None else None
        return {"keep": keep_loss(logits, all_groups, related), **masked_pairs(all_groups, related)}

    def data_needs(self, manifest: Any, card: Any, model: nn.Module, options: dict[str, Any]) -> DataNeeds:
        data = self.data_hooks(manifest, card, options)
        uniform = _keep_options(options)["batching"] == "uniform"
        info = (f"{data.info['groups']} groups ({data.info['related_pairs']} related pairs by the ontology)"
                + ("; uniform random batches" if uniform else ""))
        return DataNeeds(row_fields=data.row_fields, caption_fn=data.caption_fn,
                         batching=None if uniform else GroupBatching(data), info=info)

    def stream_needs(self, manifest: Any, vocabulary: dict[str, list[str]] | None, card: Any, model: nn.Module,
                     options: dict[str, Any]) -> DataNeeds:
        """Groups for streamed shards: ids from the shards' vocabulary (the same on every rank, whatever the
        world size), each sample's group from its ``json`` member, hierarchy relations from the ontology.
        Batches are the stream's own (uniform) ones; a sample with no group, label or concept is a group of
        its own. Group batches and caption synthesis need a manifest."""
        from medvlp.data.samplers import label_concept

        opts = _keep_options(options)
        if ((options or {}).get("keep") or {}).get("batching") == "groups":
            raise ConfigError("keep batching=groups needs a manifest (the group sampler draws rows); over streamed "
                              "shards keep trains on the stream's batches (batching=uniform) with its group masks")
        if float(opts["caption_p"]) > 0:
            raise ConfigError("keep caption synthesis (caption_p > 0) needs a manifest; pass --data MANIFEST or "
                              "set keep caption_p=0 for streamed shards")
        vocab = require_vocabulary(vocabulary, "keep")
        graph = _load_graph(opts["ontology"], card, need=False)
        keys = set(vocab.get("groups", []))
        keys |= {label_concept(lab, graph, card) or lab for lab in vocab.get("labels", [])}
        keys |= {graph.resolve(c) if graph is not None else c for c in vocab.get("concepts", [])}
        names = sorted(keys)
        concepts = [_key_concept(k, graph, card) for k in names]
        pairs = group_relations(concepts, graph)
        self.set_relations(pairs, len(names))
        n_related = len({tuple(sorted(p)) for p in pairs})
        return DataNeeds(meta_fields=ShardGroups({k: j for j, k in enumerate(names)}, graph, card),
                         info=f"{len(names)} groups from the shards' vocabulary ({n_related} related pairs by the "
                              "ontology); the stream's batches")

    # --------------------------------------------------------------------------------------------
    def data_hooks(self, manifest: Any, card: Any = None, options: dict[str, Any] | None = None) -> KeepData:
        """Groups, hierarchy relations and caption synthesis for a training manifest.

        Builds the group of every row (:func:`~medvlp.data.samplers.group_keys`), maps each group to a
        concept, sets this objective's relation mask from the ontology once, and returns the hooks the
        dataset and sampler need.

        Args:
            manifest: the training :class:`~medvlp.data.manifest.Manifest`.
            card: the domain card (its ontology and label-to-concept ties); may be None.
            options: ``TrainConfig.extra``; the ``"keep"`` entry holds the options of :data:`KEEP_OPTIONS`.

        Raises:
            ConfigError: unknown or invalid options, or caption synthesis without a loadable ontology.
        """
        from medvlp.data.samplers import assign_group_ids, group_keys, row_concept

        opts = _keep_options(options)
        graph = _load_graph(opts["ontology"], card, need=opts["caption_p"] > 0)
        keys = group_keys(manifest, graph=graph, card=card)
        group_of_row, names = assign_group_ids(keys)
        concepts = _group_concepts(manifest, names, group_of_row, graph, card, row_concept)
        pairs = group_relations(concepts, graph)
        self.set_relations(pairs, len(names))
        caption_fn = None
        if opts["caption_p"] > 0:
            caption_fn = CaptionSynthesiser(
                graph,
                [concepts[g] for g in group_of_row],
                float(opts["caption_p"]),
                str(opts["caption_mode"]),
            )
        n_related = len({tuple(sorted(p)) for p in pairs})
        return KeepData(
            group_of_row=group_of_row,
            group_names=names,
            group_concepts=concepts,
            n_per_group=int(opts["n_per_group"]),
            row_fields=RowValue("group", group_of_row),
            caption_fn=caption_fn,
            info={
                "groups": len(names),
                "with_concept": sum(c is not None for c in concepts),
                "related_pairs": n_related,
                "ontology": graph.meta.get("name", "") if graph is not None else None,
            },
        )


class ShardGroups:
    """``(meta, key) -> {"group": id}`` for a streamed sample (picklable, for loader workers): the id of its
    group key (:func:`~medvlp.data.samplers.sample_group_key`) or, where it has none, ``-(key + 1)``: a group
    of its own, the same on every rank."""

    def __init__(self, index: dict[str, int], graph: Any, card: Any) -> None:
        self.index, self.graph, self.card = index, graph, card
        self._memo: dict[tuple, int | None] = {}

    def __call__(self, meta: dict[str, Any], key: int) -> dict[str, Any]:
        from medvlp.data.samplers import sample_group_key
        from medvlp.data.shards import meta_labels

        labels = meta_labels(meta)
        group, concepts = meta.get("group"), meta.get("concepts")
        memo_key = (repr(group), labels[0] if labels else None, repr(concepts) if not labels else None)
        if memo_key not in self._memo:
            if len(self._memo) > 100_000:
                self._memo.clear()
            k = sample_group_key(group, labels, concepts, graph=self.graph, card=self.card)
            self._memo[memo_key] = self.index.get(k) if k is not None else None
        gid = self._memo[memo_key]
        return {"group": gid if gid is not None else -(int(key) + 1)}


class GroupBatching:
    """KEEP's batches: G groups x n samples each (:class:`~medvlp.data.samplers.GroupBatchSampler`)."""

    def __init__(self, data: KeepData) -> None:
        self.data = data
        self.group_ids: list[int] = []

    def fit_batch(self, batch: int, *, given: bool, world: int, item_rows: Sequence[int]) -> int:
        """The global batch to use. With fewer groups than the batch has room for (e.g. a 6-class corpus),
        more samples per group are taken instead of shrinking the batch, so the loss keeps its negatives."""
        from medvlp.data.samplers import fit_group_batch

        self.group_ids = [self.data.group_of_row[r] for r in item_rows]
        n_groups = len(set(self.group_ids))
        if n_groups < batch // self.data.n_per_group:
            self.data.n_per_group = max(self.data.n_per_group, batch // max(n_groups, 1))
        n = self.data.n_per_group
        if not given or batch % n or batch // n > n_groups:
            batch = fit_group_batch(batch, n, n_groups, world)
        if batch % n:
            raise ConfigError(f"objective keep: batch size {batch} is not a multiple of keep n_per_group {n}")
        return batch

    def sampler(self, batch: int, *, seed: int, total_steps: int, start_step: int, rank: int,
                world: int) -> torch.utils.data.Sampler:
        from medvlp.data.samplers import GroupBatchSampler

        n = self.data.n_per_group
        return GroupBatchSampler(self.group_ids, batch // n, n, seed=seed, total_steps=total_steps,
                                 start_step=start_step, rank=rank, world=world)

    def describe(self, batch: int) -> str:
        n = self.data.n_per_group
        return f"{batch // n} groups x {n} per batch; {self.data.info}"


def _keep_options(options: dict[str, Any] | None) -> dict[str, Any]:
    raw = dict((options or {}).get("keep") or {})
    unknown = set(raw) - set(KEEP_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown keep option(s) {sorted(unknown)}; known: {sorted(KEEP_OPTIONS)}")
    opts = {**KEEP_OPTIONS, **raw}
    if int(opts["n_per_group"]) < 1:
        raise ConfigError(f"keep n_per_group must be >= 1, not {opts['n_per_group']}")
    if not 0.0 <= float(opts["caption_p"]) <= 1.0:
        raise ConfigError(f"keep caption_p must be in [0, 1], not {opts['caption_p']}")
    if opts["batching"] not in ("groups", "uniform"):
        raise ConfigError(f"keep batching must be groups or uniform, not {opts['batching']!r}")
    if opts["caption_mode"] not in ("random", "synonym", "chain"):
        raise ConfigError(f"keep caption_mode must be random, synonym or chain, not {opts['caption_mode']!r}")
    return opts


def _load_graph(name: str | None, card: Any, need: bool) -> Any:
    """The ontology to use; a card default that cannot be loaded only disables hierarchy masking."""
    from medvlp.ontology import card_graph

    explicit = name is not None
    name = name if explicit else (getattr(card, "ontology", None) or None)
    if name is None:
        if need:
            raise ConfigError(
                "keep caption synthesis (caption_p > 0) needs an ontology: set keep option 'ontology'"
            )
        return None
    try:
        return card_graph(card, strict=True, with_labels=False, ontology=name)
    except MedvlpError as e:
        if explicit or need:
            raise ConfigError(f"keep: cannot load ontology {name!r}: {e}") from e
        warnings.warn(
            f"keep: ontology {name!r} could not be loaded ({e}); groups are not masked by hierarchy",
            stacklevel=3,
        )
        return None


def _key_concept(key: str, graph: Any, card: Any) -> str | None:
    """The concept a group key stands for: the key itself when the ontology has it, else its label's concept."""
    from medvlp.data.samplers import label_concept

    if graph is not None and graph.get(key) is not None:
        return graph.resolve(key)
    return label_concept(key, graph, card)


def _group_concepts(
    m: Any,
    names: list[str],
    group_of_row: list[int],
    graph: Any,
    card: Any,
    row_concept: Callable[..., str | None],
) -> list[str | None]:
    """Concept of each group: its key when that is a concept (or label) of the ontology, else the most
    common first concept among its rows."""

    out: list[str | None] = []
    votes: dict[int, Counter] = {}
    for g, key in enumerate(names):
        c = _key_concept(key, graph, card)
        out.append(c)
        if c is None:
            votes[g] = Counter()
    if votes:
        for row, g in enumerate(group_of_row):
            if g in votes:
                c = row_concept(m, row, graph)
                if c is not None:
                    votes[g][c] += 1
        for g, cnt in votes.items():
            if cnt:
                out[g] = cnt.most_common(1)[0][0]
    return out


class CaptionSynthesiser:
    """``(row, caption, rng) -> caption``: with probability ``p`` a KEEP caption for the row's concept
    (a synonym or the ancestor chain in a template, :func:`~medvlp.ontology.synthesize_caption`).

    A plain class rather than a closure so that datasets holding it can be pickled to loader workers.
    """

    def __init__(self, graph: Any, concept_of_row: list[str | None], p: float, mode: str) -> None:
        self.graph, self.concept_of_row, self.p, self.mode = graph, concept_of_row, p, mode

    def __call__(self, row: int, caption: str, rng: np.random.Generator) -> str:
        from medvlp.ontology.prompts import synthesize_caption

        concept = self.concept_of_row[row]
        # the draw happens for every row, so whether a caption is replaced never shifts later draws
        if rng.random() >= self.p or concept is None or concept not in self.graph:
            return caption
        return synthesize_caption(concept, self.graph, rng, mode=self.mode)  # type: ignore[arg-type]


register("keep", KeepObjective)
