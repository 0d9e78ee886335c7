"""Splits: deterministic by hash, stable as a run grows, held-out data kept out."""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa
import pytest

from curate.records import PAIRS_SCHEMA
from curate.splits import SplitConfig, assign_splits, split_of
from kg.errors import ConfigError


def image_id(n: int, i: int = 0) -> str:
    return hashlib.sha256(f"image {n}/{i}".encode()).hexdigest()


def make_pairs(num_entities: int, images_each: int, start: int = 0) -> pa.Table:
    """Pairs of a two-level tree: root Q1, families Q1000+f, entities Q100000+e."""
    rows = []
    for e in range(start, start + num_entities):
        qid, family = f"Q{100000 + e}", f"Q{1000 + e % 40}"
        for i in range(images_each):
            rows.append(
                {
                    "image_id": image_id(e, i),
                    "qid": qid,
                    "root": "Q1",
                    "lineage": ["Q1", family, qid],
                    "split": None,
                }
            )
    return pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)


def assignments(table: pa.Table) -> dict[tuple[str, str], str]:
    rows = table.select(["image_id", "qid", "split"]).to_pylist()
    return {(r["image_id"], r["qid"]): r["split"] for r in rows}


@pytest.mark.parametrize("mode", ["image", "entity", "subtree"])
def test_deterministic_and_stable_when_the_run_grows(mode):
    config = SplitConfig(mode=mode, seed="run-1")
    small, _ = assign_splits(make_pairs(300, 3), config)
    again, _ = assign_splits(make_pairs(300, 3), config)
    assert assignments(small) == assignments(again)

    # More entities, and more images of the entities already there.
    grown = pa.concat_tables([make_pairs(200, 3, start=300), make_pairs(300, 4)])
    bigger, _ = assign_splits(grown, config)
    before, after = assignments(small), assignments(bigger)
    assert len(after) == len(before) + 600 + 300
    assert len(bigger) == len(grown)
    assert all(after[key] == split for key, split in before.items())

    # a new seed gives a new split of the same pairs
    other, _ = assign_splits(make_pairs(300, 3), SplitConfig(mode=mode, seed="run-2"))
    assert assignments(other) != before


def test_fractions_are_respected_on_many_keys():
    config = SplitConfig(train=0.8, val=0.15, test=0.05)
    counts = Counter(split_of(f"key {n}", config) for n in range(40_000))
    assert counts["train"] / 40_000 == pytest.approx(0.8, abs=0.01)
    assert counts["val"] / 40_000 == pytest.approx(0.15, abs=0.01)
    assert counts["test"] / 40_000 == pytest.approx(0.05, abs=0.005)
    # row order of the table is kept
    table, _ = assign_splits(make_pairs(50, 2), SplitConfig())
    ids = [image_id(e, i) for e in range(50) for i in range(2)]
    assert table.column("image_id").to_pylist() == ids


def test_entity_mode_keeps_each_entity_in_one_split():
    table, drops = assign_splits(make_pairs(400, 4), SplitConfig(mode="entity"))
    splits_of: dict[str, set[str]] = {}
    for row in table.to_pylist():
        splits_of.setdefault(row["qid"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of.values())
    per_split = Counter(next(iter(s)) for s in splits_of.values())
    assert set(per_split) == {"train", "val", "test"}
    assert drops == {"shared_across_splits": 0}


def test_held_out_subtrees_never_reach_train():
    held = "Q1007"
    config = SplitConfig(mode="subtree", held_out=[held])
    table, _ = assign_splits(make_pairs(400, 2), config)
    rows = table.to_pylist()
    families: dict[str, set[str]] = {}
    for row in rows:
        families.setdefault(row["lineage"][1], set()).add(row["split"])
        if held in row["lineage"]:
            assert row["split"] == "test"
    # whole families land in one split, and not all in train
    assert all(len(splits) == 1 for splits in families.values())
    assert Counter(next(iter(s)) for s in families.values())["train"] < 40


def test_an_entity_under_two_roots_and_a_shared_image_stay_out_of_train():
    config = SplitConfig(mode="entity", held_out=["Q9"])
    shared = image_id(0)
    rows = [
        # Q50 is held out through one of its two lineages
        {"image_id": image_id(1), "qid": "Q50", "root": "Q8", "lineage": ["Q8", "Q50"]},
        {"image_id": image_id(2), "qid": "Q50", "root": "Q9", "lineage": ["Q9", "Q50"]},
        # one image shows Q50 (test) and Q60: it is kept only with Q50
        {"image_id": shared, "qid": "Q50", "root": "Q8", "lineage": ["Q8", "Q50"]},
        {"image_id": shared, "qid": "Q60", "root": "Q8", "lineage": ["Q8", "Q60"]},
    ]
    # Q60 is given a seed that puts it in train, whatever the hash does to Q50
    seed = next(
        s
        for s in map(str, range(100))
        if split_of("Q60", SplitConfig(seed=s)) == "train"
    )
    config.seed = seed
    table, drops = assign_splits(
        pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), config
    )
    got = [(r["image_id"], r["qid"], r["split"]) for r in table.to_pylist()]
    assert got == [
        (image_id(1), "Q50", "test"),
        (image_id(2), "Q50", "test"),
        (shared, "Q50", "test"),
    ]
    assert drops == {"shared_across_splits": 1}


def test_bad_split_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"splits\.mode"):
        SplitConfig(mode="random").validate()
    with pytest.raises(ConfigError, match=r"sum to 1"):
        SplitConfig(train=0.9, val=0.1, test=0.1).validate()
    with pytest.raises(ConfigError, match=r"'birds'.*held_out"):
        SplitConfig(held_out=["birds"]).validate()
    with pytest.raises(ConfigError, match=r"splits\.min_held_out=-1"):
        SplitConfig(min_held_out=-1).validate()


@pytest.mark.parametrize("mode", ["image", "entity"])
def test_a_small_run_still_holds_out_val_and_test(mode):
    pairs = make_pairs(6, 2)  # 12 images of 6 entities
    hashed, _ = assign_splits(pairs, SplitConfig(mode=mode, min_held_out=0))
    counts = Counter(hashed.column("split").to_pylist())
    assert counts["val"] + counts["test"] < 2  # the hash alone leaves one empty

    filled, _ = assign_splits(pairs, SplitConfig(mode=mode))
    splits = Counter(filled.column("split").to_pylist())
    assert splits["val"] >= 1 and splits["test"] >= 1 and splits["train"] >= 1
    # only train keys moved: what the hash held out stays where it was
    before, after = assignments(hashed), assignments(filled)
    assert all(after[key] == split for key, split in before.items() if split != "train")
    # a split with no fraction stays empty
    none, _ = assign_splits(pairs, SplitConfig(mode=mode, train=0.95, val=0.05, test=0))
    assert "test" not in none.column("split").to_pylist()
