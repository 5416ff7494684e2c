"""Whole-slide images: opening, microns per pixel, tissue detection, tiling, tile storage, tile dataset.

Slides are read with openslide (``openslide-bin``), falling back to tiffslide for TIFFs openslide
refuses; DICOM WSI is read where openslide reads it. Tiling works in physical units: tiles of ``size``
pixels at ``target_mpp`` are read at the coarsest pyramid level whose downsample does not exceed the
wanted one, then resized by the remaining factor (several times faster than reading level 0 and
resizing, when the pyramid has a level near the target).

One module per job: :mod:`~medvlp.io.wsi.slide` (handle, levels, cache), :mod:`~medvlp.io.wsi.mpp`,
:mod:`~medvlp.io.wsi.tissue`, :mod:`~medvlp.io.wsi.tiling` (coordinates, reads, drawing),
:mod:`~medvlp.io.wsi.coords` (HDF5) and :mod:`~medvlp.io.wsi.dataset`; every public name is importable
from here.

Example:
    >>> slide = open_slide("slide.svs")                                   # doctest: +SKIP
    >>> result = tile_coords(slide, target_mpp=0.5, size=256)            # doctest: +SKIP
    >>> write_tiles_h5("slide.h5", result)                                 # doctest: +SKIP
    >>> ds = TileDataset([("slide.svs", "slide.h5")])                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from medvlp.io.wsi.coords import read_coords_h5, write_tiles_h5
from medvlp.io.wsi.dataset import TileDataset
from medvlp.io.wsi.mpp import MPP_MAX, MPP_MIN, load_mpp_table, lookup_mpp, resolve_mpp
from medvlp.io.wsi.slide import CACHE_SIZE, Slide, clear_slide_cache, get_slide, open_slide
from medvlp.io.wsi.tiling import TilingResult, draw_tiles, read_tile, read_tiles, tile_coords
from medvlp.io.wsi.tissue import otsu_threshold, saturation, tissue_mask

__all__: Sequence[str] = (
    "CACHE_SIZE",
    "MPP_MAX",
    "MPP_MIN",
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
    "read_tiles",
    "resolve_mpp",
    "saturation",
    "tile_coords",
    "tissue_mask",
    "write_tiles_h5",
)
