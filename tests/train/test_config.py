"""The train configs: composed into the main config as the command line does."""

from __future__ import annotations

import open_clip
import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher

from kg.errors import ConfigError
from tests.train.conftest import compose_config
from train.config import read_config


def test_train_group_composes_into_the_main_config():
    cfg = compose_config()
    assert cfg.kg and cfg.harvest  # the other groups are still there
    config = read_config(cfg.train)
    assert config.model.name == "kgclip-tiny" and config.model.architecture
    assert config.trainer["accelerator"] == "cpu"
    assert config.logger["_target_"].endswith("CSVLogger")
    assert config.data.captions.mix == {"web": 0.5, "kg": 0.5}
    assert config.optim.betas == (0.9, 0.98)


@pytest.mark.parametrize("model", ["tiny", "vit_b_32", "vit_b_16"])
def test_every_model_names_an_architecture(model):
    config = read_config(compose_config(f"train/model={model}").train)
    assert config.model.architecture or config.model.name in open_clip.list_models()


def test_experiments_override_only_what_differs():
    base = read_config(compose_config().train)
    ddp = read_config(compose_config("train/experiment=vit_b_16_ddp").train)
    assert ddp.model.name == "ViT-B-16" and ddp.model.grad_checkpointing
    assert ddp.trainer["strategy"] == "ddp" and ddp.trainer["precision"] == "bf16-mixed"
    assert ddp.data.resampled and ddp.data.batch_size == 256
    assert ddp.optim.lr == base.optim.lr  # not named in the experiment
    assert ddp.data.captions == base.data.captions
    gpu = read_config(compose_config("train/experiment=vit_b_32").train)
    assert gpu.model.name == "ViT-B-32" and gpu.trainer["devices"] == 1


@pytest.mark.parametrize(
    ("logger", "module"),
    [("csv", None), ("tensorboard", "tensorboard"), ("wandb", "wandb")],
)
def test_every_logger_is_created_and_csv_is_always_kept(logger, module, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from train.trainer import _loggers

    if module:
        pytest.importorskip(module)
    config = read_config(compose_config(f"train/logger={logger}").train)
    loggers = _loggers(config, tmp_path)
    assert any(isinstance(found, CSVLogger) for found in loggers)
    assert len(loggers) == (1 if logger == "csv" else 2)


def test_unknown_settings_are_named():
    cfg = compose_config("+train.data.batchsize=8")
    with pytest.raises(
        ConfigError, match=r"train\.data has unknown settings \['batchsize'\]"
    ):
        read_config(cfg.train)


@pytest.mark.parametrize(
    ("launcher", "target"),
    [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher")],
)
def test_launchers_compose(launcher, target):
    from hydra import compose, initialize_config_dir

    from tests.train.conftest import CONF_DIR

    plugin = "joblib" if launcher == "local" else "submitit"
    pytest.importorskip(f"hydra_plugins.hydra_{plugin}_launcher")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"hydra/launcher={launcher}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith(target)
    assert any(p.__name__ == target for p in Plugins.instance().discover(Launcher))
