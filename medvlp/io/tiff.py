"""Multichannel fluorescence microscopy (TIFF) to RGB.

A field of view comes either as one stack file (C,H,W or H,W,C, or one page per channel) or as one
single-channel file per channel. :func:`to_rgb` maps it to RGB the way Recursion's RxRx tools do:
scale each channel to its display range (robust percentiles), clip, multiply by the channel's colour,
sum, clip.

Example:
    >>> stack = read_multichannel(["D03f00d0.tif", "D03f00d1.tif", "D03f00d2.tif"])  # doctest: +SKIP
    >>> rgb = to_rgb(stack, [{"name": "DAPI"}, {"name": "PH3", "color": "green"},
    ...                      {"name": "cells", "color": "red"}])               # doctest: +SKIP
    >>> rgb.shape, rgb.dtype                                                      # doctest: +SKIP
    ((512, 512, 3), dtype('uint8'))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvlp.errors import ConfigError, ImageReadError

MAX_CHANNELS = 5
MAX_ELEMENTS = 1 << 28  # larger "fields" are whole-slide images: refuse rather than exhaust memory

COLOURS: dict[str, tuple[float, float, float]] = {
    "blue": (0.0, 0.0, 1.0),
    "green": (0.0, 1.0, 0.0),
    "red": (1.0, 0.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (1.0, 1.0, 1.0),
    "grey": (1.0, 1.0, 1.0),
}

# Dye (or fluorescent protein) -> the display colour microscopists expect for it.
DYES: dict[str, str] = {
    "dapi": "blue",
    "hoechst": "blue",
    "hoechst33342": "blue",
    "dna": "blue",
    "nuclei": "blue",
    "gfp": "green",
    "egfp": "green",
    "fitc": "green",
    "a488": "green",
    "af488": "green",
    "alexa488": "green",
    "alexafluor488": "green",
    "mcherry": "red",
    "rfp": "red",
    "tritc": "red",
    "cy3": "red",
    "texasred": "red",
    "a568": "red",
    "a594": "red",
    "cy5": "red",
    "a647": "magenta",
    "af647": "magenta",
}

# Colours used when the card names none: DAPI-first, as in Cell Painting style acquisitions.
DEFAULT_COLOURS = ("blue", "green", "red", "magenta", "yellow")


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def resolve_colour(spec: Mapping[str, Any] | None, index: int) -> tuple[float, float, float]:
    """The RGB weights of one channel from its card entry.

    ``color`` may be a colour name, a dye name, ``#RRGGBB`` or three numbers in [0, 1]; without it the
    channel ``name`` is looked up as a dye (DAPI -> blue, GFP -> green, ...), and failing that the
    default colour for its position is used.

    Raises:
        ConfigError: an unknown colour name or a malformed value.
    """
    spec = spec or {}
    colour = spec.get("color", spec.get("colour"))
    if colour is None:
        dye = DYES.get(_key(str(spec.get("name", ""))))
        if dye is not None:
            return COLOURS[dye]
        return COLOURS[DEFAULT_COLOURS[index % len(DEFAULT_COLOURS)]]
    if isinstance(colour, str):
        text = colour.strip()
        if text.startswith("#") and len(text) == 7:
            try:
                return tuple(int(text[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
            except ValueError:
                pass
        key = _key(text)
        if key in COLOURS:
            return COLOURS[key]
        if key in DYES:
            return COLOURS[DYES[key]]
        raise ConfigError(
            f"channel {index} ({spec.get('name', '?')}): unknown colour {colour!r}; use one of "
            f"{', '.join(sorted(COLOURS))}, a dye name ({', '.join(sorted(DYES)[:6])}, ...) or '#RRGGBB'"
        )
    if isinstance(colour, Sequence) and len(colour) == 3:
        try:
            rgb = tuple(float(c) for c in colour)
        except (TypeError, ValueError):
            rgb = ()
        if len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb):
            return rgb  # type: ignore[return-value]
    raise ConfigError(
        f"channel {index}: colour {colour!r} must be a name, '#RRGGBB' or three numbers in [0, 1]"
    )


def _read_tiff(path: Path) -> tuple[np.ndarray, str]:
    import tifffile

    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            if int(np.prod(series.shape)) > MAX_ELEMENTS:
                raise ImageReadError(
                    path,
                    f"shape {tuple(series.shape)} is too large for a microscopy field; for a whole-slide "
                    "image use the 'wsi' reader with tile references (SLIDE#x,y,level,size)",
                )
            data = series.asarray()
            if data.ndim == 2 and len(tif.pages) > 1:
                # Same-size pages that tifffile did not group into one series: one channel per page.
                pages = [p for p in tif.pages if getattr(p, "shape", None) == data.shape]
                if len(pages) > 1:
                    data = np.stack([p.asarray() for p in pages])
                    axes = "C" + axes
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile/imagecodecs raise many types on damaged files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ImageReadError(path, f"not a readable TIFF ({type(exc).__name__}: {first})") from None
    return np.asarray(data), axes


def _as_chw(path: Path, data: np.ndarray, axes: str) -> np.ndarray:
    """One stack file's array as (C, H, W), refusing shapes that are not one multichannel field."""
    squeezed_axes = "".join(a for a, n in zip(axes, data.shape, strict=False) if n != 1)
    data = np.squeeze(data)
    if data.ndim == 2:
        return data[None]
    if data.ndim == 3:
        # Prefer the axes tifffile reports; else the short axis (<= MAX_CHANNELS) is the channel one.
        if len(squeezed_axes) == 3 and squeezed_axes[-1] in "SC" and data.shape[-1] <= MAX_CHANNELS:
            return np.moveaxis(data, -1, 0)
        if data.shape[0] <= MAX_CHANNELS and data.shape[0] < min(data.shape[1:]):
            return data
        if data.shape[-1] <= MAX_CHANNELS and data.shape[-1] < min(data.shape[:2]):
            return np.moveaxis(data, -1, 0)
    raise ImageReadError(
        path,
        f"unexpected shape {tuple(data.shape)} (axes {axes or '?'}): expected one field with 1-{MAX_CHANNELS} "
        "channels as C,H,W or H,W,C (take one z-plane / time point first)",
    )


