"""Group batch sampler for KEEP-style training: every global batch is G semantic groups x n samples.

A *group* is a set of samples about the same disease concept (KEEP): the manifest's ``group`` column,
or, where that is empty, its first label (as a concept id where the card or ontology knows it), the first
concept the row names (``concepts`` column; these may be attributes, so they come after the label), or the
first concept the ontology matcher finds in its first caption. Rows with none of these form a group of
their own.

Sampling is balanced over groups: round ``r`` visits the groups in a random order (seeded by
``(seed, r)``), G per step, so every group is visited once per round (the ``K mod G`` groups left at the
end of a round are skipped in that round). A group's visits walk through its members in random order,
reshuffled each time all have been seen, so large groups are covered over rounds and a group smaller
than ``n`` repeats members within the batch (sampling with replacement). Every batch is a pure function
of ``(seed, step)``: starting at ``start_step`` reproduces the rest of an uninterrupted run exactly.

Example:
    >>> s = GroupBatchSampler([0, 0, 0, 1, 1, 2], groups_per_batch=2, n_per_group=2, seed=0, total_steps=3)
    >>> len(s.global_batch(0)[0])
    4
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medvlp.errors import DataError

if TYPE_CHECKING:  # pandas is only needed by callers that hold a manifest
    from medvlp.data.manifest import Manifest

__all__ = [
    "GroupBatchSampler",
    "MetaFields",
    "RowFields",
    "RowValue",
    "fit_group_batch",
    "assign_group_ids",
    "first_concept",
    "group_keys",
    "row_concept",
    "sample_group_key",
]


def row_concept(m: Manifest, i: int, graph: Any = None) -> str | None:
    """The first non-negated concept id that row ``i`` names, from its ``concepts`` cell.

    Cells may hold ids (``"path:mucus"``), dicts (``{"id", "start", "end", "negated"}``, the matcher's
    output) or ``[start, end]`` character spans into the first caption (resolved through ``graph`` by
    name or synonym). Returns None when the row names no usable concept.
    """
    items = m.concepts(i)
    if not items:
        return None
    caps = m.captions(i)
    return first_concept(items, graph, caps[0] if caps else None)


def first_concept(items: Sequence[Any] | None, graph: Any = None, caption: str | None = None) -> str | None:
    """The first non-negated concept id among ``concepts`` items (ids, matcher dicts, or ``[start, end]``
    spans into ``caption``, resolved through ``graph``); None when there is none."""
    for item in items or ():
        if isinstance(item, str) and item.strip():
            return graph.resolve(item) if graph is not None else item
        if isinstance(item, dict):
            if item.get("negated") or not item.get("id"):
                continue
            return graph.resolve(str(item["id"])) if graph is not None else str(item["id"])
        if isinstance(item, (list, tuple)) and len(item) == 2 and graph is not None and caption:
            from medvlp.ontology.prompts import resolve_label

            c = resolve_label(caption[int(item[0]):int(item[1])], graph)
            if c is not None:
                return c.id
    return None


def label_concept(name: str, graph: Any = None, card: Any = None) -> str | None:
    """Concept id of a label name: via the domain card's label sets, then the ontology's names."""
    if card is not None:
        lab = card.find_label(name)
        if lab is not None:
            return graph.resolve(lab.concept) if graph is not None else lab.concept
    if graph is not None:
        from medvlp.ontology.prompts import resolve_label

        c = resolve_label(name, graph)
        if c is not None:
            return c.id
    return None


def group_keys(m: Manifest, *, graph: Any = None, card: Any = None) -> list[str]:
    """One group key per manifest row (see the module docstring for the order of sources).

    Keys formed from concepts or labels are concept ids where the ontology or the card resolves them,
    so that "fat" and "adipose tissue" fall into one group.

    Args:
        m: the manifest.
        graph: optional :class:`~medvlp.ontology.ConceptGraph` to resolve names and run the matcher.
        card: optional domain card whose label sets tie label names to concept ids.
    """
    col = m.column("group")
    matcher = None
    keys: list[str] = []
    for i in range(len(m)):
        key = sample_group_key(col[i] if col is not None else None, m.labels(i), m.concepts(i),
                               graph=graph, card=card, caption=next(iter(m.captions(i)), None))
        if key is None and graph is not None and m.captions(i):
            if matcher is None:
                from medvlp.ontology.matcher import ConceptMatcher

                matcher = ConceptMatcher(graph)
            key = next((x.concept_id for x in matcher.match(m.captions(i)[0]) if not x.negated), None)
        keys.append(key if key is not None else f"row:{i}")
    return keys


def sample_group_key(group: Any, labels: Sequence[str], concepts: Sequence[Any] | None, *, graph: Any = None,
                     card: Any = None, caption: str | None = None) -> str | None:
    """The group key of one sample from its fields (a manifest row, or a shard's ``json`` member): its
    ``group``, else its first label (as a concept id where known), else its first concept; None when it
    has none of these (:func:`group_keys` then tries the ontology matcher on the caption)."""
    if group is not None and str(group).strip():
        return str(group).strip()
    for lab in labels:  # the row's class first: concepts may be attributes (WBCAtt) or findings
        return label_concept(lab, graph, card) or lab
    return first_concept(concepts, graph, caption)


def assign_group_ids(keys: Sequence[str]) -> tuple[list[int], list[str]]:
    """Integer ids for group keys: ``(id per key, key per id)``, ids in sorted key order (deterministic)."""
    names = sorted(set(keys))
    index = {k: j for j, k in enumerate(names)}
    return [index[k] for k in keys], names


def fit_group_batch(batch: int, n_per_group: int, n_groups: int, world: int = 1) -> int:
    """The largest global batch ``G * n <= batch`` with ``G <= n_groups`` and ``G * n`` divisible by ``world``.

    Used to pick a default batch for the group sampler; at least one group (``n``) when nothing fits.

    Example:
        >>> fit_group_batch(128, 4, 6)
        24
    """
    for g in range(min(batch // n_per_group, n_groups), 0, -1):
        if (g * n_per_group) % world == 0:
            return g * n_per_group
    return n_per_group


class RowValue:
    """``row -> {key: values[row]}``: a per-row dataset field (picklable, unlike a lambda)."""

    def __init__(self, key: str, values: Sequence[Any] | torch.Tensor) -> None:
        self.key, self.values = key, values

    def __call__(self, row: int) -> dict[str, Any]:
        return {self.key: self.values[row]}


class RowFields:
    """Several per-row field functions merged into one (for combined objectives)."""

    def __init__(self, fns: Sequence[Callable[[int], dict[str, Any]]]) -> None:
        self.fns = list(fns)

    def __call__(self, row: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fn in self.fns:
            out.update(fn(row))
        return out


class MetaFields:
    """Several ``(meta, key) -> fields`` functions of streamed samples merged into one."""

    def __init__(self, fns: Sequence[Callable[[dict[str, Any], int], dict[str, Any]]]) -> None:
        self.fns = list(fns)

    def __call__(self, meta: dict[str, Any], key: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fn in self.fns:
            out.update(fn(meta, key))
        return out


class GroupBatchSampler(torch.utils.data.Sampler):
    """Yields, per optimisation step, this rank's share of a global batch of G groups x n samples.

    The global batch is laid out group after group (n consecutive items per group) and cut into
    ``world`` equal slices, one per rank, like :class:`~medvlp.data.dataset.StepSampler`. Items are
    ``(index, visit)`` pairs; ``visit`` counts how often the sample has been drawn before, and the
    dataset uses it (as the epoch) to seed augmentation and caption choice, so repeats of a sample in
    a small group differ.

    Args:
        group_ids: group id of every dataset item (any non-negative ints).
        groups_per_batch: G, distinct groups per global batch.
        n_per_group: n, samples per group and batch.
        seed: base seed.
        total_steps: steps to yield in all (the iterator runs ``start_step .. total_steps - 1``).
        start_step: first step (resume).
        rank: this process's rank.
        world: number of processes.

    Raises:
        DataError: fewer distinct groups than G, or a global batch not divisible by ``world``.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        groups_per_batch: int,
        n_per_group: int,
        *,
        seed: int,
        total_steps: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if groups_per_batch < 1 or n_per_group < 1:
            raise DataError(
                f"groups per batch ({groups_per_batch}) and samples per group ({n_per_group}) "
                "must be at least 1"
            )
        gids = np.asarray(group_ids, dtype=np.int64)
        if gids.ndim != 1 or len(gids) == 0:
            raise DataError("the group sampler needs at least one item")
        uniq = np.unique(gids)
        if len(uniq) < groups_per_batch:
            raise DataError(
                f"only {len(uniq)} distinct groups in the data, fewer than the {groups_per_batch} groups per batch "
                f"(batch size / samples per group); lower --batch-size or raise the samples per group"
            )
        gb = groups_per_batch * n_per_group
        if gb % world:
            raise DataError(
                f"global batch {groups_per_batch} groups x {n_per_group} = {gb} is not divisible by "
                f"the {world} processes"
            )
        self.group_ids = gids
        self.groups = uniq  # sorted distinct group ids
        order = np.argsort(gids, kind="stable")
        bounds = np.searchsorted(gids[order], uniq, side="left").tolist() + [len(gids)]
        self.members = {int(g): order[bounds[j] : bounds[j + 1]] for j, g in enumerate(uniq)}
        self.G, self.n, self.seed = groups_per_batch, n_per_group, seed
        self.total, self.start, self.rank, self.world = total_steps, start_step, rank, world
        self.steps_per_round = len(uniq) // groups_per_batch
        self._round = -1
        self._order: np.ndarray = uniq
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    @property
    def global_batch_size(self) -> int:
        return self.G * self.n

    def _round_order(self, r: int) -> np.ndarray:
        if r != self._round:
            self._order = np.random.default_rng([self.seed, r, 0x6B656570]).permutation(self.groups)
            self._round = r
        return self._order

    def _perm(self, g: int, cycle: int) -> np.ndarray:
        key = (g, cycle)
        p = self._perms.get(key)
        if p is None:
            # keep at most the two latest cycles of each group: a batch spans at most two
            for old in [k for k in self._perms if k[0] == g and k[1] < cycle - 1]:
                del self._perms[old]
            p = self.members[g][
                np.random.default_rng([self.seed, g, cycle, 0x67727570]).permutation(len(self.members[g]))
            ]
            self._perms[key] = p
        return p

    def global_batch(self, step: int) -> tuple[list[int], list[int], list[int]]:
        """``(indices, visits, group ids)`` of the whole global batch of ``step`` (all ranks)."""
        r, b = divmod(step, self.steps_per_round)
        chosen = self._round_order(r)[b * self.G : (b + 1) * self.G]
        idx: list[int] = []
        visits: list[int] = []
        groups: list[int] = []
        for g in chosen.tolist():
            size = len(self.members[g])
            for j in range(self.n):
                cycle, pos = divmod(r * self.n + j, size)
                idx.append(int(self._perm(g, cycle)[pos]))
                visits.append(cycle)
                groups.append(g)
        return idx, visits, groups

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``(index, visit)`` pairs for ``step``."""
        idx, visits, _ = self.global_batch(step)
        per_rank = self.global_batch_size // self.world
        lo = self.rank * per_rank
        return list(zip(idx[lo : lo + per_rank], visits[lo : lo + per_rank], strict=True))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            yield self.batch_for_step(step)

    def stats(self) -> dict[str, int]:
        """Number of groups and the smallest / largest group size (for the run log)."""
        sizes = Counter(self.group_ids.tolist()).values()
        return {"groups": len(self.groups), "min_size": min(sizes), "max_size": max(sizes)}
