"""`medvlp data validate | split | shard` (and the import -> validate -> split -> shard pipeline)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medvlp.cli.main import main
from medvlp.data.shards import read_shard

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PNEUMONIA_NPZ = SHARED / "datasets" / "pneumoniamnist_trainval.npz"

CARD = """
name = "{name}"
[prompts]
templates = ["a chest x-ray showing {{}}.", "chest radiograph with {{}}."]
captions = ["chest x-ray: {{}}.", "frontal chest radiograph, {{}}."]
[label_sets.pneumonia]
labels = [
  {{ name = "normal", concept = "cxr:normal_chest", synonyms = ["clear lungs"] }},
  {{ name = "pneumonia", concept = "cxr:pneumonia", synonyms = ["lung infection"] }},
]
"""


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


def _run(*args: object) -> _Result:
    return _main("data", *args)


def _card(tmp_path: Path) -> Path:
    p = tmp_path / "clicxr.toml"
    p.write_text(CARD.format(name="clicxr"), encoding="utf-8")
    return p


def _patients(tmp_path: Path, n_patients: int = 40) -> Path:
    """A manifest of n patients with 1-4 images each, one label per patient, and a lesion_id column."""
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "img" / "x.png")
    rows = []
    for p in range(n_patients):
        label = "pneumonia" if p % 3 == 0 else "normal"
        for k in range(int(rng.integers(1, 5))):
            rows.append(
                {
                    "image": "img/x.png",
                    "caption": json.dumps([f"{label} {k}"]),
                    "label": label,
                    "patient": f"P{p:03d}",
                    "lesion_id": f"L{p:03d}_{k % 2}",
                }
            )
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_validate_ok_prints_one_summary_line(tmp_path: Path) -> None:
    path = _patients(tmp_path, n_patients=5)
    n = len(pd.read_csv(path))
    res = _run("validate", path)
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines == [f"ok: {path}: {n} rows, 0 bad; 2 labels; images decoded"]


def test_validate_reports_every_bad_row_and_exits_1(tmp_path: Path) -> None:
    img = tmp_path / "img"
    img.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(img / "ok.png")
    (img / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    df = pd.DataFrame(
        {
            "image": ["img/ok.png", "img/gone.png", "img/broken.png", "img/ok.png", "img/ok.png"],
            "caption": ['["fine"]', '["x"]', '["x"]', "", '["fine"]'],
            "label": ["a", "a", "a", "a", '["a", '],
        }
    )
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    res = _run("validate", path)
    assert res.exit_code == 1
    out = res.stdout.strip().splitlines()
    assert len(out) == 4
    assert out[0].startswith(f"{path}:3: img/gone.png: image file not found")
    assert out[1].startswith(f"{path}:4: img/broken.png: unreadable image")
    assert out[2] == f"{path}:5: img/ok.png: empty caption"
    assert out[3].startswith(f"{path}:6: img/ok.png: column 'label' is not valid JSON")
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medvlp: error: 4 of 5 rows are bad")
    # --no-read only checks that files exist: the undecodable PNG passes.
    res = _run("validate", path, "--no-read")
    assert res.exit_code == 1 and len(res.stdout.strip().splitlines()) == 3
    # A JSONL manifest counts lines from 1 (no header).
    jl = tmp_path / "bad.jsonl"
    jl.write_text(json.dumps({"image": "img/ok.png"}) + "\n" + json.dumps({"image": "img/gone.png"}) + "\n")
    res = _run("validate", jl)
    assert res.exit_code == 1 and res.stdout.startswith(f"{jl}:2: img/gone.png: image file not found")


@pytest.mark.parametrize(
    "args, message",
    [
        (["validate", "{tmp}/nope.csv"], "does not exist"),
        (["validate", "{tmp}/noimage.csv"], "no 'image' column"),
        (["split", "{tmp}/m.csv", "--by", "slide", "--out", "{tmp}/o.csv"], "no 'slide' column to split by"),
        (
            ["split", "{tmp}/m.csv", "--val", "0.6", "--test", "0.5", "--out", "{tmp}/o.csv"],
            "must be below 1",
        ),
        (["split", "{tmp}/m.csv", "--stratify", "dx", "--out", "{tmp}/o.csv"], "no 'dx' column to stratify"),
        (["shard", "{tmp}/m.csv", "--out", "{tmp}/s", "--split", "train"], "no 'split' column"),
        (["shard", "{tmp}/m.csv", "--out", "{tmp}/s", "--domain", "no_such_domain"], "unknown domain"),
        (["shard", "{tmp}/m.csv", "--out", "{tmp}/m.csv"], "is a file"),
    ],
)
def test_user_errors_exit_1_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    _patients(tmp_path, n_patients=3)
    (tmp_path / "noimage.csv").write_text("path,caption\na.png,x\n")
    res = _run(*[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 1, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medvlp: error: ")
    assert message in err


def test_split_by_patient_and_lesion_keeps_groups_together(tmp_path: Path) -> None:
    path = _patients(tmp_path, n_patients=60)
    src = pd.read_csv(path)
    out = tmp_path / "elsewhere" / "split.csv"
    res = _run("split", path, "--by", "patient", "--val", "0.2", "--test", "0.2", "--seed", "4", "--out", out)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert len(df) == len(src)
    assert df.groupby("patient")["split"].nunique().max() == 1  # no patient in two splits
    assert set(df["split"]) == {"train", "val", "test"}
    frac = df["split"].value_counts(normalize=True)
    assert frac["train"] == pytest.approx(0.6, abs=0.08)
    # Stratified: pneumonia (every third patient) keeps about its share in every split.
    share = df.groupby("split")["label"].apply(lambda s: (s == "pneumonia").mean())
    overall = (df["label"] == "pneumonia").mean()
    assert all(abs(v - overall) < 0.15 for v in share)
    assert "groups in more than one split: 0" in res.stdout
    # Images moved folder: paths were rebased, so the new manifest still validates.
    assert set(df["image"]) == {"../img/x.png"}
    assert _run("validate", out).exit_code == 0
    # Same seed, same split; --by lesion keeps each lesion_id together.
    _run(
        "split",
        path,
        "--by",
        "patient",
        "--val",
        "0.2",
        "--test",
        "0.2",
        "--seed",
        "4",
        "--out",
        tmp_path / "b.csv",
    )
    assert pd.read_csv(tmp_path / "b.csv")["split"].tolist() == df["split"].tolist()
    res = _run("split", path, "--by", "lesion", "--out", tmp_path / "l.csv", "--stratify", "none")
    assert res.exit_code == 0, res.output
    assert "split by 'lesion_id' ->" in res.stdout
    les = pd.read_csv(tmp_path / "l.csv")
    assert les.groupby("lesion_id")["split"].nunique().max() == 1
    assert les["image"].tolist() == src["image"].tolist()  # same folder: paths unchanged


def test_shard_command_writes_readable_shards(tmp_path: Path) -> None:
    path = _patients(tmp_path, n_patients=6)
    n = len(pd.read_csv(path))
    res = _run("shard", path, "--out", tmp_path / "s", "--shard-size", "4", "--no-progress")
    assert res.exit_code == 0, res.output
    shards = sorted((tmp_path / "s").glob("*.tar"))
    assert len(shards) == -(-n // 4)
    samples = [s for p in shards for s in read_shard(p)]
    assert len(samples) == n and len({s["__key__"] for s in samples}) == n
    assert f"wrote {n} samples ({n} png)" in res.stdout
    assert all(s["json"]["patient"].startswith("P") for s in samples)


def test_pipeline_on_real_pneumoniamnist(tmp_path: Path) -> None:
    if not PNEUMONIA_NPZ.is_file():
        pytest.skip(f"{PNEUMONIA_NPZ} not found")
    from medvlp.cli.main import main
    from medvlp.domains import load_card

    card = _card(tmp_path)
    out = tmp_path / "pm"
    for argv in (
        ["data", "import", "medmnist", str(PNEUMONIA_NPZ), "--domain", str(card), "--out", str(out)]
        + ["--no-progress", "--limit", "60"],
        ["data", "validate", str(out / "val.csv"), "--no-progress"],
        ["data", "shard", str(out / "val.csv"), "--out", str(tmp_path / "sh"), "--shard-size", "25"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0, argv
    assert sorted(p.name for p in out.glob("*.csv")) == ["train.csv", "val.csv"]
    assert len(pd.read_csv(out / "train.csv")) == 60
    index = json.loads((tmp_path / "sh" / "shards.json").read_text())
    assert index["per_shard"] == [25, 25, 10] and index["skipped"] == 0
    samples = [s for p in sorted((tmp_path / "sh").glob("*.tar")) for s in read_shard(p)]
    raw = np.load(PNEUMONIA_NPZ)
    names = ["normal", "pneumonia"]
    want = sorted(names[int(v)] for v in raw["val_labels"][:60, 0])
    assert sorted(s["json"]["label"] for s in samples) == want
    s = next(x for x in samples if int(x["__key__"]) == 17)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), raw["val_images"][17])
    assert s["json"]["label"] == names[int(raw["val_labels"][17, 0])]
    assert s["txt"] == load_card(card).captions_for(s["json"]["label"])


def test_validate_domain_reports_unknown_labels_as_warnings(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "x.png")
    path = tmp_path / "m.csv"
    path.write_bytes(
        b"image,caption,label\n"
        b"x.png,fine,pneumonia\n"
        b"x.png,caf\xe9,zebra\n"  # not UTF-8 and an unknown label: both warnings, the row is usable
        b"x.png,also fine,lung infection\n"
    )
    card = _card(tmp_path)
    res = _run("validate", path, "--domain", card)
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0] == f"{path}:3: warning: label 'zebra' is not in the 'clicxr' card"
    assert lines[-1].startswith(f"ok: {path}: 3 rows, 0 bad")
    assert "warning: 1 rows carry 1 labels not in the 'clicxr' card (zebra)" in lines[-1]
    assert "line(s) 3 are not valid UTF-8; read as latin-1" in res.stderr
    # An unusable row still fails, and the unknown labels are named in the one error line.
    path.write_bytes(path.read_bytes() + b"gone.png,x,zebra\n")
    res = _run("validate", path, "--domain", card)
    assert res.exit_code == 1
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("medvlp: error:")]
    assert len(err) == 1 and "1 of 4 rows are bad" in err[0] and "2 rows carry 1 labels" in err[0]
