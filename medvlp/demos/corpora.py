"""Synthetic demo corpora: deterministic, cached image-text sets whose captions name what is drawn.

Every domain has one (``medvlp pretrain --domain D`` without ``--data`` trains on it):

- ``pathology``: H&E-like tissue textures of six NCT-CRC-HE classes. Variant ``wsi`` (the card's default)
  paints them as annotated regions of synthetic pyramidal TIFF slides and tiles those with the real
  whole-slide pipeline (:mod:`medvlp.demos.wsi`); variant ``tiles`` writes one PNG per image,
  a primary class over the field and often a second class in an elliptical region.
- ``cxr``: chest radiographs written as DICOM (MONOCHROME1 and MONOCHROME2, window tags) with normal,
  pneumonia, pleural effusion, cardiomegaly and pneumothorax (:mod:`medvlp.demos.cxr`).
- ``dermatology``: the seven HAM10000 diagnoses on skin of Fitzpatrick-like tones (:mod:`.synthetic_derm`).
- ``microscopy``: four-channel fluorescence TIFF fields (DAPI + a protein whose location is the class)
  read through the multichannel reader (:mod:`medvlp.demos.micro`).

Every corpus writes ``manifest.csv`` (columns image, caption (JSON list), label, concepts (JSON list of
concept ids), mask, split (train/test), group (the label's concept id), plus per-domain metadata),
``classes.json`` (mask value -> class) and one mask PNG per row whose pixels hold 1 + the class index of
what they show (0 = nothing of interest: glass, air, outside the body). The same arguments give the
same bytes; a finished corpus is cached under ``$MEDVLP_CACHE/demo`` and never rebuilt.

Example:
    >>> from medvlp.demos.corpora import demo_manifest
    >>> path = demo_manifest("pathology", n_per_class=4, size=32)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvlp.data.dataset import default_cache_dir
from medvlp.errors import ConfigError

GENERATOR_VERSION = 3  # 3: no caption equals a zero-shot prompt of the card
COLUMNS = ("image", "caption", "label", "concepts", "mask", "split", "group")


@dataclass(frozen=True)
class DemoClass:
    name: str  # label name, as in the domain card's label set
    concept: str  # concept id in the domain's ontology
    synonyms: tuple[str, ...]  # used in captions
    render: Callable[..., np.ndarray] | None = None  # (rng, h, w, unit) -> float RGB (h, w, 3) in 0..1


@dataclass(frozen=True)
class Corpus:
    """What a generator hands back: manifest rows (image/mask paths relative to the corpus folder)."""

    rows: list[dict[str, Any]]
    classes: tuple[DemoClass, ...]
    info: dict[str, Any] = field(default_factory=dict)  # written to info.json (how it was made)


Generator = Callable[[Path, int, int, int, bool], Corpus]  # (folder, n_per_class, size, seed, progress)


@dataclass(frozen=True)
class DemoEntry:
    generator: str  # "module:function", imported on use (heavy readers stay lazy)
    n_per_class: int
    size: int
    version: int = 1  # bumped when the generator's output changes (new cache key)


# (domain, variant) -> generator; the first variant of a domain is its default unless the card names one.
DEMOS: dict[tuple[str, str], DemoEntry] = {
    ("pathology", "wsi"): DemoEntry("medvlp.demos.wsi:generate", 300, 64, 1),
    ("pathology", "tiles"): DemoEntry("medvlp.demos.corpora:generate_pathology_tiles", 300, 64, 1),
    ("cxr", "dicom"): DemoEntry("medvlp.demos.cxr:generate", 300, 128, 1),
    ("dermatology", "photo"): DemoEntry("medvlp.demos.derm:generate", 250, 96, 1),
    ("microscopy", "fluorescence"): DemoEntry("medvlp.demos.micro:generate", 300, 64, 1),
}


def demo_domains() -> list[str]:
    """Domains that have a demo corpus."""
    return sorted({d for d, _ in DEMOS})


def demo_variants(domain: str) -> list[str]:
    """The variants of ``domain``'s demo corpus, default first (without the card's choice)."""
    return [v for d, v in DEMOS if d == domain]


# --------------------------------------------------------------------------------------------------
# Helpers shared by the generators
# --------------------------------------------------------------------------------------------------
def split_of(i: int, n: int, test_fraction: float = 0.2) -> str:
    """``test`` for the first ``round(n * test_fraction)`` indices of a class, else ``train``."""
    return "test" if i < int(round(n * test_fraction)) else "train"


def cased(text: str) -> str:
    return text[:1].upper() + text[1:]


def pick_name(rng: np.random.Generator, c: DemoClass, p_name: float = 0.5) -> str:
    """The label name (probability ``p_name``) or one of its synonyms."""
    return c.name if rng.random() < p_name or not c.synonyms else str(rng.choice(c.synonyms))


def save_png(path: Path, arr: np.ndarray) -> None:
    """PNG without timestamps or other varying chunks (byte-identical for identical pixels)."""
    Image.fromarray(arr).save(path, optimize=False)


def progress_iter(items: Iterable, total: int, desc: str, progress: bool, unit: str = "img") -> Iterable:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit=unit, leave=False)


def demo_jobs(out: Path, n_classes: int, n_per_class: int, domain: str, progress: bool) -> Iterable:
    """Create ``out/images`` and ``out/masks`` and iterate (class, index) jobs, with a progress bar if asked."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(c, i) for c in range(n_classes) for i in range(n_per_class)]
    return progress_iter(jobs, len(jobs), f"generating {domain} demo corpus", progress)


