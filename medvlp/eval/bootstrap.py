"""The (cluster) bootstrap engine: resample weights in chunks and evaluate weighted kernels on them."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from medvlp.errors import DataError
from medvlp.eval.metrics_classification import _CHUNK_CELLS, _ones


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a percentile bootstrap interval; unpacks as ``value, low, high``.

    Attributes:
        value: the metric on the full data.
        low: lower bound (``alpha / 2`` quantile of the resampled values).
        high: upper bound (``1 - alpha / 2`` quantile).
        n_boot: resamples drawn.
        n_skipped: resamples where the metric was undefined (e.g. a class absent) and left out.
        unit: what was resampled: ``"sample"`` or the group unit (``"patient"``, ``"slide"``).
    """

    value: float
    low: float
    high: float
    n_boot: int
    n_skipped: int
    unit: str = "sample"

    def __iter__(self):  # lets `v, lo, hi = bootstrap_ci(...)` work
        return iter((self.value, self.low, self.high))

    def to_dict(self) -> dict[str, float | None]:
        """``{"value", "ci_low", "ci_high"}`` with NaN as ``None`` so the JSON stays valid."""
        return {
            "value": _json_float(self.value),
            "ci_low": _json_float(self.low),
            "ci_high": _json_float(self.high),
        }


def _json_float(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, int]:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise DataError(f"groups must have one id per row ({n}); got shape {g.shape}")
    if g.dtype.kind == "f" and np.isnan(g).any():
        raise DataError(f"groups has a missing id at row {int(np.flatnonzero(np.isnan(g))[0])}")
    if g.dtype == object and any(x is None for x in g):
        raise DataError(f"groups has a missing id at row {[i for i, x in enumerate(g) if x is None][0]}")
    _, inv = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    return inv.astype(np.int64), int(inv.max()) + 1 if n else 0


