"""The logic behind the Streamlit apps (``apps/diagnose.py``, ``apps/explain.py``), importable and tested.

The apps only lay out widgets; reading uploads (with DICOM windowing and without identifying tags),
the size limit, model resolution, the demo run, label suggestions and result tables live here.

Example:
    >>> check_upload_size(10 * 2**20, limit_mb=200)          # 10 MB is fine
    >>> from medvlp.domains import load_card
    >>> label_suggestions(load_card("pathology"), "mucu")[:1]
    ['mucus']
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvlp.errors import DataError, ImageReadError, ModelError

# Streamlit's own limit (server.maxUploadSize, set by `medvlp app`) refuses larger files before they
# reach Python; this check repeats it with a clear message for files that slip through (tests, proxies).
MAX_UPLOAD_MB = int(os.environ.get("MEDVLP_MAX_UPLOAD_MB", "200"))
UPLOAD_TYPES = ("png", "jpg", "jpeg", "dcm", "dicom", "tif", "tiff", "bmp")


def check_upload_size(n_bytes: int, limit_mb: int | None = None, name: str = "upload") -> None:
    """Raise :class:`DataError` when an upload is larger than ``limit_mb`` megabytes."""
    limit = MAX_UPLOAD_MB if limit_mb is None else limit_mb
    if n_bytes > limit * 2**20:
        raise DataError(f"{name}: {n_bytes / 2**20:.0f} MB is larger than the {limit} MB upload limit; "
                        "crop or downsample it, or run `medvlp zeroshot` on the file instead")


def upload_id(data: bytes) -> str:
    """An opaque id for an upload (``upload-`` and 8 hex digits of its SHA-256): what the apps show and export
    instead of the file name, which often holds a record or accession number."""
    import hashlib

    return "upload-" + hashlib.sha256(data).hexdigest()[:8]


@dataclass
class Upload:
    """One uploaded image, decoded. ``name`` is its opaque :func:`upload_id`, never the file name."""

    name: str
    image: Image.Image  # 8-bit RGB, as the model reads it
    kind: str  # png | jpeg | tiff | dicom | ...
    metadata: dict[str, Any] = field(default_factory=dict)  # technical header tags (DICOM display_tags)
    warnings: list[str] = field(default_factory=list)  # e.g. burned-in annotation
    window: tuple[float, float] | None = None  # DICOM (centre, width) applied
    value_range: tuple[float, float] | None = None  # DICOM modality value range (for window sliders)


def _dicom_values(path: Path) -> tuple[np.ndarray, Any]:
    """Modality values (float64, rows x cols) and the dataset; first frame of multi-frame files."""
    from medvlp.io.dicom import decode_dicom, read_dicom_dataset

    ds = read_dicom_dataset(path)
    arr = decode_dicom(path, ds)
    if arr.ndim == 3 and arr.shape[-1] != 3:
        arr = arr[0]
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64), ds


def dicom_window_defaults(path: str | Path) -> tuple[float, float, float, float]:
    """(centre, width, min, max): the file's first window (or the value range) and the value range."""
    values, ds = _dicom_values(Path(path))
    lo, hi = float(values.min()), float(values.max())
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        centre = float(wc[0] if hasattr(wc, "__len__") and not isinstance(wc, str) else wc)
        width = float(ww[0] if hasattr(ww, "__len__") and not isinstance(ww, str) else ww)
    except (TypeError, ValueError):
        centre, width = (lo + hi) / 2, max(hi - lo, 1.0)
    return centre, width, lo, hi


