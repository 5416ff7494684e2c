"""Prompt hygiene: caption records, prompt_overlap, embedding near duplicates, and `eval zeroshot` reporting them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlp.data.manifest import read_manifest
from medvlp.domains import load_card
from medvlp.errors import ConfigError, DataError
from medvlp.eval.hygiene import (
    caption_hash,
    caption_record,
    find_caption_record,
    normalise_caption,
    prompt_overlap,
    read_caption_record,
    write_caption_record,
)
from medvlp.eval.overlap_embed import embedding_near_duplicates
from medvlp.eval.zeroshot import build_prompts

LABELS = ["mucus", "debris"]


def _manifest(d: Path, captions_from: str, n: int = 8) -> Path:
    """``n`` noise images; captions written with the card's caption templates or its zero-shot templates."""
    card = load_card("pathology")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        lab = LABELS[i % 2]
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(d / f"i{i}.png")
        pool = card.captions_for(lab) if captions_from == "captions" else [t.format(lab) for t in card.prompts.templates]
        rows.append({"image": f"i{i}.png", "label": lab, "caption": json.dumps(pool)})
    import pandas as pd

    pd.DataFrame(rows).to_csv(d / "train.csv", index=False)
    return d / "train.csv"


def test_normalisation_and_hashes():
    assert normalise_caption("  An H&E   tile of Mucus. ") == "an h&e tile of mucus"
    assert caption_hash("an h&e tile of mucus") == caption_hash("An H&E tile of mucus.")
    assert caption_hash("mucus") != caption_hash("debris")


def test_clean_protocol_has_zero_overlap_and_detects_the_caption_templates(tmp_path):
    card = load_card("pathology")
    m = read_manifest(_manifest(tmp_path, "captions"))
    rec = caption_record(m, card)
    assert set(rec["caption_templates"]) == set(card.caption_templates)  # every caption template was used
    assert rec["prompt_templates_in_captions"] == {}
    assert rec["n_captions"] == len({normalise_caption(c) for lab in LABELS for c in card.captions_for(lab)})
    assert rec["n_templated"] == rec["n_captions"] and len(rec["caption_hashes"]) == rec["n_captions"]
    prompts, _ = build_prompts(LABELS, card)
    assert prompt_overlap(prompts, rec) == 0.0


def test_leaky_protocol_is_measured(tmp_path):
    card = load_card("pathology")
    m = read_manifest(_manifest(tmp_path, "prompts"))
    rec = caption_record(m, card)
    assert set(rec["prompt_templates_in_captions"]) == set(card.prompts.templates)
    prompts, _ = build_prompts(LABELS, card)
    flat = {normalise_caption(p) for ps in prompts.values() for p in ps}
    leaked = {normalise_caption(t.format(lab)) for lab in LABELS for t in card.prompts.templates}
    assert prompt_overlap(prompts, rec) == pytest.approx(len(flat & leaked) / len(flat))
    assert prompt_overlap(prompts, rec) > 0


def test_record_file_round_trip_and_bad_input(tmp_path):
    card = load_card("pathology")
    m = read_manifest(_manifest(tmp_path, "captions"))
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    p = write_caption_record(run, m, card)
    assert p == run / "captions.json" and read_caption_record(p) == caption_record(m, card)
    assert find_caption_record(run) == p and find_caption_record(run / "model") == p
    assert find_caption_record(f"local-dir:{run}") == p and find_caption_record("tiny") is None
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="bad.json.*caption_hashes"):
        read_caption_record(tmp_path / "bad.json")
    (tmp_path / "nocap.csv").write_text("image,label\ni0.png,mucus\n")
    with pytest.raises(DataError, match="no 'caption' column"):
        caption_record(read_manifest(tmp_path / "nocap.csv"), card)


