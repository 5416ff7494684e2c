"""Moved: the synthetic demo corpora live in :mod:`medvlp.demos` (``medvlp.demos.corpora``).

This alias keeps ``from medvlp.data.synthetic import demo_manifest`` working for existing scripts.
``medvlp.data`` sits below ``medvlp.demos`` in the layers, so the alias resolves names on first
access instead of importing the higher layer at import time; new code imports ``medvlp.demos``.
"""

from __future__ import annotations

import importlib
from typing import Any

_TARGET = "medvlp.demos.corpora"


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module(_TARGET), name)


def __dir__() -> list[str]:
    return sorted(dir(importlib.import_module(_TARGET)))
