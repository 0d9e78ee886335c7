"""The local collection engine on real collections: flower photos in class
folders, sample images with a labels file, and web captions with URLs
(Conceptual Captions' validation TSV and a LAION-style Parquet sample).

Whole-word matching is checked against a plain regular expression run over
the same captions, one word at a time.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crawl.engines.local import LocalCollection, LocalConfig
from kg.errors import InputError
from tests.conftest import shared_file

UNCAPPED = LocalConfig(max_results_per_query=None)

# Words and phrases for the comparison with regular expressions: common ones,
# rare ones, ones that occur inside longer words (cat, art, car, man, sun),
# and names of several words.
WORDS = [
    "cat", "dog", "art", "car", "man", "sun", "tree", "flower", "beach", "house",
    "bird", "horse", "city", "river", "mountain", "snow", "bridge", "church",
    "woman", "child", "boat", "train", "street", "garden", "food", "table",
    "actor", "football", "player", "dress", "wedding", "island", "lake", "rose",
    "daisy", "dandelion", "tulip", "sunflower", "eagle", "lion", "tiger",
    "fire truck", "christmas tree", "red carpet", "ice cream", "living room",
    "hot air balloon", "the beach", "fireworks", "sports team", "tabby cat",
]  # fmt: skip


def word_pattern(text: str) -> re.Pattern[str]:
    """``text`` as a whole word or phrase: not preceded or followed by a letter
    or digit, with any run of other characters between its words."""
    body = r"[\W_]+".join(re.escape(word) for word in text.split())
    return re.compile(rf"(?<![^\W_]){body}(?![^\W_])")


def positions_by_regex(folded: list[str], text: str) -> list[int]:
    """Positions of the captions that name ``text``; captions case folded."""
    pattern = word_pattern(text.casefold())
    return [i for i, caption in enumerate(folded) if pattern.search(caption)]


@pytest.fixture(scope="module")
def gcc_path() -> Path:
    return shared_file("captions/Validation_GCC-1.1.0-Validation.tsv")


@pytest.fixture(scope="module")
def gcc(gcc_path: Path) -> LocalCollection:
    return LocalCollection.open(gcc_path, UNCAPPED)


def test_class_folders_caption_their_images():
    root = shared_file("images/flowers5")
    collection = LocalCollection.open(root, UNCAPPED)
    assert len(collection) == 4317

    outcome = collection.search("Dandelion")

    dandelions = sorted((root.resolve() / "dandelion").glob("*.jpg"))
    assert [r.image_url for r in outcome.results] == [p.as_uri() for p in dandelions]
    assert len(outcome.results) == 1052
    assert {r.title for r in outcome.results} == {"dandelion"}
    assert [r.rank for r in outcome.results[:3]] == [1, 2, 3]
    assert outcome.status == "ok"
    assert outcome.url == root.resolve().as_uri()


def test_results_per_query_are_capped_in_collection_order():
    collection = LocalCollection.open(shared_file("images/flowers5"))
    assert len(collection.search("tulip").results) == 984  # under the cap of 1000
    first_ten = collection.search("dandelion", limit=10)
    assert [r.rank for r in first_ten.results] == list(range(1, 11))
    assert len(collection.search("dandelion").results) == 1000


def test_several_names_of_one_query_find_each_image_once():
    collection = LocalCollection.open(shared_file("images/flowers5"), UNCAPPED)
    queries = [("Q1", "daisy"), ("Q1", "Bellis perennis"), ("Q1", "sunflower")]

    outcome = collection.search_many(queries)["Q1"]

    urls = [r.image_url for r in outcome.results]
    assert len(urls) == len(set(urls)) == 764 + 733
    # Collection (path) order: every daisy before every sunflower.
    assert "/daisy/" in urls[763] and "/sunflower/" in urls[764]


def test_labels_file_gives_captions_labels_and_licenses():
    collection = LocalCollection.open(shared_file("images/samples"))
    assert len(collection) == 20

    found = collection.search_many(
        [("cat", "cat"), ("person", "person"), ("coin", "coin"), ("moon", "Moon")]
    )

    [chelsea] = found["cat"].results
    assert chelsea.image_url.endswith("/samples/skimage_chelsea.png")
    assert chelsea.title == "Chelsea the cat, a tabby cat"
    assert chelsea.license == "CC0 (Stefan van der Walt)"
    # "person" is only a label, never in a caption; path order.
    assert [r.image_url.rsplit("/", 1)[1] for r in found["person"].results] == [
        "matplotlib_grace_hopper.jpg",
        "skimage_astronaut.png",
        "skimage_camera.png",
    ]
    assert found["coin"].status == "empty"  # "coins" is another word
    assert found["moon"].results[0].title == "surface of the moon, low contrast"


def test_whole_words_agree_with_a_regular_expression_on_real_captions(gcc_path, gcc):
    captions = [line.split("\t")[0] for line in gcc_path.open(encoding="utf-8")]
    assert len(gcc) == len(captions) == 15833

    found = gcc.search_many([(word, word) for word in WORDS])

    folded = [caption.casefold() for caption in captions]
    for word in WORDS:
        expected = positions_by_regex(folded, word)
        got = [r.title for r in found[word].results]
        assert got == [captions[i].strip() for i in expected], word
    # The boundaries matter: plain substrings would find far more.
    assert sum("cat" in caption.casefold() for caption in captions) > 3 * len(
        found["cat"].results
    )
    assert len(found["fire truck"].results) >= 3


def test_a_caption_that_names_several_queries_answers_each(gcc):
    found = gcc.search_many([("fire", "fire"), ("truck", "fire truck"), ("t", "truck")])

    in_all = {r.image_url for r in found["truck"].results}
    assert in_all
    assert in_all <= {r.image_url for r in found["fire"].results}
    assert in_all <= {r.image_url for r in found["t"].results}


def test_parquet_alt_texts_with_upper_case_columns():
    path = shared_file("captions/alt-text-sample-10k.parquet")
    table = pq.read_table(path).to_pydict()
    collection = LocalCollection.open(path, UNCAPPED)

    outcome = collection.search("Fire Truck")

    folded = [text.casefold() for text in table["TEXT"]]
    expected = positions_by_regex(folded, "fire truck")
    assert len(expected) == 2
    assert [r.image_url for r in outcome.results] == [table["URL"][i] for i in expected]
    assert [r.title for r in outcome.results] == [table["TEXT"][i] for i in expected]


def test_table_paths_become_file_uris_and_headers_are_found(tmp_path):
    table = tmp_path / "pairs.tsv"
    table.write_text(
        "path\tcaption\n"
        "images/rose.jpg\ta red rose in the rain\n"
        f"{tmp_path / 'elsewhere.jpg'}\ta white rose\n"
        "\tno image for this caption\n",
        encoding="utf-8",
    )
    collection = LocalCollection.open(table)

    outcome = collection.search("rose")

    assert [r.image_url for r in outcome.results] == [
        (tmp_path / "images" / "rose.jpg").as_uri(),
        (tmp_path / "elsewhere.jpg").as_uri(),
    ]
    assert len(collection) == 2


def test_folder_and_file_names_become_captions(tmp_path):
    flower = next(shared_file("images/flowers5/rose").glob("*.jpg"))
    (tmp_path / "fire_truck").mkdir()
    shutil.copy(flower, tmp_path / "fire_truck" / "IMG_0042.jpg")
    shutil.copy(flower, tmp_path / "red_rose-03.jpg")
    shutil.copy(flower, tmp_path / "20190101_123456.jpg")  # says nothing

    collection = LocalCollection.open(tmp_path)

    assert sorted(item.caption for item in collection.items) == [
        "fire truck",
        "red rose",
    ]
    assert collection.search("fire truck").results[0].image_url.endswith("IMG_0042.jpg")
    assert collection.search("truck fire").status == "empty"


def test_inputs_that_are_no_collection_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        LocalCollection.open(tmp_path / "missing")
    with pytest.raises(InputError, match="no captioned image"):
        LocalCollection.open(tmp_path)

    table = tmp_path / "pairs.tsv"
    table.write_text("caption\timage_link\na rose\thttp://example.org/r.jpg\n")
    with pytest.raises(InputError, match="url_columns"):
        LocalCollection.open(table)
    assert (
        len(LocalCollection.open(table, LocalConfig(url_columns=("image_link",)))) == 1
    )


def test_names_too_short_are_not_searched(gcc):
    found = gcc.search_many([("a", "a"), ("dash", " - ")])
    assert found["a"].status == found["dash"].status == "empty"
    assert found["a"].results == []
