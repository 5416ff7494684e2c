"""A run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medvlp", "pretrain", "--data", str(data), "--steps", "40", "--batch-size", "16",
            "--seed", "3", "--device", "cpu", "--workers", "0", "--no-eval", "--log-every", "1", "--quiet",
            "--threads", "1", "--precision", "fp32", "--save-every", "5", "--out", str(out), *extra]


def test_sigkill_and_resume_is_exact(small_demo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cmd(small_demo, tmp_path / "ref"), capture_output=True, text=True, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(small_demo, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    # kill between checkpoints, after at least two of them were written
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 13:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists()
    assert (run / "checkpoints" / "last.pt").is_file()

    resumed = subprocess.run(_cmd(small_demo, run, "--resume"), capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "ref" / "model" / "open_clip_model.safetensors")
    b = load_file(run / "model" / "open_clip_model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_without_checkpoint_is_a_clear_error(small_demo: Path, tmp_path: Path) -> None:
    proc = subprocess.run(_cmd(small_demo, tmp_path / "empty", "--resume"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "no checkpoint" in proc.stderr and "Traceback" not in proc.stderr
