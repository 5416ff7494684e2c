"""Reuses the trained demo-run fixtures of tests/explain (one cached training for both folders)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_medvlp_explain_fixtures", Path(__file__).resolve().parents[1] / "explain" / "conftest.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

trained_demo_run = _mod.trained_demo_run
demo_run = _mod.demo_run
demo_model = _mod.demo_model
