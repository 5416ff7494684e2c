"""Whole-slide reading, microns per pixel, tissue detection, tiling, HDF5 coordinates, tile dataset."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsi_helpers import BACKGROUND, LEVEL_COLOURS, WSI, painted_slide, write_pyramid

from medvlp.errors import ConfigError, DataError, ImageReadError
from medvlp.io import read_image
from medvlp.io import wsi as wsi_mod
from medvlp.io.wsi import (
    Slide,
    TileDataset,
    clear_slide_cache,
    open_slide,
    otsu_threshold,
    read_coords_h5,
    read_tile,
    resolve_mpp,
    tile_coords,
    tissue_mask,
    write_tiles_h5,
)


def _fixture(name: str) -> Path:
    path = WSI / name
    if not path.is_file():
        pytest.skip(f"shared fixture {path} not found")
    return path


@pytest.fixture(scope="module")
def painted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return painted_slide(tmp_path_factory.mktemp("wsi") / "painted.tif")


# The painted box spans level-0 x 256..512, y 128..256: with 64-px level-0 tiles that is columns 4..7, rows 2..3.
BOX_TILES_64 = {(x, y) for x in range(256, 512, 64) for y in range(128, 256, 64)}


# --------------------------------------------------------------------------------------------- opening


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_pyramid_levels_and_mpp_from_both_backends(painted: Path, backend: str) -> None:
    slide = open_slide(painted, backend=backend)
    assert slide.backend == backend
    assert slide.level_dimensions == ((768, 512), (384, 256), (192, 128))
    assert slide.level_downsamples == (1.0, 2.0, 4.0)
    assert resolve_mpp(slide) == (pytest.approx(0.25), f"{backend}.mpp-x")
    assert slide.best_level_for_downsample(3.0) == 1
    assert slide.best_level_for_downsample(0.5) == 0
    # Each level holds its own colour inside the box: (300, 150) is inside the box at level 0.
    for level, colour in enumerate(LEVEL_COLOURS):
        assert slide.read_region(300, 150, level, 4)[0, 0].tolist() == list(colour)
    assert slide.read_region(0, 0, 0, 4)[0, 0].tolist() == list(BACKGROUND)


def test_tiffslide_fallback_when_openslide_refuses(painted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Slide._open_with

    def refuse_openslide(self: Slide, name: str) -> object:
        if name == "openslide":
            raise RuntimeError("unsupported or missing image file")
        return real(self, name)

    monkeypatch.setattr(Slide, "_open_with", refuse_openslide)
    slide = open_slide(painted)
    assert slide.backend == "tiffslide"
    assert slide.read_region(300, 150, 1, 2)[0, 0].tolist() == list(LEVEL_COLOURS[1])


def test_unreadable_and_truncated_slides_raise_image_read_error(tmp_path: Path, painted: Path) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ImageReadError, match="not a slide openslide or tiffslide can read"):
        open_slide(junk)
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(painted.read_bytes()[:3000])
    with pytest.raises(ImageReadError) as info:
        slide = open_slide(truncated)
        tile_coords(slide, target_mpp=0.5, size=32, tissue_fraction=0.0)
        for x, y in tile_coords(slide, target_mpp=0.25, size=64, tissue_fraction=0.0).coords:
            slide.read_region(int(x), int(y), 0, 64)
    assert str(truncated) in str(info.value)
    with pytest.raises(ImageReadError, match="slide not found"):
        open_slide(tmp_path / "missing.svs")


def test_real_svs_and_dicom_wsi() -> None:
    svs = open_slide(_fixture("small.svs"))
    assert svs.backend == "openslide"
    assert svs.dimensions == (16, 16)
    assert resolve_mpp(svs) == (pytest.approx(0.499), "openslide.mpp-x")
    dcm = open_slide(_fixture("boxes_0.dcm"))
    assert dcm.properties["openslide.vendor"] == "dicom"
    assert resolve_mpp(dcm) == (pytest.approx(0.499), "openslide.mpp-x")
    # The DICOM WSI fixture is the same 16x16 scan as small.svs.
    np.testing.assert_array_equal(dcm.read_region(0, 0, 0, 16), svs.read_region(0, 0, 0, 16))
    result = tile_coords(dcm, target_mpp=0.499, size=8, tissue_fraction=0.0)
    assert result.read_level == 0 and result.read_size == 8
    assert sorted(map(tuple, result.coords.tolist())) == [(0, 0), (0, 8), (8, 0), (8, 8)]


# ---------------------------------------------------------------------------------------- microns per pixel


def test_boxes_72_dpi_tag_is_refused_with_mpp_hint() -> None:
    slide = open_slide(_fixture("boxes.tiff"))
    with pytest.raises(ConfigError) as info:
        resolve_mpp(slide)
    message = str(info.value)
    assert "352.78" in message and "--mpp" in message and "boxes.tiff" in message
    assert resolve_mpp(slide, override=0.25) == (0.25, "override")
    with pytest.raises(ConfigError, match="plausible range"):
        resolve_mpp(slide, override=352.78)


def test_mpp_from_vendor_key_then_tiff_tag(painted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svs = open_slide(_fixture("small.svs"))
    props = {k: v for k, v in svs.properties.items() if not k.endswith("mpp-x")}
    monkeypatch.setattr(Slide, "properties", property(lambda self: props))
    assert resolve_mpp(svs) == (pytest.approx(0.499), "aperio.MPP")
    # No property at all: the level-0 TIFF tag of the file (40000 pixels per cm = 0.25 µm/px).
    props = {}
    assert resolve_mpp(open_slide(painted)) == (pytest.approx(0.25), "tiff.XResolution")


def test_implausible_resolution_tag_is_refused(tmp_path: Path) -> None:
    # 300 dpi (84.67 µm/px) is a scanner of paper, not of slides.
    path = write_pyramid(
        tmp_path / "paper.tif", [np.full((128, 128, 3), 200, np.uint8)], mpp=25400 / 300, unit="INCH"
    )
    with pytest.raises(ConfigError, match="implausible.*--mpp"):
        resolve_mpp(open_slide(path))


# ------------------------------------------------------------------------------------------ tissue detection


def test_otsu_threshold_separates_two_modes() -> None:
    values = np.concatenate([np.full(500, 20), np.full(300, 180)])
    t = otsu_threshold(values)
    assert 20 <= t < 180
    assert ((values > t) == (values == 180)).all()


def test_tissue_mask_blank_slide_stays_blank_and_box_is_found() -> None:
    rng = np.random.default_rng(0)
    blank = np.clip(rng.normal(235, 2, (64, 64, 3)), 0, 255).astype(np.uint8)
    mask, threshold = tissue_mask(blank, return_threshold=True)
    assert threshold >= 8 and not mask.any()
    img = blank.copy()
    img[16:48, 20:44] = (190, 90, 160)  # pink H&E-like tissue
    img[30, 30] = (235, 235, 235)  # a hole that the closing fills
    mask = tissue_mask(img)
    assert mask[17:47, 21:43].all()
    assert not mask[:12].any() and not mask[52:].any() and not mask[:, :16].any()
    assert 0.9 < mask.sum() / (32 * 24) < 1.1


# ---------------------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize(
    ("target_mpp", "read_level", "read_size", "ps0", "colour"),
    [
        (0.25, 0, 64, 64, LEVEL_COLOURS[0]),
        (0.5, 1, 32, 64, LEVEL_COLOURS[1]),
        (0.75, 1, 48, 96, LEVEL_COLOURS[1]),
        (1.0, 2, 32, 128, LEVEL_COLOURS[2]),
    ],
)
def test_tiles_read_at_best_level(
    painted: Path, target_mpp: float, read_level: int, read_size: int, ps0: int, colour: tuple[int, int, int]
) -> None:
    size = 64 if target_mpp == 0.25 else 32
    slide = open_slide(painted)
    result = tile_coords(slide, target_mpp=target_mpp, size=size, tissue_fraction=0.5)
    assert (result.read_level, result.read_size, result.patch_size_level0) == (read_level, read_size, ps0)
    assert result.patch_size == size and result.mpp_source == "openslide.mpp-x"
    for x, y in result.coords.tolist():
        tile = np.asarray(read_tile(slide, x, y, result))
        assert tile.shape == (size, size, 3)
        # Fully inside the box: the read level's colour everywhere (bilinear resize of a flat area).
        if 256 <= x and x + ps0 <= 512 and 128 <= y and y + ps0 <= 256:
            assert np.abs(tile.astype(int) - colour).max() <= 1


def test_tiles_kept_are_exactly_the_painted_box(painted: Path) -> None:
    result = tile_coords(open_slide(painted), target_mpp=0.5, size=32, tissue_fraction=0.5)
    assert {tuple(c) for c in result.coords.tolist()} == BOX_TILES_64
    assert result.coords.dtype == np.int64 and len(result) == 8
    assert result.settings["grid_tiles"] == 12 * 8
    everything = tile_coords(open_slide(painted), target_mpp=0.5, size=32, tissue_fraction=0.0)
    assert len(everything) == 96


def test_boxes_tiff_tiles_agree_with_painted_ground_truth() -> None:
    slide = open_slide(_fixture("boxes.tiff"))
    result = tile_coords(slide, target_mpp=0.5, size=32, mpp=0.25, tissue_fraction=0.5)
    assert (result.read_level, result.read_size, result.patch_size_level0) == (1, 32, 64)
    assert result.mpp_source == "override"
    full = slide.read_region(0, 0, 0, slide.dimensions).astype(int)
    coloured = (full.max(axis=2) - full.min(axis=2)) > 30
    kept = {tuple(c) for c in result.coords.tolist()}
    fractions = {
        (x, y): coloured[y : y + 64, x : x + 64].mean()
        for y in range(0, 250 - 63, 64)
        for x in range(0, 300 - 63, 64)
    }
    assert len(fractions) == 12
    for xy, frac in fractions.items():
        # The mask is computed on an 8x thumbnail: allow a margin around the 0.5 cut.
        if frac >= 0.6:
            assert xy in kept, (xy, frac)
        if frac <= 0.4:
            assert xy not in kept, (xy, frac)
    assert 6 <= len(kept) <= 8


@pytest.fixture(scope="module")
def blotchy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Irregular tissue: random pink blobs on glass, three levels."""
    rng = np.random.default_rng(7)
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = np.zeros((h, w), bool)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(30, 110)
        tissue |= (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    arr = np.where(
        tissue[..., None], np.array([190, 100, 170], np.uint8), np.array([238, 238, 238], np.uint8)
    )
    levels = [arr, arr[::2, ::2].copy(), arr[::4, ::4].copy()]
    return write_pyramid(tmp_path_factory.mktemp("blotchy") / "blotchy.tif", levels, mpp=0.25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target_mpp=st.floats(0.2, 1.2),
    size=st.integers(16, 96),
    fractions=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
)
def test_tile_coords_properties(
    blotchy: Path, target_mpp: float, size: int, fractions: tuple[float, float]
) -> None:
    slide = get_blotchy(blotchy)
    lo, hi = sorted(fractions)
    a = tile_coords(slide, target_mpp=target_mpp, size=size, tissue_fraction=lo)
    b = tile_coords(slide, target_mpp=target_mpp, size=size, tissue_fraction=hi)
    w0, h0 = slide.dimensions
    ps0 = a.patch_size_level0
    assert ps0 == max(1, round(size * target_mpp / 0.25))
    for r in (a, b):
        xy = r.coords
        if len(xy):
            # Every tile lies wholly inside the slide, on the grid, once.
            assert xy.min() >= 0 and (xy[:, 0] + ps0 <= w0).all() and (xy[:, 1] + ps0 <= h0).all()
            assert (xy % ps0 == 0).all()
            assert len({tuple(c) for c in xy.tolist()}) == len(xy)
        assert len(r) <= r.settings["grid_tiles"]
        assert slide.level_downsamples[r.read_level] <= max(1.0, target_mpp / 0.25 * 1.001)
    # A higher tissue fraction keeps a subset of the tiles.
    assert {tuple(c) for c in b.coords.tolist()} <= {tuple(c) for c in a.coords.tolist()}


_BLOTCHY: dict[Path, Slide] = {}


def get_blotchy(path: Path) -> Slide:
    if path not in _BLOTCHY:
        _BLOTCHY[path] = open_slide(path)
    return _BLOTCHY[path]


def test_bad_tiling_settings_are_config_errors(painted: Path) -> None:
    with pytest.raises(ConfigError, match="tissue fraction"):
        tile_coords(painted, tissue_fraction=1.5)
    with pytest.raises(ConfigError, match="must be positive"):
        tile_coords(painted, size=0)


# ------------------------------------------------------------------------------------------------------ HDF5


def test_h5_contract_round_trip(painted: Path, tmp_path: Path) -> None:
    result = tile_coords(open_slide(painted), target_mpp=0.5, size=32, tissue_fraction=0.5)
    out = write_tiles_h5(tmp_path / "painted.h5", result)
    with h5py.File(out, "r") as f:
        coords = f["coords"][()]
        assert coords.dtype == np.int64 and coords.shape == (8, 2)
        attrs = dict(f.attrs)
    assert {tuple(c) for c in coords.tolist()} == BOX_TILES_64
    assert attrs["patch_size"] == 32 and attrs["patch_size_level0"] == 64 and attrs["read_level"] == 1
    assert attrs["level0_mpp"] == pytest.approx(0.25) and attrs["target_mpp"] == pytest.approx(0.5)
    assert attrs["mpp_source"] == "openslide.mpp-x"
    assert attrs["tissue_fraction"] == 0.5 and attrs["tissue_saturation_floor"] == 8.0
    assert attrs["tissue_median"] == 7 and attrs["tissue_close"] == 4
    back = read_coords_h5(out)
    np.testing.assert_array_equal(back.coords, result.coords)
    assert (back.read_level, back.read_size, back.patch_size, back.patch_size_level0) == (1, 32, 32, 64)
    assert back.settings["fraction"] == 0.5 and back.mpp_source == "openslide.mpp-x"
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def _write_clam_h5(
    path: Path, coords: np.ndarray, patch_size: int, patch_level: int, downsample: float
) -> Path:
    # CLAM's layout: attributes on the coords dataset, none on the file.
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", data=coords.astype(np.int64))
        dset.attrs["patch_size"] = patch_size
        dset.attrs["patch_level"] = patch_level
        dset.attrs["downsample"] = np.array([downsample, downsample])
        dset.attrs["name"] = "painted"
    return path


def test_clam_h5_coords_are_read_and_tiled(painted: Path, tmp_path: Path) -> None:
    coords = np.array([[256, 128], [448, 192]])
    h5 = _write_clam_h5(tmp_path / "painted_clam.h5", coords, patch_size=32, patch_level=1, downsample=2.0)
    plan = read_coords_h5(h5)
    assert plan.mpp_source == "clam" and np.isnan(plan.level0_mpp)
    assert (plan.read_level, plan.read_size, plan.patch_size, plan.patch_size_level0) == (1, 32, 32, 64)
    ds = TileDataset([(painted, h5)], transform=np.asarray)
    assert len(ds) == 2
    item = ds[1]
    assert (item["x"], item["y"], item["slide_index"], item["valid"]) == (448, 192, 0, True)
    assert item["image"].shape == (32, 32, 3)
    assert item["image"][0, 0].tolist() == list(LEVEL_COLOURS[1])


def test_read_coords_h5_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="not a readable HDF5"):
        read_coords_h5(bad)
    noattrs = tmp_path / "noattrs.h5"
    with h5py.File(noattrs, "w") as f:
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    with pytest.raises(DataError, match="neither medvlp attributes"):
        read_coords_h5(noattrs)


