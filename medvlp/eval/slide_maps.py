"""Slide heatmaps: per-tile scores painted over a slide thumbnail (the WSI zero-shot maps use these).

Generic on purpose: any per-tile score (a zero-shot probability, a concept score, an attention
weight) given with the tiles' level-0 top-left coordinates becomes a map on the thumbnail grid.
Overlapping tiles are averaged; pixels no tile covers are NaN (shown as the bare thumbnail).

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> thumb = Image.new("RGB", (8, 4))
    >>> hm = slide_heatmap(thumb, np.array([[0, 0], [16, 0]]), np.array([0.2, 0.9]), 16, 4.0)
    >>> round(float(hm[0, 0]), 3), round(float(hm[0, 5]), 3), bool(np.isnan(hm[0, 7]))
    (0.2, 0.9, False)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from medvlp.errors import DataError


def slide_heatmap(thumbnail: Any, coords: np.ndarray, scores: np.ndarray, tile_size_level0: float,
                  downsample: float | tuple[float, float]) -> np.ndarray:
    """Tile scores -> (H, W) float32 map on the thumbnail's pixel grid (NaN where no tile).

    Args:
        thumbnail: PIL image or (H, W[, C]) array; only its size is used.
        coords: (N, 2) level-0 top-left (x, y) of each tile.
        scores: (N,) one score per tile.
        tile_size_level0: tile side in level-0 pixels.
        downsample: level-0 pixels per thumbnail pixel (one number, or (x, y)).

    Raises:
        DataError: coords/scores shapes disagree.
    """
    if hasattr(thumbnail, "size") and not isinstance(thumbnail, np.ndarray):
        w, h = thumbnail.size
    else:
        h, w = np.asarray(thumbnail).shape[:2]
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(xy) != len(s):
        raise DataError(f"slide heatmap: {len(xy)} tile coordinates but {len(s)} scores")
    if np.isscalar(downsample):  # numpy scalars too, which isinstance(float) would not narrow
        dx = dy = float(cast(float, downsample))
    else:
        dx, dy = map(float, cast(tuple[float, float], downsample))
    total = np.zeros((h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.float64)
    for (x, y), v in zip(xy, s, strict=True):
        if not np.isfinite(v):
            continue
        x0, y0 = int(np.floor(x / dx)), int(np.floor(y / dy))
        x1 = max(x0 + 1, int(np.ceil((x + tile_size_level0) / dx)))
        y1 = max(y0 + 1, int(np.ceil((y + tile_size_level0) / dy)))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        total[y0:y1, x0:x1] += v
        count[y0:y1, x0:x1] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.astype(np.float32)


def read_tile_scores_h5(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """Read tile coordinates and scores from an HDF5 file.

    The file holds ``coords`` (N, 2) level-0 x, y and ``scores`` (N,) or (N, C); column names of a 2-D
    ``scores`` come from its ``labels`` attribute (or the file's). The tile size is the ``patch_size_level0``
    attribute (medvlp tiling files) or CLAM's ``patch_size * downsample`` on ``coords``.

    Returns:
        ``{"coords", "scores": {name: (N,)}, "tile_size_level0", "level0_dimensions" or None, "slide_path"}``.

    Raises:
        DataError: missing datasets or attributes, or an unreadable file.
    """
    import h5py

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            if "coords" not in f or "scores" not in f:
                raise DataError(f"{p}: needs datasets 'coords' (N, 2) and 'scores' (N,) or (N, C); "
                                f"found {sorted(f.keys())}")
            coords = np.asarray(f["coords"][()], dtype=np.int64).reshape(-1, 2)
            sc = np.asarray(f["scores"][()], dtype=np.float64)
            attrs = {**{k: f.attrs[k] for k in f.attrs}, **{k: f["coords"].attrs[k] for k in f["coords"].attrs}}
            labels = f["scores"].attrs.get("labels", f.attrs.get("labels"))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises OSError/KeyError/... on damaged files
        raise DataError(f"{p}: not a readable HDF5 file ({str(e).splitlines()[0][:120]})") from None
    if sc.shape[0] != len(coords):
        raise DataError(f"{p}: {len(coords)} coords but {sc.shape[0]} score rows")
    if sc.ndim == 1:
        names = [str(key or "score")]
        sc = sc[:, None]
    else:
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in labels] if labels is not None else \
            [f"score {j}" for j in range(sc.shape[1])]
        if len(names) != sc.shape[1]:
            raise DataError(f"{p}: 'labels' has {len(names)} names for {sc.shape[1]} score columns")
    if "patch_size_level0" in attrs:
        tile = float(attrs["patch_size_level0"])
    elif "patch_size" in attrs:
        tile = float(attrs["patch_size"]) * float(np.atleast_1d(attrs.get("downsample", 1.0))[0])
    else:
        raise DataError(f"{p}: no tile size attribute (patch_size_level0, or CLAM's patch_size)")
    dims = None
    if "level0_width" in attrs and "level0_height" in attrs and int(attrs["level0_width"]) > 0:
        dims = (int(attrs["level0_width"]), int(attrs["level0_height"]))
    slide = attrs.get("slide_path", "")
    return {"coords": coords, "scores": {n: sc[:, j] for j, n in enumerate(names)}, "tile_size_level0": tile,
            "level0_dimensions": dims, "slide_path": slide.decode() if isinstance(slide, bytes) else str(slide)}


def slide_heatmap_from_h5(path: str | Path, thumbnail: Any | None = None, *, score: str | None = None,
                          slide: str | Path | None = None, max_size: int = 1024) -> tuple[Any, np.ndarray, str]:
    """Thumbnail and heatmap of one score column of an HDF5 tile-score file.

    Without ``thumbnail``, it is read from ``slide`` when the caller passes one; otherwise a blank
    canvas of the slide's level-0 aspect (from the file's attributes or the tiles' extent). The
    ``slide_path`` stored inside the file is reported by :func:`read_tile_scores_h5` but never opened:
    the file may be an upload, and a path in it must not make the server read an arbitrary file.

    Returns:
        (thumbnail PIL image, (H, W) heatmap, the score column used).
    """
    from PIL import Image

    info = read_tile_scores_h5(path)
    name = score or next(iter(info["scores"]))
    if name not in info["scores"]:
        raise DataError(f"{path}: no score column '{name}'; columns: {list(info['scores'])}")
    dims = info["level0_dimensions"]
    if thumbnail is None:
        if slide is not None:
            if not Path(slide).is_file():
                raise DataError(f"{path}: slide {slide} does not exist; pass an existing slide file or none")
            from medvlp.io.wsi import open_slide

            with open_slide(slide) as s:
                thumbnail = s.get_thumbnail(max_size)
                dims = s.dimensions
        else:
            if dims is None:
                ext = info["coords"].max(0) + info["tile_size_level0"] if len(info["coords"]) else (1, 1)
                dims = (int(ext[0]), int(ext[1]))
            f = max_size / max(dims)
            thumbnail = Image.new("RGB", (max(1, round(dims[0] * f)), max(1, round(dims[1] * f))), (235, 235, 235))
    if dims is None:
        ext = info["coords"].max(0) + info["tile_size_level0"]
        dims = (int(ext[0]), int(ext[1]))
    down = (dims[0] / thumbnail.size[0], dims[1] / thumbnail.size[1])
    hm = slide_heatmap(thumbnail, info["coords"], info["scores"][name], info["tile_size_level0"], down)
    return thumbnail, hm, name
