"""Pathology demo as whole slides: synthetic pyramidal TIFFs with annotated regions, tiled for real.

Each slide is a tissue section on glass whose regions are the six tissue classes of the pathology demo,
painted with the same textures as the tile-image variant (:data:`medvlp.demos.corpora.PATHOLOGY_CLASSES`)
at the tiles' resolution and upsampled to level 0 (``SLIDE_MPP`` µm/px). Slides are written as
JPEG-compressed tiled pyramidal TIFFs (consecutive pages, reduced levels with ``subfiletype=1``,
resolution tags in pixels per centimetre), with the region annotation saved beside each slide as a PNG at the tiles' resolution (0 = glass, 1 + class index).

The slides then go through the real whole-slide pipeline of :mod:`medvlp.io.wsi`: ``open_slide``,
``tile_coords`` (microns per pixel from the resolution tag, tissue detection on a thumbnail, tiles of
``size`` px at ``TILE_MPP`` µm/px read from the best pyramid level) and ``write_tiles_h5``. Every kept
tile is labelled by the annotation under it: its majority class when that covers at least
``MIN_PRIMARY`` of the tile; a second class covering ``MIN_SECONDARY`` or more is named in the caption
("... with a focus of ...") and listed in ``concepts``; tiles with no clear majority are dropped (and
counted in ``info.json``). Manifest rows reference tiles as ``slides/NAME.tif#x,y,level,size``; each
row has a mask crop PNG (the annotation under the tile) and a ``slide`` column. The test split is the
tiles of held-out slides (the last ``n_test`` slides), so no tissue region is shared between splits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from medvlp.demos.corpora import (
    PATHOLOGY_CLASSES,
    Corpus,
    pathology_caption,
    progress_iter,
    row,
    save_png,
    smooth_noise,
)

SLIDE_MPP = 1.0  # level 0: a 10x scan
TILE_MPP = 2.0  # demo tiles: 64 px cover 128 µm, about an NCT-CRC-HE tile's field of view
MIN_PRIMARY = 0.6  # of the tile's area
MIN_SECONDARY = 0.12
GLASS = (0.945, 0.945, 0.95)
JPEG_QUALITY = 90


def _layout(rng: np.random.Generator, side: int, n_regions: int, n_classes: int) -> np.ndarray:
    """Region annotation (0 glass, 1 + class) of a tissue section on a (side x side) grid."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    cy, cx = rng.uniform(0.46, 0.54, 2)
    ry, rx = rng.uniform(0.40, 0.47, 2)
    warp = smooth_noise(rng, side, side, 4) - 0.5
    tissue = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.9 * warp <= 1.0
    # Regions: nearest of n_regions seeds inside the section, with boundaries bent by noise.
    seeds: list[tuple[float, float]] = []
    while len(seeds) < n_regions:
        y, x = rng.uniform(0.08, 0.92, 2)
        if ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 0.8:
            seeds.append((y, x))
    pts = np.asarray(seeds, dtype=np.float32)
    dy = (smooth_noise(rng, side, side, 5) - 0.5) * 0.12
    dx = (smooth_noise(rng, side, side, 5) - 0.5) * 0.12
    d = (yy[..., None] + dy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] + dx[..., None] - pts[:, 1]) ** 2
    nearest = d.argmin(-1)
    classes = np.resize(rng.permutation(n_classes), n_regions)  # every class, then repeats
    rng.shuffle(classes)
    labels = (classes[nearest] + 1).astype(np.uint8)
    labels[~tissue] = 0
    return labels


def paint_slide(rng: np.random.Generator, labels: np.ndarray, unit: int, factor: int) -> np.ndarray:
    """Level-0 RGB (uint8) of an annotation given at the tiles' resolution.

    Textures are painted at the annotation's resolution (features sized for a ``unit``-px field) and
    upsampled ``factor`` x (bicubic) to level 0: level 0 has more pixels, not more detail, which keeps
    generation fast while the tiler still has to pick the pyramid level that matches the tiles.
    """
    h, w = labels.shape
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = GLASS
    img += (smooth_noise(rng, h, w, 8)[..., None] - 0.5) * 0.01
    for k, cls in enumerate(PATHOLOGY_CLASSES, start=1):
        where = labels == k
        if not where.any():
            continue
        ys, xs = np.nonzero(where.any(1))[0], np.nonzero(where.any(0))[0]
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        assert cls.render is not None  # every pathology class renders
        tex = cls.render(rng, int(y1 - y0), int(x1 - x0), unit)
        sub = where[y0:y1, x0:x1]
        img[y0:y1, x0:x1][sub] = tex[sub]
    out = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    if factor > 1:
        out = out.resize((w * factor, h * factor), Image.Resampling.BICUBIC)
    return np.asarray(out)


def write_pyramid(path: Path, level0: np.ndarray, mpp: float, n_levels: int = 4, tile: int = 256) -> None:
    """Tiled JPEG pyramid: level 0 then 2x reductions (``subfiletype=1``), resolution tags in px/cm."""
    import tifffile

    per_cm = 1e4 / mpp
    levels = [level0]
    for _ in range(1, n_levels):
        prev = levels[-1]
        if min(prev.shape[:2]) < 128:  # coarser levels would be smaller than a thumbnail
            break
        levels.append(np.asarray(Image.fromarray(prev).reduce(2)))
    with tifffile.TiffWriter(path) as tw:
        for i, arr in enumerate(levels):
            scale = arr.shape[1] / level0.shape[1]
            tw.write(
                arr,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": JPEG_QUALITY},
                subfiletype=1 if i else 0,
                resolution=(per_cm * scale, per_cm * scale),
                resolutionunit="CENTIMETER",
                metadata=None,
                software="medvlp demo",
                description="medvlp synthetic pathology demo slide" if i == 0 else None,
            )


