"""Manifests from untrusted files: non-UTF-8 lines, labels outside the card, and a fuzzed parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medvlp.data.manifest import Manifest, check_row, read_manifest, unknown_label_rows, unknown_labels
from medvlp.domains import load_card
from medvlp.errors import DataError, MedvlpError


def test_non_utf8_line_is_named_and_read_as_latin1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "m.csv"
    p.write_bytes(b"image,caption\na.png,fine\nb.png,caf\xe9 au lait\nc.png,ok\n")
    m = read_manifest(p)
    assert len(m) == 3
    assert m.captions(1) == ["café au lait"]  # latin-1 reading of the byte 0xE9
    assert len(m.warnings) == 1 and "line(s) 3 " in m.warnings[0] and "latin-1" in m.warnings[0]
    assert str(p) in m.warnings[0]
    assert any("line(s) 3 " in r.getMessage() for r in caplog.records)


def test_utf8_manifest_has_no_warning(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"image": "a.png", "caption": "café"}, ensure_ascii=False) + "\n", encoding="utf-8")
    m = read_manifest(p)
    assert m.captions(0) == ["café"] and m.warnings == []


def test_jsonl_bad_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"image": "a.png"}\n{"image": "b.png"\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2 is not valid JSON"):
        read_manifest(p)
    p.write_text('{"image": "a.png"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2 is a JSON list, not an object"):
        read_manifest(p)


def test_unknown_labels_counted_by_label_and_row(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text(
        "image,label\n"
        "a.png,pneumonia\n"
        "b.png,lung infection\n"  # a synonym of pneumonia: known
        "c.png,zebra\n"
        'd.png,"[""zebra"", ""unicorn""]"\n'
        "e.png,\n"
    )
    card = load_card("cxr")
    m = read_manifest(p)
    assert unknown_labels(m, card) == {"zebra": 2, "unicorn": 1}
    assert list(unknown_labels(p, card)) == ["zebra", "unicorn"]  # a path works too; most frequent first
    assert unknown_label_rows(m, card) == [(2, "zebra"), (3, "zebra"), (3, "unicorn")]


# --------------------------------------------------------------------------------------------------
# Fuzz: any bytes give a MedvlpError with a message or a usable Manifest, never another exception.

_CSVISH = st.text(alphabet=st.sampled_from(list('image,caption,label,concepts"[]{}\n\r\t ;#.\\x\x00é\u2028')), max_size=200)
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["image", "caption", "label", "concepts", "x"]), inner, max_size=4),
    max_leaves=10,
)


def _exercise(p: Path) -> None:
    try:
        m = read_manifest(p)
    except MedvlpError as e:
        assert str(e).strip()
        return
    assert isinstance(m, Manifest) and len(m) > 0 and "image" in m.columns
    for i in range(len(m)):
        m.captions(i)
        m.labels(i)
        m.concepts(i)
        m.image_source(i)
        reason = check_row(m, i, read=False)
        assert reason is None or reason.strip()
    m.label_names()


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_fuzz_random_bytes(tmp_path: Path, data: bytes, suffix: str) -> None:
    p = tmp_path / f"m{suffix}"
    p.write_bytes(data)
    _exercise(p)


@_FUZZ
@given(text=_CSVISH, suffix=st.sampled_from([".csv", ".tsv"]))
def test_fuzz_csvish_text(tmp_path: Path, text: str, suffix: str) -> None:
    p = tmp_path / f"m{suffix}"
    p.write_text("image,caption,label\n" + text, encoding="utf-8", errors="surrogatepass")
    _exercise(p)


@_FUZZ
@given(records=st.lists(_JSONISH, max_size=5))
def test_fuzz_jsonl(tmp_path: Path, records: list) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    _exercise(p)
