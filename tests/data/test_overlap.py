"""`medvlp data overlap` / find_overlap: exact, near (rotated, flipped, re-compressed) and patient overlap."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medvlp.cli.main import main
from medvlp.data.overlap import find_overlap


def _scene(seed: int, size: int = 96) -> np.ndarray:
    """A structured image (blobs and gradients) so that pHash has something to see."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        img += rng.uniform(0.2, 1.0, 3) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None]
    img += rng.uniform(0, 0.5) * xx[..., None]
    return (np.clip(img / img.max(), 0, 1) * 255).astype(np.uint8)


def test_find_overlap_kinds(tmp_path: Path) -> None:
    d = tmp_path / "img"
    d.mkdir()
    base = [_scene(s) for s in range(4)]
    for k, arr in enumerate(base):
        Image.fromarray(arr).save(d / f"t{k}.png")
    (d / "e_copy.png").write_bytes((d / "t0.png").read_bytes())  # same file bytes
    Image.fromarray(base[1]).save(d / "e_resaved.bmp")  # same pixels, other format
    Image.fromarray(np.rot90(base[2])).save(d / "e_rot.png")
    Image.fromarray(base[3][:, ::-1]).save(d / "e_flip_jpeg.jpg", quality=70)  # flipped + JPEG
    Image.fromarray(np.rot90(base[2], 2)).save(d / "e_rot180.jpg", quality=85)
    for s in (10, 11, 12):
        Image.fromarray(_scene(s)).save(d / f"e_other{s}.png")
    train = pd.DataFrame({"image": [f"img/t{k}.png" for k in range(4)], "patient": ["A", "B", "C", "D"]})
    ev_images = ["e_copy.png", "e_resaved.bmp", "e_rot.png", "e_flip_jpeg.jpg", "e_rot180.jpg",
                 "e_other10.png", "e_other11.png", "e_other12.png"]
    ev = pd.DataFrame({"image": [f"img/{x}" for x in ev_images], "patient": ["X", "Y", "Z", "W", "V", "U", "D", "T"]})
    train.to_csv(tmp_path / "train.csv", index=False)
    ev.to_csv(tmp_path / "eval.csv", index=False)
    report = find_overlap(tmp_path / "train.csv", tmp_path / "eval.csv")
    got = {(p.kind, p.train_row, p.eval_row) for p in report.pairs}
    assert ("file", 0, 0) in got and ("pixels", 1, 1) in got
    assert ("near", 2, 2) in got and ("near", 3, 3) in got and ("near", 2, 4) in got
    assert ("patient", 3, 6) in got
    # different images are not near duplicates
    assert not any(p.kind in ("file", "pixels", "near") and p.eval_row >= 5 for p in report.pairs)
    assert report.counts() == {"file": 1, "pixels": 1, "near": 3, "patient": 1, "eval_rows_affected": 6}
    assert report.to_dict()["counts"]["near"] == 3

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["data", "overlap", str(tmp_path / "train.csv"), str(tmp_path / "eval.csv"),
                  "--out", str(tmp_path / "pairs.csv")])
        except SystemExit as e:
            assert e.code == 0, err.getvalue()
    assert "near: 3" in out.getvalue()
    assert len(pd.read_csv(tmp_path / "pairs.csv")) == 6
