"""Where the bundled data (domain cards, ontologies, apps) lives.

In a wheel the folders are packaged as ``medvlp/_bundled/<kind>``; in a source checkout or an
editable install they are the top-level ``domains/``, ``ontologies/`` and ``apps/`` folders. Both are
found by the same function, so code never needs to know how medvlp was installed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@cache
def bundled_dir(kind: str) -> Path:
    """Return the folder of bundled ``kind`` data (``domains``, ``ontologies`` or ``apps``).

    >>> bundled_dir("domains").name
    'domains'
    """
    for candidate in (_PKG / "_bundled" / kind, _PKG.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"medvlp's bundled '{kind}' folder is missing (looked in {_PKG / '_bundled' / kind} and "
        f"{_PKG.parent / kind}); reinstall medvlp"
    )


def domains_dir() -> Path:
    return bundled_dir("domains")


def ontologies_dir() -> Path:
    return bundled_dir("ontologies")


def apps_dir() -> Path:
    return bundled_dir("apps")
