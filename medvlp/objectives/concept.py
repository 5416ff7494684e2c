"""Patch-concept alignment (ConceptCLIP's region-concept objective), added to ``clip`` or ``siglip``.

Notation (DESIGN.md): the model's concept head maps vision patch tokens to unit vectors ``p_ik``
(image ``i``, patch ``k``). A concept ``m`` mentioned in caption ``j`` at token positions ``[a, b)``
gets the embedding ``c_jm = normalize(proj(mean_{a<=q<b} h_jq))``, where ``h_jq`` are the text tower's
token features and ``proj`` its projection into the joint space; the embedding is contextual (it
depends on the whole caption). The score of image ``i`` against concept ``jm`` is the best patch,
``s(i, jm) = max_k (t_c p_ik . c_jm + b_c)``, and the loss is the pairwise sigmoid loss

    L = -(1/M) sum_i sum_jm log sigmoid(z_i,jm s(i, jm)),   z = +1 iff j = i (and not negated), else -1,

with ``M`` the number of concepts in the global batch. Under data parallelism the concept embeddings
are gathered from every rank with gradient; each rank scores its own images against all of them and
multiplies by the world size, so the mean of the per-rank losses (and, after DDP's gradient
averaging, the gradient) equals the single-process loss on the global batch.

Negated mentions ("no effusion"): they are never positives. By default (``negated="negative"``)
they are kept as *negatives for their own image* as well as for every other image: the caption
states that the image does not show the concept, which is the most reliable negative available.
``negated="drop"`` ignores them instead. Captions without concepts contribute only as images
(their patches are scored against the other captions' concepts); a batch without any concept gives
a loss of exactly 0 that is still connected to the graph (no NaN, DDP sees every parameter).

Mean-then-project: the span mean is taken in the text tower's width and projected once per concept
(cheaper than projecting every token); for the linear projections of medvlp's models this is the
same as averaging projected tokens.

Example:
    >>> from medvlp.objectives import build_objective
    >>> obj = build_objective("siglip+concept")
    >>> sorted(obj.parts), obj.needs_tokens
    (['concept', 'siglip'], True)
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from medvlp.errors import DataError, ModelError
from medvlp.objectives import register
from medvlp.objectives.base import DataNeeds, Objective
from medvlp.objectives.distributed import gather_no_grad, gather_with_grad, world_info

if TYPE_CHECKING:
    from medvlp.data.manifest import Manifest
    from medvlp.domains import DomainCard
    from medvlp.models.spans import TokenSpanMapper
    from medvlp.ontology import ConceptGraph, ConceptMatcher, Mention

__all__ = ["ConceptSpan", "ConceptObjective", "ConceptFn", "concept_loss", "make_concept_fn", "NEGATED_MODES"]

NEGATED_MODES = ("negative", "drop")


class ConceptSpan(NamedTuple):
    """One concept mention of a caption, in token positions.

    ``start``/``end`` index the text tower's token features (``out["text_tokens"]``), which equal the
    tokenizer's output positions except for CLS-pooled Hugging Face towers (shifted by one).
    """

    concept_id: str  # ontology id (or "text:<phrase>" for a span without a known concept)
    start: int  # first token position
    end: int  # one past the last token position
    negated: bool = False  # the caption says the concept is absent


def _fields(span: Any) -> tuple[int, int, bool]:
    """(start, end, negated) of a ConceptSpan, a 4-tuple (id, start, end, negated) or a (start, end) pair."""
    if isinstance(span, ConceptSpan):
        return span.start, span.end, bool(span.negated)
    if len(span) == 2:
        return int(span[0]), int(span[1]), False
    if len(span) == 4:
        return int(span[1]), int(span[2]), bool(span[3])
    raise ValueError(f"a concept span must be a ConceptSpan, (id, start, end, negated) or (start, end); got {span!r}")


def _id_key(span: Any, fallback: int) -> int:
    """A rank-independent integer for the span's concept id; ``fallback`` (< 0, unique) when it has none."""
    cid = span.concept_id if isinstance(span, ConceptSpan) else (span[0] if len(span) == 4 else None)
    return fallback if cid is None else zlib.crc32(str(cid).encode())


