"""Batches of (image, caption tokens) from the webdataset shards.

The shards live in ``SHARDS/{train,val,test}/*.tar``; each sample holds a
``.jpg``, a ``.txt`` (the default caption) and a ``.json`` with the texts
the caption is chosen from (``train/captions.py``). The train stream:

    shard urls (this node's and worker's share, or drawn with replacement)
    -> tar members grouped into samples -> shuffle buffer
    -> decode the JPEG with the model's transform, choose the caption
    -> batches, captions tokenized per batch in the loader process

Every epoch is a fixed number of batches per loader process, so all DDP
ranks take the same number of steps (a rank that ran out first would wait
for the others for ever). Without resampling each epoch reads the shards in
a new order, split by node, then by worker; with ``resampled`` each worker
draws shards with replacement, which needs no split and suits many nodes.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import multiprocessing as mp
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from kg.errors import ConfigError, InputError
from train.captions import CaptionConfig, choose_caption
from train.config import DataConfig
from train.models import ClipParts, Tokenizer, Transform

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SPLITS = ("train", "val", "test")


class SharedEpoch:
    """The current epoch, readable by loader processes started before it changed."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = mp.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self._value.value = epoch

    def get(self) -> int:
        return int(self._value.value)


def split_urls(shards: Path, split: str) -> list[str]:
    """The shard files of one split, sorted; :class:`InputError` when none."""
    folder = shards / split
    urls = sorted(str(path) for path in folder.glob("*.tar"))
    if not urls:
        raise InputError(
            f"no shards (*.tar) in {folder}; run the export stage first, or point "
            "train.data.shards at a folder holding train/ val/ test/"
        )
    return urls


def count_samples(urls: Sequence[str]) -> int:
    """Samples in the shards: from ``sizes.json`` beside them, else by reading.

    Reading lists the tar headers only (the members' bytes are skipped).
    """
    total = 0
    for url in urls:
        path = Path(url)
        sizes = path.parent / "sizes.json"
        if sizes.exists():
            known = json.loads(sizes.read_text())
            if path.name in known:
                total += int(known[path.name])
                continue
        with tarfile.open(path) as tar:
            keys = {name.split(".", 1)[0] for name in tar.getnames()}
        total += len(keys)
    return total


