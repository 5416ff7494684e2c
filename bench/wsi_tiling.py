"""Tiling throughput: medvlp's tiler vs reading every tile at level 0 and resizing (CLAM's way).

Writes a synthetic ~20000 x 20000 JPEG-compressed pyramidal TIFF (levels 1, 2, 4, 8, ...; 0.25 µm/px,
i.e. a 40x scan) to a temporary folder, then, in one run over the same tile coordinates:

* medvlp: open the slide, detect tissue on a thumbnail, and read every kept tile of 256 px at 0.5 µm/px
  (20x) from the best pyramid level (level 1 here: 256 px read, no resize) -- :func:`medvlp.io.wsi.tile_coords`
  and :func:`medvlp.io.wsi.read_tile`;
* baseline: for the same coordinates, ``openslide.read_region`` of 512 x 512 px at level 0, ``convert("RGB")``
  and a bilinear resize to 256 px -- what CLAM's patching + feature extraction does at 20x on a 40x slide.

Prints tiles/s of both and their ratio. Usage::

    python bench/wsi_tiling.py                      # 20000 x 20000, 256-px JPEG tiles
    python bench/wsi_tiling.py --tile 512 --side 12000 --keep /tmp/bench_slide.tif
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

LEVEL0_MPP = 0.25


def _texture(seed: int = 0, n: int = 1024) -> np.ndarray:
    """A smooth random texture (n x n, float32 around 0) that stands in for nuclei and stroma."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, (n, n)).astype(np.float32)
    fine = ndimage.gaussian_filter(noise, 1.5, mode="wrap")
    coarse = ndimage.gaussian_filter(noise, 6.0, mode="wrap")
    tex = fine / fine.std() + 0.7 * coarse / coarse.std()
    return (tex / tex.std()).astype(np.float32)


