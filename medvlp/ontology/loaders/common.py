"""Reading text files for the ontology loaders: bad bytes and lines become LoadIssues."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medvlp.errors import OntologyError
from medvlp.ontology.graph import LoadIssue


# ---------------------------------------------------------------------------- text reading
def _iter_lines(path: Path, issues: list[LoadIssue]) -> Iterator[tuple[int, str]]:
    """(line number, text) of a file read in binary, so that one bad byte costs one line, not the file."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                issues.append(LoadIssue(str(path), lineno,
                                        f"invalid UTF-8 byte at column {exc.start + 1}; line decoded "
                                        "with U+FFFD replacement characters", "invalid UTF-8"))
                line = raw.decode("utf-8", errors="replace")
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield lineno, line.rstrip("\r\n")


def _read_text(path: Path, issues: list[LoadIssue]) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\n".join(line for _, line in _iter_lines(path, issues))
    return text.removeprefix("\ufeff")


def _require_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise OntologyError(f"ontology file {str(p)!r} not found; check the path")
    return p


# ---------------------------------------------------------------------------- project JSON


