"""A tiny siglip+concept model trained briefly on a small pathology demo corpus (session-scoped).

The run is kept in pytest's cache folder keyed by its settings, so only the first session trains it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SETTINGS = {"n_per_class": 30, "steps": 60, "batch_size": 32, "seed": 0, "objective": "siglip+concept", "v": 2}


def trained_demo_run(cache_root: Path) -> tuple[Path, Path]:
    """(run folder, demo manifest); trains once per settings (see SETTINGS)."""
    from medvlp.app.support import train_demo_run
    from medvlp.data.synthetic import demo_manifest
    from medvlp.objectives import available

    key = "-".join(f"{v}" for v in SETTINGS.values())
    root = cache_root / f"explain-demo-{key}"
    manifest = demo_manifest("pathology", n_per_class=SETTINGS["n_per_class"], size=64, seed=0,
                             out_dir=root / "demo", progress=False, variant="tiles")
    run = root / "run"
    if not (run / "model" / "medvlp.json").is_file():
        objective = SETTINGS["objective"] if "concept" in available() else "clip"
        train_demo_run("pathology", run, data=str(manifest), steps=SETTINGS["steps"],
                       batch_size=SETTINGS["batch_size"], seed=SETTINGS["seed"], objective=objective, eval=False)
        (root / "settings.json").write_text(json.dumps(SETTINGS))
    return run, manifest


@pytest.fixture(scope="session")
def demo_run(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    return trained_demo_run(Path(request.config.cache.mkdir("medvlp-explain")))


@pytest.fixture(scope="session")
def demo_model(demo_run):
    import medvlp

    return medvlp.load(demo_run[0])
