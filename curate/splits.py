"""Splits: which pairs train the model and which are held out to judge it.

Three modes (:attr:`SplitConfig.mode`):

- ``image``: each image is assigned by itself, so an entity has images in
  every split (the usual split for zero-shot classification of known
  entities).
- ``entity``: each entity is assigned, with all its images: the test split
  holds entities the model never saw.
- ``subtree``: each subtree is assigned whole: the lineage step
  ``subtree_depth`` below the root decides (depth 1: the root's children), so
  whole families or branches of classes are held out.

Assignment is a hash, never a draw: blake2b of ``seed`` and the key (image
id, QID or subtree QID) gives a number in [0, 1), compared with the
cumulative fractions train, val, test. The same key always lands in the same
split, so a run that grows (more entities, more images) moves nothing that
was assigned before, and a rerun gives the same splits.

``held_out`` names QIDs whose whole subtrees go to test in every mode, on top
of the hash.

Two rules keep held-out data out of training:

- In ``entity`` and ``subtree`` modes an entity harvested under several roots
  (so with several lineages) takes the most held-out split among its rows
  (test before val before train).
- An image paired with entities in different splits stays only in the most
  held-out of them; its pairs in the other splits are dropped and counted as
  ``shared_across_splits``. A growing run may so drop a pair it kept before,
  but never moves one.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from kg.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MODES = ("image", "entity", "subtree")

# How held out each split is: a pair may move up this order, never down.
_SEVERITY = {name: i for i, name in enumerate(SPLITS)}


@dataclass
class SplitConfig:
    """How pairs are split.

    Attributes:
        mode: ``image``, ``entity`` or ``subtree`` (see the module docstring).
        train, val, test: fractions of keys (images, entities or subtrees,
            not pairs), summing to 1.
        seed: mixed into every hash; change it for a different split of the
            same data.
        subtree_depth: in ``subtree`` mode, the lineage step this far below
            the root names the subtree; entities higher up are their own key.
        held_out: QIDs whose subtrees (the QID and everything under it) go
            wholly to test, whatever the mode.
    """

    mode: str = "image"
    train: float = 0.9
    val: float = 0.05
    test: float = 0.05
    seed: str = "kgclip"
    subtree_depth: int = 1
    held_out: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting."""
        if self.mode not in MODES:
            raise ConfigError(
                f"curate.split.mode={self.mode!r} is not known; use one of "
                f"{', '.join(MODES)}"
            )
        fractions = (self.train, self.val, self.test)
        if min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise ConfigError(
                "curate.split.train/val/test must be fractions of at least 0 that "
                f"sum to 1; got {self.train}/{self.val}/{self.test}"
            )
        if self.subtree_depth < 1:
            raise ConfigError(
                f"curate.split.subtree_depth={self.subtree_depth} must be at least 1 "
                "(1: the root's children name the subtrees)"
            )
        for qid in self.held_out:
            if not (qid[:1] == "Q" and qid[1:].isdigit()):
                raise ConfigError(
                    f"{qid!r} in curate.split.held_out is not a Wikidata item id "
                    "such as Q5113"
                )


def hash_unit(seed: str, key: str) -> float:
    """A number in [0, 1) that depends only on ``seed`` and ``key``."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(key: str, config: SplitConfig) -> str:
    """The split a key (image id, QID or subtree QID) hashes to."""
    unit = hash_unit(config.seed, key)
    if unit < config.train:
        return "train"
    if unit < config.train + config.val:
        return "val"
    return "test"


def split_key(
    image_id: str, qid: str, lineage: Sequence[str], config: SplitConfig
) -> str:
    """What decides a pair's split in ``config.mode``."""
    if config.mode == "image":
        return image_id
    if config.mode == "entity" or not lineage:
        return qid
    return lineage[min(config.subtree_depth, len(lineage) - 1)]


def assign_splits(
    pairs: pa.Table, config: SplitConfig
) -> tuple[pa.Table, dict[str, int]]:
    """Set the ``split`` column of every pair.

    Args:
        pairs: rows with at least ``image_id``, ``qid`` and ``lineage``
            (:data:`curate.records.PAIRS_SCHEMA`).
        config: mode, fractions, seed, held-out subtrees.

    Returns:
        The pairs with ``split`` set (row order kept; pairs dropped as shared
        across splits are left out), and the drops by reason:
        ``{"shared_across_splits": n}``.

    Raises:
        ConfigError: the config is invalid.
    """
    config.validate()
    columns = pairs.select(["image_id", "qid", "lineage"]).to_pydict()
    rows = list(
        zip(columns["image_id"], columns["qid"], columns["lineage"], strict=True)
    )
    held_out = set(config.held_out)

    # The hash, then the held-out subtrees on top.
    splits = [
        "test"
        if held_out.intersection(lineage or [qid])
        else split_of(split_key(image_id, qid, lineage or [], config), config)
        for image_id, qid, lineage in rows
    ]

    # One entity, one split, when entities are what is held out.
    if config.mode != "image":
        splits = _most_held_out(splits, [qid for _, qid, _ in rows])

    # One image, one split: the less held-out pairs of a shared image go.
    image_ids = [image_id for image_id, _, _ in rows]
    kept = [
        a == b for a, b in zip(splits, _most_held_out(splits, image_ids), strict=True)
    ]
    num_dropped = kept.count(False)

    column = pa.array(splits, pa.string())
    index = pairs.schema.get_field_index("split")
    table = (
        pairs.set_column(index, "split", column)
        if index >= 0
        else pairs.append_column("split", column)
    )
    table = table.filter(pa.array(kept, pa.bool_()))
    log.info("split %d pairs: %s", table.num_rows, _count_line(table, num_dropped))
    return table, {"shared_across_splits": num_dropped}


def _most_held_out(splits: list[str], groups: list[str]) -> list[str]:
    """Each row's split raised to the most held-out split of its group."""
    worst: dict[str, str] = {}
    for split, group in zip(splits, groups, strict=True):
        if _SEVERITY[split] > _SEVERITY[worst.get(group, "train")]:
            worst[group] = split
    return [worst.get(group, "train") for group in groups]


def _count_line(table: pa.Table, num_dropped: int) -> str:
    counts = {name: 0 for name in SPLITS}
    for entry in pc.value_counts(table.column("split")).to_pylist():
        counts[entry["values"]] = entry["counts"]
    counts["shared_across_splits"] = num_dropped
    return " ".join(f"{key}={value}" for key, value in counts.items())
