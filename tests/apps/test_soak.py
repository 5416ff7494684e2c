"""Soak: the diagnose app answers 200 sequential uploads of good and bad files (valid PNG, random bytes,
truncated PNG, tiny DICOM) without an exception, every answer a result or a clear message, and its memory
(resident set) grows by less than 20% between upload 20 and upload 200."""

from __future__ import annotations

import gc
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APPS = Path(__file__).resolve().parents[2] / "apps"
pytestmark = pytest.mark.slow


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this platform")


def _files(rng: np.random.Generator):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    def dicom(i: int) -> bytes:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.Modality, ds.Rows, ds.Columns = "CR", 32, 32
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = (np.arange(1024, dtype=np.uint16) * (i + 1)).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    kinds = [("good.png", png, True), ("random.png", lambda i: rng.bytes(2000), False),
             ("cut.png", lambda i: png(i)[:300], False), ("x.dcm", dicom, True)]
    for i in range(200):
        name, make, good = kinds[i % len(kinds)]
        yield f"{i}_{name}", make(i), good


@pytest.mark.timeout(1800)
def test_two_hundred_uploads(demo_run, monkeypatch, tmp_path):
    for key in ("MEDVLP_APP_TOKEN", "MEDVLP_APP_DATA_ROOT", "MEDVLP_APP_MODELS", "MEDVLP_APP_ALLOW_TRAINING"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MEDVLP_DEMO_RUN", str(demo_run[0]))
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(APPS / "diagnose.py"), default_timeout=240).run()
    assert not at.exception
    rng = np.random.default_rng(0)
    rss_at_20 = None
    answered = 0
    for i, (name, data, good) in enumerate(_files(rng)):
        mime = "application/dicom" if name.endswith(".dcm") else "image/png"
        at.file_uploader(key="uploads").set_value((name, data, mime)).run()
        assert not at.exception, (i, name, at.exception)
        if good:
            assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 1, (i, name)
        else:
            errors = [e.value for e in at.error]
            assert len(errors) == 1 and errors[0].startswith("upload-"), (i, name, errors)
        answered += 1
        if i == 19:
            gc.collect()
            rss_at_20 = _rss_mb()
    gc.collect()
    rss_end = _rss_mb()
    assert answered == 200
    assert rss_end < 1.2 * rss_at_20, f"resident memory grew from {rss_at_20:.0f} MB to {rss_end:.0f} MB"
