"""Crash safety of a run folder: atomic writes, stale temp files removed, logs cut back on resume,
DataLoader workers that die with their parent.

A run killed at any moment (SIGKILL included) leaves its folder either loadable (a complete ``model/``)
or resumable from its last complete checkpoint; nothing half-written is ever read back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean_stale_temp(run_dir: Path) -> list[Path]:
    """Remove temp files and folders left by a killed run (``.X.tmp-PID``, ``.last.pt.tmpPID``)."""
    removed = []
    for base in (run_dir, run_dir / "checkpoints"):
        if not base.is_dir():
            continue
        for p in base.iterdir():
            if p.name.startswith(".") and (TMP_MARK in p.name or ".tmp" in p.name):
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (a resumed run writes the rest again).

    Returns the number of records dropped. A half-written last line (killed mid-write) is dropped too.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) > step:
            dropped += 1
            continue
        kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))
    return dropped


def prepare_run_folder(run_dir: Path, resume_step: int | None) -> None:
    """On start: remove stale temp files; a fresh run starts empty logs, a resumed one cuts them back.

    ``bad_samples.jsonl`` is started anew either way: the dataset's checks, which run again on resume,
    find the same rows again (so no record is duplicated and none is lost).
    """
    clean_stale_temp(run_dir)
    (run_dir / "bad_samples.jsonl").unlink(missing_ok=True)
    if resume_step is None:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    else:
        truncate_metrics(run_dir / "metrics.jsonl", resume_step)


def exit_with_parent(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker gets SIGKILL when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent already died before the call
            os._exit(1)
    except (OSError, AttributeError):
        pass


def worker_init(seed_fn: Any = None) -> Any:
    """A ``worker_init_fn`` that exits with the parent and then runs ``seed_fn`` (if any)."""
    def init(worker_id: int) -> None:
        exit_with_parent(worker_id)
        if seed_fn is not None:
            seed_fn(worker_id)
    return init
