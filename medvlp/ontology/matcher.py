"""Find concept mentions in captions, with NegEx-style negation and uncertainty per mention.

The matcher is a token-level dictionary: every name and synonym of the graph is tokenised and
normalised the same way as the text (case folded, hyphens and punctuation as separators, a cheap
plural/possessive folding), and stored under its token tuple; a second table holds, per first token,
the longest phrase that starts with it. Matching walks the caption once and at each token tries
only the lengths that can exist, longest first, so the cost is a few dictionary lookups per token
whatever the size of the vocabulary. Spans are character offsets into the original text.

Negation and uncertainty follow NegEx (Chapman et al. 2001): a cue before a mention ("no",
"without", "negative for", "possible", ...) or after it ("ruled out", "is unlikely", ...) applies
within the same clause; clauses end at ``. ; : ! ?`` and at words such as "but" and "however".
Pseudo-cues ("no change", "not only", "gram negative") are consumed without effect.

Example:
    >>> from medvlp.ontology.graph import Concept, ConceptGraph
    >>> g = ConceptGraph([Concept("cxr:effusion", "pleural effusion", ["effusion"]),
    ...                   Concept("cxr:pneumothorax", "pneumothorax")])
    >>> [(m.start, m.end, m.concept_id, m.negated) for m in
    ...  ConceptMatcher(g).match("Small left pleural effusions. No pneumothorax.")]
    [(11, 28, 'cxr:effusion', False), (33, 45, 'cxr:pneumothorax', True)]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from medvlp.ontology.graph import ConceptGraph

__all__ = ["ConceptMatcher", "Mention", "mentions_to_concepts", "normalize_token", "tokenize"]

# Numbers keep their decimal point ("3.5 cm" is one token, not a clause end); words keep inner
# apostrophes ("Crohn's"); clause punctuation is a token of its own; everything else separates.
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:['\u2019][^\W_]+)*|[.;:!?]")
_CLAUSE_PUNCT = frozenset(".;:!?")

# NegEx-style cue lists (own selection). Longest cue wins, so "cannot exclude" is uncertainty and
# not the negation "not"; pseudo-cues are read and ignored.
_PRE_NEG = ["no", "not", "without", "negative for", "free of", "absence of", "absent", "denies", "denied",
            "neither", "nor", "never", "rules out", "excluded", "no evidence of", "no sign of",
            "no signs of", "resolution of"]
_POST_NEG = ["ruled out", "is ruled out", "was ruled out", "has been ruled out", "is absent", "are absent",
             "was absent", "were absent", "not seen", "not present", "not identified", "not detected",
             "not visualized", "not demonstrated", "is negative", "was negative", "negative", "resolved",
             "has resolved", "have resolved"]
_PRE_UNC = ["possible", "possibly", "probable", "probably", "may represent", "may be", "might be",
            "could be", "could represent", "suspicious for", "suspected", "suspect", "suspicion of",
            "cannot exclude", "can not exclude", "cannot rule out", "can not rule out", "questionable",
            "question of", "concerning for", "suggestive of", "suggests", "likely", "presumed",
            "equivocal", "indeterminate", "rule out", "differential diagnosis", "versus", "vs"]
_POST_UNC = ["cannot be excluded", "can not be excluded", "cannot be ruled out", "not excluded",
             "not ruled out", "is suspected", "are suspected", "was suspected", "is possible",
             "is likely", "is unlikely", "unlikely", "is questionable", "is not excluded"]
_PSEUDO = ["no change", "no significant change", "no interval change", "no increase", "no decrease",
           "no further", "not only", "not necessarily", "gram negative", "without change",
           "not cause", "no suspicious change"]
_TERMINATORS = ["but", "however", "although", "though", "yet", "except", "whereas", "apart from",
                "aside from", "secondary to", "nevertheless", "otherwise"]

_PRE_NEG_K, _POST_NEG_K, _PRE_UNC_K, _POST_UNC_K, _PSEUDO_K, _TERM_K = range(6)


def normalize_token(token: str) -> str:
    """Fold one token so that case, possessives and common plurals compare equal.

    ``"Effusions"`` -> ``"effusion"``, ``"Crohn's"`` -> ``"crohn"``, ``"opacities"`` ->
    ``"opacity"``, ``"masses"`` -> ``"mass"``, ``"headaches"`` / ``"headache"`` -> ``"headach"``.
    The same function is applied to the vocabulary and to the text, so only agreement matters.
    """
    t = token.lower()
    if "'" in t or "\u2019" in t:
        t = t.replace("\u2019", "'")
        if t.endswith("'s"):
            t = t[:-2]
        t = t.replace("'", "")
    if len(t) > 3 and t.isalpha():
        if t.endswith("ies"):
            t = t[:-3] + "y"
        elif t[-1] == "s" and t[-2] not in "sui":
            t = t[:-1]
        if len(t) > 3 and t[-1] == "e":  # "nodule(s)", "masse(s)", "headache(s)" fold together
            t = t[:-1]
    return t


# Single common words that some vocabularies list as names (HPO's root is "All"); never a mention.
_STOPWORDS = frozenset(normalize_token(w) for w in (
    "all and any are but can for from has have her his its may not one other our out the their them "
    "then there these they this those two was were what when which who with").split())


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """``(normalised token, start, end)`` for each token of ``text`` (spans into ``text``)."""
    return [(normalize_token(m.group()), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


@dataclass(frozen=True)
class Mention:
    """A concept found in a text.

    Attributes:
        start: character offset of the first character in the original text.
        end: offset one past the last character (``text[start:end]`` is the mention).
        text: the mention as written.
        concept_id: id of the matched concept.
        name: the concept's preferred name.
        negated: a negation cue applies ("no pneumothorax").
        uncertain: an uncertainty cue applies ("possible pneumonia").
    """

    start: int
    end: int
    text: str
    concept_id: str
    name: str
    negated: bool = False
    uncertain: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mentions_to_concepts(mentions: Iterable[Mention], caption_index: int | None = None) -> list[dict[str, Any]]:
    """The manifest's ``concepts`` value: ``[{"id", "span": [start, end], "negated"}, ...]``.

    Args:
        mentions: mentions found in one caption.
        caption_index: for rows with several captions, which caption the spans point into (added as
            ``"caption"``); None for single-caption rows.
    """
    out = []
    for m in mentions:
        d: dict[str, Any] = {"id": m.concept_id, "span": [m.start, m.end], "negated": m.negated}
        if caption_index is not None:
            d["caption"] = caption_index
        out.append(d)
    return out


class ConceptMatcher:
    """Dictionary matcher over every name and synonym of a :class:`ConceptGraph`.

    Args:
        graph: the concepts to find.
        min_length: phrases shorter than this many characters (after normalisation) are not indexed,
            so that short ambiguous strings ("no", "ct") do not match everywhere.

    When two concepts share a phrase, a preferred name wins over a synonym, then graph order.
    Short all-capital synonyms (abbreviations such as "ARDS") match only when written in capitals.

    Example:
        >>> m = ConceptMatcher(load_ontology("cxr"))  # doctest: +SKIP
        >>> m.match("Possible right lower lobe pneumonia, no effusion.")  # doctest: +SKIP
    """

    def __init__(self, graph: ConceptGraph, *, min_length: int = 3) -> None:
        self.graph = graph
        self.min_length = min_length
        self._norm_cache: dict[str, str] = {}
        # phrase key -> (concept id, rank); a key is the token itself for one-token phrases, else a tuple
        phrases: dict[Any, tuple[str, int]] = {}
        upper: dict[str, str] = {}  # abbreviations that must be written in capitals
        for cid, concept in graph.concepts.items():
            for rank, text in enumerate(concept.texts):
                toks = self._norm_tokens(text)
                if not toks or sum(len(t) for t in toks) + len(toks) - 1 < min_length:
                    continue
                if len(toks) == 1 and toks[0] in _STOPWORDS:
                    continue
                key: Any = toks[0] if len(toks) == 1 else tuple(toks)
                stripped = text.strip()
                if rank > 0 and len(toks) == 1 and stripped.isupper() and len(stripped) <= 6:
                    upper.setdefault(key, cid)
                    continue
                prio = 0 if rank == 0 else 1
                old = phrases.get(key)
                if old is None or prio < old[1]:
                    phrases[key] = (cid, prio)
        self._phrases = {k: v[0] for k, v in phrases.items()}
        self._upper = upper
        # first token -> phrase lengths (>1) that start with it, longest first; () = one-token only
        lengths: dict[str, set[int]] = {}
        for key in (*self._phrases, *self._upper):
            first, n = (key, 1) if isinstance(key, str) else (key[0], len(key))
            lengths.setdefault(first, set())
            if n > 1:
                lengths[first].add(n)
        self._lengths = {k: tuple(sorted(v, reverse=True)) for k, v in lengths.items()}
        self._cues: dict[Any, int] = {}
        self._cue_max: dict[str, int] = {}
        for kind, cues in ((_PRE_NEG_K, _PRE_NEG), (_POST_NEG_K, _POST_NEG), (_PRE_UNC_K, _PRE_UNC),
                           (_POST_UNC_K, _POST_UNC), (_PSEUDO_K, _PSEUDO), (_TERM_K, _TERMINATORS)):
            for cue in cues:
                toks = self._norm_tokens(cue)
                key = toks[0] if len(toks) == 1 else tuple(toks)
                self._cues.setdefault(key, kind)
                if len(toks) > self._cue_max.get(toks[0], 0):
                    self._cue_max[toks[0]] = len(toks)

    def _norm_tokens(self, text: str) -> list[str]:
        return [normalize_token(m.group()) for m in _TOKEN_RE.finditer(text)]

    def __len__(self) -> int:
        """Number of distinct indexed phrases."""
        return len(self._phrases) + len(self._upper)

    def match(self, text: str) -> list[Mention]:
        """Longest non-overlapping concept mentions in ``text``, left to right.

        Args:
            text: a caption or report (any length; clauses are found inside).

        Returns:
            Mentions with spans into ``text`` and negation / uncertainty flags.
        """
        cache = self._norm_cache
        if len(cache) > 500_000:  # bound memory on endless corpora; refilling is cheap
            cache.clear()
        matches = list(_TOKEN_RE.finditer(text))
        norms = []
        for m in matches:
            raw = m.group()
            t = cache.get(raw)
            if t is None:
                t = cache[raw] = normalize_token(raw)
            norms.append(t)
        n = len(norms)
        phrases, upper, all_lengths = self._phrases, self._upper, self._lengths
        found: list[tuple[int, int, str]] = []  # (first token, end token, concept id)
        i = 0
        while i < n:
            lengths = all_lengths.get(norms[i])
            if lengths is None:
                i += 1
                continue
            hit = None
            for length in lengths:
                if i + length <= n:
                    cid = phrases.get(tuple(norms[i:i + length]))
                    if cid is not None:
                        hit = (i, i + length, cid)
                        break
            if hit is None:
                cid = phrases.get(norms[i])
                if cid is None and matches[i].group().isupper():
                    cid = upper.get(norms[i])
                if cid is not None:
                    hit = (i, i + 1, cid)
            if hit is not None and norms[i] in self._cue_max and self._cue_length(norms, i) >= hit[1] - i:
                # a cue word that is also a concept name ("possible" in a graph of qualifiers) is read as
                # the cue, so that it still marks the finding after it; longer concept phrases win
                hit = None
            if hit is None:
                i += 1
            else:
                found.append(hit)
                i = hit[1]
        if not found:
            return []
        flags = self._cue_flags(norms, found)
        concepts = self.graph.concepts
        out = []
        for (a, b, cid), (neg, unc) in zip(found, flags, strict=True):
            s, e = matches[a].start(), matches[b - 1].end()
            out.append(Mention(s, e, text[s:e], cid, concepts[cid].name, neg, unc))
        return out

    def _cue_length(self, norms: list[str], i: int) -> int:
        """Token length of the longest cue starting at token ``i`` (0 when none)."""
        cues = self._cues
        for length in range(min(self._cue_max.get(norms[i], 0), len(norms) - i), 0, -1):
            if (norms[i] if length == 1 else tuple(norms[i:i + length])) in cues:
                return length
        return 0

    def _cue_flags(self, norms: list[str], found: list[tuple[int, int, str]]) -> list[list[bool]]:
        """[negated, uncertain] per mention from the cues of its clause."""
        flags = [[False, False] for _ in found]
        starts = {a: k for k, (a, _, _) in enumerate(found)}
        cues, cue_max = self._cues, self._cue_max
        neg = unc = False
        clause: list[int] = []  # mentions seen in the current clause, for post-cues
        n = len(norms)
        i = 0
        while i < n:
            k = starts.get(i)
            if k is not None:
                flags[k][0] = neg
                flags[k][1] = unc
                clause.append(k)
                i = found[k][1]
                continue
            tok = norms[i]
            if tok in _CLAUSE_PUNCT:
                neg = unc = False
                clause = []
                i += 1
                continue
            longest = cue_max.get(tok)
            if longest is None:
                i += 1
                continue
            kind = None
            length = 1
            for length in range(min(longest, n - i), 0, -1):
                key = tok if length == 1 else tuple(norms[i:i + length])
                kind = cues.get(key)
                if kind is not None and not any(j in starts for j in range(i + 1, i + length)):
                    break
                kind = None
            if kind is None:
                i += 1
                continue
            if kind == _PRE_NEG_K:
                neg = True
            elif kind == _PRE_UNC_K:
                unc = True
            elif kind == _POST_NEG_K:
                for k in clause:
                    flags[k][0] = True
            elif kind == _POST_UNC_K:
                for k in clause:
                    flags[k][1] = True
            elif kind == _TERM_K:
                neg = unc = False
                clause = []
            i += length
        return flags

    def match_many(self, texts: Iterable[str]) -> list[list[Mention]]:
        """:meth:`match` for each text."""
        return [self.match(t) for t in texts]
