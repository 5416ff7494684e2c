"""Unseen classes (ontology prompt expansion) and concept-mode zero-shot on a tiny synthetic setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvlp.domains import load_card
from medvlp.errors import ConfigError
from medvlp.eval.concept_zeroshot import ConceptZeroShot, defining_concepts
from medvlp.eval.zeroshot import build_prompts
from medvlp.ontology import Concept, ConceptGraph, card_graph

FEATURES = ["granular cytoplasm", "bilobed nucleus", "round nucleus", "pale cytoplasm"]


def _graph() -> ConceptGraph:
    f = [Concept(f"t:f{k}", name) for k, name in enumerate(FEATURES)]
    cls = [
        Concept("t:cell", "blood cell", relations=[("has_feature", "t:f0")]),
        Concept("t:a", "alpha cell", parents=["t:cell"], relations=[("has_feature", "t:f1")]),
        Concept("t:b", "beta cell", relations=[("has_feature", "t:f2"), ("lacks_feature", "t:f0")]),
        Concept("t:c", "gamma cell", relations=[("has_feature", "t:f3")]),
        Concept("t:d", "delta cell"),  # nothing defines it
    ]
    return ConceptGraph(f + cls)


class StubModel(torch.nn.Module):
    """Text tower that embeds a text as the basis vector of the feature it names (a known geometry)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.clip = torch.nn.Module()
        self.clip.logit_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))
        self.embed_dim = 8
        self._texts: list[str] = []

    def tokenize(self, texts):
        start = len(self._texts)
        self._texts += list(texts)
        return torch.arange(start, start + len(texts))

    def encode_text(self, tok, normalize=True):
        out = torch.full((len(tok), self.embed_dim), 1e-3)
        for r, i in enumerate(tok.tolist()):
            for k, name in enumerate(FEATURES):
                if name in self._texts[i]:
                    out[r, k] += 1.0
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def test_defining_concepts_presence_absence_and_parents():
    g = _graph()
    assert defining_concepts(g, "t:a") == (["t:f1"], [])
    assert defining_concepts(g, "t:a", include_parents=True) == (["t:f1", "t:f0"], [])
    assert defining_concepts(g, "t:b") == (["t:f2"], ["t:f0"])


def test_concept_mode_beats_chance_where_prompt_names_carry_nothing():
    # images show their class's defining features (+ noise); class names never appear in any feature text
    rng = np.random.default_rng(0)
    feature_sets = {"alpha cell": [0, 1], "beta cell": [2], "gamma cell": [3]}
    labels = list(feature_sets)
    x, y = [], []
    for j, lab in enumerate(labels):
        for _ in range(30):
            v = np.zeros(8)
            v[feature_sets[lab]] = 1.0
            v += 0.15 * rng.normal(size=8)
            x.append(v / np.linalg.norm(v))
            y.append(j)
    feats, y = torch.tensor(np.array(x), dtype=torch.float32), np.array(y)
    clf = ConceptZeroShot(StubModel(), labels, graph=_graph(), include_parents=True, templates=["{}"])
    p = clf.predict_proba(feats)
    assert p.shape == (90, 3) and np.allclose(p.sum(1), 1.0)
    acc = float((p.argmax(1) == y).mean())
    assert acc > 0.9  # chance is 1/3
    # beta is defined partly by an *absent* feature: an image with granular cytoplasm is pushed away from it
    v = torch.nn.functional.normalize(torch.tensor([[0, 0, 1.0, 0, 0, 0, 0, 0], [1.0, 0, 1.0, 0, 0, 0, 0, 0]]), dim=-1)
    s = clf.class_scores(v)[:, labels.index("beta cell")]
    assert s[1] < s[0] - 0.5


def test_concept_mode_refuses_a_class_without_defining_concepts():
    with pytest.raises(ConfigError, match=r"'delta cell' \(t:d\) has no defining concepts"):
        ConceptZeroShot(StubModel(), ["alpha cell", "delta cell"], graph=_graph(), templates=["{}"])
    with pytest.raises(ConfigError, match=r"\['omega cell'\] are no concept"):
        ConceptZeroShot(StubModel(), ["alpha cell", "omega cell"], graph=_graph(), templates=["{}"])


def test_unseen_label_gets_ontology_prompts():
    card = load_card("pathology")
    graph = card_graph(card)
    concept = graph["path:morphologic_feature"]
    assert card.find_label("histomorphology") is None  # not a card label: an unseen class
    prompts, unknown = build_prompts(["histomorphology", "mucus"], card, graph=graph)
    assert unknown == []
    joined = " | ".join(prompts["histomorphology"])
    assert concept.name in joined and concept.definition.strip().rstrip(".")[:30] in joined
    _, unknown = build_prompts(["zzz unheard of"], card, graph=graph)
    assert unknown == ["zzz unheard of"]


# ---- through `medvlp eval zeroshot --mode` ------------------------------------------------


def _cli_setup(tmp_path):
    from PIL import Image

    from medvlp.models import create_model

    create_model("tiny", seed=0).save(tmp_path / "model", extra={"domain": "pathology"})
    rng = np.random.default_rng(0)
    rows = ["image,label"]
    for i in range(8):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / f"i{i}.png")
        rows.append(f"i{i}.png,{'mucus' if i % 2 else 'debris'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "model", tmp_path / "m.csv"


def _main(argv, capsys):
    from medvlp.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0), capsys.readouterr().err


