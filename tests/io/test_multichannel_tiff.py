"""Multichannel fluorescence TIFF (separate files per channel or one stack) to RGB with per-channel colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from medvlp.errors import ConfigError, ImageReadError
from medvlp.io import read_image
from medvlp.io.tiff import read_multichannel, resolve_colour, to_rgb

MICRO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fixtures" / "microscopy"
CHANNELS = [{"name": "DAPI"}, {"name": "PH3", "color": "green"}, {"name": "cell body", "color": "red"}]


@pytest.fixture(scope="module")
def field() -> list[Path]:
    paths = [MICRO / f"D03f00d{i}.tif" for i in range(3)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared fixture {missing[0]} not found")
    return paths


def _expected_plane(plane: np.ndarray, lo_p: float = 1.0, hi_p: float = 99.8) -> np.ndarray:
    plane = plane.astype(np.float32)
    lo, hi = np.percentile(plane, lo_p), np.percentile(plane, hi_p)
    return np.clip((plane - lo) / (hi - lo), 0, 1)


def test_real_field_from_three_channel_files(field: list[Path]) -> None:
    raw = [tifffile.imread(p) for p in field]
    stack = read_multichannel(field, channels=CHANNELS)
    assert stack.shape == (3, 512, 512) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack[1], raw[1])
    rgb = to_rgb(stack, CHANNELS)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    # DAPI (by dye name) is blue, PH3 green, cell body red: each channel lands in its own RGB plane.
    for plane, out in ((0, 2), (1, 1), (2, 0)):
        expected = np.rint(_expected_plane(raw[plane]) * 255)
        assert np.abs(rgb[..., out].astype(int) - expected).max() <= 1
    # Nuclei (DNA channel above its median) are bluer than the rest of the field.
    nuclei = raw[0] > np.percentile(raw[0], 90)
    assert rgb[..., 2][nuclei].mean() > 3 * rgb[..., 2][~nuclei].mean()


def test_stack_layouts_give_the_same_rgb(field: list[Path], tmp_path: Path) -> None:
    planes = np.stack([tifffile.imread(p) for p in field])
    expected = to_rgb(planes, CHANNELS)
    # 16-bit C,H,W stack, H,W,C stack, one page per channel: same picture (percentiles scale-free).
    chw16 = planes.astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "chw.tif", chw16, photometric="minisblack")
    tifffile.imwrite(
        tmp_path / "hwc.tif", np.moveaxis(planes, 0, -1), photometric="minisblack", planarconfig="contig"
    )
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for p in planes:
            tw.write(p, photometric="minisblack", metadata=None)
    for name in ("chw.tif", "hwc.tif", "pages.tif"):
        stack = read_multichannel(tmp_path / name)
        assert stack.shape == (3, 512, 512), name
        assert np.abs(to_rgb(stack, CHANNELS).astype(int) - expected).max() <= 1, name
    # Through the manifest entry point, with the card's channel settings.
    img = read_image(";".join(str(p) for p in field), reader="multichannel", options={"channels": CHANNELS})
    np.testing.assert_array_equal(np.asarray(img), expected)
    auto = read_image(tmp_path / "chw.tif", options={"channels": CHANNELS})
    assert np.abs(np.asarray(auto).astype(int) - expected).max() <= 1


def test_colours_and_ranges() -> None:
    assert resolve_colour({"name": "GFP"}, 0) == (0.0, 1.0, 0.0)
    assert resolve_colour({"name": "mCherry"}, 0) == (1.0, 0.0, 0.0)
    assert resolve_colour({"name": "Hoechst 33342"}, 2) == (0.0, 0.0, 1.0)
    assert resolve_colour({}, 1) == (0.0, 1.0, 0.0)
    assert resolve_colour({"color": "#FF8000"}, 0) == pytest.approx((1.0, 128 / 255, 0.0))
    assert resolve_colour({"color": [0.2, 0.4, 0.6]}, 0) == (0.2, 0.4, 0.6)
    with pytest.raises(ConfigError, match="unknown colour 'chartreuse'"):
        resolve_colour({"name": "x", "color": "chartreuse"}, 0)
    stack = np.stack([np.linspace(0, 1000, 100).reshape(10, 10), np.full((10, 10), 7.0)])
    rgb = to_rgb(stack, [{"color": "white", "low": 0, "high": 500}, {"color": "red"}])
    # Absolute range: 0..500 maps to 0..255 (clipped above); the flat channel adds nothing.
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[9, 9].tolist() == [255, 255, 255]
    assert rgb[2, 5, 1] == round(min(1.0, (25 * 1000 / 99) / 500) * 255)
    with pytest.raises(ConfigError, match="low_percentile"):
        to_rgb(stack, [{"low_percentile": 90, "high_percentile": 10}, {}])
    with pytest.raises(ConfigError, match="2 channels configured"):
        to_rgb(stack[:1], [{}, {}])


def test_bad_stacks(tmp_path: Path, field: list[Path]) -> None:
    tifffile.imwrite(tmp_path / "six.tif", np.zeros((6, 32, 32), np.uint8))
    with pytest.raises(ImageReadError, match=r"shape \(6, 32, 32\).*1-5 channels"):
        read_multichannel(tmp_path / "six.tif")
    with pytest.raises(ImageReadError, match="6 channels.*at most 5"):
        read_multichannel(field * 2)
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((32, 32), np.uint8))
    with pytest.raises(ImageReadError, match="same size"):
        read_multichannel([field[0], tmp_path / "small.tif"])
    with pytest.raises(ImageReadError, match="2 are configured"):
        read_multichannel(field, channels=2)
    tifffile.imwrite(tmp_path / "zstack.tif", np.zeros((4, 3, 32, 32), np.uint8), photometric="minisblack")
    with pytest.raises(ImageReadError, match="unexpected shape"):
        read_multichannel(tmp_path / "zstack.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + bytes(range(200)))
    with pytest.raises(ImageReadError, match="not a readable TIFF"):
        read_multichannel(junk)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(field[0].read_bytes()[:5000])
    with pytest.raises(ImageReadError):
        read_multichannel([cut, field[1]])


def test_microscopy_card_reads_a_three_channel_field(field: list[Path], tmp_path: Path) -> None:
    from medvlp.domains import load_card

    options = load_card("microscopy").image.reader_options()
    assert len(options["channels"]) == 4  # the card configures more channels than this field has
    img = np.asarray(read_image(";".join(map(str, field)), reader="multichannel", options=options))
    assert img.shape == (512, 512, 3)
    # the first card channel is DAPI in blue: the nuclear channel drives the blue plane
    dapi = read_multichannel([str(p) for p in field])[0]
    assert np.corrcoef(img[..., 2].ravel(), dapi.ravel())[0, 1] > 0.9
    five = tmp_path / "five.tif"
    tifffile.imwrite(five, np.zeros((5, 16, 16), np.uint16), metadata={"axes": "CYX"})
    with pytest.raises(ImageReadError, match="only 4"):
        read_image(str(five), reader="multichannel", options=options)
