"""The reason given for a damaged file is the right one: truncated compressed DICOM pixel data is called
truncated (with its transfer syntax), not "no pixel data"; a decompression bomb is called one (with its size
and the limit), not "damaged or truncated"."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlp.errors import ImageReadError
from medvlp.io import read_image

J2K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fixtures" / "cxr" / "RG1_J2KI.dcm"


def _dicom(rows: int = 32, cols: int = 32, pixels: bytes | None = None) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality, ds.Rows, ds.Columns = "CR", rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = pixels if pixels is not None else np.arange(rows * cols, dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("fraction", [0.3, 0.8, 0.99])
def test_truncated_jpeg2000_dicom_is_called_truncated(tmp_path, fraction):
    if not J2K.is_file():
        pytest.skip(f"{J2K} not found (shared data)")
    data = J2K.read_bytes()
    p = tmp_path / "cut.dcm"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert "truncated" in e.value.reason and "JPEG 2000" in e.value.reason
    assert "no pixel data" not in e.value.reason and str(p) in str(e.value)


def test_truncated_uncompressed_dicom_is_called_truncated(tmp_path):
    data = _dicom(64, 64)
    p = tmp_path / "cut.dcm"
    p.write_bytes(data[: len(data) - 3000])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(p)


def test_a_dicom_without_pixels_still_says_so(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality = "SR"
    p = tmp_path / "sr.dcm"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="has no pixel data"):
        read_image(p)


def test_dicom_decompression_bomb(tmp_path):
    p = tmp_path / "bomb.dcm"
    p.write_bytes(_dicom(60000, 60000, pixels=b"\0" * 64))  # the header claims 3.6 G pixels
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert e.value.reason.startswith("decompression bomb") and "60000 x 60000" in e.value.reason


def test_png_decompression_bomb(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(p)  # a few kB on disk, 400 M pixels decoded
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert e.value.reason.startswith("decompression bomb") and "20000 x 20000" in e.value.reason
    assert "damaged" not in e.value.reason
