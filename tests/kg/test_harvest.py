"""Harvest from the embedded store filled with real Wikidata excerpts."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from kg import terms
from kg.backend import EmbeddedGraph
from kg.errors import ConfigError
from kg.harvest import ENTITY_SCHEMA, HarvestConfig, build_queries, harvest
from kg.ingest import IngestConfig, ingest
from kg.store import TripleStore


@pytest.fixture(scope="module")
def arnold_store(tmp_path_factory) -> Path:
    from tests.conftest import shared_file

    dump = shared_file("wikidata/arnold-subgraph-truthy.nt.gz")
    store = tmp_path_factory.mktemp("arnold") / "kg"
    ingest(IngestConfig(source=dump, store=store))
    return store


@pytest.fixture(scope="module")
def taxa_store(tmp_path_factory) -> Path:
    from tests.conftest import shared_file

    store = tmp_path_factory.mktemp("taxa") / "kg"
    for name in ("onezoom-entities.json.bz2", "Q42-full.ttl"):
        ingest(IngestConfig(source=shared_file(f"wikidata/{name}"), store=store))
    return store


def run(store: Path, **settings) -> list[dict]:
    graph = EmbeddedGraph(store)
    try:
        table = harvest(graph, HarvestConfig(**settings), snapshot=None)
    finally:
        graph.close()
    assert table.schema == ENTITY_SCHEMA
    return table.to_pylist()


@pytest.mark.parametrize(
    ("root", "count", "label"),
    [("Q42889", 102, "vehicle"), ("Q41176", 306, "building"), ("Q39546", 332, "tool")],
)
def test_classes_under_real_roots(arnold_store, root, count, label):
    rows = run(arnold_store, kind="classes", roots=[root])
    assert len(rows) == count
    assert len({r["qid"] for r in rows}) == count
    # every class gets the English label the data holds, and only those lack one
    with TripleStore(arnold_store, read_only=True) as store:
        found = store.con.execute(
            "SELECT s, o FROM triples WHERE p = ?", [f"<{terms.RDFS_LABEL}>"]
        ).fetchall()
    labels = {
        terms.qid_of(terms.decode_term(s)): terms.decode_term(o) for s, o in found
    }
    assert {r["qid"]: r["label"] for r in rows} == {
        r["qid"]: labels.get(r["qid"]) for r in rows
    }
    assert sum(r["label"] is None for r in rows) <= 4
    by_qid = {r["qid"]: r for r in rows}
    assert by_qid[root]["label"] == label
    assert by_qid[root]["lineage"] == [root]
    for row in rows:
        lineage = row["lineage"]
        assert lineage[0] == root and lineage[-1] == row["qid"]
        # each step of the lineage is a real parent edge inside the subtree
        for parent, child in itertools.pairwise(lineage):
            assert parent in by_qid[child]["parents"]
        assert row["kind"] == "class" and row["root"] == root


def test_entity_under_two_roots_appears_once_per_root(arnold_store):
    rows = run(arnold_store, kind="classes", roots=["Q42889", "Q39546"])
    assert len(rows) == 102 + 332
    pairs = {(r["root"], r["qid"]) for r in rows}
    assert len(pairs) == len(rows)


def test_exclusions_drop_whole_subtrees(arnold_store):
    full = {r["qid"]: r for r in run(arnold_store, kind="classes", roots=["Q42889"])}
    # pick a child of the root that has children of its own
    child = next(
        q
        for q, r in full.items()
        if len(r["lineage"]) == 2 and any(q in o["parents"] for o in full.values())
    )
    subtree = {q for q, r in full.items() if child in r["lineage"]}
    kept = run(arnold_store, kind="classes", roots=["Q42889"], exclude=[child])
    kept_qids = {r["qid"] for r in kept}
    assert kept_qids.isdisjoint(subtree)
    # classes with another path to the root outside the subtree are dropped too,
    # since they are still under the excluded class
    assert kept_qids <= set(full) - subtree


def test_limit_and_instances(arnold_store):
    limited = run(arnold_store, kind="classes", roots=["Q42889"], limit=10)
    assert len(limited) == 10
    with_instances = run(arnold_store, kind="classes", roots=["Q42889"], instances=True)
    kinds = {r["kind"] for r in with_instances}
    assert kinds == {"class", "instance"}
    assert sum(r["kind"] == "class" for r in with_instances) == 102


def test_taxa_from_json_dump(taxa_store):
    rows = run(taxa_store, kind="taxa", roots=["Q171283"])
    by_qid = {r["qid"]: r for r in rows}
    assert set(by_qid) == {"Q171283", "Q15978631", "Q3238275"}
    sapiens = by_qid["Q15978631"]
    assert sapiens["label"] == "Homo sapiens"
    assert sapiens["taxon_name"] == "Homo sapiens"
    assert sapiens["rank"] == "species" and sapiens["rank_qid"] == "Q7432"
    assert sapiens["common_names"] == [{"language": "en", "name": "Human"}]
    assert sapiens["parents"] == ["Q171283"]
    assert sapiens["lineage"] == ["Q171283", "Q15978631"]
    assert sapiens["sitelinks"] == 55
    assert sapiens["aliases"] == ["human being"]
    assert sapiens["images"] and sapiens["images"][0].startswith("http://commons")
    assert by_qid["Q3238275"]["lineage"] == ["Q171283", "Q15978631", "Q3238275"]
    assert by_qid["Q171283"]["rank"] == "genus"
    assert sapiens["snapshot"] == "2024-04-08"  # stated by the Q42 Turtle export


def test_min_sitelinks(taxa_store):
    rows = run(taxa_store, kind="taxa", roots=["Q171283"], min_sitelinks=50)
    assert {r["qid"] for r in rows} == {"Q171283", "Q15978631"}


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"harvest\.roots"):
        build_queries(HarvestConfig(kind="taxa", roots=[]))
    with pytest.raises(ConfigError, match=r"'vehicle'.*Q42889"):
        build_queries(HarvestConfig(kind="classes", roots=["vehicle"]))
    with pytest.raises(ConfigError, match=r"harvest\.kind"):
        build_queries(HarvestConfig(kind="plants", roots=["Q1"]))


def test_lineage_takes_the_shortest_chain_and_ties_go_to_the_lowest_qid(tmp_path):
    edges = {  # child: parents, a small taxon tree with several parents
        "Q20": ["Q1"],
        "Q10": ["Q1"],
        "Q30": ["Q20", "Q10"],  # two parents at depth 1: Q10 wins the tie
        "Q40": ["Q30", "Q1"],  # the direct parent is the shorter chain
        "Q50": ["Q40", "Q30"],  # via Q40 (depth 1), not Q30 (depth 2)
        "Q60": ["Q60", "Q50"],  # a self-loop is ignored
        "Q15": ["Q10"],
        "Q12": ["Q20"],
        # Q15 is reached before Q12 (its parent has the lower QID), yet the
        # tie between them goes to the lower QID, Q12
        "Q99": ["Q15", "Q12"],
    }
    lines = [
        f"<{terms.WD}{child}> <{terms.WDT}P171> <{terms.WD}{parent}> .\n"
        for child, parents in edges.items()
        for parent in parents
    ]
    dump = tmp_path / "tree.nt"
    dump.write_text("".join(lines))
    ingest(IngestConfig(source=dump, store=tmp_path / "kg"))
    rows = run(tmp_path / "kg", kind="taxa", roots=["Q1"])
    lineage = {r["qid"]: r["lineage"] for r in rows}
    assert lineage == {
        "Q1": ["Q1"],
        "Q10": ["Q1", "Q10"],
        "Q20": ["Q1", "Q20"],
        "Q30": ["Q1", "Q10", "Q30"],
        "Q40": ["Q1", "Q40"],
        "Q50": ["Q1", "Q40", "Q50"],
        "Q60": ["Q1", "Q40", "Q50", "Q60"],
        "Q15": ["Q1", "Q10", "Q15"],
        "Q12": ["Q1", "Q20", "Q12"],
        "Q99": ["Q1", "Q20", "Q12", "Q99"],
    }


def test_parent_labels_come_from_outside_the_harvest(taxa_store):
    # Homo sapiens' parent Homo is not under the root, but the store names it.
    rows = run(taxa_store, kind="taxa", roots=["Q15978631"])
    by_qid = {r["qid"]: r for r in rows}
    assert by_qid["Q15978631"]["parents"] == ["Q171283"]
    assert by_qid["Q15978631"]["parent_labels"] == ["Homo"]
    assert by_qid["Q3238275"]["parent_labels"] == ["Homo sapiens"]


def test_names_outside_the_harvest_take_one_query(taxa_store):
    # The facts run inside the store; ranks and outside parents share one
    # labels query, and harvested entities (labelled or not) are not in it.
    graph = EmbeddedGraph(taxa_store)
    asked: list[str] = []
    select = graph.select

    def recording(query: str):
        asked.append(query)
        return select(query)

    graph.select = recording  # type: ignore[method-assign]
    try:
        table = harvest(graph, HarvestConfig(kind="taxa", roots=["Q15978631"]), None)
    finally:
        graph.close()
    rows = table.to_pylist()
    (query,) = asked
    named = set(re.findall(r"wd:(Q[0-9]+)", query))
    ranks = {r["rank_qid"] for r in rows if r["rank_qid"]}
    assert ranks and ranks <= named
    assert "Q171283" in named  # Homo, the parent outside the harvest
    assert not ({r["qid"] for r in rows} - ranks) & named


def test_attributes_of_human_from_the_json_dump(taxa_store):
    rows = run(taxa_store, kind="classes", roots=["Q5"])
    (human,) = rows
    facts = {(a["property"], a["value"]) for a in human["attributes"]}
    # Q5's has-part (P527) and has-characteristic (P1552) claims in the dump
    assert ("P527", "Q23852") in facts
    assert {v for p, v in facts if p == "P1552"} == {
        "Q202444", "Q3577052", "Q48277", "Q101352", "Q238372", "Q1314553",
        "Q641118",
    }  # fmt: skip
    # the excerpt holds no labels for these values, so none are invented
    assert all(a["label"] is None for a in human["attributes"])
    assert (
        run(taxa_store, kind="classes", roots=["Q5"], attributes=[])[0]["attributes"]
        == []
    )
