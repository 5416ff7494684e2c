"""Importers (folder, MedMNIST, HAM10000-style metadata) and the `medvlp data import` commands."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from medvlp.cli.data import app
from medvlp.cli.main import main
from medvlp.data.importers import (
    HAM10000_DX,
    MEDMNIST_LABELS,
    import_folder,
    import_ham10000,
    import_medmnist,
    infer_medmnist_flag,
    medmnist_label_names,
)
from medvlp.domains import load_card
from medvlp.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PNEUMONIA_NPZ = SHARED / "datasets" / "pneumoniamnist_trainval.npz"

CXR_CARD = """
name = "{name}"
ontology = "cxr"
default_label_set = "pneumonia"
[prompts]
templates = ["a chest x-ray showing {{}}.", "chest radiograph with {{}}."]
captions = ["chest x-ray: {{}}.", "frontal chest radiograph, {{}}."]
[label_sets.pneumonia]
labels = [
  {{ name = "normal", concept = "cxr:normal_chest", synonyms = ["clear lungs"] }},
  {{ name = "pneumonia", concept = "cxr:pneumonia", synonyms = ["lung infection"] }},
]
[label_sets.findings]
multilabel = true
labels = [
  {{ name = "atelectasis", concept = "cxr:atelectasis" }},
  {{ name = "pleural effusion", concept = "cxr:pleural_effusion", synonyms = ["effusion"] }},
  {{ name = "no finding", concept = "cxr:no_finding" }},
]
"""

DERM_CARD = """
name = "{name}"
ontology = "dermatology"
[prompts]
templates = ["a dermoscopy image of {{}}.", "skin lesion: {{}}."]
captions = ["dermoscopic photograph of {{}}.", "close-up of a skin lesion, {{}}."]
[label_sets.ham10000]
labels = [
  {{ name = "actinic keratosis", concept = "derm:actinic_keratosis", synonyms = ["solar keratosis"] }},
  {{ name = "basal cell carcinoma", concept = "derm:basal_cell_carcinoma" }},
  {{ name = "benign keratosis", concept = "derm:benign_keratosis" }},
  {{ name = "dermatofibroma", concept = "derm:dermatofibroma" }},
  {{ name = "melanoma", concept = "derm:melanoma", synonyms = ["malignant melanoma"] }},
  {{ name = "melanocytic nevus", concept = "derm:melanocytic_nevus", synonyms = ["mole"] }},
  {{ name = "vascular lesion", concept = "derm:vascular_lesion" }},
]
"""


def _write_card(tmp_path: Path, text: str, name: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text.format(name=name), encoding="utf-8")
    return p


@pytest.fixture
def cxr_card_path(tmp_path: Path) -> Path:
    return _write_card(tmp_path, CXR_CARD, "testcxr")


@pytest.fixture
def derm_card_path(tmp_path: Path) -> Path:
    return _write_card(tmp_path, DERM_CARD, "testderm")


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), value, np.uint8)).save(path)


def _captions(cell: str) -> list[str]:
    caps = json.loads(cell)
    assert isinstance(caps, list) and all(isinstance(c, str) and c for c in caps)
    return caps


@dataclass
class _Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _main(*args: object) -> _Result:
    """Run ``medvlp ARGS`` through the real entry point (its one error handler), capturing output."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return _Result(code, out.getvalue(), err.getvalue())



# --------------------------------------------------------------------------------------------------
# folder


def _class_tree(root: Path) -> None:
    _png(root / "normal" / "b.png", 10)
    _png(root / "normal" / "a.png", 20)
    _png(root / "normal" / "sub" / "c.PNG", 30)  # recursive, extension case-insensitive
    _png(root / "bacterial_pneumonia" / "x.png", 40)
    (root / "bacterial_pneumonia" / "notes.txt").write_text("not an image")
    (root / "bacterial_pneumonia" / "empty.png").write_bytes(b"")
    (root / "empty_class").mkdir()
    _png(root / "loose.png", 50)
    os.close(os.open(os.fsencode(root / "normal") + b"/bad\xffname.png", os.O_CREAT | os.O_WRONLY))