class ShardSource(IterableDataset):
    """Shard urls for this node and loader process: ``{"url": ...}`` dicts.

    For training, the order depends on (seed, epoch) only, so every rank
    agrees on it and takes a disjoint share, pass after pass. Resampled,
    each process draws for ever from its own generator (seed, epoch, rank,
    worker). That is what ``wds.ResampledShards`` does, except for the
    epoch: its counter lives in the loader process, which is new each
    epoch, so every epoch would draw the same shards; here the epoch comes
    from :class:`SharedEpoch`. For validation (``train=False``) every rank
    reads the whole split once: each computes the same figures, and no rank
    waits in a collective for another that ran out of val shards.
    """

    def __init__(
        self,
        urls: Sequence[str],
        seed: int,
        epoch: SharedEpoch,
        resampled: bool,
        train: bool = True,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.seed = seed
        self.epoch = epoch
        self.resampled = resampled and train
        self.train = train

    def __iter__(self) -> Iterator[dict[str, str]]:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        epoch = self.epoch.get()
        if self.resampled:
            rng = random.Random(f"{self.seed}:{epoch}:{rank}:{worker}")
            while True:
                yield {"url": rng.choice(self.urls)}
        # Training passes continue one stream, so batches run across a pass's
        # end and a small dataset still fills its batches; the epoch's batch
        # count (``with_epoch``) ends it. The first pass keeps the plain
        # (seed, epoch) order.
        # Shortcoming: a loader process whose shards hold no sample at all
        # would cycle for ever. The export writes no empty shard and
        # train_dataloader refuses an empty split, so it cannot happen with
        # kgclip's own shards; skipping a pass that yielded no sample (known
        # only downstream of this source) would guard foreign ones.
        for rep in itertools.count():
            urls = list(self.urls)
            suffix = f":{rep}" if rep else ""
            random.Random(f"{self.seed}:{epoch}{suffix}").shuffle(urls)
            share = urls[rank::world_size] if self.train else urls
            for url in share[worker::num_workers]:
                yield {"url": url}
            if not self.train:
                return


@dataclass
class SampleShuffle:
    """A shuffle buffer whose order is fixed by (seed, epoch, rank, worker).

    webdataset's own shuffle seeds from the clock; this one makes a run
    repeatable.
    """

    buffer: int
    seed: int
    epoch: SharedEpoch

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(f"{self.seed}:{self.epoch.get()}:{rank}:{worker}:shuffle")
        held: list[dict[str, Any]] = []
        for sample in samples:
            held.append(sample)
            if len(held) >= self.buffer:
                # swap a random held sample to the end and hand it out
                index = rng.randrange(len(held))
                held[index], held[-1] = held[-1], held[index]
                yield held.pop()
        rng.shuffle(held)
        yield from held


@dataclass
class SampleDecoder:
    """A raw tar sample -> (image tensor [3, H, W], caption, json)."""

    transform: Transform
    captions: CaptionConfig
    seed: int
    epoch: SharedEpoch
    draft_px: int | None  # decode JPEGs at reduced scale down to this size

    def __call__(self, sample: dict[str, Any]) -> tuple[torch.Tensor, str, dict]:
        meta = json.loads(sample["json"]) if "json" in sample else {}
        default = sample["txt"].decode("utf-8") if "txt" in sample else None
        caption = choose_caption(
            meta, default, self.captions, self.seed, self.epoch.get(), sample["__key__"]
        )
        if caption is None:
            raise InputError(f"sample {sample['__key__']} has no caption and no texts")
        image = decode_image(_image_bytes(sample), self.draft_px)
        return self.transform(image), caption.text, meta


def decode_image(data: bytes, draft_px: int | None = None) -> Image.Image:
    """RGB image from bytes; JPEGs may be decoded at 1/2, 1/4 or 1/8 scale.

    ``draft`` keeps both sides >= ``draft_px``, so a later resize to that
    size loses nothing visible while the decoder does a fraction of the work.
    """
    image = Image.open(io.BytesIO(data))
    if draft_px and image.format == "JPEG":
        image.draft("RGB", (draft_px, draft_px))
    return image.convert("RGB")


def _image_bytes(sample: dict[str, Any]) -> bytes:
    for key in IMAGE_KEYS:
        if key in sample:
            return bytes(sample[key])
    raise InputError(
        f"sample {sample['__key__']} has no image ({', '.join(IMAGE_KEYS)})"
    )


@dataclass
class TokenizeBatch:
    """Collate decoded samples: images stacked, captions tokenized at once."""

    tokenizer: Tokenizer

    def __call__(self, samples: list[tuple[torch.Tensor, str, dict]]) -> Any:
        images = torch.stack([image for image, _, _ in samples])  # [B, 3, H, W]
        tokens = self.tokenizer([caption for _, caption, _ in samples])  # [B, L]
        return images, tokens


def log_and_skip(error: Exception) -> bool:
    """webdataset handler: a bad sample or shard is logged and skipped."""
    log.warning("skipped a sample: %s: %s", type(error).__name__, error)
    return True


def pipeline(
    urls: Sequence[str],
    decoder: SampleDecoder,
    collate: Any,
    batch_size: int,
    *,
    train: bool,
    shuffle_buffer: int = 0,
    resampled: bool = False,
    max_batches: int | None = None,
) -> wds.DataPipeline:
    """The webdataset pipeline of one split, batched inside the loader process."""
    stages: list[Any] = [
        ShardSource(urls, decoder.seed, decoder.epoch, resampled, train),
        wds.tarfile_to_samples(handler=log_and_skip),
    ]
    if train and shuffle_buffer > 1:
        stages.append(SampleShuffle(shuffle_buffer, decoder.seed, decoder.epoch))
    stages += [
        wds.map(decoder, handler=log_and_skip),
        wds.batched(batch_size, collation_fn=collate, partial=not train),
    ]
    if max_batches is not None:
        stages.append(wds.slice(max_batches))
    return wds.DataPipeline(*stages)


class ShardDataModule(L.LightningDataModule):
    """Train and val loaders over the shards of one run."""

    def __init__(
        self, config: DataConfig, shards: Path, parts: ClipParts, seed: int
    ) -> None:
        super().__init__()
        config.captions.validate()
        self.config = config
        self.shards = shards
        self.parts = parts
        self.seed = seed
        self.epoch = SharedEpoch()
        self.num_train_samples = 0

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of each epoch: new shard order and captions."""
        self.epoch.set(epoch)

    def train_dataloader(self) -> DataLoader:
        urls = split_urls(self.shards, "train")
        world_size = self.trainer.world_size if self.trainer else 1
        workers = _workers(self.config, len(urls), world_size)
        self.num_train_samples = self.config.samples_per_epoch or count_samples(urls)
        if not self.num_train_samples:
            raise InputError(
                f"the train shards in {self.shards / 'train'} hold no samples; "
                "rerun the export stage or check the curate stage's counts"
            )
        batch_size = self.batch_size(world_size)

        # Equal batches per loader process and rank: see the module docstring.
        global_batch = batch_size * world_size
        num_batches = max(
            self.config.min_batches_per_epoch, self.num_train_samples // global_batch
        )
        per_worker = math.ceil(num_batches / max(1, workers))
        decoder = self._decoder(self.parts.preprocess_train, train=True)
        dataset = pipeline(
            urls,
            decoder,
            TokenizeBatch(self.parts.tokenizer),
            batch_size,
            train=True,
            shuffle_buffer=self.config.shuffle_buffer,
            resampled=self.config.resampled,
        )
        dataset = dataset.with_epoch(per_worker).with_length(
            per_worker * max(1, workers), silent=True
        )
        log.info(
            "train shards=%d samples=%d batches_per_epoch=%d workers=%d",
            len(urls), self.num_train_samples, per_worker * max(1, workers), workers,
        )  # fmt: skip
        return self._loader(dataset, workers)

    def batch_size(self, world_size: int = 1) -> int:
        """``batch_size``, or fewer when the train split holds fewer samples.

        A batch larger than the data would repeat images within itself, and
        a repeated image is its own negative in the contrastive loss.
        """
        per_rank = max(1, self.num_train_samples // world_size)
        if per_rank < self.config.batch_size:
            log.warning(
                "%d train samples per rank: batches of %d, not train.data."
                "batch_size=%d", per_rank, per_rank, self.config.batch_size,
            )  # fmt: skip
            return per_rank
        return int(self.config.batch_size)

    def val_dataloader(self) -> DataLoader:
        urls = split_urls(self.shards, "val")
        workers = min(self.config.workers, len(urls))
        max_batches = None
        if self.config.val_samples:
            # the limit holds per loader process; every rank reads the same
            batches = math.ceil(self.config.val_samples / self.config.batch_size)
            max_batches = math.ceil(batches / max(1, workers))
        dataset = pipeline(
            urls,
            self._decoder(self.parts.preprocess_val, train=False),
            TokenizeBatch(self.parts.tokenizer),
            self.config.batch_size,
            train=False,
            max_batches=max_batches,
        )
        return self._loader(dataset, workers)

    def _decoder(self, transform: Transform, train: bool) -> SampleDecoder:
        return SampleDecoder(
            transform,
            self.config.captions,
            self.seed,
            self.epoch,
            self._draft_px(train) if self.config.draft else None,
        )

    def _draft_px(self, train: bool) -> int | None:
        """The least decoded size that still gives every crop full resolution.

        A random crop of ``scale`` s of the area spans sqrt(s) of each side,
        so the image must be image_size / sqrt(s_min) wide for it.
        """
        size = getattr(self.parts.model.visual, "image_size", None)
        if size is None:
            return None
        side = max(size) if isinstance(size, tuple) else int(size)
        scale = self.config.augment.get("scale") or (0.9, 1.0)  # open_clip's default
        smallest = float(min(scale)) if train else 1.0
        return math.ceil(side / math.sqrt(max(smallest, 1e-3)))

    def _loader(self, dataset: IterableDataset, workers: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,  # batched inside the pipeline
            num_workers=workers,
            persistent_workers=False,  # new processes each epoch read SharedEpoch
            pin_memory=torch.cuda.is_available(),
        )


def _workers(config: DataConfig, num_shards: int, world_size: int) -> int:
    """Loader processes per rank; without resampling, at most one per shard."""
    if config.resampled:
        return config.workers
    if num_shards < world_size:
        raise ConfigError(
            f"train.data.resampled=false splits {num_shards} train shards over "
            f"{world_size} ranks, leaving some without data; set "
            "train.data.resampled=true or export more shards"
        )
    workers = min(config.workers, num_shards // world_size)
    if workers < config.workers:
        log.info(
            "%d train shards over %d ranks: %d loader processes per rank, not %d",
            num_shards, world_size, workers, config.workers,
        )  # fmt: skip
    return workers


class EpochSetter(L.Callback):
    """Tell the data module each new epoch before its loaders start."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, ShardDataModule):
            datamodule.set_epoch(trainer.current_epoch)
