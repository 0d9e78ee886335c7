"""Queries built from entities harvested out of real Wikidata excerpts."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from crawl.queries import (
    FILES_ENGINE,
    PAPER_EXCLUDED_TERMS,
    QUERY_TABLE_SCHEMA,
    QueriesConfig,
    build_queries,
    entity_budget,
    file_name,
    normalise,
    query_id,
)
from crawl.records import QUERIES_SCHEMA
from kg.backend import EmbeddedGraph
from kg.errors import ConfigError, InputError
from kg.harvest import HarvestConfig, harvest
from kg.ingest import IngestConfig, ingest

# Roots of the OneZoom excerpt: taxa (Homo, Canis lupus, Canis, Acinonyx,
# Mammalia) and classes (pet, person, consumer), so that dogs, humans and
# carnivores are each reached both as a taxon and as a class.
TAXON_ROOTS = ["Q171283", "Q18498", "Q149892", "Q481907", "Q7377"]
CLASS_ROOTS = ["Q39201", "Q215627", "Q220314"]
LANGUAGES = ["en", "de"]

SAPIENS, HUMAN, DOG, DOG_TAXON = "Q15978631", "Q5", "Q144", "Q26972265"


def harvested(store: Path, kind: str, roots: list[str]) -> pa.Table:
    graph = EmbeddedGraph(store)
    try:
        return harvest(
            graph, HarvestConfig(kind=kind, roots=roots, languages=LANGUAGES), None
        )
    finally:
        graph.close()


@pytest.fixture(scope="module")
def onezoom_entities(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """Taxa and classes of the OneZoom excerpt, names in English and German."""
    from tests.conftest import shared_file

    store = tmp_path_factory.mktemp("onezoom") / "kg"
    dump = shared_file("wikidata/onezoom-entities.json.bz2")
    ingest(IngestConfig(source=dump, store=store, languages=LANGUAGES))
    return pa.concat_tables(
        [
            harvested(store, "taxa", TAXON_ROOTS),
            harvested(store, "classes", CLASS_ROOTS),
        ]
    )


@pytest.fixture(scope="module")
def arnold_entities(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """The 634 classes under vehicle, building and tool (740 rows)."""
    from tests.conftest import shared_file

    store = tmp_path_factory.mktemp("arnold") / "kg"
    ingest(
        IngestConfig(
            source=shared_file("wikidata/arnold-subgraph-truthy.nt.gz"), store=store
        )
    )
    return harvested(store, "classes", ["Q42889", "Q41176", "Q39546"])


def config(**settings: Any) -> QueriesConfig:
    settings.setdefault("languages", ["en"])
    settings.setdefault("engines", ["bing", "inaturalist", FILES_ENGINE])
    return QueriesConfig(**settings)


def texts_of(queries: pa.Table, qid: str, engine: str = "bing") -> list[str]:
    """The texts one entity asked of one engine, in table order (its own
    priority order, where no other entity asked first)."""
    rows = [r for r in queries.to_pylist() if r["engine"] == engine]
    return [r["text"] for r in rows if qid in r["entities"]]


def row_of(queries: pa.Table, text: str, engine: str = "bing") -> dict[str, Any]:
    (row,) = [
        r
        for r in queries.to_pylist()
        if r["engine"] == engine and r["text"].casefold() == text.casefold()
    ]
    return row


def test_homo_sapiens_gives_its_names(onezoom_entities):
    queries = build_queries(onezoom_entities, config(languages=LANGUAGES))
    assert queries.schema == QUERY_TABLE_SCHEMA
    assert queries.schema.names[: len(QUERIES_SCHEMA)] == QUERIES_SCHEMA.names

    # label (= taxon name), common names in both languages, alias; "Homo"
    # (its genus and the root) adds nothing to "Homo sapiens", so no parent
    # (the common name "Human" shares the row of Q5's label "human")
    expected = {"Homo sapiens", "human", "Mensch", "human being"}
    assert set(texts_of(queries, SAPIENS)) == expected
    assert row_of(queries, "Mensch")["language"] == "de"
    # the class "human" (a lower QID) has the alias "Homo sapiens": one row,
    # named after the template that made it first
    homo_sapiens = row_of(queries, "Homo sapiens")
    assert homo_sapiens["entities"] == [HUMAN, SAPIENS]
    assert homo_sapiens["template"] == "{alias}"

    # iNaturalist takes the scientific name only, of taxa only
    assert texts_of(queries, SAPIENS, "inaturalist") == ["Homo sapiens"]
    assert row_of(queries, "Homo sapiens", "inaturalist")["template"] == (
        "{taxon_name}"
    )
    assert row_of(queries, "Homo sapiens", "inaturalist")["entities"] == [SAPIENS]
    assert texts_of(queries, HUMAN, "inaturalist") == []


def test_label_with_parent(onezoom_entities, arnold_entities):
    queries = build_queries(onezoom_entities, config())
    # the class Carnivora under "carnivore": the parent on its lineage
    assert "Carnivora carnivore" in texts_of(queries, "Q25306")
    # the subspecies, with its species as the configured parent rank; a label
    # that is only the scientific name gives way to the common name
    assert "Homo sapiens sapiens Human" in texts_of(
        build_queries(onezoom_entities, config(parent_ranks=["species"])), "Q3238275"
    )

    classes = build_queries(arnold_entities, config())
    assert "motor car motor vehicle" in texts_of(classes, "Q1420")
    assert row_of(classes, "motor car motor vehicle")["template"] == (
        "{label} {parent}"
    )


def test_parent_labels_from_the_harvest_or_from_the_table(onezoom_entities):
    # A table of an older harvest, without the new columns, gives the same
    # queries: parent labels are looked up in the table itself.
    newer = build_queries(onezoom_entities, config())
    older = onezoom_entities.drop_columns(
        [
            c
            for c in ("parent_labels", "attributes")
            if c in onezoom_entities.schema.names
        ]
    )
    assert build_queries(older, config()).equals(newer)

    # Where the harvest names a parent outside the table, that name is used.
    rows = older.to_pylist()
    for row in rows:
        row["parent_labels"] = ["Hominina"] if row["qid"] == "Q171283" else []
    named = build_queries(pa.Table.from_pylist(rows), config())
    assert "Homo Hominina" in texts_of(named, "Q171283")


def test_identical_queries_are_made_once(onezoom_entities):
    queries = build_queries(onezoom_entities, config())
    # "dog" is the class's label and the subspecies' alias
    dog = row_of(queries, "dog")
    assert dog["entities"] == [DOG, DOG_TAXON]
    # "human" (label of Q5) and "Human" (common name of Homo sapiens): one
    # query, spelt as the entity with the lower QID spelt it, wanting as many
    # results as the more popular entity
    human = row_of(queries, "human")
    assert human["text"] == "human" and human["entities"] == [HUMAN, SAPIENS]
    assert human["results_wanted"] == entity_budget(221, config())[1]
    assert human["priority"] == 0
    # the same file of two entities is one row too
    svg = row_of(queries, "Human.svg", FILES_ENGINE)
    assert svg["entities"] == [HUMAN, "Q171283"]


def test_budget_grows_with_popularity_and_is_capped(onezoom_entities):
    settings = config(queries_base=2, queries_per_doubling=1.0, queries_max=4)
    assert entity_budget(None, settings)[0] == 2
    assert entity_budget(1, settings)[0] == 3
    assert entity_budget(10**6, settings)[0] == 4
    assert entity_budget(10**6, settings)[1] == settings.results_max
    assert entity_budget(0, settings)[1] == settings.results_base

    queries = build_queries(onezoom_entities, settings)
    bing = [row for row in queries.to_pylist() if row["engine"] == "bing"]
    per_entity = Counter(qid for row in bing for qid in row["entities"])
    assert per_entity["Q20717272"] <= 2  # Canis familiaris, no sitelinks
    assert per_entity[DOG] == 4  # 274 sitelinks, capped
    # earlier templates win: label, then alias for the class "dog"
    expected = ["dog", "Canis familiaris", "Canis lupus familiaris", "Hund"]
    assert texts_of(queries, DOG) == expected
    single = build_queries(onezoom_entities, config(queries_max=1, queries_base=1))
    assert texts_of(single, SAPIENS) == ["Homo sapiens"]


def test_max_per_template(onezoom_entities):
    queries = build_queries(onezoom_entities, config(max_per_template=1))
    # the label, then only the first of four aliases (the parent "pet" has no
    # label in the excerpt, so "{label} {parent}" makes nothing)
    assert texts_of(queries, DOG) == ["dog", "Canis familiaris"]


def test_attribute_queries(onezoom_entities):
    rows = onezoom_entities.to_pylist()
    for row in rows:
        row["attributes"] = []
        if row["qid"] == DOG:
            row["attributes"] = [
                {"property": "P1552", "value": "Q1", "label": "loyal"},
                {"property": "P462", "value": "Q23444", "label": "white"},
                {"property": "P462", "value": "Q2", "label": None},
                {"property": "P18", "value": "Q3", "label": "not an attribute"},
            ]
    entities = pa.Table.from_pylist(rows)
    templates = {"class": ["{attribute} {label}"]}
    queries = build_queries(entities, config(templates=templates))
    # in the order of attribute_properties: colour before characteristic
    assert texts_of(queries, DOG) == ["white dog", "loyal dog"]
    only_colour = config(templates=templates, attribute_properties=["P462"])
    assert texts_of(build_queries(entities, only_colour), DOG) == ["white dog"]


def test_unknown_placeholder_names_template_and_known_ones():
    bad = config(templates={"taxon": ["{label}", "{label} {colour}"]})
    with pytest.raises(ConfigError, match=r"'\{label\} \{colour\}'.*\{common_name\}"):
        build_queries(pa.table({"qid": [], "label": [], "kind": []}), bad)
    for template in ("{label", "photo", "{label!r}", "{}"):
        with pytest.raises(ConfigError, match="template"):
            config(templates={"class": [template]}).validate()
    with pytest.raises(ConfigError, match="must be a list"):
        config(templates={"class": "{label}"}).validate()
    with pytest.raises(ConfigError, match="kinds of entity"):
        config(templates={"animal": ["{label}"]}).validate()
    with pytest.raises(ConfigError, match="unknown keys"):
        QueriesConfig.from_mapping({"engines": ["bing"], "templetes": {}})
    with pytest.raises(ConfigError, match="queries_max"):
        config(queries_base=5, queries_max=2).validate()
    with pytest.raises(InputError, match="kgclip harvest"):
        build_queries(pa.table({"qid": ["Q1"]}), config())


def test_excluded_terms_per_engine(onezoom_entities):
    queries = build_queries(onezoom_entities, config()).to_pylist()
    excluded = {row["engine"]: row["excluded_terms"] for row in queries}
    assert excluded == {
        "bing": list(PAPER_EXCLUDED_TERMS),
        "inaturalist": [],
        FILES_ENGINE: [],
    }
    own = config(engines=["bing", "google"], excluded_terms={"bing": ["drawing"]})
    rows = build_queries(onezoom_entities, own).to_pylist()
    excluded = {row["engine"]: row["excluded_terms"] for row in rows}
    assert excluded == {"bing": ["drawing"], "google": []}


def test_commons_files(onezoom_entities):
    queries = build_queries(onezoom_entities, config())
    files = texts_of(queries, SAPIENS, FILES_ENGINE)
    assert "Dagestani man and woman.jpg" in files
    assert set(files) <= {"Dagestani man and woman.jpg", "Human Body.jpg"}
    row = row_of(queries, "Dagestani man and woman.jpg", FILES_ENGINE)
    assert row["language"] is None and row["results_wanted"] == 1
    assert row["template"] == "{file}"
    url = "http://commons.wikimedia.org/wiki/Special:FilePath/cheetah%20Feb09_02.jpg"
    assert file_name(url) == "Cheetah Feb09 02.jpg"
    without = build_queries(onezoom_entities, config(engines=["bing"]))
    assert set(without.column("engine").to_pylist()) == {"bing"}


def test_reruns_and_shuffled_input_give_the_same_table(arnold_entities):
    settings = config(engines=["commons", "bing"])
    first = build_queries(arnold_entities, settings)
    assert build_queries(arnold_entities, settings).equals(first)
    order = list(range(arnold_entities.num_rows))
    random.Random(7).shuffle(order)
    shuffled = arnold_entities.take(pa.array(order))
    assert build_queries(shuffled, settings).equals(first)


def test_queries_are_normalised_and_distinct(arnold_entities, onezoom_entities):
    for entities in (arnold_entities, onezoom_entities):
        queries = build_queries(entities, config(languages=LANGUAGES)).to_pylist()
        keys = [(r["engine"], r["language"], r["text"].casefold()) for r in queries]
        assert len(keys) == len(set(keys))
        assert len({r["query_id"] for r in queries}) == len(queries)
        for row in queries:
            assert row["query_id"] == query_id(
                row["engine"], row["language"], row["text"]
            )
            if row["engine"] != FILES_ENGINE:
                assert normalise(row["text"]) == row["text"]
            assert row["entities"] and row["results_wanted"] >= 1
    # 740 rows of 634 classes; the 6 without a label ask for nothing
    arnold = build_queries(arnold_entities, config())
    asked = {qid for qids in arnold.column("entities").to_pylist() for qid in qids}
    assert len(asked) == 628


def test_normalise_and_query_id():
    assert normalise("  motor \t car\n") == "motor car"
    assert normalise("Q42") is None and normalise("q42") is None
    assert normalise("🚗") is None and normalise("1984") is None
    assert normalise("x" * 101) is None and normalise("AMH") == "AMH"
    expected = hashlib.sha1(b"bing\x1fen\x1fdog").hexdigest()[:16]
    assert query_id("bing", "en", "Dog") == expected
    assert query_id("commons_files", None, "A.jpg") != query_id(
        "commons_files", None, "a.jpg"
    )
