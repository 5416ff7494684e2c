"""WebDataset shards (medvlp.data.shards): members, counts, round trip, bad rows, backends."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from medvlp.data.manifest import read_manifest
from medvlp.data.shards import read_shard, shard_pattern, write_shards
from medvlp.errors import ConfigError, DataError
from medvlp.io import read_image

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _corpus(tmp_path: Path) -> Path:
    """7 usable rows (4 PNG, 2 JPEG, 1 TIFF) and 2 bad ones (missing file, empty caption)."""
    img = tmp_path / "img"
    img.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(img / f"g{i}.png")
        rows.append((f"img/g{i}.png", ["a chest x-ray showing pneumonia.", f"caption {i}"], "pneumonia"))
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(img / f"c{i}.jpg", quality=90)
        rows.append((f"img/c{i}.jpg", [f"jpeg {i}"], "normal"))
    tifffile.imwrite(img / "t.tif", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), photometric="rgb")
    rows.append(("img/t.tif", ["a tiff"], "normal"))
    rows.append(("img/missing.png", ["x"], "normal"))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(img / "nocap.png")
    rows.append(("img/nocap.png", [], "normal"))
    df = pd.DataFrame(
        {
            "image": [r[0] for r in rows],
            "caption": [json.dumps(r[1]) for r in rows],
            "label": [r[2] for r in rows],
            "patient": [f"p{i // 2}" for i in range(len(rows))],
            "split": ["train"] * 6 + ["val"] * 3,
            "age": [str(30 + i) for i in range(len(rows))],
            "fitzpatrick_type": ["III"] * len(rows),
        }
    )
    df.loc[df["image"] == "img/nocap.png", "caption"] = ""
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    return path


def test_write_and_read_back_members_counts_and_content(tmp_path: Path) -> None:
    path = _corpus(tmp_path)
    out = tmp_path / "shards"
    summary = write_shards(path, out, shard_size=3, shuffle=False, backend="tarfile", max_bad_fraction=0.5)
    assert summary.backend == "tarfile"
    assert [p.name for p in summary.shards] == ["000000.tar", "000001.tar", "000002.tar"]
    assert summary.per_shard == [3, 3, 1] and summary.samples == 7 and summary.rows == 9
    assert summary.image_formats == {"png": 5, "jpg": 2}
    assert summary.pattern == str(out / "{000000..000002}.tar")
    assert [(s["row"], s["reason"].split(":")[0]) for s in summary.skipped] == [
        (7, "image file not found"),
        (8, "empty caption"),
    ]
    bad = [json.loads(line) for line in (out / "bad_samples.jsonl").read_text().splitlines()]
    assert [b["image"] for b in bad] == ["img/missing.png", "img/nocap.png"]

    # Raw tar view: every key has exactly one image member, one txt, one json; nothing else.
    names = []
    for shard in summary.shards:
        with tarfile.open(shard) as tar:
            names.append(tar.getnames())
    assert [len(n) for n in names] == [9, 9, 3]
    keys: dict[str, set[str]] = {}
    for n in sum(names, []):
        key, _, ext = n.partition(".")
        keys.setdefault(key, set()).add(ext)
    assert sorted(keys) == [f"{i:09d}" for i in range(7)]
    assert [sorted(v) for v in keys.values()] == [["json", "png", "txt"]] * 4 + [
        ["jpg", "json", "txt"]
    ] * 2 + [["json", "png", "txt"]]

    samples = [s for shard in summary.shards for s in read_shard(shard)]
    df = pd.read_csv(path)
    for s in samples:
        i = int(s["__key__"])
        src = tmp_path / df["image"][i]
        assert s["txt"] == json.loads(df["caption"][i])
        meta = s["json"]
        assert meta["label"] == df["label"][i] and meta["patient"] == df["patient"][i]
        assert meta["split"] == df["split"][i] and meta["image"] == df["image"][i]
        assert meta["concepts"] is None
        assert meta["metadata"] == {"age": str(30 + i), "fitzpatrick_type": "III"}
        if src.suffix in (".png", ".jpg"):
            assert s.get("png", s.get("jpg")) == src.read_bytes()  # stored unchanged
        else:  # TIFF: decoded and stored as RGB PNG with the same pixels
            decoded = np.asarray(Image.open(io.BytesIO(s["png"])))
            np.testing.assert_array_equal(decoded, np.asarray(read_image(src)))
            assert decoded.shape == (8, 8, 3)
    index = json.loads((out / "shards.json").read_text())
    assert index["per_shard"] == [3, 3, 1] and index["samples"] == 7 and index["skipped"] == 2
    assert index["pattern"] == summary.pattern


def test_backends_write_identical_archives_and_webdataset_reads_them(tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    path = _corpus(tmp_path)
    a = write_shards(path, tmp_path / "a", shard_size=4, seed=3, backend="webdataset", max_bad_fraction=0.5)
    b = write_shards(path, tmp_path / "b", shard_size=4, seed=3, backend="tarfile", max_bad_fraction=0.5)
    assert a.backend == "webdataset" and b.backend == "tarfile"
    assert [p.read_bytes() for p in a.shards] == [p.read_bytes() for p in b.shards]
    got = list(wds.WebDataset(a.pattern, shardshuffle=False))
    assert len(got) == 7
    assert {k for k in got[0] if not k.startswith("__")} in ({"png", "txt", "json"}, {"jpg", "txt", "json"})
    labels = sorted(json.loads(s["json"])["label"] for s in got)
    assert labels == ["normal"] * 3 + ["pneumonia"] * 4


def test_shuffle_is_seeded_and_split_selects_rows(tmp_path: Path) -> None:
    path = _corpus(tmp_path)

    def keys(seed: int, name: str, **kw: object) -> list[str]:
        s = write_shards(path, tmp_path / name, seed=seed, backend="tarfile", max_bad_fraction=0.5, **kw)
        return [x["__key__"] for shard in s.shards for x in read_shard(shard)]

    k0, k0b, k1 = keys(0, "s0"), keys(0, "s0b"), keys(1, "s1")
    assert k0 == k0b and k0 != k1 and sorted(k0) == sorted(k1) == [f"{i:09d}" for i in range(7)]
    assert keys(0, "plain", shuffle=False) == sorted(k0)
    train = write_shards(path, tmp_path / "train", split="train", backend="tarfile")
    assert train.samples == 6 and train.rows == 6 and train.skipped == []
    assert not (tmp_path / "train" / "bad_samples.jsonl").exists()
    with pytest.raises(DataError, match="no rows with split 'test'; its splits are: train, val"):
        write_shards(path, tmp_path / "t", split="test")


def test_too_many_bad_rows_stop_and_leave_no_shards(tmp_path: Path) -> None:
    path = _corpus(tmp_path)
    out = tmp_path / "bad"
    with pytest.raises(DataError, match=r"2 of 9 rows are unusable .*first: row 7: image file not found"):
        write_shards(path, out, shard_size=2, shuffle=False, backend="tarfile", max_bad_fraction=0.15)
    assert sorted(p.name for p in out.iterdir()) == ["bad_samples.jsonl"]


def test_existing_shards_need_overwrite_and_multilabel_json(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(img)
    m = tmp_path / "ml.jsonl"
    rows = [
        {
            "image": "a.png",
            "caption": ["x"],
            "label": ["atelectasis", "effusion"],
            "concepts": ["c:1", "c:2"],
        },
        {"image": "a.png", "caption": ["y"], "label": [], "concepts": None},
    ]
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "s"
    first = write_shards(m, out, shard_size=1, shuffle=False, backend="tarfile")
    assert len(first.shards) == 2
    with pytest.raises(ConfigError, match="already holds 2 shard"):
        write_shards(m, out, shard_size=5, backend="tarfile")
    again = write_shards(m, out, shard_size=5, shuffle=False, backend="tarfile", overwrite=True)
    assert sorted(p.name for p in out.glob("*.tar")) == ["000000.tar"]  # stale second shard gone
    assert again.pattern == str(out / "000000.tar")
    js = [s["json"] for s in read_shard(again.shards[0])]
    assert js[0]["label"] == ["atelectasis", "effusion"] and js[0]["concepts"] == ["c:1", "c:2"]
    assert js[1]["label"] == [] and js[1]["concepts"] is None
    with pytest.raises(ConfigError, match="at least 1"):
        write_shards(m, tmp_path / "z", shard_size=0)
    with pytest.raises(ConfigError, match="unknown shard backend"):
        write_shards(m, tmp_path / "z", backend="zip")
    assert shard_pattern(out, 0) == "" and shard_pattern("d", 12) == str(Path("d") / "{000000..000011}.tar")


def test_real_slide_tile_and_microscopy_channels(tmp_path: Path) -> None:
    svs = SHARED / "fixtures" / "wsi" / "small.svs"
    chans = [SHARED / "fixtures" / "microscopy" / f"D03f00d{c}.tif" for c in range(3)]
    if not svs.is_file() or not all(c.is_file() for c in chans):
        pytest.skip(f"real fixtures not found under {SHARED}")
    pytest.importorskip("tifffile")
    m = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "image": [f"{svs.resolve()}#0,0,0,8", ";".join(str(c.resolve()) for c in chans)],
            "caption": ['["a tile"]', '["three channels"]'],
        }
    ).to_csv(m, index=False)
    s = write_shards(read_manifest(m).subset([0]), tmp_path / "wsi", shuffle=False, backend="tarfile")
    tile = np.asarray(Image.open(io.BytesIO(read_shard(s.shards[0])[0]["png"])))
    assert tile.shape == (8, 8, 3)
    np.testing.assert_array_equal(tile, np.asarray(read_image(f"{svs.resolve()}#0,0,0,8")))
    s = write_shards(
        read_manifest(m).subset([1]), tmp_path / "mc", shuffle=False, backend="tarfile", reader="multichannel"
    )
    rgb = np.asarray(Image.open(io.BytesIO(read_shard(s.shards[0])[0]["png"])))
    assert rgb.shape == (512, 512, 3) and rgb.std() > 0
