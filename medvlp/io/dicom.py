"""DICOM images (chest X-ray and other projection radiographs) to float arrays in [0, 1].

The pixel pipeline follows the order of the DICOM standard (PS3.4 N.2.1 and PS3.3 C.11):

1. modality LUT, or rescale slope / intercept (:func:`pydicom.pixels.apply_modality_lut`);
2. VOI LUT (:func:`pydicom.pixels.apply_voi_lut`), or the first window centre / width;
3. MONOCHROME1 or Presentation LUT Shape ``INVERSE``: invert, so that high values are bright.

The result is normalised by the output range of the VOI step (a VOI LUT's actual output range, a
window's [0, 1]), never by ``BitsStored``: ``vlut_04.dcm`` stores 8-bit values that its VOI LUT maps to
0..65535. Without any VOI the image's own range after the modality LUT is used.

Example:
    >>> img = read_dicom("RG1_J2KI.dcm")          # doctest: +SKIP
    >>> img.shape, img.dtype, float(img.min()) >= 0.0, float(img.max()) <= 1.0
    ((1955, 1841), dtype('float32'), True, True)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medvlp.errors import ConfigError, ImageReadError

_MONO = ("MONOCHROME1", "MONOCHROME2")
# Colour interpretations pydicom decodes (and converts to RGB where needed).
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")

# What to install for each family of compressed transfer syntaxes: (pip packages, an alternative).
_LIBJPEG = ("pylibjpeg pylibjpeg-libjpeg", "")
_OPENJPEG = ("pylibjpeg pylibjpeg-openjpeg", " (or pillow built with OpenJPEG)")
_DECODER_PACKAGES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.4.50": ("pylibjpeg pylibjpeg-libjpeg", " (or pillow)"),
    "1.2.840.10008.1.2.4.51": ("pylibjpeg pylibjpeg-libjpeg", " (or pillow)"),
    "1.2.840.10008.1.2.4.57": _LIBJPEG,
    "1.2.840.10008.1.2.4.70": _LIBJPEG,
    "1.2.840.10008.1.2.4.80": ("pylibjpeg pylibjpeg-libjpeg", " (or pyjpegls)"),
    "1.2.840.10008.1.2.4.81": ("pylibjpeg pylibjpeg-libjpeg", " (or pyjpegls)"),
    "1.2.840.10008.1.2.4.90": _OPENJPEG,
    "1.2.840.10008.1.2.4.91": _OPENJPEG,
    "1.2.840.10008.1.2.4.201": ("pylibjpeg pylibjpeg-openjpeg", ""),
    "1.2.840.10008.1.2.4.202": ("pylibjpeg pylibjpeg-openjpeg", ""),
    "1.2.840.10008.1.2.4.203": ("pylibjpeg pylibjpeg-openjpeg", ""),
    "1.2.840.10008.1.2.5": ("pylibjpeg pylibjpeg-rle", " (pydicom's own RLE decoder needs only numpy)"),
}

# Tags that identify nobody: acquisition geometry, pixel encoding, display settings, equipment type.
SAFE_TAGS: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "ViewPosition",
    "PatientOrientation",
    "ImageLaterality",
    "Laterality",
    "BodyPartExamined",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "PixelAspectRatio",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "PresentationLUTShape",
    "LossyImageCompression",
    "ImageType",
    "KVP",
    "ExposureTime",
    "Exposure",
    "Manufacturer",
    "ManufacturerModelName",
)
# Free-text descriptions (StudyDescription, SeriesDescription, ProtocolName, ImageComments, ...) are never in
# SAFE_TAGS: names and record numbers are typed into them (the DICOM basic confidentiality profile, PS3.15
# Annex E, removes them).

# Patient, study, institution and time tags: only with include_phi=True. Age and sex are quasi-identifiers.
PHI_TAGS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientAddress",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
)


def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` carries the ``DICM`` marker at byte 128 (a DICOM Part 10 file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom_dataset(path: Path, *, stop_before_pixels: bool = False) -> Any:
    """The pydicom dataset of a Part 10 DICOM file (pixels not decoded).

    Raises:
        ImageReadError: missing, not DICOM, or damaged (the message says which).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        # Part 10 files only: `force=True` would "parse" any bytes into a garbage dataset.
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise ImageReadError(
            path, "not a DICOM file (no 'DICM' marker at byte 128); check the file type or the reader"
        ) from None
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise ImageReadError(path, f"damaged or truncated DICOM file ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _check_decoder(path: Path, ds: Any) -> None:
    """Raise an actionable error when the transfer syntax cannot be decoded here."""
    from pydicom.pixels import get_decoder

    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        return  # pydicom guesses implicit little endian for files without meta
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageReadError(
            path,
            f"transfer syntax {tsyntax} ({getattr(tsyntax, 'name', 'unknown')}) is not an image encoding "
            "pydicom can decode (video or unknown); convert it with dcmtk/gdcm first",
        ) from None
    if not decoder.is_available:
        pkgs, alternative = _DECODER_PACKAGES.get(
            str(tsyntax), ("pylibjpeg", " and its plugin for this syntax")
        )
        raise ImageReadError(
            path,
            f"no decoder for transfer syntax {tsyntax.name} ({tsyntax}) is installed: "
            f"`pip install {pkgs}`{alternative}",
        )


def decode_dicom(path: Path, ds: Any) -> np.ndarray:
    """Decode the first frame of the pixel data of ``ds`` (read from ``path``), warning when there are more.

    Raises:
        ImageReadError: no pixel data, a missing decoder (named, with what to install), or damaged data.
    """
    syntax = _syntax_name(ds)
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if _has_pixel_tag(path):
            raise ImageReadError(
                path, f"the pixel data (7FE0,0010) is truncated: the file ends inside it ({syntax}); "
                "the file was cut short in a copy or transfer, fetch it again")
        raise ImageReadError(
            path,
            "has no pixel data (tag 7FE0,0010); it is probably a report, presentation state or "
            "other non-image object",
        )
    _check_bomb(path, ds)
    _check_decoder(path, ds)
    frames = _int_tag(ds, "NumberOfFrames", 1)
    if frames > 1:
        warnings.warn(f"{path}: {frames} frames; using the first frame only", stacklevel=3)
    try:
        ds.pixel_array_options(index=0 if frames > 1 else None)
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise arbitrary types on damaged data
        kind = "compressed " if _is_compressed(ds) else ""
        raise ImageReadError(path, f"the {kind}pixel data ({syntax}) is truncated or damaged and cannot be "
                                   f"decoded ({_short(exc)})") from None
    return np.asarray(arr)


MAX_DICOM_PIXELS = 1 << 28  # rows x columns x frames x samples above this is refused (decompression bomb)


def _int_tag(ds: Any, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def _syntax_name(ds: Any) -> str:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return f"transfer syntax {getattr(ts, 'name', ts)}" if ts is not None else "no transfer syntax in the file"


def _is_compressed(ds: Any) -> bool:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(getattr(ts, "is_compressed", False))


def _has_pixel_tag(path: Path) -> bool:
    """Whether the raw file holds the Pixel Data tag (explicit or implicit little endian) at all."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return b"\xe0\x7f\x10\x00" in data


def _check_bomb(path: Path, ds: Any) -> None:
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    frames, samples = _int_tag(ds, "NumberOfFrames", 1), _int_tag(ds, "SamplesPerPixel", 1)
    n = rows * cols * max(frames, 1) * max(samples, 1)
    if n > MAX_DICOM_PIXELS:
        raise ImageReadError(
            path, f"decompression bomb: {cols} x {rows} pixels x {frames} frame(s) x {samples} sample(s) = {n:,} "
            f"values exceeds the limit {MAX_DICOM_PIXELS:,}; if the file is trusted, raise "
            "medvlp.io.dicom.MAX_DICOM_PIXELS (or tile it as a whole-slide image)")


def _window(arr: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    """Apply the first window centre/width with its VOI LUT Function; output in [0, 1]."""

    from pydicom.multival import MultiValue

    def first(value: Any) -> float:
        # Several windows may be given (alternative views): the first is the default one.
        return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)

    try:
        centre, width = first(ds.WindowCenter), first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        raise ImageReadError(path, "WindowCenter/WindowWidth (0028,1050/1051) are not numbers") from None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    x = arr.astype(np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ImageReadError(path, f"window width {width} must be > 0 for the SIGMOID VOI function")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ImageReadError(path, f"window width {width} must be > 0 for LINEAR_EXACT")
        return np.clip((x - centre) / width + 0.5, 0.0, 1.0)
    # LINEAR (PS3.3 C.11.2.1.2.1): the half-pixel offsets are part of the standard's definition.
    if width < 1:
        raise ImageReadError(path, f"window width {width} must be >= 1 for the LINEAR VOI function")
    if width == 1:
        return (x >= centre - 0.5).astype(np.float64)
    return np.clip((x - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _voi_lut(arr: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    """Apply the first VOI LUT and normalise by the LUT's own output range."""
    from pydicom.pixels import apply_voi_lut

    try:
        item = ds.VOILUTSequence[0]
        n_entries, first_mapped = int(item.LUTDescriptor[0]), int(item.LUTDescriptor[1])
        n_entries = n_entries or 65536  # a descriptor value of 0 means 2**16 entries
        # A LUT is indexed by integer input values (rescaled values are rounded to the nearest entry).
        index = np.rint(arr).astype(np.int64)
        out = np.asarray(apply_voi_lut(index, ds, index=0, prefer_lut=True), dtype=np.float64)
        # The LUT's output range: the LUT applied to its whole input domain.
        domain = np.arange(first_mapped, first_mapped + n_entries, dtype=np.int64)
        lut = np.asarray(apply_voi_lut(domain, ds, index=0, prefer_lut=True), dtype=np.float64)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"VOI LUT Sequence (0028,3010) is malformed ({_short(exc)})") from None
    lo, hi = float(lut.min()), float(lut.max())
    if hi <= lo:
        return np.zeros_like(out)
    return (out - lo) / (hi - lo)


def _has_window(ds: Any) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _has_voi_lut(ds: Any) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _grey(path: Path, ds: Any, arr: np.ndarray, voi: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if arr.ndim != 2:
        raise ImageReadError(path, f"monochrome pixel data has shape {arr.shape}; expected rows x columns")
    try:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"modality LUT / rescale cannot be applied ({_short(exc)})") from None
    if voi == "auto" and _has_voi_lut(ds):
        out = _voi_lut(values, ds, path)
    elif voi == "auto" and _has_window(ds):
        out = _window(values, ds, path)
    else:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise ImageReadError(path, "pixel data holds no finite values")
        lo, hi = float(finite.min()), float(finite.max())
        out = np.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo)
    out = np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "IDENTITY") or "IDENTITY").strip().upper()
    # For MONOCHROME1 a Presentation LUT Shape of INVERSE restates the same inversion: invert once.
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        out = 1.0 - out
    return out.astype(np.float32)


