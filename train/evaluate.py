"""Zero-shot classification and retrieval of a trained model, and its report.

Zero-shot: every class (an entity of the evaluated split, or a folder of a
labelled image folder) gets texts from the knowledge graph (label, common
name, scientific name, taxonomic string: ``evaluate.class_sources``), each
put into every prompt template ("a photo of a {}."); the class's embedding
is the normalised mean of its prompts' embeddings, and each image is given
the class of highest cosine similarity. Reported: top-1 and top-5, accuracy
at every taxon rank of the lineages (``train/metrics.py``), how many errors
name a sibling, and retrieval recall@k both ways on the val split.

``run`` evaluates the exported model of a run and writes the report;
``EvaluationCallback`` does the same every N training steps.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig

from kg.errors import InputError
from train.captions import CaptionConfig, allowed
from train.config import EvaluateConfig, read_config, shards_dir, train_dir
from train.data import SampleDecoder, SharedEpoch, decode_image, pipeline, split_urls
from train.metrics import (
    rank_accuracy,
    retrieval_recall,
    sibling_confusion,
    topk_accuracy,
)
from train.models import ClipModel, ClipParts, Tokenizer, Transform

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
Batch = tuple[torch.Tensor, list[dict[str, Any]], list[str]]  # images, metas, captions


@dataclass
class ClassInfo:
    """One class of a zero-shot evaluation."""

    qid: str  # the entity, or the folder name of a labelled folder
    label: str
    texts: list[str]  # names put into the prompt templates
    lineage: list[str] = field(default_factory=list)  # root .. class
    rank: str | None = None
    # ranks of the lineage's members, where the sample JSON carries them
    # (an optional ``lineage_ranks`` list beside ``lineage``)
    lineage_ranks: dict[str, str] = field(default_factory=dict)


def class_texts(meta: Mapping[str, Any], sources: Sequence[str]) -> list[str]:
    """A class's names from its sample JSON: the kg texts of ``sources``, in order.

    A source names a kind of text (``common_name`` takes every language's,
    ``common_name:en`` only English ones). Falls back to the label when none
    of the sources has a text.
    """
    texts: list[str] = []
    for source in sources:
        for item in meta.get("kg_texts") or ():
            text = str(item.get("text") or "").strip()
            if (
                text
                and allowed(str(item.get("source")), [source])
                and text not in texts
            ):
                texts.append(text)
    label = str(meta.get("label") or meta.get("qid") or "").strip()
    return texts or [label]


def read_split(
    urls: Sequence[str], transform: Transform, batch_size: int, workers: int = 0
) -> Iterator[Batch]:
    """Batches of (images, sample JSONs, default captions) of some shards, in order."""
    decoder = SampleDecoder(
        transform, CaptionConfig(mix={"default": 1.0}), 0, SharedEpoch(), None
    )
    dataset = pipeline(urls, decoder, _keep_metas, batch_size, train=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=min(workers, len(urls))
    )
    yield from loader


def _keep_metas(samples: list[tuple[torch.Tensor, str, dict]]) -> Batch:
    images = torch.stack([image for image, _, _ in samples])  # [B, 3, H, W]
    return images, [meta for _, _, meta in samples], [text for _, text, _ in samples]


def read_folder(folder: Path, transform: Transform, batch_size: int) -> Iterator[Batch]:
    """Batches of a labelled folder (``CLASS/*.jpg``); the class is the folder name."""
    files = sorted(
        path
        for path in folder.glob("*/*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not files:
        raise InputError(
            f"no images in {folder}/CLASS/*.jpg; train.evaluate.folder needs one "
            "folder per class holding its images"
        )
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = torch.stack([transform(decode_image(p.read_bytes())) for p in chunk])
        metas = [_folder_meta(path.parent.name) for path in chunk]
        yield images, metas, [meta["label"] for meta in metas]


def _folder_meta(name: str) -> dict[str, Any]:
    label = name.replace("_", " ")
    return {"qid": name, "label": label, "lineage": [name], "rank": None}


@torch.no_grad()
def encode_images(
    model: ClipModel,
    batches: Iterable[Batch],
    device: torch.device,
    limit: int | None,
) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
    """Normalised image features [N, D] with the JSON and caption of each image."""
    features: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []
    captions: list[str] = []
    for images, batch_metas, batch_captions in batches:
        encoded = model.encode_image(images.to(device), normalize=True)  # [B, D]
        features.append(encoded.float().cpu().numpy())
        metas += batch_metas
        captions += batch_captions
        if limit is not None and len(metas) >= limit:
            break
    if not features:
        return np.zeros((0, 0), dtype=np.float32), [], []
    stacked = np.concatenate(features)[:limit]
    return stacked, metas[:limit], captions[:limit]


@torch.no_grad()
def encode_texts(
    model: ClipModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
) -> np.ndarray:
    """Normalised text features [N, D]."""
    parts = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        parts.append(model.encode_text(tokens, normalize=True).float().cpu().numpy())
    return np.concatenate(parts)


def class_embeddings(
    model: ClipModel,
    tokenizer: Tokenizer,
    classes: Sequence[ClassInfo],
    templates: Sequence[str],
    device: torch.device,
) -> np.ndarray:
    """One normalised embedding per class [C, D]: the mean over its prompts."""
    prompts = [
        [template.format(text) for text in info.texts for template in templates]
        for info in classes
    ]
    flat = encode_texts(
        model, tokenizer, [p for group in prompts for p in group], device
    )
    sizes = np.cumsum([0] + [len(group) for group in prompts])
    means = np.stack([flat[a:b].mean(axis=0) for a, b in itertools.pairwise(sizes)])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def classes_of(
    metas: Sequence[Mapping[str, Any]], sources: Sequence[str]
) -> list[ClassInfo]:
    """The distinct classes of some samples, in order of first appearance."""
    found: dict[str, ClassInfo] = {}
    for meta in metas:
        qid = str(meta.get("qid"))
        if qid not in found:
            found[qid] = ClassInfo(
                qid=qid,
                label=str(meta.get("label") or qid),
                texts=class_texts(meta, sources),
                lineage=list(meta.get("lineage") or [qid]),
                rank=meta.get("rank"),
                lineage_ranks=_lineage_ranks(meta),
            )
    return list(found.values())


def _lineage_ranks(meta: Mapping[str, Any]) -> dict[str, str]:
    lineage, ranks = meta.get("lineage") or [], meta.get("lineage_ranks") or []
    return {qid: rank for qid, rank in zip(lineage, ranks, strict=False) if rank}


def zero_shot(
    parts: ClipParts,
    batches: Iterable[Batch],
    config: EvaluateConfig,
    device: torch.device,
    ranks: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Zero-shot classification of labelled images: the report's main figures.

    ``ranks`` maps QIDs of the lineages to rank names (DIR/entities.parquet
    has them); the samples add their own rank and any ``lineage_ranks``.
    Ancestors of no known rank are not scored.
    """
    features, metas, _ = encode_images(parts.model, batches, device, config.max_images)
    if not metas:
        raise InputError("the zero-shot split holds no images; nothing to evaluate")
    classes = classes_of(metas, config.class_sources)
    index = {info.qid: i for i, info in enumerate(classes)}
    weights = class_embeddings(
        parts.model, parts.tokenizer, classes, config.templates, device
    )

    scores = features @ weights.T  # [N, C] cosine similarities
    targets = np.array([index[str(meta.get("qid"))] for meta in metas])
    true = [classes[i].qid for i in targets]
    predicted = [classes[i].qid for i in scores.argmax(axis=1)]
    lineages = {info.qid: info.lineage for info in classes}
    known_ranks = dict(ranks or {})
    for info in classes:
        known_ranks.update(info.lineage_ranks)
        if info.rank:
            known_ranks[info.qid] = info.rank

    siblings = sibling_confusion(true, predicted, lineages)
    return {
        "images": len(metas),
        "classes": len(classes),
        **topk_accuracy(scores, targets, (1, 5)),
        "ranks": [
            {
                "rank": s.rank,
                "accuracy": s.accuracy,
                "correct": s.correct,
                "total": s.total,
            }
            for s in rank_accuracy(true, predicted, lineages, known_ranks)
        ],
        "siblings": {
            "errors": siblings.errors,
            "sibling_errors": siblings.sibling_errors,
            "share": siblings.share,
        },
    }


def retrieval(
    parts: ClipParts,
    batches: Iterable[Batch],
    config: EvaluateConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Recall@k both ways between images and their default captions."""
    features, _, captions = encode_images(
        parts.model, batches, device, config.max_pairs
    )
    if not captions:
        return {"pairs": 0}
    text_features = encode_texts(parts.model, parts.tokenizer, captions, device)
    _, caption_ids = np.unique(np.array(captions, dtype=object), return_inverse=True)
    recall = retrieval_recall(features, text_features, caption_ids, config.ks)
    return {"pairs": len(captions), **recall}


def evaluate(
    parts: ClipParts,
    config: EvaluateConfig,
    shards: Path | None,
    device: torch.device,
    ranks: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Zero-shot on ``config.folder`` or the ``config.split`` shards, then retrieval."""
    was_training = parts.model.training
    parts.model.eval()
    try:
        if config.folder:
            batches = read_folder(
                Path(config.folder), parts.preprocess_val, config.batch_size
            )
            source = str(config.folder)
        else:
            assert shards is not None, "shards are needed unless a folder is given"
            urls = split_urls(shards, config.split)
            batches = read_split(urls, parts.preprocess_val, config.batch_size)
            source = f"shards/{config.split}"
        result: dict[str, Any] = {"source": source}
        result.update(zero_shot(parts, batches, config, device, ranks))

        if config.retrieval_split and shards is not None:
            urls = split_urls(shards, config.retrieval_split)
            pairs = read_split(urls, parts.preprocess_val, config.batch_size)
            result["retrieval"] = retrieval(parts, pairs, config, device)
        return result
    finally:
        parts.model.train(was_training)


def read_ranks(run_dir: Path) -> dict[str, str | None]:
    """QID -> rank of every harvested entity (DIR/entities.parquet), if there."""
    path = run_dir / "entities.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["qid", "rank"])
    return dict(zip(table["qid"].to_pylist(), table["rank"].to_pylist(), strict=True))


def run(cfg: DictConfig | dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Evaluate the run's exported model (or its last checkpoint); write the report.

    ``cfg`` is the ``train`` section. Returns the summary counts: images,
    classes, top1, top5 and the report's path.
    """
    from train.export import load_exported, model_from_checkpoint
    from train.report import load_history, write_report

    config = read_config(cfg)
    out = train_dir(config, run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    exported = out / "model"
    if (exported / "model.json").exists():
        parts = load_exported(exported, str(device))
    else:
        checkpoint = out / "checkpoints" / "last.ckpt"
        parts = model_from_checkpoint(checkpoint, out / "model_configs", str(device))
    parts.model.to(device)

    result = evaluate(
        parts, config.evaluate, shards_dir(config, run_dir), device, read_ranks(run_dir)
    )
    result["step"] = _exported_step(exported)
    history = [
        h for h in load_history(out / "report") if h.get("step") != result["step"]
    ]
    paths = write_report(result, [*history, result], out / "logs", out / "report")
    log.info(
        "evaluation top1=%.3f top5=%.3f report=%s",
        result["top1"],
        result["top5"],
        paths[0],
    )
    return {
        "images": result["images"],
        "classes": result["classes"],
        "top1": round(result["top1"], 4),
        "top5": round(result["top5"], 4),
        "report": str(paths[0]),
    }


def _exported_step(folder: Path) -> int | None:
    marker = folder / "model.json"
    if not marker.exists():
        return None
    step = json.loads(marker.read_text()).get("step")
    return int(step) if step is not None else None


class EvaluationCallback(L.Callback):
    """Evaluate every ``every_n_steps`` steps and at the end; rewrite the report.

    Only the rank-0 process evaluates; under DDP the others go on to the next
    step and wait for it in the gradient all-reduce, so an evaluation must
    finish within the process group's timeout (30 minutes by default).
    """

    def __init__(
        self,
        config: EvaluateConfig,
        shards: Path,
        parts: ClipParts,
        out_dir: Path,
        ranks: Mapping[str, str | None] | None = None,
    ) -> None:
        self.config = config
        self.shards = shards
        self.parts = parts
        self.out_dir = out_dir
        self.ranks = dict(ranks or {})
        self.history: list[dict[str, Any]] = []
        self.last_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from train.report import load_history

        if not self.config.folder:
            split_urls(self.shards, self.config.split)  # fail before training
        self.history = load_history(self.out_dir / "report")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        every = self.config.every_n_steps
        if every and trainer.global_step % every == 0:
            self.evaluate_now(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_step != trainer.global_step:
            self.evaluate_now(trainer, pl_module)

    def evaluate_now(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, Any] | None:
        """Evaluate the model as it is now (rank 0 only); log and report."""
        self.last_step = step = trainer.global_step
        if not trainer.is_global_zero:
            return None
        from train.report import write_report

        result = evaluate(
            self.parts, self.config, self.shards, pl_module.device, self.ranks
        )
        result["step"] = step
        self.history = [h for h in self.history if h.get("step") != step] + [result]
        metrics = {"zeroshot/top1": result["top1"], "zeroshot/top5": result["top5"]}
        for name, value in (result.get("retrieval") or {}).items():
            if name != "pairs":
                metrics[f"retrieval/{name}"] = value
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        write_report(
            result, self.history, self.out_dir / "logs", self.out_dir / "report"
        )
        log.info(
            "step=%d zero-shot top1=%.3f top5=%.3f",
            step,
            result["top1"],
            result["top5"],
        )
        return result
