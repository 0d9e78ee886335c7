"""Label rules and per-entity balancing on lineages harvested from real Wikidata.

The classes under "vehicle" (Q42889) and "tool" (Q39546) come from the arnold
excerpt, the genus Homo (Q171283) from the OneZoom entities; both are read by
the project's own ingest and harvest. The images are made up: which entity
found which image is what the rules decide about.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate.balance import (
    HISTOGRAM_EDGES,
    LABELS_SCHEMA,
    BalanceConfig,
    LabelConfig,
    apply_label_rule,
    balance,
)
from kg.errors import ConfigError, InputError
from kg.harvest import HarvestConfig

VEHICLE, TOOL, HOMO = "Q42889", "Q39546", "Q171283"
SAPIENS, SAPIENS_SAPIENS = "Q15978631", "Q3238275"


@pytest.fixture(scope="module")
def classes(harvest_dump) -> list[dict]:
    """434 (entity, root) rows: the classes under vehicle and under tool."""
    table = harvest_dump(
        "wikidata/arnold-subgraph-truthy.nt.gz",
        HarvestConfig(kind="classes", roots=[VEHICLE, TOOL]),
    )
    return table.select(["qid", "root", "lineage"]).to_pylist()


@pytest.fixture(scope="module")
def taxa(onezoom_taxa: pa.Table) -> list[dict]:
    """The (entity, root) rows of the taxa under Homo."""
    rows = onezoom_taxa.select(["qid", "root", "lineage"]).to_pylist()
    return [row for row in rows if row["root"] == HOMO]


def found(image_id: str, entities: list[dict]) -> list[dict]:
    return [entity | {"image_id": image_id} for entity in entities]


def deepest_under(classes: list[dict], root: str, depth: int) -> dict:
    return next(e for e in classes if e["root"] == root and len(e["lineage"]) == depth)


def labels_of(result, image_id: str) -> list[tuple[str, str, str]]:
    return [
        (row["qid"], row["root"], row["rule"])
        for row in result.labels.to_pylist()
        if row["image_id"] == image_id
    ]


# --------------------------------------------------------------------------
# Label rules


def test_most_specific_keeps_the_entity_below_its_ancestors(classes):
    by_key = {(e["qid"], e["root"]): e for e in classes}
    deep = deepest_under(classes, TOOL, 14)
    chain = [by_key[(qid, TOOL)] for qid in deep["lineage"]]  # root .. deep
    # the class with the most children, and those children
    children: dict[tuple, list[dict]] = {}
    for entity in classes:
        if len(entity["lineage"]) > 1:
            key = (entity["root"], *entity["lineage"][:-1])
            children.setdefault(key, []).append(entity)
    key, siblings = max(children.items(), key=lambda kv: (len(kv[1]), kv[0]))
    parent = key[-1]
    assert len(siblings) >= 3
    vehicle_only = deepest_under(classes, VEHICLE, 6)

    rows = found("chain", chain) + found(
        "siblings", [*siblings, by_key[(parent, key[0])]]
    )
    rows += found("apart", [deep, vehicle_only]) + found("alone", [chain[3]])
    result = apply_label_rule(rows, LabelConfig(rule="most_specific"))

    assert result.labels.schema == LABELS_SCHEMA
    assert labels_of(result, "chain") == [(deep["qid"], TOOL, "most_specific")]
    assert {q for q, _, _ in labels_of(result, "siblings")} == {
        s["qid"] for s in siblings
    }
    assert parent not in {q for q, _, _ in labels_of(result, "siblings")}
    assert sorted(labels_of(result, "apart")) == sorted(
        [
            (deep["qid"], TOOL, "most_specific"),
            (vehicle_only["qid"], VEHICLE, "most_specific"),
        ]
    )
    assert labels_of(result, "alone") == [(chain[3]["qid"], TOOL, "single")]
    found_qids = result.labels.filter(pc.equal(result.labels["image_id"], "chain"))
    assert found_qids["found_qids"][0].as_py() == sorted(e["qid"] for e in chain)


def reference_lca(entities: list[dict], root: str) -> str:
    """The deepest QID in every lineage under ``root``, by set intersection."""
    lineages = [e["lineage"] for e in entities if e["root"] == root]
    common = set.intersection(*(set(lineage) for lineage in lineages))
    return max(common, key=lambda qid: lineages[0].index(qid))


def test_lowest_common_ancestor_matches_a_set_intersection(classes):
    rng = random.Random(3)
    by_root = {r: [e for e in classes if e["root"] == r] for r in (VEHICLE, TOOL)}
    rows, expected = [], {}
    for number in range(300):
        root = (VEHICLE, TOOL)[number % 2]
        entities = rng.sample(by_root[root], rng.randint(2, 5))
        rows += found(f"img{number}", entities)
        expected[f"img{number}"] = reference_lca(entities, root)
    result = apply_label_rule(rows, LabelConfig(rule="lowest_common_ancestor"))

    got = {row["image_id"]: row for row in result.labels.to_pylist()}
    assert {i: row["qid"] for i, row in got.items()} == expected
    for row in got.values():
        assert row["lineage"][-1] == row["qid"]
        assert row["rule"] == "lowest_common_ancestor"
    assert result.counts.num_images_multi == 300
    assert result.counts.num_pairs_after == 300


def test_lowest_common_ancestor_of_real_taxa(taxa):
    by_qid = {e["qid"]: e for e in taxa}
    assert by_qid[SAPIENS_SAPIENS]["lineage"] == [HOMO, SAPIENS, SAPIENS_SAPIENS]
    rows = found("human", [by_qid[SAPIENS], by_qid[SAPIENS_SAPIENS]])
    rows += found("genus", [by_qid[HOMO], by_qid[SAPIENS_SAPIENS]])
    result = apply_label_rule(rows, LabelConfig(rule="lowest_common_ancestor"))
    assert labels_of(result, "human") == [(SAPIENS, HOMO, "lowest_common_ancestor")]
    assert labels_of(result, "genus") == [(HOMO, HOMO, "lowest_common_ancestor")]
    specific = apply_label_rule(rows, LabelConfig(rule="most_specific"))
    assert labels_of(specific, "human") == [(SAPIENS_SAPIENS, HOMO, "most_specific")]


def test_entities_without_a_common_root_follow_the_fallback(classes, taxa):
    # in this excerpt every vehicle class is a tool too: it has a row per root
    under = {
        r: {e["qid"]: e for e in classes if e["root"] == r} for r in (VEHICLE, TOOL)
    }
    both = sorted(set(under[VEHICLE]) & set(under[TOOL]))
    tool_only = under[TOOL][min(set(under[TOOL]) - set(under[VEHICLE]))]
    x, y = both[1], both[2]
    sapiens = next(e for e in taxa if e["qid"] == SAPIENS)

    rows = found("unrelated", [tool_only, sapiens])
    # an entity under both roots and one under tool only: tool decides
    rows += found("one root", [under[TOOL][x], under[VEHICLE][x], tool_only])
    # two entities under both roots: one label per root
    rows += found("two roots", [under[r][q] for r in (VEHICLE, TOOL) for q in (x, y)])

    dropped = apply_label_rule(rows, LabelConfig(rule="lowest_common_ancestor"))
    assert labels_of(dropped, "unrelated") == []
    assert dropped.counts.num_images_dropped == 1
    assert labels_of(dropped, "one root") == [
        (
            reference_lca([under[TOOL][x], tool_only], TOOL),
            TOOL,
            "lowest_common_ancestor",
        )
    ]
    assert sorted(labels_of(dropped, "two roots")) == sorted(
        (reference_lca([under[r][x], under[r][y]], r), r, "lowest_common_ancestor")
        for r in (VEHICLE, TOOL)
    )

    kept = apply_label_rule(
        rows, LabelConfig(rule="lowest_common_ancestor", no_common_ancestor="keep_all")
    )
    assert sorted(labels_of(kept, "unrelated")) == sorted(
        [
            (SAPIENS, HOMO, "no_common_ancestor:keep_all"),
            (tool_only["qid"], TOOL, "no_common_ancestor:keep_all"),
        ]
    )


def test_most_specific_matches_a_reference_on_random_sets(classes):
    rng = random.Random(5)
    rows, expected = [], {}
    for number in range(400):
        entities = rng.sample(classes, rng.randint(1, 6))
        if number % 3 == 0:  # an entity with some of its ancestors
            entity = rng.choice(classes)
            by_key = {(e["qid"], e["root"]): e for e in classes}
            entities = [by_key[(q, entity["root"])] for q in entity["lineage"]]
        image_id = f"img{number:03d}"
        rows += found(image_id, entities)
        ancestors = {q for e in entities for q in e["lineage"][:-1]}
        expected[image_id] = sorted(
            {(e["qid"], e["root"]) for e in entities if e["qid"] not in ancestors}
        )
    result = apply_label_rule(rows, LabelConfig(rule="most_specific"))
    got: dict[str, list] = {}
    for row in result.labels.to_pylist():
        got.setdefault(row["image_id"], []).append((row["qid"], row["root"]))
    assert got == expected


def test_cycles_across_roots_and_missing_lineages():
    rows = [
        {
            "image_id": "cycle",
            "qid": "Q1",
            "root": "Q10",
            "lineage": ["Q10", "Q2", "Q1"],
        },
        {
            "image_id": "cycle",
            "qid": "Q2",
            "root": "Q20",
            "lineage": ["Q20", "Q1", "Q2"],
        },
        {"image_id": "bare", "qid": "Q3", "root": "Q30", "lineage": None},
        {"image_id": "bare", "qid": "Q30", "root": "Q30", "lineage": []},
    ]
    result = apply_label_rule(rows, LabelConfig(rule="most_specific"))
    assert labels_of(result, "cycle") == [
        ("Q1", "Q10", "keep_all"),
        ("Q2", "Q20", "keep_all"),
    ]
    assert labels_of(result, "bare") == [("Q3", "Q30", "most_specific")]
    bare = [r for r in result.labels.to_pylist() if r["image_id"] == "bare"]
    assert bare[0]["lineage"] == ["Q30", "Q3"]  # root and entity, where missing
    lca = apply_label_rule(rows, LabelConfig(rule="lowest_common_ancestor"))
    assert labels_of(lca, "bare") == [("Q30", "Q30", "lowest_common_ancestor")]


def test_keep_all_and_repeated_rows(classes):
    entities = classes[:3]
    rows = found("a", entities) + found("a", entities[:1]) + found("b", entities[:1])
    result = apply_label_rule(pa.Table.from_pylist(rows), LabelConfig(rule="keep_all"))
    assert len(labels_of(result, "a")) == 3
    assert {r for _, _, r in labels_of(result, "a")} == {"keep_all"}
    assert labels_of(result, "b")[0][2] == "single"
    assert result.counts.num_pairs_before == 4


# --------------------------------------------------------------------------
# Balancing


def distinct_entities(classes: list[dict]) -> list[dict]:
    """One row per class (a class under both roots keeps its first row)."""
    return list({e["qid"]: e for e in reversed(classes)}.values())[::-1]


@pytest.fixture(scope="module")
def labelled(classes) -> pa.Table:
    """Zipf-like counts of images per class: a few classes with hundreds of
    images, most with a handful; 50 images shared by the two top classes."""
    rng = random.Random(11)
    entities = distinct_entities(classes)
    rows = []
    for rank, entity in enumerate(entities, start=1):
        for number in range(int(400 / rank) + rng.randint(0, 2)):
            rows.append({"image_id": f"{entity['qid']}-{number}", **entity})
    for number in range(50):
        rows.append({"image_id": f"{entities[0]['qid']}-{number}", **entities[1]})
    return pa.Table.from_pylist(rows)


def per_entity(table: pa.Table) -> dict[str, int]:
    counts: dict[str, set] = {}
    for row in table.select(["qid", "image_id"]).to_pylist():
        counts.setdefault(row["qid"], set()).add(row["image_id"])
    return {qid: len(images) for qid, images in counts.items()}


def test_cap_samples_large_entities_and_keeps_rare_ones_whole(labelled):
    config = BalanceConfig(max_per_entity=40, min_per_entity=3, seed=7)
    result = balance(labelled, config)
    before, after = per_entity(labelled), per_entity(result.pairs)

    assert result.pairs.schema == labelled.schema
    for qid, n in before.items():
        if n > 40:
            assert after[qid] == 40
        elif n >= 3:
            assert after[qid] == n
        else:
            assert qid not in after
    report = result.report
    assert report.num_entities_capped == sum(n > 40 for n in before.values())
    assert report.below_min == sorted(
        ((q, n) for q, n in before.items() if n < 3), key=lambda x: (x[1], x[0])
    )
    assert report.num_entities_after == len(after)
    assert report.num_pairs_after == result.pairs.num_rows
    assert sum(b.num_entities_before for b in report.histogram) == len(before)
    assert sum(b.num_entities_after for b in report.histogram) == len(after)
    assert [b.low for b in report.histogram] == list(
        HISTOGRAM_EDGES[: len(report.histogram)]
    )


def test_sampling_is_deterministic_and_follows_the_seed(labelled, classes):
    first = balance(labelled, BalanceConfig(max_per_entity=40, seed=1)).pairs
    again = balance(labelled, BalanceConfig(max_per_entity=40, seed=1)).pairs
    other = balance(labelled, BalanceConfig(max_per_entity=40, seed=2)).pairs
    assert first.equals(again)
    assert not first.equals(other)

    # one rank per image for all entities: of the images both top classes
    # found, the ones one class keeps include those the other keeps
    top, second = (e["qid"] for e in distinct_entities(classes)[:2])
    shared = {f"{top}-{n}" for n in range(50)}
    kept: dict[str, set] = {top: set(), second: set()}
    for row in first.select(["qid", "image_id"]).to_pylist():
        if row["qid"] in kept and row["image_id"] in shared:
            kept[row["qid"]].add(row["image_id"])
    assert kept[top] and kept[second]
    assert kept[top] <= kept[second] or kept[second] <= kept[top]


def test_flagging_keeps_rare_entities_marked(labelled):
    result = balance(
        labelled, BalanceConfig(max_per_entity=None, min_per_entity=5, below_min="flag")
    )
    assert result.pairs.num_rows == labelled.num_rows
    flagged = {row["qid"] for row in result.pairs.to_pylist() if row["below_min"]}
    assert flagged == {q for q, n in per_entity(labelled).items() if n < 5}
    assert result.report.num_entities_capped == 0


def test_labels_then_balance_on_real_lineages(classes):
    # every image found for a class and its parent: most_specific keeps the class
    rows = []
    by_key = {(e["qid"], e["root"]): e for e in classes}
    for entity in classes:
        if len(entity["lineage"]) < 2:
            continue
        parent = by_key[(entity["lineage"][-2], entity["root"])]
        for number in range(3):
            rows += found(
                f"{entity['qid']}-{entity['root']}-{number}", [entity, parent]
            )
    labels = apply_label_rule(rows).labels
    assert set(labels["rule"].to_pylist()) == {"most_specific"}
    result = balance(labels, BalanceConfig(max_per_entity=2, min_per_entity=1))
    assert max(per_entity(result.pairs).values()) == 2


def test_settings_and_input_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"curate\.labels\.rule"):
        apply_label_rule([], LabelConfig(rule="deepest"))
    with pytest.raises(ConfigError, match="max_per_entity"):
        balance([], BalanceConfig(max_per_entity=2, min_per_entity=5))
    with pytest.raises(ConfigError, match="below_min"):
        balance([], BalanceConfig(below_min="warn"))
    with pytest.raises(InputError, match="lineage"):
        apply_label_rule([{"image_id": "a", "qid": "Q1", "root": "Q1"}])
    with pytest.raises(InputError, match="qid"):
        balance([{"image_id": "a"}])
