"""medvlp: domain-specific medical vision-language pretraining.

Example:
    >>> import medvlp
    >>> run = medvlp.pretrain(domain="pathology", steps=20)          # doctest: +SKIP
    >>> model = medvlp.load(run.out)                                 # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(source: Any, *, domain: str | None = None, device: str = "cpu") -> Any:
    """Load a trained run / model folder / zoo id; see :func:`medvlp.api.load`."""
    from medvlp.api import load as _load

    return _load(source, domain=domain, device=device)


def pretrain(domain: str = "pathology", data: str | None = None, **kwargs: Any) -> Any:
    """Pretrain as ``medvlp pretrain`` does; keyword arguments are :class:`medvlp.config.TrainConfig` fields."""
    from medvlp.config import TrainConfig
    from medvlp.train import pretrain as _pretrain

    quiet = kwargs.pop("quiet", False)
    return _pretrain(TrainConfig(domain=domain, data=data, **kwargs), quiet=quiet)


__all__ = ["__version__", "load", "pretrain"]
