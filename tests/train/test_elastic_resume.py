"""The elastic acceptance test: a 2-process run on streamed shards, SIGKILLed after a checkpoint and
resumed on 1 process, ends with the weights of the uninterrupted 2-process run."""

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

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cmd(args: list[str], out: Path, nproc: int) -> list[str]:
    tail = ["-m", "medvlp", "pretrain", *args, "--out", str(out)]
    if nproc == 1:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *tail]


@pytest.mark.timeout(240)
def test_killed_two_process_run_resumes_on_one_process(small_demo: Path, tmp_path: Path) -> None:
    from medvlp.data.shards import write_shards

    shards = write_shards(small_demo, tmp_path / "shards", shard_size=16, split="train")
    args = ["--data", shards.pattern, "--steps", "8", "--batch-size", "16", "--seed", "0", "--device", "cpu",
            "--workers", "0", "--no-eval", "--log-every", "1", "--quiet", "--threads", "1", "--precision", "fp32", "--warmup", "0",
            "--save-every", "2"]
    full = subprocess.run(_cmd(args, tmp_path / "full", 2), capture_output=True, text=True, env=ENV, timeout=150)
    assert full.returncode == 0, full.stderr[-3000:]

    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(args, killed_out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=ENV, start_new_session=True)
    last = killed_out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, mid-run
    proc.wait(timeout=30)
    assert last.is_file(), "the killed run never wrote a checkpoint"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["step"] < 8 and not (killed_out / "model").exists(), "the run finished before it was killed"
    data = ckpt["data"]
    assert data["samples_seen"] == ckpt["step"] * 16 and data["epoch_samples"] == shards.samples
    assert data["bad"] == []

    resumed = subprocess.run(_cmd([*args, "--resume"], killed_out, 1), capture_output=True, text=True, env=ENV,
                             timeout=150)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    wa = load_file(tmp_path / "full" / "model" / "open_clip_model.safetensors")
    wb = load_file(killed_out / "model" / "open_clip_model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-4, f"resumed weights differ by {worst}"
    # the steps after the checkpoint moved the weights (so equality is not the checkpoint's own)
    at_ckpt = {k[len("clip."):]: v for k, v in ckpt["model"].items() if k.startswith("clip.")}
    moved = max((wa[k] - at_ckpt[k]).abs().max().item() for k in wa)
    assert moved > 10 * worst and moved > 1e-5, (ckpt["step"], moved, worst)
    print(f"killed at checkpoint step {ckpt['step']}; resumed-on-1 vs uninterrupted-on-2: max |dw| {worst:.2e}; "
          f"moved after the checkpoint: {moved:.2e}")
