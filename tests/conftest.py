"""Shared fixtures: offline hub, a private cache, small demo corpora, the shared real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: the hub is offline and caches are private to the session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    if "MEDVLP_CACHE" not in os.environ:
        os.environ["MEDVLP_CACHE"] = str(tmp_path_factory.mktemp("medvlp-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the repository (``../shared/data``); tests that need it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA.resolve()}")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pathology demo corpus (6 classes x 24 tile images, 64 px): trains in seconds."""
    from medvlp.data.synthetic import demo_manifest

    out = tmp_path_factory.mktemp("demo-small")
    return demo_manifest("pathology", n_per_class=24, size=64, seed=0, out_dir=out / "corpus", progress=False,
                         variant="tiles")
