"""The evaluation's arithmetic, on plain arrays: no model, no files.

Accuracy at a rank: an image whose true class has an ancestor A at rank R
(the class itself included) counts at R, and is correct there when the
predicted class has A in its lineage too, i.e. the prediction falls in the
same genus, family, ... as the truth. Lineages run root .. class, as the
harvest writes them.

Retrieval: several images may share one caption (captions made from entity
names repeat), so recall is counted per distinct caption: image -> text is a
hit when the image's caption is among its k best texts; text -> image when
any image with that caption is among the caption's k best images.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def topk_accuracy(
    scores: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Share of rows whose target is among the k best-scored classes.

    ``scores`` [N, C], ``targets`` [N] class indices. k above C counts as C.
    """
    if len(targets) == 0:
        return {f"top{k}": 0.0 for k in ks}
    target_scores = scores[np.arange(len(targets)), targets]  # [N]
    ranks = _ranks(scores, target_scores)
    return {f"top{k}": float((ranks < k).mean()) for k in ks}


def _ranks(scores: np.ndarray, own: np.ndarray) -> np.ndarray:
    """0-based rank of each row's own score among the row [N, C] -> [N].

    Ties count against it: a model that scores everything alike ranks last,
    not first.
    """
    higher = (scores > own[:, None]).sum(axis=1)
    tied = (scores == own[:, None]).sum(axis=1) - 1  # the own score ties itself
    return higher + tied


@dataclass
class RankScore:
    """Accuracy at one taxon rank."""

    rank: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def ancestors_by_rank(
    lineage: Sequence[str], ranks: Mapping[str, str | None]
) -> dict[str, str]:
    """rank -> the deepest lineage member of that rank."""
    found: dict[str, str] = {}
    for qid in lineage:
        rank = ranks.get(qid)
        if rank:
            found[rank] = qid
    return found


def rank_accuracy(
    true: Sequence[str],
    predicted: Sequence[str],
    lineages: Mapping[str, Sequence[str]],
    ranks: Mapping[str, str | None],
) -> list[RankScore]:
    """Accuracy at every rank found in the true classes' lineages.

    ``true`` and ``predicted`` are class QIDs per image; ``lineages`` maps a
    class to its QIDs root .. class; ``ranks`` a QID to its rank name. Ranks
    come out from the root down (by their mean depth in the lineages).
    """
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    depths: dict[str, list[int]] = defaultdict(list)
    for truth, guess in zip(true, predicted, strict=True):
        lineage = list(lineages.get(truth) or [truth])
        guessed = set(lineages.get(guess) or [guess])
        for rank, ancestor in ancestors_by_rank(lineage, ranks).items():
            total[rank] += 1
            correct[rank] += ancestor in guessed
            depths[rank].append(lineage.index(ancestor))

    order = sorted(total, key=lambda rank: (float(np.mean(depths[rank])), rank))
    return [RankScore(rank, correct[rank], total[rank]) for rank in order]


@dataclass
class SiblingConfusion:
    """How many errors name a sibling: a class under the true class's parent."""

    errors: int
    sibling_errors: int

    @property
    def share(self) -> float:
        return self.sibling_errors / self.errors if self.errors else 0.0


def sibling_confusion(
    true: Sequence[str],
    predicted: Sequence[str],
    lineages: Mapping[str, Sequence[str]],
) -> SiblingConfusion:
    """Errors, and those whose prediction has the true class's parent as parent."""
    errors = siblings = 0
    for truth, guess in zip(true, predicted, strict=True):
        if truth == guess:
            continue
        errors += 1
        parent = _parent(lineages.get(truth))
        siblings += parent is not None and parent == _parent(lineages.get(guess))
    return SiblingConfusion(errors, siblings)


def _parent(lineage: Sequence[str] | None) -> str | None:
    return lineage[-2] if lineage and len(lineage) >= 2 else None


def retrieval_recall(
    image_features: np.ndarray,
    text_features: np.ndarray,
    caption_ids: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k image -> text and text -> image over distinct captions.

    ``image_features`` and ``text_features`` [N, D] (row i is pair i),
    normalised; ``caption_ids`` [N]: equal ids for equal captions.
    """
    unique, first, inverse = np.unique(
        caption_ids, return_index=True, return_inverse=True
    )
    texts = text_features[first]  # [G, D], one row per distinct caption
    similarity = image_features @ texts.T  # [N, G]
    rows = np.arange(len(inverse))

    # image -> text: the rank of the image's own caption among all captions
    image_ranks = _ranks(similarity, similarity[rows, inverse])  # [N]

    # text -> image: the rank of the best image that carries the caption
    by_text = similarity.T  # [G, N]
    mine = inverse[None, :] == np.arange(len(unique))[:, None]  # [G, N]
    best_own = np.where(mine, by_text, -np.inf).max(axis=1)  # [G]
    others = np.where(mine, -np.inf, by_text)  # [G, N], the caption's own masked
    text_ranks = (others >= best_own[:, None]).sum(axis=1)  # [G], ties against

    recall = {}
    for k in ks:
        recall[f"image_to_text_R@{k}"] = float((image_ranks < k).mean())
        recall[f"text_to_image_R@{k}"] = float((text_ranks < k).mean())
    return recall
