"""medvlp.explain: concept scores, heatmaps, Grad-CAM, concept bottleneck, slide heatmaps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medvlp.errors import ConfigError, DataError
from medvlp.explain import (
    ConceptBottleneck,
    colorize,
    heatmaps_from_pixels,
    overlay,
    peak,
    pointing_hit,
    read_tile_scores_h5,
    resolve_concepts,
    slide_heatmap,
    slide_heatmap_from_h5,
)
from medvlp.explain.gradcam import vit_reshape_transform


# ------------------------------------------------------------------------------------------------ fast
def test_resolve_concepts_uses_card_and_ontology():
    from medvlp.domains import load_card

    card = load_card("pathology")
    specs = resolve_concepts(card)
    assert [s.id for s in specs] == list(card.explain_concepts)
    by_id = {s.id: s for s in specs}
    assert by_id["path:nuclear_pleomorphism"].name == "nuclear pleomorphism"
    assert "nuclear atypia" in by_id["path:nuclear_pleomorphism"].names
    mixed = resolve_concepts(card, ["mucin", "path:necrosis", "something unheard of", "mucus"])
    assert [s.id for s in mixed][:2] == ["path:mucus", "path:necrosis"]  # synonym -> concept; dedup of mucus
    assert mixed[2].id == "something unheard of" and mixed[2].names == ("something unheard of",)
    assert len(mixed) == 3
    with pytest.raises(ConfigError, match="no concepts"):
        resolve_concepts(card, [" ", ""])


def test_slide_heatmap_places_and_averages_tiles():
    thumb = Image.new("RGB", (10, 6))
    coords = np.array([[0, 0], [20, 0], [20, 0], [80, 40]])
    hm = slide_heatmap(thumb, coords, np.array([0.2, 0.4, 0.8, 1.0]), tile_size_level0=20, downsample=10)
    assert hm.shape == (6, 10)
    np.testing.assert_allclose(hm[0:2, 0:2], 0.2)
    np.testing.assert_allclose(hm[0:2, 2:4], 0.6)  # two tiles overlap: mean
    assert np.isnan(hm[3, 3]) and np.isnan(hm[0, 5])
    np.testing.assert_allclose(hm[4:6, 8:10], 1.0)  # clipped at the border
    assert int(np.isfinite(hm).sum()) == 12
    with pytest.raises(DataError, match="2 tile coordinates but 1 scores"):
        slide_heatmap(thumb, coords[:2], np.array([1.0]), 20, 10)


def test_slide_heatmap_from_h5(tmp_path):
    import h5py

    p = tmp_path / "s.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("coords", data=np.array([[0, 0], [512, 0], [0, 512]]))
        d = f.create_dataset("scores", data=np.array([[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]]))
        d.attrs["labels"] = ["tumour", "normal"]
        f.attrs["patch_size_level0"] = 512
        f.attrs["level0_width"] = 1024
        f.attrs["level0_height"] = 1024
    info = read_tile_scores_h5(p)
    assert list(info["scores"]) == ["tumour", "normal"] and info["tile_size_level0"] == 512.0
    thumb, hm, used = slide_heatmap_from_h5(p, score="tumour", max_size=64)
    assert thumb.size == (64, 64) and used == "tumour"
    assert hm[10, 10] == pytest.approx(0.1) and hm[10, 40] == pytest.approx(0.7) and hm[40, 10] == pytest.approx(0.5)
    assert np.isnan(hm[40, 40])
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2)))
    with pytest.raises(DataError, match="'scores'"):
        read_tile_scores_h5(bad)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        read_tile_scores_h5(tmp_path / "junk.h5")


def test_overlay_opacity_and_nan():
    img = np.full((4, 4, 3), 100, dtype=np.uint8)
    hm = np.zeros((4, 4), dtype=np.float32)
    hm[0, 0] = 1.0
    hm[3, 3] = np.nan
    out0 = np.asarray(overlay(img, hm, alpha=0.0))
    assert (out0 == 100).all()
    out1 = np.asarray(overlay(img, hm, alpha=1.0, cmap="gray", vmin=0, vmax=1))
    assert tuple(out1[0, 0]) == (255, 255, 255) and tuple(out1[1, 1]) == (0, 0, 0)
    assert tuple(out1[3, 3]) == (100, 100, 100)  # NaN shows the image
    big = overlay(Image.new("RGB", (16, 16)), hm, 0.5)  # map resized to the image
    assert big.size == (16, 16)
    assert colorize(np.array([[0.0, 1.0]]), "gray").tolist() == [[[0, 0, 0], [255, 255, 255]]]
    with pytest.raises(ValueError):
        overlay(img, hm, alpha=1.5)


def test_peak_and_pointing_hit():
    hm = np.zeros((8, 8))
    hm[5, 2] = 3.0
    assert peak(hm) == (5, 2)
    region = np.zeros((16, 16), dtype=bool)
    region[10:12, 4:6] = True  # the same place at twice the resolution
    assert pointing_hit(hm, region)
    assert not pointing_hit(hm, ~region)


def test_vit_reshape_transform_drops_class_token():
    t = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # CLS + 2x2 patches, 3 channels
    out = vit_reshape_transform(2)(t)
    assert out.shape == (2, 3, 2, 2)
    assert torch.equal(out[0, :, 0, 0], t[0, 1]) and torch.equal(out[1, :, 1, 1], t[1, 4])


def test_concept_bottleneck_recovers_weights(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] - x[:, 2] > 0).astype(int)  # concept "b" is irrelevant
    cbm = ConceptBottleneck.fit(x, y, ["a", "b", "c"], ["neg", "pos"])
    assert cbm.train_accuracy > 0.9
    top = cbm.top_weights("pos", 3)
    assert [c for c, _ in top][2] == "b"
    w = cbm.weights()
    assert w["pos"]["a"] > 1.0 and w["pos"]["c"] < -1.0 and abs(w["pos"]["b"]) < 0.5
    contrib = cbm.contributions(np.array([2.0, 0.0, -2.0]), "pos")
    assert contrib[0][0] in ("a", "c") and all(v > 0 for k, v in contrib if k != "b")
    p = cbm.predict_proba(np.array([[2.0, 0.0, -2.0], [-2.0, 0.0, 2.0]]))
    assert p[0, 1] > 0.9 and p[1, 0] > 0.9
    again = ConceptBottleneck.load(cbm.save(tmp_path / "cbm.json"))
    np.testing.assert_allclose(again.predict_proba(x[:5]), cbm.predict_proba(x[:5]))
    assert json.loads((tmp_path / "cbm.json").read_text())["labels"] == ["neg", "pos"]
    with pytest.raises(DataError, match="fewer than two classes"):
        ConceptBottleneck.fit(x, np.zeros(300, dtype=int), ["a", "b", "c"], ["neg", "pos"])


def test_heatmaps_patch_text_on_untrained_model():
    from medvlp.models import create_model

    net = create_model("tiny", seed=0).eval()
    x = torch.randn(2, 3, 64, 64)
    maps, used = heatmaps_from_pixels(net, x, [["mucus"], ["fat"], ["debris"]], ["{}."], source="auto")
    assert used == "patch_text" and maps.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(maps.sum(1), 1.0, atol=1e-4)  # softmax over the keys at every pixel
    one, _ = heatmaps_from_pixels(net, x, [["mucus"]], ["{}."])
    assert one.min() >= 0.0 and one.max() <= 1.0 + 1e-6
    assert one[0].max() > 0.9 and one[0].min() < 0.1  # min-max scaled per image (bilinear upsampling blurs the ends)
    with pytest.raises(Exception, match="no concept head"):
        heatmaps_from_pixels(net, x, [["mucus"]], ["{}."], source="concept_head")


# ------------------------------------------------------------------------------------------------ slow
def _demo_test_rows(manifest):
    df = pd.read_csv(manifest)
    return df[df["split"] == "test"]


def _pointing(model, manifest, source):
    """Pointing-game hit rate, chance (mean region fraction), number of images; every row of ``manifest``."""
    root = manifest.parent
    names = {c["index"]: c["name"] for c in json.loads((root / "classes.json").read_text())}
    hits, fractions = [], []
    for _, row in pd.read_csv(manifest).iterrows():
        mask = np.asarray(Image.open(root / row["mask"]))
        primary = int(np.bincount(mask.reshape(-1)).argmax())
        secondary = [int(v) for v in np.unique(mask) if v not in (0, primary)]
        if not secondary:
            continue
        lab = model.card.find_label(names[secondary[0]])
        x = model._norm(model._pixels(str(root / row["image"]))[None])
        maps, _ = heatmaps_from_pixels(model.net, x, [list(lab.names)], list(model.card.prompts.templates),
                                       source=source)
        hits.append(pointing_hit(maps[0, 0], mask == secondary[0]))
        fractions.append(float((mask == secondary[0]).mean()))
    return float(np.mean(hits)), float(np.mean(fractions)), len(hits)


@pytest.mark.slow
def test_pointing_game_above_chance(demo_model, tmp_path_factory):
    from medvlp.data.synthetic import demo_manifest

    # a fresh corpus (another seed) the model never saw; about half its images have a secondary region
    heldout = demo_manifest("pathology", n_per_class=10, size=64, seed=1, progress=False, variant="tiles",
                            out_dir=tmp_path_factory.mktemp("heldout") / "demo")
    source = "concept_head" if demo_model.net.concept_head is not None else "patch_text"
    rate_head, chance, n = _pointing(demo_model, heldout, source)
    rate_text, _, _ = _pointing(demo_model, heldout, "patch_text")
    assert n >= 20
    assert 0.1 < chance < 0.3  # the generator's ellipses cover ~17% of the tile
    # well above chance: the better of the two maps hits at least twice as often as a random peak
    assert max(rate_head, rate_text) >= 2 * chance, (rate_head, rate_text, chance)


@pytest.mark.slow
def test_result_explain_end_to_end(demo_model, demo_run):
    root = demo_run[1].parent
    row = _demo_test_rows(demo_run[1]).iloc[0]
    labels = demo_model.card.label_set("demo").names
    result = demo_model.zero_shot(str(root / row["image"]), labels=labels)
    ex = result.explain()
    # concepts: the card's [explain] list, ranked, scores in [0, 1]
    assert len(ex.concepts) == len(demo_model.card.explain_concepts)
    scores = [s for _, s in ex.concepts]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert ex.concept_ids["nuclear pleomorphism"] == "path:nuclear_pleomorphism"
    # heatmaps for every label plus the top concepts, on the model input grid
    assert set(labels) <= set(ex.heatmaps) and len(ex.heatmaps) >= len(labels)
    assert all(h.shape == (64, 64) for h in ex.heatmaps.values())
    expected = "concept_head" if demo_model.net.concept_head is not None else "patch_text"
    assert ex.heatmap_source == expected
    # Grad-CAM for the top label, normalised to [0, 1] with a non-trivial map
    assert list(ex.gradcam) == [result.top_label]
    cam = ex.gradcam[result.top_label]
    assert cam.shape == (64, 64) and cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6 and cam.max() > 0.5
    assert ex.overlay(labels[0], 0.4, size=128).size == (128, 128)
    d = ex.to_dict()
    assert d["heatmap_source"] == expected and len(d["concepts"]) == len(ex.concepts)


@pytest.mark.slow
def test_concept_bottleneck_on_demo(demo_model, demo_run):
    from medvlp.data.synthetic import PATHOLOGY_CLASSES
    from medvlp.explain import fit_concept_bottleneck

    concepts = [c.concept for c in PATHOLOGY_CLASSES]
    cbm = fit_concept_bottleneck(demo_model, demo_run[1], concepts=concepts)
    from medvlp.data.manifest import read_manifest

    assert cbm.n_train == len(read_manifest(demo_run[1]).split("train")) and len(cbm.labels) == 6
    assert cbm.train_accuracy > 1 / 6 + 0.2  # well above the 6-class chance level
    # the weight of a class's own concept is positive for that class
    own = [cbm.weights()[c.name][c.name] for c in PATHOLOGY_CLASSES]
    assert sum(w > 0 for w in own) >= 4, own
    root = demo_run[1].parent
    row = _demo_test_rows(demo_run[1]).iloc[0]
    ex = demo_model.zero_shot(str(root / row["image"]), labels=cbm.labels).explain(bottleneck=cbm, gradcam=False)
    assert ex.bottleneck_label in cbm.labels and len(ex.bottleneck) == 6 and ex.gradcam is None
    assert abs(ex.bottleneck[0][1]) >= abs(ex.bottleneck[-1][1])
