"""Synthetic demo corpora: deterministic, cached image-text sets whose captions name what is drawn.

Each image has a primary class covering the field and, often, a secondary class in an elliptical
region; the caption names both (with synonyms and varied phrasing) and a mask PNG records which class
each pixel shows, so patch-level localisation can be measured. Generators are registered per domain.

Example:
    >>> from medvlp.data.synthetic import demo_manifest
    >>> path = demo_manifest("pathology", n_per_class=4, size=32)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medvlp.data.dataset import default_cache_dir

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class DemoClass:
    name: str  # label name, as in the domain card's label set
    concept: str  # concept id in the domain's ontology
    synonyms: tuple[str, ...]  # used in captions
    render: Callable[[np.random.Generator, int], np.ndarray]  # rng, size -> float RGB (size, size, 3) in 0..1


# --------------------------------------------------------------------------------------------------
# Drawing primitives (numpy only, vectorised per image)
# --------------------------------------------------------------------------------------------------
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in 0..1: random values on a coarse grid, bilinearly upsampled."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _paint(canvas: np.ndarray, mask: np.ndarray, color: tuple[float, float, float], alpha: float = 1.0) -> None:
    c = np.asarray(color, dtype=np.float32)
    m = mask[..., None].astype(np.float32) * alpha
    canvas *= 1 - m
    canvas += m * c


def _disks(rng: np.random.Generator, size: int, n: int, r: tuple[float, float], elong: float = 1.0,
           angle: float | None = None) -> np.ndarray:
    """Boolean mask of n (elliptical) disks at random positions."""
    yy, xx = _grid(size)
    mask = np.zeros((size, size), dtype=bool)
    cy = rng.uniform(0, size, n)
    cx = rng.uniform(0, size, n)
    rad = rng.uniform(r[0], r[1], n)
    th = rng.uniform(0, np.pi, n) if angle is None else np.full(n, angle) + rng.normal(0, 0.15, n)
    for y, x, rr, t in zip(cy, cx, rad, th, strict=False):
        lo_y, hi_y = int(max(0, y - rr * elong - 1)), int(min(size, y + rr * elong + 2))
        lo_x, hi_x = int(max(0, x - rr * elong - 1)), int(min(size, x + rr * elong + 2))
        if lo_y >= hi_y or lo_x >= hi_x:
            continue
        dy = yy[lo_y:hi_y, lo_x:hi_x] - y
        dx = xx[lo_y:hi_y, lo_x:hi_x] - x
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        mask[lo_y:hi_y, lo_x:hi_x] |= (u / (rr * elong)) ** 2 + (v / rr) ** 2 <= 1.0
    return mask


def _voronoi_edges(rng: np.random.Generator, size: int, n: int, width: float) -> np.ndarray:
    yy, xx = _grid(size)
    pts = rng.uniform(0, size, (n, 2)).astype(np.float32)
    d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    d.sort(axis=-1)
    return (d[..., 1] - d[..., 0]) < width


def _jitter(rng: np.random.Generator, color: tuple[float, float, float], amount: float = 0.04):
    return tuple(float(np.clip(c + rng.normal(0, amount), 0, 1)) for c in color)


EOSIN = (0.93, 0.62, 0.76)
HEMA = (0.33, 0.17, 0.50)
PALE = (0.97, 0.94, 0.96)


def _base(rng: np.random.Generator, size: int, color, noise: float = 0.06) -> np.ndarray:
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = _jitter(rng, color)
    img += (_smooth_noise(rng, size, 6)[..., None] - 0.5) * noise
    return img


# --------------------------------------------------------------------------------------------------
# Pathology (H&E-like) textures
# --------------------------------------------------------------------------------------------------
def _adipose(rng, s):
    img = _base(rng, s, PALE, 0.02)
    _paint(img, _voronoi_edges(rng, s, int(rng.integers(6, 11)), 1.2), _jitter(rng, (0.90, 0.55, 0.70)))
    _paint(img, _disks(rng, s, int(rng.integers(2, 5)), (1.0, 1.6)), _jitter(rng, HEMA))
    return img


def _lymphocytes(rng, s):
    img = _base(rng, s, (0.88, 0.60, 0.78))
    n = int(s * s / 22 * rng.uniform(0.8, 1.1))
    _paint(img, _disks(rng, s, n, (s / 40, s / 28)), _jitter(rng, (0.22, 0.10, 0.40)))
    return img


def _mucus(rng, s):
    img = _base(rng, s, (0.78, 0.80, 0.92), 0.05)
    wisps = _smooth_noise(rng, s, 10)
    _paint(img, (wisps > 0.62), _jitter(rng, (0.66, 0.68, 0.86)), 0.7)
    _paint(img, _disks(rng, s, int(rng.integers(1, 4)), (1.0, 1.5)), _jitter(rng, HEMA))
    return img


def _smooth_muscle(rng, s):
    img = _base(rng, s, (0.90, 0.45, 0.58))
    yy, xx = _grid(s)
    th = rng.uniform(0, np.pi)
    stripes = np.sin((xx * np.cos(th) + yy * np.sin(th)) * (2 * np.pi / rng.uniform(4.0, 6.0)))
    _paint(img, stripes > 0.4, _jitter(rng, (0.80, 0.32, 0.45)), 0.8)
    _paint(img, _disks(rng, s, int(s * s / 140), (s / 70, s / 50), elong=3.5, angle=th),
           _jitter(rng, (0.35, 0.15, 0.45)))
    return img


def _debris(rng, s):
    img = _base(rng, s, (0.90, 0.70, 0.78), 0.15)
    speck = rng.random((s, s)) < 0.18
    _paint(img, speck, _jitter(rng, (0.55, 0.25, 0.50)), 0.85)
    _paint(img, _disks(rng, s, int(s * s / 120), (s / 90, s / 45)), _jitter(rng, (0.45, 0.20, 0.42)), 0.9)
    return img


def _tumor_epithelium(rng, s):
    img = _base(rng, s, (0.86, 0.52, 0.70))
    lumens = _disks(rng, s, int(rng.integers(2, 4)), (s / 10, s / 6))
    ring = _disks(rng, s, 0, (1, 1))
    from scipy.ndimage import binary_dilation

    ring = binary_dilation(lumens, iterations=max(2, s // 16)) & ~lumens
    nuclei = _disks(rng, s, int(s * s / 30), (s / 36, s / 22), elong=1.4)
    _paint(img, ring & nuclei, _jitter(rng, (0.28, 0.10, 0.42)))
    _paint(img, nuclei & ~lumens & (rng.random((s, s)) < 0.5), _jitter(rng, (0.38, 0.16, 0.48)), 0.8)
    _paint(img, lumens, _jitter(rng, PALE))
    return img


PATHOLOGY_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("adipose tissue", "path:adipose_tissue", ("fat", "adipocytes", "fatty tissue"), _adipose),
    DemoClass("lymphocytes", "path:lymphocytes", ("lymphocytic infiltrate", "lymphoid cells"), _lymphocytes),
    DemoClass("mucus", "path:mucus", ("mucin", "mucinous material"), _mucus),
    DemoClass("smooth muscle", "path:smooth_muscle", ("muscularis", "smooth muscle fibres"), _smooth_muscle),
    DemoClass("debris", "path:debris", ("necrotic debris", "cellular debris"), _debris),
    DemoClass("colorectal adenocarcinoma epithelium", "path:colorectal_adenocarcinoma_epithelium",
              ("tumour epithelium", "colorectal adenocarcinoma", "malignant glands"), _tumor_epithelium),
)

PATHOLOGY_TEMPLATES_ONE = (
    "{a}.",
    "H&E stained section showing {a}.",
    "histopathology of {a}.",
    "microscopic view of {a} in colorectal tissue.",
    "a tile of {a}, hematoxylin and eosin.",
    "this patch is dominated by {a}.",
)
PATHOLOGY_TEMPLATES_TWO = (
    "{a} with a focus of {b}.",
    "H&E section of {a}; {b} is also seen.",
    "{a} and adjacent {b}.",
    "histology showing mostly {a}, with some {b}.",
)


# --------------------------------------------------------------------------------------------------
# Corpus assembly
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSpec:
    domain: str
    classes: tuple[DemoClass, ...]
    templates_one: tuple[str, ...]
    templates_two: tuple[str, ...]
    size: int = 64
    n_per_class: int = 300
    test_fraction: float = 0.2
    secondary_p: float = 0.5  # probability that an image also shows a second class in a region


DEMOS: dict[str, DemoSpec] = {
    "pathology": DemoSpec("pathology", PATHOLOGY_CLASSES, PATHOLOGY_TEMPLATES_ONE, PATHOLOGY_TEMPLATES_TWO),
}


def _ellipse(rng: np.random.Generator, s: int) -> np.ndarray:
    yy, xx = _grid(s)
    cy, cx = rng.uniform(0.25 * s, 0.75 * s, 2)
    ry, rx = rng.uniform(0.18 * s, 0.3 * s, 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _caption(rng: np.random.Generator, spec: DemoSpec, a: DemoClass, b: DemoClass | None) -> str:
    def name(c: DemoClass) -> str:
        return c.name if rng.random() < 0.5 else str(rng.choice(c.synonyms))

    if b is None:
        text = str(rng.choice(spec.templates_one)).format(a=name(a))
    else:
        text = str(rng.choice(spec.templates_two)).format(a=name(a), b=name(b))
    return text[0].upper() + text[1:]


def render_sample(spec: DemoSpec, rng: np.random.Generator, primary: int, secondary: int | None):
    """One image (uint8 HxWx3), its mask (uint8: 1 + class index per pixel) and its two captions."""
    s = spec.size
    img = spec.classes[primary].render(rng, s)
    mask = np.full((s, s), primary + 1, dtype=np.uint8)
    if secondary is not None:
        region = _ellipse(rng, s)
        other = spec.classes[secondary].render(rng, s)
        img[region] = other[region]
        mask[region] = secondary + 1
    b = spec.classes[secondary] if secondary is not None else None
    captions = [_caption(rng, spec, spec.classes[primary], b) for _ in range(2)]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask, captions


def demo_dir(domain: str, n_per_class: int, size: int, seed: int) -> Path:
    key = hashlib.sha256(json.dumps([domain, n_per_class, size, seed, GENERATOR_VERSION]).encode()).hexdigest()[:10]
    return default_cache_dir() / "demo" / f"{domain}-{key}"


def demo_manifest(domain: str, *, n_per_class: int | None = None, size: int | None = None, seed: int = 0,
                  out_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Generate (once; cached) the demo corpus of ``domain`` and return its manifest path.

    The manifest has columns image, caption (JSON list), label, concepts (ids of the classes drawn),
    mask, split (train/test), group (the primary concept).
    """
    if domain not in DEMOS:
        from medvlp.errors import ConfigError

        raise ConfigError(f"no demo corpus for domain '{domain}'; demos exist for {', '.join(sorted(DEMOS))}")
    base = DEMOS[domain]
    spec = DemoSpec(**{**base.__dict__, "n_per_class": n_per_class or base.n_per_class, "size": size or base.size})
    d = Path(out_dir) if out_dir else demo_dir(domain, spec.n_per_class, spec.size, seed)
    manifest = d / "manifest.csv"
    if manifest.is_file():
        return manifest
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    (tmp / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = len(spec.classes)
    jobs = [(c, i) for c in range(k) for i in range(spec.n_per_class)]
    rows = []
    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc=f"generating {domain} demo corpus", unit="img", leave=False)
    n_test = int(round(spec.n_per_class * spec.test_fraction))
    for c, i in it:
        srng = np.random.default_rng([seed, c, i])
        sec = None
        if srng.random() < spec.secondary_p:
            sec = int((c + 1 + srng.integers(k - 1)) % k)
        img, mask, caps = render_sample(spec, srng, c, sec)
        name = f"{c:02d}_{i:05d}.png"
        Image.fromarray(img).save(tmp / "images" / name)
        Image.fromarray(mask).save(tmp / "masks" / name)
        concepts = [spec.classes[c].concept] + ([spec.classes[sec].concept] if sec is not None else [])
        rows.append({
            "image": f"images/{name}",
            "caption": json.dumps(caps),
            "label": spec.classes[c].name,
            "concepts": json.dumps(concepts),
            "mask": f"masks/{name}",
            "split": "test" if i < n_test else "train",
            "group": spec.classes[c].concept,
        })
    del rng
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)
    (tmp / "classes.json").write_text(json.dumps(
        [{"index": j + 1, "name": c.name, "concept": c.concept} for j, c in enumerate(spec.classes)], indent=2))
    d.parent.mkdir(parents=True, exist_ok=True)
    if d.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, d)
    return manifest
