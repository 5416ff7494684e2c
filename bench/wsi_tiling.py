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

    def tiles(self, step: int, tile: int) -> Iterator[np.ndarray]:
        w = h = -(-self.side // step)
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                block = self.region(tx * step, ty * step, min(tile, w - tx), min(tile, h - ty), step)
                if block.shape[:2] != (tile, tile):  # tifffile wants full tiles: pad the edges
                    full = np.full((tile, tile, 3), 255, np.uint8)
                    full[: block.shape[0], : block.shape[1]] = block
                    block = full
                yield block


def write_slide(path: Path, side: int, tile: int, quality: int = 85, pyramid: str = "every2x") -> Path:
    """Write the synthetic slide as a tiled JPEG pyramid (consecutive pages, subfiletype=1): a level at every
    2x step (``every2x``) or Aperio's downsamples 1, 4, 16 (``aperio``)."""
    import tifffile

    slide = SyntheticSlide(side)
    if pyramid == "aperio":
        steps = [1, 4, 16]
    else:
        steps = [1]
        while -(-side // steps[-1]) > 2 * tile:
            steps.append(steps[-1] * 2)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, step in enumerate(steps):
            n = -(-side // step)
            per_cm = 1e4 / (LEVEL0_MPP * step)
            tw.write(
                slide.tiles(step, tile),
                shape=(n, n, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=1 if i else 0,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_medvlp(path: Path, target_mpp: float, size: int) -> tuple[float, np.ndarray, dict[str, float]]:
    """Open, detect tissue, read every kept tile (fast JPEG-tile path where it applies, on threads)."""
    from medvlp.io.wsi import clear_slide_cache, open_slide, read_tiles, tile_coords, tiling

    tiling._FAST.clear()
    clear_slide_cache()
    t0 = time.perf_counter()
    slide = open_slide(path)
    result = tile_coords(slide, target_mpp=target_mpp, size=size, tissue_fraction=0.5)
    t1 = time.perf_counter()
    checksum = sum(int(np.asarray(t)[0, 0, 0]) for t in read_tiles(slide, result, workers=_cores()))
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


def run_trident(path: Path, coords: np.ndarray, target_mpp: float, size: int) -> float:
    """TRIDENT's way: openslide, the best level for the target downsample, ``read_region`` of the size that
    covers the tile there, a resize to ``size``; on as many threads as medvlp uses."""
    from concurrent.futures import ThreadPoolExecutor

    import openslide
    from PIL import Image

    t0 = time.perf_counter()
    slide = openslide.OpenSlide(str(path))
    want = target_mpp / LEVEL0_MPP
    level = slide.get_best_level_for_downsample(want)
    read = int(round(size * want / slide.level_downsamples[level]))

    def one(xy: tuple[int, int]) -> int:
        img = slide.read_region(xy, level, (read, read)).convert("RGB")
        if read != size:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return int(np.asarray(img)[0, 0, 0])

    with ThreadPoolExecutor(max_workers=_cores()) as pool:
        sum(pool.map(one, [tuple(c) for c in coords.tolist()]))
    t1 = time.perf_counter()
    slide.close()
    return t1 - t0


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
    parser.add_argument("--pyramid", default="aperio", choices=("aperio", "every2x"),
                        help="levels at downsamples 1, 4, 16 (Aperio) or at every 2x step")
    parser.add_argument("--target-mpp", type=float, default=0.5, help="output resolution (0.5 = 20x)")
    parser.add_argument("--size", type=int, default=256, help="output tile size")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed passes per method (median)")
    parser.add_argument(
        "--keep", type=Path, default=None, help="write / reuse the slide here instead of a temp dir"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / f"synthetic_40x_{args.pyramid}.tif"
        if not path.exists():
            t0 = time.perf_counter()
            write_slide(path, args.side, args.tile, pyramid=args.pyramid)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        ps0 = int(round(args.size * args.target_mpp / LEVEL0_MPP))
        times: dict[str, list[float]] = {"medvlp": [], "trident": [], "clam": []}
        coords = np.zeros((0, 2), np.int64)
        details: dict[str, float] = {}
        for rep in range(args.repeats):
            # alternate the order, so that warm caches and drift favour no side
            order = ["medvlp", "trident", "clam"] if rep % 2 == 0 else ["clam", "trident", "medvlp"]
            for name in order:
                if name == "medvlp" or not len(coords):
                    seconds, coords, details = run_medvlp(path, args.target_mpp, args.size)
                    if name == "medvlp":
                        times["medvlp"].append(seconds)
                        continue
                if name == "trident":
                    times["trident"].append(run_trident(path, coords, args.target_mpp, args.size))
                else:
                    times["clam"].append(run_level0(path, coords, ps0, args.size))
        n = len(coords)
        med = {k: statistics.median(v) for k, v in times.items()}

        def spread(k: str) -> str:
            v = [n / t for t in times[k]]
            return f"{n / med[k]:8.1f} tiles/s (min {min(v):.1f}, max {max(v):.1f}, n={len(v)})"

        print(f"machine: {_cores()} cores; slide {args.side}x{args.side}, {args.pyramid} pyramid, JPEG tiles "
              f"{args.tile}, {LEVEL0_MPP} um/px; tiles of {args.size} px at {args.target_mpp} um/px: {n} tissue "
              f"tiles of {int(details['grid_tiles'])} in the grid")
        print(f"medvlp tiler  : {spread('medvlp')}  (tissue detection {details['detect_s']:.2f} s incl.; reads at "
              f"level {int(details['read_level'])} of {int(details['read_size'])} px, fast JPEG-tile path, threads)")
        print(f"trident-style : {spread('trident')}  (openslide best level + read_region + resize, threads; "
              "tissue detection not included)")
        print(f"clam loop     : {spread('clam')}  ({ps0} px at level 0, resized; one thread)")
        print(f"ratio medvlp / clam loop: {med['clam'] / med['medvlp']:.2f}")
        print(f"ratio medvlp / trident-style: {med['trident'] / med['medvlp']:.2f}")


if __name__ == "__main__":
    main()
