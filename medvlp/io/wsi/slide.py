"""Slide handles: openslide (tiffslide fallback), levels and downsamples, region reads, a per-process cache."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvlp.errors import ConfigError, ImageReadError

log = logging.getLogger(__name__)


def _short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _to_rgb_array(img: Any) -> np.ndarray:
    """RGBA (non-premultiplied, as openslide-python returns) composited over white, as uint8 RGB."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2).astype(np.uint8)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(arr[..., :3])
        # Outside the scanned area openslide returns transparent pixels: show them as glass (white).
        a = alpha.astype(np.float32) / 255.0
        rgb = arr[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
        return np.rint(rgb).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


class Slide:
    """A whole-slide image opened with openslide or tiffslide.

    Picklable: a pickled slide carries only its path and backend and reopens on first use, so it can
    be handed to data-loader workers.

    Attributes:
        path: the slide file.
        backend: ``"openslide"`` or ``"tiffslide"``.
    """

    def __init__(self, path: str | Path, backend: str = "auto") -> None:
        self.path = Path(path)
        self._requested = backend
        self.backend = ""
        self._handle: Any = None
        self._open()

    # -- opening ------------------------------------------------------------------------------------
    def _open(self) -> None:
        path = self.path
        if not path.is_file():
            raise ImageReadError(path, "slide not found" if not path.exists() else "not a regular file")
        if self._requested not in ("auto", "openslide", "tiffslide"):
            raise ConfigError(f"unknown slide backend {self._requested!r}; use auto, openslide or tiffslide")
        errors: list[str] = []
        order = ["openslide", "tiffslide"] if self._requested == "auto" else [self._requested]
        for name in order:
            try:
                handle = self._open_with(name)
            except Exception as exc:  # noqa: BLE001 - each backend raises its own types
                errors.append(f"{name}: {_short(exc)}")
                continue
            try:
                self._validate(handle)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{name}: pyramid unreadable ({_short(exc)})")
                try:
                    handle.close()
                except Exception:  # noqa: BLE001
                    pass
                continue
            self._handle, self.backend = handle, name
            return
        raise ImageReadError(path, "not a slide openslide or tiffslide can read (" + "; ".join(errors) + ")")

    @staticmethod
    def _validate(handle: Any) -> None:
        dims = list(handle.level_dimensions)
        if not dims or any(w <= 0 or h <= 0 for w, h in dims):
            raise ValueError(f"level dimensions {dims}")
        # Decode one pixel of the coarsest level: catches slides whose image data is cut off.
        handle.read_region((0, 0), len(dims) - 1, (1, 1))

    def _open_with(self, name: str) -> Any:
        if name == "openslide":
            import openslide

            return openslide.OpenSlide(str(self.path))
        import tiffslide

        return tiffslide.TiffSlide(str(self.path))

    def __getstate__(self) -> dict[str, Any]:
        # Native handles cannot cross process boundaries: keep the path, reopen on first use.
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._requested = self.backend or self._requested
            self._open()
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            finally:
                self._handle = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, backend={self.backend!r}, levels={self.level_count})"

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return int(self.handle.level_count)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self.handle.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self.handle.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in dict(self.handle.properties).items()}

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (0.1% tolerance)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.001:
                best = i
        return best

    # -- pixels ------------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, size: int | tuple[int, int]) -> np.ndarray:
        """Read ``size`` pixels at ``level`` whose top-left is level-0 ``(x, y)``, as RGB uint8 (H, W, 3).

        Raises:
            ImageReadError: a level that does not exist, or image data that cannot be decoded.
        """
        w, h = (size, size) if isinstance(size, int) else size
        if not 0 <= level < self.level_count:
            raise ImageReadError(
                self.path, f"level {level} does not exist (the slide has {self.level_count})"
            )
        if w <= 0 or h <= 0:
            raise ImageReadError(self.path, f"tile size {w}x{h} must be positive")
        try:
            img = self.handle.read_region((int(x), int(y)), int(level), (int(w), int(h)))
        except Exception as exc:  # noqa: BLE001 - openslide errors leave the handle unusable
            self.close()
            raise ImageReadError(
                self.path, f"cannot read a {w}x{h} region at level {level}, ({x}, {y}) ({_short(exc)})"
            ) from None
        return _to_rgb_array(img)

    def get_thumbnail(self, max_size: int | tuple[int, int] = 1024) -> Image.Image:
        """An RGB thumbnail that fits in ``max_size`` (aspect ratio kept)."""
        size = (max_size, max_size) if isinstance(max_size, int) else max_size
        try:
            thumb = self.handle.get_thumbnail((int(size[0]), int(size[1])))
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise ImageReadError(self.path, f"cannot read a thumbnail ({_short(exc)})") from None
        return Image.fromarray(_to_rgb_array(thumb))


def open_slide(path: str | Path, backend: str = "auto") -> Slide:
    """Open a whole-slide image (SVS, generic pyramidal TIFF, NDPI, MRXS, DICOM WSI, ...).

    Args:
        path: the slide file (for DICOM WSI, any instance of the series).
        backend: ``"auto"`` (openslide, then tiffslide), ``"openslide"`` or ``"tiffslide"``.

    Raises:
        ImageReadError: neither reader can open it, or its pyramid cannot be decoded.
    """
    return Slide(path, backend)


# Per-process cache: data-loader workers (forked or spawned) each open a slide once.
_CACHE: OrderedDict[tuple[int, str], Slide] = OrderedDict()


_CACHE_LOCK = threading.Lock()


CACHE_SIZE = 64  # open slides kept per process (file handles and openslide tile caches)


def get_slide(path: str | Path) -> Slide:
    """The cached :class:`Slide` for ``path`` in this process (opened on first use)."""
    key = (os.getpid(), str(Path(path).resolve()))
    with _CACHE_LOCK:
        slide = _CACHE.get(key)
        if slide is not None:
            _CACHE.move_to_end(key)
            return slide
    slide = open_slide(path)
    with _CACHE_LOCK:
        _CACHE[key] = slide
        # Entries of a parent process (inherited by fork) are dropped, never closed: the parent owns them.
        for k in [k for k in _CACHE if k[0] != key[0]]:
            del _CACHE[k]
        while len(_CACHE) > CACHE_SIZE:
            _, old = _CACHE.popitem(last=False)
            old.close()
    return slide


def clear_slide_cache() -> None:
    """Close every slide this process keeps open."""
    with _CACHE_LOCK:
        for (pid, _), slide in list(_CACHE.items()):
            if pid == os.getpid():
                slide.close()
        _CACHE.clear()

