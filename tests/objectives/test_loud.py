"""Loud failures of the objective registry: broken modules and combinations without an image-text loss."""

from __future__ import annotations

import pytest

import medvlp.objectives as objectives
from medvlp.errors import ConfigError


def test_a_broken_objective_module_raises_its_own_import_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "brokenobj.py").write_text("import medvlp_no_such_dependency_xyz\n")
    monkeypatch.setattr(objectives, "__path__", [*objectives.__path__, str(tmp_path)])
    monkeypatch.setattr(objectives, "_loaded", False, raising=False)
    with pytest.raises(ModuleNotFoundError, match="medvlp_no_such_dependency_xyz"):
        objectives.parse_objective("brokenobj")


def test_builtin_objectives_are_discovered_without_an_import_list() -> None:
    assert {"clip", "siglip", "concept", "keep", "softclip"} <= set(objectives.available())


@pytest.mark.parametrize("spec", ["concept", "0.5*concept"])
def test_concept_without_an_image_text_objective_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="needs an image-text objective.*siglip\\+concept"):
        objectives.parse_objective(spec)


@pytest.mark.parametrize("spec,weights", [("siglip+concept", {"siglip": 1.0, "concept": 0.5}),
                                          ("clip+0.25*concept", {"clip": 1.0, "concept": 0.25})])
def test_concept_with_an_image_text_objective_still_parses(spec: str, weights: dict) -> None:
    assert objectives.parse_objective(spec) == weights


def test_keep_plus_concept_adds_nothing_silently() -> None:
    obj = objectives.build_objective("keep+concept")
    assert set(obj.parts) == {"keep", "concept"}  # no siglip slipped in
    assert obj.primary == "keep" and obj.logit_init == obj.parts["keep"].logit_init
    assert obj.model_kwargs()["concept_head"] is True and obj.model_kwargs()["init_logit_bias"] is None