def test_import_folder_rows_paths_captions_and_problems(tmp_path: Path, cxr_card_path: Path) -> None:
    root = tmp_path / "imgs"
    _class_tree(root)
    card = load_card(cxr_card_path)
    out = tmp_path / "out" / "manifest.csv"
    summary = import_folder(root, card=card, out_manifest=out)
    df = pd.read_csv(out)
    # Sorted: class folders by name, files by path inside the class folder.
    assert df["image"].tolist() == [
        "../imgs/bacterial_pneumonia/x.png",
        "../imgs/normal/a.png",
        "../imgs/normal/b.png",
        "../imgs/normal/sub/c.PNG",
    ]
    assert all((out.parent / p).is_file() for p in df["image"])
    assert df["label"].tolist() == ["bacterial pneumonia", "normal", "normal", "normal"]
    assert summary.counts == {"all": {"normal": 3, "bacterial pneumonia": 1}}
    assert summary.n_rows == 4
    # Known label: card captions (templates x name + synonyms); unknown: templates with the raw label.
    assert _captions(df["caption"][1]) == card.captions_for("normal")
    assert "chest x-ray: clear lungs." in _captions(df["caption"][1])
    assert _captions(df["caption"][0]) == [
        "chest x-ray: bacterial pneumonia.",
        "frontal chest radiograph, bacterial pneumonia.",
    ]
    # Captions come from the caption pool, never from the zero-shot prompts (train/eval leakage).
    prompts = {tpl.format(x) for tpl in card.prompts.templates for x in ("normal", "clear lungs", "bacterial pneumonia")}
    assert not prompts & {c for cell in df["caption"] for c in _captions(cell)}
    assert df["group"].tolist() == [
        "bacterial pneumonia",
        "cxr:normal_chest",
        "cxr:normal_chest",
        "cxr:normal_chest",
    ]
    assert summary.unknown_labels == ["bacterial pneumonia"]
    assert any("bacterial pneumonia" in w for w in summary.warnings)
    problems = "\n".join(summary.problems)
    assert "empty_class: no images" in problems
    assert "empty.png: empty file" in problems
    assert "not valid UTF-8" in problems and "bad\\xffname.png" in problems
    assert "1 file(s) without an image extension" in problems
    assert "1 image(s) directly under" in problems
    # Same input, same output.
    out2 = tmp_path / "again.csv"
    import_folder(root, card=card, out_manifest=out2)
    assert pd.read_csv(out2)["label"].tolist() == df["label"].tolist()


def test_import_folder_label_map(tmp_path: Path, cxr_card_path: Path) -> None:
    root = tmp_path / "imgs"
    _class_tree(root)
    card = load_card(cxr_card_path)
    lm = tmp_path / "map.json"
    lm.write_text(json.dumps({"bacterial_pneumonia": "pneumonia"}))
    summary = import_folder(root, card=card, out_manifest=tmp_path / "m.csv", label_map=lm)
    df = pd.read_csv(tmp_path / "m.csv")
    assert df["label"].tolist() == ["pneumonia", "normal", "normal", "normal"]
    assert _captions(df["caption"][0]) == card.captions_for("pneumonia")
    assert summary.unknown_labels == []
    assert any("without a label-map entry" in w and "normal" in w for w in summary.warnings)

    lm.write_text(json.dumps({"bacterial_pneumonia": "pneumonia", "viral": "x", "covid": "y"}))
    with pytest.raises(ConfigError, match=r"\['covid', 'viral'\] are not folders"):
        import_folder(root, card=card, out_manifest=tmp_path / "m.csv", label_map=lm)
    lm.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        import_folder(root, card=card, out_manifest=tmp_path / "m.csv", label_map=lm)
    with pytest.raises(ConfigError, match="non-empty label"):
        import_folder(root, card=card, out_manifest=tmp_path / "m.csv", label_map={"normal": ""})


