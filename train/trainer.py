"""``fit``: train a CLIP model on a run's shards, resuming where it stopped.

Everything lands under DIR/train (or ``train.dir``)::

    checkpoints/last.ckpt, checkpoints/step=N.ckpt   Lightning checkpoints
    logs/version_K/metrics.csv                       one CSV per (re)start
    model/                                           the exported open_clip model
    model_configs/NAME.json                          kgclip's own architectures
    report/                                          the evaluation report
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig

from kg.errors import ConfigError
from train.config import TrainConfig, read_config, shards_dir, train_dir
from train.data import EpochSetter, ShardDataModule, split_urls
from train.evaluate import EvaluationCallback, read_ranks
from train.export import export_model
from train.models import ClipParts, create
from train.module import ClipModule

log = logging.getLogger(__name__)


class _StartStep(L.Callback):
    """Remembers the step training started from (after a resume, not 0)."""

    def __init__(self) -> None:
        self.step: int | None = None  # None: training did not start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step


def fit(cfg: DictConfig | dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train on DIR/shards per the ``train`` section ``cfg``; return counts.

    Resumes from DIR/train/checkpoints/last.ckpt when it exists (and
    ``train.resume``); writes last.ckpt at the end and, on rank 0, exports
    the model to DIR/train/model. Raises ConfigError or InputError, naming
    the setting or file, before any step when the config or shards are wrong.
    """
    started = time.perf_counter()
    config = read_config(cfg)
    out = train_dir(config, run_dir)
    shards = shards_dir(config, run_dir)
    split_urls(shards, "train")  # fail now, not after the model is built
    L.seed_everything(config.seed, workers=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls outside autocast

    parts = create(config.model, out / "model_configs", config.data.augment)
    module = ClipModule(parts.model, config.model, config.optim, config.loss)
    datamodule = ShardDataModule(config.data, shards, parts, config.seed)
    start = _StartStep()
    trainer = _trainer(
        config, out, [start, *_callbacks(config, out, shards, parts, run_dir)]
    )

    # Shortcoming: a resume restores weights, optimiser, schedule and step, but
    # the loaders start their epoch afresh (a webdataset stream has no position
    # to restore), so samples of the interrupted epoch may be seen twice.
    # Harmless over many epochs; saving each loader process's shard and
    # sample count in the checkpoint would make it exact.
    checkpoint = out / "checkpoints" / "last.ckpt"
    resume = checkpoint if config.resume and checkpoint.exists() else None
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    trainer.save_checkpoint(checkpoint)  # the final step, wherever the epoch stood

    exported = out / "model"
    if config.export and trainer.is_global_zero:
        export_model(parts.model, config.model, exported, step=trainer.global_step)
    loss = trainer.callback_metrics.get("train/loss")
    return {
        "steps": trainer.global_step,
        # a run resumed at max_steps trains nothing and starts where it ends
        "start_step": trainer.global_step if start.step is None else start.step,
        "epochs": trainer.current_epoch,
        "train_samples": datamodule.num_train_samples,
        "loss": round(float(loss), 4) if loss is not None else None,
        "checkpoint": str(checkpoint),
        "model": str(exported) if config.export else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _trainer(config: TrainConfig, out: Path, callbacks: list[L.Callback]) -> L.Trainer:
    """A Lightning Trainer from ``train.trainer``, naming unknown settings."""
    try:
        return L.Trainer(
            **config.trainer,
            default_root_dir=str(out),
            callbacks=callbacks,
            logger=_loggers(config, out),
        )
    except TypeError as error:
        raise ConfigError(
            f"train.trainer: {error}; its keys are lightning.Trainer arguments"
        ) from error


def _callbacks(
    config: TrainConfig, out: Path, shards: Path, parts: ClipParts, run_dir: Path
) -> list[L.Callback]:
    """Checkpoints, the data epoch, and evaluation every N steps if asked."""
    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="{step}",
            every_n_train_steps=config.checkpoint.every_n_steps,
            monitor="step",  # keep the latest `keep` step checkpoints
            mode="max",
            save_top_k=config.checkpoint.keep,
            save_last=True,
        ),
        EpochSetter(),
    ]
    if config.evaluate.every_n_steps:
        callbacks.append(
            EvaluationCallback(config.evaluate, shards, parts, out, read_ranks(run_dir))
        )
    return callbacks


def _loggers(config: TrainConfig, out: Path) -> list[Logger]:
    """The configured logger, plus the CSV one the report reads its curves from."""
    loggers: list[Logger] = []
    if config.logger:
        try:
            loggers.append(instantiate(config.logger, save_dir=str(out)))
        except InstantiationException as error:
            raise ConfigError(
                f"train.logger ({config.logger.get('_target_')}) could not be "
                f"created: {error}; see conf/train/logger/"
            ) from error
    if not any(isinstance(logger, CSVLogger) for logger in loggers):
        loggers.append(CSVLogger(save_dir=str(out), name="logs"))
    return loggers
