"""``medvlp wsi tile``: one .h5 per slide, a summary, one-line errors, other slides still tiled."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import typer
from typer.testing import CliRunner

from medvlp.cli import wsi

WSI = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fixtures" / "wsi"


def _fixture(name: str) -> Path:
    path = WSI / name
    if not path.is_file():
        pytest.skip(f"shared fixture {path} not found")
    return path


def _cli() -> typer.Typer:
    # The group as medvlp's main app mounts it (`medvlp wsi tile ...`).
    root = typer.Typer()
    root.add_typer(wsi.app, name="wsi")

    @root.callback()
    def _root() -> None:
        pass

    return root


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(_cli(), ["wsi", "tile", *args])
    return result.exit_code, result.stdout, result.stderr


def _slide(path: Path, mpp: float = 0.25) -> Path:
    """Two-level tiled TIFF, 512x384 at level 0, a pink box at x 128..384, y 128..256 (level 0)."""
    levels = []
    for f in (1, 2):
        arr = np.full((384 // f, 512 // f, 3), 238, np.uint8)
        arr[128 // f : 256 // f, 128 // f : 384 // f] = (200, 90, 160)
        levels.append(arr)
    with tifffile.TiffWriter(path) as tw:
        for i, arr in enumerate(levels):
            res = 1e4 / mpp / 2**i
            tw.write(
                arr,
                tile=(64, 64),
                photometric="rgb",
                subfiletype=1 if i else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path


def test_tile_writes_h5_and_summary(tmp_path: Path) -> None:
    slide = _slide(tmp_path / "case1.tif")
    code, out, err = _invoke(str(slide), "--out", str(tmp_path / "tiles"), "--size", "32")
    assert code == 0, err
    h5 = tmp_path / "tiles" / "case1.h5"
    with h5py.File(h5, "r") as f:
        coords = f["coords"][()]
        attrs = dict(f.attrs)
    # 64-px level-0 tiles (32 px at 0.5 µm/px from 0.25 µm/px), box = columns 2..5, rows 2..3.
    assert {tuple(c) for c in coords.tolist()} == {(x, y) for x in range(128, 384, 64) for y in (128, 192)}
    assert attrs["read_level"] == 1 and attrs["patch_size"] == 32 and attrs["patch_size_level0"] == 64
    assert attrs["mpp_source"] == "openslide.mpp-x" and attrs["target_mpp"] == 0.5
    assert "case1.tif: 8 tiles of 48" in out and "read 32 px at level 1" in out
    assert "tiled 1 of 1 slides: 8 tiles" in out


def test_bad_slides_fail_one_line_each_and_others_are_tiled(tmp_path: Path) -> None:
    good = _slide(tmp_path / "good.tif")
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"\x00" * 2048)
    boxes = _fixture("boxes.tiff")
    code, out, err = _invoke(str(junk), str(boxes), str(good), "--out", str(tmp_path / "o"), "--size", "32")
    assert code == 2  # partial results
    lines = err.strip().splitlines()
    assert len(lines) == 3  # one per bad slide, then the count
    assert lines[0].startswith("medvlp: error: ") and "junk.svs" in lines[0]
    assert "boxes.tiff" in lines[1] and "352.78" in lines[1] and "--mpp" in lines[1]
    assert lines[2] == "medvlp: 2 of 3 slides failed"
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good.h5"]
    assert "tiled 1 of 3 slides" in out


def test_mpp_override_and_table(tmp_path: Path) -> None:
    boxes = _fixture("boxes.tiff")
    code, out, err = _invoke(
        str(boxes), "--out", str(tmp_path / "a"), "--mpp", "0.25", "--size", "32", "--preview"
    )
    assert code == 0, err
    with h5py.File(tmp_path / "a" / "boxes.h5", "r") as f:
        assert f.attrs["mpp_source"] == "override" and f.attrs["level0_mpp"] == 0.25
        assert f.attrs["read_level"] == 1 and 6 <= f["coords"].shape[0] <= 8
    assert (tmp_path / "a" / "boxes_tiles.png").is_file()
    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp\nboxes.tiff,0.5\n")
    code, out, err = _invoke(str(boxes), "--out", str(tmp_path / "b"), "--mpp", str(table), "--size", "16")
    assert code == 0, err
    with h5py.File(tmp_path / "b" / "boxes.h5", "r") as f:
        # 0.5 µm/px at level 0 = the target: read at level 0, no resize.
        assert (
            f.attrs["level0_mpp"] == 0.5 and f.attrs["read_level"] == 0 and f.attrs["patch_size_level0"] == 16
        )


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``medvlp wsi tile ...`` through the real entry point (its one error handler included)."""
    from medvlp.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["wsi", "tile", *args])
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def test_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(capsys, str(tmp_path / "nope.svs"), "--out", str(tmp_path), "--mpp", "fast")
    assert code == 1 and err.count("\n") == 1 and err.startswith("medvlp: error: ")
    assert "neither a number nor a CSV file" in err and "Traceback" not in err
    a = _slide(tmp_path / "x.tif")
    (tmp_path / "other").mkdir()
    b = _slide(tmp_path / "other" / "x.tif")
    code, _, err = _main(capsys, str(a), str(b), "--out", str(tmp_path / "o"))
    assert code == 1 and err.startswith("medvlp: error: ") and "would both write x.h5" in err
    code, _, err = _main(capsys, str(tmp_path / "missing.svs"), "--out", str(tmp_path / "o"))
    assert code == 1 and "missing.svs: slide not found" in err


def test_the_wsi_group_has_no_error_handler_of_its_own(tmp_path: Path) -> None:
    # one handler (medvlp.cli.main) formats every user error; the group lets them through to it
    from medvlp.errors import MedvlpError

    result = CliRunner().invoke(_cli(), ["wsi", "tile", str(tmp_path / "nope.svs"), "--out", str(tmp_path),
                                         "--mpp", "fast"])
    assert isinstance(result.exception, MedvlpError) and result.stderr == ""


def test_through_the_medvlp_entry_point(tmp_path: Path) -> None:
    try:
        from medvlp.cli.main import main
    except ImportError as exc:  # another command group may be mid-development
        pytest.skip(f"medvlp.cli.main does not import: {exc}")
    slide = _slide(tmp_path / "s.tif")
    with pytest.raises(SystemExit) as info:
        main(["wsi", "tile", str(slide), "--out", str(tmp_path / "t"), "--size", "32"])
    assert info.value.code == 0
    with h5py.File(tmp_path / "t" / "s.h5", "r") as f:
        assert f["coords"].shape == (8, 2)
