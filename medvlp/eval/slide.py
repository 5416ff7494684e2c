"""Whole-slide zero-shot: tiles -> cached tile embeddings -> per-tile scores -> slide scores and heatmaps.

The pipeline (MI-Zero / CONCH / KEEP, re-implemented):

1. Tiles come from the WSI pipeline (:mod:`medvlp.io.wsi`) at the card's ``[image.wsi]`` target mpp and
   tile size; an existing ``<stem>.h5`` coordinate file (``medvlp wsi tile``, or CLAM's) is reused.
2. Tile embeddings are cached in that same HDF5 file, in group ``embeddings/<key>``, where the key hashes
   the model identity (config + a fingerprint of the weights) and the preprocessing (tile plan, input
   size, mean/std, resize). A second run with the same model reads them instead of re-embedding.
3. Per-tile logits ``t * cos`` against the label prompt ensembles (the model's learned scale ``t``),
   and per-tile softmax probabilities.
4. Optional neighbour smoothing: each tile's scores become the mean over itself and its existing
   8-neighbours on the tile grid (KEEP smooths tile probabilities over neighbours before aggregating).
5. Slide score per label, by ``--aggregate``:

   - ``topk_mean``: mean of the K largest tile logits of that label (CONCH, MI-Zero), then a softmax
     over labels gives slide probabilities;
   - ``topk_sum``: sum of the K largest tile logits (MI-Zero), then a softmax over labels;
   - ``fraction``: fraction of tiles whose most probable label it is (KEEP's tumour-tile fraction);
     these already sum to 1 and are the slide probabilities.

   With smoothing on, ``topk_*`` smooth the logits and ``fraction`` smooths the probabilities.
6. A heatmap PNG per label (the tile probabilities painted over the slide thumbnail with a matplotlib
   colour map, alpha-blended; the PNG has the thumbnail's size) and ``slides.json`` / ``slides.csv``.

Slide-level metrics over a manifest of slides (CSV with ``slide`` and ``label``) use
:func:`medvlp.eval.metrics.classification_report` on the slide probabilities.

Example:
    >>> from medvlp.models import create_model                                          # doctest: +SKIP
    >>> res = slide_zero_shot(create_model("tiny"), ["a.svs"], ["tumour", "normal"],   # doctest: +SKIP
    ...                       card="pathology", out_dir="zs", aggregate="topk_mean", k=10)
    >>> res[0].top_label, res[0].probabilities                                            # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from medvlp.domains import DomainCard, load_card
from medvlp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medvlp.models import MedVLP

AGGREGATES = ("topk_mean", "topk_sum", "fraction")
EMBED_GROUP = "embeddings"
CACHE_FORMAT = "medvlp-tile-embeddings/1"


# ---------------------------------------------------------------------------------------------------
# Aggregation and smoothing (pure numpy, no model)
# ---------------------------------------------------------------------------------------------------


def aggregate(scores: np.ndarray, method: str = "topk_mean", k: int = 10) -> np.ndarray:
    """Slide score per label from per-tile scores (N, C) -> (C,).

    Args:
        scores: per-tile logits (``topk_*``) or probabilities (``fraction``), one column per label.
        method: ``topk_mean`` | ``topk_sum`` | ``fraction``.
        k: tiles kept per label for ``topk_*`` (capped at N).

    Raises:
        ConfigError: unknown method or k < 1.
        DataError: no tiles.

    Example:
        >>> s = np.array([[3.0, 0.0], [1.0, 2.0], [2.0, 5.0]])
        >>> aggregate(s, "topk_mean", 2).tolist(), aggregate(s, "topk_sum", 2).tolist()
        ([2.5, 3.5], [5.0, 7.0])
        >>> aggregate(s, "fraction").round(3).tolist()
        [0.333, 0.667]
    """
    if method not in AGGREGATES:
        raise ConfigError(f"unknown aggregation '{method}'; choose one of {', '.join(AGGREGATES)}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise DataError(f"no tile scores to aggregate (shape {s.shape})")
    if method == "fraction":
        return np.bincount(s.argmax(axis=1), minlength=s.shape[1]) / s.shape[0]
    if k < 1:
        raise ConfigError(f"top-K needs K >= 1, got {k}")
    kk = min(int(k), s.shape[0])
    top = -np.sort(-s, axis=0)[:kk]  # per column, the kk largest values
    return top.mean(axis=0) if method == "topk_mean" else top.sum(axis=0)


def slide_probabilities(slide_scores: np.ndarray, method: str) -> np.ndarray:
    """Slide probabilities over labels: softmax of top-K logits, or the tile fractions as they are."""
    s = np.asarray(slide_scores, dtype=np.float64)
    if method == "fraction":
        return s
    e = np.exp(s - s.max())
    return e / e.sum()


def grid_index(coords: np.ndarray, step: float) -> np.ndarray:
    """(N, 2) integer (col, row) of each tile on the tiling grid of pitch ``step`` level-0 pixels."""
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return np.rint((xy - xy.min(axis=0)) / float(step)).astype(np.int64)


def neighbour_smooth(coords: np.ndarray, values: np.ndarray, step: float) -> np.ndarray:
    """Mean of each tile's values over itself and its existing 8-neighbours on the tile grid.

    Args:
        coords: (N, 2) level-0 top-left x, y of the tiles.
        values: (N,) or (N, C) per-tile values.
        step: grid pitch in level-0 pixels (the tile footprint, ``patch_size_level0``).

    Example:
        >>> c = np.array([[0, 0], [10, 0], [20, 0], [50, 0]])
        >>> neighbour_smooth(c, np.array([0.0, 3.0, 6.0, 9.0]), 10).tolist()
        [1.5, 3.0, 4.5, 9.0]
    """
    v = np.asarray(values, dtype=np.float64)
    squeeze = v.ndim == 1
    v2 = v[:, None] if squeeze else v
    if len(v2) == 0:
        return v.copy()
    g = grid_index(coords, step)
    gw, gh = int(g[:, 0].max()) + 1, int(g[:, 1].max()) + 1
    # One padded dense grid: summing the 9 shifted copies is a 3x3 box filter over present tiles only.
    total = np.zeros((gh + 2, gw + 2, v2.shape[1]))
    count = np.zeros((gh + 2, gw + 2))
    np.add.at(total, (g[:, 1] + 1, g[:, 0] + 1), v2)
    np.add.at(count, (g[:, 1] + 1, g[:, 0] + 1), 1.0)
    box_t = np.zeros_like(total)
    box_c = np.zeros_like(count)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            box_t[1:-1, 1:-1] += total[1 + dy:gh + 1 + dy, 1 + dx:gw + 1 + dx]
            box_c[1:-1, 1:-1] += count[1 + dy:gh + 1 + dy, 1 + dx:gw + 1 + dx]
    out = box_t[g[:, 1] + 1, g[:, 0] + 1] / box_c[g[:, 1] + 1, g[:, 0] + 1][:, None]
    return out[:, 0] if squeeze else out


# ---------------------------------------------------------------------------------------------------
# Tiles and the embedding cache
# ---------------------------------------------------------------------------------------------------


def weights_fingerprint(model: MedVLP) -> str:
    """Short hash of a model's weights: every tensor's name, shape and its first and last 64 values.

    Hashing every byte of a ViT-B costs seconds per run; training changes every tensor's leading and
    trailing values, so the sample tells trained weights apart while staying fast.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if flat.numel():
            h.update(torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_identity(model: MedVLP, opts: Any, plan: Any) -> tuple[str, dict[str, Any]]:
    """(key, description) of tile embeddings: model identity + preprocessing + tile plan."""
    info = {
        "format": CACHE_FORMAT,
        "model": str(model.spec.name),
        "model_cfg": model.spec.model_cfg,
        "weights": weights_fingerprint(model),
        "input_size": int(opts.size),
        "mean": [float(x) for x in opts.mean],
        "std": [float(x) for x in opts.std],
        "resize": "bicubic",
        "patch_size": int(plan.patch_size),
        "patch_size_level0": int(plan.patch_size_level0),
        "read_level": int(plan.read_level),
        "read_size": int(plan.read_size),
        "n_tiles": len(plan),
        "coords_sha": hashlib.sha256(np.ascontiguousarray(plan.coords, dtype=np.int64).tobytes()).hexdigest()[:16],
    }
    key = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return key, info


def read_cached_embeddings(tiles_file: str | Path, key: str) -> np.ndarray | None:
    """Embeddings stored under ``embeddings/<key>`` in a tile file, or None."""
    import h5py

    try:
        with h5py.File(tiles_file, "r") as f:
            if EMBED_GROUP in f and key in f[EMBED_GROUP]:
                return np.asarray(f[EMBED_GROUP][key]["features"][()], dtype=np.float32)
    except OSError:
        return None
    return None


def write_cached_embeddings(tiles_file: str | Path, key: str, features: np.ndarray, info: dict[str, Any]) -> None:
    """Store embeddings beside the coordinates (a group per key; other keys are kept)."""
    import h5py

    with h5py.File(tiles_file, "a") as f:
        grp = f.require_group(EMBED_GROUP)
        if key in grp:
            del grp[key]
        g = grp.create_group(key)
        g.create_dataset("features", data=np.asarray(features, dtype=np.float32))
        g.attrs["identity"] = json.dumps(info, sort_keys=True, default=str)
        g.attrs["model"] = info.get("model", "")
        g.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")


def tiles_for(slide_path: str | Path, tiles_dir: str | Path, card: DomainCard, *, mpp: float | None = None) -> Path:
    """The ``<stem>.h5`` coordinate file of a slide in ``tiles_dir``; tiled with the card's settings if absent."""
    from medvlp.io.wsi import open_slide, tile_coords, write_tiles_h5

    path = Path(tiles_dir) / f"{Path(slide_path).stem}.h5"
    if path.is_file():
        return path
    w = card.image.wsi
    with open_slide(slide_path) as slide:
        plan = tile_coords(slide, target_mpp=float(w.get("target_mpp", 0.5)), size=int(w.get("tile_size", 256)),
                           tissue_fraction=float(w.get("tissue_fraction", 0.5)), mpp=mpp,
                           saturation_floor=float(w.get("saturation_floor", 8)))
    if len(plan) == 0:
        raise DataError(f"{slide_path}: no tissue tile found (tissue fraction {w.get('tissue_fraction', 0.5)}); "
                        "check the slide or lower tissue_fraction in the card's [image.wsi]")
    return write_tiles_h5(path, plan)


class _TileTransform:
    """PIL tile -> uint8 (3, S, S) at the model's input size (picklable for data-loader workers)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Any) -> torch.Tensor:
        from medvlp.data.dataset import to_square

        arr = np.asarray(to_square(img.convert("RGB"), self.size, False), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@torch.no_grad()
def embed_tiles(model: MedVLP, slide_path: str | Path, plan: Any, opts: Any, *, batch_size: int = 64,
                num_workers: int = 0, progress: bool = False) -> np.ndarray:
    """Unit embeddings (N, D) of a slide's tiles, read through :class:`medvlp.io.wsi.TileDataset`."""
    from medvlp.data.dataset import Normalizer
    from medvlp.io.wsi import TileDataset

    dev = next(model.parameters()).device
    norm = Normalizer(opts.mean, opts.std).to(dev)
    ds = TileDataset([(str(slide_path), plan)], transform=_TileTransform(int(opts.size)))
    # TileDataset follows the map-style Dataset protocol without subclassing torch's Dataset
    tiles = cast("torch.utils.data.Dataset[dict[str, Any]]", ds)
    loader = torch.utils.data.DataLoader(tiles, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    it: Any = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=f"embedding {Path(slide_path).name}", unit="batch", leave=False)
    feats = [model.encode_image(norm(b["image"].to(dev)), normalize=True).float().cpu() for b in it]
    dim = int(model.embed_dim)
    return torch.cat(feats).numpy() if feats else np.zeros((0, dim), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# Slide zero-shot
# ---------------------------------------------------------------------------------------------------


@dataclass
class SlideResult:
    """Zero-shot result of one slide."""

    slide: str  # the slide path
    labels: list[str]
    probabilities: dict[str, float]  # slide-level, per label
    scores: dict[str, float]  # the aggregated per-label score before normalisation
    top_label: str
    n_tiles: int
    aggregate: str  # topk_mean | topk_sum | fraction
    k: int  # K used (capped at n_tiles) for top-K methods
    smoothed: bool
    cache_hit: bool  # embeddings were read from the tile file
    tiles_file: str
    seconds: float
    heatmaps: dict[str, str] = field(default_factory=dict)  # label -> PNG path
    coords: np.ndarray | None = field(default=None, repr=False)
    tile_probabilities: np.ndarray | None = field(default=None, repr=False)  # (N, C), after smoothing

    def to_dict(self) -> dict[str, Any]:
        return {"slide": self.slide, "probabilities": self.probabilities, "scores": self.scores,
                "top_label": self.top_label, "n_tiles": self.n_tiles, "aggregate": self.aggregate, "k": self.k,
                "smoothed": self.smoothed, "cache_hit": self.cache_hit, "tiles_file": self.tiles_file,
                "seconds": round(self.seconds, 3), "heatmaps": self.heatmaps}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "label"


def heatmap_image(thumbnail: Any, values: np.ndarray, *, cmap: str = "inferno", alpha: float = 0.5,
                  vmin: float = 0.0, vmax: float = 1.0) -> Any:
    """Alpha-blend a (H, W) value map (NaN = no tile) in a matplotlib colour map over the thumbnail.

    Returns a PIL RGB image of the thumbnail's size; pixels without a tile stay the thumbnail's.
    """
    import matplotlib
    from PIL import Image

    base = np.asarray(thumbnail.convert("RGB"), dtype=np.float32) / 255.0
    if values.shape != base.shape[:2]:
        raise DataError(f"heatmap {values.shape} does not match the thumbnail {base.shape[:2]}")
    norm = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    colour = matplotlib.colormaps[cmap](norm)[..., :3].astype(np.float32)
    a = np.where(np.isfinite(values), float(alpha), 0.0)[..., None]
    out = (1.0 - a) * base + a * colour
    return Image.fromarray((out * 255.0).round().clip(0, 255).astype(np.uint8))


def write_heatmaps(slide_path: str | Path, plan: Any, tile_probs: np.ndarray, labels: Sequence[str],
                   out_dir: str | Path, *, max_size: int = 1024, cmap: str = "inferno",
                   alpha: float = 0.5) -> dict[str, str]:
    """One PNG per label, ``<stem>__<label>.png``: tile probabilities over the slide thumbnail."""
    from medvlp.eval.slide_maps import slide_heatmap
    from medvlp.io.wsi import open_slide

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open_slide(slide_path) as slide:
        thumb = slide.get_thumbnail(max_size)
        w0, h0 = slide.dimensions
    down = (w0 / thumb.size[0], h0 / thumb.size[1])
    paths = {}
    for j, lab in enumerate(labels):
        grid = slide_heatmap(thumb, plan.coords, tile_probs[:, j], plan.patch_size_level0, down)
        p = out / f"{Path(slide_path).stem}__{_slug(lab)}.png"
        heatmap_image(thumb, grid, cmap=cmap, alpha=alpha).save(p)
        paths[lab] = str(p)
    return paths


class SlideZeroShot:
    """Zero-shot scoring of whole slides with one model and label set.

    Args:
        model: a :class:`~medvlp.models.MedVLP` (or a :class:`medvlp.api.Model`; its ``net`` is used).
        labels: at least two labels (card synonyms and templates are used; unknown ones as raw text).
        card: domain card (name or object): prompts and ``[image.wsi]`` tiling settings.
        aggregate: ``topk_mean`` | ``topk_sum`` | ``fraction``.
        k: tiles per label for top-K aggregation.
        smooth: average tile scores over the 8-neighbourhood before aggregating.
        batch_size, num_workers: tile embedding loader settings.
        mpp: level-0 microns per pixel for slides whose own value is missing or untrustworthy.
        temperature: calibration temperature applied to tile logits (1.0 = uncalibrated).
    """

    def __init__(self, model: Any, labels: Sequence[str], *, card: DomainCard | str, aggregate: str = "topk_mean",
                 k: int = 10, smooth: bool = False, batch_size: int = 64, num_workers: int = 0,
                 mpp: float | None = None, temperature: float = 1.0, progress: bool = False) -> None:
        from medvlp.data.dataset import options_for
        from medvlp.eval.zeroshot import ZeroShotClassifier

        if aggregate not in AGGREGATES:
            raise ConfigError(f"unknown aggregation '{aggregate}'; choose one of {', '.join(AGGREGATES)}")
        if k < 1:
            raise ConfigError(f"--k must be at least 1, got {k}")
        self.net = getattr(model, "net", model)
        self.card = load_card(card) if isinstance(card, str) else card
        self.clf = ZeroShotClassifier(self.net, labels, card=self.card, temperature=temperature)
        self.labels = self.clf.labels
        self.aggregate, self.k, self.smooth = aggregate, int(k), bool(smooth)
        self.batch_size, self.num_workers, self.mpp, self.progress = batch_size, num_workers, mpp, progress
        self.opts = options_for(self.net.spec, self.card, train=False)

    def embeddings(self, slide_path: str | Path, tiles_file: str | Path) -> tuple[np.ndarray, Any, bool]:
        """(features (N, D), tile plan, cache hit) for a slide, embedding and caching on a miss."""
        from medvlp.io.wsi import read_coords_h5

        plan = read_coords_h5(tiles_file)
        if len(plan) == 0:
            raise DataError(f"{tiles_file}: the slide has no tiles")
        key, info = cache_identity(self.net, self.opts, plan)
        feats = read_cached_embeddings(tiles_file, key)
        if feats is not None and feats.shape[0] == len(plan):
            return feats, plan, True
        feats = embed_tiles(self.net, slide_path, plan, self.opts, batch_size=self.batch_size,
                            num_workers=self.num_workers, progress=self.progress)
        write_cached_embeddings(tiles_file, key, feats, info)
        return feats, plan, False

    def tile_scores(self, feats: np.ndarray, coords: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
        """(tile logits (N, C), tile probabilities (N, C)), smoothed when asked."""
        logits = (self.clf.logits(torch.from_numpy(feats)) / self.clf.temperature).numpy().astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        if self.smooth:
            logits = neighbour_smooth(coords, logits, step)
            probs = neighbour_smooth(coords, probs, step)
        return logits, probs

    def score(self, slide_path: str | Path, tiles_dir: str | Path, *, heatmap_dir: str | Path | None = None,
              max_thumbnail: int = 1024) -> SlideResult:
        """Score one slide; writes heatmaps into ``heatmap_dir`` when given."""
        t0 = time.perf_counter()
        tiles_file = tiles_for(slide_path, tiles_dir, self.card, mpp=self.mpp)
        feats, plan, hit = self.embeddings(slide_path, tiles_file)
        logits, probs = self.tile_scores(feats, plan.coords, plan.patch_size_level0)
        per_tile = probs if self.aggregate == "fraction" else logits
        agg = aggregate(per_tile, self.aggregate, self.k)
        p = slide_probabilities(agg, self.aggregate)
        heat = {}
        if heatmap_dir is not None:
            heat = write_heatmaps(slide_path, plan, probs, self.labels, heatmap_dir, max_size=max_thumbnail)
        return SlideResult(
            slide=str(slide_path), labels=list(self.labels),
            probabilities={lab: float(v) for lab, v in zip(self.labels, p, strict=True)},
            scores={lab: float(v) for lab, v in zip(self.labels, agg, strict=True)},
            top_label=self.labels[int(np.argmax(p))], n_tiles=len(plan), aggregate=self.aggregate,
            k=min(self.k, len(plan)), smoothed=self.smooth, cache_hit=hit, tiles_file=str(tiles_file),
            seconds=time.perf_counter() - t0, heatmaps=heat, coords=plan.coords, tile_probabilities=probs,
        )


def write_slide_table(results: Sequence[SlideResult], out_dir: str | Path) -> tuple[Path, Path]:
    """``slides.json`` (list of :meth:`SlideResult.to_dict`) and ``slides.csv`` (one row per slide)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out / "slides.json", out / "slides.csv"
    jpath.write_text(json.dumps([r.to_dict() for r in results], indent=2))
    labels = results[0].labels if results else []
    with cpath.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide", "top_label", "n_tiles", "aggregate", "k", "smoothed", *[f"p[{lab}]" for lab in labels]])
        for r in results:
            w.writerow([r.slide, r.top_label, r.n_tiles, r.aggregate, r.k, r.smoothed,
                        *[f"{r.probabilities[lab]:.6f}" for lab in labels]])
    return jpath, cpath


def slide_zero_shot(model: Any, slides: Sequence[str | Path], labels: Sequence[str], *, card: DomainCard | str,
                    out_dir: str | Path, tiles_dir: str | Path | None = None, heatmaps: bool = True,
                    **kwargs: Any) -> list[SlideResult]:
    """Score slides and write ``slides.json``, ``slides.csv`` and heatmaps into ``out_dir``.

    Tile coordinate files (and their embedding caches) live in ``tiles_dir`` (default ``out_dir/tiles``);
    keyword arguments go to :class:`SlideZeroShot`. Errors on a slide propagate; the command line
    catches them per slide.
    """
    runner = SlideZeroShot(model, labels, card=card, **kwargs)
    tdir = Path(tiles_dir) if tiles_dir else Path(out_dir) / "tiles"
    hdir = Path(out_dir) / "heatmaps" if heatmaps else None
    results = [runner.score(s, tdir, heatmap_dir=hdir) for s in slides]
    write_slide_table(results, out_dir)
    return results


# ---------------------------------------------------------------------------------------------------
# Slide-level metrics
# ---------------------------------------------------------------------------------------------------


def read_slide_manifest(path: str | Path) -> list[tuple[str, str]]:
    """Rows ``(slide path, label)`` of a CSV with columns ``slide`` and ``label``.

    Relative slide paths are resolved against the CSV's folder.

    Raises:
        DataError: missing file or columns, or a row with an empty slide or label (row number given).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"slide manifest {p} not found")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "slide" not in cols or "label" not in cols:
            raise DataError(f"{p}: needs columns 'slide' and 'label' (found {cols})")
        rows = []
        for i, row in enumerate(reader, start=2):
            s, lab = (row.get("slide") or "").strip(), (row.get("label") or "").strip()
            if not s or not lab:
                raise DataError(f"{p}, line {i}: empty slide or label")
            sp = Path(s)
            rows.append((str(sp if sp.is_absolute() else (p.parent / sp)), lab))
    if not rows:
        raise DataError(f"{p}: no rows")
    return rows


def evaluate_slides(results: Sequence[SlideResult], manifest: str | Path | Sequence[tuple[str, str]], *,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Slide-level metrics (DESIGN.md metrics JSON, bootstrap over slides) of zero-shot slide results.

    Slides are matched to manifest rows by resolved path, then by file name. Slides whose label is not
    in the label set, and manifest rows without a result, are counted (``n_excluded``, ``n_missing``).

    Raises:
        DataError: no slide could be matched to a labelled manifest row with a label in the set.
    """
    from medvlp.eval.metrics import classification_report

    rows = read_slide_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    if not results:
        raise DataError("no slide results to evaluate")
    labels = results[0].labels
    index = {lab.lower(): j for j, lab in enumerate(labels)}
    by_path = {str(Path(s).resolve()): lab for s, lab in rows}
    by_name = {Path(s).name: lab for s, lab in rows}
    y: list[int] = []
    probs: list[list[float]] = []
    names: list[str] = []
    outside: dict[str, int] = {}
    missing = 0
    for r in results:
        lab = by_path.get(str(Path(r.slide).resolve()), by_name.get(Path(r.slide).name))
        if lab is None:
            missing += 1
            continue
        if lab.lower() not in index:
            outside[lab] = outside.get(lab, 0) + 1
            continue
        y.append(index[lab.lower()])
        probs.append([r.probabilities[x] for x in labels])
        names.append(r.slide)
    if not y:
        raise DataError(f"no scored slide has a manifest label in the label set {labels} "
                        f"(unmatched slides: {missing}, labels outside the set: {outside})")
    report = classification_report(np.asarray(y), np.asarray(probs), labels, groups=np.asarray(names),
                                   n_boot=n_boot, seed=seed, group_unit="slide")
    report["n_excluded"] = sum(outside.values())
    report["excluded_labels"] = outside
    report["n_unmatched"] = missing
    report["aggregate"] = results[0].aggregate
    report["k"] = results[0].k
    report["smoothed"] = results[0].smoothed
    return report
