"""Loading trained and public models: run folders, ``local-dir:`` and ``hf-hub:`` ids, and the zoo table.

The zoo table (:data:`ZOO`, read from the catalogue file ``zoo.json`` beside this module) records, for public medical CLIP models, what a user needs to reproduce
their numbers: the id to pass to ``medvlp.load`` / ``--model``, the image preprocessing (size, mean/std,
resize and crop), the tokenizer and context length, the domain, the licence and the paper to cite.
``medvlp models --zoo`` prints it.

Formats:
- **open_clip hub layout** (BiomedCLIP, QuiltNet, DermLIP): ``open_clip_config.json`` plus
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin`` (read with
  ``torch.load(weights_only=True)``, never unpickling objects). Standard CLIP checkpoints are converted
  to open_clip's custom-text layout on load; timm vision towers are given patch-token output.
  Tokenizer files in the folder (HF text towers) are used instead of fetching them.
- **Hugging Face transformers CLIP** (PLIP, ``vinid/plip``): a ``CLIPModel`` checkpoint, not open_clip
  format; ``medvlp.load`` refuses it with a message saying so (use transformers' ``CLIPModel``).

Example:
    >>> from medvlp.models.zoo import zoo_entry
    >>> e = zoo_entry("quiltnet-b-32")
    >>> e.model_id, e.image_size, e.context_length
    ('hf-hub:wisdomik/QuiltNet-B-32', 224, 77)
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import MISSING, asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import torch

from medvlp.errors import ModelError
from medvlp.models.factory import CONFIG_FILE, MEDVLP_FILE, MedVLP, load_saved

WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


@dataclass(frozen=True)
class ZooEntry:
    """One public model: how to load it and how to feed it."""

    name: str  # short name used in the table
    model_id: str  # what to pass to medvlp.load / --model
    format: str  # "open_clip" (loadable) or "transformers" (not open_clip format)
    architecture: str  # towers in words
    domain: str  # medvlp domain card it suits (or "general biomedical")
    image_size: int  # input side in pixels
    mean: tuple[float, float, float]  # normalisation mean (RGB, 0-1 scale)
    std: tuple[float, float, float]  # normalisation std
    resize: str  # resize / crop recipe of its evaluation preprocessing
    tokenizer: str  # tokenizer (open_clip BPE or a Hugging Face tokenizer id)
    context_length: int  # text tokens
    licence: str  # as stated by the authors (check the model card before use)
    citation: str  # paper to cite
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CATALOGUE = Path(__file__).resolve().parent / "zoo.json"


def _type_ok(value: Any, kind: Any) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    # the 3-float normalisation tuples
    return isinstance(value, list | tuple) and len(value) == 3 and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value)


def parse_catalogue(doc: Any, source: str = "zoo.json") -> dict[str, ZooEntry]:
    """The zoo table from a catalogue document (``{"defaults": {...}, "models": [{...}, ...]}``).

    Every entry must give each :class:`ZooEntry` field (``notes`` optional) with the right type, after
    the ``defaults`` are filled in; names must be unique (lower case) and ids ``hf-hub:ORG/NAME``.

    Raises:
        ModelError: naming the entry (position and name) and the field that is missing, unknown or wrong.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ModelError(f"{source}: expected an object with a 'models' list")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ModelError(f"{source}: 'defaults' must be an object")
    spec = {f.name: f for f in fields(ZooEntry)}
    kinds = {"image_size": int, "context_length": int, "mean": tuple, "std": tuple}
    out: dict[str, ZooEntry] = {}
    for pos, raw in enumerate(doc["models"]):
        named = isinstance(raw, dict) and "name" in raw
        label = f"{source}: model {pos}" + (f" ('{raw['name']}')" if named else "")
        if not isinstance(raw, dict):
            raise ModelError(f"{label}: expected an object of ZooEntry fields, got {type(raw).__name__}")
        entry = {**defaults, **raw}
        unknown = sorted(set(entry) - set(spec))
        if unknown:
            raise ModelError(f"{label}: unknown field(s) {unknown}; the fields are {sorted(spec)}")
        missing = [n for n, f in spec.items() if n not in entry and f.default is MISSING]
        if missing:
            raise ModelError(f"{label}: missing field(s) {missing}")
        for key, value in entry.items():
            kind = kinds.get(key, str)
            if not _type_ok(value, kind):
                want = {int: "an integer", str: "a string", tuple: "a list of 3 numbers"}[kind]
                raise ModelError(f"{label}: field '{key}' must be {want}, got {value!r}")
        if not entry["name"] or entry["name"] != entry["name"].lower():
            raise ModelError(f"{label}: 'name' must be a non-empty lower-case short name")
        if entry["name"] in out:
            raise ModelError(f"{label}: the name '{entry['name']}' is used twice")
        if not entry["model_id"].startswith("hf-hub:") or entry["model_id"][len("hf-hub:"):].count("/") != 1:
            raise ModelError(f"{label}: 'model_id' must be 'hf-hub:ORG/NAME', got {entry['model_id']!r}")
        if entry["format"] not in ("open_clip", "transformers"):
            raise ModelError(f"{label}: 'format' must be 'open_clip' or 'transformers', got {entry['format']!r}")
        entry["mean"], entry["std"] = tuple(entry["mean"]), tuple(entry["std"])
        out[entry["name"]] = ZooEntry(**entry)
    return out


