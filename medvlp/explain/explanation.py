"""One image's explanation: ranked concepts, heatmaps per label/concept, Grad-CAM, bottleneck view."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medvlp.errors import ConfigError


@dataclass
class Explanation:
    """What :meth:`medvlp.api.DiagnosisResult.explain` returns.

    Attributes:
        concepts: ``[(concept name, score in [0, 1]), ...]`` highest first (see :mod:`.concepts`).
        concept_ids: concept name -> ontology id (or the user's text).
        heatmaps: label or concept name -> (S, S) map on the model input (S = the model's image size).
        heatmap_source: ``"concept_head"`` or ``"patch_text"``.
        gradcam: label -> (S, S) Grad-CAM map in [0, 1] (the top label by default); None when the
            ``grad-cam`` package is missing or Grad-CAM was not asked for.
        bottleneck: ``[(concept, contribution), ...]`` to the bottleneck's predicted label, when a
            concept bottleneck was given or found in the run folder; else None.
        bottleneck_label: the bottleneck's predicted label (or None).
        image: the (S, S, 3) uint8 model input the maps are aligned with.
    """

    concepts: list[tuple[str, float]]
    concept_ids: dict[str, str]
    heatmaps: dict[str, np.ndarray]
    heatmap_source: str
    gradcam: dict[str, np.ndarray] | None
    image: np.ndarray
    bottleneck: list[tuple[str, float]] | None = None
    bottleneck_label: str | None = None
    notes: list[str] = field(default_factory=list)

    def overlay(self, key: str, alpha: float = 0.5, *, kind: str = "heatmap", size: int | None = None) -> Image.Image:
        """The model input with the heatmap (or Grad-CAM map) of ``key`` blended at opacity ``alpha``."""
        from medvlp.explain.heatmaps import overlay

        maps = self.heatmaps if kind == "heatmap" else (self.gradcam or {})
        if key not in maps:
            raise ConfigError(f"no {kind} for '{key}'; available: {sorted(maps)}")
        img = Image.fromarray(self.image)
        if size:
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        if kind == "gradcam":  # already scaled to [0, 1] by Grad-CAM
            return overlay(img, maps[key], alpha, vmin=0.0, vmax=1.0)
        # Heatmaps are shown relative (min to max of this map), so a weak but localised map stays visible.
        return overlay(img, maps[key], alpha)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (maps as peak position and max value, not full arrays)."""
        from medvlp.explain.heatmaps import peak

        return {
            "concepts": [{"concept": n, "id": self.concept_ids.get(n, n), "score": s} for n, s in self.concepts],
            "heatmap_source": self.heatmap_source,
            "heatmap_peaks": {k: {"row_col": list(peak(v)), "max": float(np.nanmax(v))} for k, v in self.heatmaps.items()},
            "gradcam_labels": sorted(self.gradcam or {}),
            "bottleneck_label": self.bottleneck_label,
            "bottleneck": [{"concept": n, "contribution": c} for n, c in (self.bottleneck or [])],
        }


def _find_bottleneck(model: Any) -> Any:
    from medvlp.explain.bottleneck import BOTTLENECK_FILE, ConceptBottleneck

    src = Path(str(getattr(model, "source", "") or ""))
    for cand in (src / BOTTLENECK_FILE, src / "model" / BOTTLENECK_FILE):
        if cand.is_file():
            return ConceptBottleneck.load(cand)
    return None


def explain_image(model: Any, pixels: torch.Tensor | None, labels: Sequence[str] | None = None, *,
                  result: Any = None, concepts: Sequence[str] | None = None, image: Any = None,
                  heatmap_keys: Sequence[str] | None = None, source: str = "auto",
                  gradcam: bool | Sequence[str] = True, bottleneck: Any = None) -> Explanation:
    """Explain one image with a loaded model.

    Args:
        model: a :class:`medvlp.api.Model`.
        pixels: the uint8 (3, S, S) model input (``DiagnosisResult`` keeps it); None to read ``image``.
        labels: the zero-shot labels (heatmaps and Grad-CAM are computed for them).
        result: the :class:`DiagnosisResult` being explained (its top label is Grad-CAM's default target).
        concepts: concept ids/names to score (default: the card's ``[explain]`` list).
        image: path / PIL / array, used when ``pixels`` is None.
        heatmap_keys: labels/concepts to map (default: every label and the five top concepts).
        source: heatmap source, ``"auto"``, ``"concept_head"`` or ``"patch_text"``.
        gradcam: True (the top label), a list of labels, or False.
        bottleneck: a :class:`ConceptBottleneck`; None looks for ``concept_bottleneck.json`` in the run folder.
    """
    from medvlp.explain.bottleneck import ConceptBottleneck
    from medvlp.explain.concepts import concept_score_matrix, rank_concepts, resolve_concepts
    from medvlp.explain.heatmaps import heatmaps_from_pixels

    if pixels is None:
        if image is None:
            raise ConfigError("explain_image needs pixels or an image")
        pixels = model._pixels(image)
    card = model.card
    labels = list(labels) if labels is not None else card.label_set().names
    dev = model.device
    x = model._norm.to(dev)(pixels[None].to(dev))
    with torch.no_grad():
        feats = model.net.encode_image(x, normalize=True).float().cpu()
    notes: list[str] = []
    specs = resolve_concepts(card, concepts)
    scores = concept_score_matrix(model.net, feats, specs, card)[0]
    ranked = rank_concepts(specs, scores)
    ids = {s.name: s.id for s in specs}

    # heatmaps: labels with their card synonyms; concepts with their ontology names
    if heatmap_keys is None:
        heatmap_keys = [*labels, *[n for n, _ in ranked[:5] if n not in labels]]
    key_specs = resolve_concepts(card, list(heatmap_keys))
    names = []
    for key, spec in zip(heatmap_keys, key_specs, strict=True):
        lab = card.find_label(key)
        names.append(list(lab.names) if lab is not None else list(spec.names))
    maps, used = heatmaps_from_pixels(model.net, x, names, list(card.prompts.templates), source=source)
    heatmaps = {k: maps[0, i] for i, k in enumerate(heatmap_keys)}

    cams = None
    if gradcam:
        top = result.top_label if result is not None else labels[0]
        targets = [top] if gradcam is True else list(gradcam)
        try:
            from medvlp.explain.gradcam import gradcam_from_pixels

            clf = model.classifier(labels, multilabel=False) if len(labels) > 1 else None
            if clf is None:
                notes.append("Grad-CAM needs at least two labels")
            else:
                idx = [clf.labels.index(t) for t in targets]
                cam = gradcam_from_pixels(model.net, x, clf.weights, idx)
                cams = {t: cam[0, j] for j, t in enumerate(targets)}
        except ConfigError as e:  # grad-cam not installed
            notes.append(str(e))
            warnings.warn(str(e), stacklevel=2)

    cbm = bottleneck if bottleneck is not None else _find_bottleneck(model)
    contrib, cbm_label = None, None
    if isinstance(cbm, ConceptBottleneck):
        want = {s.name for s in specs}
        if set(cbm.concepts) <= want:
            vec = np.array([scores[[s.name for s in specs].index(c)] for c in cbm.concepts])
        else:  # the bottleneck was fitted on other concepts: score those
            cb_specs = resolve_concepts(card, cbm.concepts)
            vec = concept_score_matrix(model.net, feats, cb_specs, card)[0]
        cbm_label = cbm.labels[int(cbm.predict_proba(vec).argmax(1)[0])]
        contrib = cbm.contributions(vec, cbm_label)
    img = pixels.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    return Explanation(concepts=ranked, concept_ids=ids, heatmaps=heatmaps, heatmap_source=used, gradcam=cams,
                       image=img, bottleneck=contrib, bottleneck_label=cbm_label, notes=notes)
