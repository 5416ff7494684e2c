"""One entry point for every image a manifest can name: :func:`read_image`.

A manifest's ``image`` is a PNG/JPEG/BMP/TIFF/DICOM path, a multichannel microscopy stack, or a
whole-slide tile reference ``SLIDE_PATH#x,y,level,size`` (level-0 top-left ``x,y``; ``size`` x ``size``
pixels read at ``level``). With ``reader="auto"`` the format is sniffed from the file's first bytes,
not only its suffix (DICOM files often have none, and ``.tif`` may be a stack or an RGB image).

Every failure is an :class:`~medvlp.errors.ImageReadError` naming the file and what is wrong, so data
loaders can skip and count bad rows; a bad domain-card setting is a :class:`~medvlp.errors.ConfigError`.

Example:
    >>> img = read_image("RG1_J2KI.dcm", options={"voi": "auto"})   # doctest: +SKIP
    >>> img.mode, img.size
    ('RGB', (1841, 1955))
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvlp.errors import ConfigError, ImageReadError
from medvlp.io.readers import find_reader, get_reader, reader_names, register_reader

MAX_PIXELS = 1 << 28  # plain images larger than this are whole slides: tile them instead

_TILE_REF = re.compile(r"^(?P<path>.+)#(?P<x>-?\d+),(?P<y>-?\d+),(?P<level>\d+),(?P<size>\d+)$")


@dataclass(frozen=True)
class TileRef:
    """A parsed ``SLIDE_PATH#x,y,level,size`` reference."""

    path: str
    x: int
    y: int
    level: int
    size: int

    def __str__(self) -> str:
        return f"{self.path}#{self.x},{self.y},{self.level},{self.size}"


def parse_tile_ref(source: str | Path) -> TileRef | None:
    """The tile reference in ``source``, or None when it is a plain path."""
    match = _TILE_REF.match(str(source))
    if match is None:
        return None
    return TileRef(match["path"], int(match["x"]), int(match["y"]), int(match["level"]), int(match["size"]))


def sniff_format(path: str | Path) -> str:
    """The file's format from its magic bytes: dicom, tiff, png, jpeg, bmp, gif, webp, or unknown."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return "unknown"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:2] == b"BM":
        return "bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "unknown"


_SUFFIX_FORMAT = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".svs": "wsi",
    ".ndpi": "wsi",
    ".mrxs": "wsi",
    ".scn": "wsi",
    ".vms": "wsi",
    ".bif": "wsi",
}


def grey_to_rgb(arr: np.ndarray) -> Image.Image:
    """float [0, 1] (H, W) or (H, W, 3) -> 8-bit RGB image."""
    u8 = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if u8.ndim == 2:
        u8 = np.repeat(u8[..., None], 3, axis=2)
    return Image.fromarray(u8, mode="RGB")


def _scale_to_unit(arr: np.ndarray) -> np.ndarray:
    """Integer or float pixel data without a display range: scale the image's own range to [0, 1]."""
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.nan_to_num((arr - lo) / (hi - lo)).astype(np.float32)


def _array_to_rgb(path: Path, arr: np.ndarray) -> Image.Image:
    """An H x W (x C) array of any dtype to RGB: 8-bit as is, deeper data scaled by its range."""
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar RGB(A)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 2:
        arr = arr[..., 0]  # grey + alpha
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageReadError(
            path,
            f"unexpected image shape {tuple(arr.shape)}; for 2-5 fluorescence channels use reader='multichannel'",
        )
    if arr.ndim == 3:
        arr = arr[..., :3]
    if arr.dtype == np.uint8:
        u8 = arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(u8), mode="RGB")
    if arr.dtype == bool:
        return grey_to_rgb(arr.astype(np.float32))
    return grey_to_rgb(_scale_to_unit(arr))