def test_embedding_near_duplicates():
    rng = np.random.default_rng(0)
    tr = rng.normal(size=(20, 8))
    ev = np.vstack([tr[3] + 1e-3 * rng.normal(size=8), rng.normal(size=(4, 8)), tr[7] * 5.0])
    r = embedding_near_duplicates(tr, ev, threshold=0.98)
    assert r["n_eval_rows"] == 2 and {(t, e) for t, e, _ in r["pairs"]} == {(3, 0), (7, 5)}
    assert r["eval_fraction"] == pytest.approx(2 / 6) and all(c >= 0.98 for _, _, c in r["pairs"])
    assert embedding_near_duplicates(tr, ev, threshold=1.0)["n_eval_rows"] == 1  # only the exact (scaled) copy
    with pytest.raises(ConfigError, match="threshold"):
        embedding_near_duplicates(tr, ev, threshold=1.5)
    with pytest.raises(DataError, match="dimensions"):
        embedding_near_duplicates(tr, ev[:, :4])


# ---- through `medvlp eval zeroshot` -------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from medvlp.models import create_model

    d = tmp_path_factory.mktemp("hyg-run")
    create_model("tiny", seed=0).save(d / "model", extra={"domain": "pathology"})
    return d


def _eval(run_dir: Path, data: Path, capsys, *extra: str) -> tuple[int, dict, str]:
    from medvlp.cli.main import main

    out = run_dir.parent / f"{run_dir.name}-metrics.json"
    with pytest.raises(SystemExit) as info:
        main(["eval", "zeroshot", "--model", str(run_dir), "--data", str(data), "--n-boot", "0",
              "--prompt-subsets", "0", "--json", str(out), *extra])
    err = capsys.readouterr().err
    return int(info.value.code or 0), json.loads(out.read_text()), err


def test_eval_zeroshot_reports_prompt_overlap(run_dir, tmp_path, capsys):
    card = load_card("pathology")
    clean = read_manifest(_manifest(tmp_path, "captions"))
    (run_dir / "captions.json").unlink(missing_ok=True)
    code, metrics, err = _eval(run_dir, clean.path, capsys)
    assert code == 0 and metrics["prompt_overlap"] is None and "captions.json" in metrics["prompt_overlap_note"]
    assert "prompt_overlap unknown" in err
    write_caption_record(run_dir, clean, card)
    code, metrics, err = _eval(run_dir, clean.path, capsys)
    assert code == 0 and metrics["prompt_overlap"] == 0.0 and "text-supervised" not in err
    leaky_dir = tmp_path / "leaky"
    leaky_dir.mkdir()
    write_caption_record(run_dir, read_manifest(_manifest(leaky_dir, "prompts")), card)
    code, metrics, err = _eval(run_dir, clean.path, capsys)
    assert code == 0 and metrics["prompt_overlap"] > 0 and metrics["prompt_overlap_examples"]
    assert "these prompts were training captions: this is a text-supervised result, not zero-shot" in err
    (run_dir / "captions.json").unlink()


def test_eval_zeroshot_train_data_overlap(run_dir, tmp_path, capsys):
    data = _manifest(tmp_path, "captions")
    code, metrics, err = _eval(run_dir, data, capsys, "--train-data", str(data))
    assert code == 0
    near = metrics["overlap_embedding"]  # the same images: every eval row has its copy in training
    assert near["n_eval_rows"] == metrics["n"] == 8 and near["threshold"] == 0.98
    assert {(t, e) for t, e, _ in near["pairs"]} >= {(i, i) for i in range(8)}
    assert "near duplicates" in err and "overlap" in metrics


def test_eval_zeroshot_train_data_records_find_overlap(run_dir, tmp_path, capsys):
    overlap = pytest.importorskip("medvlp.data.overlap", reason="medvlp.data.overlap (data engineer) not merged yet")
    data = _manifest(tmp_path, "captions")
    code, metrics, _ = _eval(run_dir, data, capsys, "--train-data", str(data))
    assert code == 0
    assert metrics["overlap"] == json.loads(json.dumps(overlap.find_overlap(str(data), str(data)).to_dict()))
