"""Optional model-based filter: how well a caption matches its image under CLIP.

Off by default. When on, every (image bytes, caption) pair gets the cosine
similarity of its image and text embeddings under a given open_clip model,
a number in [-1, 1]; pairs below ``threshold`` can then be dropped, as
LAION dropped pairs below 0.28 under OpenAI's ViT-B/32. The model is either
an open_clip name with a weights file (``checkpoint``) or a model kgclip
exported (``model: local-dir:DIR/train/model``, no checkpoint needed).

torch and open_clip are imported inside the functions, so ``curate`` stays
importable where they are not installed.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kg.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ClipFilterConfig:
    """Which model scores the pairs and where the threshold lies."""

    enabled: bool = False
    model: str = "ViT-B-32"  # open_clip name, or local-dir:FOLDER of an export
    checkpoint: str | None = None  # weights (state_dict) for `model`
    threshold: float = 0.2  # keep pairs scoring at least this (cosine similarity)
    batch_size: int = 64
    device: str = "cpu"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the setting that is wrong."""
        if not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(
                f"clip_filter.threshold={self.threshold} is not a cosine similarity; "
                "use a value in [-1, 1], e.g. 0.2"
            )
        if (
            self.enabled
            and not self.checkpoint
            and not self.model.startswith("local-dir:")
        ):
            raise ConfigError(
                f"clip_filter.model={self.model!r} has no weights: a random model's "
                "scores mean nothing. Set clip_filter.checkpoint to a weights file, "
                "or clip_filter.model=local-dir:DIR/train/model"
            )


class ClipScorer:
    """Scores (image bytes, caption) pairs with one open_clip model."""

    def __init__(
        self,
        model: Any,
        preprocess: Callable[[Any], Any],
        tokenizer: Callable[..., Any],
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def load(cls, config: ClipFilterConfig) -> ClipScorer:
        """The model ``config`` names, with its eval transform and tokenizer."""
        import open_clip

        config.validate()
        model, _, preprocess = open_clip.create_model_and_transforms(
            config.model, pretrained=config.checkpoint, device=config.device
        )
        tokenizer = open_clip.get_tokenizer(config.model)
        return cls(model, preprocess, tokenizer, config.device, config.batch_size)

    def score(self, images: Sequence[bytes], captions: Sequence[str]) -> np.ndarray:
        """Cosine similarity [N] of each image and its caption, float32 in [-1, 1].

        An image that cannot be decoded scores NaN (and is logged), so one bad
        file never stops a batch.
        """
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        scores = np.full(len(images), np.nan, dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            scores[start:stop] = self._score_batch(
                images[start:stop], captions[start:stop]
            )
        failed = int(np.isnan(scores).sum())
        if failed:
            log.warning(
                "clip_filter: %d of %d images could not be decoded", failed, len(images)
            )
        return scores

    def _score_batch(
        self, images: Sequence[bytes], captions: Sequence[str]
    ) -> np.ndarray:
        import torch

        scores = np.full(len(images), np.nan, dtype=np.float32)
        decoded = [(i, _decode(data)) for i, data in enumerate(images)]
        good = [(i, image) for i, image in decoded if image is not None]
        if not good:
            return scores
        pixels = torch.stack(
            [self.preprocess(image) for _, image in good]
        )  # [B, 3, H, W]
        tokens = self.tokenizer([captions[i] for i, _ in good])  # [B, L]
        with torch.no_grad():
            image_features = self.model.encode_image(
                pixels.to(self.device), normalize=True
            )
            text_features = self.model.encode_text(
                tokens.to(self.device), normalize=True
            )
            similarity = (image_features * text_features).sum(dim=-1)  # [B]
        scores[[i for i, _ in good]] = similarity.float().cpu().numpy()
        return scores


def _decode(data: bytes) -> Any:
    """An RGB PIL image, or None when the bytes are no image Pillow reads."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        log.debug("clip_filter: undecodable image: %s", error)
        return None


def keep(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Which pairs pass: score >= threshold; an unscored (NaN) pair does not."""
    return np.nan_to_num(scores, nan=-np.inf) >= threshold
