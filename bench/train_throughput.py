"""Training throughput: medvlp's trainer vs open_clip_train on the same model, data, batch and threads.

Both train medvlp's ``tiny`` config (gradient clipping at 1.0 on both sides) (registered with open_clip for the baseline) on the same CSV of the
pathology demo corpus (64 px PNGs, one caption per image), fp32 on CPU, batch 128, the same torch
thread count. Throughput is the median samples/s over steady-state steps (the first steps of every
epoch, with data-loader start-up, are excluded for open_clip; medvlp has a single continuous stream).

    python bench/train_throughput.py [--steps 33] [--threads 2] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from _common import machine, metrics_records, train_run


def _csv(tmp: Path, manifest: Path | None) -> Path:
    if manifest is None:
        from medvlp.data.synthetic import demo_manifest

        manifest = demo_manifest("pathology", progress=False)
    df = pd.read_csv(manifest)
    df = df[df.split == "train"]
    out = pd.DataFrame({"image": [str(manifest.parent / p) for p in df.image],
                        "caption": [json.loads(c)[0] for c in df.caption]})
    path = tmp / "train.tsv"
    out.to_csv(path, index=False, sep="\t")
    return path


def run_medvlp(csv: Path, steps: int, batch: int, threads: int, tmp: Path) -> dict:
    out = tmp / "medvlp"
    t0 = time.time()
    train_run("pathology", csv, out, model="tiny", steps=steps, batch_size=batch, threads=threads, log_every=1,
              warmup=3, save_every=10**6)
    wall = time.time() - t0
    recs = metrics_records(out)
    sps = [r["samples_per_s"] for r in recs[3:]]
    return {"samples_per_s": statistics.median(sps), "wall_s": wall, "steps": len(recs)}


def run_open_clip(csv: Path, steps: int, batch: int, threads: int, workers: int, tmp: Path) -> dict:
    import open_clip
    from open_clip_train.main import main as oc_main

    from medvlp.models import get_spec

    cfg = tmp / "tiny.json"  # the exact architecture medvlp builds, as an open_clip model config
    cfg.write_text(json.dumps(get_spec("tiny").model_cfg))
    open_clip.add_model_config(cfg)
    n = len(pd.read_csv(csv, sep="\t"))
    epochs = max(1, round(steps / (n // batch)))
    torch.set_num_threads(threads)
    logs = tmp / f"oc-logs-w{workers}"
    args = ["--train-data", str(csv), "--csv-img-key", "image", "--csv-caption-key", "caption",
            "--csv-separator", "\t", "--dataset-type", "csv", "--model", "tiny", "--batch-size", str(batch),
            "--epochs", str(epochs), "--workers", str(workers), "--lr", "7e-4", "--warmup", "3",
            "--precision", "fp32", "--save-frequency", "0", "--zeroshot-frequency", "0",
            "--val-frequency", "0", "--logs", str(logs), "--name", "bench", "--log-every-n-steps", "1",
            "--report-to", "", "--seed", "0", "--device", "cpu",
            "--grad-clip-norm", "1.0"]  # medvlp clips at 1.0 by default: same work on both sides
    t0 = time.time()
    oc_main(args)
    wall = time.time() - t0
    text = (logs / "bench" / "out.log").read_text()
    per_step = [float(m.group(1)) for m in re.finditer(r"Batch \(t\): [\d.]+, ([\d.]+)/s", text)]
    steps_per_epoch = n // batch
    steady = [v for i, v in enumerate(per_step) if i % steps_per_epoch >= 3]
    return {"samples_per_s": statistics.median(steady or per_step), "wall_s": wall, "steps": len(per_step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=33)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--manifest", type=Path, default=None, help="demo-style manifest (default: the pathology demo)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        csv = _csv(tmp, a.manifest)
        ours = run_medvlp(csv, a.steps, a.batch, a.threads, tmp)
        base = {w: run_open_clip(csv, a.steps, a.batch, a.threads, w, tmp) for w in (0, 2)}
    best = max(base.values(), key=lambda r: r["samples_per_s"])
    print(f"machine: {machine(torch_threads=True)}, {sys.platform}")
    print(f"medvlp       : {ours['samples_per_s']:.1f} samples/s ({ours['steps']} steps, {ours['wall_s']:.0f} s wall)")
    for w, r in base.items():
        print(f"open_clip w={w}: {r['samples_per_s']:.1f} samples/s ({r['steps']} steps, {r['wall_s']:.0f} s wall)")
    print(f"ratio medvlp / best open_clip: {ours['samples_per_s'] / best['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
