"""Input checks shared by the eval modules: one finite-matrix check, one message.

Example:
    >>> import numpy as np
    >>> finite_matrix("features", [[1.0, 2.0]]).shape
    (1, 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medvlp.errors import DataError

__all__ = ["check_finite", "finite_matrix"]


def check_finite(name: str, a: np.ndarray) -> None:
    """Raise DataError naming the first row with a NaN/inf value (float arrays only)."""
    a = np.asarray(a)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise DataError(f"{name} has a NaN or infinite value at row {int(bad[0])}: remove or fix that row")


def finite_matrix(name: str, x: Any, *, what: str = "(N, D)") -> np.ndarray:
    """``x`` (array or torch tensor) as a non-empty, finite float64 2-D matrix.

    Raises:
        DataError: not 2-D, empty, or a NaN/inf value (the message names the row).
    """
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < 1:
        raise DataError(f"{name} must be a non-empty {what} matrix; got shape {a.shape}")
    check_finite(name, a)
    return a
