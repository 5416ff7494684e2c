"""GroupBatchSampler: group composition, determinism, resume, sharding, small groups; group keys from
manifests; the dataset hooks (group ids, caption synthesis) through a real DataLoader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from medvlp.data.manifest import Manifest, read_manifest
from medvlp.data.samplers import (
    GroupBatchSampler,
    RowFields,
    RowValue,
    assign_group_ids,
    fit_group_batch,
    group_keys,
)
from medvlp.errors import DataError
from medvlp.ontology import Concept, ConceptGraph

# 5 groups of sizes 7, 4, 1, 10, 3 (ids not contiguous in the item order)
SIZES = {10: 7, 11: 4, 12: 1, 13: 10, 14: 3}
GIDS = [g for g, n in SIZES.items() for _ in range(n)]
GIDS = GIDS[1::2] + GIDS[0::2]  # interleave so that members are scattered


def _sampler(**kw) -> GroupBatchSampler:
    args = {"groups_per_batch": 2, "n_per_group": 3, "seed": 0, "total_steps": 20}
    args.update(kw)
    return GroupBatchSampler(GIDS, args.pop("groups_per_batch"), args.pop("n_per_group"), **args)


@pytest.fixture(scope="module")
def tiles_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pathology demo corpus as PNG tiles (6 classes x 16 images, 64 px); group = primary concept."""
    from medvlp.demos.corpora import demo_manifest

    out = tmp_path_factory.mktemp("keep-demo")
    return demo_manifest(
        "pathology", n_per_class=16, size=64, seed=0, out_dir=out / "corpus", progress=False, variant="tiles"
    )


def test_batches_are_g_groups_of_n() -> None:
    s = _sampler()
    assert s.steps_per_round == 2  # 5 groups // 2 per batch
    assert s.stats() == {"groups": 5, "min_size": 1, "max_size": 10}
    for step in range(20):
        idx, visits, groups = s.global_batch(step)
        assert len(idx) == 6
        # two distinct groups, three consecutive items each, every item really in its group
        assert groups[:3] == [groups[0]] * 3 and groups[3:] == [groups[3]] * 3 and groups[0] != groups[3]
        assert [GIDS[i] for i in idx] == groups
        for g in set(groups):
            members = [i for i, v in zip(idx, groups, strict=True) if v == g]
            if SIZES[g] % 3 == 0:
                assert len(set(members)) == 3  # a visit inside one pass over the group never repeats
    # each round visits 4 distinct groups (one left out), a different one left out across rounds
    left_out = set()
    for r in range(10):
        seen = {g for step in (2 * r, 2 * r + 1) for g in s.global_batch(step)[2]}
        assert len(seen) == 4
        left_out |= set(SIZES) - seen
    assert len(left_out) >= 3


def test_small_group_is_sampled_with_replacement_and_varied() -> None:
    s = _sampler(groups_per_batch=5, n_per_group=3)  # every group in every batch
    idx, visits, groups = s.global_batch(0)
    single = [(i, v) for i, v, g in zip(idx, visits, groups, strict=True) if g == 12]
    assert len(single) == 3 and len({i for i, _ in single}) == 1
    # repeats carry different visit numbers, so the dataset augments them differently
    assert [v for _, v in single] == [0, 1, 2]
    # the group of 4 in a batch of 3 per group: 4 distinct in the first round, then a reshuffle
    four = [i for i, g in zip(idx, groups, strict=True) if g == 11]
    assert len(set(four)) == 3


def test_members_are_covered_evenly() -> None:
    """With every group in every batch, a group's members are each drawn once per pass over it."""
    s = _sampler(groups_per_batch=5, n_per_group=2)
    counts: Counter = Counter()
    for step in range(35):  # 35 rounds x 2 = 70 draws of each group; multiple of all sizes 7, 1, 10
        idx, _, groups = s.global_batch(step)
        counts.update(i for i, g in zip(idx, groups, strict=True) if g in (10, 12, 13))
    per_item = {GIDS[i]: set() for i in counts}
    for i, c in counts.items():
        per_item[GIDS[i]].add(c)
    assert per_item == {10: {10}, 12: {70}, 13: {7}}
    assert sum(1 for i in counts if GIDS[i] == 10) == 7


def test_deterministic_and_seeded() -> None:
    a = [s for s in _sampler(seed=3)]
    b = [s for s in _sampler(seed=3)]
    c = [s for s in _sampler(seed=4)]
    assert a == b
    assert a != c
    assert len(a) == 20 and all(len(x) == 6 for x in a)


def test_resume_reproduces_the_rest() -> None:
    full = list(_sampler(seed=1, total_steps=17))
    resumed = list(_sampler(seed=1, total_steps=17, start_step=9))
    assert len(resumed) == 8
    assert resumed == full[9:]
    # a fresh sampler asked for one late step directly gives the same batch (no hidden state)
    assert _sampler(seed=1).batch_for_step(13) == full[13]


