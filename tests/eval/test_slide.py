"""Whole-slide zero-shot: aggregation math, neighbour smoothing, the embedding cache, heatmaps, metrics, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlp.errors import ConfigError, DataError
from medvlp.eval.slide import (
    SlideResult,
    SlideZeroShot,
    aggregate,
    evaluate_slides,
    heatmap_image,
    neighbour_smooth,
    slide_probabilities,
    slide_zero_shot,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
LABELS = ["adipose tissue", "mucus", "debris"]


def test_topk_and_fraction_match_hand_computation() -> None:
    s = np.array([[1.0, 4.0, 0.0], [3.0, 2.0, 0.5], [5.0, 1.0, 0.2], [2.0, 6.0, 0.1]])
    # column 0 sorted: 5, 3, 2, 1; column 1: 6, 4, 2, 1; column 2: 0.5, 0.2, 0.1, 0
    assert aggregate(s, "topk_mean", 2).tolist() == [4.0, 5.0, 0.35]
    assert aggregate(s, "topk_sum", 3).tolist() == pytest.approx([10.0, 12.0, 0.8])
    assert aggregate(s, "topk_mean", 100).tolist() == pytest.approx([2.75, 3.25, 0.2])  # K capped at N
    assert aggregate(s, "fraction").tolist() == [0.5, 0.5, 0.0]  # argmax rows: 1, 0, 0, 1
    p = slide_probabilities(np.array([1.0, 2.0, 0.0]), "topk_mean")
    e = np.exp([1.0, 2.0, 0.0])
    assert p.tolist() == pytest.approx((e / e.sum()).tolist())
    assert slide_probabilities(np.array([0.25, 0.75]), "fraction").tolist() == [0.25, 0.75]
    with pytest.raises(ConfigError, match="topk_mean"):
        aggregate(s, "max")
    with pytest.raises(DataError):
        aggregate(np.zeros((0, 3)), "topk_mean")


def test_neighbour_smoothing_on_a_known_grid() -> None:
    # 3x3 grid of tiles (step 100) with values 0..8 row-major, plus a lone tile far away
    coords = np.array([[x * 100, y * 100] for y in range(3) for x in range(3)] + [[900, 900]])
    v = np.arange(10, dtype=float)
    out = neighbour_smooth(coords, v, 100)
    assert out[4] == pytest.approx(np.mean(range(9)))  # centre: all nine
    assert out[0] == pytest.approx(np.mean([0, 1, 3, 4]))  # corner: itself + 3 neighbours
    assert out[1] == pytest.approx(np.mean([0, 1, 2, 3, 4, 5]))  # edge: 6 tiles
    assert out[9] == 9.0  # no neighbours: unchanged
    two = neighbour_smooth(coords, np.stack([v, -v], 1), 100)
    assert two[:, 0].tolist() == pytest.approx(out.tolist()) and two[:, 1].tolist() == pytest.approx((-out).tolist())
    # a missing tile is not counted as zero
    out2 = neighbour_smooth(coords[[0, 1]], np.array([2.0, 4.0]), 100)
    assert out2.tolist() == [3.0, 3.0]


def test_heatmap_blend_keeps_uncovered_pixels() -> None:
    thumb = Image.new("RGB", (6, 4), (200, 200, 200))
    vals = np.full((4, 6), np.nan, dtype=np.float32)
    vals[:, :3] = 1.0
    img = heatmap_image(thumb, vals, cmap="inferno", alpha=0.5)
    arr = np.asarray(img)
    assert img.size == (6, 4)
    assert (arr[:, 3:] == 200).all()  # no tile: the thumbnail as it is
    import matplotlib

    top = np.asarray(matplotlib.colormaps["inferno"](1.0)[:3]) * 255
    assert np.abs(arr[0, 0] - (0.5 * 200 + 0.5 * top)).max() <= 1


@pytest.fixture()
def slide_path(tmp_path: Path) -> Path:
    from wsi_helpers import write_pyramid

    rng = np.random.default_rng(0)
    l0 = np.full((512, 768, 3), 240, np.uint8)
    l0[:512, :512] = (rng.random((512, 512, 3)) * 60 + np.array([170, 70, 140])).astype(np.uint8)
    return write_pyramid(tmp_path / "slide1.tif", [l0, l0[::2, ::2].copy()], mpp=0.5)


@pytest.fixture(scope="module")
def tiny():
    from medvlp.models import create_model

    return create_model("tiny", seed=0).eval()


def test_slide_zero_shot_cache_heatmaps_and_outputs(tiny, slide_path: Path, tmp_path: Path) -> None:
    calls = {"n": 0}
    orig = tiny.encode_image

    def counting(*a, **k):
        calls["n"] += a[0].shape[0]
        return orig(*a, **k)

    import torch

    saved_proj = tiny.clip.visual.proj.detach().clone()
    tiny.encode_image = counting
    try:
        out = tmp_path / "zs"
        r1 = slide_zero_shot(tiny, [slide_path], LABELS, card="pathology", out_dir=out, k=2, batch_size=3)[0]
        assert r1.n_tiles == 4 and not r1.cache_hit  # 2x2 tissue tiles of 256 px at 0.5 mpp
        assert calls["n"] == 4
        r2 = slide_zero_shot(tiny, [slide_path], LABELS, card="pathology", out_dir=out, k=2)[0]
        assert r2.cache_hit and calls["n"] == 4  # second call: read from the HDF5 cache, no re-embedding
        assert r2.probabilities == pytest.approx(r1.probabilities)
        # a different model identity (changed weights) misses the cache
        with torch.no_grad():
            tiny.clip.visual.proj.mul_(1.01)
        r3 = SlideZeroShot(tiny, LABELS, card="pathology").score(slide_path, out / "tiles")
        assert not r3.cache_hit and calls["n"] == 8
    finally:
        del tiny.encode_image
        with torch.no_grad():
            tiny.clip.visual.proj.copy_(saved_proj)

    import h5py

    with h5py.File(out / "tiles" / "slide1.h5", "r") as f:
        assert f["coords"].shape == (4, 2)
        keys = list(f["embeddings"])
        assert len(keys) == 2 and f["embeddings"][keys[0]]["features"].shape == (4, tiny.embed_dim)
    # slide score from tile logits by hand
    probs = r1.tile_probabilities
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1.0)
    runner = SlideZeroShot(tiny, LABELS, card="pathology", k=2)
    feats, plan, hit = runner.embeddings(slide_path, out / "tiles" / "slide1.h5")
    assert hit
    logits, _ = runner.tile_scores(feats, plan.coords, plan.patch_size_level0)
    top2 = np.sort(logits, axis=0)[-2:].mean(0)
    expect = np.exp(top2 - top2.max()) / np.exp(top2 - top2.max()).sum()
    assert [r1.probabilities[lab] for lab in LABELS] == pytest.approx(expect.tolist(), abs=1e-6)
    # heatmaps: one per label, the thumbnail's size
    from medvlp.io.wsi import open_slide

    with open_slide(slide_path) as s:
        tsize = s.get_thumbnail(1024).size
    assert set(r1.heatmaps) == set(LABELS)
    for p in r1.heatmaps.values():
        assert Image.open(p).size == tsize
    table = json.loads((out / "slides.json").read_text())
    assert table[0]["top_label"] == r2.top_label and table[0]["cache_hit"] is True
    rows = (out / "slides.csv").read_text().splitlines()
    assert rows[0].startswith("slide,top_label,n_tiles") and len(rows) == 2


def test_fraction_and_smoothing_options(tiny, slide_path: Path, tmp_path: Path) -> None:
    runner = SlideZeroShot(tiny, LABELS, card="pathology", aggregate="fraction", smooth=True)
    r = runner.score(slide_path, tmp_path / "tiles")
    counts = np.bincount(r.tile_probabilities.argmax(1), minlength=3) / r.n_tiles
    assert [r.probabilities[lab] for lab in LABELS] == pytest.approx(counts.tolist())
    assert sum(r.probabilities.values()) == pytest.approx(1.0) and r.smoothed


def _result(name: str, p: list[float]) -> SlideResult:
    return SlideResult(slide=name, labels=["tumour", "normal"], probabilities={"tumour": p[0], "normal": p[1]},
                       scores={}, top_label="", n_tiles=1, aggregate="topk_mean", k=1, smoothed=False,
                       cache_hit=False, tiles_file="", seconds=0.0)


def test_slide_level_metrics_over_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "slides.csv").write_text("slide,label\na.svs,tumour\nb.svs,normal\nc.svs,tumour\nd.svs,other\n")
    results = [_result(str(tmp_path / "a.svs"), [0.9, 0.1]), _result(str(tmp_path / "b.svs"), [0.3, 0.7]),
               _result(str(tmp_path / "c.svs"), [0.4, 0.6]), _result(str(tmp_path / "d.svs"), [0.5, 0.5]),
               _result(str(tmp_path / "x.svs"), [0.5, 0.5])]
    rep = evaluate_slides(results, tmp_path / "slides.csv", n_boot=20)
    assert rep["n"] == 3 and rep["accuracy"]["value"] == pytest.approx(2 / 3)
    assert rep["n_excluded"] == 1 and rep["excluded_labels"] == {"other": 1} and rep["n_unmatched"] == 1
    assert rep["bootstrap"]["unit"] == "slide"
    (tmp_path / "bad.csv").write_text("image,label\na.svs,tumour\n")
    with pytest.raises(DataError, match="'slide' and 'label'"):
        evaluate_slides(results, tmp_path / "bad.csv")


def test_wsi_zeroshot_command(tiny, slide_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from medvlp.cli import wsi_zeroshot

    model_dir = tiny.save(tmp_path / "model", extra={"domain": "pathology"})
    app = typer.Typer()
    app.callback()(lambda: None)
    wsi_zeroshot.register(app)
    (tmp_path / "m.csv").write_text(f"slide,label\n{slide_path.name},mucus\n")
    from typer.testing import CliRunner

    out = tmp_path / "out"
    args = ["zeroshot", "--model", str(model_dir), "--out", str(out), "--labels", "mucus,debris",
            "--aggregate", "topk_sum", "--k", "3", "--n-boot", "10"]
    res = CliRunner().invoke(app, [*args, str(slide_path), str(tmp_path / "missing.tif")])
    assert res.exit_code == 2, res.output  # one slide failed, the other is kept
    table = json.loads((out / "slides.json").read_text())
    assert len(table) == 1 and table[0]["aggregate"] == "topk_sum" and table[0]["k"] == 3
    assert len(list((out / "heatmaps").glob("slide1__*.png"))) == 2
    res = CliRunner().invoke(app, [*args, "--manifest", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 1 and set(metrics["accuracy"]) == {"value", "ci_low", "ci_high"}
    assert "cached" in res.output
