"""A run SIGKILLed while it writes its final model or a checkpoint leaves a folder that is either
loadable or cleanly resumable (with a clear error in between), and resume duplicates no log record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import medvlp
from medvlp.errors import ModelError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# The child trains through the real CLI; a patched writer SIGKILLs the process inside the chosen window.
CHILD = textwrap.dedent("""
    import os, signal, sys
    window = sys.argv[1]
    import safetensors.torch as st
    import torch
    real_save_file, real_save = st.save_file, torch.save
    count = {"ckpt": 0}

    def save_file(tensors, path, *a, **k):
        real_save_file(tensors, path, *a, **k)
        if window == "model" and ".model.tmp-" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)  # first weights file written, metadata not yet

    def save(obj, f, *a, **k):
        name = getattr(f, "name", str(f))
        if window == "checkpoint" and ".last.pt.tmp" in str(name):
            count["ckpt"] += 1
            if count["ckpt"] == 2:
                f.write(b"half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)

    st.save_file, torch.save = save_file, save
    from medvlp.cli.main import main
    sys.argv = ["medvlp", *sys.argv[2:]]
    main()
""")


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--steps", "12", "--batch-size", "16", "--seed", "3", "--device",
            "cpu", "--workers", "0", "--no-eval", "--log-every", "1", "--quiet", "--threads", "1", "--precision", "fp32",
            "--save-every", "4", "--out", str(out), *extra]


def _run_child(window: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script), window, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _resume(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "medvlp", *args, "--resume"], capture_output=True, text=True,
                          env=env, timeout=300)


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_during_final_model_write(small_demo: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    killed = _run_child("model", _args(small_demo, run), tmp_path)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run / "model").exists(), "a half-written model folder was left in place"
    assert list(run.glob(".model.tmp-*")), "the kill should have hit the temp folder"
    with pytest.raises(ModelError, match="holds no model"):  # a clear error, not a JSON traceback
        medvlp.load(run)
    res = _resume(_args(small_demo, run))
    assert res.returncode == 0, res.stderr[-2000:]
    assert not list(run.glob(".model.tmp-*")), "stale temp folder not cleaned"
    medvlp.load(run)  # loadable now
    steps = _steps(run)
    assert steps == sorted(set(steps)) == list(range(1, 13)), steps


def test_kill_during_checkpoint_write(small_demo: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    killed = _run_child("checkpoint", _args(small_demo, run), tmp_path)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list((run / "checkpoints").glob(".last.pt.tmp*")), "the kill should have hit the temp file"
    assert (run / "checkpoints" / "last.pt").is_file()  # the previous, complete checkpoint
    res = _resume(_args(small_demo, run))
    assert res.returncode == 0, res.stderr[-2000:]
    assert not list((run / "checkpoints").glob(".last.pt.tmp*")), "stale temp file not cleaned"
    steps = _steps(run)
    assert steps == list(range(1, 13)), f"duplicated or lost metrics records: {steps}"
    medvlp.load(run)


def test_resume_does_not_duplicate_bad_samples(small_demo: Path, tmp_path: Path) -> None:
    import pandas as pd

    df = pd.read_csv(small_demo)
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "image": "missing.png", "split": "train"}
    data = small_demo.parent / "with_bad.csv"
    df.to_csv(data, index=False)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-m", "medvlp", *_args(data, run, "--max-bad-fraction", "0.5")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    before = (run / "bad_samples.jsonl").read_text().splitlines()
    assert len(before) == 1
    res = _resume(_args(data, run, "--max-bad-fraction", "0.5", "--steps", "16"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "bad_samples.jsonl").read_text().splitlines() == before
    steps = _steps(run)
    assert steps == sorted(set(steps)), steps