def test_eval_zeroshot_concept_mode_refusal_and_both(tmp_path, capsys, monkeypatch):
    import json

    from medvlp.eval import embedding as zs

    model, data = _cli_setup(tmp_path)
    args = ["eval", "zeroshot", "--model", str(model), "--data", str(data), "--n-boot", "0", "--prompt-subsets", "0"]
    code, err = _main([*args, "--mode", "concepts"], capsys)  # the pathology card defines no class by features
    assert code == 1 and err.count("\n") == 1 and err.startswith("medvlp: error: concept mode: class 'debris'")
    card = load_card("pathology")
    base = card_graph(card)
    feats = [Concept("t:f0", "mucin pools"), Concept("t:f1", "necrotic fragments")]
    defined = {card.find_label("mucus").concept: "t:f0", card.find_label("debris").concept: "t:f1"}
    concepts = [Concept(c.id, c.name, list(c.synonyms), c.definition, parents=list(c.parents),
                        relations=[*c.relations, *([("has_feature", defined[c.id])] if c.id in defined else [])])
                for c in base] + feats
    monkeypatch.setattr(zs, "default_graph", lambda card: ConceptGraph(concepts))
    out = tmp_path / "both.json"
    code, err = _main([*args, "--mode", "both", "--json", str(out)], capsys)
    assert code == 0, err
    rep = json.loads(out.read_text())
    assert rep["mode"] == "both" and set(rep["by_mode"]) == {"prompts", "concepts"}
    assert rep["by_mode"]["concepts"]["n"] == 8 and "accuracy" in rep["by_mode"]["concepts"]
    assert rep["concepts_per_label"]["mucus"]["present"] == ["t:f0"]


def test_concept_head_scores_use_the_best_patch():
    clf = ConceptZeroShot(StubModel(), ["alpha cell", "beta cell", "gamma cell"], graph=_graph(), templates=["{}"])
    # global features say nothing; one patch of image 0 shows 'pale cytoplasm' (gamma's feature)
    feats = torch.zeros(2, 8)
    patches = torch.zeros(2, 3, 8)
    patches[0, 1, 3] = 1.0
    patches[1, 2, 2] = 1.0  # image 1: a 'round nucleus' patch (beta)
    k = {c: i for i, c in enumerate(clf.concepts)}
    s = clf.concept_scores(feats, patches)
    assert s[0, k["t:f3"]] == pytest.approx(float(clf.weights[k["t:f3"], 3]))
    assert clf.predict_proba(feats, patches).argmax(1).tolist() == [2, 1]
    assert np.allclose(clf.predict_proba(None, concept_scores=s), clf.predict_proba(feats, patches))


def test_evaluate_manifest_concept_mode_through_a_concept_head(tmp_path, monkeypatch):
    from medvlp.data.dataset import ImageTextDataset, options_for
    from medvlp.data.manifest import read_manifest
    from medvlp.eval import embedding
    from medvlp.eval.zeroshot import evaluate_manifest
    from medvlp.models import create_model

    _, data = _cli_setup(tmp_path)
    card = load_card("pathology")
    g = ConceptGraph([Concept("t:f0", "mucin pools"), Concept("t:f1", "necrotic fragments"),
                      Concept("t:m", "mucus", relations=[("has_feature", "t:f0")]),
                      Concept("t:d", "debris", relations=[("has_feature", "t:f1")])])
    monkeypatch.setattr(embedding, "default_graph", lambda card: g)
    net = create_model("tiny", seed=0, concept_head=True)
    m = read_manifest(data)
    rep = evaluate_manifest(net, m, card=card, mode="concepts", n_boot=0, prompt_subsets=0)
    assert rep["mode"] == "concepts" and rep["n"] == 8 and "prompt_spread" not in rep
    clf = ConceptZeroShot(net, ["mucus", "debris"], card=card, graph=g)
    ds = ImageTextDataset(m, None, options_for(net.spec, card, train=False), train=False, need_captions=False,
                          progress=False, max_bad_fraction=1.0)
    head = clf.head_concept_scores(ds)
    assert head.shape == (8, 2) and np.all(np.isfinite(head))


def test_medvlp_zeroshot_concept_mode(tmp_path, capsys, monkeypatch):
    from medvlp.eval import embedding

    model, _ = _cli_setup(tmp_path)
    code, err = _main(["zeroshot", str(tmp_path / "i0.png"), "--model", str(model), "--labels", "mucus,debris",
                       "--mode", "concepts"], capsys)
    assert code == 1 and "has no defining concepts" in err and err.count("\n") == 1
    g = ConceptGraph([Concept("t:f0", "mucin pools"), Concept("t:f1", "necrotic fragments"),
                      Concept("t:m", "mucus", relations=[("has_feature", "t:f0")]),
                      Concept("t:d", "debris", relations=[("has_feature", "t:f1")])])
    monkeypatch.setattr(embedding, "default_graph", lambda card: g)
    from medvlp.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["zeroshot", str(tmp_path / "i0.png"), "--model", str(model), "--labels", "mucus,debris",
              "--mode", "concepts"])
    out = capsys.readouterr().out
    assert int(info.value.code or 0) == 0 and "i0.png" in out and ("mucus" in out or "debris" in out)