def read_multichannel(
    paths_or_path: str | Path | Sequence[str | Path], channels: int | Sequence[Any] | None = None
) -> np.ndarray:
    """Read a multichannel field as float32 (C, H, W), raw intensities (8-bit, 16-bit or float).

    Args:
        paths_or_path: one stack file, or one single-channel file per channel (in channel order).
        channels: the expected number of channels (or the card's channel list, whose length is used).

    Raises:
        ImageReadError: unreadable file, an unexpected shape, files of different sizes, more than
            5 channels, or a channel count other than ``channels`` (the message names the file and shape).
    """
    if isinstance(paths_or_path, str | Path):
        paths = [Path(paths_or_path)]
    else:
        paths = [Path(p) for p in paths_or_path]
    if not paths:
        raise ImageReadError("<none>", "no channel files given")
    if len(paths) == 1:
        data, axes = _read_tiff(paths[0])
        stack = _as_chw(paths[0], data, axes)
    else:
        planes: list[Any] = []
        for p in paths:
            data, axes = _read_tiff(p)
            plane = np.squeeze(data)
            if plane.ndim != 2:
                raise ImageReadError(
                    p, f"shape {tuple(data.shape)} (axes {axes}): a per-channel file must hold one 2-D plane"
                )
            if planes and plane.shape != planes[0].shape:
                raise ImageReadError(
                    p,
                    f"shape {plane.shape} differs from {paths[0].name}'s {planes[0].shape}; channels of one "
                    "field must have the same size",
                )
            planes.append(plane)
        stack = np.stack(planes)
    name = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} channel files)"
    if stack.shape[0] > MAX_CHANNELS:
        raise ImageReadError(
            name, f"{stack.shape[0]} channels (shape {tuple(stack.shape)}); at most {MAX_CHANNELS}"
        )
    if stack.dtype.kind not in "uifb" or stack.shape[1] == 0 or stack.shape[2] == 0:
        raise ImageReadError(
            name, f"unsupported pixel type {stack.dtype} or empty shape {tuple(stack.shape)}"
        )
    expected = channels if isinstance(channels, int) or channels is None else len(channels)
    if expected is not None and stack.shape[0] != expected:
        raise ImageReadError(
            name, f"{stack.shape[0]} channels (shape {tuple(stack.shape)}) but {expected} are configured"
        )
    return stack.astype(np.float32)


def to_rgb(stack: np.ndarray, channels: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
    """Map a (C, H, W) stack to uint8 RGB (H, W, 3).

    Each channel is scaled from its ``low_percentile`` (default 1) to its ``high_percentile`` (default
    99.8) value (or absolute ``low`` / ``high``), clipped to [0, 1], multiplied by its colour
    (:func:`resolve_colour`); the channels are summed and clipped.

    Args:
        stack: (C, H, W) intensities, any numeric type.
        channels: one dict per channel, e.g. ``{"name": "DAPI", "color": "blue", "low_percentile": 1,
            "high_percentile": 99.8}``; ``None`` uses the default colours (blue, green, red, ...).

    Raises:
        ConfigError: the channel list does not match the stack, or a colour / percentile is invalid.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ConfigError(f"to_rgb needs a (C, H, W) stack, got shape {stack.shape}")
    n = stack.shape[0]
    specs: list[Mapping[str, Any]] = list(channels) if channels else [{} for _ in range(n)]
    if len(specs) != n:
        names = ", ".join(str(s.get("name", "?")) for s in specs)
        raise ConfigError(f"{len(specs)} channels configured ({names}) but the image has {n}")
    rgb = np.zeros(stack.shape[1:] + (3,), dtype=np.float32)
    for i, (plane, spec) in enumerate(zip(stack, specs, strict=True)):
        plane = plane.astype(np.float32)
        lo_p = float(spec.get("low_percentile", 1.0))
        hi_p = float(spec.get("high_percentile", 99.8))
        if not 0.0 <= lo_p < hi_p <= 100.0:
            raise ConfigError(
                f"channel {i}: need 0 <= low_percentile < high_percentile <= 100, got {lo_p}, {hi_p}"
            )
        lo = float(spec["low"]) if "low" in spec else float(np.percentile(plane, lo_p))
        hi = float(spec["high"]) if "high" in spec else float(np.percentile(plane, hi_p))
        if hi <= lo:
            continue  # a flat channel carries no signal: it contributes nothing
        scaled = np.clip((plane - lo) / (hi - lo), 0.0, 1.0)
        rgb += scaled[..., None] * np.asarray(resolve_colour(spec, i), dtype=np.float32)
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