# ---------------------------------------------------------------------------------------------- dataset


def test_tile_dataset_items_and_tile_reference(painted: Path, tmp_path: Path) -> None:
    result = tile_coords(open_slide(painted), target_mpp=0.5, size=32, tissue_fraction=0.5)
    h5 = write_tiles_h5(tmp_path / "p.h5", result)
    ds = TileDataset(
        [(painted, h5), (painted, result)], transform=lambda im: np.asarray(im).mean(axis=(0, 1))
    )
    assert len(ds) == 16 and ds.locate(9) == (1, 1)
    assert np.allclose(ds[0]["image"], LEVEL_COLOURS[1])
    with pytest.raises(IndexError):
        ds[16]
    # The manifest reference of a tile reads the same pixels through read_image.
    ref = result.reference(0)
    assert ref.startswith(str(painted) + "#") and ref.endswith(",1,32")
    np.testing.assert_array_equal(
        np.asarray(read_image(ref)), np.asarray(read_tile(open_slide(painted), *result.coords[0], result))
    )


def test_tile_dataset_skips_unreadable_tiles(painted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = tile_coords(open_slide(painted), target_mpp=0.5, size=32, tissue_fraction=0.5)
    ds = TileDataset([(painted, result)], on_error="skip")

    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise ImageReadError(painted, "cannot read a 32x32 region")

    monkeypatch.setattr(Slide, "read_region", broken)
    item = ds[0]
    assert item["valid"] is False and int(item["image"].min()) == 255 and ds.n_errors == 1
    with pytest.raises(ImageReadError):
        TileDataset([(painted, result)])[0]


def test_tile_dataset_opens_each_slide_once_per_worker(
    painted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    log = tmp_path / "opens.log"
    real_open = wsi_mod.open_slide

    def counting_open(path: str | Path, backend: str = "auto") -> Slide:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {Path(path).name}\n")
        return real_open(path, backend)

    monkeypatch.setattr(wsi_mod.slide, "open_slide", counting_open)  # where get_slide looks it up
    clear_slide_cache()
    result = tile_coords(real_open(painted), target_mpp=0.5, size=32, tissue_fraction=0.0)
    ds = TileDataset([(painted, result)])
    assert len(ds) == 96
    loader = torch.utils.data.DataLoader(
        ds, batch_size=8, num_workers=2, multiprocessing_context="fork", persistent_workers=False
    )
    batches = list(loader)
    assert sum(b["image"].shape[0] for b in batches) == 96
    assert tuple(batches[0]["image"].shape[1:]) == (3, 32, 32) and batches[0]["image"].dtype == torch.uint8
    opens = log.read_text().splitlines()
    pids = [line.split()[0] for line in opens]
    # Two workers, each opened the slide exactly once (never once per tile).
    assert len(opens) == 2 and len(set(pids)) == 2 and str(os.getpid()) not in pids


def test_read_image_whole_slide_files(painted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny slide reads whole; the same pixels come from a tile reference.
    whole = np.asarray(read_image(_fixture("small.svs")))
    tile = np.asarray(read_image(f"{_fixture('small.svs')}#0,0,0,16"))
    assert whole.shape == tile.shape == (16, 16, 3)
    np.testing.assert_array_equal(whole, tile)
    # A pyramid too large to read as one image is refused with the tile-reference hint.
    from medvlp.io import images

    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    with pytest.raises(ImageReadError, match="SLIDE#x,y,level,size"):
        read_image(painted)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([b"", b"II*\x00", b"MM\x00*", b"II+\x00\x08\x00\x00\x00"]), st.binary(max_size=300))
def test_random_bytes_are_not_slides(
    tmp_path_factory: pytest.TempPathFactory, magic: bytes, payload: bytes
) -> None:
    path = tmp_path_factory.mktemp("rnd") / "x.tif"
    path.write_bytes(magic + payload)
    with pytest.raises(ImageReadError):
        open_slide(path)
