"""Streaming WebDataset shards: rank/worker split, determinism, resume, bad samples, a short pretrain run."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medvlp.data.dataset import ImageOptions, load_as_array
from medvlp.data.manifest import read_manifest
from medvlp.data.shards import write_shards
from medvlp.data.stream import ShardStream, expand_braces, is_shard_pattern
from medvlp.errors import ConfigError, DataError


def _tok(texts: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: caption length and first byte (enough to check which caption was used)."""
    return torch.tensor([[len(t), ord(t[0]) if t else 0] for t in texts], dtype=torch.long)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from medvlp.demos.corpora import demo_manifest

    root = tmp_path_factory.mktemp("stream")
    path = demo_manifest("pathology", n_per_class=8, size=64, out_dir=root / "demo", progress=False,
                         variant="tiles")
    m = read_manifest(path)
    many = write_shards(m, root / "many", shard_size=5)  # 10 shards
    one = write_shards(m, root / "one", shard_size=1000)  # 1 shard: fewer shards than slots
    train_rows = {i for i in range(len(m)) if m.df["split"].iloc[i] == "train"}
    return {"m": m, "many": many.pattern, "one": one.pattern, "train": train_rows, "root": root}


def _keys(stream: ShardStream) -> list[int]:
    return [int(it["index"]) for it in stream]


