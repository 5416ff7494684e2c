"""The apps' safe defaults (issue 13): loopback, an optional access token, no server-side paths without
``--data-root`` (and confined to it), models only from the launch allow-list, training only with
``--allow-training``, DICOM headers reduced to technical tags, upload names never shown or exported."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlp.app.settings import AppSettings, confine, parse_models, token_ok
from medvlp.errors import ConfigError, DataError

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APPS = Path(__file__).resolve().parents[2] / "apps"
NAME = "Doe^Jane MRN-0042"


def _app(name: str) -> AppTest:
    return AppTest.from_file(str(APPS / f"{name}.py"), default_timeout=240)


def _texts(at: AppTest) -> str:
    parts = [e.value for e in [*at.markdown, *at.caption, *at.error, *at.info, *at.warning]]
    parts += [e.value for e in [*at.sidebar.error, *at.sidebar.info, *at.sidebar.caption, *at.sidebar.markdown]]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for key in ("MEDVLP_APP_TOKEN", "MEDVLP_APP_DATA_ROOT", "MEDVLP_APP_MODELS", "MEDVLP_APP_ALLOW_TRAINING"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MEDVLP_DEMO_RUN", str(tmp_path / "no-demo-here"))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


# ---------------------------------------------------------------------------------------------- launcher
def test_launcher_flags_become_settings_and_never_reach_streamlit(tmp_path, clean_env):
    from medvlp.cli.app_cmd import network_warning, streamlit_command

    cmd, env = streamlit_command("diagnose", [])
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and network_warning(cmd, env) is None
    s = AppSettings.from_env(env)
    assert s.token is None and s.data_root is None and s.models == () and not s.allow_training

    (tmp_path / "data").mkdir()
    cmd, env = streamlit_command("diagnose", ["--host", "0.0.0.0", "--token=s3cret", "--data-root",
                                              str(tmp_path / "data"), "--models", "tiny", "--allow-training",
                                              "--server.port", "8600"])
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0" and cmd[cmd.index("--server.port") + 1] == "8600"
    assert not {"--host", "--token=s3cret", "--data-root", "--models", "--allow-training"} & set(cmd)
    s = AppSettings.from_env(env)
    assert s.token == "s3cret" and s.data_root == (tmp_path / "data").resolve() and s.models == ("tiny",)
    assert s.allow_training
    assert "access token only" in network_warning(cmd, env)
    cmd, env = streamlit_command("diagnose", ["--host", "0.0.0.0"])
    assert "no authentication" in network_warning(cmd, env)


def test_launcher_refuses_bad_flags(tmp_path, clean_env):
    from medvlp.cli.app_cmd import streamlit_command

    with pytest.raises(ConfigError, match="no such folder"):
        streamlit_command("diagnose", ["--data-root", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="--models"):
        parse_models(f"tiny,{tmp_path / 'not-a-model'}")
    with pytest.raises(ConfigError, match="needs a value"):
        streamlit_command("diagnose", ["--token"])


def test_token_check():
    assert token_ok(None, None) and token_ok("x", "")
    assert token_ok("s3cret", "s3cret")
    assert not token_ok("s3cre", "s3cret") and not token_ok(None, "s3cret") and not token_ok("", "s3cret")


# ---------------------------------------------------------------------------------------------- paths
def test_paths_are_confined_to_the_data_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.csv").write_text("image\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    (root / "link").symlink_to(secret)
    s = AppSettings(data_root=root.resolve())
    assert confine("sub/ok.csv", s) == (root / "sub" / "ok.csv").resolve()
    assert confine(str(root / "sub" / "ok.csv"), s) == (root / "sub" / "ok.csv").resolve()
    for bad in ("../secret.txt", str(secret), "sub/../../secret.txt", "link", "/etc/passwd"):
        with pytest.raises(DataError, match="outside the app's data root"):
            confine(bad, s)
    with pytest.raises(DataError, match="no such file"):
        confine("sub/missing.csv", s)
    with pytest.raises(DataError, match="uploads only"):
        confine("sub/ok.csv", AppSettings())


# ---------------------------------------------------------------------------------------------- pages
def test_token_gate_shows_nothing_but_the_prompt(clean_env):
    clean_env.setenv("MEDVLP_APP_TOKEN", "s3cret")
    at = _app("diagnose").run()
    assert not at.exception
    assert [t.key for t in at.text_input] == ["_access_token"]
    assert len(at.sidebar.selectbox) == 0 and "access token" in _texts(at)
    at.text_input(key="_access_token").input("wrong").run()
    assert any("wrong access token" in e.value for e in at.error) and len(at.sidebar.selectbox) == 0
    at.text_input(key="_access_token").input("s3cret").run()
    assert not at.exception and at.sidebar.selectbox(key="domain").value == "pathology"


def test_no_free_text_models_and_no_training_without_the_flags(clean_env, tmp_path):
    at = _app("diagnose").run()
    assert not at.exception
    assert at.sidebar.radio(key="model_mode").options == ["Demo model"]
    assert len(at.sidebar.text_input) == 0  # no path or hub id can be typed
    assert len(at.sidebar.button) == 0 and "--allow-training" in _texts(at)
    clean_env.setenv("MEDVLP_APP_ALLOW_TRAINING", "1")
    clean_env.setenv("MEDVLP_APP_MODELS", "tiny")
    at = _app("diagnose").run()
    assert [b.label for b in at.sidebar.button] == ["Train the demo model"]
    assert at.sidebar.radio(key="model_mode").options == ["Demo model", "A model this app was started with"]
    at.sidebar.radio(key="model_mode").set_value("A model this app was started with").run()
    assert at.sidebar.selectbox(key="model_source").options == ["tiny"]


def test_explain_offers_server_paths_only_under_a_data_root(clean_env, tmp_path):
    at = _app("explain").run()
    assert not at.exception
    assert "slide_path" not in [t.key for t in at.text_input]
    root = tmp_path / "slides"
    root.mkdir()
    clean_env.setenv("MEDVLP_APP_DATA_ROOT", str(root))
    at = _app("explain").run()
    assert "slide_path" in [t.key for t in at.text_input]
    at.text_input(key="slide_path").input("../../etc/passwd").run()
    assert not at.exception and any("outside the app's data root" in e.value for e in at.error)


# ---------------------------------------------------------------------------------------------- patient data
def _phi_dicom(burned: bool = False) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    for kw in ("PatientName", "PatientID", "OtherPatientIDs", "StudyDescription", "SeriesDescription",
               "ProtocolName", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
               "PerformingPhysicianName", "OperatorsName", "AccessionNumber", "ImageComments", "StudyID",
               "RequestedProcedureDescription", "PatientComments", "BodyPartExamined", "Manufacturer",
               "StationName", "DeviceSerialNumber"):
        setattr(ds, kw, NAME if kw != "BodyPartExamined" else "CHEST")
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20200202"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = 32, 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.BurnedInAnnotation = "YES" if burned else "NO"
    ds.PixelData = (np.arange(32 * 32, dtype=np.uint16) * 40).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_display_tags_hold_no_patient_text(tmp_path):
    from medvlp.io.dicom import display_tags

    p = tmp_path / "x.dcm"
    p.write_bytes(_phi_dicom())
    tags = display_tags(p)
    text = repr(tags)
    assert "Doe" not in text and "MRN" not in text and "1970" not in text and "2020" not in text
    assert tags["Modality"] == "CR" and tags["Rows"] == 32 and tags["warnings"] == []
    p.write_bytes(_phi_dicom(burned=True))
    assert "BurnedInAnnotation" in display_tags(p)["warnings"][0]
    import pydicom

    assert display_tags(pydicom.dcmread(p))["Modality"] == "CR"  # a dataset works too


def test_uploads_are_known_by_an_opaque_id(tmp_path):
    from medvlp.app import support as sup

    data = _phi_dicom(burned=True)
    up = sup.read_upload("MRN-0042_Doe.dcm", data)
    assert up.name == sup.upload_id(data) and up.name.startswith("upload-")
    assert "Doe" not in repr(up.metadata) and up.warnings and "BurnedInAnnotation" in up.warnings[0]
    with pytest.raises(DataError) as e:
        sup.read_upload("MRN-0042_Doe.png", b"\x89PNG\r\n\x1a\n garbage")
    assert "MRN" not in str(e.value) and str(e.value).startswith("upload-")


@pytest.mark.slow
def test_results_and_exports_never_carry_the_file_name(monkeypatch, demo_run, tmp_path):
    for key in ("MEDVLP_APP_TOKEN", "MEDVLP_APP_DATA_ROOT", "MEDVLP_APP_MODELS", "MEDVLP_APP_ALLOW_TRAINING"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MEDVLP_DEMO_RUN", str(demo_run[0]))
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 180, dtype=np.uint8)).save(buf, format="PNG")
    at = _app("diagnose").run()
    at.file_uploader(key="uploads").set_value([("MRN-0042_Doe.png", buf.getvalue(), "image/png"),
                                              ("ACC777.dcm", _phi_dicom(burned=True), "application/dicom")]).run()
    assert not at.exception, at.exception
    assert "MRN-0042" not in _texts(at) and "ACC777" not in _texts(at) and "Doe" not in _texts(at)
    df = at.dataframe[0].value
    assert all(str(x).startswith("upload-") for x in df["image"])
    assert any("BurnedInAnnotation" in w.value for w in at.warning)
    # the CSV download is this table; the JSON download is built from the same results
    from medvlp.app import support as sup

    assert "MRN" not in df.to_csv(index=False)
    assert sup.upload_id(buf.getvalue()) in list(df["image"])
