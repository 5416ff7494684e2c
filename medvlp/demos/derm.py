"""Synthetic dermoscopy images of the seven HAM10000 diagnoses for the dermatology demo corpus.

Skin of six Fitzpatrick-like tones (recorded in the ``fitzpatrick`` column, with body site, age and
sex) carries one lesion whose look follows the dermoscopic criteria of its diagnosis:

- melanoma: asymmetric, irregular border, several colours (black, brown, blue-grey veil, red, white);
- melanocytic nevus: round, sharp border, uniform brown with a regular pigment network;
- benign keratosis: tan-yellow, sharply demarcated "stuck-on" plaque with ridges, milia-like cysts
  and comedo-like openings;
- basal cell carcinoma: pearly pink nodule with arborizing vessels and blue-grey ovoid nests;
- vascular lesion: red to purple lobules (lacunae) separated by pale septa;
- dermatofibroma: small light-brown papule with a central white patch and a delicate peripheral network;
- actinic keratosis: ill-defined erythematous patch with white scale (strawberry pattern).

Images are JPEG (as dermoscopy collections are); masks hold 0 on skin and 1 + the class index on the lesion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medvlp.demos.corpora import (
    Corpus,
    DemoClass,
    cased,
    demo_jobs,
    disks,
    jitter,
    paint,
    pick_name,
    row,
    save_png,
    smooth_noise,
    split_of,
    voronoi_edges,
)

# Names and concept ids of the card's ham10000 label set.
CLASSES: tuple[DemoClass, ...] = (
    DemoClass("actinic keratosis", "derm:actinic_keratosis", ("solar keratosis", "actinic keratoses")),
    DemoClass("basal cell carcinoma", "derm:basal_cell_carcinoma", ("BCC", "basal cell epithelioma")),
    DemoClass(
        "benign keratosis", "derm:benign_keratosis", ("seborrheic keratosis", "benign keratosis-like lesion")
    ),
    DemoClass("dermatofibroma", "derm:dermatofibroma", ("benign fibrous histiocytoma",)),
    DemoClass("melanoma", "derm:melanoma", ("malignant melanoma", "cutaneous melanoma")),
    DemoClass("melanocytic nevus", "derm:melanocytic_nevus", ("mole", "benign nevus", "melanocytic nevi")),
    DemoClass("vascular lesion", "derm:vascular_lesion", ("angioma", "cherry angioma", "haemangioma")),
)

# Features drawn per class: (phrase for captions, concept id).
FEATURES: dict[int, tuple[tuple[str, str], ...]] = {
    0: (
        ("erythema", "derm:erythema"),
        ("white scale", "derm:scale"),
        ("a strawberry pattern", "derm:strawberry_pattern"),
    ),
    1: (
        ("a pearly appearance", "derm:pearly_appearance"),
        ("arborizing vessels", "derm:arborizing_vessels"),
        ("blue-grey ovoid nests", "derm:blue_gray_ovoid_nests"),
    ),
    2: (
        ("a stuck-on appearance", "derm:stuck_on_appearance"),
        ("milia-like cysts", "derm:milia_like_cysts"),
        ("comedo-like openings", "derm:comedo_like_openings"),
        ("fissures and ridges", "derm:fissures_and_ridges"),
    ),
    3: (
        ("a central white patch", "derm:central_white_patch"),
        ("a peripheral delicate network", "derm:peripheral_delicate_network"),
    ),
    4: (
        ("asymmetry", "derm:asymmetry"),
        ("an irregular border", "derm:border_irregularity"),
        ("colour variegation", "derm:colour_variegation"),
        ("a blue-white veil", "derm:blue_white_veil"),
        ("irregular dots and globules", "derm:irregular_dots_and_globules"),
    ),
    5: (
        ("symmetry", "derm:symmetry"),
        ("a sharp border", "derm:sharp_border"),
        ("a regular pigment network", "derm:typical_pigment_network"),
        ("uniform brown colour", "derm:brown_colour"),
    ),
    6: (("red lacunae", "derm:red_lacunae"), ("red to purple lobules", "derm:red_colour")),
}

SKIN = {  # Fitzpatrick-like type -> base RGB
    1: (0.95, 0.83, 0.76),
    2: (0.91, 0.75, 0.63),
    3: (0.82, 0.63, 0.49),
    4: (0.69, 0.50, 0.36),
    5: (0.50, 0.35, 0.25),
    6: (0.34, 0.23, 0.17),
}
SITES = (
    ("back", "derm:back"),
    ("chest", "derm:chest"),
    ("face", "derm:face"),
    ("upper extremity", "derm:upper_extremity"),
    ("lower extremity", "derm:lower_extremity"),
    ("abdomen", "derm:abdomen"),
)


def _shade(rng: np.random.Generator, color: tuple[float, float, float]) -> tuple[float, ...]:
    """A lighter or darker version of a pigment colour (hue kept: no green-tinged browns)."""
    f = rng.uniform(0.85, 1.15)
    return tuple(float(min(1.0, v * f)) for v in color)


def _shape(
    rng: np.random.Generator, s: int, radius: float, irregular: float, harmonics: int, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distance map (1 at the border) of a lesion whose radius varies with the angle."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cy, cx = s / 2 + rng.normal(0, s * 0.04, 2)
    th = np.arctan2(yy - cy, xx - cx)
    r = np.ones_like(th)
    for k in range(2, 2 + harmonics):
        r += irregular * rng.normal(0, 1) / k * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    # Asymmetry: one side bulges.
    r *= 1 + offset * np.cos(th - rng.uniform(0, 2 * np.pi))
    d = np.hypot(yy - cy, xx - cx) / (radius * s * np.clip(r, 0.5, 1.6))
    return d, th


def _vessels(rng: np.random.Generator, s: int, inside: np.ndarray, n_trunks: int, width: float) -> np.ndarray:
    """Branching (arborizing) vessels: random trunks that fork and thin out, drawn at 2x and reduced."""
    big = Image.new("L", (2 * s, 2 * s), 0)
    draw = ImageDraw.Draw(big)
    ys, xs = np.nonzero(inside)
    if len(ys) == 0:
        return np.zeros((s, s), dtype=np.float32)

    def branch(x: float, y: float, ang: float, length: float, w: float, depth: int) -> None:
        steps = 5
        for _ in range(steps):
            nx = x + np.cos(ang) * length / steps
            ny = y + np.sin(ang) * length / steps
            draw.line([(2 * x, 2 * y), (2 * nx, 2 * ny)], fill=255, width=max(1, int(round(2 * w))))
            x, y, ang = nx, ny, ang + rng.normal(0, 0.25)
        if depth > 0:
            for turn in (-0.6, 0.6):
                branch(x, y, ang + turn + rng.normal(0, 0.2), length * 0.65, w * 0.7, depth - 1)

    for _ in range(n_trunks):
        k = int(rng.integers(len(ys)))
        branch(float(xs[k]), float(ys[k]), rng.uniform(0, 2 * np.pi), s * rng.uniform(0.12, 0.2), width, 2)
    small = big.resize((s, s), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0 * inside


def render_derm(rng: np.random.Generator, size: int, cls: int, tone: int) -> tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like image (float RGB) and the lesion mask (bool)."""
    s = size
    skin = np.asarray(jitter(rng, SKIN[tone], 0.02), dtype=np.float32)
    img = np.empty((s, s, 3), dtype=np.float32)
    img[:] = skin
    img *= 1 + (smooth_noise(rng, s, s, 5)[..., None] - 0.5) * 0.10
    img *= 1 - 0.06 * (voronoi_edges(rng, s, s, 40, 0.8)[..., None])  # skin lines
    img *= 1 + (rng.random((s, s, 1)).astype(np.float32) - 0.5) * 0.04
    dark = lambda c, f: tuple(float(v) for v in np.asarray(c) * f)  # noqa: E731  # pigment over darker skin
    depth = 1.0 - 0.25 * (tone - 1) / 5  # darker skin: lesions darker too

    if cls == 4:  # melanoma
        d, _ = _shape(rng, s, rng.uniform(0.28, 0.38), 0.45, 7, offset=rng.uniform(0.15, 0.3))
        lesion = d <= 1
        paint(img, np.clip((1 - d) * 8, 0, 1), dark((0.36, 0.21, 0.13), depth))
        zones = smooth_noise(rng, s, s, 5)
        zones2 = smooth_noise(rng, s, s, 6)
        paint(img, lesion & (zones > 0.62), dark((0.10, 0.07, 0.07), depth))
        paint(img, lesion & (zones < 0.3), (0.42, 0.48, 0.60), 0.85)  # blue-white veil
        paint(img, lesion & (zones2 > 0.7) & (zones <= 0.62), (0.72, 0.36, 0.34), 0.8)
        paint(img, lesion & (zones2 < 0.22), (0.86, 0.80, 0.80), 0.7)  # regression
        dots = disks(rng, s, s, int(rng.integers(6, 14)), (s / 90, s / 45)) & (d < 1.15)
        paint(img, dots, (0.08, 0.05, 0.05))
    elif cls == 5:  # nevus
        d, _ = _shape(rng, s, rng.uniform(0.18, 0.27), 0.06, 2)
        lesion = d <= 1
        brown = dark(_shade(rng, (0.45, 0.29, 0.17)), depth)
        paint(img, np.clip((1 - d) * 12, 0, 1), brown)
        net = voronoi_edges(rng, s, s, int(s * s / 60), 0.9) & lesion
        paint(img, net, dark((0.30, 0.18, 0.10), depth), 0.7)
    elif cls == 2:  # benign (seborrheic) keratosis
        d, _ = _shape(rng, s, rng.uniform(0.25, 0.34), 0.12, 3)
        lesion = d <= 1
        paint(img, np.clip((1 - d) * 20, 0, 1), dark(_shade(rng, (0.66, 0.52, 0.32)), depth**0.5))
        ridges = np.abs(smooth_noise(rng, s, s, 9) - 0.5) < 0.06
        paint(img, ridges & lesion, dark((0.45, 0.33, 0.20), depth), 0.8)
        paint(
            img, disks(rng, s, s, int(rng.integers(4, 9)), (s / 70, s / 45)) & (d < 0.9), (0.97, 0.96, 0.90)
        )
        paint(
            img, disks(rng, s, s, int(rng.integers(3, 7)), (s / 80, s / 50)) & (d < 0.9), (0.20, 0.14, 0.09)
        )
    elif cls == 1:  # basal cell carcinoma
        d, _ = _shape(rng, s, rng.uniform(0.24, 0.32), 0.15, 3)
        lesion = d <= 1
        soft = np.clip((1 - d) * 4, 0, 1)
        paint(img, soft, (0.93, 0.76, 0.76), 0.9)
        paint(img, np.clip(1 - d / 0.45, 0, 1), (0.99, 0.93, 0.93), 0.6)  # pearly sheen
        paint(img, _vessels(rng, s, d < 0.9, int(rng.integers(2, 4)), s / 110), (0.78, 0.10, 0.16))
        nests = disks(rng, s, s, int(rng.integers(2, 5)), (s / 40, s / 25), elong=1.6) & (d < 0.85)
        paint(img, nests, (0.42, 0.47, 0.58), 0.85)
    elif cls == 6:  # vascular lesion
        d, _ = _shape(rng, s, rng.uniform(0.2, 0.28), 0.1, 3)
        lesion = d <= 1
        paint(img, np.clip((1 - d) * 10, 0, 1), (0.86, 0.72, 0.74), 0.8)  # pale septa
        red = jitter(rng, (0.72, 0.08, 0.16) if rng.random() < 0.5 else (0.46, 0.10, 0.32), 0.04)
        lob = disks(rng, s, s, int(s * s / 70), (s / 30, s / 18)) & (d < 0.95)
        paint(img, lob, red)
        core = disks(rng, s, s, int(s * s / 200), (s / 50, s / 30)) & lob
        paint(img, core, tuple(c * 0.7 for c in red))
    elif cls == 3:  # dermatofibroma
        d, _ = _shape(rng, s, rng.uniform(0.16, 0.22), 0.08, 2)
        lesion = d <= 1.05
        paint(img, np.clip((1.05 - d) * 6, 0, 1), dark(_shade(rng, (0.62, 0.44, 0.32)), depth), 0.85)
        net = voronoi_edges(rng, s, s, int(s * s / 50), 0.8) & (d > 0.55) & (d < 1.05)
        paint(img, net, dark((0.40, 0.26, 0.17), depth), 0.7)
        paint(img, np.clip((0.5 - d) * 6, 0, 1), (0.95, 0.92, 0.90), 0.95)  # central white patch
    else:  # actinic keratosis
        d, _ = _shape(rng, s, rng.uniform(0.28, 0.38), 0.25, 4)
        lesion = d <= 1
        paint(img, np.clip((1 - d) * 2.5, 0, 1), (0.86, 0.42, 0.40), 0.8)
        follicles = disks(rng, s, s, int(s * s / 90), (s / 110, s / 70)) & (d < 0.9)
        ring = ndimage.binary_dilation(follicles, iterations=1) & ~follicles
        paint(img, ring, (0.75, 0.25, 0.27), 0.7)
        paint(img, follicles, (0.96, 0.93, 0.90))
        scale = (smooth_noise(rng, s, s, 14) > 0.68) & (d < 0.85)
        paint(img, scale, (0.95, 0.93, 0.88), 0.75)
    # Dermoscope: round field of view with dark corners on some images, slight blur.
    if rng.random() < 0.4:
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        r = np.hypot(yy - s / 2, xx - s / 2) / (s / 2)
        img *= np.clip(1.0 - (r - 0.92) * 6, 0.08, 1)[..., None]
    img = ndimage.gaussian_filter(img, (0.5, 0.5, 0))
    return np.clip(img, 0, 1), lesion


