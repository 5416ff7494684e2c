"""Tile coordinates in HDF5 (CLAM/TRIDENT layout): writing and reading back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medvlp.errors import DataError
from medvlp.io.wsi.slide import _short
from medvlp.io.wsi.tiling import TilingResult


def write_tiles_h5(path: str | Path, result: TilingResult) -> Path:
    """Write ``coords`` and the tiling attributes to an HDF5 file (atomically: temp file, then rename).

    File attributes follow DESIGN.md (``patch_size`` is the output size). The ``coords`` dataset also
    carries CLAM's attributes (``patch_size`` = pixels read at ``patch_level``, ``downsample``) so that
    CLAM-style feature extractors read the same field of view.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    coords = np.asarray(result.coords, dtype=np.int64).reshape(-1, 2)
    ds_level = result.patch_size_level0 / max(result.read_size, 1)
    with h5py.File(tmp, "w") as f:
        dset = f.create_dataset("coords", data=coords)
        attrs = {
            "patch_size": result.patch_size,
            "patch_size_level0": result.patch_size_level0,
            "level0_mpp": result.level0_mpp,
            "target_mpp": result.target_mpp,
            "read_level": result.read_level,
            "read_size": result.read_size,
            "mpp_source": result.mpp_source,
            "slide_path": result.slide_path,
            "level0_width": result.level0_dimensions[0],
            "level0_height": result.level0_dimensions[1],
        }
        for key, value in attrs.items():
            f.attrs[key] = value
        for key, value in result.settings.items():
            f.attrs[f"tissue_{key}" if not key.startswith("tissue_") else key] = value
        dset.attrs["patch_size"] = result.read_size
        dset.attrs["patch_level"] = result.read_level
        dset.attrs["downsample"] = np.array([ds_level, ds_level], dtype=np.float64)
    os.replace(tmp, path)
    return path


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_coords_h5(path: str | Path) -> TilingResult:
    """Read tile coordinates written by :func:`write_tiles_h5` or by CLAM's patching (``patches/*.h5``).

    CLAM files give ``read_level`` = ``patch_level``, ``read_size`` = ``patch_size`` and
    ``patch_size_level0`` = ``patch_size * downsample``; their mpp values are unknown (nan).

    Raises:
        DataError: not an HDF5 file, no ``coords`` dataset of shape (N, 2), or missing attributes.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise DataError(f"{path}: no 'coords' dataset (is this a tile coordinate file?)")
            dset = f["coords"]
            coords = np.asarray(dset[()], dtype=np.int64)
            root = {k: _attr(v) for k, v in f.attrs.items()}
            local = {k: _attr(v) for k, v in dset.attrs.items()}
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/... on damaged files
        raise DataError(f"{path}: not a readable HDF5 tile file ({_short(exc)})") from None
    if coords.ndim != 2 or coords.shape[1] != 2:
        if coords.size == 0:
            coords = coords.reshape(0, 2)
        else:
            raise DataError(f"{path}: 'coords' has shape {coords.shape}; expected (N, 2) level-0 x, y")
    if "patch_size_level0" in root:
        try:
            settings = {k[len("tissue_") :]: v for k, v in root.items() if k.startswith("tissue_")}
            return TilingResult(
                coords=coords,
                patch_size=int(root["patch_size"]),
                patch_size_level0=int(root["patch_size_level0"]),
                read_level=int(root["read_level"]),
                read_size=int(root.get("read_size", root["patch_size"])),
                level0_mpp=float(root["level0_mpp"]),
                target_mpp=float(root["target_mpp"]),
                mpp_source=str(root.get("mpp_source", "")),
                settings=settings,
                slide_path=str(root.get("slide_path", "")),
                level0_dimensions=(int(root.get("level0_width", 0)), int(root.get("level0_height", 0))),
            )
        except KeyError as exc:
            raise DataError(f"{path}: attribute {exc.args[0]!r} is missing") from None
    clam = {**root, **local}
    if "patch_size" not in clam or "patch_level" not in clam:
        raise DataError(
            f"{path}: neither medvlp attributes (patch_size_level0, read_level, ...) nor CLAM attributes "
            "(patch_size, patch_level) found"
        )
    size = int(clam["patch_size"])
    downsample = np.atleast_1d(np.asarray(clam.get("downsample", 1.0), dtype=np.float64))
    return TilingResult(
        coords=coords,
        patch_size=size,
        patch_size_level0=int(round(size * float(downsample[0]))),
        read_level=int(clam["patch_level"]),
        read_size=size,
        level0_mpp=float("nan"),
        target_mpp=float("nan"),
        mpp_source="clam",
        settings={},
        slide_path=str(clam.get("name", "")),
    )

