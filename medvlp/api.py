"""The Python API: ``medvlp.load`` and the :class:`Model` it returns.

Example:
    >>> import medvlp                                                               # doctest: +SKIP
    >>> model = medvlp.load("runs/pathology-demo")                                  # doctest: +SKIP
    >>> result = model.zero_shot("tile.png", labels=["adipose tissue", "mucus"])    # doctest: +SKIP
    >>> result.top_label, result.probabilities                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from medvlp.domains import DomainCard, load_card
from medvlp.errors import ConfigError

if TYPE_CHECKING:
    from medvlp.models import MedVLP


@dataclass
class DiagnosisResult:
    """Zero-shot result for one image."""

    image: str  # the source (path or "<array>")
    probabilities: dict[str, float]  # label -> probability (softmax, or per-finding for multi-label)
    top_label: str
    prediction_set: list[str]  # conformal set at the calibrated coverage, or labels covering 90% mass
    calibrated: bool  # True when a fitted temperature/conformal threshold was applied
    multilabel: bool = False
    coverage: float | None = None  # the conformal coverage target, when calibrated
    unknown_labels: list[str] = field(default_factory=list)  # labels with no concept (raw text used)
    _model: Model | None = field(default=None, repr=False, compare=False)
    _pixels: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "probabilities": self.probabilities, "top_label": self.top_label,
                "prediction_set": self.prediction_set, "calibrated": self.calibrated}

    def explain(self, **kwargs: Any) -> Any:
        """Concept scores and heatmaps for this image (see :mod:`medvlp.explain`)."""
        from medvlp.explain import explain_image

        if self._model is None:
            raise ConfigError("this result is not attached to a model; call model.zero_shot(...) to get one")
        return explain_image(self._model, self._pixels, labels=list(self.probabilities), result=self, **kwargs)


class Model:
    """A loaded model with its domain card, preprocessing and (optional) calibration."""

    def __init__(self, net: MedVLP, *, domain: str | DomainCard | None = None, source: str = "") -> None:
        self.net = net.eval()
        meta = getattr(net, "meta", {}) or {}
        dom = domain or meta.get("domain") or "pathology"
        self.card = load_card(dom) if isinstance(dom, str) else dom
        self.source = source
        self.calibration: dict[str, Any] | None = meta.get("calibration")
        from medvlp.data.dataset import Normalizer, options_for

        self.opts = options_for(net.spec, self.card, train=False)
        self._norm = Normalizer(self.opts.mean, self.opts.std)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    # -- inputs -------------------------------------------------------------------------------
    def pixels(self, image: Any) -> torch.Tensor:
        """uint8 (3, S, S) tensor from a path, PIL image or array, preprocessed as in training.

        Raises:
            ImageReadError: the file cannot be read as an image.
        """
        from medvlp.data.dataset import load_as_array, to_square

        if isinstance(image, (str, Path)):
            arr = load_as_array(str(image), self.opts)
        else:
            img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
            img = img.convert("L").convert("RGB") if self.opts.grayscale else img.convert("RGB")
            arr = np.asarray(to_square(img, self.opts.size, self.opts.pad_to_square), dtype=np.uint8)
        return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1)  # a writable copy

    _pixels = pixels  # the older private name, still used by medvlp.explain

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) pixels -> the float input of the image tower (on the model's device)."""
        return self._norm.to(self.device)(pixels.to(self.device))

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings (N, D), float32 on the CPU, of uint8 (N, 3, S, S) pixels from :meth:`pixels`."""
        return self.net.encode_image(self.normalize(pixels), normalize=True).float().cpu()

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any] | Any, batch_size: int = 128) -> torch.Tensor:
        """Unit image embeddings (N, D) for paths / PIL images / arrays."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        out = []
        for i in range(0, len(images), batch_size):
            out.append(self.embed_pixels(torch.stack([self.pixels(im) for im in images[i:i + batch_size]])))
        return torch.cat(out)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings (N, D)."""
        from medvlp.eval.zeroshot import embed_texts

        return embed_texts(self.net, list(texts))

    # -- zero-shot ----------------------------------------------------------------------------
    def classifier(self, labels: Sequence[str] | None = None, *, multilabel: bool | None = None) -> Any:
        from medvlp.eval.zeroshot import ZeroShotClassifier

        lset = self.card.label_set()
        labels = list(labels) if labels is not None else lset.names
        ml = lset.multilabel if (multilabel is None and labels == lset.names) else bool(multilabel)
        temp = float(self.calibration["temperature"]) if self.calibration and not ml else 1.0
        return ZeroShotClassifier(self.net, labels, card=self.card, multilabel=ml, temperature=temp)

    def zero_shot(self, images: Any, labels: Sequence[str] | None = None, *,
                  multilabel: bool | None = None) -> DiagnosisResult | list[DiagnosisResult]:
        """Zero-shot diagnosis of one image (returns one result) or a list (returns a list)."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        clf = self.classifier(labels, multilabel=multilabel)
        pixels = [self.pixels(im) for im in items]
        probs = clf.predict_proba(self.embed_pixels(torch.stack(pixels)))
        results = [self.result(im, px1, p, clf) for im, px1, p in zip(items, pixels, probs, strict=True)]
        return results[0] if single else results

    def result(self, image: Any, pixels: torch.Tensor, p: np.ndarray, clf: Any) -> DiagnosisResult:
        """The :class:`DiagnosisResult` of one image from its class probabilities ``p`` under ``clf``
        (prediction set from the calibration when there is one)."""
        labels = clf.labels
        probs = {lab: float(v) for lab, v in zip(labels, p, strict=False)}
        top = labels[int(np.argmax(p))]
        cal = self.calibration or {}
        calibrated = bool(cal) and not clf.multilabel
        coverage = None
        if clf.multilabel:
            pset = [lab for lab in labels if probs[lab] >= 0.5]
        elif calibrated and cal.get("conformal_threshold") is not None:
            thr = float(cal["conformal_threshold"])
            pset = [lab for lab in labels if 1.0 - probs[lab] <= thr] or [top]
            coverage = float(cal.get("coverage", 0.9))
        else:  # uncalibrated: the smallest set of labels holding 90% of the probability mass
            order = np.argsort(-p)
            mass, pset = 0.0, []
            for k in order:
                pset.append(labels[k])
                mass += float(p[k])
                if mass >= 0.9:
                    break
        return DiagnosisResult(image=str(image) if isinstance(image, (str, Path)) else "<array>",
                               probabilities=probs, top_label=top, prediction_set=pset, calibrated=calibrated,
                               multilabel=clf.multilabel, coverage=coverage, unknown_labels=clf.unknown_labels,
                               _model=self, _pixels=pixels)

    _result = result  # the older private name

    # -- calibration --------------------------------------------------------------------------
    def calibrate(self, manifest: str | Path, labels: Sequence[str] | None = None, *, coverage: float = 0.9,
                  save: bool = True) -> dict[str, Any]:
        """Fit temperature scaling and a split-conformal threshold on a labelled validation manifest."""
        from medvlp.data.dataset import ImageTextDataset
        from medvlp.data.manifest import read_manifest
        from medvlp.eval.calibration import ConformalPredictor, fit_temperature
        from medvlp.eval.zeroshot import embed_dataset

        m = read_manifest(manifest)
        labels = list(labels) if labels is not None else m.label_names()
        clf = self.classifier(labels, multilabel=False)
        ds = ImageTextDataset(m, None, self.opts, train=False, need_captions=False, progress=False,
                              max_bad_fraction=1.0)
        feats = embed_dataset(self.net, ds)
        logits = clf.logits(feats)
        index = {lab.lower(): k for k, lab in enumerate(labels)}
        keep, y = [], []
        for k in range(len(ds)):
            labs = m.labels(ds.row_of(k))
            if len(labs) == 1 and labs[0].lower() in index:
                keep.append(k)
                y.append(index[labs[0].lower()])
        if len(keep) < 10:
            raise ConfigError(f"{manifest}: only {len(keep)} rows with a label in {labels}; need at least 10")
        logits_k, y_arr = logits[keep].numpy(), np.asarray(y)
        temperature = float(fit_temperature(logits_k, y_arr))
        probs = torch.softmax(torch.from_numpy(logits_k) / temperature, -1).numpy()
        conf = ConformalPredictor().fit(probs, y_arr, coverage=coverage)
        assert conf.threshold is not None  # fit sets it
        self.calibration = {"temperature": temperature, "conformal_threshold": float(conf.threshold),
                            "coverage": coverage, "n_cal": len(keep), "labels": labels, "fitted_on": str(manifest),
                            "method": "temperature scaling + split conformal (LAC)"}
        if save and self.source and Path(self.source).is_dir():
            from medvlp.models.zoo import model_dir

            meta_path = model_dir(Path(self.source)) / "medvlp.json"
            if meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                meta["calibration"] = self.calibration
                meta_path.write_text(json.dumps(meta, indent=2))
        return self.calibration


def load(source: str | Path, *, domain: str | None = None, device: str = "cpu") -> Model:
    """Load a run folder, model folder, ``local-dir:`` or ``hf-hub:`` id (or a registered config name).

    Raises:
        ModelError: the source does not exist or holds no model.
    """
    from medvlp.models import create_model

    net = create_model(str(source), device=device)
    return Model(net, domain=domain, source=str(source))
