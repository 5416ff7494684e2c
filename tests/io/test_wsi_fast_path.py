"""The fast JPEG-tile path gives the pixels of openslide's read + resize within JPEG tolerance, on an
Aperio-like pyramid (downsamples 1, 4, 16) where a 20x tile comes from level 0 at half size; it is used
exactly where it applies and the openslide path everywhere else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openslide")


def _aperio(path: Path, side: int = 2048, tile: int = 256) -> Path:
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    base = np.stack([128 + 80 * np.sin(xx / 37.0), 128 + 80 * np.cos(yy / 23.0), 128 + 60 * np.sin((xx + yy) / 51.0)],
                    -1)
    img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    with tifffile.TiffWriter(path) as tw:
        for i, ds in enumerate((1, 4, 16)):
            level = img[::ds, ::ds]
            tw.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                     subfiletype=1 if i else 0, resolution=(1e4 / (0.25 * ds), 1e4 / (0.25 * ds)),
                     resolutionunit="CENTIMETER", metadata=None)
    return path


def test_fast_path_matches_openslide(tmp_path, monkeypatch):
    from medvlp.io.wsi import clear_slide_cache, open_slide, read_tile, read_tiles, tile_coords, tiling

    slide = open_slide(_aperio(tmp_path / "aperio.tif"))
    assert [round(d) for d in slide.level_downsamples] == [1, 4, 16]
    result = tile_coords(slide, target_mpp=0.5, size=256, tissue_fraction=0.0, mpp=0.25)
    assert result.read_level == 0 and result.read_size == 512  # 20x from 40x with no 2x level: level 0
    reader = tiling._fast_reader(slide)
    assert reader is not None and set(reader.levels) == {0, 1, 2}
    calls = []
    real = reader.read
    monkeypatch.setattr(reader, "read", lambda *a: calls.append(a) or real(*a))
    for x, y in result.coords[:6].tolist():
        fast = np.asarray(read_tile(slide, x, y, result), dtype=np.float32)
        slow = np.asarray(read_tile(slide, x, y, result, fast=False), dtype=np.float32)
        assert fast.shape == slow.shape == (256, 256, 3)
        diff = np.abs(fast - slow)
        assert diff.mean() < 3.0 and np.percentile(diff, 99) < 16, (diff.mean(), np.percentile(diff, 99))
    assert len(calls) == 6
    # threads give the same tiles in the same order
    one = [np.asarray(t) for t in read_tiles(slide, result, result.coords[:8], workers=1)]
    many = [np.asarray(t) for t in read_tiles(slide, result, result.coords[:8], workers=3)]
    assert all(np.array_equal(a, b) for a, b in zip(one, many, strict=True))
    # an unaligned tile (not on the stored grid at a whole scale) falls back to openslide
    assert reader.read(0, 3, 0, 512, 256) is None and reader.read(0, 0, 0, 300, 256) is None
    clear_slide_cache()


def test_non_jpeg_slides_use_openslide(tmp_path):
    import tifffile

    from medvlp.io.wsi import open_slide, tiling

    img = np.zeros((512, 512, 3), np.uint8)
    p = tmp_path / "deflate.tif"
    tifffile.imwrite(p, img, tile=(256, 256), photometric="rgb", compression="zlib")
    assert tiling._fast_reader(open_slide(p)) is None
