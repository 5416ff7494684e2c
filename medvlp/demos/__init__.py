"""Synthetic demo corpora: small generated datasets per domain (pathology, cxr, dermatology,
microscopy) used by the demos, tests and benchmarks.

Example:
    >>> from medvlp.demos import demo_manifest
    >>> path = demo_manifest("pathology", n_per_class=2, size=32, variant="tiles")  # doctest: +SKIP
"""

from medvlp.demos.corpora import (
    COLUMNS,
    DEMOS,
    PATHOLOGY_CLASSES,
    DemoClass,
    DemoEntry,
    demo_dir,
    demo_domains,
    demo_manifest,
    demo_variants,
    resolve_demo,
)

__all__ = [
    "COLUMNS",
    "DEMOS",
    "PATHOLOGY_CLASSES",
    "DemoClass",
    "DemoEntry",
    "demo_dir",
    "demo_domains",
    "demo_manifest",
    "demo_variants",
    "resolve_demo",
]