def concept_loss(
    patch_embeddings: torch.Tensor,
    text_tokens: torch.Tensor,
    concepts: Sequence[Sequence[Any]],
    *,
    project: Callable[[torch.Tensor], torch.Tensor],
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    negated: str = "negative",
    mask_same: bool = True,
    stats: dict | None = None,
) -> tuple[torch.Tensor, int]:
    """The patch-concept sigmoid loss of this rank and the number ``M`` of concepts in the global batch.

    Args:
        patch_embeddings: (n, K, D) unit patch embeddings of this rank's images (the concept head's output).
        text_tokens: (n, L, W) token features of this rank's captions (before the projection).
        concepts: per caption, its concept spans in token positions (see :class:`ConceptSpan`).
        project: maps (m, W) text features into the joint space (the model's ``project_text_tokens``).
        logit_scale: ``t_c`` (already exponentiated).
        logit_bias: ``b_c``.
        negated: ``"negative"`` (negated mentions are negatives for every image, their own included) or
            ``"drop"`` (ignored).
        mask_same: leave out of the negatives every pair (image i, concept m of caption j != i) whose
            concept id is also mentioned (not negated) in caption i: the same finding in another image's
            caption is not evidence that image i lacks it. Spans without an id are never masked.
        stats: if given, ``stats["concept_masked"]`` is set to the number of masked pairs of this rank.

    Returns:
        ``(loss, M)``; with ``M == 0`` the loss is a zero connected to the inputs.

    Raises:
        ValueError: a span lies outside ``[0, L)``, or ``concepts`` does not have one entry per caption.
    """
    if negated not in NEGATED_MODES:
        raise ValueError(f"negated must be one of {NEGATED_MODES}, not {negated!r}")
    n, length, width = text_tokens.shape
    if len(concepts) != n:
        raise ValueError(f"got concept lists for {len(concepts)} captions but {n} captions in the batch")
    rank, world = world_info()
    dev = text_tokens.device
    owners: list[int] = []
    positive: list[int] = []
    rows: list[int] = []  # flat token rows (j * L + q) inside the spans
    seg: list[int] = []  # concept index of each of those rows
    weight: list[float] = []  # 1 / span length
    ids: list[int] = []  # concept id key of each concept (see _id_key)
    for j, spans in enumerate(concepts):
        for sp in spans or ():
            a, b, neg = _fields(sp)
            if neg and negated == "drop":
                continue
            if not 0 <= a < b <= length:
                raise ValueError(f"caption {j}: concept span [{a}, {b}) is outside the {length} text tokens")
            m = len(owners)
            owners.append(rank * n + j)
            positive.append(0 if neg else 1)
            ids.append(_id_key(sp, -(rank * 1_000_000 + m + 2)))
            rows.extend(range(j * length + a, j * length + b))
            seg.extend([m] * (b - a))
            weight.extend([1.0 / (b - a)] * (b - a))
    m_local = len(owners)
    counts = gather_no_grad(torch.tensor([m_local], device=dev, dtype=torch.long))
    m_total, m_max = int(counts.sum()), int(counts.max())
    if m_total == 0:
        # Zero, but connected to every input that a non-empty batch would use (DDP needs the graph).
        zero = (patch_embeddings.sum() + project(text_tokens[:0, 0]).sum() + logit_scale + logit_bias) * 0.0
        if stats is not None:
            stats["concept_masked"] = 0.0
        return zero, 0

    flat = text_tokens.reshape(n * length, width)
    idx = torch.tensor(rows, device=dev, dtype=torch.long)
    w = torch.tensor(weight, device=dev, dtype=flat.dtype).unsqueeze(1)
    means = flat.new_zeros(m_local, width).index_add(0, torch.tensor(seg, device=dev, dtype=torch.long),
                                                      flat.index_select(0, idx) * w)
    emb = F.normalize(project(means), dim=-1)  # (m_local, D)
    owner_t = torch.tensor(owners, device=dev, dtype=torch.long)
    pos_t = torch.tensor(positive, device=dev, dtype=torch.long)
    id_t = torch.tensor(ids, device=dev, dtype=torch.long)
    if world > 1:
        # Ranks hold different numbers of concepts: pad to the largest, gather, drop the padding.
        pad = m_max - m_local
        emb = torch.cat([emb, emb.new_zeros(pad, emb.shape[1])])
        owner_t = torch.cat([owner_t, owner_t.new_full((pad,), -1)])
        pos_t = torch.cat([pos_t, pos_t.new_zeros(pad)])
        id_t = torch.cat([id_t, id_t.new_full((pad,), -1)])
        emb, owner_t, pos_t = gather_with_grad(emb), gather_no_grad(owner_t), gather_no_grad(pos_t)
        id_t = gather_no_grad(id_t)
        keep = owner_t >= 0
        emb, owner_t, pos_t, id_t = emb[keep], owner_t[keep], pos_t[keep], id_t[keep]
    k = patch_embeddings.shape[1]
    sims = (patch_embeddings.reshape(n * k, -1) @ emb.T).view(n, k, -1).amax(dim=1)  # (n, M): best patch
    logits = logit_scale * sims + logit_bias
    mine = torch.arange(n, device=dev) + rank * n
    own = owner_t.unsqueeze(0) == mine.unsqueeze(1)  # (n, M): concept m is from image i's caption
    z = torch.where(own & (pos_t.unsqueeze(0) > 0), 1.0, -1.0)
    terms = -F.logsigmoid(z.to(logits.dtype) * logits)
    masked = 0.0
    if mask_same:
        # image i mentions (not negated) the id of concept m, which comes from another caption
        own_pos = (own & (pos_t.unsqueeze(0) > 0)).to(torch.float32)  # (n, M)
        same_id = (id_t.unsqueeze(0) == id_t.unsqueeze(1)).to(torch.float32)  # (M, M)
        drop = ((own_pos @ same_id) > 0) & ~own
        masked = float(drop.sum())
        terms = terms.masked_fill(drop, 0.0)
    if stats is not None:
        stats["concept_masked"] = masked
    loss = terms.sum() * (world / m_total)
    return loss, m_total