def _colour(path: Path, ds: Any, arr: np.ndarray, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = np.asarray(apply_color_lut(arr, ds), dtype=np.float64)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(
                path, f"palette colour lookup tables are malformed ({_short(exc)})"
            ) from None
        top = float(2 ** (16 if bits > 8 else 8) - 1)
    else:
        rgb = arr.astype(np.float64)
        top = float(2 ** int(ds.get("BitsStored", 8) or 8) - 1)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ImageReadError(
            path, f"{photometric} pixel data has shape {rgb.shape}; expected rows x columns x 3"
        )
    return np.clip(rgb / top, 0.0, 1.0).astype(np.float32)


def read_dicom(path: str | Path, voi: str = "auto") -> np.ndarray:
    """Read a DICOM image as float32 in [0, 1], high values bright.

    Args:
        path: a DICOM Part 10 file (uncompressed, JPEG, JPEG-LS, JPEG 2000, RLE).
        voi: ``"auto"`` applies the file's VOI LUT or first window; ``"none"`` skips VOI and scales the
            image's range after the modality LUT to [0, 1].

    Returns:
        A 2-D array (rows, columns) for monochrome images; (rows, columns, 3) RGB for colour ones.
        Multi-frame files give their first frame (with a warning).

    Raises:
        ImageReadError: not DICOM, truncated, no pixel data, an unsupported photometric
            interpretation, or a compressed transfer syntax without its decoder (the message names the
            package to install).
        ConfigError: ``voi`` is neither ``"auto"`` nor ``"none"``.
    """
    path = Path(path)
    if voi not in ("auto", "none"):
        raise ConfigError(f"voi must be 'auto' or 'none', not {voi!r} (domain card: image.dicom.voi)")
    ds = read_dicom_dataset(path)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric and any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "PhotometricInterpretation (0028,0004) is missing")
    if photometric and photometric not in _MONO + _COLOUR:
        raise ImageReadError(
            path,
            f"photometric interpretation {photometric!r} is not supported; "
            f"supported: {', '.join(_MONO + _COLOUR)}",
        )
    arr = decode_dicom(path, ds)
    if photometric in _MONO:
        return _grey(path, ds, arr, voi)
    return _colour(path, ds, arr, photometric)