def test_import_folder_bad_input(tmp_path: Path, cxr_card_path: Path) -> None:
    card = load_card(cxr_card_path)
    with pytest.raises(DataError, match="does not exist"):
        import_folder(tmp_path / "nope", card=card, out_manifest=tmp_path / "m.csv")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "a.png", 1)
    with pytest.raises(DataError, match="no class subfolders"):
        import_folder(tmp_path / "flat", card=card, out_manifest=tmp_path / "m.csv")
    (tmp_path / "flat" / "cls").mkdir()
    (tmp_path / "flat" / "cls" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        import_folder(tmp_path / "flat", card=card, out_manifest=tmp_path / "m.csv")
    with pytest.raises(ConfigError, match="must end in one of"):
        import_folder(tmp_path / "flat", card=card, out_manifest=tmp_path / "m.txt")


# --------------------------------------------------------------------------------------------------
# MedMNIST


def test_infer_flag_and_builtin_labels() -> None:
    assert infer_medmnist_flag("pneumoniamnist_trainval.npz") == "pneumoniamnist"
    assert infer_medmnist_flag("/x/PneumoniaMNIST_224.npz") == "pneumoniamnist"
    assert infer_medmnist_flag("organsmnist.npz") == "organsmnist"
    with pytest.raises(ConfigError, match="3D MedMNIST"):
        infer_medmnist_flag("organmnist3d.npz")
    with pytest.raises(ConfigError, match="pass --flag with one of: bloodmnist, breastmnist, chestmnist"):
        infer_medmnist_flag("mydata.npz")
    assert len(MEDMNIST_LABELS) == 12
    sizes = {k: len(v) for k, v in MEDMNIST_LABELS.items()}
    assert sizes == {
        "pathmnist": 9,
        "chestmnist": 14,
        "dermamnist": 7,
        "octmnist": 4,
        "pneumoniamnist": 2,
        "retinamnist": 5,
        "breastmnist": 2,
        "bloodmnist": 8,
        "tissuemnist": 8,
        "organamnist": 11,
        "organcmnist": 11,
        "organsmnist": 11,
    }
    labels, unmapped = medmnist_label_names("retinamnist")
    assert labels[0] == "no diabetic retinopathy" and labels[4] == "proliferative diabetic retinopathy"
    assert unmapped == ["0", "1", "2", "3", "4"]


def test_import_pneumoniamnist_real(tmp_path: Path, cxr_card_path: Path) -> None:
    if not PNEUMONIA_NPZ.is_file():
        pytest.skip(f"{PNEUMONIA_NPZ} not found")
    card = load_card(cxr_card_path)
    summary = import_medmnist(PNEUMONIA_NPZ, card=card, out_dir=tmp_path / "pm", progress=False)
    train, val = pd.read_csv(tmp_path / "pm" / "train.csv"), pd.read_csv(tmp_path / "pm" / "val.csv")
    assert not (tmp_path / "pm" / "test.csv").exists()
    assert (len(train), len(val)) == (2428, 270)
    assert train["label"].value_counts().to_dict() == {"pneumonia": 1214, "normal": 1214}
    assert val["label"].value_counts().to_dict() == {"pneumonia": 135, "normal": 135}
    assert set(train["split"]) == {"train"} and set(val["split"]) == {"val"}
    assert summary.counts == {
        "train": {"normal": 1214, "pneumonia": 1214},
        "val": {"normal": 135, "pneumonia": 135},
    }
    assert any("no test split" in n for n in summary.notes)
    # Pixels survive the round trip, grayscale stays L-mode.
    raw = np.load(PNEUMONIA_NPZ)
    for split, df in (("train", train), ("val", val)):
        for i in (0, len(df) - 1):
            img = Image.open(tmp_path / "pm" / df["image"][i])
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), raw[f"{split}_images"][i])
            assert df["medmnist_index"][i] == int(raw[f"{split}_labels"][i, 0])
    row = train.iloc[0]
    assert row["label"] == row["medmnist_label"]
    assert _captions(row["caption"]) == card.captions_for(row["label"])


def _synthetic_derma(path: Path, n: tuple[int, int, int] = (14, 7, 7)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 7).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_import_dermamnist_synthetic_maps_to_card_labels(tmp_path: Path, derm_card_path: Path) -> None:
    npz = tmp_path / "dermamnist_64.npz"
    arrays = _synthetic_derma(npz)
    card = load_card(derm_card_path)
    summary = import_medmnist(npz, card=card, out_dir=tmp_path / "dm", progress=False)
    assert sorted(summary.manifests) == ["test", "train", "val"]
    test = pd.read_csv(tmp_path / "dm" / "test.csv")
    assert len(test) == 7 and set(test["split"]) == {"test"}
    # MedMNIST names map onto the card's label set; the original stays in medmnist_label.
    assert test["label"].tolist() == [lab.name for lab in card.label_set("ham10000").labels]
    assert test["medmnist_label"].tolist() == MEDMNIST_LABELS["dermamnist"]
    assert summary.label_map["melanocytic nevi"] == "melanocytic nevus"
    assert summary.unknown_labels == []
    assert test["group"][4] == "derm:melanoma"
    assert "close-up of a skin lesion, malignant melanoma." in _captions(test["caption"][4])
    img = Image.open(tmp_path / "dm" / "images" / "test" / "3.png")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), arrays["test_images"][3])
    # Without matching card labels the readable MedMNIST names are kept, with a warning.
    summary2 = import_medmnist(
        npz,
        card=load_card(_write_card(tmp_path, CXR_CARD, "othercxr")),
        out_dir=tmp_path / "dm2",
        progress=False,
    )
    assert "melanocytic nevi" in summary2.unknown_labels
    assert pd.read_csv(tmp_path / "dm2" / "val.csv")["label"][5] == "melanocytic nevi"


