"""Explanations: concept scores, patch-concept heatmaps, Grad-CAM, concept bottleneck, slide heatmaps.

Example:
    >>> import medvlp                                                            # doctest: +SKIP
    >>> model = medvlp.load("runs/pathology-demo")                               # doctest: +SKIP
    >>> ex = model.zero_shot("tile.png", labels=["mucus", "adipose tissue"]).explain()   # doctest: +SKIP
    >>> ex.concepts[:2], ex.heatmaps["mucus"].shape, ex.heatmap_source          # doctest: +SKIP
"""

from medvlp.explain.bottleneck import BOTTLENECK_FILE, ConceptBottleneck, fit_concept_bottleneck
from medvlp.explain.concepts import (
    ConceptSpec,
    concept_score_matrix,
    concept_scores,
    rank_concepts,
    resolve_concepts,
)
from medvlp.explain.explanation import Explanation, explain_image
from medvlp.explain.gradcam import gradcam, gradcam_from_pixels
from medvlp.explain.heatmaps import (
    colorize,
    heatmaps_from_pixels,
    overlay,
    patch_heatmaps,
    peak,
    pointing_hit,
)
from medvlp.explain.slide import read_tile_scores_h5, slide_heatmap, slide_heatmap_from_h5

__all__ = [
    "BOTTLENECK_FILE",
    "ConceptBottleneck",
    "ConceptSpec",
    "Explanation",
    "colorize",
    "concept_score_matrix",
    "concept_scores",
    "explain_image",
    "fit_concept_bottleneck",
    "gradcam",
    "gradcam_from_pixels",
    "heatmaps_from_pixels",
    "overlay",
    "patch_heatmaps",
    "peak",
    "pointing_hit",
    "rank_concepts",
    "read_tile_scores_h5",
    "resolve_concepts",
    "slide_heatmap",
    "slide_heatmap_from_h5",
]