def _plan(n_per_class: int) -> tuple[int, int, int]:
    """(slides, held-out slides, grid side in tiles) for about ``n_per_class`` kept tiles per class."""
    n_slides = 10 if n_per_class >= 60 else 5
    n_test = 2 if n_slides >= 10 else 1
    kept_per_grid_tile = 0.45  # tissue covers ~60% of the grid, ~75% of those tiles have a clear majority
    side = math.ceil(math.sqrt(len(PATHOLOGY_CLASSES) * n_per_class / (kept_per_grid_tile * n_slides)))
    return n_slides, n_test, max(6, side)


def generate(out: Path, n_per_class: int, size: int, seed: int, progress: bool) -> Corpus:
    """Variant ``wsi`` of the pathology demo (see the module docstring)."""
    from medvlp.io.wsi import open_slide, tile_coords, write_tiles_h5

    classes = PATHOLOGY_CLASSES
    factor = int(round(TILE_MPP / SLIDE_MPP))
    n_slides, n_test, grid = _plan(n_per_class)
    for sub in ("slides", "masks", "coords"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    stats = {"grid_tiles": 0, "tissue_tiles": 0, "dropped_mixed": 0, "two_class_tiles": 0}
    annotated_tissue_tiles = 0
    for si in progress_iter(
        range(n_slides), n_slides, "painting and tiling demo slides", progress, unit="slide"
    ):
        rng = np.random.default_rng([seed, 404, si])
        side = grid * size  # annotation grid = tile resolution (TILE_MPP)
        labels = _layout(rng, side, n_regions=2 * len(classes), n_classes=len(classes))
        name = f"slide_{si:02d}"
        slide_path = out / "slides" / f"{name}.tif"
        write_pyramid(slide_path, paint_slide(rng, labels, unit=size, factor=factor), SLIDE_MPP)
        save_png(out / "slides" / f"{name}_regions.png", labels)
        (out / "slides" / f"{name}_regions.json").write_text(
            json.dumps(
                {
                    "mask": f"{name}_regions.png",
                    "mpp": TILE_MPP,
                    "level0_downsample": factor,
                    "values": {"0": "glass", **{str(j + 1): c.name for j, c in enumerate(classes)}},
                },
                indent=2,
            )
        )
        split = "test" if si >= n_slides - n_test else "train"
        with open_slide(slide_path) as slide:
            res = tile_coords(slide, target_mpp=TILE_MPP, size=size, tissue_fraction=0.5)
        res.slide_path = f"slides/{name}.tif"  # relative to the corpus folder (which is renamed when done)
        write_tiles_h5(out / "coords" / f"{name}.h5", res)
        stats["grid_tiles"] += int(res.settings["grid_tiles"])
        stats["tissue_tiles"] += len(res)
        for ty in range(0, side - size + 1, size):
            for tx in range(0, side - size + 1, size):
                annotated_tissue_tiles += int((labels[ty : ty + size, tx : tx + size] > 0).mean() >= 0.5)
        for x, y in res.coords.tolist():
            mx, my = int(round(x / factor)), int(round(y / factor))
            crop = labels[
                my : my + int(round(res.patch_size_level0 / factor)),
                mx : mx + int(round(res.patch_size_level0 / factor)),
            ]
            if crop.shape != (size, size):
                crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.NEAREST))
            frac = np.bincount(crop.ravel(), minlength=len(classes) + 1)[1:] / crop.size
            order = np.argsort(-frac, kind="stable")
            a, b = int(order[0]), int(order[1])
            if frac[a] < MIN_PRIMARY:
                stats["dropped_mixed"] += 1
                continue
            sec = b if frac[b] >= MIN_SECONDARY else None
            stats["two_class_tiles"] += sec is not None
            trng = np.random.default_rng([seed, 405, si, x, y])
            caps = [
                pathology_caption(trng, classes[a], classes[sec] if sec is not None else None)
                for _ in range(2)
            ]
            mask_name = f"{name}_{x:06d}_{y:06d}.png"
            save_png(out / "masks" / mask_name, crop)
            concepts = [classes[a].concept] + ([classes[sec].concept] if sec is not None else [])
            rows.append(
                row(
                    f"slides/{name}.tif#{x},{y},{res.read_level},{res.read_size}",
                    caps,
                    classes[a].name,
                    concepts,
                    f"masks/{mask_name}",
                    split,
                    classes[a].concept,
                    slide=name,
                    tile_fraction=round(float(frac[a]), 3),
                )
            )
    counts = {c.name: sum(r["label"] == c.name for r in rows) for c in classes}
    info = {
        "variant": "wsi",
        "slides": n_slides,
        "test_slides": n_test,
        "slide_mpp": SLIDE_MPP,
        "tile_mpp": TILE_MPP,
        "tile_size": size,
        "slide_side_px": grid * size * factor,
        "annotated_tissue_tiles": annotated_tissue_tiles,
        **stats,
        "tiles_per_class": counts,
        "split": "test = tiles of the last held-out slides",
    }
    return Corpus(rows, classes, info)