def row(
    image: str,
    captions: list[str],
    label: str,
    concepts: list[str],
    mask: str,
    split: str,
    group: str,
    **meta: Any,
) -> dict[str, Any]:
    return {
        "image": image,
        "caption": json.dumps(captions),
        "label": label,
        "concepts": json.dumps(concepts),
        "mask": mask,
        "split": split,
        "group": group,
        **meta,
    }


# --------------------------------------------------------------------------------------------------
# Drawing primitives (numpy; sizes in pixels, feature scales relative to a reference field `unit`)
# --------------------------------------------------------------------------------------------------
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def smooth_noise(
    rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int | None = None
) -> np.ndarray:
    """Value noise in 0..1: random values on a coarse grid, bilinearly upsampled to (h, w)."""
    cells_x = cells_y if cells_x is None else cells_x
    coarse = rng.random((max(1, cells_y) + 1, max(1, cells_x) + 1)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def paint(canvas: np.ndarray, mask: np.ndarray, color: Any, alpha: float | np.ndarray = 1.0) -> None:
    """Blend ``color`` into ``canvas`` where ``mask`` (bool or float weights) is set."""
    c = np.asarray(color, dtype=np.float32)
    m = mask.astype(np.float32) * alpha
    if canvas.ndim == 3:
        m = m[..., None]
    canvas *= 1 - m
    canvas += m * c


def disks(
    rng: np.random.Generator,
    h: int,
    w: int,
    n: int,
    r: tuple[float, float],
    elong: float = 1.0,
    angle: float | None = None,
) -> np.ndarray:
    """Boolean mask of n (elliptical) disks at random positions."""
    mask = np.zeros((h, w), dtype=bool)
    if n <= 0:
        return mask
    cy = rng.uniform(0, h, n)
    cx = rng.uniform(0, w, n)
    rad = rng.uniform(r[0], r[1], n)
    th = rng.uniform(0, np.pi, n) if angle is None else np.full(n, angle) + rng.normal(0, 0.15, n)
    for y, x, rr, t in zip(cy, cx, rad, th, strict=True):
        ext = rr * max(elong, 1.0)
        lo_y, hi_y = int(max(0, y - ext - 1)), int(min(h, y + ext + 2))
        lo_x, hi_x = int(max(0, x - ext - 1)), int(min(w, x + ext + 2))
        if lo_y >= hi_y or lo_x >= hi_x:
            continue
        dy = np.arange(lo_y, hi_y, dtype=np.float32)[:, None] - y
        dx = np.arange(lo_x, hi_x, dtype=np.float32)[None, :] - x
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        mask[lo_y:hi_y, lo_x:hi_x] |= (u / (rr * elong)) ** 2 + (v / rr) ** 2 <= 1.0
    return mask


def voronoi_edges(rng: np.random.Generator, h: int, w: int, n: int, width: float) -> np.ndarray:
    """Cell borders of a Voronoi partition of n random seeds (distance to 2nd - 1st seed < width)."""
    from scipy.spatial import cKDTree

    n = max(2, n)
    pts = np.stack([rng.uniform(0, h, n), rng.uniform(0, w, n)], axis=1)
    yy, xx = _grid(h, w)
    d, _ = cKDTree(pts).query(np.stack([yy.ravel(), xx.ravel()], axis=1), k=2)
    return ((d[:, 1] - d[:, 0]) < width).reshape(h, w)


def jitter(rng: np.random.Generator, color: tuple[float, ...], amount: float = 0.04) -> tuple[float, ...]:
    return tuple(float(np.clip(c + rng.normal(0, amount), 0, 1)) for c in color)


def coarse_random(rng: np.random.Generator, h: int, w: int, k: float) -> np.ndarray:
    """Uniform noise drawn on a grid k times coarser, nearest-upsampled: per-pixel speckle at any scale."""
    gh, gw = max(1, int(np.ceil(h / k))), max(1, int(np.ceil(w / k)))
    small = rng.random((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.NEAREST), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Pathology (H&E-like) textures: render(rng, h, w, unit) with features sized for a `unit`-px field
# (64 px = about 128 µm, an NCT-CRC-HE tile's field of view), so a texture looks the same whether it
# fills one demo image or a large region of a slide.
# --------------------------------------------------------------------------------------------------
EOSIN = (0.93, 0.62, 0.76)
HEMA = (0.33, 0.17, 0.50)
PALE = (0.97, 0.92, 0.95)
FAT = (0.95, 0.70, 0.85)  # adipocyte lumens, eosin-tinged: tissue detection must still see fat


def _n(h: int, w: int, unit: int, per_unit: float) -> int:
    """How many features of a density of ``per_unit`` per unit field fit in h x w."""
    return int(round(per_unit * h * w / (unit * unit)))


def _base(rng: np.random.Generator, h: int, w: int, unit: int, color, noise: float = 0.06) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = jitter(rng, color)
    cy, cx = max(1, round(6 * h / unit)), max(1, round(6 * w / unit))
    img += (smooth_noise(rng, h, w, cy, cx)[..., None] - 0.5) * noise
    return img


def _adipose(rng, h, w, unit):
    k = unit / 64
    img = _base(rng, h, w, unit, FAT, 0.02)
    paint(
        img,
        voronoi_edges(rng, h, w, _n(h, w, unit, rng.uniform(6, 11)), 1.6 * k),
        jitter(rng, (0.82, 0.38, 0.62)),
    )
    paint(img, disks(rng, h, w, _n(h, w, unit, rng.uniform(2, 5)), (1.0 * k, 1.6 * k)), jitter(rng, HEMA))
    return img


def _lymphocytes(rng, h, w, unit):
    img = _base(rng, h, w, unit, (0.88, 0.60, 0.78))
    n = _n(h, w, unit, unit * unit / 22 * rng.uniform(0.8, 1.1))
    paint(img, disks(rng, h, w, n, (unit / 40, unit / 28)), jitter(rng, (0.22, 0.10, 0.40)))
    return img


def _mucus(rng, h, w, unit):
    img = _base(rng, h, w, unit, (0.64, 0.58, 0.92), 0.05)
    wisps = smooth_noise(rng, h, w, max(1, round(10 * h / unit)), max(1, round(10 * w / unit)))
    paint(img, wisps > 0.62, jitter(rng, (0.52, 0.46, 0.86)), 0.7)
    k = unit / 64
    paint(img, disks(rng, h, w, _n(h, w, unit, rng.uniform(1, 4)), (1.0 * k, 1.5 * k)), jitter(rng, HEMA))
    return img


def _smooth_muscle(rng, h, w, unit):
    k = unit / 64
    img = _base(rng, h, w, unit, (0.90, 0.45, 0.58))
    yy, xx = _grid(h, w)
    th = rng.uniform(0, np.pi)
    stripes = np.sin((xx * np.cos(th) + yy * np.sin(th)) * (2 * np.pi / (rng.uniform(4.0, 6.0) * k)))
    paint(img, stripes > 0.4, jitter(rng, (0.80, 0.32, 0.45)), 0.8)
    paint(
        img,
        disks(rng, h, w, _n(h, w, unit, unit * unit / 140), (unit / 70, unit / 50), elong=3.5, angle=th),
        jitter(rng, (0.35, 0.15, 0.45)),
    )
    return img


def _debris(rng, h, w, unit):
    img = _base(rng, h, w, unit, (0.90, 0.70, 0.78), 0.15)
    speck = coarse_random(rng, h, w, unit / 64) < 0.18
    paint(img, speck, jitter(rng, (0.55, 0.25, 0.50)), 0.85)
    paint(
        img,
        disks(rng, h, w, _n(h, w, unit, unit * unit / 120), (unit / 90, unit / 45)),
        jitter(rng, (0.45, 0.20, 0.42)),
        0.9,
    )
    return img


def _tumor_epithelium(rng, h, w, unit):
    from scipy.ndimage import binary_dilation

    img = _base(rng, h, w, unit, (0.86, 0.52, 0.70))
    lumens = disks(rng, h, w, _n(h, w, unit, rng.integers(2, 4)), (unit / 10, unit / 6))
    ring = binary_dilation(lumens, iterations=max(2, unit // 16)) & ~lumens
    nuclei = disks(rng, h, w, _n(h, w, unit, unit * unit / 30), (unit / 36, unit / 22), elong=1.4)
    paint(img, ring & nuclei, jitter(rng, (0.28, 0.10, 0.42)))
    speck = coarse_random(rng, h, w, unit / 64) < 0.5
    paint(img, nuclei & ~lumens & speck, jitter(rng, (0.38, 0.16, 0.48)), 0.8)
    paint(img, lumens, jitter(rng, PALE))
    return img


PATHOLOGY_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("adipose tissue", "path:adipose_tissue", ("fat", "adipocytes", "fatty tissue"), _adipose),
    DemoClass("lymphocytes", "path:lymphocytes", ("lymphocytic infiltrate", "lymphoid cells"), _lymphocytes),
    DemoClass("mucus", "path:mucus", ("mucin", "mucinous material"), _mucus),
    DemoClass("smooth muscle", "path:smooth_muscle", ("muscularis", "smooth muscle fibres"), _smooth_muscle),
    DemoClass("debris", "path:debris", ("necrotic debris", "cellular debris"), _debris),
    DemoClass(
        "colorectal adenocarcinoma epithelium",
        "path:colorectal_adenocarcinoma_epithelium",
        ("tumour epithelium", "colorectal adenocarcinoma", "malignant glands"),
        _tumor_epithelium,
    ),
)

PATHOLOGY_TEMPLATES_ONE = (
    "a tissue patch of {a}.",
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


def pathology_caption(rng: np.random.Generator, a: DemoClass, b: DemoClass | None) -> str:
    """A caption naming the primary class (and the secondary one when there is one)."""
    if b is None:
        return cased(str(rng.choice(PATHOLOGY_TEMPLATES_ONE)).format(a=pick_name(rng, a)))
    return cased(str(rng.choice(PATHOLOGY_TEMPLATES_TWO)).format(a=pick_name(rng, a), b=pick_name(rng, b)))


def _ellipse(rng: np.random.Generator, s: int) -> np.ndarray:
    yy, xx = _grid(s, s)
    cy, cx = rng.uniform(0.25 * s, 0.75 * s, 2)
    ry, rx = rng.uniform(0.18 * s, 0.3 * s, 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def render_pathology_tile(
    rng: np.random.Generator,
    size: int,
    primary: int,
    secondary: int | None,
    classes: tuple[DemoClass, ...] = PATHOLOGY_CLASSES,
):
    """One image (uint8 HxWx3), its mask (uint8: 1 + class index per pixel) and its two captions."""
    s = size
    render = classes[primary].render
    assert render is not None  # every pathology class renders
    img = render(rng, s, s, s)
    mask = np.full((s, s), primary + 1, dtype=np.uint8)
    if secondary is not None:
        region = _ellipse(rng, s)
        render = classes[secondary].render
        assert render is not None
        other = render(rng, s, s, s)
        img[region] = other[region]
        mask[region] = secondary + 1
    b = classes[secondary] if secondary is not None else None
    captions = [pathology_caption(rng, classes[primary], b) for _ in range(2)]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask, captions


def generate_pathology_tiles(
    out: Path, n_per_class: int, size: int, seed: int, progress: bool, secondary_p: float = 0.5
) -> Corpus:
    """Variant ``tiles``: one PNG per image; half the images show a second class in an ellipse."""
    classes = PATHOLOGY_CLASSES
    k = len(classes)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(c, i) for c in range(k) for i in range(n_per_class)]
    rows = []
    for c, i in progress_iter(jobs, len(jobs), "generating pathology demo corpus", progress):
        srng = np.random.default_rng([seed, c, i])
        sec = int((c + 1 + srng.integers(k - 1)) % k) if srng.random() < secondary_p else None
        img, mask, caps = render_pathology_tile(srng, size, c, sec, classes)
        name = f"{c:02d}_{i:05d}.png"
        save_png(out / "images" / name, img)
        save_png(out / "masks" / name, mask)
        concepts = [classes[c].concept] + ([classes[sec].concept] if sec is not None else [])
        rows.append(
            row(
                f"images/{name}",
                caps,
                classes[c].name,
                concepts,
                f"masks/{name}",
                split_of(i, n_per_class),
                classes[c].concept,
            )
        )
    return Corpus(rows, classes, {"variant": "tiles", "secondary_p": secondary_p})


# --------------------------------------------------------------------------------------------------
# Corpus assembly and caching
# --------------------------------------------------------------------------------------------------
def _card_variant(domain: str) -> str | None:
    try:
        from medvlp.domains import load_card

        return load_card(domain).demo.get("variant")
    except Exception:  # noqa: BLE001 - no card of that name: the registry default applies
        return None


def resolve_demo(domain: str, variant: str | None = None) -> tuple[str, DemoEntry]:
    """The variant and registry entry of ``domain``'s demo (``variant`` > card [demo].variant > default).

    Raises:
        ConfigError: no demo for the domain, or an unknown variant.
    """
    variants = demo_variants(domain)
    if not variants:
        raise ConfigError(
            f"no demo corpus for domain '{domain}'; demos exist for {', '.join(demo_domains())}"
        )
    chosen = variant or _card_variant(domain) or variants[0]
    if (domain, chosen) not in DEMOS:
        raise ConfigError(
            f"domain '{domain}' has no demo variant '{chosen}'; use one of {', '.join(variants)}"
        )
    return chosen, DEMOS[(domain, chosen)]


def demo_dir(domain: str, n_per_class: int, size: int, seed: int, variant: str | None = None) -> Path:
    """Cache folder of a demo corpus (its name hashes every argument and the generator version)."""
    chosen, entry = resolve_demo(domain, variant)
    key = hashlib.sha256(
        json.dumps([domain, chosen, n_per_class, size, seed, GENERATOR_VERSION, entry.version]).encode()
    ).hexdigest()[:10]
    return default_cache_dir() / "demo" / f"{domain}-{chosen}-{key}"


def _load_generator(spec: str) -> Generator:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def demo_manifest(
    domain: str,
    *,
    n_per_class: int | None = None,
    size: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    variant: str | None = None,
) -> Path:
    """Generate (once; cached) the demo corpus of ``domain`` and return its manifest path.

    Args:
        domain: ``pathology``, ``cxr``, ``dermatology`` or ``microscopy``.
        n_per_class: images (pathology ``wsi``: about this many tiles) per class, train and test together.
        size: image side in pixels (pathology ``wsi``: tile side at the demo's 2 µm/px).
        seed: the same seed gives byte-identical files.
        out_dir: write here instead of the cache folder (reused when its manifest exists).
        progress: show a progress bar.
        variant: generator variant (e.g. pathology ``wsi`` or ``tiles``); default: the card's
            ``[demo] variant``, else the domain's first.

    Returns:
        The path of ``manifest.csv`` (columns image, caption, label, concepts, mask, split, group, ...).

    Raises:
        ConfigError: no demo corpus for ``domain`` or an unknown variant.
    """
    chosen, entry = resolve_demo(domain, variant)
    n = int(n_per_class or entry.n_per_class)
    s = int(size or entry.size)
    if n < 1 or s < 16:
        raise ConfigError(f"demo corpus needs n_per_class >= 1 and size >= 16 (got {n}, {s})")
    d = Path(out_dir) if out_dir else demo_dir(domain, n, s, seed, chosen)
    manifest = d / "manifest.csv"
    if manifest.is_file():
        return manifest
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    corpus = _load_generator(entry.generator)(tmp, n, s, seed, progress)
    import pandas as pd

    df = pd.DataFrame(corpus.rows)
    df = df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]
    df.to_csv(tmp / "manifest.csv", index=False)
    (tmp / "classes.json").write_text(
        json.dumps(
            [{"index": j + 1, "name": c.name, "concept": c.concept} for j, c in enumerate(corpus.classes)],
            indent=2,
        )
    )
    info = {
        "domain": domain,
        "variant": chosen,
        "n_per_class": n,
        "size": s,
        "seed": seed,
        "generator_version": [GENERATOR_VERSION, entry.version],
        "rows": len(df),
        **corpus.info,
    }
    (tmp / "info.json").write_text(json.dumps(info, indent=2, default=str))
    d.parent.mkdir(parents=True, exist_ok=True)
    if manifest.is_file():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        if d.exists():  # an unfinished folder (no manifest): replace it
            shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    return manifest
