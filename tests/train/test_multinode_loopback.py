"""Two "nodes" of two processes each, rendezvousing on loopback through torchrun's static rendezvous
(``--nnodes 2 --node-rank K --master-addr 127.0.0.1``), as docs/multinode.md describes: the processes
form one world of 4 (all_reduce over gloo), and ``medvlp pretrain --dry-run`` on shards reports it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROBE = """
import json, os
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("PROBE " + json.dumps({"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": t.item(),
      "local_rank": int(os.environ["LOCAL_RANK"]), "node": int(os.environ["GROUP_RANK"])}), flush=True)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_nodes(target: list[str], timeout: float) -> list[subprocess.CompletedProcess]:
    """Start both nodes' launchers at once (each blocks in the rendezvous until the other joins)."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
                               "--node-rank", str(k), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               *target], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for k in (0, 1)]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


@pytest.mark.timeout(180)
def test_two_nodes_of_two_processes_form_one_world(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    runs = _two_nodes([str(script)], timeout=120)
    seen = []
    for node, run in enumerate(runs):
        assert run.returncode == 0, run.stderr[-3000:]
        # ranks print concurrently, so lines may run together: take every PROBE object wherever it is
        recs = [json.loads(m) for m in re.findall(r"PROBE (\{[^{}]*\})", run.stdout)]
        assert sorted(r["local_rank"] for r in recs) == [0, 1] and {r["node"] for r in recs} == {node}
        seen += recs
    assert sorted(r["rank"] for r in seen) == [0, 1, 2, 3]
    assert all(r["world"] == 4 and r["sum"] == 10.0 for r in seen)  # 1 + 2 + 3 + 4 over both nodes


@pytest.mark.timeout(240)
def test_dry_run_on_two_nodes_reports_the_layout(small_demo: Path, tmp_path: Path) -> None:
    from medvlp.data.shards import write_shards

    shards = write_shards(small_demo, tmp_path / "shards", shard_size=32, split="train")
    runs = _two_nodes(["-m", "medvlp", "pretrain", "--data", shards.pattern, "--dry-run", "--batch-size", "16",
                       "--steps", "3", "--device", "cpu", "--workers", "0", "--threads", "1", "--precision", "fp32",
                       "--out", str(tmp_path / "run")], timeout=200)
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    layout = next(line for line in runs[0].stdout.splitlines() if line.startswith("layout:"))
    assert "world size 4 (this is rank 0)" in layout and "global batch 16" in layout
    assert "per-rank batch 4" in layout and "steps 3" in layout and f"samples/epoch {shards.samples}" in layout
    assert "layout:" not in runs[1].stdout  # only rank 0 prints
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
