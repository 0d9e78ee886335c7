"""Fixtures of the train tests: real flower shards and the real configs, shrunk.

Models are created with random weights only; nothing is downloaded
(HF_HUB_OFFLINE makes sure of it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import conf
from tests.conftest import shared_file
from tests.train.fixture_shards import write_entities, write_flower_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread: the tiny model gains little from more, and on a shared CI
# machine (more busy processes than cores) torch's threads wait on each other,
# making steps 5-10x slower.
torch.set_num_threads(1)

CONF_DIR = str(Path(conf.__file__).parent)

# The CPU-sized run: the tiny model, a few steps, small batches, no processes.
SMALL = [
    "train.trainer.max_steps=3",
    "train.trainer.val_check_interval=2",
    "train.trainer.log_every_n_steps=1",
    "train.trainer.enable_progress_bar=false",
    "train.trainer.enable_model_summary=false",
    "train.data.batch_size=8",
    "train.data.workers=0",
    "train.data.shuffle_buffer=16",
    "train.data.val_samples=16",
    "train.data.min_batches_per_epoch=1",
    "train.optim.warmup_steps=1",
    "train.checkpoint.every_n_steps=2",
    "train.evaluate.batch_size=32",
]


def compose_config(*overrides: str) -> DictConfig:
    """conf/config.yaml with overrides, as the command line composes it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def small_train_config(*overrides: str) -> DictConfig:
    """The ``train`` section shrunk to CPU size, with more overrides."""
    return compose_config(*SMALL, *overrides).train


@pytest.fixture(scope="session")
def flowers() -> Path:
    """flowers5: 4,317 real 128x128 photos in five class folders."""
    return shared_file("images/flowers5")


@pytest.fixture(scope="session")
def flower_run(tmp_path_factory: pytest.TempPathFactory, flowers: Path) -> Path:
    """A run directory with shards of 16 photos per class and entities.parquet.

    Splits per class: 10 train, 3 val, 3 test; 8 samples per shard.
    """
    run = tmp_path_factory.mktemp("flowers") / "run"
    write_flower_shards(flowers, run / "shards", per_class=16, samples_per_shard=8)
    write_entities(run)
    return run
