"""Training throughput: medvlp's trainer vs open_clip_train on the same model, data, batch and threads.

Both train medvlp's ``tiny`` config (registered with open_clip for the baseline; gradient clipping at 1.0 on
both sides) on the same CSV of the pathology demo corpus (64 px PNGs, one caption per image), batch 128, the
same torch thread count. medvlp runs its defaults (bf16 autocast on a CPU with native bf16, else fp32);
open_clip_train runs fp32 and ``--precision amp_bf16``, each with 0 and 2 workers, and the ratio is against
the best of the four. Throughput is the median samples/s over steady-state steps (the first steps of every
epoch, with data-loader start-up, are excluded for open_clip; medvlp has a single continuous stream).

Each measurement runs in its own process; the sides alternate over ``--repeats`` rounds (order reversed every
other round) and the median with its range is printed. medvlp's own step split (data wait, forward, backward, optimizer) is printed
from its metrics.jsonl.

    python bench/train_throughput.py [--steps 33] [--threads 2] [--batch 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from _common import (
    RESULTS_DIR,
    command_line,
    load_average,
    machine,
    metrics_records,
    pathology_tiles,
    train_run,
    write_section,
)


def _csv(tmp: Path, manifest: Path | None) -> Path:
    """A tile-image TSV (image path, one caption) that both trainers read: by default the pathology demo's
    64 px tile variant (PNG files; the default demo is whole-slide tile references, which open_clip's CSV
    loader cannot read)."""
    if manifest is None:
        manifest = pathology_tiles(tmp / "tiles", n_per_class=400)
    df = pd.read_csv(manifest)
    df = df[df.split == "train"] if "split" in df.columns else df
    if df["image"].astype(str).str.contains("#").any():
        raise SystemExit(f"{manifest}: whole-slide tile references; give a manifest of image files")
    out = pd.DataFrame({"image": [str(manifest.parent / p) for p in df.image],
                        "caption": [json.loads(c)[0] if str(c).startswith("[") else c for c in df.caption]})
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


def run_open_clip(csv: Path, steps: int, batch: int, threads: int, workers: int, tmp: Path,
                  precision: str = "fp32") -> dict:
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
            "--precision", precision, "--save-frequency", "0", "--zeroshot-frequency", "0",
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


def _worker(a: argparse.Namespace) -> None:
    """One measurement in a fresh process (so the sides share no warm state); prints a JSON line."""
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix=f"tp-{a.worker}-"))
    if a.worker == "medvlp":
        r = run_medvlp(a.csv, a.steps, a.batch, a.threads, tmp)
        recs = metrics_records(tmp / "medvlp")[3:]
        r["split"] = {k: statistics.median(x[k] for x in recs) for k in
                      ("data_time", "forward_time", "backward_time", "optimizer_time") if all(k in x for x in recs)}
        r["peak_rss_mb"] = max(x.get("peak_rss_mb", 0) for x in recs)
        r["precision"] = _run_precision(tmp / "medvlp")
    else:
        workers = int(a.worker.split("-w")[1].split("-")[0])
        r = run_open_clip(a.csv, a.steps, a.batch, a.threads, workers, tmp,
                          "amp_bf16" if a.worker.endswith("-bf16") else "fp32")
    print("RESULT " + json.dumps(r), flush=True)


def _run_precision(run_dir: Path) -> str:
    import yaml

    return str((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("precision"))


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=33)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats per side")
    ap.add_argument("--manifest", type=Path, default=None, help="a manifest of image files (default: the "
                                                                "pathology demo's tile images)")
    ap.add_argument("--no-write", action="store_true", help="print only (no section in bench/RESULTS.md)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--csv", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return _worker(a)
    # open_clip_train fp32 and with --precision amp_bf16 (the strongest ordinary alternative on a CPU with
    # native bf16, where medvlp's default is bf16 autocast), each with 0 and 2 data-loader workers
    sides = ["medvlp", "openclip-w0", "openclip-w2", "openclip-w0-bf16", "openclip-w2-bf16"]
    results: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as d:
        csv = _csv(Path(d), a.manifest)
        for rep in range(a.repeats):
            order = sides if rep % 2 == 0 else sides[::-1]  # alternate, so drift hits both sides alike
            for side in order:
                cmd = [sys.executable, __file__, "--worker", side, "--csv", str(csv), "--steps", str(a.steps),
                       "--batch", str(a.batch), "--threads", str(a.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
                results[side].append(json.loads(line[len("RESULT "):]))
                print(f"repeat {rep + 1} {side}: {results[side][-1]['samples_per_s']:.1f} samples/s", flush=True)
    med = {s: statistics.median(r["samples_per_s"] for r in results[s]) for s in sides}
    best = max(sides[1:], key=lambda s: med[s])
    best_fp32 = max(["openclip-w0", "openclip-w2"], key=lambda s: med[s])
    lines = [f"machine: {machine(torch_threads=True)}, {sys.platform}; load average {load_average()}",
             f"data: {a.steps} steps x batch {a.batch}, tiny model, clip at 1.0, {a.threads} threads; medvlp "
             f"precision (its default here): {results['medvlp'][-1].get('precision')}"]
    lines += [f"{s:<16}: {_spread([r['samples_per_s'] for r in results[s]])} samples/s" for s in sides]
    split = results["medvlp"][-1].get("split", {})
    if split:
        lines.append("medvlp step split (median s): " + ", ".join(f"{k} {v:.4f}" for k, v in split.items()))
    lines.append(f"ratio medvlp / best open_clip fp32 ({best_fp32}): {med['medvlp'] / med[best_fp32]:.2f}")
    lines.append(f"ratio medvlp / best open_clip: {med['medvlp'] / med[best]:.2f} (best: {best})")
    print("\n".join(lines))
    if not a.no_write:
        cmd = command_line(__file__, sys.argv[1:])
        write_section(RESULTS_DIR.parent / "RESULTS.md", "train-throughput", "\n".join([
            "## Training throughput vs open_clip_train (`bench/train_throughput.py`, issue 16)", "",
            f"Command: `{cmd}` ({a.repeats} alternating repeats per side; median (min, max)). open_clip_train "
            "runs fp32 and `--precision amp_bf16`, with 0 and 2 workers; the ratio is against the best of the "
            "four.", "", "```text", *lines, "```"]))


if __name__ == "__main__":
    main()
