"""Character spans of a caption -> token positions of the tokenized caption.

The concept objective needs, for a concept mentioned at characters ``[start, end)`` of a caption, the
positions of the tokens that spell it in the tokenizer's output (the row of ids the text tower
reads). Both tokenizers medvlp uses change the text before splitting it: open_clip's
``SimpleTokenizer`` fixes the text with ftfy, unescapes HTML, collapses whitespace and lowercases;
open_clip's ``HFTokenizer`` does the same without lowercasing. :class:`TokenSpanMapper` therefore
(1) rebuilds the cleaned text with a map from each cleaned character back to the original one,
(2) splits the cleaned text exactly as the tokenizer does, keeping each token's character range,
and (3) intersects the requested spans with those ranges. Positions account for the start token
(SOT / ``[CLS]``) and for truncation to the context length: a span whose tokens were all cut off maps
to ``None``.

Example:
    >>> from medvlp.models import create_model
    >>> mapper = TokenSpanMapper(create_model("tiny").tokenizer)
    >>> text = "Small left pleural effusion."
    >>> mapper.token_spans(text, [(11, 27)])  # "pleural effusion" = ple|ural|ef|fusion
    [(3, 7)]
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from medvlp.errors import ModelError

__all__ = ["TokenSpanMapper", "Offsets"]

# Per input position: (start, end) character range in the ORIGINAL text, or None for special tokens.
Offsets = list[tuple[int, int] | None]


def _clean_with_map(text: str, lower: bool) -> tuple[str, list[int]]:
    """Collapse and strip whitespace (as ``" ".join(text.split())``), optionally lowercase.

    Returns the cleaned text and, per cleaned character, the index of the original character it
    comes from (a collapsed space maps to the first whitespace character of its run).
    """
    out: list[str] = []
    src: list[int] = []
    space_at = -1  # index of the first whitespace char of a pending run, -1 if none
    for i, ch in enumerate(text):
        if ch.isspace():
            if out and space_at < 0:
                space_at = i
            continue
        if space_at >= 0:
            out.append(" ")
            src.append(space_at)
            space_at = -1
        piece = ch.lower() if lower else ch
        out.extend(piece)  # lower() may give two characters ("İ" -> "i̇"); both map to i
        src.extend([i] * len(piece))
    return "".join(out), src


def _compose_map(mine: str, mine_src: list[int], true: str) -> list[int]:
    """Map each character of ``true`` (the tokenizer's cleaned text) to an original index.

    Used only when ftfy / HTML unescaping changed the text beyond whitespace and case (rare): the two
    cleaned strings are aligned with difflib; replaced blocks map proportionally.
    """
    if not mine:
        return [0] * len(true)
    out = [0] * len(true)
    sm = difflib.SequenceMatcher(None, mine, true, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            for k in range(j2 - j1):
                out[j1 + k] = mine_src[i1 + k]
        elif tag == "replace":
            for k in range(j2 - j1):
                out[j1 + k] = mine_src[min(i2 - 1, i1 + (k * (i2 - i1)) // (j2 - j1))]
        elif tag == "insert":
            anchor = mine_src[i1] if i1 < len(mine_src) else mine_src[-1]
            for k in range(j2 - j1):
                out[j1 + k] = anchor
    return out


class TokenSpanMapper:
    """Map character spans of a text to token positions, for open_clip and Hugging Face tokenizers.

    Args:
        tokenizer: a :class:`medvlp.models.factory.Tokenizer`, an open_clip ``SimpleTokenizer`` or
            ``HFTokenizer``, or a Hugging Face fast tokenizer (then ``context_length`` is needed).
        context_length: override of the tokenizer's context length.

    Raises:
        ModelError: the tokenizer kind is not supported (a slow HF tokenizer without offsets, open_clip
            tokenizers with reduction masks or the 'clips' mode).
    """

    def __init__(self, tokenizer: Any, context_length: int | None = None) -> None:
        inner = getattr(tokenizer, "_tok", tokenizer)  # unwrap medvlp's Tokenizer
        ctx = context_length or getattr(tokenizer, "context_length", None) or getattr(inner, "context_length", None)
        if not ctx:
            raise ModelError("TokenSpanMapper needs a context length (pass context_length=)")
        self.context_length = int(ctx)
        self._inner = inner
        self._cache: dict[str, tuple[list[int], Offsets]] = {}
        import open_clip.tokenizer as oct

        if isinstance(inner, oct.SimpleTokenizer):
            if getattr(inner, "reduction_fn", None) is not None:
                raise ModelError("token spans are not supported for open_clip tokenizers with a reduction mask")
            self.kind = "simple"
            self._clean_fn = inner.clean_fn
            self._lower = inner.clean_fn in (oct._clean_lower, oct._clean_canonicalize)
        elif isinstance(inner, oct.HFTokenizer):
            if inner.tokenizer_mode == "clips":
                raise ModelError("token spans are not supported for open_clip's HFTokenizer in 'clips' mode")
            self.kind = "hf"
            self._hf = inner.tokenizer
            self._clean_fn = inner.clean_fn
            self._lower = inner.clean_fn is oct._clean_canonicalize
        elif callable(inner) and hasattr(inner, "is_fast"):
            self.kind = "hf"
            self._hf = inner
            self._clean_fn = None  # a raw HF tokenizer sees the text unchanged
            self._lower = False
        else:
            raise ModelError(f"unsupported tokenizer type {type(inner).__name__} for token spans")
        if self.kind == "hf" and not getattr(self._hf, "is_fast", False):
            raise ModelError(
                f"the Hugging Face tokenizer {type(self._hf).__name__} is not a fast tokenizer, so it cannot "
                "report character offsets; install 'tokenizers' and use a model folder with tokenizer.json"
            )

    # ------------------------------------------------------------------------------------------
    def _cleaned(self, text: str) -> tuple[str, list[int]]:
        """The tokenizer's cleaned text and, per character, its index in ``text``."""
        mine, src = _clean_with_map(text, self._lower)
        if self._clean_fn is None:
            return text, list(range(len(text)))
        true = self._clean_fn(text)
        if true == mine:
            return mine, src
        return true, _compose_map(mine, src, true)

    def encode(self, text: str) -> tuple[list[int], Offsets]:
        """Token ids of ``text`` (special tokens included, truncated, no padding) and per position the
        character range in ``text`` it spells (None for special tokens).

        The ids equal the non-padding part of the tokenizer's own output; tests check this.
        """
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        cleaned, src = self._cleaned(text)
        if self.kind == "simple":
            ids, ranges = self._encode_simple(cleaned)
        else:
            ids, ranges = self._encode_hf(cleaned)
        offsets: Offsets = []
        for r in ranges:
            if r is None or r[1] <= r[0]:
                offsets.append(None)
            else:
                offsets.append((src[r[0]], src[r[1] - 1] + 1))
        if len(self._cache) > 200_000:  # bound memory on endless corpora; recomputing is cheap
            self._cache.clear()
        self._cache[text] = (ids, offsets)
        return ids, offsets

    def _encode_simple(self, cleaned: str) -> tuple[list[int], list[tuple[int, int] | None]]:
        tok = self._inner
        ids: list[int] = [tok.sot_token_id]
        ranges: list[tuple[int, int] | None] = [None]
        for m in tok.pat.finditer(cleaned):
            piece = m.group()
            byte_char: list[int] = []  # byte index in the piece -> char index in the piece
            for ci, ch in enumerate(piece):
                byte_char.extend([ci] * len(ch.encode("utf-8")))
            encoded = "".join(tok.byte_encoder[b] for b in piece.encode("utf-8"))
            pos = 0
            for sub in tok.bpe(encoded).split(" "):
                nbytes = len(sub) - (4 if sub.endswith("</w>") else 0)
                ids.append(tok.encoder[sub])
                ranges.append((m.start() + byte_char[pos], m.start() + byte_char[pos + nbytes - 1] + 1))
                pos += nbytes
        ids.append(tok.eot_token_id)
        ranges.append(None)
        if len(ids) > self.context_length:  # open_clip truncates and puts EOT in the last slot
            ids = ids[: self.context_length]
            ranges = ranges[: self.context_length]
            ids[-1] = tok.eot_token_id
            ranges[-1] = None
        return ids, ranges

    def _encode_hf(self, cleaned: str) -> tuple[list[int], list[tuple[int, int] | None]]:
        enc = self._hf(cleaned, max_length=self.context_length, truncation=True, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        special = set(self._hf.all_special_ids)
        ranges: list[tuple[int, int] | None] = []
        for tid, (a, b) in zip(ids, enc["offset_mapping"], strict=True):
            ranges.append(None if (tid in special or b <= a) else (int(a), int(b)))
        return ids, ranges

    # ------------------------------------------------------------------------------------------
    def token_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int] | None]:
        """Token positions ``[a, b)`` covering each character span ``[start, end)`` of ``text``.

        A token belongs to a span when their character ranges overlap (so a span cutting a word
        includes the whole word-piece). Positions index the tokenizer's output row (position 0 is the
        start token). ``None`` for a span that no token covers (only whitespace or punctuation the
        tokenizer drops, or cut off by truncation).

        Raises:
            ValueError: a span is not within ``0 <= start < end <= len(text)``.
        """
        _, offsets = self.encode(text)
        out: list[tuple[int, int] | None] = []
        for s, e in spans:
            if not (0 <= s < e <= len(text)):
                raise ValueError(f"span [{s}, {e}) is not inside the text of length {len(text)}")
            hit = [p for p, r in enumerate(offsets) if r is not None and r[0] < e and r[1] > s]
            out.append((hit[0], hit[-1] + 1) if hit else None)
        return out
