"""Loading trained and public models: run folders, ``local-dir:`` and ``hf-hub:`` ids."""

from __future__ import annotations

from pathlib import Path

import torch

from medvlp.errors import ModelError
from medvlp.models.factory import CONFIG_FILE, MEDVLP_FILE, MedVLP, load_saved


def _model_dir(path: Path) -> Path:
    """A run folder holds its model in ``model/``; a model folder is used as it is."""
    for cand in (path / "model", path):
        if (cand / MEDVLP_FILE).is_file() or (cand / CONFIG_FILE).is_file():
            return cand
    raise ModelError(
        f"{path} holds no model: expected {MEDVLP_FILE} or {CONFIG_FILE} in it or in {path / 'model'} "
        "(train one with 'medvlp pretrain', or pass a registered name such as 'tiny')"
    )


def load_model(source: str | Path, device: str | torch.device = "cpu") -> MedVLP:
    """Load weights from a run folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.

    Raises:
        ModelError: the folder does not exist or holds no model; a hub id cannot be fetched offline.
    """
    s = str(source)
    if s.startswith("hf-hub:"):
        repo = s[len("hf-hub:"):]
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        except Exception as e:  # network, auth or missing repo: all end the same way for a user
            raise ModelError(
                f"could not fetch '{repo}' from the Hugging Face hub ({type(e).__name__}); check the network "
                "or download it once and pass 'local-dir:PATH'"
            ) from e
        return load_saved(_model_dir(Path(local)), device=device)
    if s.startswith("local-dir:"):
        s = s[len("local-dir:"):]
    path = Path(s).expanduser()
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist")
    return load_saved(_model_dir(path), device=device)
