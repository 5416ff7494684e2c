"""Tiling in physical units: the pyramid level to read, tissue tile coordinates, tile reads, drawing."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvlp.errors import ConfigError
from medvlp.io.wsi.mpp import resolve_mpp
from medvlp.io.wsi.slide import Slide, open_slide
from medvlp.io.wsi.tissue import tissue_mask

log = logging.getLogger(__name__)


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
    gx, gy = gx.reshape(-1), gy.reshape(-1)  # type: ignore[assignment]  # 1-D from here on
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


_FAST: dict[str, Any] = {}  # slide path -> JpegTileReader or None, per process


def _fast_reader(slide: Slide) -> Any:
    if os.environ.get("MEDVLP_WSI_FAST", "1") == "0":
        return None
    key = str(slide.path)
    if key not in _FAST:
        from medvlp.io.wsi.jpegtiles import jpeg_reader_for

        _FAST[key] = jpeg_reader_for(slide.path, slide.level_dimensions)
    return _FAST[key]


def read_tile(slide: Slide, x: int, y: int, result: TilingResult, *, fast: bool = True) -> Image.Image:
    """Read one tile of a tiling: ``read_size`` px at ``read_level``, resized to ``patch_size``.

    With ``fast`` (default) a tile of a JPEG-tiled TIFF that maps onto whole stored tiles is decoded straight
    from the file at reduced size (:mod:`medvlp.io.wsi.jpegtiles`); otherwise, or where that does not apply,
    openslide reads the region and it is resized (``MEDVLP_WSI_FAST=0`` turns the fast path off).
    """
    if fast:
        reader = _fast_reader(slide)
        if reader is not None:
            ds = float(slide.level_downsamples[result.read_level])
            lx, ly = x / ds, y / ds
            if abs(lx - round(lx)) < 1e-6 and abs(ly - round(ly)) < 1e-6:
                img = reader.read(result.read_level, int(round(lx)), int(round(ly)), result.read_size,
                                  result.patch_size)
                if img is not None:
                    return img
    arr = slide.read_region(x, y, result.read_level, result.read_size)
    img = Image.fromarray(arr)
    if result.read_size != result.patch_size:
        img = img.resize((result.patch_size, result.patch_size), Image.Resampling.BILINEAR)
    return img


def read_tiles(slide: Slide, result: TilingResult, coords: Any = None, *, workers: int | None = None,
               fast: bool = True) -> list[Image.Image]:
    """Every tile of ``result`` (or of ``coords``), read on ``workers`` threads (default: the CPUs this process
    may use); the JPEG decodes and openslide's reads release the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    pts = [tuple(int(v) for v in c) for c in (result.coords if coords is None else coords)]
    n = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if n <= 1 or len(pts) < 2:
        return [read_tile(slide, x, y, result, fast=fast) for x, y in pts]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda p: read_tile(slide, p[0], p[1], result, fast=fast), pts))


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

