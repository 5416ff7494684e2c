"""Radiology report sections (MIMIC-CXR style free text) and the text used as an image caption.

MIMIC-CXR reports carry section headers in capitals followed by a colon (``FINDINGS:``,
``IMPRESSION:``, ``INDICATION:``, ...), with many variants and typos (``FINDINS:``, ``IMPRESSON:``,
``CLINICAL HISTORY:``, ``CONCLUSION:``). :func:`parse_report` maps them to six keys; the caption
(:func:`report_text`) is the impression and the findings, else the last paragraph, as in the
MIMIC-CXR section extraction.

Example:
    >>> r = parse_report("INDICATION: Cough.\\n\\nFINDINGS: Clear lungs.\\n\\nIMPRESSION: Normal chest.")
    >>> r["findings"], r["impression"], r["indication"]
    ('Clear lungs.', 'Normal chest.', 'Cough.')
    >>> report_text("INDICATION: Cough.\\n\\nFINDINGS: Clear lungs.\\n\\nIMPRESSION: Normal chest.")
    'Normal chest. Clear lungs.'
"""

from __future__ import annotations

import difflib
import re

SECTIONS = ("findings", "impression", "indication", "comparison", "technique", "other")

# Header spellings (lower case, single spaces) -> section. Combined findings/impression sections are
# impressions: they hold the radiologist's conclusion.
_ALIASES: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "findings and discussion": "findings",
    "report": "findings",
    "description": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
    "opinion": "impression",
    "interpretation": "impression",
    "diagnosis": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "impression/findings": "impression",
    "findings impression": "impression",
    "impression and findings": "impression",
    "indication": "indication",
    "indications": "indication",
    "clinical indication": "indication",
    "history": "indication",
    "clinical history": "indication",
    "medical history": "indication",
    "hx": "indication",
    "clinical information": "indication",
    "clinical info": "indication",
    "clinical details": "indication",
    "clinical data": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "reason for study": "indication",
    "reason": "indication",
    "history/indication": "indication",
    "indication/history": "indication",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison exams": "comparison",
    "comparison study": "comparison",
    "comparison studies": "comparison",
    "comparison film": "comparison",
    "prior": "comparison",
    "priors": "comparison",
    "prior studies": "comparison",
    "technique": "technique",
    "techniques": "technique",
    "examination": "technique",
    "exam": "technique",
    "procedure": "technique",
    "views": "technique",
    "study": "technique",
    "type of examination": "technique",
}

# Single-word spellings that capitalised typos are matched against (difflib ratio >= 0.8).
_FUZZY_TARGETS = ("findings", "impression", "indication", "comparison", "technique", "conclusion", "history")

_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z /&\-]{0,40}?)[ \t]*:(?P<rest>.*)$")
# Known capitalised headers that run on in the middle of a line ("... normal. IMPRESSION: ...").
_INLINE = re.compile(
    r"(?<=\S)[ \t]+(?=(?:FINDINGS?|IMPRESSIONS?|CONCLUSIONS?|INDICATIONS?|HISTORY|COMPARISONS?|TECHNIQUE)[ \t]*:)"
)


def _section_of(name: str) -> str | None:
    """The section a header name stands for, ``"other"`` for unknown capitalised headers, None if no header."""
    key = " ".join(name.lower().replace("_", " ").split())
    if key in _ALIASES:
        return _ALIASES[key]
    letters = key.replace(" ", "")
    if name.strip().isupper() and len(letters) >= 6:
        # Typos are matched only in capitals and with the right first letter: "Compression:" is text.
        targets = [t for t in _FUZZY_TARGETS if t[0] == letters[0]]
        match = difflib.get_close_matches(letters, targets, n=1, cutoff=0.8)
        if match:
            return _ALIASES[match[0]]
    # Unknown names count as headers only in capitals ("WET READ:", "NOTIFICATION:"); "Heart size:" is text.
    if name.strip().isupper() and len(name.split()) <= 5:
        return "other"
    return None


def _clean(lines: list[str]) -> str:
    return " ".join(" ".join(lines).split())


def parse_report(text: str) -> dict[str, str]:
    """Split a free-text report into sections.

    Args:
        text: the report (MIMIC-CXR, IU X-ray or similar).

    Returns:
        ``{"findings", "impression", "indication", "comparison", "technique", "other"}`` -> text with
        whitespace collapsed; ``""`` when a section is absent. Repeated sections are joined; text before
        the first header and under unknown capitalised headers goes to ``other``.
    """
    out: dict[str, list[str]] = {key: [] for key in SECTIONS}
    current = "other"
    chunk: list[str] = []

    def flush() -> None:
        body = _clean(chunk)
        if body:
            out[current].append(body)
        chunk.clear()

    for line in _INLINE.sub("\n", text or "").splitlines():
        match = _HEADER.match(line)
        section = _section_of(match["name"]) if match else None
        if match and section is not None:
            flush()
            current = section
            chunk.append(match["rest"])
        else:
            chunk.append(line)
    flush()
    return {key: " ".join(parts) for key, parts in out.items()}


def _paragraphs(text: str) -> list[str]:
    return [p for p in (" ".join(block.split()) for block in re.split(r"\n[ \t]*\n", text or "")) if p]


def report_text(text: str) -> str:
    """The part of a report used as a caption: impression then findings, else the last paragraph.

    The impression comes first so that a text encoder's length limit cuts findings, not the conclusion.
    """
    sections = parse_report(text)
    parts = [sections["impression"], sections["findings"]]
    joined = " ".join(p for p in parts if p)
    if joined:
        return joined
    paragraphs = _paragraphs(text)
    if not paragraphs:
        return ""
    last = paragraphs[-1]
    match = _HEADER.match(last)
    if match and _section_of(match["name"]) is not None and match["rest"].strip():
        return match["rest"].strip()  # drop a header such as "NOTE:" in front of the last paragraph
    return last
