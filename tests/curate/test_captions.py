"""Captions on real harvested entities: web texts, knowledge-graph texts, caption."""

from __future__ import annotations

import pyarrow as pa
import pytest

from crawl.records import RESULTS_SCHEMA
from curate.captions import (
    CaptionConfig,
    TaxonNode,
    caption_pairs,
    clean_web_text,
    default_caption,
    kg_texts,
    taxon_nodes,
    taxonomic_string,
    web_texts,
)
from curate.records import PAIRS_SCHEMA
from kg.errors import ConfigError
from kg.harvest import ENTITY_SCHEMA

HOMO, SAPIENS, SAPIENS_SAPIENS = "Q171283", "Q15978631", "Q3238275"
MAMMALS, CARNIVORA = "Q7377", "Q25306"


@pytest.fixture(scope="module")
def entities(onezoom_taxa: pa.Table) -> pa.Table:
    assert onezoom_taxa.schema == ENTITY_SCHEMA
    return onezoom_taxa


def by_qid(table: pa.Table) -> dict[str, dict]:
    return {row["qid"]: row for row in table.to_pylist()}


def test_kg_texts_of_homo_sapiens(entities):
    rows = by_qid(entities)
    texts = kg_texts(rows[SAPIENS], taxon_nodes(entities))
    assert texts == [
        {"source": "label", "text": "Homo sapiens"},
        {"source": "label_description", "text": "Homo sapiens, species of mammal"},
        {"source": "alias", "text": "human being"},
        {"source": "common_name:en", "text": "Human"},
        {"source": "scientific_name", "text": "Homo sapiens"},
        {"source": "taxonomic", "text": "Homo sapiens"},
    ]


def test_taxonomic_strings_of_the_real_lineages(entities):
    rows = by_qid(entities)
    nodes = taxon_nodes(entities)
    # genus Homo, species Homo sapiens, subspecies (named as the entity itself)
    assert taxonomic_string(rows[SAPIENS_SAPIENS]["lineage"], nodes) == (
        "Homo sapiens sapiens"
    )
    assert taxonomic_string(rows[HOMO]["lineage"], nodes) == "Homo"
    # the harvest's root Mammalia has no name in the excerpt: only the order
    assert rows[CARNIVORA]["lineage"] == [MAMMALS, CARNIVORA]
    assert taxonomic_string(rows[CARNIVORA]["lineage"], nodes) == "Carnivora"


def test_taxonomic_string_keeps_the_seven_ranks_above_real_homo_sapiens(entities):
    # The excerpt stops at Homo; the ranks above it are added as Wikidata has
    # them, with two intermediate ranks BioCLIP leaves out.
    above = [
        ("Q729", "Animalia", "kingdom"),
        ("Q10915", "Chordata", "phylum"),
        ("Q7377", "Mammalia", "class"),
        ("Q7380", "Primates", "order"),
        ("Q427306", "Haplorhini", "suborder"),
        ("Q635162", "Hominidae", "family"),
        ("Q1061839", "Homininae", "subfamily"),
    ]
    nodes = taxon_nodes(entities) | {q: TaxonNode(n, r) for q, n, r in above}
    lineage = [q for q, _, _ in above] + by_qid(entities)[SAPIENS]["lineage"]
    assert taxonomic_string(lineage, nodes) == (
        "Animalia Chordata Mammalia Primates Hominidae Homo sapiens"
    )


def test_taxonomic_string_without_ranks_names_every_step():
    nodes = {"Q1": TaxonNode("vehicle", None), "Q2": TaxonNode("car", None)}
    assert taxonomic_string(["Q1", "Q3", "Q2"], nodes) == "vehicle car"


def test_attribute_texts_and_missing_labels():
    entity = {
        "qid": "Q726",
        "label": "horse",
        "kind": "class",
        "attributes": [
            {"property": "P462", "value": "Q23444", "label": "white"},
            {"property": "P462", "value": "Q23445", "label": None},
            {"property": "P462", "value": "Q23444", "label": "white"},
        ],
    }
    texts = kg_texts(entity, {})
    assert texts == [
        {"source": "label", "text": "horse"},
        {"source": "attribute", "text": "white horse"},
    ]
    assert kg_texts({"qid": "Q1", "label": None, "kind": "class"}, {}) == []


