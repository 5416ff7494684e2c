"""Image readers: DICOM, whole-slide images, multichannel microscopy TIFF, plain images, reports.

The entry point for data loaders is :func:`read_image`; readers are a registry
(:func:`register_reader`, :mod:`medvlp.io.readers`); the submodules hold the domain readers
(:mod:`medvlp.io.dicom`, :mod:`medvlp.io.wsi`, :mod:`medvlp.io.tiff`) and report parsing
(:mod:`medvlp.io.reports`). Heavy readers (pydicom, openslide, tifffile, h5py) load on first use.
"""

from medvlp.io.images import TileRef, parse_tile_ref, read_image, read_image_array, sniff_format
from medvlp.io.readers import Reader, find_reader, get_reader, reader_names, register_reader

__all__ = ["TileRef", "parse_tile_ref", "read_image", "read_image_array", "sniff_format", "Reader", "find_reader",
           "get_reader", "reader_names", "register_reader"]
