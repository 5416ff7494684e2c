"""Synthetic four-channel fluorescence fields for the microscopy demo corpus.

Each field shows two to four cells, stored as a 16-bit TIFF stack (C, Y, X) in the card's channel
order: DAPI (nuclei), GFP (the protein of interest, whose subcellular location is the class), mCherry
(a dim whole-cell stain outlining the cells) and Cy5 (not stained: a flat camera offset, which the
multichannel reader leaves black). The demo is read through :func:`medvlp.io.read_image` with the
card's channel colours, so it exercises the multichannel reader end to end.

Classes (the card's ``organelles`` locations, Human Protein Atlas-style): nucleus (nucleoplasm fill),
nucleoli (bright intranuclear dots), mitochondria (punctate and tubular cytoplasmic network), plasma
membrane (cell rim), actin filaments (stress fibres), cytosol (diffuse cytoplasm). Masks hold 0 on the
background, 1 + the class index where the protein is, and the cells elsewhere are left 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from medvlp.demos.corpora import (
    Corpus,
    DemoClass,
    cased,
    demo_jobs,
    disks,
    pick_name,
    row,
    save_png,
    smooth_noise,
    split_of,
)

CLASSES: tuple[DemoClass, ...] = (
    DemoClass("nucleus", "micro:nucleus", ("nucleoplasm", "nuclei")),
    DemoClass("nucleolus", "micro:nucleolus", ("nucleoli",)),
    DemoClass("mitochondria", "micro:mitochondrion", ("mitochondrion", "mitochondrial network")),
    DemoClass("plasma membrane", "micro:plasma_membrane", ("cell membrane", "cell surface")),
    DemoClass("actin filaments", "micro:actin_filaments", ("F-actin", "stress fibres", "microfilaments")),
    DemoClass("cytosol", "micro:cytosol", ("diffuse cytoplasm", "cytoplasm")),
)

PATTERNS = {  # how the staining looks, for captions
    0: ("fills the nuclei", "homogeneous nuclear staining", "nucleoplasmic signal overlapping DAPI"),
    1: ("bright dots inside the nuclei", "one to three intranuclear foci per cell", "nucleolar staining"),
    2: (
        "punctate and tubular cytoplasmic staining",
        "a network of short tubules around the nucleus",
        "granular perinuclear signal",
    ),
    3: ("a thin rim at the cell border", "outlines of the cells", "staining along the cell periphery"),
    4: ("straight fibres across the cells", "parallel stress fibres", "filamentous cytoplasmic staining"),
    5: (
        "diffuse cytoplasmic staining that spares the nucleus",
        "uniform signal throughout the cytoplasm",
        "even cytoplasmic staining",
    ),
}
CELL_LINES = (("U2OS cells", "micro:u2os"), ("HeLa cells", "micro:hela"), ("fibroblasts", "micro:fibroblast"))
OFFSET = 100.0  # camera offset of the 16-bit channels


def _cells(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray, list[tuple[float, ...]]]:
    """Label images of cells and their nuclei (0 = background) and the cells' geometry."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    n = int(rng.integers(2, 5))
    cells = np.zeros((s, s), dtype=np.int32)
    nuclei = np.zeros((s, s), dtype=np.int32)
    geo: list[tuple[float, ...]] = []
    for k in range(1, n + 1):
        for _ in range(20):  # avoid heavy overlap between cells
            cy, cx = rng.uniform(0.15 * s, 0.85 * s, 2)
            if all(np.hypot(cy - g[0], cx - g[1]) > 0.3 * s for g in geo):
                break
        r = s * rng.uniform(0.17, 0.24)
        th = rng.uniform(0, np.pi)
        el = rng.uniform(1.1, 1.6)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        wobble = 1 + 0.12 * (smooth_noise(rng, s, s, 4) - 0.5)
        cell = ((u / (r * el)) ** 2 + (v / r) ** 2) <= wobble
        cells[cell & (cells == 0)] = k
        ny, nx = cy + rng.normal(0, r * 0.12), cx + rng.normal(0, r * 0.12)
        nr = r * rng.uniform(0.38, 0.48)
        nuc = (((xx - nx) * np.cos(th) + (yy - ny) * np.sin(th)) / (nr * 1.15)) ** 2 + (
            (-(xx - nx) * np.sin(th) + (yy - ny) * np.cos(th)) / nr
        ) ** 2 <= 1
        nuclei[nuc & (cells == k)] = k
        geo.append((cy, cx, r, th, el, ny, nx, nr))
    return cells, nuclei, geo


