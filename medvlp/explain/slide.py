"""Slide heatmaps: moved to :mod:`medvlp.eval.slide_maps` (the WSI zero-shot uses them); kept importable here."""

from __future__ import annotations

from medvlp.eval.slide_maps import read_tile_scores_h5, slide_heatmap, slide_heatmap_from_h5

__all__ = ["read_tile_scores_h5", "slide_heatmap", "slide_heatmap_from_h5"]
