"""Images that pass the up-front check but fail to decode later (truncated after a good header).

Without the decoded-image cache (``cache="none"``) they are only met in a loader worker: the item is
replaced by a deterministic good one, the bad row is logged once in ``bad_samples.jsonl`` and counted
against ``--max-bad-fraction``; evaluation leaves such rows out and says how many.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvlp.config import TrainConfig
from medvlp.data.dataset import ImageOptions, ImageTextDataset, collate, take_bad_rows
from medvlp.data.manifest import check_row, read_manifest
from medvlp.errors import DataError
from medvlp.train import pretrain

LABELS = ("debris", "mucus")


def _manifest(d: Path, n: int, truncated: tuple[int, ...]) -> Path:
    """``n`` random 32 px PNGs (two labels, one caption each); the rows in ``truncated`` are cut to half
    their bytes, which keeps the PNG signature and header intact."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["image,caption,label"]
    for i in range(n):
        p = d / f"img{i}.png"
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(p)
        if i in truncated:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        lab = LABELS[i % 2]
        rows.append(f"{p.name},an image of {lab} number {i},{lab}")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    return d / "m.csv"


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(domain="pathology", data=str(data), steps=3, batch_size=4, out=str(out), workers=0, log_every=1,
                threads=2, cache="none", eval=False)
    return TrainConfig(**{**base, **kw})


def test_truncated_png_passes_the_precheck_but_not_the_reader(tmp_path: Path) -> None:
    m = read_manifest(_manifest(tmp_path, 2, truncated=(1,)))
    assert check_row(m, 1, read=False) is None  # what the dataset checks up front
    assert "truncated" in check_row(m, 1, read=True)


def test_bad_item_is_replaced_by_the_next_good_one(tmp_path: Path) -> None:
    m = read_manifest(_manifest(tmp_path, 6, truncated=(2, 3)))
    ds = ImageTextDataset(m, None, ImageOptions(size=32, augment=False), train=False, cache="none",
                          need_captions=False, progress=False, max_bad_fraction=0.5)
    assert len(ds) == 6 and ds.bad == []  # nothing is decoded up front
    item = ds[2]
    assert item["index"] == 4 and torch.equal(item["image"], ds[4]["image"])  # rows 2 and 3 are broken
    assert [r["row"] for r in item["bad_rows"]] == [2, 3]
    assert all("unreadable image" in r["reason"] and "truncated" in r["reason"] for r in item["bad_rows"])
    assert "bad_rows" not in ds[0]
    wrap = ds[5]  # the last good one is itself; a substitute search wraps around the end
    assert wrap["index"] == 5
    batch = collate([ds[k] for k in range(6)])
    assert batch["image"].shape == (6, 3, 32, 32)
    assert sorted(r["row"] for r in batch["bad_rows"]) == [2, 3, 3]  # item 2 meets both, item 3 only 3
    logged: list[dict] = []
    take_bad_rows(ds, batch, logged.append)
    assert "bad_rows" not in batch
    assert [r["row"] for r in logged] == [2, 3] and [r["row"] for r in ds.bad] == [2, 3]  # once each
    take_bad_rows(ds, collate([ds[2], ds[3]]), logged.append)  # a later epoch / another worker
    assert len(logged) == 2 and len(ds.bad) == 2
    assert "bad_rows" not in collate([ds[0], ds[1]])  # normally absent


def test_take_bad_rows_stops_past_max_bad_fraction(tmp_path: Path) -> None:
    m = read_manifest(_manifest(tmp_path, 6, truncated=(1, 4)))
    ds = ImageTextDataset(m, None, ImageOptions(size=32, augment=False), train=False, cache="none",
                          need_captions=False, progress=False, max_bad_fraction=0.2)
    take_bad_rows(ds, collate([ds[1]]), None)  # 1 of 6 = 17%: still under
    with pytest.raises(DataError, match="max-bad-fraction") as info:
        take_bad_rows(ds, collate([ds[4]]), None)
    assert "2 of 6 rows" in str(info.value) and "row 1" in str(info.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_without_cache_survives_a_truncated_image(tmp_path: Path, workers: int) -> None:
    data = _manifest(tmp_path / "data", 8, truncated=(5,))
    result = pretrain(_cfg(data, tmp_path / "run", workers=workers, max_bad_fraction=0.2), quiet=True)
    run = tmp_path / "run"
    assert result.steps == 3  # 3 steps x 4 = 1.5 epochs of 8 rows: row 5 is met in epoch 0 and maybe again
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    logged = [json.loads(x) for x in (run / "bad_samples.jsonl").read_text().splitlines()]
    assert len(logged) == 1
    assert logged[0]["row"] == 5 and logged[0]["image"] == "img5.png" and "truncated" in logged[0]["reason"]
    assert result.info["n_bad"] == 1


def test_training_with_too_many_undecodable_images_stops(tmp_path: Path) -> None:
    data = _manifest(tmp_path / "data", 8, truncated=(1, 2, 6))
    with pytest.raises(DataError, match="--max-bad-fraction") as info:
        pretrain(_cfg(data, tmp_path / "run", max_bad_fraction=0.2), quiet=True)
    assert "of 8 rows" in str(info.value)


def test_embedding_leaves_late_bad_rows_out(tmp_path: Path) -> None:
    from medvlp.eval.embedding import embed_dataset
    from medvlp.models import create_model

    m = read_manifest(_manifest(tmp_path, 6, truncated=(3,)))
    model = create_model("tiny", seed=0)
    opts = ImageOptions(size=model.spec.image_size, augment=False)
    ds = ImageTextDataset(m, None, opts, train=False, cache="none", need_captions=False, progress=False,
                          max_bad_fraction=1.0)
    feats = embed_dataset(model, ds, batch_size=4)
    assert feats.shape[0] == 5 and [ds.row_of(k) for k in range(len(ds))] == [0, 1, 2, 4, 5]
    assert [b["row"] for b in ds.bad] == [3]
    cached = ImageTextDataset(m, None, opts, train=False, cache="ram", need_captions=False, progress=False,
                              max_bad_fraction=1.0)
    assert torch.allclose(feats, embed_dataset(model, cached, batch_size=4), atol=1e-5)  # the same rows


def test_eval_zeroshot_says_how_many_rows_it_could_not_read(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from medvlp.cli.main import main
    from medvlp.models import create_model

    model_dir = tmp_path / "model"
    create_model("tiny", seed=0).save(model_dir, extra={"domain": "pathology"})
    data = _manifest(tmp_path / "data", 8, truncated=(3,))
    out = tmp_path / "metrics.json"
    with pytest.raises(SystemExit) as info:
        main(["eval", "zeroshot", "--model", str(model_dir), "--data", str(data), "--n-boot", "0",
              "--prompt-subsets", "0", "--json", str(out)])
    err = capsys.readouterr().err
    assert info.value.code in (None, 0), err
    assert "1 of 8 rows could not be read (first: row 3: unreadable image:" in err
    assert "they are left out" in err
    metrics = json.loads(out.read_text())
    assert metrics["n_unreadable"] == 1 and metrics["n"] == 7 and metrics["n_rows"] == 8
    assert metrics["unreadable_first"]["row"] == 3