def load_catalogue(path: str | Path = CATALOGUE) -> dict[str, ZooEntry]:
    """Read and validate a zoo catalogue file (default: the bundled ``zoo.json``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read the zoo catalogue ({type(e).__name__}: {e})") from e
    return parse_catalogue(doc, str(path))


ZOO: dict[str, ZooEntry] = load_catalogue()  # read once, at import


def list_zoo() -> list[ZooEntry]:
    """The zoo table, in display order."""
    return list(ZOO.values())


def zoo_entry(name_or_id: str) -> ZooEntry | None:
    """The zoo entry for a short name (``quiltnet-b-32``) or an id (``hf-hub:wisdomik/QuiltNet-B-32``)."""
    key = name_or_id.strip()
    if key.lower() in ZOO:
        return ZOO[key.lower()]
    bare = key[len("hf-hub:"):] if key.startswith("hf-hub:") else key
    for e in ZOO.values():
        if e.model_id[len("hf-hub:"):].lower() == bare.lower():
            return e
    return None


def format_zoo() -> str:
    """The zoo table as text (``medvlp models --zoo``)."""
    lines = []
    for e in list_zoo():
        loadable = "loadable" if e.format == "open_clip" else f"{e.format} format, not loadable"
        lines += [
            f"{e.name}  ({loadable})",
            f"  id:            {e.model_id}",
            f"  model:         {e.architecture}",
            f"  domain:        {e.domain}",
            f"  preprocessing: {e.image_size} px, {e.resize}; mean {list(e.mean)}, std {list(e.std)}",
            f"  tokenizer:     {e.tokenizer}, context {e.context_length}",
            f"  licence:       {e.licence}",
            f"  cite:          {e.citation}",
        ]
        if e.notes:
            lines.append(f"  notes:         {e.notes}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def model_dir(path: Path) -> Path:
    """A run folder holds its model in ``model/``; a model folder is used as it is."""
    for cand in (path / "model", path):
        if (cand / MEDVLP_FILE).is_file() or (cand / CONFIG_FILE).is_file():
            return cand
    if (path / "config.json").is_file() and "CLIP" in (path / "config.json").read_text()[:4000]:
        raise ModelError(
            f"{path} holds a Hugging Face transformers CLIP model (config.json), not open_clip format "
            f"({CONFIG_FILE} + weights); medvlp cannot load it: use transformers' CLIPModel, or a zoo model "
            "in open_clip format (medvlp models --zoo)"
        )
    raise ModelError(
        f"{path} holds no model: expected {MEDVLP_FILE} or {CONFIG_FILE} in it or in {path / 'model'} "
        "(train one with 'medvlp pretrain', or pass a registered name such as 'tiny')"
    )


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    """Weights of a hub folder: safetensors first, else a ``.bin`` through ``torch.load(weights_only=True)``."""
    st, binf = d / WEIGHT_FILES[0], d / WEIGHT_FILES[1]
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if binf.is_file():
        try:
            sd = torch.load(str(binf), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means: not a plain tensor checkpoint
            raise ModelError(f"{binf}: not a plain tensor checkpoint ({type(e).__name__}); refusing to unpickle "
                             "it. Convert it to safetensors") from e
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    raise ModelError(f"{d}: no weights ({' or '.join(WEIGHT_FILES)})")


@cache
def _timm_token_class() -> type:
    """A ``TimmModel`` subclass returning ``(pooled, patch tokens)``: same weights and state-dict keys."""
    from open_clip.timm_model import TimmModel

    class TimmModelWithTokens(TimmModel):
        output_tokens = True

        def forward(self, x: torch.Tensor) -> Any:
            feats = self.trunk.forward_features(x)
            pooled = self.head(self.trunk.forward_head(feats))
            n_prefix = int(getattr(self.trunk, "num_prefix_tokens", 0))
            tokens = feats[:, n_prefix:] if feats.ndim == 3 else feats.flatten(2).transpose(1, 2)
            return (pooled, tokens) if self.output_tokens else pooled

    return TimmModelWithTokens


def _timm_tokens(visual: torch.nn.Module) -> None:
    """Give an open_clip ``TimmModel`` tower (BiomedCLIP's) the patch-token output medvlp needs.

    open_clip's timm tower returns only the pooled embedding; medvlp's encoders unpack
    ``(pooled, tokens)``, so the instance's class is swapped for a subclass (weights untouched).
    """
    from open_clip.timm_model import TimmModel

    cls = _timm_token_class()
    if isinstance(visual, TimmModel) and not isinstance(visual, cls):
        visual.__class__ = cls


def load_open_clip_dir(d: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> MedVLP:
    """Load an open_clip hub-layout folder (``open_clip_config.json`` + weights) as a :class:`MedVLP`.

    Standard (non custom-text) CLIP checkpoints are converted to the custom-text layout; HF text towers
    use tokenizer/config files found in the folder, else their hub names.

    Raises:
        ModelError: missing or mismatched weights, or an architecture open_clip cannot build.
    """
    from open_clip.model import convert_to_custom_text_state_dict

    from medvlp.models.factory import MedVLP, Tokenizer, build_clip, spec_from_raw

    d = Path(d)
    try:
        oc = json.loads((d / CONFIG_FILE).read_text())
        cfg = copy.deepcopy(oc["model_cfg"])
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{d / CONFIG_FILE}: not an open_clip config ({type(e).__name__}: {e})") from e
    tc = cfg.setdefault("text_cfg", {})
    if tc.get("hf_model_name"):
        local = all((d / f).is_file() for f in ("config.json",))
        if local:
            tc["hf_model_name"] = str(d)
        if any((d / f).is_file() for f in HF_TEXT_FILES[1:]):
            tc["hf_tokenizer_name"] = str(d)
        tc["hf_model_pretrained"] = False  # the checkpoint holds the text weights: no second download
    raw = {**cfg, "preprocess_cfg": oc.get("preprocess_cfg", {})}
    spec = spec_from_raw(name or str(d), raw)
    sd = convert_to_custom_text_state_dict(_read_weights(d))
    bias = 0.0 if "logit_bias" in sd else None
    try:
        clip = build_clip(spec, None, bias)
    except (RuntimeError, KeyError, ValueError) as e:  # e.g. an unknown timm/custom architecture
        raise ModelError(f"{d}: open_clip cannot build this model ({type(e).__name__}: {str(e)[:200]})") from e
    missing, unexpected = clip.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"{d}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    _timm_tokens(clip.visual)
    model = MedVLP(spec, clip, Tokenizer(spec.model_cfg["text_cfg"]))
    model.meta = {"source": name or str(d)}
    return model.to(device).eval()


def _load_dir(d: Path, device: str | torch.device, name: str | None = None) -> MedVLP:
    md = model_dir(d)
    if (md / MEDVLP_FILE).is_file():
        model = load_saved(md, device=device)
        _timm_tokens(model.clip.visual)
        return model
    return load_open_clip_dir(md, device=device, name=name)


def _fetch(repo: str) -> Path:
    """Download (or find in the local cache) a hub repo's open_clip files."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"],
                                      etag_timeout=10))
    except Exception as e:  # network, auth, missing repo or offline cache miss: all end the same way for a user
        why = ("HF_HUB_OFFLINE=1 is set and it is not in the local cache" if offline
               else f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        raise ModelError(
            f"could not load 'hf-hub:{repo}' from the Hugging Face hub ({why}). Download it once with network "
            f"(unset HF_HUB_OFFLINE; `huggingface-cli download {repo}`) or copy the folder here and pass "
            "'local-dir:PATH'"
        ) from None


def load_model(source: str | Path, device: str | torch.device = "cpu") -> MedVLP:
    """Load weights from a run folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.

    Raises:
        ModelError: the folder does not exist or holds no model; a hub id cannot be fetched (offline or
            no network); the id is a zoo model in a format medvlp cannot load (PLIP).
    """
    s = str(source)
    if s.startswith("hf-hub:"):
        repo = s[len("hf-hub:"):].strip()
        if not repo or repo.count("/") != 1:
            raise ModelError(f"'{s}' is not a hub id; expected 'hf-hub:ORG/NAME' (see medvlp models --zoo)")
        entry = zoo_entry(s)
        if entry is not None and entry.format != "open_clip":
            raise ModelError(f"'{s}' ({entry.name}) is a {entry.format} checkpoint, not open_clip format, so "
                             f"medvlp cannot load it: {entry.notes}")
        return _load_dir(_fetch(repo), device, name=s)
    if s.startswith("local-dir:"):
        s = s[len("local-dir:"):]
    path = Path(s).expanduser()
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist")
    return _load_dir(path, device)


_model_dir = model_dir  # the name used before it was public
