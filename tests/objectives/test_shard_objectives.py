"""KEEP and softclip over streamed shards: the per-sample targets a shard stream gives equal the manifest
path's, the hierarchy masks stay active, a missing vocabulary is a clear error, and a 2-process run (groups
and label vectors gathered across ranks) ends with the weights of the 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medvlp.errors import ConfigError

CELLS = ["band neutrophil", "neutrophil", "lymphocyte", "band neutrophil", "lymphocyte", "neutrophil"]


@pytest.fixture(scope="module")
def cells(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A microscopy manifest whose labels are related in the card's ontology (band neutrophil is a
    neutrophil), plus one row with no label (a group of its own), and its shards."""
    from medvlp.data.shards import write_shards

    src = pd.read_csv(small_demo)
    root = tmp_path_factory.mktemp("cells")
    df = pd.DataFrame({"image": [str((small_demo.parent / p).resolve()) for p in src["image"][:36]],
                       "caption": [f"image {i}" for i in range(36)],
                       "label": [CELLS[i % len(CELLS)] for i in range(36)]})
    df.loc[35, "label"] = None
    manifest = root / "cells.csv"
    df.to_csv(manifest, index=False)
    shards = write_shards(manifest, root / "shards", shard_size=8)
    return {"manifest": manifest, "shards": shards, "root": root}


def _stream(pattern: str, objective: str) -> tuple[list[dict], object, object]:
    """Every item of the shards with ``objective``'s per-sample fields; the objective and its fields."""
    from medvlp.data.dataset import ImageOptions
    from medvlp.data.manifest import Manifest
    from medvlp.data.stream import ShardStream
    from medvlp.domains import load_card
    from medvlp.objectives import build_objective

    obj = build_objective(objective)
    stream = ShardStream(pattern, None, ImageOptions(size=32))
    stub = Manifest(pd.DataFrame({"image": [], "caption": []}), Path("."), None)  # what a streamed run passes
    needs = obj.stream_needs(stub, stream.vocabulary, load_card("microscopy"), None, {})
    stream.meta_fn = needs.meta_fields
    return list(stream), obj, needs.meta_fields.fns[0]


def test_shards_json_keeps_the_vocabulary(cells: dict) -> None:
    index = json.loads(cells["shards"].index.read_text())
    assert index["vocabulary"] == {"labels": ["band neutrophil", "lymphocyte", "neutrophil"], "groups": [],
                                   "concepts": []}


def test_keep_groups_from_shards_equal_the_manifest_path(cells: dict) -> None:
    from medvlp.data.manifest import read_manifest
    from medvlp.domains import load_card
    from medvlp.objectives.keep import KeepObjective

    m = read_manifest(cells["manifest"])
    ref = KeepObjective()
    data = ref.data_hooks(m, load_card("microscopy"))
    assert data.info["related_pairs"] == 1  # band neutrophil ~ neutrophil: hierarchy masking is active

    items, obj, fields = _stream(cells["shards"].pattern, "keep")
    assert len(items) == 36
    keep = obj.parts["keep"]
    names = {j: k for k, j in fields.index.items()}
    for it in items:
        row = int(it["index"])
        expected = data.group_names[data.group_of_row[row]]
        if expected.startswith("row:"):  # no label: its own group, distinct from every other sample
            assert it["group"] == -(row + 1)
        else:
            assert names[it["group"]] == expected
    # the same relations, numbered by the shards' vocabulary
    groups = torch.tensor(sorted({it["group"] for it in items if it["group"] >= 0}))
    related = keep.relation_mask(groups)
    pairs = {(names[int(a)], names[int(b)]) for a, b in zip(*torch.nonzero(related, as_tuple=True), strict=True)}
    assert pairs == {("micro:band_neutrophil", "micro:neutrophil"), ("micro:neutrophil", "micro:band_neutrophil")}


def test_softclip_vectors_from_shards_equal_the_manifest_path(cells: dict) -> None:
    from medvlp.data.manifest import read_manifest
    from medvlp.objectives.soft import SoftClipObjective

    m = read_manifest(cells["manifest"])
    data = SoftClipObjective().data_hooks(m)
    items, _, _ = _stream(cells["shards"].pattern, "softclip")
    for it in items:
        assert torch.equal(it["soft_labels"], data.row_fields(int(it["index"]))["soft_labels"])


def test_missing_vocabulary_and_group_batches_are_refused(cells: dict, tmp_path: Path) -> None:
    import shutil

    from medvlp.config import TrainConfig
    from medvlp.train import pretrain

    old = tmp_path / "old-shards"
    shutil.copytree(cells["shards"].index.parent, old)
    index = json.loads((old / "shards.json").read_text())
    del index["vocabulary"]  # shards written before the vocabulary existed
    (old / "shards.json").write_text(json.dumps(index))
    for objective in ("keep", "softclip"):
        with pytest.raises(ConfigError, match="vocabulary.*medvlp data shard"):
            pretrain(TrainConfig(domain="microscopy", data=str(old), objective=objective, steps=1, batch_size=8,
                                 out=str(tmp_path / objective), workers=0, eval=False), quiet=True)
    with pytest.raises(ConfigError, match="batching=groups needs a manifest"):
        pretrain(TrainConfig(domain="microscopy", data=cells["shards"].pattern, objective="keep", steps=1,
                             batch_size=8, out=str(tmp_path / "g"), workers=0, eval=False,
                             extra={"keep": {"batching": "groups"}}), quiet=True)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args: list[str], out: Path, nproc: int) -> None:
    tail = ["-m", "medvlp", "pretrain", *args, "--out", str(out)]
    cmd = [sys.executable, *tail] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *tail]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=200)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("objective", ["keep", "softclip"])
def test_two_processes_over_shards_equal_one(cells: dict, tmp_path: Path, objective: str) -> None:
    """The stream's global order does not depend on the world size, and the loss gathers groups (label
    vectors) from every rank: 2 processes x 8 must train exactly as 1 process x 16."""
    args = ["--domain", "microscopy", "--data", cells["shards"].pattern, "--objective", objective, "--steps", "4",
            "--batch-size", "16", "--seed", "0", "--device", "cpu", "--workers", "0", "--no-eval", "--log-every",
            "1", "--quiet", "--threads", "1", "--precision", "fp32", "--warmup", "0"]
    _run(args, tmp_path / "one", 1)
    _run(args, tmp_path / "two", 2)
    wa = load_file(tmp_path / "one" / "model" / "open_clip_model.safetensors")
    wb = load_file(tmp_path / "two" / "model" / "open_clip_model.safetensors")
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-4, f"{objective}: 2-process weights differ from 1-process by {worst}"
    recs = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [round(r["loss"], 4) for r in recs] == [round(r["loss"], 4) for r in one]
    if objective == "keep":  # related groups met in the global batch were masked on both layouts
        assert sum(r["keep_related_masked"] for r in recs) > 0
        assert [r["keep_masked"] for r in recs] == [r["keep_masked"] for r in one]