def read_dicom_windowed(path: str | Path, centre: float, width: float) -> Image.Image:
    """A monochrome DICOM with a linear window (DICOM PS3.3 C.11.2.1.2), high values bright, as RGB."""
    from medvlp.io.images import grey_to_rgb

    path = Path(path)
    values, ds = _dicom_values(path)
    if values.ndim == 3:  # colour: windowing does not apply
        from medvlp.io.dicom import read_dicom

        return grey_to_rgb(read_dicom(path))
    w = max(float(width), 1.0)
    out = np.clip((values - (centre - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    inverse = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" or \
        str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if inverse:
        out = 1.0 - out
    return grey_to_rgb(out.astype(np.float32))


def read_upload(name: str, data: bytes, *, card: Any = None, window: tuple[float, float] | None = None,
                limit_mb: int | None = None) -> Upload:
    """Decode an uploaded file (PNG, JPEG, TIFF incl. multichannel microscopy, DICOM).

    ``name`` (the browser's file name) only decides the format by its suffix; the upload is known by its
    opaque :func:`upload_id` in the result and in every message. DICOM headers are reduced to technical
    tags (:func:`medvlp.io.dicom.display_tags`); a ``window`` (centre, width) replaces the file's own VOI.

    Raises:
        DataError: too large or empty. ImageReadError: unreadable (the reason says why).
    """
    uid = upload_id(data)
    check_upload_size(len(data), limit_mb, uid)
    if not data:
        raise DataError(f"{uid}: the file is empty")
    from medvlp.io import read_image, sniff_format

    suffix = Path(name).suffix.lower() or ".bin"
    with tempfile.TemporaryDirectory(prefix="medvlp-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        kind = sniff_format(path)
        if kind == "dicom" or suffix in (".dcm", ".dicom"):
            from medvlp.io.dicom import display_tags, read_dicom

            try:
                meta = display_tags(path)
            except ImageReadError as e:
                raise ImageReadError(uid, getattr(e, "reason", None) or str(e)) from None
            notes = list(meta.pop("warnings", []))
            try:
                centre, width, lo, hi = dicom_window_defaults(path)
            except ImageReadError as first:
                try:
                    read_dicom(path)  # the reader's own message (no pixel data, missing decoder, ...)
                except ImageReadError as e:
                    raise ImageReadError(uid, e.reason) from None
                raise ImageReadError(uid, first.reason) from None
            except Exception as e:  # noqa: BLE001 - pydicom errors on damaged files
                raise ImageReadError(uid, f"unreadable DICOM ({str(e).splitlines()[0][:120]})") from None
            win = window or (centre, width)
            img = read_dicom_windowed(path, *win)
            return Upload(uid, img, "dicom", meta, notes, window=(float(win[0]), float(win[1])),
                          value_range=(lo, hi))
        opts = card.image.reader_options() if card is not None else None
        try:
            img = read_image(path, options=opts)
        except ImageReadError as e:
            raise ImageReadError(uid, e.reason if hasattr(e, "reason") else str(e)) from None
        img.load()
        return Upload(uid, img.convert("RGB"), kind)


# --------------------------------------------------------------------------------------------------
# Models and the demo run
# --------------------------------------------------------------------------------------------------
def resolve_model_source(text: str) -> str:
    """Validate what the user typed as a model: a run/model folder, ``local-dir:``/``hf-hub:`` id or config name.

    Raises:
        ModelError: empty, or a path that does not exist (the message says what to give instead).
    """
    src = (text or "").strip()
    if not src:
        raise ModelError("no model given: type a run folder (e.g. runs/pathology-demo) or a zoo id, "
                         "or use the demo model")
    if src.startswith(("hf-hub:", "local-dir:")):
        return src
    from medvlp.models import list_models

    if src in list_models():
        return src
    p = Path(src).expanduser()
    if not p.exists():
        raise ModelError(f"model folder {p} does not exist; give a run folder written by `medvlp pretrain`, "
                         "a 'local-dir:PATH' or 'hf-hub:ORG/NAME' id")
    if not p.is_dir():
        raise ModelError(f"{p} is a file, not a model folder")
    return str(p)


def demo_run_dir(domain: str) -> Path:
    """Where the apps keep the demo model of ``domain`` (``$MEDVLP_DEMO_RUN`` overrides)."""
    env = os.environ.get("MEDVLP_DEMO_RUN")
    if env:
        return Path(env)
    from medvlp.data.dataset import default_cache_dir

    return default_cache_dir() / "runs" / f"{domain}-demo"


def find_demo_run(domain: str) -> Path | None:
    """An already trained demo run: the app's own, or ``runs/<domain>-demo`` in the working folder."""
    for cand in (demo_run_dir(domain), Path("runs") / f"{domain}-demo"):
        if (cand / "model").is_dir() or (cand / "medvlp.json").is_file():
            return cand
    return None


def train_demo_run(domain: str, out: str | Path | None = None,
                   progress: Callable[[int, int], None] | None = None, poll_s: float = 0.5,
                   **overrides: Any) -> Path:
    """Train the demo model of ``domain`` (``medvlp.pretrain`` on its demo corpus), reporting progress.

    Training runs in a worker thread; ``progress(step, total)`` is called from the caller's thread as
    ``metrics.jsonl`` grows, so a Streamlit progress bar can be updated safely.

    Args:
        domain: a domain with a demo corpus.
        out: run folder (default :func:`demo_run_dir`).
        progress: callback for (steps done, total steps).
        poll_s: seconds between progress checks.
        overrides: :class:`medvlp.config.TrainConfig` fields (e.g. ``steps``, ``batch_size``); the
            objective defaults to ``siglip+concept`` so the demo model has a concept head for heatmaps.
    """
    import medvlp

    out = Path(out) if out else demo_run_dir(domain)
    kwargs: dict[str, Any] = {"objective": "siglip+concept", "log_every": 1, "quiet": True, **overrides}
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = medvlp.pretrain(domain=domain, out=str(out), **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=work, daemon=True)
    th.start()
    total = int(kwargs.get("steps") or 0)
    while th.is_alive():
        th.join(poll_s)
        if progress is not None:
            if not total and (out / "config.yaml").is_file():
                import yaml

                total = int((yaml.safe_load((out / "config.yaml").read_text()) or {}).get("steps") or 0)
            progress(_last_step(out / "metrics.jsonl"), total)
    if "error" in box:
        raise box["error"]
    if progress is not None:
        progress(total, total)
    return out


def _last_step(path: Path) -> int:
    try:
        lines = path.read_text().strip().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


# --------------------------------------------------------------------------------------------------
# Labels and results
# --------------------------------------------------------------------------------------------------
def label_suggestions(card: Any, query: str = "", limit: int = 20) -> list[str]:
    """Label names to offer: the card's label sets, then ontology concepts matching ``query``."""
    names = [lab.name for ls in card.label_sets.values() for lab in ls.labels]
    q = query.strip().lower()
    out = [n for n in dict.fromkeys(names) if not q or q in n.lower()]
    if q:
        from medvlp.explain.concepts import card_graph

        graph = card_graph(card)
        if graph is not None:
            out += [c.name for c in graph.search(query, limit=limit)]
    return list(dict.fromkeys(out))[:limit]


def parse_labels(text: str) -> list[str]:
    """Labels from a text box: one per line or comma-separated; blanks dropped, duplicates refused.

    Raises:
        ConfigError: empty list or duplicates (from :func:`medvlp.eval.zeroshot.check_labels`).
    """
    from medvlp.eval.zeroshot import check_labels

    parts = [p.strip() for line in (text or "").splitlines() for p in line.split(",")]
    return check_labels([p for p in parts if p])


def results_table(results: Sequence[Any]) -> Any:
    """One row per image: image, top label, prediction set, calibrated, one column per label."""
    import pandas as pd

    rows = []
    for r in results:
        row = {"image": r.image, "top_label": r.top_label, "prediction_set": "; ".join(r.prediction_set),
               "calibrated": r.calibrated}
        row.update({f"p({k})": round(float(v), 6) for k, v in r.probabilities.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def results_json(results: Sequence[Any]) -> str:
    """The ``medvlp zeroshot --json`` format: a list of per-image objects."""
    return json.dumps([r.to_dict() for r in results], indent=2)


def image_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
