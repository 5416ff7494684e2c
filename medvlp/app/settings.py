"""How an app was started: network host, access token, data root, model allow-list, training gate.

``medvlp app NAME`` takes these flags and hands them to the Streamlit script through environment variables
(the script runs in another process); :func:`AppSettings.from_env` reads them back. Safe by default: the
server binds loopback, the page takes uploads only (no server-side paths), offers only the demo model and
the models named at launch, and cannot start training.

Example:
    >>> s = AppSettings(data_root=None)
    >>> s.paths_allowed, s.allow_training
    (False, False)
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from medvlp.errors import ConfigError, DataError

ENV_TOKEN = "MEDVLP_APP_TOKEN"
ENV_DATA_ROOT = "MEDVLP_APP_DATA_ROOT"
ENV_MODELS = "MEDVLP_APP_MODELS"
ENV_ALLOW_TRAINING = "MEDVLP_APP_ALLOW_TRAINING"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class AppSettings:
    """The launch settings of an app (see the module docstring)."""

    token: str | None = None
    data_root: Path | None = None
    models: tuple[str, ...] = field(default_factory=tuple)
    allow_training: bool = False

    @property
    def paths_allowed(self) -> bool:
        return self.data_root is not None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AppSettings:
        env = dict(os.environ if env is None else env)
        root = env.get(ENV_DATA_ROOT) or None
        models = tuple(m for m in (env.get(ENV_MODELS) or "").split(",") if m.strip())
        return cls(token=env.get(ENV_TOKEN) or None, data_root=Path(root).resolve() if root else None,
                   models=tuple(m.strip() for m in models),
                   allow_training=(env.get(ENV_ALLOW_TRAINING) or "") == "1")

    def to_env(self) -> dict[str, str]:
        env = {ENV_ALLOW_TRAINING: "1" if self.allow_training else "0", ENV_MODELS: ",".join(self.models)}
        if self.token:
            env[ENV_TOKEN] = self.token
        if self.data_root is not None:
            env[ENV_DATA_ROOT] = str(self.data_root)
        return env


def token_ok(given: str | None, expected: str | None) -> bool:
    """Whether ``given`` opens an app whose token is ``expected`` (no token set: always; constant time)."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def confine(text: str, settings: AppSettings) -> Path:
    """A server-side path typed into the page, resolved (``..`` and symlinks followed) and checked to lie
    inside the app's ``--data-root``.

    Raises:
        DataError: the app was started without ``--data-root``, or the path leaves it or does not exist.
    """
    if settings.data_root is None:
        raise DataError("this app takes uploads only: server-side paths are off (start it with "
                        "`medvlp app NAME --data-root DIR` to allow files under DIR)")
    raw = (text or "").strip()
    if not raw:
        raise DataError("no path given")
    root = settings.data_root.resolve()
    p = Path(raw).expanduser()
    p = (p if p.is_absolute() else root / p).resolve()
    if p != root and root not in p.parents:
        raise DataError(f"{raw}: outside the app's data root {root}; only files under it can be opened")
    if not p.exists():
        raise DataError(f"{raw}: no such file under the data root {root}")
    return p


def parse_models(text: str | None) -> tuple[str, ...]:
    """``--models a,b``: run folders (must exist), ``local-dir:``/``hf-hub:`` ids or registered configs."""
    out: list[str] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith(("hf-hub:", "local-dir:")):
            out.append(item)
            continue
        from medvlp.models import list_models

        if item in list_models():
            out.append(item)
            continue
        p = Path(item).expanduser()
        if not p.is_dir():
            raise ConfigError(f"--models: {item} is not a model folder, a local-dir:/hf-hub: id or a model name")
        out.append(str(p.resolve()))
    return tuple(out)
