"""medvlp.app.support (the apps' logic) and the `medvlp app` launcher."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlp.app import support as sup
from medvlp.errors import ConfigError, DataError, ImageReadError, ModelError

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_upload_size_limit():
    sup.check_upload_size(5 * 2**20, limit_mb=5)
    with pytest.raises(DataError, match="big.dcm: 2048 MB is larger than the 200 MB upload limit"):
        sup.check_upload_size(2 * 2**30, limit_mb=200, name="big.dcm")
    with pytest.raises(DataError, match="upload limit"):
        sup.read_upload("x.png", b"0" * (2 * 2**20 + 1), limit_mb=2)


def test_read_upload_png_tiff_and_bad_bytes(tmp_path):
    arr = (np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    up = sup.read_upload("a.png", buf.getvalue())
    assert up.kind == "png" and up.image.size == (40, 48) and np.array_equal(np.asarray(up.image), arr)
    import tifffile

    stack = np.zeros((3, 16, 16), dtype=np.uint16)
    stack[0, :8] = 1000  # channel 0 lit in the top half
    tif = tmp_path / "m.tif"
    tifffile.imwrite(tif, stack, photometric="minisblack", metadata={"axes": "CYX"})
    from medvlp.domains import load_card

    up = sup.read_upload("m.tif", tif.read_bytes(), card=load_card("microscopy"))
    img = np.asarray(up.image)
    assert up.kind == "tiff" and img.shape == (16, 16, 3) and img[:8].sum() > 0 and img[8:].sum() == 0
    with pytest.raises(ImageReadError, match=sup.upload_id(b"\xff\xd8\xff garbage")):  # never the file name
        sup.read_upload("broken.jpg", b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="empty"):
        sup.read_upload("e.png", b"")


def test_read_upload_dicom_window_and_no_phi():
    dcm = DATA / "fixtures" / "cxr" / "RG1_J2KI.dcm"
    if not dcm.is_file():
        pytest.skip(f"{dcm} not found")
    up = sup.read_upload("chest.dcm", dcm.read_bytes())
    assert up.kind == "dicom" and up.image.size == (1841, 1955)
    assert "PatientName" not in up.metadata and "PatientID" not in up.metadata
    assert up.metadata["PhotometricInterpretation"] == "MONOCHROME1"
    lo, hi = up.value_range
    assert lo < up.window[0] < hi and up.window[1] > 0
    narrow = sup.read_upload("chest.dcm", dcm.read_bytes(), window=(up.window[0], 10.0))
    wide = np.asarray(up.image)[..., 0]
    thin = np.asarray(narrow.image)[..., 0]
    # a 10-unit window is nearly binary: far more pixels at the extremes than with the file's window
    ext = lambda a: float(((a == 0) | (a == 255)).mean())  # noqa: E731
    assert ext(thin) > ext(wide) + 0.3


def test_dicom_without_pixels_is_refused():
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality = "CR"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="(?i)pixel"):
        sup.read_upload("empty.dcm", buf.getvalue())


def test_labels_and_suggestions():
    from medvlp.domains import load_card

    card = load_card("pathology")
    assert sup.parse_labels("mucus, debris\n\nadipose tissue\n") == ["mucus", "debris", "adipose tissue"]
    with pytest.raises(ConfigError, match="empty"):
        sup.parse_labels(" \n , ")
    with pytest.raises(ConfigError, match="duplicate"):
        sup.parse_labels("mucus\nMucus")
    assert sup.label_suggestions(card, "")[:3] == ["adipose tissue", "background", "debris"]
    lung = sup.label_suggestions(card, "lung")
    assert lung[:3] == ["lung adenocarcinoma", "lung squamous cell carcinoma", "benign lung tissue"]
    assert "lung carcinoma" in lung  # from the ontology, not a card label


def test_resolve_model_source(tmp_path):
    with pytest.raises(ModelError, match="no model given"):
        sup.resolve_model_source("  ")
    with pytest.raises(ModelError, match="does not exist"):
        sup.resolve_model_source(str(tmp_path / "nope"))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        sup.resolve_model_source(str(tmp_path / "f.txt"))
    assert sup.resolve_model_source("tiny") == "tiny"
    assert sup.resolve_model_source("hf-hub:org/name") == "hf-hub:org/name"
    assert sup.resolve_model_source(str(tmp_path)) == str(tmp_path)


def test_demo_run_location(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLP_DEMO_RUN", str(tmp_path / "demo"))
    monkeypatch.chdir(tmp_path)
    assert sup.demo_run_dir("pathology") == tmp_path / "demo"
    assert sup.find_demo_run("pathology") is None
    (tmp_path / "runs" / "pathology-demo" / "model").mkdir(parents=True)
    assert sup.find_demo_run("pathology") == Path("runs") / "pathology-demo"


def test_results_table_and_json():
    from medvlp.api import DiagnosisResult

    rs = [DiagnosisResult("a.png", {"x": 0.7, "y": 0.3}, "x", ["x"], False),
          DiagnosisResult("b.png", {"x": 0.2, "y": 0.8}, "y", ["y", "x"], True)]
    df = sup.results_table(rs)
    assert list(df.columns) == ["image", "top_label", "prediction_set", "calibrated", "p(x)", "p(y)"]
    assert df.loc[1, "prediction_set"] == "y; x" and df.loc[1, "p(y)"] == 0.8
    js = json.loads(sup.results_json(rs))
    assert js[0] == {"image": "a.png", "probabilities": {"x": 0.7, "y": 0.3}, "top_label": "x",
                     "prediction_set": ["x"], "calibrated": False}


def test_launcher_command(monkeypatch):
    from medvlp.cli.app_cmd import app_script, streamlit_command

    assert app_script("diagnose").name == "diagnose.py" and app_script("explain").is_file()
    with pytest.raises(ConfigError, match="missing"):
        app_script("nope")
    cmd, env = streamlit_command("diagnose", ["--server.port", "8600"])
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"] and cmd[4].endswith("diagnose.py")
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == str(sup.MAX_UPLOAD_MB)
    assert cmd[-2:] == ["--server.port", "8600"] and env["MEDVLP_MAX_UPLOAD_MB"] == str(sup.MAX_UPLOAD_MB)
    cmd, env = streamlit_command("explain", ["--server.maxUploadSize=50"])
    assert cmd.count("--server.maxUploadSize") == 0 and "--server.maxUploadSize=50" in cmd
    assert env["MEDVLP_MAX_UPLOAD_MB"] == "50"


def test_train_demo_run_reports_progress(tmp_path):
    from medvlp.data.synthetic import demo_manifest

    m = demo_manifest("pathology", n_per_class=3, size=32, out_dir=tmp_path / "demo", progress=False)
    seen: list[tuple[int, int]] = []
    out = sup.train_demo_run("pathology", tmp_path / "run", progress=lambda s, t: seen.append((s, t)),
                             poll_s=0.05, data=str(m), steps=3, batch_size=6, eval=False, objective="clip")
    assert (out / "model" / "medvlp.json").is_file()
    assert seen[-1] == (3, 3) and all(s <= t for s, t in seen if t)
    assert json.loads((out / "model" / "medvlp.json").read_text())["trained_steps"] == 3


def test_launcher_binds_loopback_unless_an_address_is_given():
    from medvlp.cli.app_cmd import streamlit_command

    cmd, _ = streamlit_command("diagnose", [])
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    cmd, _ = streamlit_command("diagnose", ["--server.address", "0.0.0.0"])
    assert cmd.count("--server.address") == 1 and cmd[-1] == "0.0.0.0"
