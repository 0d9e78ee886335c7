"""The train stage's settings as dataclasses, read from the ``train`` config.

``conf/train/`` holds one group per concern (model, data, optim, trainer,
logger); :func:`read_config` turns the composed ``train`` section into a
:class:`TrainConfig`, naming any key it does not know. The trainer and logger
sections stay plain dicts: they are keyword arguments of Lightning's classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from kg.errors import ConfigError
from train.captions import CaptionConfig

T = TypeVar("T")


@dataclass
class ModelConfig:
    """Which open_clip architecture to train (``conf/train/model/*.yaml``)."""

    name: str = "ViT-B-32"
    # An open_clip model config (embed_dim, vision_cfg, text_cfg) registered
    # under ``name``; None for the architectures open_clip ships.
    architecture: dict[str, Any] | None = None
    grad_checkpointing: bool = False  # recompute activations: less memory, ~30% slower
    compile: bool = False  # torch.compile the model before training


@dataclass
class DataConfig:
    """The webdataset shards and how samples become batches."""

    shards: str | None = None  # folder with train/ val/ test/; None: DIR/shards
    batch_size: int = 64  # per device
    workers: int = 2  # loader processes per device
    shuffle_buffer: int = 1000  # samples held for shuffling
    resampled: bool = False  # draw shards with replacement (many GPUs or nodes)
    samples_per_epoch: int | None = None  # None: the train shards' sample count
    # An epoch restarts the loader processes; a small dataset repeats within
    # an epoch until it has this many batches, instead of restarting each step.
    min_batches_per_epoch: int = 50
    val_samples: int | None = 2000  # at most this many val samples per validation
    draft: bool = True  # let the JPEG decoder shrink by 1/2, 1/4, 1/8 first
    augment: dict[str, Any] = field(default_factory=dict)  # open_clip AugmentationCfg
    captions: CaptionConfig = field(default_factory=CaptionConfig)


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule after a linear warmup."""

    lr: float = 5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    max_logit_scale: float = 100.0  # exp(logit_scale) is clamped to at most this


@dataclass
class LossConfig:
    """open_clip's ClipLoss settings under DDP."""

    local_loss: bool = True  # each rank scores its own rows against all columns
    gather_with_grad: bool = True  # gradients flow through the gathered features


@dataclass
class CheckpointConfig:
    """When Lightning's ModelCheckpoint writes (always with last.ckpt)."""

    every_n_steps: int = 500
    keep: int = 1  # step checkpoints kept beside last.ckpt


@dataclass
class EvaluateConfig:
    """Zero-shot classification and retrieval (``train/evaluate.py``)."""

    split: str = "test"  # shard split for zero-shot classification
    folder: str | None = None  # a labelled image folder (class/*.jpg) instead
    retrieval_split: str | None = "val"  # recall@k on this split; None: skip
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    class_sources: list[str] = field(
        default_factory=lambda: ["label", "common_name", "scientific_name"]
    )
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    max_images: int | None = 5000  # of the zero-shot split
    max_pairs: int | None = 5000  # of the retrieval split
    batch_size: int = 128
    every_n_steps: int | None = None  # run during training too; None: only after


@dataclass
class TrainConfig:
    """The whole ``train`` section."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    loss: LossConfig
    checkpoint: CheckpointConfig
    evaluate: EvaluateConfig
    trainer: dict[str, Any]  # keyword arguments of lightning.Trainer
    logger: dict[str, Any]  # a Lightning logger: _target_ and its arguments
    seed: int = 0
    threads: int | None = None  # torch's CPU threads in the trainer; None: all cores
    resume: bool = True  # continue from DIR/train/checkpoints/last.ckpt
    export: bool = True  # write DIR/train/model after training
    dir: str | None = None  # None: DIR/train


def read_config(section: DictConfig | dict[str, Any]) -> TrainConfig:
    """The ``train`` section as a :class:`TrainConfig`.

    Raises :class:`ConfigError` naming the key when a setting is unknown or
    missing.
    """
    if isinstance(section, DictConfig):
        plain = OmegaConf.to_container(section, resolve=True)
    else:
        plain = dict(section)
    assert isinstance(plain, dict)
    values = dict(plain)
    data = dict(values.pop("data", {}))
    captions = _build(CaptionConfig, data.pop("captions", {}), "train.data.captions")
    return _build(
        TrainConfig,
        {
            **values,
            "model": _build(ModelConfig, values.get("model", {}), "train.model"),
            "data": DataConfig(
                **_known(DataConfig, data, "train.data"), captions=captions
            ),
            "optim": _build(OptimConfig, values.get("optim", {}), "train.optim"),
            "loss": _build(LossConfig, values.get("loss", {}), "train.loss"),
            "checkpoint": _build(
                CheckpointConfig, values.get("checkpoint", {}), "train.checkpoint"
            ),
            "evaluate": _build(
                EvaluateConfig, values.get("evaluate", {}), "train.evaluate"
            ),
            "trainer": dict(values.get("trainer", {})),
            "logger": dict(values.get("logger") or {}),
        },
        "train",
    )


def train_dir(config: TrainConfig, run_dir: Path) -> Path:
    """Where training writes: ``train.dir``, else DIR/train."""
    return Path(config.dir) if config.dir else run_dir / "train"


def shards_dir(config: TrainConfig, run_dir: Path) -> Path:
    """Where the shards are: ``train.data.shards``, else DIR/shards."""
    return Path(config.data.shards) if config.data.shards else run_dir / "shards"


def _known(cls: type, values: dict[str, Any], key: str) -> dict[str, Any]:
    """``values`` when every key is a field of ``cls``; else a ConfigError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{key} has unknown settings {unknown}; known: {', '.join(sorted(known))}"
        )
    return values


def _build(cls: type[T], values: dict[str, Any], key: str) -> T:
    """A dataclass from a config section; lists become tuples where typed so."""
    checked = _known(cls, dict(values), key)
    tuples = {
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if str(f.type).startswith("tuple")
    }
    converted = {k: tuple(v) if k in tuples else v for k, v in checked.items()}
    try:
        return cls(**converted)
    except TypeError as error:
        raise ConfigError(f"{key}: {error}; see conf/train/") from error
