"""Pyramidal TIFFs written with tifffile for the whole-slide tests (consecutive pages, subfiletype=1)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
WSI = DATA / "fixtures" / "wsi"


def write_pyramid(
    path: Path,
    levels: Sequence[np.ndarray],
    mpp: float = 0.25,
    tile: int = 64,
    unit: str = "CENTIMETER",
    compression: str | None = None,
) -> Path:
    """Write ``levels`` (level 0 first, each half the previous) as a tiled pyramidal TIFF with resolution tags."""
    import tifffile

    per_unit = 1e4 / mpp if unit == "CENTIMETER" else 25400.0 / mpp
    with tifffile.TiffWriter(path) as tw:
        for i, arr in enumerate(levels):
            scale = arr.shape[1] / levels[0].shape[1]
            tw.write(
                arr,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if i else 0,
                resolution=(per_unit * scale, per_unit * scale),
                resolutionunit=unit,
                metadata=None,
            )
    return path


BACKGROUND = (240, 240, 240)
# A different tissue colour per level proves which level a tile was read from.
LEVEL_COLOURS = ((200, 80, 150), (80, 200, 80), (80, 80, 200))


def painted_slide(
    path: Path,
    width: int = 768,
    height: int = 512,
    box: tuple[int, int, int, int] = (256, 128, 512, 256),
    mpp: float = 0.25,
) -> Path:
    """Three levels (1, 2, 4) of a grey slide with one tissue box (level-0 x0, y0, x1, y1) in a per-level colour."""
    levels = []
    for i, colour in enumerate(LEVEL_COLOURS):
        f = 2**i
        arr = np.full((height // f, width // f, 3), BACKGROUND, dtype=np.uint8)
        x0, y0, x1, y1 = (v // f for v in box)
        arr[y0:y1, x0:x1] = colour
        levels.append(arr)
    return write_pyramid(path, levels, mpp=mpp)
