"""Errors a user can cause. Each says what was wrong, where, and what to do."""

from __future__ import annotations


class MedvlpError(Exception):
    """Base class: the CLI prints these as a one-line reason and exits non-zero."""


class ConfigError(MedvlpError):
    """A bad configuration, domain card, model name or command-line value."""


class DataError(MedvlpError):
    """A bad manifest, row, or data folder."""


class ImageReadError(DataError):
    """An image (PNG/JPEG/TIFF/DICOM/slide tile) could not be read.

    Args:
        path: the file that failed.
        reason: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class OntologyError(MedvlpError):
    """A malformed ontology file or an unknown concept id."""


class ModelError(MedvlpError):
    """An unknown model name, or one that cannot be built offline."""
