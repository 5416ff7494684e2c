"""Zero-shot classifier: prompt sets, label checks, and the spread over random prompt subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvlp.domains import load_card
from medvlp.errors import ConfigError
from medvlp.eval.zeroshot import ZeroShotClassifier, build_prompts, check_labels, format_spread, prompt_spread

LABELS = ["adipose tissue", "mucus", "debris"]


@pytest.fixture(scope="module")
def tiny():
    from medvlp.models import create_model

    return create_model("tiny", seed=0).eval()


@pytest.fixture(scope="module")
def data(tiny) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(40, tiny.embed_dim, generator=g), dim=-1)
    y = np.arange(40) % 3
    return feats, y


def test_check_labels_rejects_empty_blank_and_duplicates() -> None:
    assert check_labels([" mucus ", "debris"]) == ["mucus", "debris"]
    with pytest.raises(ConfigError, match="empty"):
        check_labels([])
    with pytest.raises(ConfigError, match="empty label"):
        check_labels(["mucus", " "])
    with pytest.raises(ConfigError, match="duplicate label 'MUCUS'"):
        check_labels(["mucus", "MUCUS"])


def test_prompts_are_names_times_templates_and_unknown_labels_use_raw_text() -> None:
    card = load_card("pathology")
    prompts, unknown = build_prompts(["mucus", "zebra stripes"], card)
    n_names = len(card.find_label("mucus").names)
    assert len(prompts["mucus"]) == n_names * len(card.prompts.templates)
    assert unknown == ["zebra stripes"]
    assert prompts["zebra stripes"] == [t.format("zebra stripes") for t in card.prompts.templates]


def test_one_label_is_refused(tiny) -> None:
    with pytest.raises(ConfigError, match="at least two labels"):
        ZeroShotClassifier(tiny, ["mucus"], card="pathology")


def test_prompt_spread_values_match_a_classifier_on_each_subset(tiny, data) -> None:
    from medvlp.eval.metrics import accuracy, balanced_accuracy

    feats, y = data
    card = load_card("pathology")
    spread = prompt_spread(tiny, feats, y, LABELS, card=card, n_subsets=5, fraction=0.5, seed=3)
    assert spread["templates_total"] == len(card.prompts.templates) == 10
    assert spread["templates_per_subset"] == 5 and len(spread["subsets"]) == 5
    for subset in spread["subsets"]:
        assert len(subset) == 5 and len(set(subset)) == 5 and set(subset) <= set(card.prompts.templates)
    # recompute the accuracy of subset 2 by hand
    clf = ZeroShotClassifier(tiny, LABELS, card=card, templates=spread["subsets"][2])
    probs = clf.predict_proba(feats)
    assert spread["metrics"]["accuracy"]["values"][2] == pytest.approx(accuracy(y, probs))
    assert spread["metrics"]["balanced_accuracy"]["values"][2] == pytest.approx(balanced_accuracy(y, probs))
    acc = np.asarray(spread["metrics"]["accuracy"]["values"])
    s = spread["metrics"]["accuracy"]
    assert (s["mean"], s["min"], s["max"]) == pytest.approx((acc.mean(), acc.min(), acc.max()))
    assert s["std"] == pytest.approx(acc.std(ddof=1))
    assert set(spread["metrics"]) == {"accuracy", "balanced_accuracy", "auroc", "f1_macro"}
    # seeded: the same draws again, other draws with another seed
    again = prompt_spread(tiny, feats, y, LABELS, card=card, n_subsets=5, seed=3)
    assert again["subsets"] == spread["subsets"] and again["metrics"] == spread["metrics"]
    other = prompt_spread(tiny, feats, y, LABELS, card=card, n_subsets=5, seed=4)
    assert other["subsets"] != spread["subsets"]
    assert "prompt spread over 5 random subsets of 5/10 templates" in format_spread(spread)


def test_prompt_spread_multilabel_draws_pairs(tiny, data) -> None:
    feats, _ = data
    card = load_card("pathology")
    y = np.stack([(np.arange(40) % 2), (np.arange(40) % 3 == 0)], 1).astype(int)
    spread = prompt_spread(tiny, feats, y, ["mucus", "debris"], card=card, multilabel=True, n_subsets=3)
    assert spread["templates_total"] == len(card.prompts.pairs) == 3
    assert spread["templates_per_subset"] == 2 and all(len(p) == 2 for s in spread["subsets"] for p in s)
    assert len(spread["metrics"]["auroc"]["values"]) == 3


def test_prompt_spread_with_one_template_is_not_computed(tiny, data) -> None:
    from dataclasses import replace

    feats, y = data
    card = load_card("pathology")
    one = replace(card, prompts=replace(card.prompts, templates=("{}.",)))
    spread = prompt_spread(tiny, feats, y, LABELS, card=one)
    assert spread["metrics"] == {} and "not computed" in format_spread(spread)


def test_evaluate_manifest_reports_spread_and_excluded_labels(tiny, small_demo) -> None:
    from medvlp.data.manifest import read_manifest
    from medvlp.eval.zeroshot import evaluate_manifest

    m = read_manifest(small_demo)
    names = m.label_names()
    rep = evaluate_manifest(tiny, m, card="pathology", labels=names[:3], n_boot=0, prompt_subsets=3)
    assert rep["n"] + rep["n_excluded"] + rep["n_unreadable"] == len(m)
    assert set(rep["excluded_labels"]) == set(names[3:])
    assert rep["prompt_spread"]["n_subsets"] == 3 and len(rep["prompt_spread"]["metrics"]["accuracy"]["values"]) == 3
    assert set(rep["accuracy"]) == {"value", "ci_low", "ci_high"}
