"""DICOM reading in the standard's order (modality LUT, VOI, MONOCHROME1 inversion), codecs, bad files, metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    generate_uid,
)

from medvlp.errors import ConfigError, ImageReadError
from medvlp.io import read_image, read_image_array
from medvlp.io.dicom import dicom_metadata, is_dicom_file, read_dicom

CXR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fixtures" / "cxr"


def _fixture(name: str) -> Path:
    path = CXR / name
    if not path.is_file():
        pytest.skip(f"shared fixture {path} not found")
    return path


def make_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **tags: Any,
) -> Path:
    """Write an uncompressed single-frame DICOM (CR) with ``pixels`` and extra ``tags``."""
    pixels = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-0042"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _encapsulated(path: Path, source: Path, frame: bytes, syntax: str) -> Path:
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pydicom.encaps.encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def rg1_pixels() -> np.ndarray:
    """Stored values of the real CR (decoded by pydicom directly), cropped to keep the tests fast."""
    return pydicom.dcmread(_fixture("RG1_J2KI.dcm")).pixel_array[700:1212, 600:1112].astype(np.uint16)


# ------------------------------------------------------------------------------------------ real fixtures


def test_real_cr_monochrome1_jpeg2000_window_then_invert(rg1_pixels: np.ndarray) -> None:
    img = read_dicom(_fixture("RG1_J2KI.dcm"))
    assert img.shape == (1955, 1841) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # Window 15000/30000 (LINEAR), then MONOCHROME1 inversion: high stored values are dark.
    x = rg1_pixels.astype(np.float64)
    expected = 1.0 - np.clip((x - 14999.5) / 29999.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(img[700:1212, 600:1112], expected, atol=1e-6)
    assert np.corrcoef(img[700:1212, 600:1112].ravel(), x.ravel())[0, 1] < -0.99


def test_voi_lut_normalised_by_lut_range_not_bits_stored() -> None:
    path = _fixture("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    assert ds.BitsStored == 8
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    first = int(ds.VOILUTSequence[0].LUTDescriptor[1])
    stored = ds.pixel_array.astype(np.int64)
    expected = lut[np.clip(stored - first, 0, len(lut) - 1)] / 65535.0
    img = read_dicom(path)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert img.min() == 0.0 and img.max() == 1.0
    # Without the VOI LUT the stored range itself is used.
    np.testing.assert_allclose(
        read_dicom(path, voi="none"), (stored - stored.min()) / np.ptp(stored), atol=1e-6
    )


def test_modality_lut_applied_before_normalising() -> None:
    path = _fixture("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    item = ds.ModalityLUTSequence[0]
    lut = np.asarray(item.LUTData, dtype=np.float64)
    first = int(item.LUTDescriptor[1])
    values = lut[np.clip(ds.pixel_array.astype(np.int64) - first, 0, len(lut) - 1)]
    expected = (values - values.min()) / (values.max() - values.min())
    img = read_dicom(path)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    # Stored -1 maps to LUT entry 2047 (first mapped value -2048).
    row, col = np.argwhere(ds.pixel_array == -1)[0]
    assert img[row, col] == pytest.approx(
        (lut[2047] - values.min()) / (values.max() - values.min()), abs=1e-6
    )


def test_nonlinear_modality_lut_then_window(tmp_path: Path) -> None:
    from pydicom.sequence import Sequence

    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [v * v for v in range(256)])  # LUT Data: squares 0 .. 65025
    pixels = np.array([[0, 10, 100, 200, 255]], dtype=np.uint8)
    lut_file = make_dicom(tmp_path / "lut.dcm", pixels, ModalityLUTSequence=Sequence([item]))
    np.testing.assert_allclose(read_dicom(lut_file)[0], pixels[0].astype(float) ** 2 / 65025.0, atol=1e-6)
    # Rescale first, then the window on the rescaled values: 2 * 60 - 20 = 100 is the window centre.
    rescaled = make_dicom(
        tmp_path / "rw.dcm",
        np.array([[0, 60, 200]], dtype=np.uint16),
        RescaleSlope=2,
        RescaleIntercept=-20,
        WindowCenter=100,
        WindowWidth=41,
        VOILUTFunction="LINEAR_EXACT",
    )
    np.testing.assert_allclose(read_dicom(rescaled)[0], [0.0, 0.5, 1.0], atol=1e-6)


# ------------------------------------------------------------------------------- MONOCHROME1 / MONOCHROME2


@pytest.mark.parametrize("rescale", [None, (2.0, -1024.0)])
def test_monochrome1_copy_of_monochrome2_loads_the_same(
    tmp_path: Path, rg1_pixels: np.ndarray, rescale: tuple[float, float] | None
) -> None:
    tags = {} if rescale is None else {"RescaleSlope": rescale[0], "RescaleIntercept": rescale[1]}
    mono2 = make_dicom(tmp_path / "m2.dcm", rg1_pixels, "MONOCHROME2", bits_stored=15, **tags)
    inverted = (2**15 - 1 - rg1_pixels).astype(np.uint16)
    mono1 = make_dicom(tmp_path / "m1.dcm", inverted, "MONOCHROME1", bits_stored=15, **tags)
    a, b = read_dicom(mono2), read_dicom(mono1)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, (rg1_pixels - rg1_pixels.min()) / np.ptp(rg1_pixels), atol=1e-6)


def test_real_monochrome1_equals_its_monochrome2_copy_with_mirrored_window(
    tmp_path: Path, rg1_pixels: np.ndarray
) -> None:
    top = 2**15 - 1
    inverted = (top - rg1_pixels).astype(np.uint16)
    # LINEAR windowing mirrors around the half-pixel offset: centre' = top - centre + 1.
    mono2 = make_dicom(
        tmp_path / "m2w.dcm",
        inverted,
        "MONOCHROME2",
        bits_stored=15,
        WindowCenter=top - 15000 + 1,
        WindowWidth=30000,
    )
    np.testing.assert_allclose(
        read_dicom(mono2), read_dicom(_fixture("RG1_J2KI.dcm"))[700:1212, 600:1112], atol=1e-6
    )


def test_presentation_lut_shape_inverse(tmp_path: Path) -> None:
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    plain = read_dicom(make_dicom(tmp_path / "p.dcm", pixels, bits_stored=12))
    inverse = read_dicom(
        make_dicom(tmp_path / "i.dcm", pixels, bits_stored=12, PresentationLUTShape="INVERSE")
    )
    np.testing.assert_allclose(inverse, 1.0 - plain, atol=1e-7)
    assert plain[0, 0] == 0.0 and plain[-1, -1] == 1.0
    # MONOCHROME1 with INVERSE restates the same inversion: applied once.
    both = read_dicom(
        make_dicom(tmp_path / "b.dcm", pixels, "MONOCHROME1", bits_stored=12, PresentationLUTShape="INVERSE")
    )
    np.testing.assert_allclose(both, inverse, atol=1e-7)


@pytest.mark.parametrize(
    ("function", "values", "expected"),
    [
        ("LINEAR", [0, 75, 100, 125, 200], [0.0, 0.0, 0.5 + 0.5 / 49, 1.0, 1.0]),
        ("LINEAR_EXACT", [0, 75, 100, 125, 200], [0.0, 0.0, 0.5, 1.0, 1.0]),
        ("SIGMOID", [100], [0.5]),
    ],
)
def test_window_functions(tmp_path: Path, function: str, values: list[int], expected: list[float]) -> None:
    pixels = np.array([values], dtype=np.uint16)
    path = make_dicom(tmp_path / "w.dcm", pixels, WindowCenter=100, WindowWidth=50, VOILUTFunction=function)
    np.testing.assert_allclose(read_dicom(path)[0], expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------ codecs


def test_compressed_transfer_syntaxes_decode(tmp_path: Path, rg1_pixels: np.ndarray) -> None:
    import imagecodecs

    ref16 = make_dicom(tmp_path / "ref16.dcm", rg1_pixels, bits_stored=15)
    expected16 = read_dicom(ref16)
    # JPEG-LS lossless (16-bit) and JPEG 2000 lossless: identical to the uncompressed image.
    jls = _encapsulated(tmp_path / "jls.dcm", ref16, imagecodecs.jpegls_encode(rg1_pixels), JPEGLSLossless)
    np.testing.assert_array_equal(read_dicom(jls), expected16)
    j2k = pydicom.dcmread(ref16)
    j2k.compress(JPEG2000Lossless)
    j2k.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom(tmp_path / "j2k.dcm"), expected16)
    # JPEG baseline (8-bit, lossy): close to the uncompressed image.
    pixels8 = (rg1_pixels >> 7).astype(np.uint8)
    ref8 = make_dicom(tmp_path / "ref8.dcm", pixels8)
    jpg = _encapsulated(
        tmp_path / "jpg.dcm", ref8, imagecodecs.jpeg8_encode(pixels8, level=95), JPEGBaseline8Bit
    )
    assert pydicom.dcmread(jpg).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert np.abs(read_dicom(jpg) - read_dicom(ref8)).mean() < 0.01


def test_missing_decoder_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom.pixels

    class Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(ImageReadError) as info:
        read_dicom(_fixture("RG1_J2KI.dcm"))
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in info.value.reason
    assert "JPEG 2000" in info.value.reason and info.value.path.endswith("RG1_J2KI.dcm")


# ------------------------------------------------------------------------------------------------ bad input


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "sr.dcm", np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="has no pixel data"):
        read_dicom(path)


def test_unsupported_photometric_and_not_dicom(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "hsv.dcm", np.zeros((4, 4), np.uint8), "HSV")
    with pytest.raises(ImageReadError, match="photometric interpretation 'HSV' is not supported"):
        read_dicom(path)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello, not a dicom file" * 20)
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        read_dicom(junk)
    assert not is_dicom_file(junk) and is_dicom_file(path)
    with pytest.raises(ConfigError, match="voi must be"):
        read_dicom(path, voi="soft")


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("keep", [200, 2000, 50_000])
def test_truncated_real_file(tmp_path: Path, keep: int) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(_fixture("RG1_J2KI.dcm").read_bytes()[:keep])
    with pytest.raises(ImageReadError) as info:
        read_dicom(cut)
    assert info.value.path == str(cut)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.booleans())
def test_random_bytes_never_crash(
    tmp_path_factory: pytest.TempPathFactory, payload: bytes, with_marker: bool
) -> None:
    path = tmp_path_factory.mktemp("rnd") / "x.dcm"
    path.write_bytes((b"\0" * 128 + b"DICM" + payload) if with_marker else payload)
    with pytest.raises(ImageReadError):
        read_dicom(path)
    with pytest.raises(ImageReadError):
        read_image(path)


# ------------------------------------------------------------------------------------------- colour, entry points


def test_rgb_dicom(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0] = 255
    pixels[4:, :, 2] = 51
    img = read_dicom(make_dicom(tmp_path / "rgb.dcm", pixels, "RGB"))
    assert img.shape == (8, 8, 3)
    np.testing.assert_allclose(img[6, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_read_image_on_dicom_without_suffix(tmp_path: Path, rg1_pixels: np.ndarray) -> None:
    path = make_dicom(tmp_path / "no_suffix", rg1_pixels, bits_stored=15)
    exact = read_dicom(path)
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (512, 512)
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])
    assert np.abs(arr[..., 0] / 255.0 - exact).max() <= 0.5 / 255 + 1e-6
    full = read_image_array(path)
    assert full.dtype == np.float32 and full.shape == (512, 512, 3)
    np.testing.assert_array_equal(full[..., 1], exact)


# ------------------------------------------------------------------------------------------------ metadata


def test_metadata_excludes_patient_tags_by_default(tmp_path: Path) -> None:
    meta = dicom_metadata(_fixture("RG1_J2KI.dcm"))
    assert meta["Modality"] == "CR" and meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert meta["BitsStored"] == 15 and meta["WindowCenter"] == 15000.0
    assert meta["TransferSyntax"] == "JPEG 2000 Image Compression"
    for tag in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "StudyDate",
        "InstitutionName",
        "AccessionNumber",
        "StudyInstanceUID",
    ):
        assert tag not in meta
    assert not any("RG1" in str(v) for v in meta.values())
    full = dicom_metadata(_fixture("RG1_J2KI.dcm"), include_phi=True)
    assert full["PatientName"] == "CompressedSamples^RG1" and full["PatientID"] == "9RG1"
    mine = make_dicom(tmp_path / "m.dcm", np.zeros((2, 2), np.uint8))
    assert "Doe" not in str(dicom_metadata(mine)) and "MRN-0042" not in str(dicom_metadata(mine))
    os.remove(mine)
