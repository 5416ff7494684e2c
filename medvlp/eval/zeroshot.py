"""Zero-shot classification: labels -> prompt ensembles -> class embeddings -> calibrated probabilities.

A label becomes the set of its names (card synonyms, optionally ontology synonyms) times the card's
templates; the class embedding is the renormalised mean of the unit prompt embeddings. Single-label
probabilities are ``softmax(t * cos / T)`` with the model's learned scale ``t`` (and a fitted
temperature ``T`` when calibrated); multi-label findings use positive/negative prompt pairs,
``p = e^pos / (e^pos + e^neg)`` (CheXzero).

Example:
    >>> import medvlp                                                      # doctest: +SKIP
    >>> model = medvlp.load("runs/pathology-demo")                         # doctest: +SKIP
    >>> clf = ZeroShotClassifier(model, ["adipose tissue", "mucus"], card="pathology")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medvlp.domains import DomainCard, load_card
from medvlp.errors import ConfigError, DataError
from medvlp.eval.embedding import (  # noqa: F401 - re-exported: the public names stay importable here
    DEFAULT_TEMPLATES,
    check_labels,
    class_embeddings,
    default_graph,
    embed_dataset,
    embed_texts,
)

if TYPE_CHECKING:
    from medvlp.eval.concept_zeroshot import ConceptZeroShot
    from medvlp.models import MedVLP


def build_prompts(
    labels: Sequence[str],
    card: DomainCard | None = None,
    *,
    templates: Sequence[str] | None = None,
    graph: Any = None,
    max_ontology_synonyms: int = 3,
    definitions: bool = True,
) -> tuple[dict[str, list[str]], list[str]]:
    """Prompt sets per label and the labels that had no concept (their raw text is used).

    Names come from the card's label (name + synonyms), then up to ``max_ontology_synonyms`` synonyms
    of its concept in ``graph``; every name is put in every template. A label the card does not know
    but ``graph`` does (a name or synonym of a concept: an unseen class) gets its concept's name and
    synonyms. With ``definitions``, a concept's definition adds ``"<name>, <definition>"`` prompts.
    """
    from medvlp.ontology.prompts import expand_prompts, resolve_label

    templates = list(templates or (card.prompts.templates if card else DEFAULT_TEMPLATES))
    prompts: dict[str, list[str]] = {}
    unknown: list[str] = []
    for label in labels:
        names = [label]
        lab = card.find_label(label) if card else None
        concept = None
        if lab is not None:
            names += list(lab.names)
            if graph is not None and lab.concept and lab.concept in graph:
                concept = graph[lab.concept]
        elif graph is not None:
            concept = resolve_label(label, graph)
        if concept is None and lab is None:
            unknown.append(label)
        names = list(dict.fromkeys(n for n in names if n))
        out = [t.format(n) for n in names for t in templates]
        if concept is not None:
            out += expand_prompts(concept, graph, templates, include_definition=definitions,
                                  max_synonyms=max_ontology_synonyms)
        prompts[label] = list(dict.fromkeys(out))
    return prompts, unknown


class ZeroShotClassifier:
    """Zero-shot classifier over a label list.

    Args:
        model: a :class:`medvlp.models.MedVLP`.
        labels: class names; card labels get their synonyms, unknown ones are used as raw text.
        card: domain card (name or object) giving templates, synonyms and positive/negative pairs.
        multilabel: score each label independently with positive/negative prompt pairs.
        graph: concept graph adding ontology synonyms and definitions to each prompt set, and prompts for
            labels the card lacks; ``"card"`` (default) = the card's ontology, None = none.
        templates: prompt templates (default: the card's, else :data:`DEFAULT_TEMPLATES`).
        pairs: positive/negative template pairs for multi-label scoring (default: the card's).
        temperature: divide logits by this (from calibration); 1.0 = uncalibrated.
    """

    def __init__(self, model: MedVLP, labels: Sequence[str], *, card: DomainCard | str | None = None,
                 multilabel: bool = False, graph: Any = "card", templates: Sequence[str] | None = None,
                 pairs: Sequence[tuple[str, str]] | None = None, temperature: float = 1.0) -> None:
        self.model = model
        self.labels = check_labels(labels)
        if len(self.labels) < 2 and not multilabel:
            raise ConfigError(
                f"zero-shot classification needs at least two labels, got {self.labels}; for one finding use "
                "multi-label scoring (positive/negative prompts)"
            )
        self.card = load_card(card) if isinstance(card, str) else card
        if isinstance(graph, str) and graph == "card":
            graph = default_graph(self.card)
        self.graph = graph
        self.multilabel = multilabel
        self.temperature = float(temperature)
        self.prompts, self.unknown_labels = build_prompts(self.labels, self.card, templates=templates, graph=graph)
        if self.unknown_labels:
            warnings.warn(
                f"labels without a concept in the domain card, used as raw text: {self.unknown_labels}",
                stacklevel=2,
            )
        self.weights = class_embeddings(model, [self.prompts[lab] for lab in self.labels])
        if multilabel:
            if pairs is None:
                pairs = self.card.prompts.pairs if self.card else (("{}", "no {}"),)
            pos, neg = [], []
            for lab in self.labels:
                found = self.card.find_label(lab) if self.card else None
                names = found.names if found else [lab]
                pos.append([p.format(n) for n in names for p, _ in pairs])
                neg.append([q.format(n) for n in names for _, q in pairs])
            self.pos_weights = class_embeddings(model, pos)
            self.neg_weights = class_embeddings(model, neg)
            self.pair_prompts = {lab: [*p, *q] for lab, p, q in zip(self.labels, pos, neg, strict=True)}

    def all_prompts(self) -> list[str]:
        """Every text this classifier embeds (prompt sets, and the positive/negative pairs for multi-label)."""
        sets = [*self.prompts.values(), *getattr(self, "pair_prompts", {}).values()]
        return list(dict.fromkeys(p for ps in sets for p in ps))

    @property
    def logit_scale(self) -> float:
        return float(self.model.clip.logit_scale.detach().exp())

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``t * cos`` between unit image features (N, D) and the class embeddings -> (N, C)."""
        return self.logit_scale * image_features.float().cpu() @ self.weights.T

    def predict_proba(self, image_features: torch.Tensor) -> np.ndarray:
        feats = image_features.float().cpu()
        if self.multilabel:
            s = self.logit_scale
            pos = s * feats @ self.pos_weights.T
            neg = s * feats @ self.neg_weights.T
            return torch.sigmoid((pos - neg) / self.temperature).numpy()
        return torch.softmax(self.logits(feats) / self.temperature, dim=-1).numpy()


SPREAD_METRICS = ("accuracy", "balanced_accuracy", "auroc", "f1_macro")  # the headline metrics of a prompt set


def prompt_spread(model: MedVLP, image_features: torch.Tensor, y: np.ndarray, labels: Sequence[str], *,
                  card: DomainCard | None, multilabel: bool = False, n_subsets: int = 10, fraction: float = 0.5,
                  seed: int = 0, metrics: Sequence[str] = SPREAD_METRICS) -> dict[str, Any]:
    """Spread of the headline metrics over random subsets of the prompt templates.

    MI-Zero's balanced accuracy moved from 0.39 to 0.92 across prompt sets on the same slides, so one
    ensemble number hides how much a result depends on wording. Each of ``n_subsets`` seeded draws keeps
    ``round(fraction * T)`` of the card's ``T`` templates (of its positive/negative pairs for multi-label)
    and scores the same image features; the metrics are point values (no bootstrap).

    Args:
        model: the :class:`~medvlp.models.MedVLP` whose text tower embeds the prompts.
        image_features: (N, D) unit image embeddings of the evaluated rows.
        y: (N,) class indices, or (N, C) 0/1 for multi-label.
        labels: the C label names.
        card: domain card giving templates/pairs and synonyms.
        multilabel: score with positive/negative pairs.
        n_subsets: number of random subsets (R).
        fraction: share of the templates in each subset.
        seed: seed of the subset draws.
        metrics: metric names summarised.

    Returns:
        ``{"n_subsets", "fraction", "templates_total", "templates_per_subset", "seed", "subsets": [[...]],
        "metrics": {name: {"mean", "std", "min", "max", "values"}}}``; an empty ``metrics`` when the card
        has fewer than two templates (no subset differs from the full set).

    Example:
        >>> from medvlp.models import create_model                                  # doctest: +SKIP
        >>> spread = prompt_spread(create_model("tiny"), feats, y, ["a", "b"], card=load_card("pathology"))  # doctest: +SKIP
    """
    from medvlp.eval.metrics import classification_report

    if multilabel:
        pool: list[Any] = list(card.prompts.pairs if card else (("{}", "no {}"),))
    else:
        pool = list(card.prompts.templates if card else DEFAULT_TEMPLATES)
    k = max(1, int(round(fraction * len(pool))))
    out: dict[str, Any] = {"n_subsets": int(n_subsets), "fraction": float(fraction), "templates_total": len(pool),
                           "templates_per_subset": k, "seed": int(seed), "subsets": [], "metrics": {}}
    if len(pool) < 2 or n_subsets < 1:
        return out
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {m: [] for m in metrics}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ensemble run already warned about unknown labels / AUROC gaps
        for _ in range(n_subsets):
            idx = sorted(rng.choice(len(pool), size=k, replace=False).tolist())
            subset = [pool[i] for i in idx]
            out["subsets"].append([list(p) if isinstance(p, tuple) else p for p in subset])
            clf = ZeroShotClassifier(model, labels, card=card, multilabel=multilabel,
                                     templates=None if multilabel else subset, pairs=subset if multilabel else None)
            rep = classification_report(y, clf.predict_proba(image_features), labels, n_boot=0,
                                        multilabel=multilabel)
            for m in metrics:
                v = rep.get(m, {}).get("value")
                if v is not None:
                    values[m].append(float(v))
    for m, vs in values.items():
        if vs:
            a = np.asarray(vs)
            out["metrics"][m] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                                 "min": float(a.min()), "max": float(a.max()), "values": [float(v) for v in a]}
    return out


def format_spread(spread: dict[str, Any]) -> str:
    """Human-readable lines of a :func:`prompt_spread` result."""
    if not spread.get("metrics"):
        return f"prompt spread: not computed ({spread.get('templates_total', 0)} template(s) in the card)"
    lines = [f"prompt spread over {spread['n_subsets']} random subsets of {spread['templates_per_subset']}/"
             f"{spread['templates_total']} templates (seed {spread['seed']}): mean ± std [min, max]"]
    for m, v in spread["metrics"].items():
        lines.append(f"  {m:<28} {v['mean']:.4f} ± {v['std']:.4f}  [{v['min']:.4f}, {v['max']:.4f}]")
    return "\n".join(lines)


def evaluate_manifest(model: MedVLP, manifest: Any, *, card: DomainCard | str, labels: Sequence[str] | None = None,
                      batch_size: int = 256, n_boot: int = 1000, seed: int = 0, progress: bool = False,
                      bad_log: Any = None, prompt_subsets: int = 10, subset_fraction: float = 0.5,
                      caption_record: Any = None, train_manifest: Any = None,
                      near_dup_threshold: float = 0.98, mode: str = "prompts",
                      include_parents: bool = False) -> dict[str, Any]:
    """Zero-shot metrics (DESIGN.md metrics JSON) of ``model`` on a labelled manifest.

    Without ``labels`` the manifest's distinct labels form the label set. Rows whose labels are not in
    the label set are left out and counted (``n_excluded``, ``excluded_labels``); unreadable images are
    skipped and counted. ``prompt_spread`` holds the spread of the headline metrics over
    ``prompt_subsets`` random template subsets (see :func:`prompt_spread`; 0 turns it off).

    ``prompt_overlap`` is the share of the eval prompts that were training captions, from
    ``caption_record`` (a ``captions.json`` path or its dict, see :mod:`medvlp.eval.hygiene`); 0 is a
    clean zero-shot protocol, above 0 a text-supervised one; ``None`` (with ``prompt_overlap_note``)
    without a record. ``mode``: ``prompts`` (class names), ``concepts`` (the classes' defining ontology
    concepts, :class:`~medvlp.eval.concept_zeroshot.ConceptZeroShot`) or ``both`` (prompts at the top level,
    each mode's report under ``by_mode``). With ``train_manifest``, ``overlap_embedding`` lists the near duplicates (image
    embedding cosine >= ``near_dup_threshold``) between its images and the evaluated rows.

    Raises:
        DataError: no readable image, or no row with a label in the label set (the message lists the
            manifest's labels).
    """
    from medvlp.data.dataset import ImageTextDataset, options_for
    from medvlp.eval.metrics import classification_report

    card = load_card(card) if isinstance(card, str) else card
    if mode not in ("prompts", "concepts", "both"):
        raise ConfigError(f"unknown zero-shot mode '{mode}'; choose prompts, concepts or both")
    multilabel = manifest.is_multilabel()
    if multilabel and mode != "prompts":
        raise ConfigError("concept mode scores single-label classes; use --mode prompts for multi-label findings")
    labels = check_labels(labels if labels is not None else manifest.label_names())
    index = {lab.lower(): k for k, lab in enumerate(labels)}
    cclf = None
    if mode != "prompts":
        from medvlp.eval.concept_zeroshot import ConceptZeroShot

        cclf = ConceptZeroShot(model, labels, card=card, include_parents=include_parents)  # refuses before any image is read
    ds = ImageTextDataset(manifest, None, options_for(model.spec, card, train=False), train=False,
                          need_captions=False, progress=progress, max_bad_fraction=1.0, bad_log=bad_log)
    if len(ds.bad) == len(manifest):
        raise DataError(f"{manifest.path}: no readable image")
    feats = embed_dataset(model, ds, batch_size=batch_size, progress=progress)
    clf: ZeroShotClassifier | ConceptZeroShot = ZeroShotClassifier(model, labels, card=card, multilabel=multilabel)
    probs = clf.predict_proba(feats)
    cprobs: np.ndarray | None = None
    if cclf is not None:  # the concept head's best patch when the model has one, else global similarities
        head_scores = cclf.head_concept_scores(ds, batch_size=batch_size)
        cprobs = cclf.predict_proba(feats, concept_scores=head_scores)
    if mode == "concepts":
        assert cclf is not None and cprobs is not None  # built above for every mode but prompts
        clf, probs = cclf, cprobs
    keep: list[int] = []
    y: list[np.ndarray | int] = []  # label vectors (multi-label) or class indices
    outside: dict[str, int] = {}
    for k in range(len(ds)):
        row_labels = manifest.labels(ds.row_of(k))
        if multilabel:
            vec = np.zeros(len(labels), dtype=int)
            for lab in row_labels:
                if lab.lower() in index:
                    vec[index[lab.lower()]] = 1
                else:
                    outside[lab] = outside.get(lab, 0) + 1
            keep.append(k)
            y.append(vec)
        elif len(row_labels) == 1 and row_labels[0].lower() in index:
            keep.append(k)
            y.append(index[row_labels[0].lower()])
        else:
            name = ", ".join(row_labels) if row_labels else "<no label>"
            outside[name] = outside.get(name, 0) + 1
    if not keep:
        found = ", ".join(f"'{lab}' ({c})" for lab, c in sorted(outside.items(), key=lambda t: -t[1])[:8])
        raise DataError(
            f"{manifest.path}: no row has a label in the label set {labels}; the manifest's labels are {found}. "
            "Pass --labels with the manifest's label names (or leave --labels out to use them)"
        )
    groups = None
    for col in ("patient", "slide"):
        vals = manifest.column(col)
        if vals is not None and all(v is not None for v in vals):
            groups = np.asarray([vals[ds.row_of(k)] for k in keep])
            break
    y_arr = np.asarray(y)
    report = classification_report(y_arr, probs[keep], labels, groups=groups, n_boot=n_boot, seed=seed,
                                   multilabel=multilabel)
    report["n_excluded"] = len(ds) - len(keep)
    report["excluded_labels"] = outside
    report["n_unreadable"] = len(ds.bad)  # missing files and images that failed to decode, left out
    report["n_rows"] = len(manifest)
    if ds.bad:
        report["unreadable_first"] = {"row": ds.bad[0]["row"], "reason": ds.bad[0]["reason"]}
    report["prompts_per_label"] = {lab: len(clf.prompts[lab]) for lab in labels} if cclf is None or mode != "concepts" else \
        {lab: sum(len(cclf.prompts[c]) for c in d["present"] + d["absent"]) for lab, d in cclf.definitions.items()}
    report["unknown_labels"] = clf.unknown_labels
    report["mode"] = mode
    if cclf is not None:
        report["concepts_per_label"] = cclf.definitions
    if mode == "both":
        assert cprobs is not None
        c_rep = classification_report(y_arr, cprobs[keep], labels, groups=groups, n_boot=n_boot,
                                      seed=seed)
        report["by_mode"] = {"prompts": {k: v for k, v in report.items() if k != "concepts_per_label"},
                             "concepts": c_rep}
    report.update(_overlap_fields(clf, caption_record))
    if train_manifest is not None:
        from medvlp.eval.overlap_embed import manifest_near_duplicates

        near = manifest_near_duplicates(model, train_manifest, feats[keep], card=card, threshold=near_dup_threshold,
                                        batch_size=batch_size, progress=progress)
        eval_rows = [ds.row_of(k) for k in keep]
        near["pairs"] = [[t, eval_rows[e], c] for t, e, c in near["pairs"]]
        report["overlap_embedding"] = near
    if prompt_subsets > 0 and mode != "concepts":
        report["prompt_spread"] = prompt_spread(model, feats[keep], y_arr, labels, card=card, multilabel=multilabel,
                                                n_subsets=prompt_subsets, fraction=subset_fraction, seed=seed)
    return report


def _overlap_fields(clf: ZeroShotClassifier | ConceptZeroShot, record: Any) -> dict[str, Any]:
    """``prompt_overlap`` (+ a note, or the overlapping prompts) of a classifier against a caption record."""
    from medvlp.eval.hygiene import overlapping_prompts, prompt_overlap, read_caption_record

    if record is None:
        return {"prompt_overlap": None, "prompt_overlap_note": "no captions.json in the model's run folder: "
                "whether the eval prompts were training captions is unknown"}
    rec = record if isinstance(record, dict) else read_caption_record(record)
    prompts = clf.all_prompts()
    return {"prompt_overlap": prompt_overlap(prompts, rec), "prompt_overlap_examples": overlapping_prompts(prompts, rec)[:5],
            "caption_templates": rec.get("caption_templates", {})}
