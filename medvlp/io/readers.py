"""The image reader registry (MONAI's ImageReader idea): a modality is a name, a sniff and a read.

``register_reader(name, sniff, read)`` makes ``name`` usable as ``read_image(..., reader=name)``, as a domain
card's ``[image].reader``, and (through ``sniff``) by ``reader="auto"``. The built-in readers (``image``,
``dicom``, ``multichannel``, ``wsi``) register themselves in :mod:`medvlp.io.images`; a new modality is one
file that calls :func:`register_reader` and is imported before use (e.g. from a plug-in's ``__init__``).

Example:
    >>> from PIL import Image
    >>> register_reader("flat", sniff=lambda s: s.endswith(".flat"),
    ...                 read=lambda s, opts: Image.new("RGB", (4, 4)), replace=True)
    >>> "flat" in reader_names()
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from medvlp.errors import ConfigError

Sniff = Callable[[str], bool]
Read = Callable[[str, Mapping[str, Any]], Image.Image]


@dataclass(frozen=True)
class Reader:
    """A registered reader: ``sniff(source) -> bool`` (cheap: suffix, magic bytes) and
    ``read(source, options) -> RGB PIL image`` (raising :class:`~medvlp.errors.ImageReadError`)."""

    name: str
    sniff: Sniff
    read: Read
    description: str = ""
    builtin: bool = False


_READERS: dict[str, Reader] = {}


def register_reader(name: str, sniff: Sniff, read: Read, *, description: str = "", replace: bool = False,
                    builtin: bool = False) -> Reader:
    """Register a reader under ``name`` (``replace=True`` to redefine one).

    Readers registered by users are tried by ``reader="auto"`` before the built-in ones, newest first.

    Raises:
        ConfigError: ``name`` is ``auto``, not an identifier, or already registered (without ``replace``).
    """
    if name == "auto" or not name.replace("-", "_").isidentifier():
        raise ConfigError(f"reader name {name!r} must be an identifier other than 'auto'")
    if name in _READERS and not replace:
        raise ConfigError(f"a reader named {name!r} is already registered; pass replace=True to redefine it")
    reader = Reader(name, sniff, read, description, builtin)
    _READERS[name] = reader
    return reader


def reader_names() -> list[str]:
    """``auto`` and every registered reader, in the order ``auto`` tries them."""
    return ["auto", *(r.name for r in _auto_order())]


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    try:
        return _READERS[name]
    except KeyError:
        raise ConfigError(f"unknown reader {name!r}; use one of {', '.join(reader_names())}") from None


def _auto_order() -> list[Reader]:
    users = [r for r in _READERS.values() if not r.builtin][::-1]
    return users + [r for r in _READERS.values() if r.builtin]


def find_reader(source: str) -> Reader | None:
    """The first reader whose ``sniff`` accepts ``source`` (user readers first), or None."""
    for reader in _auto_order():
        try:
            if reader.sniff(source):
                return reader
        except OSError:
            continue
    return None


__all__ = ["Reader", "register_reader", "reader_names", "get_reader", "find_reader"]