class ConceptObjective(Objective):
    """The ``concept`` objective; needs the model's concept head and its text-token projection.

    Args:
        negated: how negated mentions count: ``"negative"`` (default) or ``"drop"``.
        mask_same: mask same-concept pairs out of the negatives (see :func:`concept_loss`; default on).
        project: the text-token projection; usually set by :meth:`bind` with the model.

    ``forward(out, batch)`` reads ``out["patch_embeddings"]``, ``out["text_tokens"]``,
    ``out["concept_logit_scale"]``, ``out["concept_logit_bias"]`` and ``batch["concepts"]`` (one list
    of :class:`ConceptSpan` per caption, from :func:`make_concept_fn`), and returns
    ``{"concept": loss, "concept_count": M}``.
    """

    name = "concept"
    default_weight = 0.5
    needs_tokens = True
    needs_concept_head = True
    requires_any = ("clip", "siglip", "keep", "softclip")  # any objective that sets the logit init

    def __init__(self, negated: str = "negative",
                 project: Callable[[torch.Tensor], torch.Tensor] | None = None, mask_same: bool = True) -> None:
        super().__init__()
        self.mask_same = bool(mask_same)
        if negated not in NEGATED_MODES:
            raise ValueError(f"negated must be one of {NEGATED_MODES}, not {negated!r}")
        self.negated = negated
        self._project = project  # a bound method, not a submodule: the objective must not own the model

    def bind(self, model: nn.Module) -> ConceptObjective:
        """Use ``model``'s text-token projection (a DDP wrapper is unwrapped). Returns self."""
        inner = getattr(model, "module", model)
        if not hasattr(inner, "project_text_tokens"):
            raise ModelError(f"{type(inner).__name__} has no project_text_tokens; the concept objective needs "
                             "a medvlp model (medvlp.models.create_model)")
        self._project = cast("Callable[[torch.Tensor], torch.Tensor]", inner.project_text_tokens)
        return self

    def data_needs(self, manifest: Manifest, card: DomainCard | None, model: nn.Module,
                   options: dict[str, Any]) -> DataNeeds:
        """Concept spans of every training caption (:func:`make_concept_fn`); binds the model."""
        self.bind(model)  # its concept embeddings use the model's text projection
        fn = make_concept_fn(manifest, card, model)
        return DataNeeds(concept_fn=fn)

    @torch.no_grad()
    def post_step(self, model: nn.Module) -> None:
        """Clamp the concept head's log logit scale to [0, log 100], as clip's (called after each step)."""
        head = getattr(getattr(model, "module", model), "concept_head", None)
        if head is not None:
            head.logit_scale.clamp_(0, math.log(100))

    def forward(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        if out.get("patch_embeddings") is None:
            raise ModelError("the concept objective needs a model with a concept head "
                             "(create_model(..., concept_head=True)) called with return_tokens=True")
        if self._project is None:
            raise ModelError("the concept objective is not bound to a model: call objective.parts['concept']"
                             ".bind(model) (medvlp.train.pretrain does this)")
        if "concepts" not in batch:
            raise ValueError("the batch has no 'concepts': build the dataset with "
                             "concept_fn=make_concept_fn(manifest, card, model)")
        stats: dict = {}
        loss, m = concept_loss(
            out["patch_embeddings"], out["text_tokens"], batch["concepts"], project=self._project,
            logit_scale=out["concept_logit_scale"], logit_bias=out["concept_logit_bias"], negated=self.negated,
            mask_same=self.mask_same, stats=stats)
        return {"concept": loss, "concept_count": torch.tensor(float(m)),
                "concept_masked": torch.tensor(stats["concept_masked"])}


register("concept", ConceptObjective)


# ------------------------------------------------------------------------------------------------
# Concept spans per (row, caption)
# ------------------------------------------------------------------------------------------------
def _humanize(concept_id: str) -> str:
    """``"path:adipose_tissue"`` -> ``"adipose tissue"`` (a name for ids unknown to the ontology)."""
    return concept_id.split(":", 1)[-1].replace("_", " ").strip()


def _find_phrase(text: str, phrase: str) -> tuple[int, int] | None:
    """First case-insensitive whole-word occurrence of ``phrase`` in ``text`` (spaces/hyphens flexible)."""
    words = [re.escape(w) for w in re.split(r"[\s\-]+", phrase.strip()) if w]
    if not words:
        return None
    m = re.search(r"(?<!\w)" + r"[\s\-]+".join(words) + r"(?!\w)", text, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else None


class ConceptFn:
    """``(row, caption) -> list[ConceptSpan]`` for the dataset; built by :func:`make_concept_fn`.

    Where the spans come from, per row:
        * no ``concepts`` cell (column absent or empty): the ontology matcher finds the mentions in the
          caption (synonyms, plurals, negation);
        * concept ids (``["path:mucus", ...]``): only those concepts, found in the caption by the matcher;
          an id the longest-match pass missed (inside a longer mention) is searched on its own; an id the
          ontology does not know is searched as a phrase (``path:smooth_muscle`` -> "smooth muscle");
          ids not written in the caption contribute nothing (counted in ``stats``);
        * character spans ``[start, end]`` (or dicts ``{"id", "start", "end", "negated"}`` as written by
          ``medvlp data``'s matcher): offsets into the row's first caption; when another caption of the row
          is sampled, the same phrase is searched in it. Overlapping spans are kept, each as its own
          concept (e.g. "lung" inside "lung adenocarcinoma"); identical ones once;
        * ``[]``: explicitly no concepts.

    Results are cached per (cell, caption). ``stats`` counts what happened (for logs and tests).
    """

    def __init__(self, manifest: Manifest, mapper: TokenSpanMapper, graph_fn: Callable[[], ConceptGraph],
                 *, shift: int = 0) -> None:
        self.manifest = manifest
        self.mapper = mapper
        self.shift = shift
        self._graph_fn = graph_fn
        self._graph: ConceptGraph | None = None
        self._matcher: ConceptMatcher | None = None
        self._single: dict[str, ConceptMatcher | None] = {}
        self._cells: list[Any] = [None] * len(manifest)
        self._cache: dict[tuple[Any, str], list[ConceptSpan]] = {}
        self.stats: Counter[str] = Counter()
        self._parse_all()

    # -- manifest cells -------------------------------------------------------------------------
    def _parse_all(self) -> None:
        """Parse and validate every ``concepts`` cell up front, so bad spans fail before training."""
        from medvlp.data.manifest import parse_list_cell

        m = self.manifest
        cells = m.column("concepts")
        if cells is None:
            return
        where = m.path or "manifest"
        parsed: dict[Any, tuple] = {}  # identical cells (common: one id per class) are parsed once
        for i, cell in enumerate(cells):
            if cell is None or (isinstance(cell, str) and not cell.strip()):
                continue
            key = cell if isinstance(cell, str) else None
            if key is not None and key in parsed and not any(e[0] == "span" for e in parsed[key]):
                self._cells[i] = parsed[key]
                continue
            try:
                raw = parse_list_cell(cell)
            except Exception as e:  # malformed JSON and the like
                raise DataError(f"{where}: row {i}: the 'concepts' cell cannot be read ({e})") from e
            caps = m.captions(i) if any(not isinstance(item, str) for item in raw) else []
            entries = tuple(self._parse_entry(item, caps, where, i) for item in raw)
            self._cells[i] = entries
            if key is not None:
                parsed[key] = entries

    @staticmethod
    def _parse_entry(item: Any, caps: list[str], where: Any, row: int) -> tuple:
        """-> ("id", concept_id) or ("span", concept_id | None, start, end, negated | None, caption_index)."""
        if isinstance(item, str):
            return ("id", item)
        if isinstance(item, dict) and "start" not in item and ("id" in item or "concept_id" in item):
            return ("id", str(item.get("id", item.get("concept_id"))))
        if isinstance(item, dict):
            cid = item.get("id", item.get("concept_id"))
            s, e, neg, ci = item.get("start"), item.get("end"), item.get("negated"), int(item.get("caption", 0))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            cid, (s, e), neg, ci = None, item, None, 0
        else:
            raise DataError(f"{where}: row {row}: concept entry {item!r} is neither a concept id, a [start, end] "
                            "span nor a {\"id\", \"start\", \"end\"} object")
        if not (isinstance(s, int) and isinstance(e, int)) or isinstance(s, bool) or isinstance(e, bool):
            raise DataError(f"{where}: row {row}: concept span {item!r} must hold two integers [start, end]")
        if not 0 <= ci < max(len(caps), 1):
            raise DataError(f"{where}: row {row}: concept span {item!r} names caption {ci} but the row has "
                            f"{len(caps)} caption(s)")
        ref = caps[ci] if caps else ""
        if not 0 <= s < e <= len(ref):
            raise DataError(
                f"{where}: row {row}: concept span [{s}, {e}] is outside caption {ci} (length {len(ref)}: "
                f"{ref[:60]!r}); spans are character offsets [start, end) into the caption, end exclusive")
        return ("span", None if cid is None else str(cid), s, e, None if neg is None else bool(neg), ci)

    # -- ontology -------------------------------------------------------------------------------
    @property
    def graph(self) -> ConceptGraph:
        if self._graph is None:
            self._graph = self._graph_fn()
        return self._graph

    @property
    def matcher(self) -> ConceptMatcher:
        if self._matcher is None:
            from medvlp.ontology import ConceptMatcher

            self._matcher = ConceptMatcher(self.graph)
        return self._matcher

    def _single_matcher(self, concept_id: str) -> ConceptMatcher | None:
        """A matcher for one concept (its names, or the humanised id when the ontology lacks it)."""
        if concept_id not in self._single:
            from medvlp.ontology import Concept, ConceptGraph, ConceptMatcher

            c = self.graph.concepts.get(concept_id)
            concept = (Concept(concept_id, c.name, list(c.synonyms)) if c is not None
                       else Concept(concept_id, _humanize(concept_id)))
            matcher = ConceptMatcher(ConceptGraph([concept]), min_length=1)
            self._single[concept_id] = matcher if len(matcher) else None
        return self._single[concept_id]

    # -- the call ---------------------------------------------------------------------------------
    def char_spans(self, row: int, caption: str) -> list[tuple[str, int, int, bool]]:
        """``(concept_id, start, end, negated)`` character spans of ``caption`` (sampled from ``row``)."""
        cell = self._cells[row] if 0 <= row < len(self._cells) else None
        if cell is None:
            return [(m.concept_id, m.start, m.end, bool(m.negated)) for m in self.matcher.match(caption)]
        out: list[tuple[str, int, int, bool]] = []
        ids = [e[1] for e in cell if e[0] == "id"]
        if ids:
            mentions = self.matcher.match(caption)
            for cid in dict.fromkeys(ids):
                found = [(m.concept_id, m.start, m.end, bool(m.negated)) for m in mentions if m.concept_id == cid]
                if not found:
                    single = self._single_matcher(cid)
                    if single is not None:
                        found = [(cid, m.start, m.end, bool(m.negated)) for m in single.match(caption)]
                if not found:
                    self.stats["id_not_in_caption"] += 1
                out.extend(found)
        spans = [e for e in cell if e[0] == "span"]
        if spans:
            caps = self.manifest.captions(row)
            row_mentions: list[Mention] | None = None  # matched on first need
            for _, cid, s, e, neg, ci in spans:
                ref = caps[ci] if ci < len(caps) else caption
                if ref != caption:  # another caption of the row was sampled: find the same phrase in it
                    hit = _find_phrase(caption, ref[s:e])
                    if hit is None:
                        self.stats["span_not_in_caption"] += 1
                        continue
                    s, e = hit
                if neg is None or cid is None:  # fill id / negation from an overlapping matcher mention
                    if row_mentions is None:
                        row_mentions = self.matcher.match(caption)
                    over = [m for m in row_mentions if m.start < e and m.end > s]
                    if neg is None:
                        neg = any(m.negated for m in over)
                    if cid is None:
                        exact = [m for m in over if (m.start, m.end) == (s, e)]
                        cid = exact[0].concept_id if exact else "text:" + caption[s:e].lower()
                out.append((cid, s, e, bool(neg)))
        return list(dict.fromkeys(out))

    def __call__(self, row: int, caption: str) -> list[ConceptSpan]:
        # The spans depend on the row's parsed cell and the caption only: rows with the same cell (or
        # none) share cache entries. Span cells keep the row, since they refer to the row's captions.
        cell = self._cells[row] if 0 <= row < len(self._cells) else None
        key = (row if cell and any(e[0] == "span" for e in cell) else cell, caption)
        hit = self._cache.get(key)
        if hit is not None:
            return list(hit)
        chars = self.char_spans(row, caption)
        toks = self.mapper.token_spans(caption, [(s, e) for _, s, e, _ in chars]) if chars else []
        result: list[ConceptSpan] = []
        for (cid, _, _, neg), tok in zip(chars, toks, strict=True):
            if tok is None:  # truncated away, or only characters the tokenizer drops
                self.stats["span_without_tokens"] += 1
                continue
            a, b = tok[0] + self.shift, tok[1] + self.shift
            if a < 0:
                continue
            result.append(ConceptSpan(cid, a, b, neg))
        self.stats["captions"] += 1
        self.stats["concepts"] += len(result)
        if len(self._cache) > 1_000_000:  # bound memory on endless corpora
            self._cache.clear()
        self._cache[key] = result
        return list(result)


def _card_graph(card: DomainCard | None) -> ConceptGraph:
    """The card's ontology plus its label-set concepts (:func:`medvlp.ontology.card_graph`, warn-and-go-on);
    an empty graph when there is neither."""
    from medvlp.ontology import ConceptGraph, card_graph

    return card_graph(card) or ConceptGraph([])


def text_token_shift(model: nn.Module) -> int:
    """Offset from tokenizer positions to ``text_tokens`` positions (-1 for CLS-pooled HF towers)."""
    inner = getattr(model, "module", model)
    text = getattr(getattr(inner, "clip", None), "text", None)
    pooler = getattr(text, "pooler", None)
    if pooler is not None and type(pooler).__name__ == "ClsPooler":
        # open_clip's HFTextEncoder drops the CLS position (0) from the tokens it returns.
        return -1
    return 0


def make_concept_fn(manifest: Manifest, card: DomainCard | None, model: nn.Module) -> ConceptFn:
    """Build the dataset's ``concept_fn``: per (row, sampled caption), its concept spans in token positions.

    Args:
        manifest: the training rows (its ``concepts`` column is used when present).
        card: the domain card; its ontology (and label-set concepts) drive the matcher.
        model: the medvlp model whose tokenizer and text tower the spans are for.

    Raises:
        DataError: a ``concepts`` cell holds a span outside its caption or an unreadable entry.

    Example:
        >>> fn = make_concept_fn(manifest, load_card("pathology"), model)  # doctest: +SKIP
        >>> fn(0, "Adipose tissue with lymphocytes.")  # doctest: +SKIP
        [ConceptSpan(concept_id='path:adipose_tissue', start=1, end=4, negated=False), ...]
    """
    from medvlp.models.spans import TokenSpanMapper

    inner = getattr(model, "module", model)
    mapper = TokenSpanMapper(inner.tokenizer)
    # A partial, not a lambda: data-loader workers may need to pickle the function.
    return ConceptFn(manifest, mapper, functools.partial(_card_graph, card), shift=text_token_shift(inner))
