"""Tissue detection on a slide thumbnail: Otsu on saturation."""

from __future__ import annotations

import numpy as np
from PIL import Image


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8-range values (maximises the between-class variance)."""
    hist = np.bincount(np.clip(values.ravel(), 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    # Pixels > t are foreground; t maximises the between-class variance.
    return float(np.argmax(between))


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0..255 (float32)."""
    rgb = rgb.astype(np.float32)
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(mx > 0, (mx - mn) / mx, 0.0)
    return (s * 255.0).astype(np.float32)


def tissue_mask(
    thumbnail: Image.Image | np.ndarray,
    saturation_floor: float = 8,
    median: int = 7,
    close: int = 4,
    *,
    return_threshold: bool = False,
) -> np.ndarray | tuple[np.ndarray, float]:
    """Tissue mask of an RGB thumbnail: stained tissue is saturated, glass and background are grey.

    HSV saturation, a ``median`` x ``median`` median blur, Otsu's threshold raised to at least
    ``saturation_floor`` (so a blank slide stays blank instead of splitting its noise in two), then a
    morphological closing with a ``close`` x ``close`` square to fill small holes.

    Args:
        thumbnail: RGB image (PIL or H x W x 3 array).
        saturation_floor: lowest threshold on the 0..255 saturation scale.
        median: median filter size (odd; 0 or 1 disables it).
        close: closing structuring element size (0 or 1 disables it).
        return_threshold: also return the threshold that was used.

    Returns:
        Boolean (H, W) mask (and the threshold when asked).
    """
    from scipy import ndimage

    rgb = np.asarray(thumbnail.convert("RGB") if isinstance(thumbnail, Image.Image) else thumbnail)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"tissue_mask needs an RGB image, got shape {rgb.shape}")
    sat = np.rint(saturation(rgb[..., :3])).astype(np.uint8)
    if median and median > 1:
        sat = ndimage.median_filter(sat, size=int(median), mode="nearest")
    threshold = max(otsu_threshold(sat), float(saturation_floor))
    mask = sat > threshold
    if close and close > 1:
        pad = int(close)
        # Pad so that the erosion half of the closing does not eat tissue touching the border.
        padded = np.pad(mask, pad, mode="edge")
        padded = ndimage.binary_closing(padded, structure=np.ones((close, close), dtype=bool))
        mask = padded[pad:-pad, pad:-pad]
    return (mask, threshold) if return_threshold else mask