def caption_derm(rng: np.random.Generator, cls: int, meta: dict) -> tuple[str, list[str]]:
    c = CLASSES[cls]
    feats = list(FEATURES[cls])
    k = int(rng.integers(1, len(feats) + 1))
    chosen = [feats[j] for j in sorted(rng.choice(len(feats), size=k, replace=False))]
    phrase = chosen[0][0] if k == 1 else ", ".join(f for f, _ in chosen[:-1]) + " and " + chosen[-1][0]
    name = pick_name(rng, c)
    template = str(
        rng.choice(
            (
                "dermoscopic image of {n} showing {f}.",
                "{n} on the {site}: {f}.",
                "a skin lesion with {f}, diagnosed as {n}.",
                "dermoscopy: {f}. Diagnosis: {n}.",
                "{n}, {site}, Fitzpatrick type {ft} skin; {f}.",
                "close-up of {n} with {f}.",
            )
        )
    )
    text = template.format(n=name, f=phrase, site=meta["site"], ft=meta["fitzpatrick_roman"])
    return cased(text), [c.concept] + [cid for _, cid in feats]


ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}


def generate(out: Path, n_per_class: int, size: int, seed: int, progress: bool) -> Corpus:
    """The dermatology demo: ``n_per_class`` JPEG images per HAM10000 diagnosis, lesion masks, metadata."""
    rows = []
    for c, i in demo_jobs(out, len(CLASSES), n_per_class, "dermatology", progress):
        rng = np.random.default_rng([seed, 202, c, i])
        tone = int(rng.integers(1, 7))
        site, site_id = SITES[int(rng.integers(len(SITES)))]
        meta = {
            "fitzpatrick": tone,
            "fitzpatrick_roman": ROMAN[tone],
            "site": site,
            "age": int(np.clip(rng.normal(60 if c in (0, 1, 4) else 45, 14), 18, 90)),
            "sex": str(rng.choice(("female", "male"))),
        }
        img, lesion = render_derm(rng, size, c, tone)
        caps, concepts = [], []
        for _ in range(2):
            text, cids = caption_derm(rng, c, meta)
            caps.append(text)
            concepts = cids
        concepts = concepts + [site_id, f"derm:fitzpatrick_{tone}", "derm:dermoscopy"]
        name = f"{c:02d}_{i:05d}"
        Image.fromarray((img * 255).round().astype(np.uint8)).save(out / "images" / f"{name}.jpg", quality=92)
        save_png(out / "masks" / f"{name}.png", (lesion * (c + 1)).astype(np.uint8))
        rows.append(
            row(
                f"images/{name}.jpg",
                caps,
                CLASSES[c].name,
                concepts,
                f"masks/{name}.png",
                split_of(i, n_per_class),
                CLASSES[c].concept,
                lesion_id=f"DEMO_L{c * n_per_class + i:05d}",
                fitzpatrick=tone,
                localization=site,
                age=meta["age"],
                sex=meta["sex"],
            )
        )
    return Corpus(rows, CLASSES, {"format": "JPEG quality 92", "skin_tones": "Fitzpatrick-like types I-VI"})