def read_pil(path: Path) -> Image.Image:
    """PNG/JPEG/BMP/GIF/WebP (and simple TIFF) through Pillow, as RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageReadError(
                        path,
                        f"{im.width}x{im.height} pixels is too large for one image; tile it (medvlp wsi tile)",
                    )
                im.load()
                if im.mode == "RGB":
                    return im.copy()
                if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
                    im.mode == "P" and "transparency" in im.info
                ):
                    # Transparent areas over white, as image viewers show them.
                    rgba = im.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    return Image.alpha_composite(background, rgba).convert("RGB")
                if im.mode in ("L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV"):
                    return im.convert("RGB")
                # 16-bit / 32-bit integer or float greyscale: scale its own range.
                return _array_to_rgb(path, np.asarray(im))
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageReadError(path, _bomb_message(path)) from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(
            path, "not an image format Pillow recognises (PNG, JPEG, BMP, TIFF, ...)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError/ValueError/SyntaxError/... on damaged data
        raise ImageReadError(path, f"damaged or truncated image ({_short(exc)})") from None


def _bomb_message(path: Path) -> str:
    size = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:  # the header only: no pixels are decoded
                    size = f"{im.width} x {im.height} = {im.width * im.height:,} pixels "
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Exception:  # noqa: BLE001 - the size is a courtesy; the verdict stands without it
        pass
    return (f"decompression bomb: {size}exceeds Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels; if the file "
            "is trusted and really one image, tile it (medvlp wsi tile) or raise PIL.Image.MAX_IMAGE_PIXELS")


def _short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _read_tiff_rgb(path: Path, options: Mapping[str, Any]) -> Image.Image:
    """A TIFF through tifffile: RGB as is, one channel as grey, 2-5 channels through the channel colours."""
    import tifffile

    from medvlp.io.tiff import MAX_ELEMENTS, _as_chw, to_rgb

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            n_values = int(np.prod(shape))
            if n_values > MAX_ELEMENTS or (len(series.levels) > 1 and n_values > MAX_PIXELS):
                raise ImageReadError(
                    path,
                    f"shape {shape} is a whole-slide image; tile it (medvlp wsi tile) and reference tiles "
                    "as SLIDE#x,y,level,size",
                )
            data = series.asarray()
            photometric = getattr(series.keyframe, "photometric", None)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"damaged or unreadable TIFF ({_short(exc)})") from None
    rgb_like = (
        data.ndim == 3 and data.shape[-1] in (3, 4) and (axes.endswith("S") or int(photometric or 0) == 2)
    )
    if rgb_like or data.ndim == 2:
        return _array_to_rgb(path, data)
    stack = _as_chw(path, data, axes)
    if stack.shape[0] == 1:
        return _array_to_rgb(path, stack[0])
    channels = _channels_for(path, stack.shape[0], options, f"shape {shape}")
    return Image.fromarray(to_rgb(stack, channels), mode="RGB")


def _channels_for(path: Any, n: int, options: Mapping[str, Any], what: str) -> list[Any] | None:
    """The card's channel specs for an image with ``n`` channels.

    The card lists channels in acquisition order; an image with fewer channels uses the first ``n``
    (a DAPI+GFP+mCherry field under a four-colour card), one with more is refused.
    """
    channels = options.get("channels") or None
    if channels is None:
        return None
    if n > len(channels):
        names = ", ".join(str(c.get("name", "?")) for c in channels)
        raise ImageReadError(
            path, f"{n} channels ({what}) but the card configures only {len(channels)} ({names}); "
            "add [[image.channels]] entries to the domain card"
        )
    return list(channels)[:n]


def _read_multichannel(source: str, options: Mapping[str, Any]) -> Image.Image:
    from medvlp.io.tiff import read_multichannel, to_rgb

    # Separate per-channel files are joined with ';' in the manifest: "d0.tif;d1.tif;d2.tif".
    paths: list[str] = [source]
    if ";" in source and not Path(source).exists():
        paths = [p.strip() for p in source.split(";") if p.strip()]
    stack = read_multichannel(paths if len(paths) > 1 else paths[0])
    if stack.shape[0] == 1:
        return _array_to_rgb(Path(paths[0]), stack[0])
    channels = _channels_for(paths[0], stack.shape[0], options, f"{len(paths)} file(s)")
    return Image.fromarray(to_rgb(stack, channels), mode="RGB")


def _read_tile(ref: TileRef) -> Image.Image:
    from medvlp.io.wsi import get_slide

    if ref.size <= 0:
        raise ImageReadError(ref.path, f"tile size {ref.size} in {ref} must be positive")
    slide = get_slide(ref.path)
    return Image.fromarray(slide.read_region(ref.x, ref.y, ref.level, ref.size), mode="RGB")


def read_image(
    source: str | Path, *, reader: str = "auto", options: Mapping[str, Any] | None = None
) -> Image.Image:
    """Read any image a manifest can name as an 8-bit RGB PIL image.

    Args:
        source: a PNG/JPEG/BMP/TIFF/DICOM path; ``SLIDE_PATH#x,y,level,size`` for a whole-slide tile;
            for the multichannel reader, a stack file or per-channel files joined by ``;``.
        reader: ``"auto"`` (the first registered reader whose sniff accepts the source: magic bytes, then
            suffix) or a registered name (:func:`medvlp.io.readers.reader_names`): ``"image"``, ``"dicom"``,
            ``"multichannel"``, ``"wsi"`` and any added with :func:`medvlp.io.readers.register_reader`.
        options: the card's reader settings: ``{"voi": "auto" | "none"}`` for DICOM, ``{"channels":
            [{"name": "DAPI", "color": "blue", "low_percentile": 1, "high_percentile": 99.8}, ...]}``
            for microscopy.

    Raises:
        ImageReadError: the file is missing, damaged or of an unsupported kind (the reason says which).
        ConfigError: an unknown reader or an invalid card option.
    """
    opts: Mapping[str, Any] = options or {}
    text = str(source)
    chosen = get_reader(reader) if reader != "auto" else (find_reader(text) or get_reader("image"))
    try:
        img = chosen.read(text, opts)
    except (ImageReadError, ConfigError):
        raise
    except MemoryError:
        raise ImageReadError(text, "not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - the contract: readers fail with ImageReadError only
        raise ImageReadError(text, f"unreadable ({_short(exc)})") from None
    if not isinstance(img, Image.Image):
        raise ImageReadError(text, f"reader {chosen.name!r} returned {type(img).__name__}, not an image")
    if img.width == 0 or img.height == 0:
        raise ImageReadError(text, f"the image has no pixels ({img.width} x {img.height}); the file is damaged")
    return img if img.mode == "RGB" else img.convert("RGB")


# --- the built-in readers --------------------------------------------------------------------------
def _read_wsi(text: str, opts: Mapping[str, Any]) -> Image.Image:
    ref = parse_tile_ref(text)
    if ref is None:
        raise ImageReadError(text, "the wsi reader needs a tile reference SLIDE_PATH#x,y,level,size")
    return _read_tile(ref)


def _sniff_wsi(text: str) -> bool:
    return parse_tile_ref(text) is not None and not Path(text).exists()


def _read_dicom_rgb(text: str, opts: Mapping[str, Any]) -> Image.Image:
    from medvlp.io.dicom import read_dicom

    return grey_to_rgb(read_dicom(Path(text), voi=str(opts.get("voi", "auto"))))


def _sniff_dicom(text: str) -> bool:
    path = Path(text)
    if not path.is_file():
        return False
    return sniff_format(path) == "dicom" or (
        sniff_format(path) is None and _SUFFIX_FORMAT.get(path.suffix.lower()) == "dicom")


def _read_plain(text: str, opts: Mapping[str, Any]) -> Image.Image:
    """PNG/JPEG/BMP/GIF/WebP/TIFF files (and whatever else Pillow reads); clear errors for the rest."""
    path = Path(text)
    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a regular file")
    fmt = sniff_format(path)
    if fmt == "tiff":
        return _read_tiff_rgb(path, opts)
    if fmt in ("png", "jpeg", "bmp", "gif", "webp"):
        return read_pil(path)
    if _SUFFIX_FORMAT.get(path.suffix.lower()) == "wsi":
        raise ImageReadError(
            path, "a whole-slide image cannot be read whole; tile it and use SLIDE#x,y,level,size references")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty")
    # Unknown magic: let Pillow try (TGA, PPM, ...); it reports what it is not.
    return read_pil(path)


register_reader("wsi", _sniff_wsi, _read_wsi, builtin=True,
                description="whole-slide tile references SLIDE#x,y,level,size (openslide / tiffslide)")
register_reader("dicom", _sniff_dicom, _read_dicom_rgb, builtin=True,
                description="DICOM (modality LUT, VOI LUT or window, MONOCHROME1 inversion)")
register_reader("multichannel", lambda text: False, lambda text, opts: _read_multichannel(text, opts),
                builtin=True, description="multichannel microscopy stacks, channels coloured by the card")
register_reader("image", lambda text: True, _read_plain, builtin=True,
                description="PNG, JPEG, BMP, TIFF and what Pillow reads (the fallback of auto)")
# Kept importable: the names the readers registered above, in auto's order.
READERS = tuple(reader_names())


def read_image_array(
    source: str | Path, *, reader: str = "auto", options: Mapping[str, Any] | None = None
) -> np.ndarray:
    """:func:`read_image` as a float32 (H, W, 3) array in [0, 1].

    DICOM keeps its full precision here (no 8-bit rounding).
    """
    text = str(source)
    opts: Mapping[str, Any] = options or {}
    if parse_tile_ref(text) is None and reader in ("auto", "dicom"):
        path = Path(text)
        if path.is_file() and (reader == "dicom" or sniff_format(path) == "dicom"):
            from medvlp.io.dicom import read_dicom

            arr = read_dicom(path, voi=str(opts.get("voi", "auto")))
            return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr
    img = read_image(source, reader=reader, options=options)
    return np.asarray(img, dtype=np.float32) / 255.0
