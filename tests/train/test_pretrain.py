"""Short pretraining runs: run-folder contents, bad samples, and clear errors for bad settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medvlp.config import TrainConfig
from medvlp.errors import ConfigError, DataError, ModelError
from medvlp.train import pretrain


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(domain="pathology", data=str(data), steps=3, batch_size=16, out=str(out), workers=0,
                log_every=1, threads=2)
    return TrainConfig(**{**base, **kw})


def test_run_folder_contents(small_demo: Path, tmp_path: Path) -> None:
    result = pretrain(_cfg(small_demo, tmp_path / "run"), quiet=True)
    run = tmp_path / "run"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["steps"] == 3 and cfg["batch_size"] == 16 and cfg["model"] == "tiny"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all({"loss", "lr", "samples_per_s", "data_time"} <= set(r) for r in lines)
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["n"] == 6 * 5  # the demo's held-out split: 20% of 24 per class
    assert {"value", "ci_low", "ci_high"} <= set(metrics["accuracy"])
    assert (run / "model" / "open_clip_model.safetensors").is_file()
    assert result.metrics["n"] == metrics["n"]


def _with_bad_rows(src: Path, dst: Path, n_bad: int) -> Path:
    shutil.copytree(src.parent, dst)
    df = pd.read_csv(dst / src.name)
    bad = df.iloc[:n_bad].copy()
    bad["image"] = [f"images/missing_{i}.png" for i in range(n_bad)]
    bad["split"] = "train"
    out = dst / "with_bad.csv"
    pd.concat([df, bad]).to_csv(out, index=False)
    return out


def test_bad_samples_are_skipped_and_logged(small_demo: Path, tmp_path: Path) -> None:
    data = _with_bad_rows(small_demo, tmp_path / "data", 1)
    pretrain(_cfg(data, tmp_path / "run", max_bad_fraction=0.05, eval=False), quiet=True)
    logged = [json.loads(x) for x in (tmp_path / "run" / "bad_samples.jsonl").read_text().splitlines()]
    assert len(logged) == 1 and "missing_0.png" in json.dumps(logged[0])


def test_too_many_bad_samples_stop_the_run(small_demo: Path, tmp_path: Path) -> None:
    data = _with_bad_rows(small_demo, tmp_path / "data", 10)
    with pytest.raises(DataError, match="max.bad.fraction"):
        pretrain(_cfg(data, tmp_path / "run", eval=False), quiet=True)


def test_unknown_domain_and_model(small_demo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ophthalmology"):
        pretrain(_cfg(small_demo, tmp_path / "a", domain="ophthalmology"), quiet=True)
    with pytest.raises(ModelError, match="nope"):
        pretrain(_cfg(small_demo, tmp_path / "b", model="nope"), quiet=True)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "medvlp", "pretrain", "--domain", "ophthalmology", "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("medvlp: error:") and "Traceback" not in proc.stderr