def test_import_chestmnist_multilabel(tmp_path: Path, cxr_card_path: Path) -> None:
    y = np.zeros((4, 14), np.uint8)
    y[1, 0] = 1  # atelectasis
    y[2, [0, 2, 13]] = 1  # atelectasis, effusion, hernia
    npz = tmp_path / "chestmnist.npz"
    imgs = np.zeros((4, 8, 8), np.uint8)
    np.savez(npz, train_images=imgs, train_labels=y, val_images=imgs, val_labels=y)
    card = load_card(cxr_card_path)
    summary = import_medmnist(npz, card=card, out_dir=tmp_path / "cm", progress=False)
    df = pd.read_csv(tmp_path / "cm" / "train.csv")
    labels = [json.loads(v) for v in df["label"]]
    assert labels == [[], ["atelectasis"], ["atelectasis", "pleural effusion", "hernia"], []]
    assert json.loads(df["medmnist_label"][2]) == ["atelectasis", "effusion", "hernia"]
    assert _captions(df["caption"][0]) == card.captions_for("no finding")
    assert _captions(df["caption"][2])[0] == "chest x-ray: atelectasis, pleural effusion and hernia."
    assert summary.counts["train"] == {
        "(no finding)": 2,
        "atelectasis": 2,
        "pleural effusion": 1,
        "hernia": 1,
    }
    assert summary.rows == {"train": 4, "val": 4}


def test_import_medmnist_bad_input(tmp_path: Path, cxr_card_path: Path) -> None:
    card = load_card(cxr_card_path)
    with pytest.raises(DataError, match="does not exist"):
        import_medmnist(tmp_path / "pneumoniamnist.npz", card=card, out_dir=tmp_path / "o")
    bad = tmp_path / "pneumoniamnist.npz"
    np.savez(bad, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([[0], [1]]))
    with pytest.raises(DataError, match=r"missing arrays \['val_images', 'val_labels'\]"):
        import_medmnist(bad, card=card, out_dir=tmp_path / "o")
    np.savez(
        bad,
        train_images=np.zeros((2, 4, 4), np.uint8),
        train_labels=np.array([[0], [5]]),
        val_images=np.zeros((1, 4, 4), np.uint8),
        val_labels=np.array([[0]]),
    )
    with pytest.raises(DataError, match="label 5 at index 1 is outside 0..1"):
        import_medmnist(bad, card=card, out_dir=tmp_path / "o")
    full = bad.read_bytes()
    (tmp_path / "pneumoniamnist_cut.npz").write_bytes(full[: len(full) // 2])  # truncated download
    with pytest.raises(DataError, match="pneumoniamnist_cut.npz"):
        import_medmnist(tmp_path / "pneumoniamnist_cut.npz", card=card, out_dir=tmp_path / "o")
    (tmp_path / "pneumoniamnist_x.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        import_medmnist(tmp_path / "pneumoniamnist_x.npz", card=card, out_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="limit must be at least 1"):
        import_medmnist(bad, card=card, out_dir=tmp_path / "o", limit=0)
    with pytest.raises(ConfigError, match="unknown MedMNIST flag 'foomnist'; known: bloodmnist, "):
        import_medmnist(bad, card=card, out_dir=tmp_path / "o", flag="foomnist")


# --------------------------------------------------------------------------------------------------
# HAM10000


def _ham(tmp_path: Path, n_lesions: int = 60) -> tuple[Path, list[Path], pd.DataFrame]:
    rng = np.random.default_rng(5)
    codes = ["mel", "akiec", "bcc", "bkl", "df", "nv", "vasc"]
    sites = ["back", "face", "acral", "lower extremity", "unknown"]
    rows = []
    for i in range(n_lesions):
        code = codes[i % 7]
        for _ in range(2 if i == 0 else int(rng.integers(1, 4))):
            rows.append(
                {
                    "lesion_id": f"HAM_{i:07d}",
                    "image_id": f"ISIC_{len(rows):07d}",
                    "dx": code,
                    "dx_type": ["histo", "follow_up", "consensus"][i % 3],
                    "age": str(20 + i),
                    "sex": ["male", "female", "unknown"][i % 3],
                    "localization": sites[i % 5],
                    "fitzpatrick_scale": str([3, -1, 5][i % 3]),
                }
            )
    meta = pd.DataFrame(rows)
    meta.loc[0, "age"] = "45.0"  # lesion 0: melanoma, back, male, histo, Fitzpatrick 3 (two images)
    meta.loc[1, "age"] = ""
    csv = tmp_path / "HAM10000_metadata.csv"
    meta.to_csv(csv, index=False)
    dirs = [tmp_path / "part_1", tmp_path / "part_2"]
    for j, image_id in enumerate(meta["image_id"]):
        if j == 5:
            continue  # one image missing on disk
        d = dirs[j % 2]
        d.mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), j % 255, np.uint8)).save(d / f"{image_id}.jpg")
    return csv, dirs, meta


