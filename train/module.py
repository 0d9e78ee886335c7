"""The LightningModule that trains an open_clip model contrastively.

Loss: open_clip's ``ClipLoss``. Under DDP each rank gathers the features of
all ranks (``gather_with_grad`` lets gradients flow back through the gather)
and, with ``local_loss``, scores only its own rows against all columns, so
the logits take B x (B * world_size) memory per rank instead of the global
square. After every step the learned temperature is clamped so that
exp(logit_scale) <= 100, as in CLIP: above that the logits saturate and
training turns unstable.

Optimiser: AdamW; no weight decay on biases, norm weights, embeddings and the
logit scale (decaying them only pulls them towards zero for no gain). The
learning rate rises linearly for ``warmup_steps`` and then follows a cosine
down to ``min_lr``, per step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from open_clip import ClipLoss

from kg.errors import ConfigError
from train.config import LossConfig, ModelConfig, OptimConfig
from train.metrics import retrieval_recall
from train.models import ClipModel

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "kgclip"  # where a checkpoint keeps the model config


class ClipModule(L.LightningModule):
    """Contrastive training of ``model`` with the settings of ``conf/train``."""

    def __init__(
        self,
        model: ClipModel,
        model_config: ModelConfig,
        optim: OptimConfig,
        loss: LossConfig,
    ) -> None:
        super().__init__()
        self.model: ClipModel = model
        self.model_config = model_config
        self.optim = optim
        self.loss_config = loss
        self.loss_fn = ClipLoss()  # replaced in setup(), when the world size is known
        self._val_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if model_config.compile:
            self.model.compile()  # in place: state_dict keys stay as they are

    def setup(self, stage: str) -> None:
        self.loss_fn = ClipLoss(
            local_loss=self.loss_config.local_loss,
            gather_with_grad=self.loss_config.gather_with_grad,
            cache_labels=True,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
        )

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text features [B, D] and exp(logit_scale)."""
        image_features, text_features, logit_scale = self.model(images, tokens)[:3]
        return image_features, text_features, logit_scale

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, tokens = batch  # [B, 3, H, W], [B, L]
        image_features, text_features, logit_scale = self(images, tokens)
        loss = self.loss_fn(image_features, text_features, logit_scale)

        size = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/logit_scale", logit_scale.detach(), batch_size=size)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            lr = scheduler.get_last_lr()[0]  # type: ignore[union-attr]
            self.log("train/lr", lr, batch_size=size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(self.optim.max_logit_scale))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, tokens = batch
        image_features, text_features, logit_scale = self(images, tokens)
        # The local batch only: validation needs no gradients through a gather.
        loss = ClipLoss()(image_features, text_features, logit_scale)
        # every rank reads all of val (train/data.py): nothing to synchronise
        self.log("val/loss", loss, batch_size=images.shape[0])
        self._val_parts.append(
            (image_features.float().cpu(), text_features.float().cpu(), tokens.cpu())
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val_parts:
            return
        image_features = torch.cat([p[0] for p in self._val_parts])  # [N, D]
        text_features = torch.cat([p[1] for p in self._val_parts])  # [N, D]
        tokens = torch.cat([p[2] for p in self._val_parts])  # [N, L]
        self._val_parts.clear()

        # Equal token rows are the same caption: one text, several images.
        # Every rank has scored all of val (up to train.data.val_samples),
        # so the recall is over the whole pool, alike on every rank.
        _, caption_ids = torch.unique(tokens, dim=0, return_inverse=True)
        recall = retrieval_recall(
            image_features.numpy(), text_features.numpy(), caption_ids.numpy()
        )
        for name, value in recall.items():
            self.log(f"val/{name}", value)

    def configure_optimizers(self) -> Any:
        decay, no_decay = parameter_groups(self.model)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.optim.lr,
            betas=self.optim.betas,
            eps=self.optim.eps,
        )
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError(
                "the number of training steps is unknown; set train.trainer.max_steps"
            )
        factor = cosine_with_warmup(
            self.optim.warmup_steps, int(total), self.optim.min_lr / self.optim.lr
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"model": dataclasses.asdict(self.model_config)}


def no_weight_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    """Biases, norm weights, the logit scale (all < 2-D) and embeddings."""
    return parameter.ndim < 2 or "embedding" in name


def parameter_groups(
    model: torch.nn.Module,
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The trainable parameters: (with weight decay, without)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            group = no_decay if no_weight_decay(name, parameter) else decay
            group.append(parameter)
    return decay, no_decay


def cosine_with_warmup(
    warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> Callable[[int], float]:
    """The learning-rate factor of each step: linear warmup, then a cosine.

    Step ``warmup_steps - 1`` reaches the full rate; the last step reaches
    ``min_ratio`` of it.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        decay_steps = max(1, total_steps - warmup_steps - 1)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