def test_ranks_shard_the_global_batch() -> None:
    world = 3
    for step in (0, 5, 11):
        ref = _sampler(groups_per_batch=3, n_per_group=2).global_batch(step)
        parts = [
            _sampler(groups_per_batch=3, n_per_group=2, rank=r, world=world).batch_for_step(step)
            for r in range(world)
        ]
        assert all(len(p) == 2 for p in parts)
        assert [i for p in parts for i, _ in p] == ref[0]
        assert [v for p in parts for _, v in p] == ref[1]


def test_sampler_errors() -> None:
    with pytest.raises(DataError, match="only 5 distinct groups"):
        _sampler(groups_per_batch=6)
    with pytest.raises(DataError, match="not divisible by the 4 processes"):
        _sampler(groups_per_batch=3, n_per_group=3, world=4)
    with pytest.raises(DataError, match="at least 1"):
        _sampler(n_per_group=0)


def test_fit_group_batch() -> None:
    assert fit_group_batch(128, 4, 6) == 24
    assert fit_group_batch(128, 4, 100) == 128
    assert fit_group_batch(30, 4, 100, world=8) == 24
    assert fit_group_batch(10, 3, 100, world=2) == 6
    assert fit_group_batch(2, 4, 3) == 4


def test_group_keys_sources() -> None:
    graph = ConceptGraph(
        [Concept("t:fat", "adipose tissue", ["fat"]), Concept("t:mucus", "mucus", ["mucin"])]
    )
    df = pd.DataFrame(
        {
            "image": [f"{i}.png" for i in range(7)],
            "caption": ["x", "x", "pools of mucin", "x", "no mucus here", "y", "z"],
            "label": ["", "", "", "fat", "", "cat", ""],
            "concepts": [
                None,
                json.dumps(
                    [
                        {"id": "t:mucus", "start": 0, "end": 5, "negated": True},
                        {"id": "t:fat", "start": 6, "end": 9},
                    ]
                ),
                None,
                None,
                None,
                None,
                None,
            ],
            "group": ["g1", None, None, None, None, None, "g1"],
        }
    )
    m = Manifest(df, Path("."))
    keys = group_keys(m, graph=graph)
    # group column; first non-negated concept; matcher on the caption; label resolved to its concept;
    # negated mention only -> own group; unknown label kept as text; group column
    assert keys == ["g1", "t:fat", "t:mucus", "t:fat", "row:4", "cat", "g1"]
    ids, names = assign_group_ids(keys)
    assert names == ["cat", "g1", "row:4", "t:fat", "t:mucus"]
    assert ids == [1, 3, 4, 3, 2, 0, 1]
    # without an ontology: no matcher, labels stay text
    assert group_keys(m) == ["g1", "t:fat", "row:2", "fat", "row:4", "cat", "g1"]


def test_row_fields_helpers() -> None:
    f = RowFields([RowValue("group", [5, 6]), RowValue("soft_labels", ["a", "b"])])
    assert f(1) == {"group": 6, "soft_labels": "b"}


def test_dataset_hooks_through_a_dataloader(tiles_demo: Path) -> None:
    """keep's hooks in a real dataset + loader: group ids in the batch match the sampler, synthetic
    captions appear at about the configured rate, and everything is reproducible."""
    from medvlp.data.dataset import ImageOptions, ImageTextDataset, collate
    from medvlp.objectives.keep import KeepObjective

    m = read_manifest(tiles_demo).split("train")
    data = KeepObjective().data_hooks(
        m, None, {"keep": {"n_per_group": 4, "caption_p": 0.5, "ontology": "pathology"}}
    )

    def tok(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[len(t), 0] for t in texts])

    ds = ImageTextDataset(
        m,
        tok,
        ImageOptions(size=32),
        seed=0,
        cache="ram",
        progress=False,
        row_fields=data.row_fields,
        caption_fn=data.caption_fn,
    )
    gids = [data.group_of_row[ds.row_of(k)] for k in range(len(ds))]
    sampler = GroupBatchSampler(gids, 3, 4, seed=0, total_steps=6)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    originals = {c for i in range(len(m)) for c in m.captions(i)}
    synthetic = 0
    batches = list(loader)
    for step, batch in enumerate(batches):
        assert batch["group"].tolist() == sampler.global_batch(step)[2]
        assert batch["image"].shape == (12, 3, 32, 32)
        synthetic += sum(c not in originals for c in batch["caption"])
    assert 0.25 < synthetic / 72 < 0.75
    again = list(
        torch.utils.data.DataLoader(
            ds,
            batch_sampler=GroupBatchSampler(gids, 3, 4, seed=0, total_steps=6),
            collate_fn=collate,
            num_workers=0,
        )
    )
    assert [b["caption"] for b in again] == [b["caption"] for b in batches]