def test_import_ham10000_lesion_disjoint_with_metadata_captions(tmp_path: Path, derm_card_path: Path) -> None:
    csv, dirs, meta = _ham(tmp_path)
    card = load_card(derm_card_path)
    out = tmp_path / "derm" / "ham.csv"
    summary = import_ham10000(csv, dirs, card=card, out_manifest=out, seed=0)
    df = pd.read_csv(out, dtype={"age": str})
    assert len(df) == len(meta) - 1
    missing_id = meta["image_id"][5]
    assert summary.missing_images == [f"{missing_id} (line 7)"]
    assert missing_id not in set(df["image_id"])
    # No lesion spans two splits; all three splits are used, with about the asked fractions.
    assert df.groupby("lesion_id")["split"].nunique().max() == 1
    assert (df["patient"] == df["lesion_id"]).all()
    assert set(df["split"]) == {"train", "val", "test"}
    assert (df["split"] == "train").mean() == pytest.approx(0.7, abs=0.1)
    assert all((out.parent / p).is_file() for p in df["image"])
    assert summary.rows == df["split"].value_counts().to_dict()
    # Labels and groups come from the card; the dx code stays as metadata.
    first = df.iloc[0]
    assert (first["label"], first["group"], first["dx"]) == ("melanoma", "derm:melanoma", "mel")
    assert sorted(df["label"].unique()) == sorted(lab.name for lab in card.label_set().labels)
    caps = _captions(first["caption"])
    assert caps[0] == "dermoscopy image of melanoma on the back of a 45-year-old male"
    assert caps[1] == "melanoma on the back, confirmed by histopathology"
    assert caps[2] == "dermoscopy image of melanoma in a patient with Fitzpatrick skin type III"
    assert set(card.captions_for("melanoma")) <= set(caps)
    # Missing age: sex only; acral site phrasing; unknown site and Fitzpatrick -1 left out.
    second = _captions(df.iloc[1]["caption"])
    assert second[0] == "dermoscopy image of melanoma on the back of a male patient"
    by_site = {r["localization"]: _captions(r["caption"])[0] for _, r in df.iterrows()}
    assert " on acral skin" in by_site["acral"]
    assert " on the " not in by_site["unknown"]
    assert not any("skin type" in c for c in _captions(df[df["fitzpatrick_scale"] == -1].iloc[0]["caption"]))
    # Skin type kept raw and normalised (Roman numerals, empty when unknown) for fairness analyses.
    assert df.groupby("fitzpatrick_scale")["fitzpatrick_type"].first().fillna("").to_dict() == {
        -1: "",
        3: "III",
        5: "V",
    }
    # Deterministic under the seed.
    out2 = tmp_path / "again.csv"
    import_ham10000(csv, dirs, card=card, out_manifest=out2, seed=0)
    assert pd.read_csv(out2)["split"].tolist() == df["split"].tolist()


