"""Whole-slide images: opening, microns per pixel, tissue detection, tiling, tile storage, tile dataset.

Slides are read with openslide (``openslide-bin``), falling back to tiffslide for TIFFs openslide
refuses; DICOM WSI is read where openslide reads it. Tiling works in physical units: tiles of ``size``
pixels at ``target_mpp`` are read at the coarsest pyramid level whose downsample does not exceed the
wanted one, then resized by the remaining factor (several times faster than reading level 0 and
resizing, when the pyramid has a level near the target).

Example:
    >>> slide = open_slide("slide.svs")                                   # doctest: +SKIP
    >>> result = tile_coords(slide, target_mpp=0.5, size=256)            # doctest: +SKIP
    >>> write_tiles_h5("slide.h5", result)                                 # doctest: +SKIP
    >>> ds = TileDataset([("slide.svs", "slide.h5")])                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvlp.errors import ConfigError, DataError, ImageReadError

log = logging.getLogger(__name__)

MPP_MIN = 0.05  # finer than any optical scanner
MPP_MAX = 20.0  # coarser than a 0.5x overview: a resolution tag that is not scanner data
_SCREEN_DPI = (72.0, 96.0)  # screen defaults written by image libraries, never scanner data

# ---------------------------------------------------------------------------------------------------
# Slide wrapper
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Microns per pixel
# ---------------------------------------------------------------------------------------------------

# (property, conversion of its first number to microns per pixel)
_VENDOR_KEYS: tuple[tuple[str, Callable[[float], float]], ...] = (
    ("aperio.MPP", lambda v: v),
    ("openslide.mirax.MPP", lambda v: v),
    ("mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X", lambda v: v),
    ("hamamatsu.XResolution", lambda v: 10000.0 / v),  # pixels per centimetre, as NDPI stores it
    ("philips.DICOM_PIXEL_SPACING", lambda v: 1000.0 * v),  # millimetres per pixel ("row col")
)


def _first_number(value: str) -> float | None:
    text = str(value).replace('"', " ").strip().split()
    try:
        return float(text[0]) if text else None
    except ValueError:
        return None


def _tiff_resolution(slide: Slide) -> tuple[float | None, str | None]:
    """(XResolution, unit) of level 0 from the slide properties, or straight from the TIFF tags."""
    props = slide.properties
    x = props.get("tiff.XResolution")
    unit = props.get("tiff.ResolutionUnit")
    if x is not None:
        return _first_number(x), (unit or "").lower() or None
    try:
        import tifffile

        with tifffile.TiffFile(slide.path) as tif:
            tags = tif.pages[0].tags
            if "XResolution" not in tags:
                return None, None
            num, den = tags["XResolution"].value
            res_unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    except Exception:  # noqa: BLE001 - not a TIFF (DICOM, MRXS, ...): no tag to read
        return None, None
    names = {1: "none", 2: "inch", 3: "centimeter"}
    return (num / den if den else None), names.get(int(res_unit), "none")


def resolve_mpp(slide: Slide, override: float | None = None) -> tuple[float, str]:
    """Level-0 microns per pixel and where the value came from.

    Lookup order: ``override``; ``openslide.mpp-x`` (or ``tiffslide.mpp-x``); vendor keys (``aperio.MPP``,
    MIRAX, Hamamatsu, Philips); the TIFF resolution tag (cm: 10000/x, inch: 25400/x). Values outside
    [0.05, 20] µm/px and 72/96-dpi tags (screen defaults of image libraries) are rejected.

    Args:
        slide: an open slide.
        override: a value the user gave (``--mpp``); checked for plausibility only.

    Returns:
        ``(mpp, source)``, e.g. ``(0.499, "openslide.mpp-x")``.

    Raises:
        ConfigError: no trustworthy value; the message says how to pass ``--mpp``.
    """
    if override is not None:
        value = float(override)
        if not MPP_MIN <= value <= MPP_MAX:
            raise ConfigError(
                f"{slide.path}: --mpp {value} is outside the plausible range {MPP_MIN}-{MPP_MAX} µm/px "
                "(40x is about 0.25, 20x about 0.5)"
            )
        return value, "override"
    props = slide.properties
    rejected: list[str] = []

    def plausible(value: float | None, source: str) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if MPP_MIN <= value <= MPP_MAX:
            return True
        rejected.append(f"{source}={value:.6g} µm/px is implausible")
        return False

    for key in ("openslide.mpp-x", "tiffslide.mpp-x"):
        if key in props:
            value = _first_number(props[key])
            if _is_screen_dpi(value):
                rejected.append(f"{key}={value:.6g} µm/px comes from a 72/96-dpi screen default")
            elif plausible(value, key):
                return float(value), key  # type: ignore[arg-type]
    for key, convert in _VENDOR_KEYS:
        if key in props:
            raw = _first_number(props[key])
            if raw is None or raw <= 0:
                continue
            value = convert(raw)
            if plausible(value, key):
                return float(value), key
    res, unit = _tiff_resolution(slide)
    if res is not None and res > 0:
        if unit in ("inch", "centimeter", "cm"):
            dpi = res if unit == "inch" else res * 2.54
            value = 25400.0 / res if unit == "inch" else 10000.0 / res
            if any(abs(dpi - s) < 0.01 for s in _SCREEN_DPI):
                rejected.append(
                    f"TIFF resolution tag is {dpi:.0f} dpi, a screen default (would give {value:.2f} µm/px)"
                )
            elif plausible(value, f"TIFF resolution tag ({res:.6g}/{unit})"):
                return value, "tiff.XResolution"
        else:
            rejected.append("TIFF resolution tag has no unit")
    why = "; ".join(rejected) if rejected else "the slide records no microns-per-pixel"
    raise ConfigError(
        f"{slide.path}: no trustworthy microns-per-pixel ({why}); pass it with --mpp (e.g. --mpp 0.25 for a "
        "40x scan, --mpp 0.5 for 20x) or --mpp FILE.csv with columns slide,mpp"
    )


def _is_screen_dpi(mpp: float | None) -> bool:
    if mpp is None or mpp <= 0:
        return False
    return any(abs(25400.0 / mpp - s) < 0.01 for s in _SCREEN_DPI)


# ---------------------------------------------------------------------------------------------------
# Tissue detection
# ---------------------------------------------------------------------------------------------------


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8-range values (maximises the between-class variance)."""
    hist = np.bincount(np.clip(values.ravel(), 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    # Pixels > t are foreground; t maximises the between-class variance.
    return float(np.argmax(between))


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0..255 (float32)."""
    rgb = rgb.astype(np.float32)
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(mx > 0, (mx - mn) / mx, 0.0)
    return (s * 255.0).astype(np.float32)


def tissue_mask(
    thumbnail: Image.Image | np.ndarray,
    saturation_floor: float = 8,
    median: int = 7,
    close: int = 4,
    *,
    return_threshold: bool = False,
) -> np.ndarray | tuple[np.ndarray, float]:
    """Tissue mask of an RGB thumbnail: stained tissue is saturated, glass and background are grey.

    HSV saturation, a ``median`` x ``median`` median blur, Otsu's threshold raised to at least
    ``saturation_floor`` (so a blank slide stays blank instead of splitting its noise in two), then a
    morphological closing with a ``close`` x ``close`` square to fill small holes.

    Args:
        thumbnail: RGB image (PIL or H x W x 3 array).
        saturation_floor: lowest threshold on the 0..255 saturation scale.
        median: median filter size (odd; 0 or 1 disables it).
        close: closing structuring element size (0 or 1 disables it).
        return_threshold: also return the threshold that was used.

    Returns:
        Boolean (H, W) mask (and the threshold when asked).
    """
    from scipy import ndimage

    rgb = np.asarray(thumbnail.convert("RGB") if isinstance(thumbnail, Image.Image) else thumbnail)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"tissue_mask needs an RGB image, got shape {rgb.shape}")
    sat = np.rint(saturation(rgb[..., :3])).astype(np.uint8)
    if median and median > 1:
        sat = ndimage.median_filter(sat, size=int(median), mode="nearest")
    threshold = max(otsu_threshold(sat), float(saturation_floor))
    mask = sat > threshold
    if close and close > 1:
        pad = int(close)
        # Pad so that the erosion half of the closing does not eat tissue touching the border.
        padded = np.pad(mask, pad, mode="edge")
        padded = ndimage.binary_closing(padded, structure=np.ones((close, close), dtype=bool))
        mask = padded[pad:-pad, pad:-pad]
    return (mask, threshold) if return_threshold else mask


# ---------------------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------------------


@dataclass
class TilingResult:
    """Tile coordinates of one slide and how to read them.

    A tile is read as ``read_size`` pixels at ``read_level`` from level-0 top-left ``coords[i]`` and
    resized to ``patch_size``; it covers ``patch_size_level0`` level-0 pixels.
    """

    coords: np.ndarray  # (N, 2) int64 level-0 top-left x, y
    patch_size: int  # output tile size in pixels at target_mpp
    patch_size_level0: int  # tile footprint in level-0 pixels
    read_level: int  # pyramid level the tiles are read from
    read_size: int  # pixels read at read_level (resized to patch_size)
    level0_mpp: float  # microns per pixel at level 0 (nan when unknown, e.g. CLAM files)
    target_mpp: float  # microns per pixel of the output tiles (nan when unknown)
    mpp_source: str  # where level0_mpp came from (property name, "override", "clam")
    settings: dict[str, Any] = field(default_factory=dict)  # tissue-detection settings and threshold
    slide_path: str = ""
    level0_dimensions: tuple[int, int] = (0, 0)
    mask: np.ndarray | None = field(default=None, repr=False)  # tissue mask on the thumbnail grid
    mask_downsample: tuple[float, float] = (1.0, 1.0)  # level-0 pixels per mask pixel (x, y)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def reference(self, i: int) -> str:
        """Manifest reference ``SLIDE_PATH#x,y,level,size`` of tile ``i`` (read size at the read level)."""
        x, y = (int(v) for v in self.coords[i])
        return f"{self.slide_path}#{x},{y},{self.read_level},{self.read_size}"


def _level_plan(slide: Slide, level0_mpp: float, target_mpp: float, size: int) -> tuple[int, int, int]:
    """(read_level, read_size, patch_size_level0) for tiles of ``size`` px at ``target_mpp``."""
    want = target_mpp / level0_mpp
    if want < 1.0 / 1.001:
        log.warning(
            "%s: target %.3g µm/px is finer than the scan (%.3g); tiles are upsampled from level 0",
            slide.path,
            target_mpp,
            level0_mpp,
        )
    level = slide.best_level_for_downsample(want)
    remaining = want / slide.level_downsamples[level]
    read_size = max(1, int(round(size * remaining)))
    return level, read_size, max(1, int(round(size * want)))


def tile_coords(
    slide: Slide | str | Path,
    target_mpp: float = 0.5,
    size: int = 256,
    tissue_fraction: float = 0.5,
    mpp: float | None = None,
    *,
    saturation_floor: float = 8,
    median: int = 7,
    close: int = 4,
    max_thumbnail: int = 4096,
) -> TilingResult:
    """Grid tiles of ``size`` px at ``target_mpp`` over the slide, keeping those with enough tissue.

    Args:
        slide: an open :class:`Slide` or a slide path.
        target_mpp: microns per pixel of the output tiles (0.5 is 20x).
        size: output tile size in pixels.
        tissue_fraction: minimum fraction of a tile's footprint that the tissue mask covers (0 keeps all).
        mpp: level-0 microns per pixel when the slide's own value is missing or wrong.
        saturation_floor, median, close: :func:`tissue_mask` settings.
        max_thumbnail: longest side of the thumbnail the mask is computed on.

    Raises:
        ConfigError: no trustworthy microns-per-pixel (pass ``mpp``), or bad settings.
        ImageReadError: the slide cannot be read.
    """
    if isinstance(slide, str | Path):
        slide = open_slide(slide)
    if size <= 0 or target_mpp <= 0:
        raise ConfigError(f"tile size ({size}) and target mpp ({target_mpp}) must be positive")
    if not 0.0 <= tissue_fraction <= 1.0:
        raise ConfigError(f"tissue fraction {tissue_fraction} must be in [0, 1]")
    level0_mpp, source = resolve_mpp(slide, mpp)
    read_level, read_size, ps0 = _level_plan(slide, level0_mpp, target_mpp, size)
    w0, h0 = slide.dimensions

    # Mask resolution: about 8 mask pixels per tile side, never finer than 1:1 nor coarser than CLAM's 64x.
    thumb_ds = max(1.0, min(64.0, ps0 / 8.0), max(w0, h0) / max_thumbnail)
    thumb = slide.get_thumbnail((max(1, int(w0 / thumb_ds)), max(1, int(h0 / thumb_ds))))
    mask, threshold = tissue_mask(thumb, saturation_floor, median, close, return_threshold=True)
    sx, sy = w0 / mask.shape[1], h0 / mask.shape[0]

    xs = np.arange(0, w0 - ps0 + 1, ps0, dtype=np.int64)
    ys = np.arange(0, h0 - ps0 + 1, ps0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    if gx.size:
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
        x0 = np.clip(np.rint(gx / sx).astype(np.int64), 0, mask.shape[1] - 1)
        y0 = np.clip(np.rint(gy / sy).astype(np.int64), 0, mask.shape[0] - 1)
        x1 = np.clip(np.maximum(x0 + 1, np.rint((gx + ps0) / sx).astype(np.int64)), 1, mask.shape[1])
        y1 = np.clip(np.maximum(y0 + 1, np.rint((gy + ps0) / sy).astype(np.int64)), 1, mask.shape[0])
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        frac = inside / ((x1 - x0) * (y1 - y0))
        keep = frac >= tissue_fraction if tissue_fraction > 0 else np.ones_like(frac, dtype=bool)
        coords = np.stack([gx[keep], gy[keep]], axis=1).astype(np.int64)
    else:
        coords = np.zeros((0, 2), dtype=np.int64)
    settings = {
        "tissue_fraction": float(tissue_fraction),
        "saturation_floor": float(saturation_floor),
        "median": int(median),
        "close": int(close),
        "saturation_threshold": float(threshold),
        "thumbnail_downsample": float(thumb_ds),
        "grid_tiles": int(gx.size),
    }
    return TilingResult(
        coords=coords,
        patch_size=int(size),
        patch_size_level0=int(ps0),
        read_level=int(read_level),
        read_size=int(read_size),
        level0_mpp=float(level0_mpp),
        target_mpp=float(target_mpp),
        mpp_source=source,
        settings=settings,
        slide_path=str(slide.path),
        level0_dimensions=(int(w0), int(h0)),
        mask=mask,
        mask_downsample=(float(sx), float(sy)),
    )


def read_tile(slide: Slide, x: int, y: int, result: TilingResult) -> Image.Image:
    """Read one tile of a tiling: ``read_size`` px at ``read_level``, resized to ``patch_size``."""
    arr = slide.read_region(x, y, result.read_level, result.read_size)
    img = Image.fromarray(arr)
    if result.read_size != result.patch_size:
        img = img.resize((result.patch_size, result.patch_size), Image.Resampling.BILINEAR)
    return img


# ---------------------------------------------------------------------------------------------------
# HDF5 storage
# ---------------------------------------------------------------------------------------------------


def write_tiles_h5(path: str | Path, result: TilingResult) -> Path:
    """Write ``coords`` and the tiling attributes to an HDF5 file (atomically: temp file, then rename).

    File attributes follow DESIGN.md (``patch_size`` is the output size). The ``coords`` dataset also
    carries CLAM's attributes (``patch_size`` = pixels read at ``patch_level``, ``downsample``) so that
    CLAM-style feature extractors read the same field of view.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    coords = np.asarray(result.coords, dtype=np.int64).reshape(-1, 2)
    ds_level = result.patch_size_level0 / max(result.read_size, 1)
    with h5py.File(tmp, "w") as f:
        dset = f.create_dataset("coords", data=coords)
        attrs = {
            "patch_size": result.patch_size,
            "patch_size_level0": result.patch_size_level0,
            "level0_mpp": result.level0_mpp,
            "target_mpp": result.target_mpp,
            "read_level": result.read_level,
            "read_size": result.read_size,
            "mpp_source": result.mpp_source,
            "slide_path": result.slide_path,
            "level0_width": result.level0_dimensions[0],
            "level0_height": result.level0_dimensions[1],
        }
        for key, value in attrs.items():
            f.attrs[key] = value
        for key, value in result.settings.items():
            f.attrs[f"tissue_{key}" if not key.startswith("tissue_") else key] = value
        dset.attrs["patch_size"] = result.read_size
        dset.attrs["patch_level"] = result.read_level
        dset.attrs["downsample"] = np.array([ds_level, ds_level], dtype=np.float64)
    os.replace(tmp, path)
    return path


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_coords_h5(path: str | Path) -> TilingResult:
    """Read tile coordinates written by :func:`write_tiles_h5` or by CLAM's patching (``patches/*.h5``).

    CLAM files give ``read_level`` = ``patch_level``, ``read_size`` = ``patch_size`` and
    ``patch_size_level0`` = ``patch_size * downsample``; their mpp values are unknown (nan).

    Raises:
        DataError: not an HDF5 file, no ``coords`` dataset of shape (N, 2), or missing attributes.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise DataError(f"{path}: no 'coords' dataset (is this a tile coordinate file?)")
            dset = f["coords"]
            coords = np.asarray(dset[()], dtype=np.int64)
            root = {k: _attr(v) for k, v in f.attrs.items()}
            local = {k: _attr(v) for k, v in dset.attrs.items()}
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/... on damaged files
        raise DataError(f"{path}: not a readable HDF5 tile file ({_short(exc)})") from None
    if coords.ndim != 2 or coords.shape[1] != 2:
        if coords.size == 0:
            coords = coords.reshape(0, 2)
        else:
            raise DataError(f"{path}: 'coords' has shape {coords.shape}; expected (N, 2) level-0 x, y")
    if "patch_size_level0" in root:
        try:
            settings = {k[len("tissue_") :]: v for k, v in root.items() if k.startswith("tissue_")}
            return TilingResult(
                coords=coords,
                patch_size=int(root["patch_size"]),
                patch_size_level0=int(root["patch_size_level0"]),
                read_level=int(root["read_level"]),
                read_size=int(root.get("read_size", root["patch_size"])),
                level0_mpp=float(root["level0_mpp"]),
                target_mpp=float(root["target_mpp"]),
                mpp_source=str(root.get("mpp_source", "")),
                settings=settings,
                slide_path=str(root.get("slide_path", "")),
                level0_dimensions=(int(root.get("level0_width", 0)), int(root.get("level0_height", 0))),
            )
        except KeyError as exc:
            raise DataError(f"{path}: attribute {exc.args[0]!r} is missing") from None
    clam = {**root, **local}
    if "patch_size" not in clam or "patch_level" not in clam:
        raise DataError(
            f"{path}: neither medvlp attributes (patch_size_level0, read_level, ...) nor CLAM attributes "
            "(patch_size, patch_level) found"
        )
    size = int(clam["patch_size"])
    downsample = np.atleast_1d(np.asarray(clam.get("downsample", 1.0), dtype=np.float64))
    return TilingResult(
        coords=coords,
        patch_size=size,
        patch_size_level0=int(round(size * float(downsample[0]))),
        read_level=int(clam["patch_level"]),
        read_size=size,
        level0_mpp=float("nan"),
        target_mpp=float("nan"),
        mpp_source="clam",
        settings={},
        slide_path=str(clam.get("name", "")),
    )


# ---------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------


class TileDataset:
    """Map-style dataset (torch ``Dataset`` protocol) over the tiles of several slides.

    Holds only paths and coordinates, so it pickles into data-loader workers; each worker opens a
    slide once, on first use, through the per-process cache (:func:`get_slide`).

    Args:
        slides_with_coords: ``(slide_path, tiles)`` pairs, ``tiles`` a :class:`TilingResult` or the path
            of an HDF5 coordinate file (medvlp's or CLAM's).
        transform: applied to each PIL tile; without it the tile is a uint8 tensor (3, H, W).
        on_error: ``"raise"`` or ``"skip"``: a tile that cannot be read is logged and returned as a white
            tile with ``valid=False`` instead of stopping a training run.

    Items are dicts ``{"image", "slide_index", "x", "y", "valid"}``.
    """

    def __init__(
        self,
        slides_with_coords: Iterable[tuple[str | Path, TilingResult | str | Path]],
        transform: Callable[[Image.Image], Any] | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.slides: list[str] = []
        self.plans: list[TilingResult] = []
        for slide_path, tiles in slides_with_coords:
            plan = tiles if isinstance(tiles, TilingResult) else read_coords_h5(tiles)
            plan = TilingResult(**{**plan.__dict__, "mask": None})  # masks are not needed in workers
            self.slides.append(str(slide_path))
            self.plans.append(plan)
        self.transform = transform
        self.on_error = on_error
        counts = np.array([len(p) for p in self.plans], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self.n_errors = 0

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(slide index, tile index within that slide) of a flat dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"tile index {index} out of range (dataset has {len(self)} tiles)")
        s = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return s, int(index - self._offsets[s])

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, t = self.locate(int(index))
        plan = self.plans[s]
        x, y = (int(v) for v in plan.coords[t])
        valid = True
        try:
            img = read_tile(get_slide(self.slides[s]), x, y, plan)
        except ImageReadError as exc:
            if self.on_error == "raise":
                raise
            self.n_errors += 1
            log.warning("skipping tile %d of %s at (%d, %d): %s", t, self.slides[s], x, y, exc.reason)
            img = Image.new("RGB", (plan.patch_size, plan.patch_size), (255, 255, 255))
            valid = False
        if self.transform is not None:
            image: Any = self.transform(img)
        else:
            import torch

            image = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        return {"image": image, "slide_index": s, "x": x, "y": y, "valid": valid}


def draw_tiles(
    result: TilingResult, thumbnail: Image.Image, color: tuple[int, int, int] = (0, 160, 0)
) -> Image.Image:
    """The thumbnail with each kept tile's outline drawn (for checking a tiling by eye)."""
    from PIL import ImageDraw

    img = thumbnail.convert("RGB").copy()
    w0, h0 = result.level0_dimensions if result.level0_dimensions != (0, 0) else img.size
    sx, sy = w0 / img.width, h0 / img.height
    draw = ImageDraw.Draw(img)
    for x, y in result.coords:
        box = (
            x / sx,
            y / sy,
            (x + result.patch_size_level0) / sx - 1,
            (y + result.patch_size_level0) / sy - 1,
        )
        draw.rectangle(box, outline=color)
    return img


def load_mpp_table(path: str | Path) -> dict[str, float]:
    """Read a CSV ``slide,mpp`` table; keys are the slide column as written, its file name and its stem."""
    import csv

    path = Path(path)
    table: dict[str, float] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"slide", "mpp"} <= set(reader.fieldnames):
                raise ConfigError(
                    f"{path}: the mpp table needs columns 'slide,mpp' (found {reader.fieldnames})"
                )
            for line, row in enumerate(reader, start=2):
                try:
                    value = float(row["mpp"])
                except (TypeError, ValueError):
                    raise ConfigError(f"{path}, line {line}: mpp {row['mpp']!r} is not a number") from None
                name = str(row["slide"]).strip()
                for key in (name, Path(name).name, Path(name).stem):
                    table[key] = value
    except OSError as exc:
        raise ConfigError(f"cannot read the mpp table {path}: {exc.strerror}") from None
    return table


def lookup_mpp(table: dict[str, float], slide_path: str | Path) -> float | None:
    """The table's mpp for a slide, matched by path, file name, then stem."""
    p = Path(slide_path)
    for key in (str(slide_path), p.name, p.stem):
        if key in table:
            return table[key]
    return None


__all__: Sequence[str] = (
    "Slide",
    "TileDataset",
    "TilingResult",
    "clear_slide_cache",
    "draw_tiles",
    "get_slide",
    "load_mpp_table",
    "lookup_mpp",
    "open_slide",
    "otsu_threshold",
    "read_coords_h5",
    "read_tile",
    "resolve_mpp",
    "tile_coords",
    "tissue_mask",
    "write_tiles_h5",
)