def _weight_chunks(n: int, n_boot: int, seed: int, groups: Any) -> Iterable[np.ndarray]:
    """Yield (b, n) resample-count matrices covering ``n_boot`` resamples.

    Row bootstrap: counts of n draws with replacement from the rows. Cluster bootstrap: draw as
    many groups as there are, with replacement; every row of a drawn group gets the group's count.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        inv, n_units = None, n
    else:
        inv, n_units = _group_index(groups, n)
    chunk = max(1, min(n_boot, _CHUNK_CELLS // max(n, n_units, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, n_units, size=(b, n_units))
        flat = (draws + (np.arange(b) * n_units)[:, None]).ravel()
        # float32 halves the memory traffic; counts and their sums stay exact below 2**24
        counts = np.bincount(flat, minlength=b * n_units).reshape(b, n_units).astype(np.float32)
        yield counts if inv is None else counts[:, inv]
        done += b


def _summarise(
    value: float, samples: np.ndarray, alpha: float, n_boot: int, unit: str, name: str
) -> BootstrapCI:
    ok = samples[np.isfinite(samples)]
    skipped = int(n_boot - ok.size)
    if ok.size == 0:
        if n_boot:
            warnings.warn(
                f"bootstrap for {name}: all {n_boot} resamples were degenerate; no interval", stacklevel=3
            )
        return BootstrapCI(value, float("nan"), float("nan"), n_boot, skipped, unit)
    if skipped > 0.1 * n_boot:
        warnings.warn(
            f"bootstrap for {name}: {skipped} of {n_boot} resamples were degenerate and skipped "
            "(e.g. a class absent); the interval may be optimistic",
            stacklevel=3,
        )
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(value, float(lo), float(hi), n_boot, skipped, unit)


def _bootstrap_kernels(
    kernels: Mapping[str, Callable[[np.ndarray], Any]],
    n: int,
    *,
    n_boot: int,
    seed: int,
    groups: Any,
    alpha: float,
    unit: str,
) -> dict[str, BootstrapCI]:
    """Run several weighted kernels on the *same* resamples. A kernel may return a dict of arrays."""
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be in (0, 1); got {alpha}")
    if n_boot < 0:
        raise DataError(f"n_boot must be >= 0; got {n_boot}")
    point: dict[str, float] = {}
    parts: dict[str, list[np.ndarray]] = {}

    def collect(out: dict[str, list], name: str, res: Any) -> None:
        if isinstance(res, dict):
            for k, v in res.items():
                out.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
        else:
            out.setdefault(name, []).append(np.asarray(res, dtype=np.float64))

    pt: dict[str, list] = {}
    for name, kern in kernels.items():
        collect(pt, name, kern(_ones(n)))
    point = {k: float(v[0][0]) for k, v in pt.items()}
    if n_boot:
        for W in _weight_chunks(n, n_boot, seed, groups):
            for name, kern in kernels.items():
                collect(parts, name, kern(W))
    return {
        k: _summarise(point[k], np.concatenate(parts[k]) if n_boot else np.empty(0), alpha, n_boot, unit, k)
        for k in point
    }


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Any = None,
    alpha: float = 0.05,
    unit: str | None = None,
) -> BootstrapCI:
    """Percentile bootstrap interval of a metric, resampling rows or whole groups.

    The metrics of this module (also wrapped in ``functools.partial``) run vectorised: all
    resamples are expressed as row weights and evaluated in a few array operations per chunk.
    Any other ``metric_fn(*arrays) -> float`` works too, through a Python loop over resamples.

    Args:
        metric_fn: e.g. :func:`macro_auroc`, or any function of the arrays.
        *arrays: arrays with the same number of rows, passed to ``metric_fn``.
        n_boot: number of resamples.
        seed: seed of the resampling generator (same seed, same interval).
        groups: optional (N,) patient or slide ids. When given, whole groups are drawn with
            replacement (cluster bootstrap), so correlated rows of one patient do not make the
            interval falsely narrow.
        alpha: 1 - confidence level (0.05 gives a 95% interval).
        unit: name of the resampled unit for reports; default ``"sample"`` / ``"group"``.

    Returns:
        A :class:`BootstrapCI` (unpacks to ``value, low, high``). Resamples where the metric is
        undefined (one class only for AUROC, ...) are skipped and counted in ``n_skipped``.

    Example:
        >>> from medvlp.eval.metrics_classification import macro_auroc
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 500); s = rng.random(500) + 0.5 * y
        >>> v, lo, hi = bootstrap_ci(macro_auroc, y, s, n_boot=200)
        >>> bool(lo < v < hi)
        True
    """
    if not arrays:
        raise DataError("bootstrap_ci needs at least one array")
    n = len(arrays[0])
    for a in arrays:
        if len(a) != n:
            raise DataError(f"all arrays must have the same number of rows; got {[len(x) for x in arrays]}")
    unit = unit or ("sample" if groups is None else "group")
    name = cast(str, getattr(metric_fn, "__name__", None) or getattr(
        getattr(metric_fn, "func", None), "__name__", "metric"
    ))

    factory, kwargs = getattr(metric_fn, "_kernel", None), {}
    if factory is None and isinstance(metric_fn, functools.partial):
        factory = getattr(metric_fn.func, "_kernel", None)
        if metric_fn.args:
            factory = None  # positional partials change the array order: use the generic path
        kwargs = dict(metric_fn.keywords)
    if factory is not None:
        # the public function validates and warns once on the full data
        value = float(metric_fn(*arrays))
        kern = factory(*arrays, **kwargs)
        res = _bootstrap_kernels(
            {name: kern}, n, n_boot=n_boot, seed=seed, groups=groups, alpha=alpha, unit=unit
        )
        r = res[name]
        return BootstrapCI(value, r.low, r.high, r.n_boot, r.n_skipped, unit)

    # Generic path: materialise each resample as row indices.
    value = float(metric_fn(*arrays))
    arrs = [np.asarray(a) for a in arrays]
    vals = np.full(n_boot, np.nan)
    i = 0
    for W in _weight_chunks(n, n_boot, seed, groups):
        counts = W.astype(np.int64)
        for row in counts:
            idx = np.repeat(np.arange(n), row)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    vals[i] = float(metric_fn(*[a[idx] for a in arrs]))
            except (ValueError, ZeroDivisionError, DataError):
                pass  # undefined on this resample: counted as skipped
            i += 1
    return _summarise(value, vals, alpha, n_boot, unit, name)


