"""Manifests: formats, list cells, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medvlp.data.manifest import parse_list_cell, read_manifest, validate_manifest
from medvlp.errors import DataError


def _png(path: Path, value: int = 128) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)
    return path.name


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_formats_read_the_same(tmp_path: Path, fmt: str) -> None:
    _png(tmp_path / "a.png")
    df = pd.DataFrame({"image": ["a.png", "a.png"], "caption": [json.dumps(["one", "two"]), "three"],
                       "label": ["x", json.dumps(["y", "z"])], "site": ["arm", "leg"]})
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    m = read_manifest(path)
    assert len(m) == 2
    assert m.captions(0) == ["one", "two"] and m.captions(1) == ["three"]
    assert m.labels(1) == ["y", "z"] and m.is_multilabel
    assert m.image_source(0) == str(tmp_path / "a.png")
    assert m.column("site") == ["arm", "leg"]  # unknown columns kept as metadata


def test_list_cells() -> None:
    assert parse_list_cell('["a", "b"]') == ["a", "b"]
    assert parse_list_cell("plain text") == ["plain text"]
    assert parse_list_cell(None) == []
    assert parse_list_cell(float("nan")) == []


def test_missing_image_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a.png"], "caption": ["x"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="image"):
        read_manifest(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv"):
        read_manifest(tmp_path / "nope.csv")


def test_validate_reports_every_bad_row(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    path = tmp_path / "m.csv"
    pd.DataFrame({"image": ["ok.png", "missing.png", "corrupt.png", "ok.png"],
                  "caption": ["fine", "fine", "fine", ""]}).to_csv(path, index=False)
    _, bad = validate_manifest(path)
    rows = {b.row: b.reason for b in bad}
    assert set(rows) == {1, 2, 3}
    assert "missing.png" in rows[1] or "not found" in rows[1].lower()
    assert "caption" in rows[3].lower()


def test_multichannel_rows_resolve_every_file(tmp_path: Path) -> None:
    for c in range(3):
        _png(tmp_path / "f" / f"c{c}.png", 40 * c)
    path = tmp_path / "m.csv"
    pd.DataFrame({"image": ["f/c0.png;f/c1.png;f/c2.png", "f/c0.png;f/nope.png"],
                  "caption": ["x", "y"]}).to_csv(path, index=False)
    m = read_manifest(path)
    assert m.image_files(0) == [tmp_path / "f" / f"c{c}.png" for c in range(3)]
    assert m.image_source(0).count(str(tmp_path)) == 3
    _, bad = validate_manifest(path, read_images=False)
    assert [(b.row, "nope.png" in b.reason) for b in bad] == [(1, True)]
