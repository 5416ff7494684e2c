"""Slide heatmaps in eval: a path stored inside an (uploaded) HDF5 file is never opened."""

from __future__ import annotations

import numpy as np
import pytest

from medvlp.errors import DataError
from medvlp.eval.slide_maps import slide_heatmap_from_h5


def _h5(path, slide_path: str) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.array([[0, 0], [512, 0]]))
        f.create_dataset("scores", data=np.array([0.2, 0.8]))
        f.attrs["patch_size_level0"] = 512
        f.attrs["level0_width"] = 1024
        f.attrs["level0_height"] = 512
        f.attrs["slide_path"] = slide_path


def test_slide_path_inside_the_file_is_never_followed(tmp_path, monkeypatch):
    secret = tmp_path / "secret.svs"
    secret.write_bytes(b"anything the server can read")
    p = tmp_path / "upload.h5"
    _h5(p, str(secret))
    opened = []
    import medvlp.io.wsi as wsi

    monkeypatch.setattr(wsi, "open_slide", lambda src, *a, **k: opened.append(src) or (_ for _ in ()).throw(
        AssertionError("opened a slide path taken from the file")))
    thumb, hm, used = slide_heatmap_from_h5(p, max_size=64)
    assert opened == []
    assert thumb.size == (64, 32) and used == "score"
    assert hm[5, 5] == pytest.approx(0.2) and hm[5, 40] == pytest.approx(0.8)


def test_an_explicit_missing_slide_is_a_clear_error(tmp_path):
    p = tmp_path / "s.h5"
    _h5(p, "")
    with pytest.raises(DataError, match="does not exist"):
        slide_heatmap_from_h5(p, slide=tmp_path / "nope.svs")


def test_explain_slide_still_exports_the_same_functions():
    from medvlp.eval import slide_maps
    from medvlp.explain import slide_heatmap
    from medvlp.explain import slide_heatmap_from_h5 as from_h5

    assert slide_heatmap is slide_maps.slide_heatmap and from_h5 is slide_maps.slide_heatmap_from_h5