@pytest.mark.parametrize(
    "junk",
    [
        None,
        "",
        "   ",
        "IMG_1234.jpg",
        "IMG_20230101_123456",
        "DSC01234.JPG",
        "PXL_20230405_101112345.jpg",
        "https://upload.wikimedia.org/wikipedia/commons/a/a1/Daisy.jpg",
        "www.example.org/photo.png",
        "OLYMPUS DIGITAL CAMERA",
        "image",
        "Untitled",
        "3f9a2c1d4b5e.jpg",
        "1234567",
        "File:IMG_0042.jpeg",
    ],
)
def test_junk_web_texts_are_dropped(junk):
    assert clean_web_text(junk, CaptionConfig()) is None


def test_web_texts_are_cleaned_ordered_and_deduplicated():
    results = [
        {"title": "  Homo   sapiens &amp; skull ", "engine": "bing", "rank": 3},
        {"title": "IMG_1234.jpg", "engine": "bing", "rank": 1},
        {"title": "File:Dagestani_man_and_woman.jpg", "engine": "commons", "rank": 2},
        {"title": "HOMO SAPIENS & SKULL", "engine": "google", "rank": 4},
        {"title": "https://example.org/x.jpg", "engine": "google", "rank": 5},
        {"title": "a portrait " * 60, "engine": "local", "rank": None},
    ]
    texts = web_texts(results, CaptionConfig(max_web_chars=40))
    assert texts == [
        {"source": "commons", "text": "Dagestani man and woman"},
        {"source": "bing", "text": "Homo sapiens & skull"},
        {"source": "local", "text": "a portrait a portrait a portrait a"},
    ]


def test_default_caption_rules(entities):
    sapiens = by_qid(entities)[SAPIENS]
    kg = kg_texts(sapiens, taxon_nodes(entities))
    web = [{"source": "bing", "text": "a man and a woman"}]
    assert default_caption(sapiens, web, kg, CaptionConfig()) == "a man and a woman"
    assert (
        default_caption(sapiens, [], kg, CaptionConfig()) == "a photo of Homo sapiens"
    )
    config = CaptionConfig(rule="template", template="a photo of a {common_name}")
    assert default_caption(sapiens, web, kg, config) == "a photo of a Human"
    # Homo has no common name: its label stands in
    homo = by_qid(entities)[HOMO]
    homo_kg = kg_texts(homo, taxon_nodes(entities))
    assert default_caption(homo, [], homo_kg, config) == "a photo of a Homo"


def test_bad_caption_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"captions\.rule"):
        CaptionConfig(rule="best").validate()
    with pytest.raises(ConfigError, match=r"captions\.template.*\['name'\]"):
        CaptionConfig(template="a photo of {name}").validate()


def test_caption_pairs_fills_the_three_columns(entities):
    url = "http://commons.wikimedia.org/wiki/Special:FilePath/Vitruvian.jpg"
    source = {
        "url": url,
        "page_url": "https://commons.wikimedia.org/wiki/File:Vitruvian.jpg",
        "license": "Public domain",
        "author": "Leonardo da Vinci",
        "engine": "commons_files",
        "query": "Vitruvian.jpg",
        "rank": 1,
    }
    results = pa.Table.from_pylist(
        [
            {
                "engine": "commons_files",
                "query": "Vitruvian.jpg",
                "rank": 1,
                "image_url": url,
                "title": "Vitruvian.jpg",
            },
            {"engine": "bing", "query": "other", "rank": 1, "image_url": url,
             "title": "not a source of the pair"},
        ],
        schema=RESULTS_SCHEMA,
    )  # fmt: skip
    pairs = pa.Table.from_pylist(
        [
            {"image_id": "ab" * 32, "qid": SAPIENS_SAPIENS, "root": HOMO,
             "kind": "taxon", "label": "Homo sapiens sapiens", "sources": [source]},
            {"image_id": "cd" * 32, "qid": SAPIENS, "root": HOMO, "kind": "taxon",
             "label": "Homo sapiens", "sources": []},
        ],
        schema=PAIRS_SCHEMA,
    )  # fmt: skip
    table = caption_pairs(pairs, entities, results, CaptionConfig())
    assert table.schema == PAIRS_SCHEMA
    first, second = table.to_pylist()
    assert first["web_texts"] == [{"source": "commons_files", "text": "Vitruvian"}]
    assert first["caption"] == "Vitruvian"
    assert {"source": "alias", "text": "anatomically modern human"} in first["kg_texts"]
    assert second["web_texts"] == []
    assert second["caption"] == "a photo of Homo sapiens"
    assert {"source": "common_name:en", "text": "Human"} in second["kg_texts"]
