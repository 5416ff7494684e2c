"""Atomic checkpoints with all state needed for a bit-exact resume."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvlp.errors import ConfigError

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    legacy = np.random.get_state()  # legacy=True: a tuple (the stubs also allow a dict)
    assert isinstance(legacy, tuple)
    name, keys, pos, has_gauss, cached = legacy
    state = {
        "torch": torch.get_rng_state(),
        # numpy's state as plain tensors/numbers so that weights_only loading accepts it
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/last.pt`` atomically (temp file, fsync, rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / LAST
    tmp = d / f".{LAST}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / LAST
    if not path.is_file():
        return None
    # Only tensors, numbers, strings and containers: the safe loader suffices, and nothing else is tried.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{path}: not a readable medvlp checkpoint ({first.split('. ')[0]}); it is truncated or holds "
            "pickled objects, which medvlp never unpickles. Delete it to start over, or resume from a copy"
        ) from None
