"""The README's Python API section runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.slow


def test_python_api_section_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    top, total, calibrated = capsys.readouterr().out.strip().splitlines()[-1].rsplit(maxsplit=2)
    assert top in {"adipose tissue", "lymphocytes", "mucus"}
    assert float(total) == pytest.approx(1.0, abs=1e-3) and calibrated == "False"
