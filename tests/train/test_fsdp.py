"""``--fsdp``: two gloo processes with FSDP2-sharded weights train like the DDP run (losses and final weights
to 1e-5); the sharded checkpoint reloads in one process (another world size) and the model folder is the
ordinary single-file one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _run(args: list[str], out: Path, nproc: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "medvlp", "pretrain", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("objective", ["siglip+concept"])
def test_fsdp_equals_ddp_and_its_checkpoint_reshards(small_demo: Path, tmp_path: Path, objective: str) -> None:
    args = ["--data", str(small_demo), "--objective", objective, "--steps", "4", "--batch-size", "32",
            "--seed", "0", "--device", "cpu", "--workers", "0", "--no-eval", "--log-every", "1", "--quiet",
            "--threads", "1", "--precision", "fp32", "--warmup", "0", "--save-every", "2"]
    ddp = _run(args, tmp_path / "ddp", 2)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp = _run([*args, "--fsdp"], tmp_path / "fsdp", 2)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    a, b = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert len(a) == len(b) == 4 and a[-1] < a[0]
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) < 1e-5, (a, b)
    wa = load_file(tmp_path / "ddp" / "model" / "open_clip_model.safetensors")
    wb = load_file(tmp_path / "fsdp" / "model" / "open_clip_model.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5

    # the sharded checkpoint (2 ranks) loads into one unsharded process: DCP reshards on load
    ckpt_dir = tmp_path / "fsdp" / "checkpoints"
    last = torch.load(ckpt_dir / "last.pt", weights_only=True)
    assert last["step"] == 4 and (ckpt_dir / last["sharded"]).is_dir()
    assert len(list((ckpt_dir / last["sharded"]).glob("*.distcp"))) == 2
    import torch.distributed.checkpoint as dcp

    from medvlp.models import create_model
    from medvlp.objectives import build_objective

    model = create_model("tiny", seed=0, **build_objective(objective).model_kwargs())
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(ckpt_dir / last["sharded"]))
    clip_sd = {k[len("clip."):]: v for k, v in state["model"].items() if k.startswith("clip.")}
    assert max((clip_sd[k] - wb[k]).abs().max().item() for k in wb) < 1e-6

    # --resume goes through the loop's sharded load (here on a finished run: no step left, the model folder
    # is written again from the loaded shards and must be unchanged)
    again = _run([*args, "--fsdp", "--resume"], tmp_path / "fsdp", 2)
    assert again.returncode == 0, again.stderr[-3000:]
    wc = load_file(tmp_path / "fsdp" / "model" / "open_clip_model.safetensors")
    assert max((wc[k] - wb[k]).abs().max().item() for k in wb) < 1e-7
    plain = _run([*args, "--resume"], tmp_path / "fsdp", 2)  # resuming a sharded run without --fsdp
    assert plain.returncode != 0 and "--fsdp" in plain.stderr


def test_fsdp_without_torchrun_is_a_clear_error(small_demo: Path, tmp_path: Path) -> None:
    from medvlp.config import TrainConfig
    from medvlp.errors import ConfigError
    from medvlp.train import pretrain

    with pytest.raises(ConfigError, match="torchrun"):
        pretrain(TrainConfig(domain="pathology", data=str(small_demo), steps=1, batch_size=8, workers=0,
                             out=str(tmp_path / "r"), fsdp=True, eval=False), quiet=True)