def render_field(rng: np.random.Generator, s: int, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """A (4, s, s) float stack of photon counts and the mask of where the protein is."""
    cells, nuclei, geo = _cells(rng, s)
    cyto = (cells > 0) & (nuclei == 0)
    nuc = nuclei > 0
    dapi = nuc * (1.0 + 0.35 * (smooth_noise(rng, s, s, 16) - 0.5))
    gfp: np.ndarray = np.zeros((s, s), dtype=np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    expr = {k: rng.uniform(0.5, 1.0) for k in range(1, len(geo) + 1)}  # per-cell expression level
    level = np.vectorize(lambda k: expr.get(int(k), 0.0))(cells).astype(np.float32)
    if cls == 0:
        where = nuc
        gfp = where * (0.9 + 0.2 * smooth_noise(rng, s, s, 12))
    elif cls == 1:
        where = np.zeros((s, s), dtype=bool)
        for k, (*_g, ny, nx, nr) in enumerate(geo, start=1):
            for _ in range(int(rng.integers(1, 4))):  # one to three nucleoli per nucleus
                a, rr = rng.uniform(0, 2 * np.pi), nr * rng.uniform(0, 0.5)
                dot = np.hypot(yy - (ny + rr * np.sin(a)), xx - (nx + rr * np.cos(a))) <= max(
                    1.0, s / 45 * rng.uniform(0.9, 1.4)
                )
                where |= dot & (nuclei == k)
        gfp = where * 1.0
        dapi = dapi * np.where(where, 0.55, 1.0)  # nucleoli exclude DAPI
    elif cls == 2:
        tubules = disks(rng, s, s, int(s * s / 14), (s / 130, s / 90), elong=3.0)
        near = np.zeros((s, s), dtype=bool)
        for cy, cx, r, *_ in geo:
            near |= np.hypot(yy - cy, xx - cx) < r * 0.95
        where = tubules & cyto & near
        gfp = where * 1.0
    elif cls == 3:
        inner = ndimage.binary_erosion(cells > 0, iterations=max(1, s // 48))
        edge = (cells > 0) & ~inner
        # Borders between touching cells are membranes too.
        gy, gx = np.gradient(cells.astype(np.float32))
        edge |= (np.hypot(gy, gx) > 0) & (cells > 0)
        where = edge
        gfp = where * 1.0
    elif cls == 4:
        where = np.zeros((s, s), dtype=bool)
        for k, (cy, cx, _r, th, *_rest) in enumerate(geo, start=1):
            ang = th + rng.normal(0, 0.2)
            proj = (xx - cx) * -np.sin(ang) + (yy - cy) * np.cos(ang)
            period = s * rng.uniform(0.045, 0.065)
            fib = np.abs(((proj / period + rng.uniform(0, 1)) % 1.0) - 0.5) < 0.12
            where |= fib & (cells == k)
        where &= ~ndimage.binary_dilation(nuc, iterations=1) | (rng.random((s, s)) < 0.3)
        gfp = where * (0.8 + 0.4 * smooth_noise(rng, s, s, 10))
    else:
        where = cyto
        gfp = where * (0.85 + 0.3 * smooth_noise(rng, s, s, 8))
    gfp = gfp * level
    whole = (cells > 0) * (0.6 + 0.4 * smooth_noise(rng, s, s, 6)) + nuc * 0.3
    psf = 0.7 * s / 64
    stack = np.stack([dapi, gfp, whole, np.zeros((s, s))]).astype(np.float32)
    stack = ndimage.gaussian_filter(stack, (0, psf, psf))
    peak = np.array([rng.uniform(1500, 3000), rng.uniform(800, 2500), rng.uniform(400, 900), 0.0], np.float32)
    counts = stack * peak[:, None, None] + np.array([30.0, 40.0, 40.0, 0.0], np.float32)[:, None, None]
    counts = rng.poisson(np.clip(counts, 0, None)).astype(np.float32)
    counts[3] = 0.0  # Cy5 not stained
    return counts + OFFSET, where.astype(bool)


def caption_micro(rng: np.random.Generator, cls: int, line: str) -> str:
    c = CLASSES[cls]
    name = pick_name(rng, c)
    pattern = str(rng.choice(PATTERNS[cls]))
    template = str(
        rng.choice(
            (
                "immunofluorescence of {line}: the protein localises to the {n}, {p}; nuclei in DAPI.",
                "{n} staining in green ({p}), DAPI in blue.",
                "fluorescence microscopy image of {n}: {p}.",
                "{line}, GFP-tagged protein in the {n}; {p}.",
                "confocal image showing {n} ({p}).",
            )
        )
    )
    return cased(template.format(n=name, p=pattern, line=line))


def write_tiff(path: Path, stack: np.ndarray) -> None:
    """A (C, Y, X) uint16 stack with channel names in the ImageJ-free tifffile metadata."""
    import tifffile

    tifffile.imwrite(
        path,
        np.clip(np.rint(stack), 0, 65535).astype(np.uint16),
        photometric="minisblack",
        metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP", "mCherry", "Cy5"]}},
        compression="zlib",
        software="medvlp demo",
    )


def generate(out: Path, n_per_class: int, size: int, seed: int, progress: bool) -> Corpus:
    """The microscopy demo: ``n_per_class`` four-channel TIFF fields per subcellular location."""
    rows = []
    for c, i in demo_jobs(out, len(CLASSES), n_per_class, "microscopy", progress):
        rng = np.random.default_rng([seed, 303, c, i])
        stack, where = render_field(rng, size, c)
        line, line_id = CELL_LINES[int(rng.integers(len(CELL_LINES)))]
        caps = [caption_micro(rng, c, line) for _ in range(2)]
        name = f"{c:02d}_{i:05d}"
        write_tiff(out / "images" / f"{name}.tif", stack)
        save_png(out / "masks" / f"{name}.png", (where * (c + 1)).astype(np.uint8))
        concepts = [CLASSES[c].concept, "micro:dapi", "micro:gfp", "micro:immunofluorescence", line_id]
        rows.append(
            row(
                f"images/{name}.tif",
                caps,
                CLASSES[c].name,
                concepts,
                f"masks/{name}.png",
                split_of(i, n_per_class),
                CLASSES[c].concept,
                cell_line=line,
                channels="DAPI;GFP;mCherry;Cy5",
            )
        )
    return Corpus(
        rows, CLASSES, {"format": "16-bit TIFF, axes CYX, channels DAPI, GFP, mCherry, Cy5 (unstained)"}
    )