def _plain(value: Any) -> Any:
    """DICOM element values as JSON-friendly Python values."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import IS, DSfloat, PersonName

    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, DSfloat):
        return float(value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    if isinstance(value, int | float | str):
        return value
    return str(value)


def dicom_metadata(path: str | Path, include_phi: bool = False) -> dict[str, Any]:
    """Non-identifying DICOM header fields (and the transfer syntax), without reading pixels.

    Args:
        path: a DICOM file.
        include_phi: also return patient, study, institution and date tags (:data:`PHI_TAGS`). Off by
            default so that metadata written to manifests and logs never carries identifiers.

    Returns:
        Tag keyword -> value for the tags present (lists for multi-valued ones), plus
        ``TransferSyntax`` (its name).
    """
    path = Path(path)
    ds = read_dicom_dataset(path, stop_before_pixels=True)
    out: dict[str, Any] = {}
    for keyword in SAFE_TAGS + (PHI_TAGS if include_phi else ()):
        value = ds.get(keyword)
        if value is not None and value != "":
            out[keyword] = _plain(value)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is not None:
        out["TransferSyntax"] = tsyntax.name
    return out


# What the apps show of a DICOM header: acquisition and display parameters only (PS3.15 Annex E keeps
# these; no names, ids, UIDs, dates, institution or free text).
DISPLAY_TAGS: tuple[str, ...] = (
    "Modality", "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelSpacing", "ImagerPixelSpacing",
    "PixelAspectRatio", "WindowCenter", "WindowWidth", "VOILUTFunction", "RescaleSlope", "RescaleIntercept",
    "PresentationLUTShape", "ViewPosition", "ImageLaterality", "BodyPartExamined", "LossyImageCompression",
    "KVP", "ExposureTime",
)


def display_tags(source: str | Path | Any) -> dict[str, Any]:
    """The technical header tags of a DICOM file (or an open pydicom dataset) that are safe to show.

    Only :data:`DISPLAY_TAGS` (modality, photometric interpretation, bits, spacing, window, view, ...) and the
    transfer syntax's name; never patient, study, institution, date, UID or free-text tags. When the file says
    ``BurnedInAnnotation = YES`` (text such as the patient's name drawn into the pixels), ``warnings`` says so.

    Raises:
        ImageReadError: the file is not a readable DICOM file.

    Example:
        >>> display_tags("chest.dcm")  # doctest: +SKIP
        {'Modality': 'CR', 'PhotometricInterpretation': 'MONOCHROME1', 'Rows': 2140, ..., 'warnings': []}
    """
    ds = read_dicom_dataset(Path(source), stop_before_pixels=True) if isinstance(source, str | Path) else source
    out: dict[str, Any] = {}
    for keyword in DISPLAY_TAGS:
        value = ds.get(keyword)
        if value is not None and value != "":
            out[keyword] = _plain(value)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is not None:
        out["TransferSyntax"] = tsyntax.name
    notes = []
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        notes.append("BurnedInAnnotation is YES: the pixels may show identifying text (names, dates, ids); "
                        "check the image before sharing it")
    out["warnings"] = notes
    return out
