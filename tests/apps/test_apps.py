"""The Streamlit apps driven with streamlit.testing.v1.AppTest: widgets, uploads, rendered values, bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APPS = Path(__file__).resolve().parents[2] / "apps"
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TIMEOUT = 240  # seconds per script run; the CPU may be shared with other jobs


def _app(name: str) -> AppTest:
    return AppTest.from_file(str(APPS / f"{name}.py"), default_timeout=TIMEOUT)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _texts(at: AppTest) -> str:
    parts = [e.value for e in [*at.markdown, *at.caption, *at.error, *at.info, *at.warning]]
    parts += [e.value for e in [*at.sidebar.error, *at.sidebar.info, *at.sidebar.caption]]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def no_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLP_DEMO_RUN", str(tmp_path / "no-demo-here"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def with_demo(demo_run, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDVLP_DEMO_RUN", str(demo_run[0]))
    monkeypatch.chdir(tmp_path)
    return demo_run


# ------------------------------------------------------------------------------------------------ fast
def test_diagnose_without_a_model_offers_the_demo(no_demo, monkeypatch):
    monkeypatch.setenv("MEDVLP_APP_ALLOW_TRAINING", "1")  # `medvlp app diagnose --allow-training`
    at = _app("diagnose").run()
    assert not at.exception
    assert at.sidebar.selectbox(key="domain").value == "pathology"
    assert "No pathology demo model yet" in _texts(at)
    assert [b.label for b in at.sidebar.button] == ["Train the demo model"]
    assert "Choose a model" in _texts(at)


def test_a_broken_allowed_model_shows_a_message(no_demo, tmp_path, monkeypatch):
    (tmp_path / "broken-run").mkdir()
    monkeypatch.setenv("MEDVLP_APP_MODELS", str(tmp_path / "broken-run"))  # `--models` at launch
    at = _app("diagnose").run()
    at.sidebar.radio(key="model_mode").set_value("A model this app was started with").run()
    assert not at.exception
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and "could not load the model" in errors[0]
    # the app keeps running: choosing another domain still works
    at.sidebar.selectbox(key="domain").set_value("cxr").run()
    assert not at.exception and at.sidebar.caption[0].value.lower().startswith("chest")


def test_explain_slide_heatmap_without_a_model(no_demo, tmp_path):
    import h5py

    p = tmp_path / "tiles.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("coords", data=np.array([[0, 0], [256, 0], [0, 256]]))
        f.create_dataset("scores", data=np.array([0.9, 0.1, 0.5]))
        f.attrs["patch_size_level0"] = 256
        f.attrs["level0_width"] = 512
        f.attrs["level0_height"] = 512
    at = _app("explain").run()
    assert not at.exception
    at.file_uploader(key="slide_h5").upload("tiles.h5", p.read_bytes()).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="slide_score").options == ["score"]
    imgs = at.get("image")
    assert len(imgs) == 1
    # 512 x 512 level 0 -> a 1024 px blank thumbnail; three of four quadrants have a tile
    assert imgs[0].captions == ["score: 786432 thumbnail pixels covered by tiles"]
    at.file_uploader(key="slide_h5").set_value(("junk.h5", b"nope", "application/octet-stream")).run()
    assert not at.exception
    assert any("not a readable HDF5" in e.value for e in at.error)


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_diagnose_uploads_and_results(with_demo):
    root = with_demo[1].parent
    imgs = sorted((root / "images").glob("02_*.png"))[:1] + sorted((root / "images").glob("00_*.png"))[:1]
    at = _app("diagnose").run()
    assert not at.exception
    assert at.selectbox(key="labels_set").value == "nct_crc_he"  # what the model's metadata names
    at.selectbox(key="labels_set").set_value("demo").run()
    labels = at.text_area[0].value.splitlines()
    assert labels == ["adipose tissue", "lymphocytes", "mucus", "smooth muscle", "debris",
                      "colorectal adenocarcinoma epithelium"]  # the demo model's label set
    at.file_uploader(key="uploads").set_value([(p.name, p.read_bytes(), "image/png") for p in imgs]).run()
    assert not at.exception, at.exception
    tops = [m.value for m in at.markdown if "top label" in m.value]
    assert len(tops) == 2 and all(any(f"**{lab}**" in t for lab in labels) for t in tops)
    df = at.dataframe[0].value
    from medvlp.app.support import upload_id

    assert list(df["image"]) == [upload_id(p.read_bytes()) for p in imgs]  # opaque ids, never file names
    probs = df[[f"p({lab})" for lab in labels]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert list(df["top_label"]) == [labels[int(i)] for i in probs.argmax(1)]
    assert any("calibrated: no" in c.value for c in at.caption)
    # label edits: two labels only
    at.text_area[0].input("mucus\nadipose tissue").run()
    df = at.dataframe[0].value
    assert [c for c in df.columns if c.startswith("p(")] == ["p(mucus)", "p(adipose tissue)"]
    # ontology-backed suggestions
    at.text_input(key="labels_query").input("lung").run()
    assert "lung adenocarcinoma" in at.multiselect(key="labels_add").options
    # empty label list: a message, no results, no exception
    at.text_area[0].input("").run()
    assert not at.exception and any("Labels" in e.value and "empty" in e.value for e in at.error)
    assert len(at.dataframe) == 0


@pytest.mark.slow
def test_diagnose_bad_uploads(with_demo):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName = "Doe^Jane"
    ds.Modality = "CR"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    good = _png(np.full((64, 64, 3), 200, dtype=np.uint8))
    at = _app("diagnose").run()
    at.file_uploader(key="uploads").set_value([
        ("broken.png", b"\x89PNG\r\n\x1a\n garbage", "image/png"),
        ("nopixels.dcm", buf.getvalue(), "application/dicom"),
        ("good.png", good, "image/png"),
    ]).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 2
    from medvlp.app.support import upload_id

    assert errors[0].startswith(upload_id(b"\x89PNG\r\n\x1a\n garbage") + ":")
    assert errors[1].startswith(upload_id(buf.getvalue()) + ":")
    assert "broken.png" not in _texts(at) and "nopixels" not in _texts(at)
    assert "pixel" in errors[1].lower()
    assert "Doe" not in _texts(at)
    assert list(at.dataframe[0].value["image"]) == [upload_id(good)]  # the readable one still gets a result


@pytest.mark.slow
def test_diagnose_dicom_window_controls(with_demo):
    dcm = DATA / "fixtures" / "cxr" / "RG1_J2KI.dcm"
    if not dcm.is_file():
        pytest.skip(f"{dcm} not found")
    at = _app("diagnose").run()
    at.file_uploader(key="uploads").set_value(("chest.dcm", dcm.read_bytes(), "application/dicom")).run()
    assert not at.exception, at.exception
    from medvlp.app.support import upload_id

    uid = upload_id(dcm.read_bytes())
    centre, width = at.slider(key=f"wc_{uid}"), at.slider(key=f"ww_{uid}")
    assert centre.min < centre.value < centre.max and width.value > 1
    header = json.loads(at.json[0].proto.body)
    assert header["Modality"] == "CR" and header["PhotometricInterpretation"] == "MONOCHROME1"
    assert not any(k.startswith("Patient") and k != "PatientOrientation" for k in header)
    assert len([m for m in at.markdown if "top label" in m.value]) == 1
    before = at.dataframe[0].value.iloc[0, 4:].to_numpy(dtype=float)
    centre.set_value(centre.min + 0.1 * (centre.max - centre.min)).run()
    assert not at.exception
    after = at.dataframe[0].value.iloc[0, 4:].to_numpy(dtype=float)
    assert not np.allclose(before, after)  # the window changed the image the model saw


@pytest.mark.slow
def test_explain_image_page(with_demo, monkeypatch):
    root = with_demo[1].parent
    monkeypatch.setenv("MEDVLP_APP_DATA_ROOT", str(root))  # `medvlp app explain --data-root ROOT`
    img = sorted((root / "images").glob("02_*.png"))[0]
    at = _app("explain").run()
    assert not at.exception
    at.selectbox(key="x_labels_set").set_value("demo").run()
    at.file_uploader(key="x_upload").set_value((img.name, img.read_bytes(), "image/png")).run()
    assert not at.exception, at.exception
    concepts = at.dataframe[0].value
    assert len(concepts) == 12 and list(concepts["score"]) == sorted(concepts["score"], reverse=True)
    assert "nuclear pleomorphism" in set(concepts["concept"])
    options = at.selectbox(key="hm_key").options
    assert options[:6] == ["adipose tissue", "lymphocytes", "mucus", "smooth muscle", "debris",
                           "colorectal adenocarcinoma epithelium"]
    captions = " ".join(c for e in at.get("image") for c in e.captions)
    assert "Grad-CAM" in captions and "concept head" in captions
    at.slider(key="hm_alpha").set_value(0.9).run()
    at.selectbox(key="hm_key").set_value("mucus").run()
    assert not at.exception
    # concept bottleneck on the demo corpus
    at.text_input(key="cbm_manifest_path").input(with_demo[1].name).run()  # relative to the data root
    at.button(key="cbm_fit").click().run()
    assert not at.exception, at.exception
    assert any("Bottleneck prediction" in m.value for m in at.markdown)
    weights = at.dataframe[2].value
    assert weights.shape == (6, 12)
    # empty concept list: a message
    at.text_area(key="concepts_pathology").input("").run()
    assert not at.exception and any("Concepts" in e.value for e in at.error)
