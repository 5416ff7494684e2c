"""Helpers shared by the ``bench/*.py`` scripts (run as ``python bench/NAME.py``, which puts this folder on
``sys.path``): the machine and command a figure was measured with, timing summaries, confidence-interval
cells, results files (whole files and marked sections), tiny training runs on the demo corpora, and
loading a sibling script as a module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS_DIR = BENCH / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"  # the real data beside the checkout (absent: skipped)


# -- where and how a figure was measured --------------------------------------------------------------
def cpu_name() -> str:
    """The CPU model (``lscpu``), else what :mod:`platform` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(torch_threads: bool = False) -> str:
    """``2-core CPU (no GPU), <CPU model>, Python 3.x[, torch v, N threads]``: the cores this process may
    use and whether torch sees a GPU (checked only when torch is already imported)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpu = "no GPU"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpu = f"GPU {torch.cuda.get_device_name(0)}"
    text = f"{cores}-core CPU ({gpu}), {cpu_name()}, Python {platform.python_version()}"
    if torch is not None:
        text += f", torch {torch.__version__}"
        if torch_threads:
            text += f", {torch.get_num_threads()} threads"
    return text


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``python bench/SCRIPT.py ARGS``: the command that reproduces the figure (``argv``: the arguments the
    script's ``main`` got, ``None`` for the process's own)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python", f"bench/{Path(script).name}", *args])


def load_average() -> str:
    """``1.2 / 0.9 / 0.7``: the 1, 5 and 15 minute load averages (the machine may be shared)."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


# -- numbers -----------------------------------------------------------------------------------------
def median_min(values: Sequence[float], digits: int = 3) -> str:
    """``median (min)`` of repeated timings, e.g. ``0.412 (0.398)``."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f})"


def ci(m: dict[str, Any] | None, digits: int = 3) -> str:
    """``value [ci_low, ci_high]`` of a metrics-JSON entry; ``n/a`` when it has no value."""
    if not m or m.get("value") is None:
        return "n/a"
    return f"{m['value']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


# -- results files -----------------------------------------------------------------------------------
def write_text(path: Path | str, text: str) -> Path:
    """Write a whole results file (its folder made first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_section(path: Path | str, key: str, body: str, title: str = "# Benchmarks") -> Path:
    """Replace (or append) the block between ``<!-- key -->`` and ``<!-- /key -->`` in ``path``; a new
    file starts with ``title``. Other sections are left as they are."""
    path = Path(path)
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else title + "\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    return write_text(path, text)


# -- tiny runs ---------------------------------------------------------------------------------------
def pathology_tiles(out_dir: Path, n_per_class: int, seed: int = 0) -> Path:
    """The pathology tile demo corpus (64 px tiles, secondary-class ellipses with masks); its manifest."""
    from medvlp.data.synthetic import demo_manifest

    return demo_manifest("pathology", n_per_class=n_per_class, size=64, seed=seed, out_dir=out_dir,
                         progress=False, variant="tiles")


def train_run(domain: str, data: Path | str, out: Path | str, **cfg: Any) -> Any:
    """``medvlp.pretrain`` without held-out evaluation or console output; ``cfg``: TrainConfig fields."""
    import medvlp

    return medvlp.pretrain(domain=domain, data=str(data), out=str(out), eval=False, quiet=True, **cfg)


def metrics_records(run_dir: Path | str) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (one per logged step)."""
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def sibling(name: str) -> ModuleType:
    """Another bench script as a module (``sibling("wsi_tiling").write_slide``)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"bench/{name}.py not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
