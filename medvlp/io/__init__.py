"""Image readers: DICOM, whole-slide images, multichannel microscopy TIFF, plain images, reports.

The entry point for data loaders is :func:`read_image`; the submodules hold the domain readers
(:mod:`medvlp.io.dicom`, :mod:`medvlp.io.wsi`, :mod:`medvlp.io.tiff`) and report parsing
(:mod:`medvlp.io.reports`). Heavy readers (pydicom, openslide, tifffile, h5py) load on first use.
"""

from medvlp.io.images import TileRef, parse_tile_ref, read_image, read_image_array, sniff_format

__all__ = ["TileRef", "parse_tile_ref", "read_image", "read_image_array", "sniff_format"]
