"""The fast tile path: a TIFF pyramid's JPEG tiles read straight from the file and decoded at reduced size.

When a slide is a tiled, JPEG-compressed TIFF (Aperio SVS, generic pyramidal TIFF) and a tile of the tiling
maps onto whole stored tiles of a pyramid level, scaled by 1, 2, 4 or 8, the stored JPEG tiles are read with
one ``os.pread`` each and decoded by libjpeg at 1/2, 1/4 or 1/8 size (DCT scaling, Pillow's ``draft``): no
full-size decode, no resize, no openslide cache. A 20x tile from a 40x scan whose pyramid has levels at 1, 4
and 16 (Aperio) is then 4 quarter-cost decodes instead of a 512 px read and a resize. Reads release the GIL,
so :func:`medvlp.io.wsi.tiling.read_tiles` runs them on threads.

Anything else (other compressions, unaligned tiles, regions over the edge, a level tifffile sees differently
from openslide) returns None and the caller falls back to openslide; both give the same pixels within JPEG
tolerance (tested).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SCALES = (1, 2, 4, 8)  # what libjpeg's DCT scaling decodes directly


@dataclass(frozen=True)
class _Level:
    width: int
    height: int
    tile_w: int
    tile_h: int
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    tables: bytes


class JpegTileReader:
    """Direct reads of a TIFF pyramid's JPEG tiles (see the module docstring); None where it cannot."""

    def __init__(self, path: str | Path, level_dimensions: tuple[tuple[int, int], ...]) -> None:
        import tifffile

        self.path = str(path)
        self.levels: dict[int, _Level] = {}
        with tifffile.TiffFile(self.path) as tf:
            pages = [p for p in tf.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled]
            for index, dims in enumerate(level_dimensions):
                page = next((p for p in pages if (p.imagewidth, p.imagelength) == tuple(dims)), None)
                if page is None or page.compression != 7 or page.samplesperpixel != 3 or page.bitspersample != 8:
                    continue  # 7 = JPEG; anything else goes through openslide
                if page.planarconfig != 1 or page.photometric not in (2, 6):  # contiguous RGB or YCbCr
                    continue
                self.levels[index] = _Level(page.imagewidth, page.imagelength, page.tilewidth, page.tilelength,
                                            tuple(page.dataoffsets), tuple(page.databytecounts),
                                            bytes(page.jpegtables or b""))
        self._fd: int | None = None

    def _read(self, offset: int, count: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, count, offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = None  # file descriptors do not cross processes; reopened on first read
        return state

    def _decode(self, lv: _Level, index: int, scale: int) -> Image.Image:
        data = self._read(lv.offsets[index], lv.counts[index])
        if lv.tables and len(lv.tables) > 4:
            data = lv.tables[:-2] + data[2:]  # abbreviated stream: the shared tables, then the tile's scan
        im: Image.Image = Image.open(io.BytesIO(data))
        if scale > 1:
            im.draft("RGB", (lv.tile_w // scale, lv.tile_h // scale))  # type: ignore[attr-defined]  # a JpegImageFile
        im = im.convert("RGB") if im.mode != "RGB" else im
        im.load()
        return im

    def read(self, level: int, lx: int, ly: int, read_size: int, out_size: int) -> Image.Image | None:
        """``read_size`` px at ``level`` from level coordinates ``(lx, ly)``, as ``out_size`` px, or None."""
        lv = self.levels.get(level)
        if lv is None or read_size % out_size:
            return None
        scale = read_size // out_size
        if scale not in SCALES or lx % scale or ly % scale or lv.tile_w % scale or lv.tile_h % scale:
            return None
        if lx < 0 or ly < 0 or lx + read_size > lv.width or ly + read_size > lv.height:
            return None
        across = math.ceil(lv.width / lv.tile_w)
        tx0, ty0 = lx // lv.tile_w, ly // lv.tile_h
        tx1, ty1 = (lx + read_size - 1) // lv.tile_w, (ly + read_size - 1) // lv.tile_h
        sw, sh = lv.tile_w // scale, lv.tile_h // scale
        canvas = np.empty(((ty1 - ty0 + 1) * sh, (tx1 - tx0 + 1) * sw, 3), np.uint8)
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                tile = self._decode(lv, ty * across + tx, scale)
                if tile.size != (sw, sh):
                    return None  # the decoder did not scale as asked: let openslide do it
                canvas[(ty - ty0) * sh:(ty - ty0 + 1) * sh, (tx - tx0) * sw:(tx - tx0 + 1) * sw] = np.asarray(tile)
        ox, oy = (lx - tx0 * lv.tile_w) // scale, (ly - ty0 * lv.tile_h) // scale
        return Image.fromarray(canvas[oy:oy + out_size, ox:ox + out_size])


def jpeg_reader_for(path: str | Path, level_dimensions: tuple[tuple[int, int], ...]) -> JpegTileReader | None:
    """A :class:`JpegTileReader` for a TIFF slide with at least one JPEG-tiled level, else None."""
    if Path(path).suffix.lower() not in (".tif", ".tiff", ".svs", ".btf", ".tf8"):
        return None
    try:
        reader = JpegTileReader(path, level_dimensions)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: openslide handles it
        return None
    return reader if reader.levels else None
