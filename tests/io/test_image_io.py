"""read_image / read_image_array on plain images: PNG (8/16-bit, grey, alpha), JPEG, BMP, sniffing, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medvlp.errors import ConfigError, ImageReadError
from medvlp.io import TileRef, parse_tile_ref, read_image, read_image_array, sniff_format


def _gradient_rgb() -> np.ndarray:
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[..., 0] = np.arange(48, dtype=np.uint8)[None, :] * 5
    arr[..., 1] = np.arange(32, dtype=np.uint8)[:, None] * 7
    arr[..., 2] = 128
    return arr


def test_png_rgb_and_grey_are_exact(tmp_path: Path) -> None:
    rgb = _gradient_rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (48, 32)
    np.testing.assert_array_equal(np.asarray(img), rgb)
    Image.fromarray(rgb[..., 1]).save(tmp_path / "g.png")
    grey = np.asarray(read_image(tmp_path / "g.png"))
    assert grey.shape == (32, 48, 3)
    np.testing.assert_array_equal(grey[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(grey[..., 2], rgb[..., 1])


def test_png_16_bit_scaled_by_its_range(tmp_path: Path) -> None:
    values = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # really stored as 16-bit
    arr = read_image_array(tmp_path / "deep.png")
    assert arr.shape == (64, 64, 3) and arr.dtype == np.float32
    expected = np.rint((values - 1000) / 2000 * 255) / 255
    np.testing.assert_allclose(arr[..., 0], expected, atol=1e-6)
    assert arr.min() == 0.0 and arr.max() == 1.0


def test_png_alpha_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # opaque red-ish on top, transparent below
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    arr = np.asarray(read_image(tmp_path / "alpha.png"))
    assert arr[0, 0].tolist() == [200, 0, 0]
    assert arr[3, 3].tolist() == [255, 255, 255]


def test_jpeg_and_bmp(tmp_path: Path) -> None:
    rgb = _gradient_rgb()
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    jpg = np.asarray(read_image(tmp_path / "a.jpg")).astype(int)
    assert jpg.shape == (32, 48, 3) and np.abs(jpg - rgb).mean() < 3
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "a.bmp")), rgb)
    assert sniff_format(tmp_path / "a.jpg") == "jpeg" and sniff_format(tmp_path / "a.bmp") == "bmp"
    # The format comes from the bytes, not the suffix.
    (tmp_path / "a.jpg").rename(tmp_path / "really_jpeg.png")
    assert sniff_format(tmp_path / "really_jpeg.png") == "jpeg"
    assert np.abs(np.asarray(read_image(tmp_path / "really_jpeg.png")).astype(int) - jpg).max() == 0


def test_rgb_tiff_and_16_bit_grey_tiff(tmp_path: Path) -> None:
    import tifffile

    rgb = _gradient_rgb()
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "rgb.tif")), rgb)
    grey = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    tifffile.imwrite(tmp_path / "g16.tif", grey)
    arr = read_image_array(tmp_path / "g16.tif")
    np.testing.assert_allclose(arr[..., 1], np.rint(grey / 4080 * 255) / 255, atol=1e-6)


def test_tile_refs_parse() -> None:
    assert parse_tile_ref("/data/s 1.svs#10,-20,2,256") == TileRef("/data/s 1.svs", 10, -20, 2, 256)
    assert str(TileRef("a.svs", 1, 2, 0, 8)) == "a.svs#1,2,0,8"
    assert parse_tile_ref("/data/slide.svs") is None
    assert parse_tile_ref("a.svs#1,2,3") is None


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError):
        read_image(empty)
    rgb = _gradient_rgb()
    Image.fromarray(rgb).save(tmp_path / "whole.png")
    cut = tmp_path / "cut.png"
    whole = (tmp_path / "whole.png").read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(cut)
    with pytest.raises(ConfigError, match="unknown reader"):
        read_image(tmp_path / "whole.png", reader="magic")
    with pytest.raises(ImageReadError, match="tile reference"):
        read_image(tmp_path / "whole.png", reader="wsi")


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"BM", b"GIF89a"]),
    st.binary(max_size=400),
)
def test_random_bytes_raise_image_read_error(
    tmp_path_factory: pytest.TempPathFactory, magic: bytes, payload: bytes
) -> None:
    path = tmp_path_factory.mktemp("rnd") / "x.img"
    path.write_bytes(magic + payload)
    with pytest.raises(ImageReadError):
        read_image(path)
