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

A small run could hash no key at all to val or test, leaving nothing to
evaluate. ``min_held_out`` keys go to each held-out split with a fraction
above 0 regardless: when the hash gave it fewer, the train keys with the
highest hash (the nearest to the held-out range) move over, val first. This
touches only runs of a few dozen keys (a split expects keys x fraction), and
the moves are logged.

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
        min_held_out: keys that val and test (where their fraction is above
            0) hold at least, taken from train in a small run; 0 turns it off.
    """

    mode: str = "image"
    train: float = 0.9
    val: float = 0.05
    test: float = 0.05
    seed: str = "kgclip"
    subtree_depth: int = 1
    held_out: list[str] = field(default_factory=list)
    min_held_out: int = 1

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting."""
        if self.mode not in MODES:
            raise ConfigError(
                f"curate.splits.mode={self.mode!r} is not known; use one of "
                f"{', '.join(MODES)}"
            )
        fractions = (self.train, self.val, self.test)
        if min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise ConfigError(
                "curate.splits.train/val/test must be fractions of at least 0 that "
                f"sum to 1; got {self.train}/{self.val}/{self.test}"
            )
        if self.subtree_depth < 1:
            raise ConfigError(
                f"curate.splits.subtree_depth={self.subtree_depth} must be at least 1 "
                "(1: the root's children name the subtrees)"
            )
        if self.min_held_out < 0:
            raise ConfigError(
                f"curate.splits.min_held_out={self.min_held_out} must be 0 or more"
            )
        for qid in self.held_out:
            if not (qid[:1] == "Q" and qid[1:].isdigit()):
                raise ConfigError(
                    f"{qid!r} in curate.splits.held_out is not a Wikidata item id "
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
    keys = [
        split_key(image_id, qid, lineage or [], config)
        for image_id, qid, lineage in rows
    ]
    splits = [
        "test" if held_out.intersection(lineage or [qid]) else split_of(key, config)
        for key, (_, qid, lineage) in zip(keys, rows, strict=True)
    ]
    splits = _fill_held_out(splits, keys, config)

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


def _fill_held_out(
    splits: list[str], keys: list[str], config: SplitConfig
) -> list[str]:
    """Move train keys to val and test until each holds ``min_held_out`` keys."""
    by_key: dict[str, str] = {}
    for split, key in zip(splits, keys, strict=True):
        if _SEVERITY[split] > _SEVERITY[by_key.get(key, "train")]:
            by_key[key] = split
        else:
            by_key.setdefault(key, split)
    # the train keys nearest the held-out range first
    train = sorted(
        (key for key, split in by_key.items() if split == "train"),
        key=lambda key: hash_unit(config.seed, key),
        reverse=True,
    )
    moved: dict[str, str] = {}
    for name, fraction in (("val", config.val), ("test", config.test)):
        have = sum(split == name for split in by_key.values())
        while fraction > 0 and have < config.min_held_out and len(train) > 1:
            moved[train.pop(0)] = name
            have += 1
    if not moved:
        return splits
    log.info(
        "a small run: %d keys moved from train to %s to hold out "
        "curate.splits.min_held_out=%d each",
        len(moved), "/".join(sorted(set(moved.values()))), config.min_held_out,
    )  # fmt: skip
    return [moved.get(key, split) for split, key in zip(splits, keys, strict=True)]


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
