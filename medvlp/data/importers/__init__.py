"""Turn common dataset layouts into medvlp manifests with captions from a domain card.

Three importers, each returning an :class:`ImportSummary`:

- :func:`import_folder`: one subfolder per class (ImageNet style).
- :func:`import_medmnist`: a MedMNIST v2 ``.npz`` (2D sets, any resolution) to PNGs plus
  ``train.csv`` / ``val.csv`` / ``test.csv``.
- :func:`import_ham10000`: HAM10000-style dermatology metadata (diagnosis, body site, age, sex,
  optional skin type), split by lesion/patient so no lesion lands in two splits.

Manifests follow DESIGN.md: ``image`` relative to the manifest's folder, ``caption`` a JSON list of
texts, ``label`` a class name (a JSON list for multi-label rows), then ``group``/``patient``/``split``
and metadata columns.

Example:
    >>> from medvlp.domains import load_card
    >>> from medvlp.data.importers import import_folder
    >>> summary = import_folder("images/", card=load_card("pathology"), out_manifest="data/train.csv")  # doctest: +SKIP
    >>> print(summary.format())  # doctest: +SKIP
"""

from medvlp.data.importers.common import IMAGE_EXTENSIONS, ImportSummary, class_captions
from medvlp.data.importers.folder import import_folder
from medvlp.data.importers.ham10000 import FITZPATRICK_COLUMN, HAM10000_DX, ham_captions, import_ham10000
from medvlp.data.importers.medmnist import (
    MEDMNIST_LABELS,
    MULTILABEL_MEDMNIST,
    import_medmnist,
    infer_medmnist_flag,
    medmnist_flags,
    medmnist_label_names,
)
from medvlp.data.importers.table import import_table
from medvlp.data.manifest import MANIFEST_SUFFIXES, write_manifest

__all__ = [
    "FITZPATRICK_COLUMN",
    "HAM10000_DX",
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "MEDMNIST_LABELS",
    "MULTILABEL_MEDMNIST",
    "ImportSummary",
    "class_captions",
    "ham_captions",
    "import_folder",
    "import_ham10000",
    "import_medmnist",
    "import_table",
    "infer_medmnist_flag",
    "medmnist_flags",
    "medmnist_label_names",
    "write_manifest",
]
