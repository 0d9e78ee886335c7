"""The optional CLIP filter's plumbing, with small randomly initialised models.

A random model's scores mean nothing; these tests check shapes, ranges,
undecodable images and thresholds, and that an exported kgclip model loads.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from curate.clip_filter import ClipFilterConfig, ClipScorer, keep
from kg.errors import ConfigError
from tests.curate.conftest import TINY_CLIP_CONFIG

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def photos():
    from tests.conftest import shared_file

    folder = shared_file("images/flowers5")
    return {
        name: sorted((folder / name).glob("*.jpg"))[0].read_bytes()
        for name in ("daisy", "rose", "tulip")
    }


@pytest.fixture(scope="module")
def scorer(tiny_clip):
    name, weights = tiny_clip
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(weights)
    )
    tokenizer = open_clip.get_tokenizer(name)
    return ClipScorer(model, preprocess, tokenizer, batch_size=2)


def test_scores_one_similarity_per_pair(scorer, photos):
    images = [photos["daisy"], photos["rose"], photos["tulip"], photos["daisy"]]
    captions = ["a daisy", "a rose", "a tulip", "a daisy"]
    scores = scorer.score(images, captions)
    assert scores.shape == (4,) and scores.dtype == np.float32
    assert np.all(np.abs(scores) <= 1.0 + 1e-6)
    assert scores[0] == pytest.approx(scores[3])  # same pair, same score (batches 1, 2)

    # the same number as the model's own normalised embeddings give
    import io

    from PIL import Image

    pixels = scorer.preprocess(Image.open(io.BytesIO(photos["rose"])).convert("RGB"))
    with torch.no_grad():
        image = scorer.model.encode_image(pixels[None], normalize=True)
        text = scorer.model.encode_text(scorer.tokenizer(["a rose"]), normalize=True)
    assert scores[1] == pytest.approx(float((image * text).sum()), abs=1e-5)


def test_undecodable_images_score_nan_and_fail_the_threshold(scorer, photos):
    scores = scorer.score([b"not an image", photos["rose"]], ["a daisy", "a rose"])
    assert np.isnan(scores[0]) and np.isfinite(scores[1])
    assert keep(scores, -1.0).tolist() == [False, True]


def test_threshold_keeps_scores_at_or_above_it():
    scores = np.array([0.1, 0.25, 0.3, np.nan], dtype=np.float32)
    assert keep(scores, 0.25).tolist() == [False, True, True, False]


def test_settings_are_checked():
    ClipFilterConfig().validate()  # off by default: nothing to check
    with pytest.raises(ConfigError, match=r"clip_filter\.checkpoint"):
        ClipFilterConfig(enabled=True).validate()
    with pytest.raises(ConfigError, match=r"clip_filter\.threshold"):
        ClipFilterConfig(threshold=2.0).validate()


def test_loads_an_exported_kgclip_model(tmp_path, photos):
    from train.config import ModelConfig
    from train.export import export_model
    from train.models import create

    config = ModelConfig(name="clip-filter-export", architecture=TINY_CLIP_CONFIG)
    parts = create(config, tmp_path / "configs")
    export_model(parts.model, config, tmp_path / "model")
    loaded = ClipScorer.load(
        ClipFilterConfig(enabled=True, model=f"local-dir:{tmp_path / 'model'}")
    )
    direct = ClipScorer(parts.model, parts.preprocess_val, parts.tokenizer)
    pair = ([photos["tulip"]], ["a tulip"])
    assert loaded.score(*pair)[0] == pytest.approx(direct.score(*pair)[0], abs=1e-6)
