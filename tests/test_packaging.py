"""The wheel ships the domain cards, ontologies and apps, and an installed wheel finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "hatchling" in proc.stderr:
        pytest.skip("hatchling (the build backend) is not installed in this environment")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(out.glob("medvlp-*.whl"))


def test_wheel_contains_bundled_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for domain in ("cxr", "pathology", "dermatology", "microscopy"):
        assert f"medvlp/_bundled/domains/{domain}.toml" in names
        assert f"medvlp/_bundled/ontologies/{domain}.json" in names
    assert "medvlp/_bundled/ontologies/SOURCES.md" in names
    assert any(n.startswith("medvlp/_bundled/apps/") and n.endswith(".py") for n in names)
    assert any(n.startswith("medvlp/models/model_configs/") for n in names)
    assert "medvlp/models/zoo.json" in names  # the zoo catalogue (medvlp.models.zoo reads it at import)


def test_installed_wheel_finds_its_data(wheel: Path, tmp_path: Path) -> None:
    # the wheel unpacked into its own folder, put first on the path (ahead of any editable install)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import medvlp.resources as r, medvlp.domains as d; "
            "print(r.domains_dir()); print(sorted(d.list_domains())); "
            "from medvlp.ontology import load_ontology; print(len(load_ontology('cxr')))")
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, domains, n = proc.stdout.strip().splitlines()
    assert where.startswith(str(site)) and "_bundled" in where
    assert domains == "['cxr', 'dermatology', 'microscopy', 'pathology']"
    assert int(n) >= 150
