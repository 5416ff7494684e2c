"""A torch dataset over the tiles of many slides (coordinates from HDF5 files)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvlp.errors import ConfigError, ImageReadError
from medvlp.io.wsi.coords import read_coords_h5
from medvlp.io.wsi.slide import get_slide
from medvlp.io.wsi.tiling import TilingResult, read_tile

log = logging.getLogger(__name__)


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

