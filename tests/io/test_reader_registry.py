"""A new modality is one reader registered from this file alone: ``read_image(reader=...)``, auto detection
by its sniff, a domain card naming it, a manifest row decoded through the dataset; clear errors otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvlp.errors import ConfigError, ImageReadError
from medvlp.io import read_image, reader_names, register_reader
from medvlp.io.readers import get_reader

ROOT = Path(__file__).resolve().parents[2]


def _sniff_toy(source: str) -> bool:
    """A ``.toy`` file starts with the line ``TOY``."""
    p = Path(source)
    return p.suffix == ".toy" and p.is_file() and p.read_bytes()[:4] == b"TOY\n"


def _read_toy(source: str, options) -> Image.Image:
    """``TOY`` then one row of grey values per line: a tiny greyscale image, scaled by ``options["gain"]``."""
    lines = Path(source).read_text().splitlines()
    if not lines or lines[0] != "TOY":
        raise ImageReadError(source, "not a toy file (no TOY header)")
    arr = np.array([[int(v) for v in line.split()] for line in lines[1:]], dtype=np.float32)
    arr = np.clip(arr * float(options.get("gain", 1.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").convert("RGB")


register_reader("toy", _sniff_toy, _read_toy, description="a test modality", replace=True)


def _toy(path: Path, rows: list[list[int]]) -> Path:
    path.write_text("TOY\n" + "\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    return path


def test_the_toy_reader_reads_by_name_and_by_sniffing(tmp_path):
    p = _toy(tmp_path / "a.toy", [[0, 10, 20], [30, 40, 50]])
    assert "toy" in reader_names() and get_reader("toy").description == "a test modality"
    img = read_image(p, reader="toy", options={"gain": 2})
    assert img.mode == "RGB" and img.size == (3, 2)
    assert np.asarray(img)[1, 2].tolist() == [100, 100, 100]
    assert np.asarray(read_image(p))[0, 1].tolist() == [10, 10, 10]  # reader="auto" found it by its sniff
    broken = tmp_path / "b.toy"
    broken.write_text("TOY\n1 x\n")
    with pytest.raises(ImageReadError, match="b.toy"):  # any failure of a reader becomes an ImageReadError
        read_image(broken, reader="toy")


def test_builtin_readers_are_registered_and_unknown_ones_are_clear(tmp_path):
    assert {"auto", "image", "dicom", "multichannel", "wsi"} <= set(reader_names())
    with pytest.raises(ConfigError, match=r"unknown reader 'nope'.*toy"):
        read_image(tmp_path / "x.png", reader="nope")
    with pytest.raises(ConfigError, match="already registered"):
        register_reader("toy", _sniff_toy, _read_toy)
    with pytest.raises(ConfigError, match="other than 'auto'"):
        register_reader("auto", _sniff_toy, _read_toy)


def _card(tmp_path: Path, reader: str) -> Path:
    text = (ROOT / "domains" / "microscopy.toml").read_text()
    text = re.sub(r'(?m)^name = "microscopy"', f'name = "{reader}mic"', text, count=1)
    text = re.sub(r'(?m)^reader = "auto"', f'reader = "{reader}"', text, count=1)
    card = tmp_path / f"{reader}mic.toml"
    card.write_text(text)
    return card


def test_a_card_names_the_reader_and_a_manifest_trains_through_it(tmp_path):
    from medvlp.data.dataset import ImageTextDataset, options_for
    from medvlp.data.manifest import read_manifest
    from medvlp.domains import load_card
    from medvlp.models import create_model

    card = load_card(_card(tmp_path, "toy"))
    assert card.image.reader == "toy"
    with pytest.raises(ConfigError, match=r"\[image\].reader 'fluoro'.*register_reader"):
        load_card(_card(tmp_path, "fluoro"))
    rng = np.random.default_rng(0)
    for i in range(4):
        _toy(tmp_path / f"{i}.toy", rng.integers(0, 255, (16, 16)).tolist())
    (tmp_path / "m.csv").write_text("image,caption\n" + "".join(f"{i}.toy,cell {i}\n" for i in range(4)))
    model = create_model("tiny")
    ds = ImageTextDataset(read_manifest(tmp_path / "m.csv"), model.tokenizer, options_for(model.spec, card),
                          seed=0, cache="none")
    item = ds[0]
    assert len(ds) == 4 and not ds.bad and tuple(item["image"].shape[-2:]) == (64, 64)
