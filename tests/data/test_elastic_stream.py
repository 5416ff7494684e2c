"""Elastic shard streaming: the global order does not depend on ranks or workers, a resume on another
world size continues exactly, a seek decodes nothing it skips, and bad samples are remembered."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import medvlp.data.stream as stream_mod
from medvlp.data.dataset import ImageOptions, take_bad_rows
from medvlp.data.manifest import read_manifest
from medvlp.data.shardio import IDX_SUFFIX, build_index, read_sample
from medvlp.data.shards import write_shards
from medvlp.data.stream import ShardStream
from medvlp.errors import DataError


def _tok(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), ord(t[0]) if t else 0] for t in texts], dtype=torch.long)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from medvlp.demos.corpora import demo_manifest

    root = tmp_path_factory.mktemp("elastic")
    path = demo_manifest("pathology", n_per_class=8, size=48, out_dir=root / "demo", progress=False,
                         variant="tiles")
    m = read_manifest(path)
    s = write_shards(m, root / "shards", shard_size=7)  # 48 rows -> 7 shards, 36 training samples
    return {"pattern": s.pattern, "shards": s.shards, "train": {i for i in range(len(m))
                                                                 if m.df["split"].iloc[i] == "train"}}


def _stream(pattern: str, **kw: object) -> ShardStream:
    return ShardStream(pattern, _tok, ImageOptions(size=16), seed=4, shuffle_buffer=10, **kw)  # type: ignore[arg-type]


def _global_steps(pattern: str, *, world: int, workers: int, batch: int, total: int, start: int = 0,
                  state: dict | None = None, **kw: object) -> list[list[tuple[int, int, int]]]:
    """Every step's global batch (ranks' shares concatenated), as (key, image checksum, caption length)."""
    per_rank = []
    for rank in range(world):
        ds = _stream(pattern, rank=rank, world=world, **kw)
        ds.configure(batch, total, start, state=state)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        per_rank.append([[(int(k), int(img.sum()), int(t[0])) for k, img, t in
                          zip(b["index"], b["image"], b["text"], strict=True)] for b in loader])
    return [sum((r[s] for r in per_rank), []) for s in range(total - start)]


def test_order_does_not_depend_on_ranks_or_workers(shards: dict) -> None:
    one = _global_steps(shards["pattern"], world=1, workers=0, batch=8, total=7)
    assert len(one) == 7 and all(len(s) == 8 for s in one)
    flat = [k for s in one for k, _, _ in s]
    assert sorted(flat[:36]) == sorted(shards["train"])  # the first 36 positions are one epoch
    assert flat[36:] != flat[:20]  # epoch 1 has its own order
    assert _global_steps(shards["pattern"], world=2, workers=2, batch=8, total=7) == one
    assert _global_steps(shards["pattern"], world=4, workers=1, batch=8, total=7) == one
    # augmentation and caption come with the position, not with the process that decodes the sample
    other_seed = ShardStream(shards["pattern"], _tok, ImageOptions(size=16), seed=5, shuffle_buffer=10)
    other_seed.configure(8, 2)
    assert [int(k) for k in next(iter(other_seed))["index"]] != [k for k, _, _ in one[0]]


def test_resume_on_another_world_size_sees_the_remaining_samples(shards: dict) -> None:
    full = _global_steps(shards["pattern"], world=2, workers=1, batch=6, total=9)
    killed = _stream(shards["pattern"], rank=0, world=2)
    killed.configure(6, 9)
    state = killed.position(5)  # what the checkpoint at step 5 records
    assert state["samples_seen"] == 30 and state["epoch_samples"] == 36 and state["bad"] == []
    json.dumps(state)  # plain values only (the checkpoint is loaded with weights_only)
    for world, workers in ((1, 0), (3, 2)):
        rest = _global_steps(shards["pattern"], world=world, workers=workers, batch=6, total=9, start=5, state=state)
        assert rest == full[5:]


def test_seek_decodes_only_what_it_yields(shards: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"decode": 0, "read": 0}
    real_decode, real_read = stream_mod.decode_image, stream_mod.read_sample

    def decode(*a: object, **k: object) -> np.ndarray:
        calls["decode"] += 1
        return real_decode(*a, **k)  # type: ignore[arg-type]

    def read(*a: object, **k: object) -> dict:
        calls["read"] += 1
        return real_read(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(stream_mod, "decode_image", decode)
    monkeypatch.setattr(stream_mod, "read_sample", read)
    ds = _stream(shards["pattern"])
    ds.configure(4, 100_002, start_step=100_000)  # 400,000 samples (11,111 epochs) already seen
    steps = [b["index"].tolist() for b in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)]
    assert len(steps) == 2 and calls == {"decode": 8, "read": 8}
    # and those are the samples at positions 400,000.. of the global order
    expect = [int(stream_mod._key_number(ds._entries(i)[j][0])) for i, j in
              (ds.ref_at(*divmod(p, ds.count)) for p in range(400_000, 400_008))]
    assert steps[0] + steps[1] == expect


def test_index_offsets_read_the_same_members_as_tarfile(shards: dict) -> None:
    first = shards["shards"][0]
    idx = json.loads(Path(str(first) + IDX_SUFFIX).read_text())
    assert idx == build_index(first) and idx["size"] == first.stat().st_size
    with tarfile.open(first) as tar:
        by_name = {i.name: tar.extractfile(i).read() for i in tar if i.isfile()}  # type: ignore[union-attr]
    for entry in idx["samples"]:
        for ext, data in read_sample(first, entry).items():
            assert by_name[f"{entry[0]}.{ext}"] == data


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_bad_samples_are_replaced_alike_and_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for s in range(2):
        with tarfile.open(tmp_path / f"{s:06d}.tar", "w") as tar:
            for i in range(10):
                key = f"{s * 10 + i:09d}"
                png = b"\x89PNG broken" if (s, i) in ((0, 3), (1, 6)) else _png(s * 10 + i)
                for ext, data in (("json", b'{"split": "train"}'), ("png", png), ("txt", b'["a caption"]')):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    pattern = str(tmp_path / "{000000..000001}.tar")
    kw = {"max_bad_fraction": 0.2}
    one = _global_steps(pattern, world=1, workers=0, batch=4, total=6, **kw)
    assert _global_steps(pattern, world=2, workers=2, batch=4, total=6, **kw) == one
    keys = [k for s in one[:5] for k, _, _ in s]  # 20 positions: one epoch, the two bad ones replaced
    assert {3, 16} - set(keys) == {3, 16} and len(set(keys)) == 18

    # the loop hands each batch's records to the stream: logged once, remembered in the position
    logged: list[dict] = []
    ds = _stream(pattern, **kw)
    ds.configure(4, 6)
    for b in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0):
        take_bad_rows(ds, b, logged.append)
    assert sorted(r["row"] for r in logged) == ["000000003", "000000016"]
    assert all(r["reason"].startswith("unreadable image") and r["shard"].endswith(".tar") for r in logged)
    state = ds.position(6)
    assert sorted(tuple(r["ref"]) for r in state["bad"]) == sorted(tuple(r["ref"]) for r in logged)

    # a resumed stream logs them again (the run folder's bad_samples.jsonl starts anew) but never decodes them
    decoded: list[bytes] = []
    real = stream_mod.decode_image
    monkeypatch.setattr(stream_mod, "decode_image", lambda data, opts: (decoded.append(data), real(data, opts))[1])
    again: list[dict] = []
    resumed = _stream(pattern, bad_log=again.append, **kw)
    resumed.configure(4, 11, 6, state=state)
    assert [r["row"] for r in again] == [r["row"] for r in state["bad"]]
    for b in torch.utils.data.DataLoader(resumed, batch_size=None, num_workers=0):
        take_bad_rows(resumed, b, again.append)
    assert len(again) == 2 and not any(d.startswith(b"\x89PNG broken") for d in decoded)
    with pytest.raises(DataError, match="max-bad-fraction"):
        strict = _stream(pattern, max_bad_fraction=0.05)
        strict.configure(4, 6)
        for b in torch.utils.data.DataLoader(strict, batch_size=None, num_workers=0):
            take_bad_rows(strict, b, None)
