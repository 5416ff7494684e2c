"""Linear probe and k-shot on frozen embeddings; the ``retrieval`` / ``linear-probe`` eval commands."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medvlp.errors import DataError
from medvlp.eval.probe import C_GRID, few_shot, fit_linear_probe, linear_probe


def _blobs(seed: int, n: int, c: int, d: int = 16, sep: float = 6.0, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (c, d))
    centres *= sep / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.arange(n) % c
    return centres[y] + rng.normal(0, noise, (n, d)), y


def test_linear_probe_separable_embeddings_reach_accuracy_one() -> None:
    x, y = _blobs(0, 240, 3, sep=12.0)
    rep = linear_probe(x[:90], y[:90], x[90:], y[90:], ["a", "b", "c"], n_boot=100)
    for name in ("accuracy", "balanced_accuracy", "auroc", "f1_macro", "cohen_kappa"):
        assert rep[name]["value"] == pytest.approx(1.0)
        assert set(rep[name]) == {"value", "ci_low", "ci_high"}
    assert rep["n"] == 150 and rep["probe"]["n_train"] == 90
    assert rep["probe"]["C"] in C_GRID and rep["probe"]["standardized"] is True
    json.dumps(rep, allow_nan=False)


def test_linear_probe_equals_a_plain_sklearn_pipeline_at_fixed_c() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    x, y = _blobs(1, 400, 4, sep=2.5, noise=1.5)  # overlapping classes: accuracy well below 1
    rep = linear_probe(x[:200], y[:200], x[200:], y[200:], list("abcd"), C=0.1, n_boot=200, seed=0)
    sc = StandardScaler().fit(x[:200])
    lr = LogisticRegression(C=0.1, max_iter=2000).fit(sc.transform(x[:200]), y[:200])
    p = lr.predict_proba(sc.transform(x[200:]))
    assert rep["accuracy"]["value"] == pytest.approx(accuracy_score(y[200:], p.argmax(1)), abs=1e-9)
    assert rep["auroc"]["value"] == pytest.approx(roc_auc_score(y[200:], p, multi_class="ovr"), abs=1e-6)
    assert 0.4 < rep["accuracy"]["value"] < 0.95
    assert rep["accuracy"]["ci_low"] < rep["accuracy"]["value"] < rep["accuracy"]["ci_high"]
    assert rep["probe"]["C"] == 0.1 and rep["probe"]["cv_folds"] is None


def test_cross_validated_c_prefers_strong_regularisation_on_noise_dimensions() -> None:
    # 5 informative of 200 dimensions with 60 rows: an unregularised probe overfits the noise
    rng = np.random.default_rng(2)
    y = np.arange(60) % 2
    x = rng.normal(0, 1, (60, 200))
    x[:, :5] += 1.0 * (2 * y[:, None] - 1)
    _, c = fit_linear_probe(x, y, seed=0)
    assert c <= 0.1


def test_multilabel_probe_and_bad_training_sets() -> None:
    rng = np.random.default_rng(3)
    Y = (rng.random((300, 3)) < 0.4).astype(int)
    x = np.hstack([4.0 * Y + rng.normal(0, 1, Y.shape), rng.normal(0, 1, (300, 5))])
    rep = linear_probe(x[:200], Y[:200], x[200:], Y[200:], ["edema", "effusion", "nodule"], C=1.0, n_boot=50)
    assert rep["auroc"]["value"] > 0.97 and set(rep["per_class_auroc"]) == {"edema", "effusion", "nodule"}
    _, c = fit_linear_probe(x[:200], Y[:200], c_grid=(1e-4, 1.0), cv=3)  # CV path of one-vs-rest
    assert c == 1.0  # 1e-4 shrinks every weight to ~0: chance-level ranking loses
    with pytest.raises(DataError, match="single class"):
        fit_linear_probe(x[:10], np.zeros(10, dtype=int))
    with pytest.raises(DataError, match="all 0 or all 1"):
        fit_linear_probe(x[:10], np.c_[np.zeros(10, dtype=int), np.arange(10) % 2])
    with pytest.raises(DataError, match="dimension 8 but test embeddings 4"):
        linear_probe(x[:20], Y[:20, 0], x[20:40, :4], Y[20:40, 0], ["n", "p"], n_boot=0)


def test_probe_warns_when_patients_overlap_train_and_test() -> None:
    x, y = _blobs(4, 80, 2, sep=8.0)
    with pytest.warns(UserWarning, match="2 patient ids appear in both train and test"):
        linear_probe(x[:40], y[:40], x[40:], y[40:], ["a", "b"], C=1.0, n_boot=0,
                     groups=np.array(["p1", "p2"] + [f"t{i}" for i in range(38)]),
                     train_groups=np.array(["p1", "p2"] + [f"r{i}" for i in range(38)]))


def test_few_shot_draws_mean_and_interval() -> None:
    x, y = _blobs(5, 600, 3, sep=3.0, noise=1.2)
    train_x, train_y, test_x, test_y = x[:300], y[:300], x[300:], y[300:]
    rep = few_shot(train_x, train_y, test_x, test_y, ["a", "b", "c"], k=2, n_draws=8, seed=0)
    fs = rep["few_shot"]
    assert fs["k"] == 2 and fs["n_draws"] == 8 and rep["n"] == 300
    acc = np.asarray(fs["per_draw"]["accuracy"])
    assert acc.shape == (8,) and np.unique(acc).size > 1  # different draws, different probes
    assert rep["accuracy"]["value"] == pytest.approx(acc.mean())
    half = 2.3646 * acc.std(ddof=1) / np.sqrt(8)  # t(0.975, df=7)
    assert rep["accuracy"]["ci_low"] == pytest.approx(acc.mean() - half, rel=1e-3)
    assert rep["accuracy"]["ci_high"] == pytest.approx(acc.mean() + half, rel=1e-3)
    assert fs["std"]["accuracy"] == pytest.approx(acc.std(ddof=1))
    assert set(rep["auroc"]) == {"value", "ci_low", "ci_high"}
    # more shots, better probe
    rep16 = few_shot(train_x, train_y, test_x, test_y, ["a", "b", "c"], k=16, n_draws=3, seed=0)
    assert rep16["accuracy"]["value"] > rep["accuracy"]["value"]
    # same seed, same draws
    again = few_shot(train_x, train_y, test_x, test_y, ["a", "b", "c"], k=2, n_draws=8, seed=0)
    assert again["few_shot"]["per_draw"] == fs["per_draw"]


def test_few_shot_bad_requests() -> None:
    x, y = _blobs(6, 30, 3)
    with pytest.raises(DataError, match=r"fewer training rows: \{'a': 10, 'b': 10, 'c': 10\}"):
        few_shot(x, y, x, y, ["a", "b", "c"], k=11)
    with pytest.raises(DataError, match="single-label"):
        few_shot(x, np.eye(3, dtype=int)[y], x, y, ["a", "b", "c"], k=1)


# -- the commands ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvlp.models import create_model

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    create_model("tiny").save(out)
    return out


def _images(root: Path, n_per_class: int) -> list[tuple[str, str]]:
    """Solid red-ish and blue-ish squares with noise: trivially separable even by an untrained encoder."""
    rng = np.random.default_rng(0)
    from PIL import Image

    rows = []
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for i in range(n_per_class):
            arr = np.clip(np.array(colour) + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
            name = f"{label}_{i}.png"
            Image.fromarray(arr).save(root / name)
            rows.append((name, label))
    return rows


@pytest.fixture()
def cli_app():
    import typer

    from medvlp.cli.eval_extra import register

    app = typer.Typer()
    register(app)
    return app


def test_retrieval_command_writes_the_metrics_json(tiny_model: Path, tmp_path: Path, cli_app) -> None:
    from typer.testing import CliRunner

    rows = _images(tmp_path, 3)
    captions = ['["a red square", "red tissue"]', "a red square", "crimson", "a blue square", "", "navy"]
    df = pd.DataFrame({"image": [r[0] for r in rows] + ["missing.png"], "caption": captions + ["lost"],
                       "patient": ["p1", "p1", "p2", "p3", "p3", "p4", "p5"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "ret.json"
    res = CliRunner().invoke(cli_app, ["retrieval", "--model", str(tiny_model), "--data", str(tmp_path / "m.csv"),
                                       "--json", str(out), "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    # 7 rows: one without caption, one unreadable -> 5 images; texts: 'a red square' merged -> 5 distinct
    assert rep["n"] == 5 and rep["n_texts"] == 5
    assert rep["n_without_caption"] == 1 and rep["n_unreadable"] == 1
    assert rep["n_groups"] == 4 and rep["bootstrap"]["unit"] == "patient"
    for d in ("image_to_text", "text_to_image"):
        assert rep[f"{d}_R@10"]["value"] == 1.0  # a gallery of 5 holds every match in the top 10
        r1 = rep[f"{d}_R@1"]
        assert 0.0 <= r1["value"] <= 1.0 and r1["ci_low"] <= r1["value"] <= r1["ci_high"]
    assert "image_to_text_R@1" in res.output


def _probe_manifest(root: Path) -> pd.DataFrame:
    rows = _images(root, 8)
    split = ["train" if i % 8 < 5 else "test" for i in range(16)]
    df = pd.DataFrame({"image": [r[0] for r in rows], "label": [r[1] for r in rows], "split": split})
    df.loc[len(df)] = ["red_0.png", "green", "test"]  # a label outside the training label set
    return df


def test_linear_probe_command_on_a_split_manifest(tiny_model: Path, tmp_path: Path, cli_app) -> None:
    from typer.testing import CliRunner

    _probe_manifest(tmp_path).to_csv(tmp_path / "all.csv", index=False)
    out = tmp_path / "probe.json"
    res = CliRunner().invoke(cli_app, ["linear-probe", "--model", str(tiny_model), "--data",
                                       str(tmp_path / "all.csv"), "--json", str(out), "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["n"] == 6 and rep["n_train"] == 10 and rep["labels"] == ["red", "blue"]
    assert rep["n_excluded"] == {"train": 0, "test": 1}
    assert rep["accuracy"]["value"] == 1.0  # colour is linearly readable from any encoder
    assert rep["probe"]["C"] > 0
    assert "rows had labels outside the label set" in res.output


def test_linear_probe_command_k_shot(tiny_model: Path, tmp_path: Path, cli_app) -> None:
    from typer.testing import CliRunner

    df = _probe_manifest(tmp_path)
    df[df.split == "train"].to_csv(tmp_path / "train.csv", index=False)
    df[(df.split == "test") & (df.label != "green")].to_csv(tmp_path / "test.csv", index=False)
    runner = CliRunner()
    out_k = tmp_path / "k.json"
    res = runner.invoke(cli_app, ["linear-probe", "--model", str(tiny_model), "--data", str(tmp_path / "test.csv"),
                                  "--train", str(tmp_path / "train.csv"), "--k", "2", "--n-draws", "4",
                                  "--json", str(out_k)])
    assert res.exit_code == 0, res.output
    rk = json.loads(out_k.read_text())
    assert rk["few_shot"]["k"] == 2 and len(rk["few_shot"]["per_draw"]["accuracy"]) == 4
    assert rk["n"] == 6 and rk["n_train"] == 10 and rk["n_excluded"] == {"train": 0, "test": 0}
    acc = rk["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]

    # too many shots: a clear error, no JSON
    res = runner.invoke(cli_app, ["linear-probe", "--model", str(tiny_model), "--data", str(tmp_path / "test.csv"),
                                  "--train", str(tmp_path / "train.csv"), "--k", "9"])
    assert res.exit_code != 0 and isinstance(res.exception, DataError)
    assert "fewer training rows" in str(res.exception)


def test_linear_probe_command_needs_train_or_split(tiny_model: Path, tmp_path: Path, cli_app) -> None:
    from typer.testing import CliRunner

    from medvlp.errors import ConfigError

    rows = _images(tmp_path, 2)
    pd.DataFrame({"image": [r[0] for r in rows], "label": [r[1] for r in rows]}).to_csv(tmp_path / "m.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(cli_app, ["linear-probe", "--model", str(tiny_model), "--data", str(tmp_path / "m.csv")])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert "--train" in str(res.exception)