def test_import_ham10000_bad_input(tmp_path: Path, derm_card_path: Path) -> None:
    csv, dirs, meta = _ham(tmp_path, n_lesions=8)
    card = load_card(derm_card_path)
    out = tmp_path / "m.csv"
    meta.loc[3, "dx"] = "scc"
    meta.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"unknown dx codes 'scc' \(1 rows, first on line 5\)"):
        import_ham10000(tmp_path / "bad.csv", dirs, card=card, out_manifest=out)
    s = import_ham10000(
        tmp_path / "bad.csv", dirs, card=card, out_manifest=out, dx_map={"scc": "squamous cell carcinoma"}
    )
    assert "squamous cell carcinoma" in s.unknown_labels
    meta.drop(columns=["lesion_id"]).to_csv(tmp_path / "nolesion.csv", index=False)
    with pytest.raises(DataError, match=r"missing columns \['lesion_id'\]"):
        import_ham10000(tmp_path / "nolesion.csv", dirs, card=card, out_manifest=out)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="none of the"):
        import_ham10000(csv, [tmp_path / "emptydir"], card=card, out_manifest=out)
    with pytest.raises(ConfigError, match="must be below 1"):
        import_ham10000(csv, dirs, card=card, out_manifest=out, val_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_import_commands(tmp_path: Path, cxr_card_path: Path, derm_card_path: Path) -> None:
    runner = CliRunner()
    root = tmp_path / "imgs"
    _class_tree(root)
    res = runner.invoke(
        app, ["import", "folder", str(root), "--domain", str(cxr_card_path), "--out", str(tmp_path / "f.csv")]
    )
    assert res.exit_code == 0, res.output
    assert "all: 4 rows" in res.stdout and "3  normal" in res.stdout
    assert len(pd.read_csv(tmp_path / "f.csv")) == 4

    npz = tmp_path / "dermamnist.npz"
    _synthetic_derma(npz, n=(7, 7, 14))
    res = runner.invoke(
        app,
        [
            "import",
            "medmnist",
            str(npz),
            "--domain",
            str(derm_card_path),
            "--out",
            str(tmp_path / "dm"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "test: 14 rows" in res.stdout
    assert len(pd.read_csv(tmp_path / "dm" / "test.csv")) == 14

    csv, dirs, meta = _ham(tmp_path, n_lesions=14)
    res = runner.invoke(
        app,
        [
            "import",
            "ham10000",
            str(csv),
            "--images",
            str(dirs[0]),
            "--images",
            str(dirs[1]),
            "--domain",
            str(derm_card_path),
            "--out",
            str(tmp_path / "ham.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "missing images: 1" in res.stdout
    assert len(pd.read_csv(tmp_path / "ham.csv")) == len(meta) - 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "folder", "{tmp}/nope", "--domain", "{card}", "--out", "{tmp}/m.csv"], "does not exist"),
        (
            ["import", "folder", "{tmp}/imgs", "--domain", "no_such_domain_xyz", "--out", "{tmp}/m.csv"],
            "no_such_domain_xyz",
        ),
        (
            [
                "import",
                "folder",
                "{tmp}/imgs",
                "--domain",
                "{card}",
                "--out",
                "{tmp}/m.csv",
                "--label-map",
                "{tmp}/map.json",
            ],
            "are not folders",
        ),
        (["import", "medmnist", "{tmp}/x.npz", "--domain", "{card}", "--out", "{tmp}/o"], "does not exist"),
        (
            ["import", "medmnist", "{tmp}/imgs/normal/a.png", "--domain", "{card}", "--out", "{tmp}/o"],
            "pass --flag",
        ),
    ],
)
def test_cli_user_errors_exit_1_with_one_line(
    tmp_path: Path, cxr_card_path: Path, args: list[str], message: str
) -> None:
    _png(tmp_path / "imgs" / "normal" / "a.png", 1)
    (tmp_path / "map.json").write_text(json.dumps({"viral": "pneumonia"}))
    argv = [a.format(tmp=tmp_path, card=cxr_card_path) for a in args]
    res = _main("data", *argv)
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medvlp: error: ")
    assert message in err


@pytest.mark.parametrize(
    "domain, flag",
    [
        ("pathology", "pathmnist"),
        ("cxr", "pneumoniamnist"),
        ("dermatology", "dermamnist"),
        ("microscopy", "bloodmnist"),
    ],
)
def test_bundled_cards_know_the_medmnist_classes(domain: str, flag: str) -> None:
    try:
        card = load_card(domain)
    except ConfigError as e:
        pytest.skip(f"bundled domain card not found ({e})")
    labels, unmapped = medmnist_label_names(flag, card)
    assert unmapped == [], f"the {domain} card lacks {flag} classes: {unmapped}"
    assert len(set(labels)) == len(MEDMNIST_LABELS[flag])
    assert all(card.find_label(lab) is not None for lab in labels)
    if flag == "pneumoniamnist":
        assert labels == ["normal", "pneumonia"]
    if domain == "dermatology":  # the 7 HAM10000 dx codes map onto the card too
        assert all(card.find_label(name) is not None for name in HAM10000_DX.values())


def test_manifest_formats_hold_the_same_rows(tmp_path: Path, cxr_card_path: Path) -> None:
    root = tmp_path / "imgs"
    _png(root / "normal" / "a.png", 1)
    _png(root / "pneumonia" / "b.png", 2)
    card = load_card(cxr_card_path)
    frames = []
    for ext in ("csv", "jsonl", "parquet"):
        import_folder(root, card=card, out_manifest=tmp_path / f"m.{ext}")
        p = tmp_path / f"m.{ext}"
        frames.append(
            pd.read_csv(p)
            if ext == "csv"
            else pd.read_json(p, lines=True)
            if ext == "jsonl"
            else pd.read_parquet(p)
        )
    assert frames[0].to_dict("records") == frames[1].to_dict("records") == frames[2].to_dict("records")
    assert frames[1]["image"].tolist() == ["imgs/normal/a.png", "imgs/pneumonia/b.png"]
    assert "\\/" not in (tmp_path / "m.jsonl").read_text()


def test_import_folder_groups_microscopy_channel_files(tmp_path: Path) -> None:
    real = [SHARED / "fixtures" / "microscopy" / f"D03f00d{c}.tif" for c in range(3)]
    if not all(p.is_file() for p in real):
        pytest.skip(f"microscopy fixtures not found under {SHARED}")
    import tifffile

    from medvlp.data.shards import read_shard, write_shards

    card = tmp_path / "testmic.toml"
    card.write_text(
        'name = "testmic"\n[image]\nreader = "multichannel"\n[prompts]\ntemplates = ["fluorescence image of {}."]\ncaptions = ["fluorescence micrograph of {}."]\n'
        '[label_sets.cells]\nlabels = [{ name = "mitotic cells", concept = "mic:mitosis" }]\n'
    )
    cls = tmp_path / "fields" / "mitotic_cells"
    cls.mkdir(parents=True)
    for p in real:  # the real three-channel field of view, linked rather than copied
        (cls / p.name).symlink_to(p.resolve())
    for c in (0, 2):  # a second field missing channel 1: skipped with a reason
        tifffile.imwrite(cls / f"D04f00d{c}.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(
        cls / "stack.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack"
    )  # not matched: a row of its own
    out = tmp_path / "m.csv"
    summary = import_folder(
        tmp_path / "fields", card=load_card(card), out_manifest=out, channel_pattern=r"d(?P<channel>\d)\.tif$"
    )
    df = pd.read_csv(out)
    # Symlinks are written as their targets (as for any image); channel files in channel order.
    parts = df["image"][0].split(";")
    assert [(out.parent / p).resolve() for p in parts] == [p.resolve() for p in real]
    assert df["image"][1] == "fields/mitotic_cells/stack.tif"
    assert json.loads(df["channels"][0]) == ["0", "1", "2"] and pd.isna(df["channels"][1])
    assert df["label"].tolist() == ["mitotic cells"] * 2
    assert any(
        "D04f00d0.tif: channels ['0', '2'] but the other fields of view have ['0', '1', '2']" in p
        for p in summary.problems
    )
    # The joined row decodes with the multichannel reader to one RGB image of the real field.
    s = write_shards(
        out, tmp_path / "sh", shuffle=False, backend="tarfile", reader="multichannel", max_bad_fraction=0.0
    )
    rgb = np.asarray(Image.open(io.BytesIO(read_shard(s.shards[0])[0]["png"])))
    assert rgb.shape == (512, 512, 3) and rgb.max() > 0
    with pytest.raises(ConfigError, match="named group 'channel'"):
        import_folder(tmp_path / "fields", card=load_card(card), out_manifest=out, channel_pattern=r"d\d")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        import_folder(tmp_path / "fields", card=load_card(card), out_manifest=out, channel_pattern="(")
