"""Fuzzing (hypothesis): every registered reader and the manifest parser, fed random bytes, truncations of
real files and random DICOM tag values, give a valid image (or manifest) or a MedvlpError with a message:
never another exception."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medvlp.errors import MedvlpError
from medvlp.io import read_image, reader_names

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fixtures"
FUZZ = settings(max_examples=int(os.environ.get("MEDVLP_FUZZ_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
READERS = [r for r in reader_names() if r != "toy"]  # "toy" is tests/io/test_reader_registry's


def _check(path: Path, reader: str, options: dict | None = None) -> None:
    try:
        img = read_image(path, reader=reader, options=options)
    except MedvlpError as e:
        assert str(e).strip(), f"{reader}: an error without a message"
        return
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.width > 0 and img.height > 0


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _tiff() -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(2).integers(0, 4000, (3, 16, 16), dtype=np.uint16),
                     photometric="minisblack", metadata={"axes": "CYX"})
    return buf.getvalue()


def _dicom(rows: int = 16, cols: int = 16, bits: int = 16, spp: int = 1, photometric: str = "MONOCHROME2",
           pixel_len: int | None = None, frames: int | None = None) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality, ds.Rows, ds.Columns = "CR", rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = spp, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, max(bits - 1, 0), 0
    if frames is not None:
        ds.NumberOfFrames = frames
    n = pixel_len if pixel_len is not None else rows * cols * spp * max(bits // 8, 1)
    ds.PixelData = bytes(np.random.default_rng(3).integers(0, 255, max(n, 0), dtype=np.uint8))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _real_files() -> dict[str, bytes]:
    files = {"a.png": _png(), "a.jpg": _jpeg(), "a.tif": _tiff(), "a.dcm": _dicom()}
    for name in ("cxr/RG1_J2KI.dcm", "cxr/mlut_18.dcm", "microscopy/D03f00d0.tif", "wsi/small.svs"):
        p = SHARED / name
        if p.is_file() and p.stat().st_size < 30_000_000:
            files[Path(name).name] = p.read_bytes()
    return files


REAL = _real_files()
SUFFIXES = [".png", ".jpg", ".tif", ".dcm", ".bmp", ".svs", ""]


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.binary(min_size=0, max_size=4096), suffix=st.sampled_from(SUFFIXES), reader=st.sampled_from(READERS))
def test_random_bytes(data: bytes, suffix: str, reader: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{suffix}"
        p.write_bytes(data)
        _check(p, reader)


@pytest.mark.timeout(300)
@FUZZ
@given(name=st.sampled_from(sorted(REAL)), cut=st.floats(0.0, 1.0), flip=st.integers(0, 2**31),
       reader=st.sampled_from(READERS))
def test_truncated_and_flipped_real_files(name: str, cut: float, flip: int, reader: str) -> None:
    data = bytearray(REAL[name][: int(len(REAL[name]) * cut)])
    if data and flip % 3 == 0:  # and sometimes a flipped byte in what is left
        data[flip % len(data)] ^= 0xFF
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(bytes(data))
        _check(p, reader)


@pytest.mark.timeout(300)
@FUZZ
@given(rows=st.integers(0, 65535), cols=st.integers(0, 65535), bits=st.sampled_from([1, 8, 12, 16, 32, 64]),
       spp=st.integers(0, 4), photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL",
                                                          "PALETTE COLOR", "BOGUS"]),
       pixel_len=st.integers(0, 5000), frames=st.one_of(st.none(), st.integers(-2, 5)))
def test_random_dicom_tags(rows, cols, bits, spp, photometric, pixel_len, frames) -> None:
    try:
        data = _dicom(rows, cols, bits, spp, photometric, pixel_len, frames)
    except (ValueError, OverflowError, TypeError, OSError):
        return  # pydicom itself refuses to write such values (e.g. > 65535 in a US tag)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.dcm"
        p.write_bytes(data)
        _check(p, "auto")
        _check(p, "dicom")


@pytest.mark.timeout(300)
@FUZZ
@given(text=st.one_of(st.text(max_size=600), st.binary(max_size=600).map(lambda b: b.decode("latin-1"))),
       suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet"]))
def test_manifest_parser(text: str, suffix: str) -> None:
    from medvlp.data.manifest import read_manifest

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"m{suffix}"
        p.write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
        try:
            m = read_manifest(p)
        except MedvlpError as e:
            assert str(e).strip()
            return
        assert "image" in m.columns