def test_pattern_detection_and_expansion(demo: dict, tmp_path: Path) -> None:
    assert is_shard_pattern("shards/{000000..000099}.tar")
    assert is_shard_pattern("s3://bucket/train-{0000..0009}.tar")
    assert is_shard_pattern("pipe:curl -s https://host/a.tar")
    assert is_shard_pattern("data/one.tar") and is_shard_pattern(str(Path(demo["many"]).parent))
    assert not is_shard_pattern("data/train.csv") and not is_shard_pattern("https://host/train.csv")
    assert not is_shard_pattern(None) and not is_shard_pattern(str(tmp_path))
    assert expand_braces("a/{008..011}.tar") == ["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]
    assert expand_braces("{x,y}-{1..2}.tar::z.tar") == ["x-1.tar", "x-2.tar", "y-1.tar", "y-2.tar", "z.tar"]
    with pytest.raises(ConfigError, match="two integers"):
        expand_braces("a/{x..y}.tar")
    with pytest.raises(DataError, match="do not exist"):
        ShardStream(str(tmp_path / "{000000..000003}.tar"), _tok, ImageOptions(size=32))


@pytest.mark.parametrize("which", ["many", "one"])
def test_each_training_sample_once_per_epoch_across_ranks(demo: dict, which: str) -> None:
    opts = ImageOptions(size=32)
    per_rank = [_keys(ShardStream(demo[which], _tok, opts, seed=3, rank=r, world=2, shuffle_buffer=8))
                for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(demo["train"])  # test-split samples held out
    assert len(demo["train"]) == 36
    # counted exactly (the shards were written without --split, so the index alone would say 48)
    assert len(ShardStream(demo[which], _tok, opts)) == 36


def test_items_match_the_manifest_dataset(demo: dict) -> None:
    opts = ImageOptions(size=32, augment=False)
    items = list(ShardStream(demo["many"], _tok, opts, seed=0))
    m = demo["m"]
    assert {"index", "image", "text", "caption"} <= set(items[0])
    for it in items[:4]:
        row = int(it["index"])
        assert it["image"].dtype == torch.uint8 and tuple(it["image"].shape) == (3, 32, 32)
        expected = torch.from_numpy(load_as_array(m.image_source(row), opts)).permute(2, 0, 1)
        assert torch.equal(it["image"], expected)
        assert it["caption"] in m.captions(row)
        assert it["text"].tolist() == _tok([it["caption"]])[0].tolist()


def test_deterministic_order_and_augmentation(demo: dict) -> None:
    opts = ImageOptions(size=32)
    a = list(ShardStream(demo["many"], _tok, opts, seed=5, shuffle_buffer=8))
    b = list(ShardStream(demo["many"], _tok, opts, seed=5, shuffle_buffer=8))
    c = _keys(ShardStream(demo["many"], _tok, opts, seed=6, shuffle_buffer=8))
    assert [int(x["index"]) for x in a] == [int(x["index"]) for x in b] != c
    assert all(torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"] for x, y in zip(a, b, strict=True))


def _steps(stream: ShardStream, workers: int) -> list[list[int]]:
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return [b["index"].tolist() for b in loader]


def test_steps_resume_exactly_and_cover_epochs(demo: dict) -> None:
    opts = ImageOptions(size=16)
    full = ShardStream(demo["many"], _tok, opts, seed=1, shuffle_buffer=4)
    full.configure(batch_size=8, total_steps=10)
    steps = _steps(full, workers=0)
    assert len(steps) == 10 and all(len(s) == 8 for s in steps)
    # one worker reads one stream: the first 36 samples are one epoch (each training row once)
    flat = [k for s in steps for k in s]
    assert sorted(flat[:36]) == sorted(demo["train"])
    resumed = ShardStream(demo["many"], _tok, opts, seed=1, shuffle_buffer=4)
    resumed.configure(batch_size=8, total_steps=10, start_step=6)  # resumes inside epoch 1
    assert _steps(resumed, workers=0) == steps[6:]
    with pytest.raises(DataError, match="not divisible"):
        ShardStream(demo["many"], _tok, opts, world=2).configure(batch_size=7, total_steps=2)


def test_two_workers_resume_exactly(demo: dict) -> None:
    opts = ImageOptions(size=16)
    full = ShardStream(demo["many"], _tok, opts, seed=2, shuffle_buffer=4)
    full.configure(batch_size=4, total_steps=6)
    steps = _steps(full, workers=2)
    resumed = ShardStream(demo["many"], _tok, opts, seed=2, shuffle_buffer=4)
    resumed.configure(batch_size=4, total_steps=6, start_step=3)  # odd start: worker roles swap
    assert len(steps) == 6 and _steps(resumed, workers=2) == steps[3:]
    # the steps of one epoch (36 samples) never repeat a sample, whichever worker built them
    assert len(set(steps[0] + steps[2] + steps[4])) == 12 and not set(steps[0]) & set(steps[1])


def _png(seed: int) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, data in s.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__'].decode()}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_bad_samples_are_skipped_and_logged(tmp_path: Path) -> None:
    good = [{"__key__": f"{i:09d}".encode(), "png": _png(i), "txt": json.dumps([f"caption {i}"]).encode(),
             "json": json.dumps({"split": "train", "image": f"img{i}.png"}).encode()} for i in range(8)]
    bad_image = {"__key__": b"000000100", "png": b"\x89PNG\r\n\x1a\n not really", "txt": b'["x"]',
                 "json": json.dumps({"image": "broken.png"}).encode()}
    no_caption = {"__key__": b"000000101", "png": _png(101), "txt": b'["  "]', "json": b"{}"}
    no_image = {"__key__": b"000000102", "txt": b'["y"]', "json": b"{}"}
    _write_tar(tmp_path / "000000.tar", good[:4] + [bad_image, no_caption])
    _write_tar(tmp_path / "000001.tar", good[4:] + [no_image])
    logged: list[dict] = []
    pattern = str(tmp_path / "{000000..000001}.tar")
    stream = ShardStream(pattern, _tok, ImageOptions(size=16), bad_log=logged.append, max_bad_fraction=0.5)
    # no index beside these shards: scanned once (tar headers and json members, no image decoding)
    assert stream.count_source == "scanned shards" and len(stream) == 11
    assert sorted(_keys(stream)) == list(range(8))
    reasons = {r["row"]: r["reason"] for r in logged}
    assert set(reasons) == {"000000100", "000000101", "000000102"}
    assert reasons["000000100"].startswith("unreadable image")
    assert reasons["000000101"] == "empty caption" and reasons["000000102"].startswith("no image member")
    assert next(r for r in logged if r["row"] == "000000100")["image"] == "broken.png"
    strict = ShardStream(pattern, _tok, ImageOptions(size=16), max_bad_fraction=0.1)
    with pytest.raises(DataError, match="max-bad-fraction"):
        _keys(strict)


def test_pretrain_streams_shards(demo: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medvlp.config import TrainConfig
    from medvlp.train import pretrain

    out = tmp_path / "run"
    result = pretrain(TrainConfig(domain="pathology", data=demo["many"], steps=3, batch_size=8, eval=False,
                                  workers=0, out=str(out), log_every=1, threads=2), quiet=True)
    assert result.steps == 3 and math.isfinite(result.info["final_loss"])
    assert result.info["n_train"] == 36 and result.metrics is None
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in lines)
    assert (out / "model" / "open_clip_model.safetensors").is_file()
    # an objective that reads manifest rows and cannot build them from shards is refused by name
    import medvlp.objectives as objectives
    from medvlp.objectives.clip import ClipObjective

    class RowsOnly(ClipObjective):
        name = "rows_only_demo"
        needs_rows = True

    monkeypatch.setitem(objectives._REGISTRY, "rows_only_demo", RowsOnly)  # removed after the test
    with pytest.raises(ConfigError, match="rows_only_demo needs a manifest.*keep"):
        pretrain(TrainConfig(domain="pathology", data=demo["many"], objective="rows_only_demo", steps=1,
                             batch_size=8, out=str(tmp_path / "k"), workers=0), quiet=True)
