"""The caption mix and the webdataset loaders, on real flower shards."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from kg.errors import ConfigError, InputError
from tests.train.conftest import small_train_config
from tests.train.fixture_shards import sample_meta
from train.captions import CaptionConfig, choose_caption
from train.config import read_config
from train.data import (
    ShardDataModule,
    count_samples,
    decode_image,
    split_urls,
)
from train.models import create

META = sample_meta("daisy", Path("daisy.jpg"), b"bytes")
WEB = {"a photo of a daisy", "daisy in bloom"}
KG = {t["text"] for t in META["kg_texts"]}


def captions(config: CaptionConfig, epoch: int = 0, n: int = 2000) -> list:
    return [
        choose_caption(META, "the default", config, 0, epoch, f"key-{i}")
        for i in range(n)
    ]


def test_mix_picks_groups_by_weight_and_only_allowed_sources():
    config = CaptionConfig(
        mix={"web": 0.25, "kg": 0.75}, kg_sources=["scientific_name", "common_name"]
    )  # common_name allows common_name:en
    chosen = captions(config)
    groups = Counter(c.group for c in chosen)
    assert set(groups) == {"web", "kg"}
    assert 0.70 < groups["kg"] / len(chosen) < 0.80  # 0.75 +- 5 binomial sd
    kg_texts = {c.text for c in chosen if c.group == "kg"}
    assert kg_texts == {"Bellis perennis", "common daisy"}
    assert {c.text for c in chosen if c.group == "web"} == WEB
    assert {c.source for c in chosen} == {"local", "scientific_name", "common_name:en"}
    only_other_language = CaptionConfig(mix={"kg": 1.0}, kg_sources=["common_name:fr"])
    # no French name: the kg group is empty, so the default caption is taken
    assert {c.group for c in captions(only_other_language, n=20)} == {"default"}


def test_choice_is_fixed_by_seed_epoch_and_key():
    config = CaptionConfig()
    assert captions(config, epoch=0) == captions(config, epoch=0)
    changed = sum(
        a != b for a, b in zip(captions(config, 0), captions(config, 1), strict=True)
    )
    assert changed > 500  # a new epoch draws anew


def test_groups_without_texts_fall_back():
    only_web = CaptionConfig(mix={"web": 1.0})
    bare = {"kg_texts": META["kg_texts"], "web_texts": []}
    # web is empty here: the default caption is taken
    assert choose_caption(bare, "default", only_web, 0, 0, "k").text == "default"
    assert choose_caption({}, None, only_web, 0, 0, "k") is None
    default = CaptionConfig(mix={"default": 1.0})
    assert {c.text for c in captions(default, n=20)} == {"the default"}


def test_bad_caption_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"captions\.mix names \['alt'\]"):
        CaptionConfig(mix={"alt": 1.0}).validate()
    with pytest.raises(ConfigError, match=r"captions\.mix"):
        CaptionConfig(mix={"web": 0.0}).validate()
    with pytest.raises(ConfigError, match=r"kg_sources names \['latin'\]"):
        CaptionConfig(kg_sources=["latin"]).validate()
    CaptionConfig(kg_sources=["common_name:en"]).validate()


def test_draft_decodes_jpegs_at_reduced_scale(flowers):
    data = next((flowers / "rose").glob("*.jpg")).read_bytes()
    full = Image.open(io.BytesIO(data)).size
    assert full == (128, 128)
    assert decode_image(data, 64).size == (64, 64)  # 1/2 scale still covers 64
    assert decode_image(data, 100).size == full  # 1/2 would not
    assert decode_image(data).mode == "RGB"


def test_shard_discovery_and_counts(flower_run, tmp_path):
    urls = split_urls(flower_run / "shards", "train")
    assert len(urls) == 7
    assert count_samples(urls) == 50
    assert count_samples(split_urls(flower_run / "shards", "val")) == 15
    with pytest.raises(InputError, match="no shards"):
        split_urls(tmp_path, "train")


@pytest.fixture(scope="module")
def datamodule(flower_run, tmp_path_factory):
    config = read_config(small_train_config("train.data.workers=2"))
    parts = create(config.model, tmp_path_factory.mktemp("configs"))
    return ShardDataModule(config.data, flower_run / "shards", parts, seed=0)


def test_train_loader_gives_fixed_epochs_of_full_batches(datamodule):
    loader = datamodule.train_dataloader()
    batches = list(loader)
    # 50 samples // 8 = 6 batches, split over 2 loader processes: 3 each
    assert len(loader) == len(batches) == 6
    for images, tokens in batches:
        assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
        assert tokens.shape == (8, 32) and tokens.dtype == torch.long
    assert datamodule.num_train_samples == 50


def test_small_data_repeats_to_fill_an_epoch_of_full_batches(flower_run, tmp_path):
    config = read_config(
        small_train_config("train.data.workers=1", "train.data.min_batches_per_epoch=9")
    )
    parts = create(config.model, tmp_path)
    module = ShardDataModule(config.data, flower_run / "shards", parts, seed=0)
    batches = list(module.train_dataloader())
    # 9 batches of 8 = 72 samples from 50: the second pass runs on in one stream
    assert len(batches) == 9
    assert all(images.shape[0] == 8 for images, _ in batches)


def test_batches_shrink_to_a_split_smaller_than_one_batch(flower_run, tmp_path):
    config = read_config(
        small_train_config("train.data.workers=1", "train.data.batch_size=64")
    )
    parts = create(config.model, tmp_path)
    module = ShardDataModule(config.data, flower_run / "shards", parts, seed=0)
    images, tokens = next(iter(module.train_dataloader()))
    assert images.shape[0] == tokens.shape[0] == 50  # all 50 train samples, not 64


def test_epochs_shuffle_differently_but_reproducibly(datamodule):
    def first_images(epoch: int) -> torch.Tensor:
        datamodule.set_epoch(epoch)
        return next(iter(datamodule.train_dataloader()))[0]

    # the random crop draws from torch's generator: reseed for a fair compare
    torch.manual_seed(0)
    a = first_images(0)
    torch.manual_seed(0)
    b = first_images(0)
    torch.manual_seed(0)
    c = first_images(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resampled_loader_runs_fixed_epochs(datamodule):
    datamodule.config.resampled = True
    try:
        batches = list(datamodule.train_dataloader())
    finally:
        datamodule.config.resampled = False
    assert len(batches) == 6


def test_val_loader_reads_every_val_sample_once(datamodule):
    datamodule.config.val_samples = None
    try:
        batches = list(datamodule.val_dataloader())
    finally:
        datamodule.config.val_samples = 16
    assert sum(len(images) for images, _ in batches) == 15
