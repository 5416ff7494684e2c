"""Two CPU processes under torchrun (gloo) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _run(args: list[str], out: Path, nproc: int) -> None:
    common = ["pretrain", *args, "--out", str(out)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "medvlp", *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "medvlp", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["clip", "siglip", "siglip+concept", "keep"])
def test_two_processes_equal_one(small_demo: Path, tmp_path: Path, objective: str) -> None:
    args = ["--data", str(small_demo), "--objective", objective, "--steps", "4", "--batch-size", "32",
            "--seed", "0", "--device", "cpu", "--workers", "0", "--no-eval", "--log-every", "1", "--quiet",
            "--threads", "1", "--precision", "fp32", "--warmup", "0"]
    _run(args, tmp_path / "one", 1)
    _run(args, tmp_path / "two", 2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) < 1e-5, (one, two)
    wa = load_file(tmp_path / "one" / "model" / "open_clip_model.safetensors")
    wb = load_file(tmp_path / "two" / "model" / "open_clip_model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-5
    # the runs did train (otherwise equality would be trivial)
    assert one[-1] < one[0]
