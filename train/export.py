"""The trained model as files open_clip loads by itself.

``export_model`` writes a folder::

    open_clip_pytorch_model.bin   the model's state_dict (torch.save)
    open_clip_config.json         {"model_cfg": ..., "preprocess_cfg": ...}
    NAME.json                     the architecture, for kgclip's own ones

which open_clip loads in either of two ways, without kgclip::

    open_clip.create_model_and_transforms("local-dir:FOLDER")

    open_clip.add_model_config("FOLDER/NAME.json")   # kgclip's own names only
    open_clip.create_model_and_transforms(
        NAME, pretrained="FOLDER/open_clip_pytorch_model.bin"
    )

:func:`register_exported` does the ``add_model_config`` step and returns the
name. Training checkpoints (``last.ckpt``) are Lightning's; they hold the
model under ``model.`` plus the optimiser state, and :func:`model_from_checkpoint`
reads the model out of one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch

from kg.errors import InputError
from train.config import ModelConfig
from train.models import ClipModel, ClipParts, create

log = logging.getLogger(__name__)

WEIGHTS = "open_clip_pytorch_model.bin"  # the name open_clip's local-dir: looks for
CONFIG = "open_clip_config.json"


def export_model(
    model: ClipModel, config: ModelConfig, folder: Path, step: int | None = None
) -> Path:
    """Write the model's weights and configs into ``folder``; return the weights.

    ``step`` (the training step the weights are from) is recorded beside them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip.get_model_config(config.name)
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    (folder / CONFIG).write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    if config.architecture is not None:
        (folder / f"{config.name}.json").write_text(json.dumps(model_cfg, indent=2))

    # Weights as plain fp32 tensors on the CPU, the layout open_clip expects.
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS
    partial = weights.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(weights)
    marker = {"name": config.name, "step": step}
    (folder / "model.json").write_text(json.dumps(marker) + "\n")
    log.info("exported model=%s to %s", config.name, folder)
    return weights


def register_exported(folder: Path) -> str:
    """Register an exported custom architecture with open_clip; return its name."""
    name = exported_name(folder)
    architecture = folder / f"{name}.json"
    if architecture.exists():
        open_clip.add_model_config(architecture)
    return name


def exported_name(folder: Path) -> str:
    """The open_clip name of an exported model."""
    marker = folder / "model.json"
    if not marker.exists():
        raise InputError(
            f"{folder} holds no exported model (model.json is missing); train first, "
            "or point at the folder export_model wrote"
        )
    return str(json.loads(marker.read_text())["name"])


def load_exported(folder: Path, device: str = "cpu") -> ClipParts:
    """An exported model with its transforms and tokenizer, in eval mode."""
    name = register_exported(folder)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        name, pretrained=str(folder / WEIGHTS), device=device
    )
    model.eval()
    return ClipParts(
        model, preprocess_train, preprocess_val, open_clip.get_tokenizer(name)
    )


def model_from_checkpoint(
    path: Path, config_dir: Path, device: str = "cpu"
) -> ClipParts:
    """The model of a Lightning checkpoint written by ``train.module.ClipModule``."""
    from train.module import CHECKPOINT_KEY

    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist; train first")
    checkpoint: dict[str, Any] = torch.load(
        path, map_location="cpu", weights_only=False
    )
    if CHECKPOINT_KEY not in checkpoint:
        raise InputError(
            f"{path} is not a kgclip training checkpoint (no {CHECKPOINT_KEY!r} entry)"
        )
    config = ModelConfig(**checkpoint[CHECKPOINT_KEY]["model"])
    parts = create(config, config_dir)
    state = {
        key.removeprefix("model."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("model.")
    }
    parts.model.load_state_dict(state)
    parts.model.to(device).eval()
    return parts
