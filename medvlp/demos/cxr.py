"""Synthetic chest radiographs for the CXR demo corpus, written as DICOM.

Each image is a frontal chest film drawn as an attenuation map: body outline, lungs with vessel-like
markings, mediastinum and spine, heart, ribs, clavicles and hemidiaphragms. One finding per image:

- ``normal``;
- ``pneumonia``: patchy consolidation in one lobe (sometimes with air bronchograms);
- ``pleural effusion``: basal fluid with a meniscus rising laterally, blunting the costophrenic angle;
- ``cardiomegaly``: cardiothoracic ratio about 0.6 instead of about 0.45;
- ``pneumothorax``: the lung retracted from the chest wall, a lucent rim without lung markings and a
  visible visceral pleural line.

Files are 12-bit DICOM (DX, explicit VR little endian) with window centre/width; every other image is
MONOCHROME1 (stored inverted) and every third has a modality rescale, so the demo goes through the
DICOM reader's rescale -> window -> inversion path. Masks hold 0 outside the body, 1 for normal
anatomy and 1 + the class index over the finding.
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
    pick_name,
    row,
    save_png,
    smooth_noise,
    split_of,
)

CLASSES: tuple[DemoClass, ...] = (
    DemoClass(
        "normal",
        "cxr:normal_chest",
        ("normal chest radiograph", "clear lungs", "no acute cardiopulmonary process"),
    ),
    DemoClass(
        "pneumonia", "cxr:pneumonia", ("pneumonic consolidation", "lobar pneumonia", "infectious infiltrate")
    ),
    DemoClass("pleural effusion", "cxr:pleural_effusion", ("effusion", "pleural fluid", "hydrothorax")),
    DemoClass(
        "cardiomegaly",
        "cxr:cardiomegaly",
        ("enlarged heart", "enlarged cardiac silhouette", "cardiac enlargement"),
    ),
    DemoClass("pneumothorax", "cxr:pneumothorax", ("PTX", "air in the pleural space", "collapsed lung")),
)

LOBES = {  # (side, zone) -> (name, concept id)
    ("right", "upper"): ("right upper lobe", "cxr:right_upper_lobe"),
    ("right", "mid"): ("right middle lobe", "cxr:right_middle_lobe"),
    ("right", "lower"): ("right lower lobe", "cxr:right_lower_lobe"),
    ("left", "upper"): ("left upper lobe", "cxr:left_upper_lobe"),
    ("left", "mid"): ("lingula", "cxr:lingula"),
    ("left", "lower"): ("left lower lobe", "cxr:left_lower_lobe"),
}

VIEWS = ("PA", "AP")


def _lung_masks(yy: np.ndarray, xx: np.ndarray, g: dict) -> tuple[np.ndarray, np.ndarray]:
    """Right (image left) and left lung fields: rounded apices, sharp lateral costophrenic angles."""
    out = []
    for side in (-1, 1):
        cx = 0.5 + side * g["lung_dx"]
        rx, top, base = g["lung_rx"], g["apex"], g["base"] + (0.02 if side > 0 else 0.0)
        t = np.clip((yy - top) / (base - top), 0, 1)
        half = rx * np.sqrt(np.clip(t, 0, 1)) ** 0.6 * (1.0 + 0.15 * t)  # widens from apex to base
        # The dome of the hemidiaphragm: the lung base is highest medially-centrally, lowest laterally.
        u = (xx - cx) * side / rx  # -1 medial .. +1 lateral
        dome = base - g["dome"] * (1 - np.clip(u, -1, 1) ** 2) - 0.03 * (u < 0)
        out.append((np.abs(xx - cx) <= half) & (yy >= top) & (yy <= dome))
    return out[0], out[1]


def render_cxr(rng: np.random.Generator, size: int, cls: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Attenuation image (float, ~0..1, bright = dense), mask and what was drawn."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    g = {
        "lung_dx": rng.uniform(0.19, 0.22),
        "lung_rx": rng.uniform(0.15, 0.17),
        "apex": rng.uniform(0.10, 0.14),
        "base": rng.uniform(0.72, 0.78),
        "dome": rng.uniform(0.06, 0.10),
    }
    # Small positioning differences between patients and films.
    shift_x, shift_y = rng.normal(0, 0.012, 2)
    xx_p, yy_p = xx - shift_x, yy - shift_y
    body = ((xx_p - 0.5) / rng.uniform(0.44, 0.48)) ** 2 + ((yy_p - 0.62) / 0.62) ** 2 <= 1.0
    body |= (yy_p > 0.25) & (np.abs(xx_p - 0.5) < 0.44)
    img = np.where(body, 0.42, 0.02).astype(np.float32)
    img += body * (smooth_noise(rng, s, s, 4) - 0.5) * 0.05
    right, left = _lung_masks(yy_p, xx_p, g)
    lungs = right | left
    # Lung markings: a ridged-noise vessel network, denser and brighter towards the hila.
    hilum_dist = np.minimum(
        np.hypot(xx_p - (0.5 - 0.1), yy_p - 0.45), np.hypot(xx_p - (0.5 + 0.1), yy_p - 0.45)
    )
    ridge = np.abs(smooth_noise(rng, s, s, 10) - 0.5)
    markings = np.clip(1 - ridge / 0.05, 0, 1) * np.clip(1.0 - hilum_dist / 0.35, 0.15, 1.0)
    lung_val = 0.13 + 0.09 * markings
    img = np.where(lungs, lung_val, img)
    # Mediastinum, spine, trachea.
    med = (np.abs(xx_p - 0.5) < 0.075 + 0.03 * yy_p) & (yy_p > 0.05) & body
    img = np.where(med & ~lungs, 0.62, img)
    spine = (np.abs(xx_p - 0.5) < 0.035) & body
    img += spine * 0.08 * (0.6 + 0.4 * (np.sin(yy_p * s / 3.2) > -0.2))
    trachea = (np.abs(xx_p - 0.5) < 0.018) & (yy_p > 0.02) & (yy_p < 0.32)
    img = np.where(trachea, img - 0.22, img)
    # Heart: an ellipse low in the chest, mostly to the patient's left (image right).
    ctr = rng.uniform(0.40, 0.47) if cls != 3 else rng.uniform(0.58, 0.66)
    thorax_w = 2 * (g["lung_dx"] + g["lung_rx"] * 1.15)
    heart_rx = ctr * thorax_w / 2
    hcx = 0.5 + heart_rx * rng.uniform(0.22, 0.32)
    hcy = g["base"] - rng.uniform(0.10, 0.13)
    heart_ry = rng.uniform(0.11, 0.13) * (1.15 if cls == 3 else 1.0)
    heart = (((xx_p - hcx) / heart_rx) ** 2 + ((yy_p - hcy) / heart_ry) ** 2 <= 1.0) & (
        yy_p < g["base"] + 0.02
    )
    img = np.where(heart, np.maximum(img, 0.60), img)
    # Below the diaphragm: abdomen soft tissue.
    below = body & (yy_p > g["base"] - g["dome"]) & ~lungs & ~heart & (np.abs(xx_p - 0.5) > 0.08)
    img = np.where(below, np.maximum(img, 0.50), img)
    # Ribs: posterior arcs across each hemithorax, clavicles at the top.
    rib_phase = rng.uniform(0, 1)
    spacing = rng.uniform(0.075, 0.085)
    arc = yy_p - 1.1 * (np.abs(xx_p - 0.5) - 0.05).clip(0) ** 1.6
    ribs = (np.mod(arc / spacing + rib_phase, 1.0) < 0.32) & body & (yy_p > 0.1) & (yy_p < g["base"])
    img += ribs * np.where(lungs, 0.10, 0.05)
    clav = (
        (np.abs(yy_p - (0.13 + 0.12 * (xx_p - 0.5) ** 2 * 4)) < 0.014)
        & (np.abs(xx_p - 0.5) > 0.05)
        & (np.abs(xx_p - 0.5) < 0.33)
    )
    img += clav * 0.16

    mask = body.astype(np.uint8)  # 1: normal anatomy, 0: air around the patient
    drawn: dict = {"view": str(rng.choice(VIEWS)), "ctr": round(float(ctr), 2)}
    side = str(rng.choice(("right", "left")))
    lung_side = right if side == "right" else left
    drawn["side"] = side
    if cls == 1:  # consolidation in one lobe
        zone = str(rng.choice(("upper", "mid", "lower")))
        lobe, lobe_id = LOBES[(side, zone)]
        ys, xs = np.nonzero(lung_side)
        y0, y1 = ys.min() / s, ys.max() / s
        cy = {"upper": y0 + 0.25 * (y1 - y0), "mid": y0 + 0.52 * (y1 - y0), "lower": y0 + 0.78 * (y1 - y0)}[
            zone
        ]
        cx = xs.mean() / s + rng.normal(0, 0.02)
        blob = ((xx_p - cx) / rng.uniform(0.09, 0.13)) ** 2 + (
            (yy_p - cy) / rng.uniform(0.08, 0.12)
        ) ** 2 <= 1
        patchy = smooth_noise(rng, s, s, 12) > rng.uniform(0.25, 0.4)
        inside = lung_side & ~heart
        region = ndimage.binary_opening(blob & patchy & inside, iterations=1)
        region |= blob & inside & (smooth_noise(rng, s, s, 5) > 0.35)
        soft = ndimage.gaussian_filter(region.astype(np.float32), 1.2) * inside
        img = img + soft * (0.24 + 0.08 * smooth_noise(rng, s, s, 8))
        bronchograms = rng.random() < 0.5
        if bronchograms:
            air = (np.abs(smooth_noise(rng, s, s, 9) - 0.5) < 0.025) & region
            img = np.where(air, img - 0.18, img)
        mask[region] = 2
        drawn.update(lobe=lobe, lobe_id=lobe_id, bronchograms=bronchograms)
    elif cls == 2:  # effusion: basal fluid, meniscus rising laterally
        bilateral = rng.random() < 0.3
        sides = ("right", "left") if bilateral else (side,)
        fluid = np.zeros_like(lungs)
        for sd in sides:
            lm = right if sd == "right" else left
            sgn = -1 if sd == "right" else 1
            cx = 0.5 + sgn * g["lung_dx"]
            level = g["base"] - rng.uniform(0.12, 0.22)
            lateral = np.clip((xx_p - cx) * sgn / g["lung_rx"], -1, 1)
            meniscus = level - 0.07 * (lateral + 1) ** 1.5  # higher against the lateral chest wall
            fluid |= lm & (yy_p >= meniscus)
            # The fluid also hides the diaphragm dome and the costophrenic angle beneath it.
            fluid |= (
                (np.abs(xx_p - cx) < g["lung_rx"] * 1.1)
                & (yy_p >= meniscus)
                & (yy_p <= g["base"] + 0.02)
                & body
                & ~heart
            )
        img = np.where(fluid, np.maximum(img, 0.52 + 0.04 * (yy_p - 0.5)), img)
        mask[fluid] = 3
        drawn.update(bilateral=bilateral)
    elif cls == 3:
        mask[heart] = 4
    elif cls == 4:  # pneumothorax: the lung retracted towards its hilum
        f = rng.uniform(0.66, 0.78)
        hx, hy = 0.5 + (-1 if side == "right" else 1) * 0.1, g["base"] - 0.05
        src_x = hx + (xx_p - hx) / f
        src_y = hy + (yy_p - hy) / (0.5 + 0.5 * f)
        sx = np.clip((src_x + shift_x) * s, 0, s - 1).astype(int)
        sy = np.clip((src_y + shift_y) * s, 0, s - 1).astype(int)
        collapsed = lung_side[sy, sx] & lung_side
        lucent = lung_side & ~collapsed
        pleural_line = ndimage.binary_dilation(collapsed, iterations=1) & lucent
        img = np.where(collapsed, img + 0.06, img)
        img = np.where(lucent, 0.035, img)
        img = np.where(pleural_line, 0.34, img)
        img += ribs * lucent * 0.08
        mask[lucent] = 5
        drawn.update(apical=True)
    # Quantum noise and exposure.
    img = img * rng.uniform(0.92, 1.08) + rng.normal(0, 0.012, img.shape).astype(np.float32)
    img = ndimage.gaussian_filter(img, 0.6)
    return np.clip(img, 0, 1).astype(np.float32), mask, drawn


def caption_cxr(rng: np.random.Generator, cls: int, drawn: dict) -> tuple[str, list[str]]:
    """A report-style caption naming the finding and what is visible, and its concept ids."""
    c = CLASSES[cls]
    name = pick_name(rng, c)
    view = drawn["view"]
    head = str(
        rng.choice(
            (
                f"{view} chest radiograph: ",
                f"Frontal ({view}) chest x-ray. ",
                "Chest x-ray: ",
                "Findings: ",
                "",
            )
        )
    )
    concepts = [c.concept]
    if cls == 0:
        body = str(
            rng.choice(
                (
                    "{n}.",
                    "the lungs are clear; normal heart size. Impression: {n}.",
                    "{n}, normal cardiac silhouette.",
                    "clear lungs, sharp costophrenic angles. {n}.",
                )
            )
        ).format(n=name)
    elif cls == 1:
        lobe = drawn["lobe"]
        concepts += ["cxr:consolidation", drawn["lobe_id"]]
        extra = " with air bronchograms" if drawn["bronchograms"] else ""
        if drawn["bronchograms"]:
            concepts.append("cxr:air_bronchogram")
        body = str(
            rng.choice(
                (
                    "patchy consolidation in the {lobe}{x}, consistent with {n}.",
                    "{n} of the {lobe}{x}.",
                    "airspace opacity in the {lobe}{x}. Impression: {n}.",
                    "focal consolidation{x} in the {lobe}, likely {n}.",
                )
            )
        ).format(n=name, lobe=lobe, x=extra)
    elif cls == 2:
        where = "bilateral" if drawn["bilateral"] else drawn["side"]
        concepts += ["cxr:blunted_costophrenic_angle", "cxr:meniscus_sign"]
        body = str(
            rng.choice(
                (
                    "{w} {n} with a meniscus and blunting of the costophrenic angle.",
                    "blunted {w} costophrenic angle; {n}.",
                    "basal opacity with a meniscus on the {w} side, consistent with {n}.",
                    "{n}, {w}.",
                )
            )
        ).format(n=name, w=where)
    elif cls == 3:
        concepts += ["cxr:cardiac_silhouette", "cxr:cardiothoracic_ratio"]
        body = str(
            rng.choice(
                (
                    "{n}; cardiothoracic ratio about {r:.2f}.",
                    "the cardiac silhouette is enlarged: {n}.",
                    "{n}. The lungs are clear.",
                    "enlarged cardiac silhouette, consistent with {n}.",
                )
            )
        ).format(n=name, r=drawn["ctr"])
    else:
        concepts += ["cxr:visceral_pleural_line", "cxr:apical_pneumothorax"]
        body = str(
            rng.choice(
                (
                    "{w} {n} with a visible visceral pleural line.",
                    "{n} on the {w}: lucent rim without lung markings.",
                    "{w} apical {n}; the lung edge is displaced from the chest wall.",
                    "visceral pleural line with absent lung markings peripherally, {n} on the {w}.",
                )
            )
        ).format(n=name, w=drawn["side"])
    return cased(head + cased(body) if head else cased(body)), concepts


def write_dicom(
    path: Path,
    att: np.ndarray,
    *,
    seed: int,
    index: int,
    monochrome1: bool,
    rescale: bool,
    rng: np.random.Generator,
) -> None:
    """Write a 12-bit DX DICOM whose windowed display equals the attenuation map ``att``.

    UIDs come from the seed and index (no clock, no random state outside ``rng``) so files are
    byte-identical between runs.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    lo, hi = 200.0, 3800.0
    values = np.rint(lo + att * (hi - lo)).astype(np.int32)  # "presentation" values, bright = dense
    intercept = -1024.0 if rescale else 0.0
    centre = float(np.rint((lo + hi) / 2 + rng.normal(0, 60)))
    width = float(np.rint((hi - lo) * rng.uniform(0.95, 1.1)))
    if monochrome1:
        stored = 4095 - values  # stored dark = dense; the reader inverts after the window
        centre = 4095 - centre
    else:
        stored = values
    centre_out = centre + intercept  # window values are in modality (rescaled) units
    stored = np.clip(stored, 0, 4095).astype(np.uint16)

    uid = lambda *parts: generate_uid(entropy_srcs=["medvlp-demo-cxr", str(seed), str(index), *parts])  # noqa: E731
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(
        "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    )
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    meta.ImplementationVersionName = "MEDVLP_DEMO"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = "DX"
    ds.PatientID = f"DEMO{index:05d}"
    ds.PatientName = "Demo^Synthetic"
    ds.StudyDate = "20240101"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.139 * 2048 / stored.shape[0]] * 2
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1.0
    ds.RescaleType = "US"
    ds.WindowCenter = centre_out
    ds.WindowWidth = width
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def generate(out: Path, n_per_class: int, size: int, seed: int, progress: bool) -> Corpus:
    """The CXR demo: ``n_per_class`` DICOM films per finding, masks of the finding regions."""
    rows = []
    for c, i in demo_jobs(out, len(CLASSES), n_per_class, "cxr", progress):
        rng = np.random.default_rng([seed, 101, c, i])
        att, mask, drawn = render_cxr(rng, size, c)
        caps: list[str] = []
        concepts: list[str] = []
        for _ in range(2):
            text, cids = caption_cxr(rng, c, drawn)
            caps.append(text)
            concepts = cids if len(cids) > len(concepts) else concepts
        index = c * n_per_class + i
        name = f"{c:02d}_{i:05d}"
        write_dicom(
            out / "images" / f"{name}.dcm",
            att,
            seed=seed,
            index=index,
            monochrome1=bool(index % 2),
            rescale=index % 3 == 0,
            rng=rng,
        )
        save_png(out / "masks" / f"{name}.png", mask)
        rows.append(
            row(
                f"images/{name}.dcm",
                caps,
                CLASSES[c].name,
                concepts,
                f"masks/{name}.png",
                split_of(i, n_per_class),
                CLASSES[c].concept,
                patient=f"DEMO{index:05d}",
                view=drawn["view"],
                photometric="MONOCHROME1" if index % 2 else "MONOCHROME2",
            )
        )
    return Corpus(rows, CLASSES, {"format": "DICOM DX, 12-bit, MONOCHROME1/2 alternating, window tags"})