class SyntheticSlide:
    """Procedural H&E-like slide: tissue blobs (about a third of the area) with texture on grey glass."""

    def __init__(self, side: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.side = side
        self.blobs = [
            (rng.uniform(0.15, 0.85) * side, rng.uniform(0.15, 0.85) * side, rng.uniform(0.10, 0.22) * side)
            for _ in range(6)
        ]
        self.tex = _texture(seed)
        self.noise = np.random.default_rng(seed + 1).integers(-3, 4, (1024, 1024, 1)).astype(np.int16)

    def region(self, x0: int, y0: int, w: int, h: int, step: int) -> np.ndarray:
        """Pixels of a level whose downsample is ``step``: level-0 origin (x0, y0), w x h level pixels."""
        xs = x0 + step * np.arange(w, dtype=np.float32)
        ys = y0 + step * np.arange(h, dtype=np.float32)
        inside = np.zeros((h, w), dtype=bool)
        for cx, cy, r in self.blobs:
            inside |= (xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2 < r * r
        ix = (np.arange(w) + x0 // step) % 1024
        iy = (np.arange(h) + y0 // step) % 1024
        t = self.tex[np.ix_(iy, ix)]
        # Eosin pink where the texture is low, haematoxylin purple where it is high.
        pink = np.array([232, 160, 200], np.float32)
        purple = np.array([120, 60, 150], np.float32)
        a = np.clip(0.5 + 0.25 * t, 0.0, 1.0)[..., None]
        tissue = pink * (1 - a) + purple * a
        glass = np.array([236, 234, 238], np.float32)
        out = np.where(inside[..., None], tissue, glass) + self.noise[iy][:, ix]
        return np.clip(out, 0, 255).astype(np.uint8)

    def tiles(self, level: int, tile: int) -> Iterator[np.ndarray]:
        step = 2**level
        w = h = -(-self.side // step)
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                block = self.region(tx * step, ty * step, min(tile, w - tx), min(tile, h - ty), step)
                if block.shape[:2] != (tile, tile):  # tifffile wants full tiles: pad the edges
                    full = np.full((tile, tile, 3), 255, np.uint8)
                    full[: block.shape[0], : block.shape[1]] = block
                    block = full
                yield block


def write_slide(path: Path, side: int, tile: int, quality: int = 85) -> Path:
    """Write the synthetic slide as a tiled JPEG pyramid (consecutive pages, subfiletype=1)."""
    import tifffile

    slide = SyntheticSlide(side)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level = 0
        while True:
            step = 2**level
            n = -(-side // step)
            per_cm = 1e4 / (LEVEL0_MPP * step)
            tw.write(
                slide.tiles(level, tile),
                shape=(n, n, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=1 if level else 0,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
            if n <= 2 * tile:
                break
            level += 1
    return path


def run_medvlp(path: Path, target_mpp: float, size: int) -> tuple[float, np.ndarray, dict[str, float]]:
    """Open, detect tissue, read every kept tile at the best level; (seconds, coords, details)."""
    from medvlp.io.wsi import open_slide, read_tile, tile_coords

    t0 = time.perf_counter()
    slide = open_slide(path)
    result = tile_coords(slide, target_mpp=target_mpp, size=size, tissue_fraction=0.5)
    t1 = time.perf_counter()
    checksum = 0
    for x, y in result.coords.tolist():
        checksum += int(np.asarray(read_tile(slide, x, y, result))[0, 0, 0])
    t2 = time.perf_counter()
    slide.close()
    details = {
        "detect_s": t1 - t0,
        "read_s": t2 - t1,
        "read_level": result.read_level,
        "read_size": result.read_size,
        "grid_tiles": result.settings["grid_tiles"],
        "checksum": checksum,
    }
    return t2 - t0, result.coords, details


def run_level0(path: Path, coords: np.ndarray, ps0: int, size: int) -> float:
    """CLAM's way: read ``ps0`` px at level 0 for each coordinate and resize to ``size``."""
    import openslide
    from PIL import Image

    t0 = time.perf_counter()
    slide = openslide.OpenSlide(str(path))
    checksum = 0
    for x, y in coords.tolist():
        img = (
            slide.read_region((x, y), 0, (ps0, ps0))
            .convert("RGB")
            .resize((size, size), Image.Resampling.BILINEAR)
        )
        checksum += int(np.asarray(img)[0, 0, 0])
    t1 = time.perf_counter()
    slide.close()
    return t1 - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=20000, help="level-0 width and height in pixels")
    parser.add_argument("--tile", type=int, default=256, choices=(256, 512), help="TIFF tile size")
    parser.add_argument("--target-mpp", type=float, default=0.5, help="output resolution (0.5 = 20x)")
    parser.add_argument("--size", type=int, default=256, help="output tile size")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed passes per method (median)")
    parser.add_argument(
        "--keep", type=Path, default=None, help="write / reuse the slide here instead of a temp dir"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "synthetic_40x.tif"
        if not path.exists():
            t0 = time.perf_counter()
            write_slide(path, args.side, args.tile)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        ps0 = int(round(args.size * args.target_mpp / LEVEL0_MPP))
        medvlp_s, level0_s = [], []
        coords = np.zeros((0, 2), np.int64)
        details: dict[str, float] = {}
        for _ in range(args.repeats):
            seconds, coords, details = run_medvlp(path, args.target_mpp, args.size)
            medvlp_s.append(seconds)
            level0_s.append(run_level0(path, coords, ps0, args.size))
        n = len(coords)
        m, b = statistics.median(medvlp_s), statistics.median(level0_s)
        print(
            f"slide {args.side}x{args.side}, JPEG tiles {args.tile}, {LEVEL0_MPP} µm/px; tiles of {args.size} px at "
            f"{args.target_mpp} µm/px: {n} tissue tiles of {int(details['grid_tiles'])} in the grid"
        )
        print(
            f"medvlp tiler : {n / m:8.1f} tiles/s  ({m:.2f} s: tissue detection {details['detect_s']:.2f} s, "
            f"reads at level {int(details['read_level'])} of {int(details['read_size'])} px)"
        )
        print(
            f"level-0 loop : {n / b:8.1f} tiles/s  ({b:.2f} s: {ps0} px at level 0, resized to {args.size})"
        )
        print(f"ratio        : {b / m:8.2f}x")


if __name__ == "__main__":
    main()
