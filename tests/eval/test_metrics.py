"""Metrics against scikit-learn, bootstrap intervals (row and cluster), degenerate input, retrieval."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from medvlp.errors import DataError
from medvlp.eval import metrics as M
from medvlp.eval.retrieval import captions_to_gallery, retrieval_from_embeddings


def _data(seed: int, n: int, c: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c)) + 1.2 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if ties:
        p = np.round(p, 1)  # many tied scores exercise the tie handling of AUROC and sens@spec
    return y, p


@pytest.mark.parametrize("seed,c,ties", [(0, 2, False), (1, 2, True), (2, 3, False), (3, 5, True), (4, 4, False)])
def test_point_metrics_match_sklearn(seed: int, c: int, ties: bool) -> None:
    y, p = _data(seed, 300, c, ties)
    pred = p.argmax(1)
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-9)
    assert M.balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-9)
    assert M.f1_macro(y, p) == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-9)
    assert M.cohen_kappa(y, p) == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-9)
    if c == 2:
        ref_auc = skm.roc_auc_score(y, p[:, 1])
    elif ties:  # rounded rows no longer sum to 1, which sklearn's "ovr" refuses: its definition by hand
        ref_auc = np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in range(c)])
    else:
        ref_auc = skm.roc_auc_score(y, p, multi_class="ovr")
    assert M.macro_auroc(y, p) == pytest.approx(ref_auc, abs=1e-9)
    per = M.per_class_auroc(y, p, labels=[f"c{k}" for k in range(c)])
    for k in range(c):
        assert per[f"c{k}"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]), abs=1e-9)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
@pytest.mark.parametrize("spec", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_at_specificity_matches_roc_curve(seed: int, ties: bool, spec: float) -> None:
    y, p = _data(seed, 400, 2, ties)
    fpr, tpr, _ = skm.roc_curve(y, p[:, 1], drop_intermediate=False)
    ref = tpr[fpr <= 1 - spec + 1e-12].max()
    assert M.sensitivity_at_specificity(y, p[:, 1], spec) == pytest.approx(ref, abs=1e-9)


def test_binary_1d_scores_equal_two_column_scores() -> None:
    y, p = _data(5, 200, 2)
    assert M.macro_auroc(y, p[:, 1]) == pytest.approx(M.macro_auroc(y, p), abs=1e-12)
    assert M.accuracy(y, p[:, 1]) == pytest.approx(skm.accuracy_score(y, p[:, 1] >= 0.5), abs=1e-12)


def test_vectorised_bootstrap_equals_generic_loop_on_same_resamples() -> None:
    """The weighted kernels must reproduce the metric on every resample: compare with sklearn in a loop."""
    y, p = _data(6, 150, 3, ties=True)
    for fast, ref in [
        (M.macro_auroc, lambda yy, pp: np.mean([skm.roc_auc_score(yy == k, pp[:, k]) for k in range(3)])),
        (M.balanced_accuracy, lambda yy, pp: skm.balanced_accuracy_score(yy, pp.argmax(1))),
        (M.cohen_kappa, lambda yy, pp: skm.cohen_kappa_score(yy, pp.argmax(1))),
        (M.f1_macro, lambda yy, pp: skm.f1_score(yy, pp.argmax(1), average="macro")),
    ]:
        a = M.bootstrap_ci(fast, y, p, n_boot=60, seed=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = M.bootstrap_ci(ref, y, p, n_boot=60, seed=3)
        assert (a.value, a.low, a.high) == pytest.approx((b.value, b.low, b.high), abs=1e-9)
        assert a.n_skipped == b.n_skipped


def test_classification_report_contract_values_and_cis() -> None:
    y, p = _data(7, 400, 2)
    groups = np.repeat(np.arange(100), 4)
    rep = M.classification_report(y, p, ["normal", "pneumonia"], groups=groups, n_boot=300, seed=1)
    json.dumps(rep)  # the report is JSON as is
    assert rep["n"] == 400 and rep["n_groups"] == 100 and rep["bootstrap"]["unit"] == "patient"
    expected = {
        "accuracy": skm.accuracy_score(y, p.argmax(1)),
        "balanced_accuracy": skm.balanced_accuracy_score(y, p.argmax(1)),
        "auroc": skm.roc_auc_score(y, p[:, 1]),
        "f1_macro": skm.f1_score(y, p.argmax(1), average="macro"),
        "cohen_kappa": skm.cohen_kappa_score(y, p.argmax(1)),
    }
    for name, ref in expected.items():
        entry = rep[name]
        assert set(entry) == {"value", "ci_low", "ci_high"}
        assert entry["value"] == pytest.approx(ref, abs=1e-9)
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        assert entry["ci_high"] - entry["ci_low"] > 0.01
    sens = rep["sensitivity_at_95_specificity"]
    assert sens["ci_low"] <= sens["value"] <= sens["ci_high"]
    assert rep["per_class_auroc"]["pneumonia"]["value"] == pytest.approx(expected["auroc"], abs=1e-9)


def test_classification_report_accepts_label_names_and_is_reproducible() -> None:
    y, p = _data(8, 120, 3)
    names = np.array(["a", "b", "c"])[y]
    r1 = M.classification_report(names, p, ["a", "b", "c"], n_boot=100, seed=4)
    r2 = M.classification_report(y, p, ["a", "b", "c"], n_boot=100, seed=4)
    assert r1["accuracy"] == r2["accuracy"] and r1["auroc"] == r2["auroc"]
    r3 = M.classification_report(y, p, ["a", "b", "c"], n_boot=100, seed=5)
    assert r3["accuracy"]["value"] == r1["accuracy"]["value"] and r3["accuracy"]["ci_low"] != r1["accuracy"]["ci_low"]
    with pytest.raises(DataError, match="row 0: label 'zzz'"):
        M.classification_report(np.array(["zzz"] + ["a"] * 119), p, ["a", "b", "c"], n_boot=0)


def test_group_bootstrap_is_wider_than_row_bootstrap_for_clustered_rows() -> None:
    # 20 patients x 25 rows; a patient's rows are all right or all wrong: 20, not 500, independent units
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(20), 25)
    patient_ok = rng.random(20) < 0.6
    y = rng.integers(0, 2, 500)
    pred = np.where(patient_ok[patients], y, 1 - y)
    p = np.eye(2)[pred] * 0.8 + 0.1
    row = M.bootstrap_ci(M.accuracy, y, p, n_boot=400, seed=0)
    grp = M.bootstrap_ci(M.accuracy, y, p, n_boot=400, seed=0, groups=patients)
    assert row.value == grp.value == pytest.approx(patient_ok.mean())
    assert grp.unit == "group" and row.unit == "sample"
    assert (grp.high - grp.low) > 3 * (row.high - row.low)
    # the cluster interval is about the binomial width for 20 units: 2 * 1.96 * sqrt(.6 * .4 / 20) ~ 0.43
    assert 0.25 < grp.high - grp.low < 0.6


def test_group_ids_must_cover_every_row() -> None:
    y, p = _data(9, 10, 2)
    with pytest.raises(DataError, match="one id per row"):
        M.bootstrap_ci(M.accuracy, y, p, n_boot=10, groups=np.arange(5))
    with pytest.raises(DataError, match="missing id at row 2"):
        M.bootstrap_ci(M.accuracy, y, p, n_boot=10, groups=np.array(["a", "b", None] + ["c"] * 7, dtype=object))


def test_one_class_only_gives_null_auroc_with_a_warning() -> None:
    y = np.zeros(50, dtype=int)
    p = np.tile([0.7, 0.3], (50, 1))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rep = M.classification_report(y, p, ["normal", "pneumonia"], n_boot=50)
    messages = " | ".join(str(w.message) for w in rec)
    assert "no positive or no negative rows" in messages
    assert "bootstrap for auroc: all 50 resamples were degenerate" in messages
    assert rep["auroc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert rep["accuracy"]["value"] == 1.0
    assert rep["cohen_kappa"]["value"] is None  # chance agreement is 1: kappa undefined
    assert rep["sensitivity_at_95_specificity"]["value"] is None
    assert rep["auroc_skipped_labels"] == ["normal", "pneumonia"]
    json.dumps(rep, allow_nan=False)  # no NaN sneaks into the JSON


def test_bad_inputs_have_clear_messages() -> None:
    y, p = _data(10, 20, 3)
    p_nan = p.copy()
    p_nan[7, 1] = np.nan
    with pytest.raises(DataError, match="NaN or infinite value at row 7"):
        M.accuracy(y, p_nan)
    with pytest.raises(DataError, match="outside 0..2"):
        M.accuracy(np.r_[y[:-1], 3], p)
    with pytest.raises(DataError, match="19 rows but y_score has 20"):
        M.accuracy(y[:-1], p)
    with pytest.raises(DataError, match="duplicate labels"):
        M.classification_report(y, p, ["a", "a", "b"], n_boot=0)
    with pytest.raises(DataError, match="C >= 2"):
        M.classification_report(y, p[:, :1], ["a"], n_boot=0)
    with pytest.raises(DataError, match="3 labels given but y_score has 2 columns"):
        M.classification_report(y % 2, p[:, :2], ["a", "b", "c"], n_boot=0)
    with pytest.raises(DataError, match="pass multilabel=True"):
        M.classification_report(np.eye(3)[y], p, ["a", "b", "c"], n_boot=0)


def test_multilabel_report_matches_sklearn() -> None:
    rng = np.random.default_rng(11)
    Y = (rng.random((250, 4)) < [0.2, 0.4, 0.5, 0.1]).astype(int)
    S = np.clip(0.35 * Y + rng.random((250, 4)) * 0.7, 0, 1)
    rep = M.classification_report(Y, S, ["effusion", "edema", "opacity", "nodule"], multilabel=True,
                                  n_boot=200, seed=0)
    assert rep["auroc"]["value"] == pytest.approx(skm.roc_auc_score(Y, S, average="macro"), abs=1e-9)
    assert rep["f1_macro"]["value"] == pytest.approx(
        skm.f1_score(Y, S >= 0.5, average="macro", zero_division=0), abs=1e-9)
    for j, lab in enumerate(["effusion", "edema", "opacity", "nodule"]):
        assert rep["per_class_auroc"][lab]["value"] == pytest.approx(skm.roc_auc_score(Y[:, j], S[:, j]), abs=1e-9)
    assert rep["auroc"]["ci_low"] <= rep["auroc"]["value"] <= rep["auroc"]["ci_high"]
    assert "accuracy" not in rep  # subset accuracy is not the argmax accuracy: not reported
    assert M.f1_macro(Y, S) == pytest.approx(rep["f1_macro"]["value"], abs=1e-12)


def _recall_reference(sim: np.ndarray, pos: list[list[int]], k: int) -> float:
    hits = [len(set(np.argsort(-row)[:k]) & set(p)) > 0 for row, p in zip(sim, pos, strict=True) if p]
    return float(np.mean(hits))


def test_retrieval_recall_matches_brute_force_both_directions() -> None:
    rng = np.random.default_rng(12)
    n_img, caps = 40, rng.integers(1, 4, 40)
    pos = []
    start = 0
    for c in caps:
        pos.append(list(range(start, start + c)))
        start += c
    sim = rng.normal(0, 1, (n_img, start))
    for i, p in enumerate(pos):
        sim[i, p] += 1.5
    inv = M.invert_positives(pos, n_img, start)
    rep = M.retrieval_report(sim, pos, ks=(1, 5, 10), n_boot=200, seed=0)
    for k in (1, 5, 10):
        assert rep[f"image_to_text_R@{k}"]["value"] == pytest.approx(_recall_reference(sim, pos, k), abs=1e-12)
        assert rep[f"text_to_image_R@{k}"]["value"] == pytest.approx(_recall_reference(sim.T, inv, k), abs=1e-12)
        assert M.retrieval_recall_at_k(sim, pos, k) == rep[f"image_to_text_R@{k}"]["value"]
        e = rep[f"image_to_text_R@{k}"]
        assert e["ci_low"] <= e["value"] <= e["ci_high"]
    assert rep["n"] == 40 and rep["n_texts"] == start
    assert rep["image_to_text_R@1"]["value"] <= rep["image_to_text_R@5"]["value"] <= rep["image_to_text_R@10"]["value"]


def test_retrieval_constant_similarity_scores_zero_at_1() -> None:
    rep = M.retrieval_report(np.ones((5, 5)), list(range(5)), ks=(1, 5), n_boot=0)
    assert rep["image_to_text_R@1"]["value"] == 0.0  # ties count against the query
    assert rep["image_to_text_R@5"]["value"] == 1.0
    assert rep["image_to_text_R@1"]["ci_low"] is None  # n_boot=0: no interval


def test_captions_to_gallery_merges_identical_texts() -> None:
    texts, pos = captions_to_gallery([["normal.", "clear lungs"], [" normal. "], [], ["effusion"]])
    assert texts == ["normal.", "clear lungs", "effusion"]
    assert pos == [[0, 1], [0], [], [2]]
    texts2, pos2 = captions_to_gallery([["normal."], ["normal."]], dedupe=False)
    assert texts2 == ["normal.", "normal."] and pos2 == [[0], [1]]


def test_retrieval_from_embeddings_with_groups() -> None:
    rng = np.random.default_rng(13)
    img = rng.normal(0, 1, (30, 16))
    txt = img + rng.normal(0, 0.8, (30, 16))  # paired, noisy
    rep = retrieval_from_embeddings(img * 5.0, txt, list(range(30)), groups=np.repeat(np.arange(10), 3),
                                    n_boot=100, seed=0)
    sim = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    assert rep["image_to_text_R@1"]["value"] == pytest.approx(_recall_reference(sim, [[i] for i in range(30)], 1))
    assert rep["n_groups"] == 10 and rep["bootstrap"]["unit"] == "patient"
    with pytest.raises(DataError, match="dimension 16 but text embeddings 8"):
        retrieval_from_embeddings(img, txt[:, :8], list(range(30)), n_boot=0)
