"""open_clip models by name, with kgclip's own small architectures registered.

Models are always created with random weights (``pretrained=None``): kgclip
trains from scratch and never downloads weights. Architectures open_clip does
not ship (the CPU-sized ones of ``conf/train/model/``) are written as JSON
model configs into a folder and registered with ``open_clip.add_model_config``,
after which open_clip treats their names like its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from kg.errors import ConfigError
from train.config import ModelConfig

log = logging.getLogger(__name__)

Transform = Callable[[Any], torch.Tensor]
Tokenizer = Callable[..., torch.Tensor]
# open_clip's CLIP (or CustomTextCLIP): a torch Module with encode_image,
# encode_text and logit_scale, which mypy cannot see through nn.Module.
ClipModel = Any


@dataclass
class ClipParts:
    """A model with the image transforms and the tokenizer that go with it."""

    model: ClipModel
    preprocess_train: Transform  # with the training augmentation
    preprocess_val: Transform  # resize, centre crop, normalise
    tokenizer: Tokenizer


def register_architecture(
    name: str, architecture: Mapping[str, Any], folder: Path
) -> Path:
    """Write ``folder/NAME.json`` and register it with open_clip.

    Raises :class:`ConfigError` when ``name`` is one of open_clip's own
    architectures, since registering would silently change what it means. A
    name registered again (from another folder, or changed) takes the newest
    config: open_clip reads its folders in order, the last one winning.
    """
    config = json.loads(json.dumps(dict(architecture)))  # plain, JSON-safe copy
    if not all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConfigError(
            f"train.model.architecture of {name!r} needs embed_dim, vision_cfg and "
            "text_cfg (an open_clip model config, see conf/train/model/tiny.yaml)"
        )
    if _shipped(name):
        raise ConfigError(
            f"train.model.name={name!r} is already an open_clip architecture; give "
            "the custom architecture its own name, or set architecture: null"
        )

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    open_clip.add_model_config(folder)
    return path


def _shipped(name: str) -> bool:
    """Whether ``name`` is one of the architectures open_clip ships."""
    return (Path(open_clip.__file__).parent / "model_configs" / f"{name}.json").exists()


def create(
    config: ModelConfig,
    config_dir: Path,
    augment: Mapping[str, Any] | None = None,
) -> ClipParts:
    """A randomly initialised model, its transforms and its tokenizer.

    ``config_dir`` receives the JSON of a custom architecture. Raises
    :class:`ConfigError` when the name is unknown to open_clip.
    """
    if config.architecture is not None:
        register_architecture(config.name, config.architecture, config_dir)
    if open_clip.get_model_config(config.name) is None:
        raise ConfigError(
            f"train.model.name={config.name!r} is not an open_clip architecture; "
            "pick one of open_clip.list_models() (e.g. ViT-B-32) or give "
            "train.model.architecture"
        )

    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        config.name, pretrained=None, aug_cfg=dict(augment or {})
    )
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    tokenizer = open_clip.get_tokenizer(config.name)
    num_params = sum(p.numel() for p in model.parameters())
    log.info("model=%s parameters=%d", config.name, num_params)
    return ClipParts(model, preprocess_train, preprocess_val, tokenizer)
