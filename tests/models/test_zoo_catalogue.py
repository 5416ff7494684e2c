"""The zoo catalogue is data (medvlp/models/zoo.json): every entry validates; a malformed one is named."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest

from medvlp.errors import ModelError
from medvlp.models.zoo import CATALOGUE, ZOO, ZooEntry, load_catalogue, parse_catalogue


def _doc() -> dict:
    return json.loads(CATALOGUE.read_text(encoding="utf-8"))


def test_every_catalogue_entry_validates() -> None:
    doc = _doc()
    table = parse_catalogue(doc)
    assert len(table) == len(doc["models"]) == len(ZOO) >= 7
    assert list(table) == [m["name"] for m in doc["models"]]  # display order is the file's order
    required = {f.name for f in fields(ZooEntry)} - {"notes"}
    for name, e in table.items():
        assert isinstance(e, ZooEntry) and e.name == name
        assert required <= {k for k, v in e.to_dict().items() if v not in ("", None)}
        assert isinstance(e.image_size, int) and isinstance(e.context_length, int)
        assert isinstance(e.mean, tuple) and len(e.mean) == 3 and all(0 < x < 1 for x in e.mean + e.std)
        assert e.model_id.startswith("hf-hub:") and e.format in ("open_clip", "transformers")
    assert table == ZOO  # the module's table is this file, read once


def test_defaults_fill_left_out_fields() -> None:
    doc = _doc()
    quilt = next(m for m in doc["models"] if m["name"] == "quiltnet-b-16")
    assert "image_size" not in quilt and "mean" not in quilt  # shared values live in 'defaults' only
    e = parse_catalogue(doc)["quiltnet-b-16"]
    assert e.image_size == doc["defaults"]["image_size"] and list(e.mean) == doc["defaults"]["mean"]
    assert e.notes == ""


def _broken(tmp_path: Path, change) -> Path:
    doc = copy.deepcopy(_doc())
    change(doc["models"][2])
    p = tmp_path / "zoo.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.parametrize(("change", "expected"), [
    (lambda m: m.pop("licence"), r"missing field\(s\) \['licence'\]"),
    (lambda m: m.update(context_length="77"), "field 'context_length' must be an integer, got '77'"),
    (lambda m: m.update(mean=[0.5, 0.5]), "field 'mean' must be a list of 3 numbers"),
    (lambda m: m.update(licnce="MIT"), r"unknown field\(s\) \['licnce'\]"),
    (lambda m: m.update(model_id="wisdomik/QuiltNet-B-16"), "'model_id' must be 'hf-hub:ORG/NAME'"),
    (lambda m: m.update(format="onnx"), "'format' must be 'open_clip' or 'transformers'"),
    (lambda m: m.update(name="quiltnet-b-32"), "the name 'quiltnet-b-32' is used twice"),
])
def test_malformed_entry_is_named(tmp_path: Path, change, expected: str) -> None:
    p = _broken(tmp_path, change)
    with pytest.raises(ModelError, match=expected) as info:
        load_catalogue(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: model 2 (") and msg.count("\n") == 0  # which file, which entry


def test_unreadable_catalogue_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "zoo.json"
    p.write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the zoo catalogue"):
        load_catalogue(p)
    with pytest.raises(ModelError, match="'models' list"):
        parse_catalogue({"defaults": {}}, "x.json")
