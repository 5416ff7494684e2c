"""Demo corpora of every domain: determinism, caching, manifest contract, masks, readable DICOM/TIFF/WSI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medvlp.data.manifest import parse_list_cell, read_manifest
from medvlp.demos import corpora as synthetic
from medvlp.demos.corpora import COLUMNS, demo_manifest
from medvlp.domains import load_card
from medvlp.errors import ConfigError
from medvlp.io import read_image
from medvlp.resources import ontologies_dir

SMALL = {  # (domain, variant) -> (n_per_class, size): a few seconds each
    ("pathology", "wsi"): (4, 32),
    ("pathology", "tiles"): (3, 32),
    ("cxr", "dicom"): (3, 64),
    ("dermatology", "photo"): (3, 48),
    ("microscopy", "fluorescence"): (3, 48),
}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("demos")
    paths = {}
    for (domain, variant), (n, size) in SMALL.items():
        paths[(domain, variant)] = demo_manifest(
            domain,
            variant=variant,
            n_per_class=n,
            size=size,
            seed=0,
            out_dir=out / f"{domain}-{variant}",
            progress=False,
        )
    return paths


def _ontology_ids(domain: str) -> set[str]:
    data = json.loads((ontologies_dir() / f"{domain}.json").read_text())
    return {c["id"] for c in data["concepts"]}


@pytest.mark.parametrize("key", list(SMALL), ids=lambda k: f"{k[0]}-{k[1]}")
def test_manifest_contract(corpora: dict, key: tuple[str, str]) -> None:
    """Columns, splits, labels of the card's demo label set, concept ids of the ontology, row counts."""
    domain, variant = key
    m = read_manifest(corpora[key])
    card = load_card(domain)
    label_set = card.label_set(card.demo["label_set"])
    names = {lab.name: lab.concept for lab in label_set.labels}
    classes = json.loads((corpora[key].parent / "classes.json").read_text())
    assert list(m.df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert set(m.df["split"]) == {"train", "test"}
    assert set(m.df["label"]) <= set(names)
    assert [c["index"] for c in classes] == list(range(1, len(classes) + 1))
    assert all(
        names[c["name"]] == c["concept"] for c in classes
    )  # demo classes resolve to the card's concepts
    ids = _ontology_ids(domain)
    for i in range(len(m)):
        concepts = m.concepts(i)
        assert concepts and set(concepts) <= ids, concepts
        assert concepts[0] == names[m.labels(i)[0]] == m.df["group"].iloc[i]
        assert len(m.captions(i)) == 2 and all(len(c) > 3 for c in m.captions(i))
    n, _ = SMALL[key]
    if variant != "wsi":  # one image per class and index; the first 20% (rounded) of each class are test
        assert len(m) == n * len(classes)
        assert (m.df["split"] == "test").sum() == round(n * 0.2) * len(classes)
        assert m.df["label"].value_counts().tolist() == [n] * len(classes)


@pytest.mark.parametrize("key", [k for k in SMALL if k[1] != "wsi"], ids=lambda k: f"{k[0]}-{k[1]}")
def test_masks_match_labels(corpora: dict, key: tuple[str, str]) -> None:
    """Mask pixels are 0, 1 + the label's class index, or (pathology tiles, cxr anatomy) one other class."""
    domain, variant = key
    m = read_manifest(corpora[key])
    index = {c["name"]: c["index"] for c in json.loads((corpora[key].parent / "classes.json").read_text())}
    concept_index = {
        c["concept"]: c["index"] for c in json.loads((corpora[key].parent / "classes.json").read_text())
    }
    for i in range(len(m)):
        mask = np.asarray(Image.open(m.root / m.df["mask"].iloc[i]))
        image = read_image(m.image_source(i), options=load_card(domain).image.reader_options())
        assert mask.shape == image.size[::-1]
        own = index[m.labels(i)[0]]
        values = set(np.unique(mask).tolist())
        if domain == "pathology":  # primary everywhere but an ellipse of the secondary class
            allowed = {concept_index[c] for c in m.concepts(i)}
            assert values == allowed
            assert (mask == own).mean() > 0.5
        elif domain == "cxr":  # 0 air, 1 normal anatomy, finding region
            assert values <= {0, 1, own} and 1 in values
            if own != 1:
                assert (mask == own).sum() > 20
        else:  # 0 background, the lesion / the protein's location
            assert values == {0, own}
            assert 0.002 < (mask == own).mean() < 0.8  # nucleoli are small


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    for (domain, variant), (n, size) in SMALL.items():
        n = min(n, 2) if variant != "wsi" else n
        a = demo_manifest(
            domain,
            variant=variant,
            n_per_class=n,
            size=size,
            seed=3,
            out_dir=tmp_path / f"{domain}a",
            progress=False,
        )
        b = demo_manifest(
            domain,
            variant=variant,
            n_per_class=n,
            size=size,
            seed=3,
            out_dir=tmp_path / f"{domain}b",
            progress=False,
        )
        c = demo_manifest(
            domain,
            variant=variant,
            n_per_class=n,
            size=size,
            seed=4,
            out_dir=tmp_path / f"{domain}c",
            progress=False,
        )
        da, db, dc = _digest(a.parent), _digest(b.parent), _digest(c.parent)
        assert da == db, f"{domain}-{variant}: not deterministic"
        image_files = [k for k in da if k.startswith(("images/", "slides/"))]
        assert image_files and any(da[k] != dc.get(k) for k in image_files), f"{domain}: seed ignored"


def test_cached_once_and_keyed_by_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDVLP_CACHE", str(tmp_path / "cache"))
    first = demo_manifest("microscopy", n_per_class=2, size=32, seed=1, progress=False)
    assert first.is_file() and first.parent.parent == tmp_path / "cache" / "demo"
    assert json.loads((first.parent / "info.json").read_text())["rows"] == 12
    calls = []
    real = synthetic._load_generator
    monkeypatch.setattr(synthetic, "_load_generator", lambda spec: calls.append(spec) or real(spec))
    assert demo_manifest("microscopy", n_per_class=2, size=32, seed=1, progress=False) == first
    assert calls == []  # served from the cache, nothing regenerated
    other = demo_manifest("microscopy", n_per_class=2, size=32, seed=2, progress=False)
    assert other != first and len(calls) == 1
    assert not list((tmp_path / "cache" / "demo").glob("*.tmp*"))  # built in a temp folder, then renamed


def test_unknown_domain_or_variant_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no demo corpus for domain 'ophthalmology'"):
        demo_manifest("ophthalmology", n_per_class=2)
    with pytest.raises(ConfigError, match="no demo variant 'video'.*wsi, tiles"):
        demo_manifest("pathology", variant="video", n_per_class=2)


def test_card_picks_the_default_variant() -> None:
    assert synthetic.resolve_demo("pathology")[0] == load_card("pathology").demo.get("variant", "wsi")
    assert synthetic.resolve_demo("pathology", "tiles")[0] == "tiles"
    for domain in ("cxr", "dermatology", "microscopy", "pathology"):
        assert domain in synthetic.demo_domains()
        assert "steps" in load_card(domain).demo and "label_set" in load_card(domain).demo


def test_cxr_dicom_monochrome1_and_2_read_alike(corpora: dict, tmp_path: Path) -> None:
    """DICOM demo files go through rescale/window/inversion; one film stored either way reads alike."""
    import pydicom

    from medvlp.demos.cxr import render_cxr, write_dicom

    m = read_manifest(corpora[("cxr", "dicom")])
    kinds = {
        str(pydicom.dcmread(m.image_files(i)[0], stop_before_pixels=True).PhotometricInterpretation)
        for i in range(len(m))
    }
    assert kinds == {"MONOCHROME1", "MONOCHROME2"}
    ds = pydicom.dcmread(m.image_files(0)[0])
    assert (ds.Modality, ds.BitsStored, int(ds.pixel_array.max()) <= 4095) == ("DX", 12, True)
    att, _, _ = render_cxr(np.random.default_rng(5), 64, 2)
    paths = []
    for mono1, rescale in ((False, False), (True, True)):
        p = tmp_path / f"m{int(mono1)}.dcm"
        write_dicom(p, att, seed=0, index=0, monochrome1=mono1, rescale=rescale, rng=np.random.default_rng(9))
        paths.append(p)
    a, b = (np.asarray(read_image(p), dtype=np.int16) for p in paths)
    assert np.abs(a - b).max() <= 1
    # Dense (bright) where the effusion is: the display follows the attenuation map.
    grey = a[..., 0].astype(np.float32) / 255
    assert np.corrcoef(grey.ravel(), att.ravel())[0, 1] > 0.99


def test_microscopy_tiff_is_a_four_channel_stack(corpora: dict) -> None:
    import tifffile

    from medvlp.io.tiff import read_multichannel

    m = read_manifest(corpora[("microscopy", "fluorescence")])
    path = m.image_files(0)[0]
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].shape == (4, 48, 48) and tif.series[0].dtype == np.uint16
    stack = read_multichannel(path, channels=4)
    assert stack[3].min() == stack[3].max()  # Cy5 unstained: flat, contributes nothing
    rgb = np.asarray(read_image(path, options=load_card("microscopy").image.reader_options()))
    assert rgb.shape == (48, 48, 3) and rgb[..., 2].max() > 200  # DAPI nuclei in blue


