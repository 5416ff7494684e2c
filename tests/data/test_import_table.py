"""`medvlp data import table`: attribute tables (WBCAtt) and free-text tables (covid_cxr_notes)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pandas as pd

from medvlp.cli.main import main
from medvlp.data.manifest import parse_list_cell, read_manifest
from medvlp.domains import load_card

WBC_ATTRS = ("cell_size,cell_shape,nucleus_shape,nuclear_cytoplasmic_ratio,chromatin_density,cytoplasm_vacuole,"
             "cytoplasm_texture,cytoplasm_colour,granule_type,granule_colour,granularity")


def _main(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _subset(src: Path, tmp: Path, rows: list[int], name: str = "t.csv") -> Path:
    """A few rows of a shared table in tmp, with image paths rewritten relative to the copy."""
    df = pd.read_csv(src, dtype=str, keep_default_na=False).iloc[rows].reset_index(drop=True)
    df["image"] = [str((src.parent / p).resolve()) for p in df["image"]]
    p = tmp / name
    df.to_csv(p, index=False)
    return p


def test_wbcatt_attributes_become_concepts_and_captions_without_the_cell_type(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "datasets" / "wbcatt" / "train.csv"
    table = _subset(src, tmp_path, list(range(0, 6169, 400)))
    bad = pd.read_csv(table, dtype=str, keep_default_na=False)
    bad.loc[1, "nucleus_shape"] = "star-shaped"  # unknown attribute value
    bad.loc[2, "image"] = "images/missing.jpg"
    bad.to_csv(table, index=False)
    out = tmp_path / "o" / "m.csv"
    code, stdout, stderr = _main("data", "import", "table", table, "--domain", "microscopy", "--image-col", "image",
                                 "--label-col", "label", "--attribute-cols", WBC_ATTRS, "--out", out)
    assert code == 0, stderr
    m = read_manifest(out)
    assert len(m) == len(bad) - 2
    skipped = [json.loads(x) for x in (out.parent / "bad_samples.jsonl").read_text().splitlines()]
    assert [s["line"] for s in skipped] == [3, 4]
    assert "unknown attribute value nucleus_shape='star-shaped'" in skipped[0]["reason"]
    assert "image file not found" in skipped[1]["reason"]
    card = load_card("microscopy")
    names = {n.lower() for lab in card.label_set("blood_cells").labels for n in (lab.name, *lab.names)}
    for i in range(len(m)):
        caps = m.captions(i)
        assert len(caps) == 3 and len(set(caps)) == 3
        for cap in caps:  # the class never appears in the captions: cell types stay zero-shot targets
            assert not any(re.search(rf"\b{re.escape(n)}\b", cap.lower()) for n in names), cap
        row = m.df.iloc[i]
        want = {f"micro:{c}_{row[c].replace(' ', '-')}" for c in WBC_ATTRS.split(",") if row[c] != "nil"}
        for d in m.concepts(i):  # every span is the concept's name, in the caption it names
            assert d["id"] in want and not d["negated"]
            s, e = d["span"]
            assert caps[d["caption"]][s:e].lower() == _concept_name(d["id"]).lower()
    assert m.labels(0) == ["neutrophil"]
    # Seeded: the same command writes the same captions.
    again = tmp_path / "o2" / "m.csv"
    _main("data", "import", "table", table, "--domain", "microscopy", "--image-col", "image", "--label-col", "label",
          "--attribute-cols", WBC_ATTRS, "--out", again)
    assert read_manifest(again).df["caption"].tolist() == m.df["caption"].tolist()
    # --label-in-captions adds the card's captions for the label (caption pool, not zero-shot prompts).
    lab = tmp_path / "o3" / "m.csv"
    _main("data", "import", "table", table, "--domain", "microscopy", "--image-col", "image", "--label-col", "label",
          "--attribute-cols", WBC_ATTRS, "--label-in-captions", "--out", lab)
    assert set(card.captions_for("neutrophil")) <= set(read_manifest(lab).captions(0))


def _concept_name(cid: str) -> str:
    from medvlp.ontology import load_ontology

    return load_ontology("microscopy")[cid].name


def test_covid_notes_text_captions_negation_groups_and_splits(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "datasets" / "covid_cxr_notes" / "notes.csv"
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    words = df["report"].str.split().str.len()
    long_row, short_row = int(words.idxmax()), int((words <= 40).idxmax())
    table = _subset(src, tmp_path, [short_row, 1, 2, long_row])
    t = pd.read_csv(table, dtype=str, keep_default_na=False)
    t.loc[1, "report"] = "   "
    t.loc[2, "report"] = "No pleural effusion. Possible pneumonia in the left lower lobe."
    t["fold"] = ["train", "train", "VAL", "test"]
    t.to_csv(table, index=False)
    out = tmp_path / "m.jsonl"
    code, _, stderr = _main("data", "import", "table", table, "--domain", "cxr", "--image-col", "image",
                            "--text-col", "report", "--label-col", "finding", "--group-col", "patient",
                            "--split-col", "fold", "--out", out)
    assert code == 0, stderr
    m = read_manifest(out)
    assert len(m) == 3
    assert m.column("patient") == [t["patient"][0], t["patient"][2], t["patient"][3]]
    assert m.column("split") == ["train", "val", "test"]
    assert m.captions(0) == [" ".join(t["report"][0].split())]  # short note: the text itself
    long_caps = m.captions(2)
    assert len(long_caps) > 1 and all(len(c.split()) <= 60 or "." not in c[:-1] for c in long_caps)
    assert " ".join(long_caps) == " ".join(t["report"][3].split())  # sentences kept, nothing lost
    concepts = {d["id"]: d for d in m.concepts(1)}
    assert concepts["cxr:pleural_effusion"]["negated"] is True
    assert "cxr:pneumonia" not in concepts  # uncertain: never a positive
    uncertain = parse_list_cell(m.df["concepts_uncertain"].iloc[1])
    assert "cxr:pneumonia" in {d["id"] for d in uncertain} and all(d["uncertain"] for d in uncertain)
    skipped = [json.loads(x) for x in (tmp_path / "bad_samples.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["line"] == 3 and "empty text in column 'report'" in skipped[0]["reason"]


def test_missing_column_is_one_clear_error(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "datasets" / "wbcatt" / "val.csv"
    code, _, stderr = _main("data", "import", "table", src, "--domain", "microscopy", "--image-col", "img",
                            "--attribute-cols", "cell_size,colour", "--out", tmp_path / "m.csv")
    assert code == 1
    assert stderr.startswith("medvlp: error: table ") and "--image-col img" in stderr
    assert "--attribute-cols colour" in stderr and len(stderr.strip().splitlines()) == 1
