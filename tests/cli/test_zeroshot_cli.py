"""``medvlp zeroshot`` on PNG/JPEG/TIFF/DICOM and ``medvlp eval zeroshot``: outputs and bad input.

Commands run through the real entry point ``medvlp.cli.main.main`` in-process (exit codes and the
one-line error on stderr included), on an untrained tiny model saved like a run's model folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlp.cli.main import main

LABELS = "adipose tissue,mucus,debris"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else int(code)), out.out, out.err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvlp.models import create_model

    d = tmp_path_factory.mktemp("zs-model") / "model"
    create_model("tiny", seed=0).save(d, extra={"domain": "pathology"})
    return d


def _dicom(path: Path, rgb: np.ndarray) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("zs-images")
    rng = np.random.default_rng(0)
    arrs = [(rng.random((80, 96, 3)) * 255).astype(np.uint8) for _ in range(4)]
    Image.fromarray(arrs[0]).save(d / "a.png")
    Image.fromarray(arrs[1]).save(d / "b.jpg", quality=95)
    Image.fromarray(arrs[2]).save(d / "c.tif")
    _dicom(d / "d.dcm", arrs[3])
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return {p.stem: p for p in d.iterdir()}


def test_zeroshot_json_contract_on_png_jpeg_tiff_dicom(model_dir: Path, images: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(images[k]) for k in ("a", "b", "c", "d")]
    out = tmp_path / "res.json"
    code, stdout, err = run(["zeroshot", "--model", str(model_dir), "--labels", LABELS, *paths, "--json", str(out)],
                            capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert [r["image"] for r in res] == paths
    for r in res:
        assert set(r) == {"image", "probabilities", "top_label", "prediction_set", "calibrated"}
        assert list(r["probabilities"]) == LABELS.split(",")
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["top_label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["top_label"] in r["prediction_set"] and r["calibrated"] is False
    assert len([ln for ln in stdout.splitlines() if "\tuncalibrated" in ln]) == 4
    # the command and the Python API give the same numbers
    import medvlp

    m = medvlp.load(str(model_dir))
    api = m.zero_shot(paths, labels=LABELS.split(","))
    for r, a in zip(res, api, strict=True):
        for lab, p in a.probabilities.items():
            assert r["probabilities"][lab] == pytest.approx(p, abs=1e-6)


@pytest.mark.parametrize(("labels", "needle"), [
    ("", "label list is empty"),
    (" , ", "label list is empty"),
    ("mucus", "at least two labels"),
    ("mucus,debris,Mucus", "duplicate label 'Mucus'"),
])
def test_bad_label_lists_fail_with_one_line(model_dir: Path, images: dict[str, Path], labels: str, needle: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(["zeroshot", "--model", str(model_dir), "--labels", labels, str(images["a"])], capsys)
    assert code == 1
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert stdout == ""


def test_unknown_label_uses_raw_text_and_says_so(model_dir: Path, images: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(["zeroshot", "--model", str(model_dir), "--labels", "mucus,zebra stripes",
                             str(images["a"])], capsys)
    assert code == 0
    assert "raw text" in err and "zebra stripes" in err
    assert stdout.count("\n") == 1


def test_unreadable_image_partial_results_exit_2(model_dir: Path, images: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res.json"
    paths = [str(images["a"]), str(images["broken"]), str(images["c"])]
    code, stdout, err = run(["zeroshot", "--model", str(model_dir), "--labels", LABELS, *paths,
                             "--json", str(out)], capsys)
    assert code == 2
    assert "broken.png" in err and "1 of 3 images could not be read" in err
    res = json.loads(out.read_text())
    assert [r["image"] for r in res] == paths
    assert res[1]["probabilities"] == {} and res[1]["top_label"] is None and res[1]["error"]
    assert res[0]["top_label"] in LABELS.split(",") and res[2]["top_label"] in LABELS.split(",")
    assert len(stdout.strip().splitlines()) == 3  # two result lines + "wrote ..."
    # nothing readable at all: a failure, not a partial result
    code, _, err = run(["zeroshot", "--model", str(model_dir), "--labels", LABELS, str(images["broken"])], capsys)
    assert code == 1 and "no image could be read" in err


def test_missing_image_and_missing_model(model_dir: Path, tmp_path: Path, images: dict[str, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["zeroshot", "--model", str(model_dir), "--labels", LABELS, str(images["a"]),
                        str(tmp_path / "nope.png")], capsys)
    assert code == 2 and "nope.png" in err
    code, _, err = run(["zeroshot", "--model", str(tmp_path / "no-model"), "--labels", LABELS, str(images["a"])],
                       capsys)
    assert code == 1 and "no-model" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def manifest(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("zs-manifest")
    rng = np.random.default_rng(1)
    rows = ["image,label"]
    for i in range(12):
        p = d / f"img{i}.png"
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(p)
        rows.append(f"{p.name},{'mucus' if i % 2 else 'debris'}")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    return d / "m.csv"


def test_eval_zeroshot_prints_and_writes_prompt_spread(model_dir: Path, manifest: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "metrics.json"
    code, stdout, err = run(["eval", "zeroshot", "--model", str(model_dir), "--data", str(manifest),
                             "--n-boot", "50", "--prompt-subsets", "4", "--json", str(out)], capsys)
    assert code == 0, err
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 12 and metrics["labels"] == ["debris", "mucus"]
    for key in ("accuracy", "balanced_accuracy", "auroc"):
        assert set(metrics[key]) == {"value", "ci_low", "ci_high"}
    spread = metrics["prompt_spread"]
    assert spread["n_subsets"] == 4 and spread["templates_per_subset"] == 5 and spread["templates_total"] == 10
    acc = spread["metrics"]["accuracy"]
    assert len(acc["values"]) == 4 and acc["min"] <= acc["mean"] <= acc["max"]
    assert "prompt spread over 4 random subsets of 5/10 templates" in stdout


def test_eval_zeroshot_manifest_labels_outside_the_label_set(model_dir: Path, manifest: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["eval", "zeroshot", "--model", str(model_dir), "--data", str(manifest),
                        "--labels", "adipose tissue,lymphocytes", "--n-boot", "0", "--prompt-subsets", "0"], capsys)
    assert code == 1
    assert "no row has a label in the label set" in err and "'debris' (6)" in err and "'mucus' (6)" in err
    # partly outside: evaluated on the rows inside, the others counted and named
    code, stdout, err = run(["eval", "zeroshot", "--model", str(model_dir), "--data", str(manifest),
                             "--labels", "mucus,adipose tissue", "--n-boot", "0", "--prompt-subsets", "0"], capsys)
    assert code == 0
    assert "(n=6)" in stdout and "6 rows had labels outside the label set" in err and "'debris' (6)" in err


def test_one_error_handler_prints_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys, tmp_path):
    import medvlp
    from medvlp.errors import ModelError

    def bad_load(*a, **k):
        raise ModelError("the model folder\n  holds no weights:   retrain or pass another --model")

    monkeypatch.setattr(medvlp, "load", bad_load)
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    code, out, err = run(["zeroshot", str(img), "--model", "m"], capsys)
    assert code == 1 and out == ""
    assert err == "medvlp: error: the model folder holds no weights: retrain or pass another --model\n"

    def bug(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(medvlp, "load", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # not swallowed into an error line
        main(["zeroshot", str(img), "--model", "m"])


def test_cli_scores_through_public_model_methods(model_dir: Path, images: dict[str, Path]):
    import ast

    import torch

    import medvlp
    from medvlp.cli import eval as cli_eval
    from medvlp.eval import zeroshot as zs

    m = medvlp.load(str(model_dir))
    path = str(next(iter(images.values())))
    px = m.pixels(path)
    assert px.dtype == torch.uint8 and px.shape[0] == 3
    feats = m.embed_pixels(px[None])
    assert torch.allclose(feats, m.embed_images([path]), atol=1e-6)
    clf = m.classifier(LABELS.split(","))
    res = m.result(path, px, clf.predict_proba(feats)[0], clf)
    assert res.to_dict() == m.zero_shot(path, LABELS.split(",")).to_dict()
    # the command drives no private Model attribute (m._pixels / m._norm / m._result)
    tree = ast.parse(Path(cli_eval.__file__).read_text())
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "m" and n.attr.startswith("_")]
    assert private == []
    assert callable(zs.class_embeddings)  # the public name (the private alias is gone)