def test_wsi_demo_slides_tiles_and_masks(corpora: dict) -> None:
    """Pyramidal TIFF with resolution tags, tiles from the real tiler, labels from the annotation below."""
    import h5py
    import tifffile

    from medvlp.demos.wsi import MIN_PRIMARY, SLIDE_MPP, TILE_MPP
    from medvlp.io.images import parse_tile_ref
    from medvlp.io.wsi import open_slide, resolve_mpp

    path = corpora[("pathology", "wsi")]
    m = read_manifest(path)
    info = json.loads((path.parent / "info.json").read_text())
    index = {c["name"]: c["index"] for c in json.loads((path.parent / "classes.json").read_text())}
    slide_file = sorted((path.parent / "slides").glob("*.tif"))[0]
    with tifffile.TiffFile(slide_file) as tif:
        assert len(tif.pages) >= 2 and tif.pages[0].is_tiled and tif.pages[0].compression == 7  # JPEG
        assert all(p.subfiletype == 1 for p in tif.pages[1:])
    with open_slide(slide_file) as slide:
        mpp, source = resolve_mpp(slide)
        assert mpp == pytest.approx(SLIDE_MPP) and source in (
            "openslide.mpp-x",
            "tiffslide.mpp-x",
            "tiff.XResolution",
        )
        assert slide.level_downsamples[:2] == pytest.approx((1.0, 2.0))
    with h5py.File(path.parent / "coords" / f"{slide_file.stem}.h5") as f:
        assert f.attrs["target_mpp"] == TILE_MPP and f.attrs["read_level"] == 1 and f["coords"].shape[1] == 2
    assert info["slides"] == 5 and info["tissue_tiles"] >= len(m) > 0
    # Test tiles come from held-out slides only.
    by_split = m.df.groupby("split")["slide"].apply(set)
    assert by_split["test"].isdisjoint(by_split["train"]) and len(by_split["test"]) == info["test_slides"]
    for i in range(0, len(m), max(1, len(m) // 12)):
        ref = parse_tile_ref(m.image_source(i))
        assert ref is not None and ref.level == 1 and ref.size == 32
        tile = read_image(m.image_source(i))
        assert tile.size == (32, 32)
        mask = np.asarray(Image.open(m.root / m.df["mask"].iloc[i]))
        own = index[m.labels(i)[0]]
        assert mask.shape == (32, 32) and (mask == own).mean() >= MIN_PRIMARY
        regions = np.asarray(Image.open(path.parent / "slides" / f"{m.df['slide'].iloc[i]}_regions.png"))
        x, y = ref.x // 2, ref.y // 2  # annotation is at the tiles' 2 µm/px, level 0 at 1 µm/px
        assert np.array_equal(regions[y : y + 32, x : x + 32], mask)
        # A tile's pixels look like its class: glass (near white, unsaturated) is never the majority.
        arr = np.asarray(tile, dtype=np.float32)
        assert (arr.max(-1) - arr.min(-1)).mean() > 20


def _norm_text(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


@pytest.mark.parametrize("key", list(SMALL), ids=lambda k: f"{k[0]}-{k[1]}")
def test_demo_captions_are_never_zero_shot_prompts(corpora: dict, key: tuple[str, str]) -> None:
    """A caption equal to a zero-shot prompt would leak the evaluation prompts into training."""
    card = load_card(key[0])
    names = {n for ls in card.label_sets.values() for lab in ls.labels for n in (lab.name, *lab.synonyms)}
    prompts = {_norm_text(t.format(n)) for t in card.prompts.templates for n in names}
    df = pd.read_csv(corpora[key])
    captions = [c for cell in df["caption"] for c in parse_list_cell(cell)]
    assert captions
    leaked = sorted({c for c in captions if _norm_text(c) in prompts})
    assert not leaked, f"demo captions equal to zero-shot prompts of the '{key[0]}' card: {leaked[:5]}"
