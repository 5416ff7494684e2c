"""Microns per pixel of a slide: vendor properties, TIFF resolution tags (screen DPI refused), tables."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from medvlp.errors import ConfigError
from medvlp.io.wsi.slide import Slide

MPP_MIN = 0.05  # finer than any optical scanner


MPP_MAX = 20.0  # coarser than a 0.5x overview: a resolution tag that is not scanner data


_SCREEN_DPI = (72.0, 96.0)  # screen defaults written by image libraries, never scanner data


# (property, conversion of its first number to microns per pixel)
_VENDOR_KEYS: tuple[tuple[str, Callable[[float], float]], ...] = (
    ("aperio.MPP", lambda v: v),
    ("openslide.mirax.MPP", lambda v: v),
    ("mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X", lambda v: v),
    ("hamamatsu.XResolution", lambda v: 10000.0 / v),  # pixels per centimetre, as NDPI stores it
    ("philips.DICOM_PIXEL_SPACING", lambda v: 1000.0 * v),  # millimetres per pixel ("row col")
)


def _first_number(value: str) -> float | None:
    text = str(value).replace('"', " ").strip().split()
    try:
        return float(text[0]) if text else None
    except ValueError:
        return None


def _tiff_resolution(slide: Slide) -> tuple[float | None, str | None]:
    """(XResolution, unit) of level 0 from the slide properties, or straight from the TIFF tags."""
    props = slide.properties
    x = props.get("tiff.XResolution")
    unit = props.get("tiff.ResolutionUnit")
    if x is not None:
        return _first_number(x), (unit or "").lower() or None
    try:
        import tifffile

        with tifffile.TiffFile(slide.path) as tif:
            page = tif.pages[0]
            if not isinstance(page, tifffile.TiffPage):
                return None, None
            tags = page.tags
            if "XResolution" not in tags:
                return None, None
            num, den = tags["XResolution"].value
            res_unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    except Exception:  # noqa: BLE001 - not a TIFF (DICOM, MRXS, ...): no tag to read
        return None, None
    names = {1: "none", 2: "inch", 3: "centimeter"}
    return (num / den if den else None), names.get(int(res_unit), "none")


def resolve_mpp(slide: Slide, override: float | None = None) -> tuple[float, str]:
    """Level-0 microns per pixel and where the value came from.

    Lookup order: ``override``; ``openslide.mpp-x`` (or ``tiffslide.mpp-x``); vendor keys (``aperio.MPP``,
    MIRAX, Hamamatsu, Philips); the TIFF resolution tag (cm: 10000/x, inch: 25400/x). Values outside
    [0.05, 20] µm/px and 72/96-dpi tags (screen defaults of image libraries) are rejected.

    Args:
        slide: an open slide.
        override: a value the user gave (``--mpp``); checked for plausibility only.

    Returns:
        ``(mpp, source)``, e.g. ``(0.499, "openslide.mpp-x")``.

    Raises:
        ConfigError: no trustworthy value; the message says how to pass ``--mpp``.
    """
    if override is not None:
        given = float(override)
        if not MPP_MIN <= given <= MPP_MAX:
            raise ConfigError(
                f"{slide.path}: --mpp {given} is outside the plausible range {MPP_MIN}-{MPP_MAX} µm/px "
                "(40x is about 0.25, 20x about 0.5)"
            )
        return given, "override"
    props = slide.properties
    rejected: list[str] = []

    def plausible(value: float | None, source: str) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if MPP_MIN <= value <= MPP_MAX:
            return True
        rejected.append(f"{source}={value:.6g} µm/px is implausible")
        return False

    for key in ("openslide.mpp-x", "tiffslide.mpp-x"):
        if key in props:
            value = _first_number(props[key])
            if _is_screen_dpi(value):
                rejected.append(f"{key}={value:.6g} µm/px comes from a 72/96-dpi screen default")
            elif plausible(value, key):
                return float(value), key  # type: ignore[arg-type]
    for key, convert in _VENDOR_KEYS:
        if key in props:
            raw = _first_number(props[key])
            if raw is None or raw <= 0:
                continue
            value = convert(raw)
            if plausible(value, key):
                return float(value), key
    res, unit = _tiff_resolution(slide)
    if res is not None and res > 0:
        if unit in ("inch", "centimeter", "cm"):
            dpi = res if unit == "inch" else res * 2.54
            value = 25400.0 / res if unit == "inch" else 10000.0 / res
            if any(abs(dpi - s) < 0.01 for s in _SCREEN_DPI):
                rejected.append(
                    f"TIFF resolution tag is {dpi:.0f} dpi, a screen default (would give {value:.2f} µm/px)"
                )
            elif plausible(value, f"TIFF resolution tag ({res:.6g}/{unit})"):
                return value, "tiff.XResolution"
        else:
            rejected.append("TIFF resolution tag has no unit")
    why = "; ".join(rejected) if rejected else "the slide records no microns-per-pixel"
    raise ConfigError(
        f"{slide.path}: no trustworthy microns-per-pixel ({why}); pass it with --mpp (e.g. --mpp 0.25 for a "
        "40x scan, --mpp 0.5 for 20x) or --mpp FILE.csv with columns slide,mpp"
    )


def _is_screen_dpi(mpp: float | None) -> bool:
    if mpp is None or mpp <= 0:
        return False
    return any(abs(25400.0 / mpp - s) < 0.01 for s in _SCREEN_DPI)


def load_mpp_table(path: str | Path) -> dict[str, float]:
    """Read a CSV ``slide,mpp`` table; keys are the slide column as written, its file name and its stem."""
    import csv

    path = Path(path)
    table: dict[str, float] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"slide", "mpp"} <= set(reader.fieldnames):
                raise ConfigError(
                    f"{path}: the mpp table needs columns 'slide,mpp' (found {reader.fieldnames})"
                )
            for line, row in enumerate(reader, start=2):
                try:
                    value = float(row["mpp"])
                except (TypeError, ValueError):
                    raise ConfigError(f"{path}, line {line}: mpp {row['mpp']!r} is not a number") from None
                name = str(row["slide"]).strip()
                for key in (name, Path(name).name, Path(name).stem):
                    table[key] = value
    except OSError as exc:
        raise ConfigError(f"cannot read the mpp table {path}: {exc.strerror}") from None
    return table


def lookup_mpp(table: dict[str, float], slide_path: str | Path) -> float | None:
    """The table's mpp for a slide, matched by path, file name, then stem."""
    p = Path(slide_path)
    for key in (str(slide_path), p.name, p.stem):
        if key in table:
            return table[key]
    return None

