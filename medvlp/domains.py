"""Domain cards: everything domain-specific that is data, not code (``domains/<name>.toml``).

A card names the image reader and preprocessing, the default model per device, the default ontology,
the zero-shot label sets (each label tied to a concept id, with synonyms), the prompt templates and the
synthetic demo corpus. Adding a domain is adding a card.

Example:
    >>> from medvlp.domains import load_card
    >>> card = load_card("pathology")
    >>> card.label_set().multilabel
    False
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from medvlp.errors import ConfigError
from medvlp.resources import domains_dir


@dataclass(frozen=True)
class Label:
    name: str  # display name, used in prompts and metrics
    concept: str  # concept id in the card's ontology
    synonyms: tuple[str, ...] = ()  # extra names used for prompt ensembles and captions

    @property
    def names(self) -> list[str]:
        """The label name followed by its synonyms, without duplicates."""
        return list(dict.fromkeys([self.name, *self.synonyms]))


@dataclass(frozen=True)
class LabelSet:
    name: str
    description: str
    multilabel: bool  # True: findings scored independently by positive/negative prompt pairs
    labels: tuple[Label, ...]

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self.labels]


@dataclass(frozen=True)
class Prompts:
    templates: tuple[str, ...]  # zero-shot prompt templates; each holds exactly one "{}"
    pairs: tuple[tuple[str, str], ...]  # (positive, negative) templates for multi-label findings
    reference: str  # reference prompt for concept scores (MONET-style)
    captions: tuple[str, ...] = ()  # caption templates for importers and demos, disjoint from ``templates``


@dataclass(frozen=True)
class ImageSpec:
    reader: str = "auto"  # auto | image | dicom | wsi | multichannel
    size: int = 224  # input size of GPU-sized models (tiny models use their own config size)
    grayscale: bool = False  # replicate one channel to three (CXR)
    pad_to_square: bool = False  # zero-pad the short side before resizing (CheXzero-style)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    dicom: dict[str, Any] = field(default_factory=dict)  # e.g. {"voi": "auto"}
    wsi: dict[str, Any] = field(default_factory=dict)  # target_mpp, tile_size, tissue_fraction, ...
    channels: tuple[dict[str, Any], ...] = ()  # microscopy channel -> colour mapping

    def reader_options(self) -> dict[str, Any]:
        """Options handed to :func:`medvlp.io.read_image`."""
        opts: dict[str, Any] = dict(self.dicom)
        if self.channels:
            opts["channels"] = [dict(c) for c in self.channels]
        return opts


@dataclass(frozen=True)
class DomainCard:
    name: str
    title: str
    description: str
    ontology: str  # bundled ontology name (ontologies/<name>.json) or a path
    default_label_set: str
    model: dict[str, str]  # device type ("cpu", "cuda") -> default model config name
    image: ImageSpec
    prompts: Prompts
    label_sets: dict[str, LabelSet]
    explain_concepts: tuple[str, ...] = ()
    demo: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def label_set(self, name: str | None = None) -> LabelSet:
        """Return the named label set (the default one when ``name`` is None)."""
        key = name or self.default_label_set
        if key not in self.label_sets:
            raise ConfigError(
                f"domain '{self.name}' has no label set '{key}'; choose one of {sorted(self.label_sets)}"
            )
        return self.label_sets[key]

    def find_label(self, name: str) -> Label | None:
        """Find a label by name or synonym in any label set (case, '_' and '-' insensitive)."""
        want = _norm(name)
        for pass_synonyms in (False, True):
            for lset in self.label_sets.values():
                for lab in lset.labels:
                    names = lab.names if pass_synonyms else [lab.name]
                    if any(_norm(n) == want for n in names):
                        return lab
        return None

    def captions_for(self, label_name: str) -> list[str]:
        """Captions for an image of class ``label_name``: templates x (name + synonyms)."""
        lab = self.find_label(label_name)
        names = [label_name] + (list(lab.synonyms) if lab else [])
        if lab and _norm(lab.name) != _norm(label_name):
            names.insert(1, lab.name)
        names = list(dict.fromkeys(names))
        return list(dict.fromkeys(t.format(n) for n in names for t in self.caption_templates))

    @property
    def caption_templates(self) -> tuple[str, ...]:
        """Templates that importers and demos write captions with (never the zero-shot prompts)."""
        return self.prompts.captions

    def default_model(self, device: str) -> str:
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        return self.model.get(kind) or self.model.get("cpu", "tiny")


def _norm(s: str) -> str:
    return " ".join(s.lower().replace("_", " ").replace("-", " ").split())


def list_domains() -> list[str]:
    """Names of the bundled domain cards."""
    return sorted(p.stem for p in domains_dir().glob("*.toml"))


@cache
def _load_cached(path: str) -> DomainCard:
    return parse_card(Path(path))


def load_card(name_or_path: str | Path) -> DomainCard:
    """Load a bundled card by name (``"cxr"``) or a card file path, validated.

    Raises:
        ConfigError: unknown domain, or a malformed card (the message names the file and the key).
    """
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(f"domain card {p} does not exist")
        return _load_cached(str(p.resolve()))
    path = domains_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown domain '{name_or_path}'; known domains: {', '.join(list_domains())}")
    return _load_cached(str(path))


def _require(d: dict, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}: missing key '{key}'")
    if not isinstance(d[key], typ):
        raise ConfigError(f"{where}: '{key}' must be {typ}, got {type(d[key]).__name__}")
    return d[key]


def parse_card(path: Path) -> DomainCard:
    """Parse and validate one card file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    w = str(path)
    name = _require(raw, "name", str, w)
    if name != path.stem:
        raise ConfigError(f"{w}: name '{name}' must equal the file name '{path.stem}'")
    img_raw = raw.get("image", {})
    reader = img_raw.get("reader", "auto")
    from medvlp.io import reader_names  # the registry (built-ins and any registered reader)

    if reader not in reader_names():
        raise ConfigError(f"{w}: [image].reader '{reader}' must be one of {', '.join(reader_names())} "
                          "(a new modality registers its reader with medvlp.io.register_reader)")
    image = ImageSpec(
        reader=reader,
        size=int(img_raw.get("size", 224)),
        grayscale=bool(img_raw.get("grayscale", False)),
        pad_to_square=bool(img_raw.get("pad_to_square", False)),
        mean=tuple(img_raw.get("mean", ImageSpec.mean)),
        std=tuple(img_raw.get("std", ImageSpec.std)),
        dicom=dict(img_raw.get("dicom", {})),
        wsi=dict(img_raw.get("wsi", {})),
        channels=tuple(dict(c) for c in img_raw.get("channels", [])),
    )
    pr = _require(raw, "prompts", dict, w)
    templates = tuple(_require(pr, "templates", list, f"{w} [prompts]"))
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(f"{w} [prompts].templates: {t!r} must contain exactly one '{{}}'")
    pairs = []
    for pair in pr.get("pairs", [["{}", "no {}"]]):
        if len(pair) != 2 or any(p.count("{}") != 1 for p in pair):
            raise ConfigError(f"{w} [prompts].pairs: {pair!r} must be [positive, negative] with one '{{}}' each")
        pairs.append((pair[0], pair[1]))
    captions = tuple(pr.get("captions", []))
    for t in captions:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(f"{w} [prompts].captions: {t!r} must contain exactly one '{{}}'")
    if not captions:
        raise ConfigError(f"{w} [prompts]: missing 'captions' (caption templates for importers and demos, "
                          "kept apart from the zero-shot 'templates')")
    shared = sorted(set(captions) & set(templates))
    if shared:
        raise ConfigError(f"{w} [prompts]: {shared} are both caption and prompt templates; the two pools must "
                          "be disjoint (a prompt that is a training caption is not zero-shot)")
    prompts = Prompts(templates=templates, pairs=tuple(pairs), reference=str(pr.get("reference", "an image")),
                      captions=captions)
    label_sets: dict[str, LabelSet] = {}
    for key, ls in _require(raw, "label_sets", dict, w).items():
        where = f"{w} [label_sets.{key}]"
        labels = []
        for i, lab in enumerate(_require(ls, "labels", list, where)):
            if not isinstance(lab, dict) or "name" not in lab or "concept" not in lab:
                raise ConfigError(f"{where}: label #{i + 1} needs 'name' and 'concept'")
            labels.append(Label(str(lab["name"]), str(lab["concept"]), tuple(lab.get("synonyms", []))))
        names = [lab.name for lab in labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{where}: duplicate label names {dupes}")
        if not labels:
            raise ConfigError(f"{where}: no labels")
        label_sets[key] = LabelSet(key, str(ls.get("description", "")), bool(ls.get("multilabel", False)),
                                   tuple(labels))
    default = raw.get("default_label_set") or next(iter(label_sets))
    if default not in label_sets:
        raise ConfigError(f"{w}: default_label_set '{default}' is not one of {sorted(label_sets)}")
    model = dict(raw.get("model", {}))
    model.setdefault("cpu", "tiny")
    return DomainCard(
        name=name,
        title=str(raw.get("title", name)),
        description=str(raw.get("description", "")),
        ontology=str(raw.get("ontology", name)),
        default_label_set=default,
        model=model,
        image=image,
        prompts=prompts,
        label_sets=label_sets,
        explain_concepts=tuple(raw.get("explain", {}).get("concepts", [])),
        demo=dict(raw.get("demo", {})),
        path=path,
    )
