"""Wikimedia Commons: URLs, parsing and paging, on recorded real API answers.

The recordings (``search/commons-api/`` of the shared data) are of three kinds:
whole API answers (``response_*``, ``continuation/wmc_*``), single pages of an
answer (``image_data_*``, ``continuation/page_*``) and single ``imageinfo``
entries (``image_info_*``, ``audio_filedata_*``). Each test feeds a recording
where the engine meets that part: whole answers through a fake fetcher, pages
to :func:`page_result`, imageinfo entries placed inside a page.
"""

from __future__ import annotations

import asyncio
import bz2
import copy
import csv
import json
from typing import Any

import pytest

from crawl.engines import commons
from crawl.engines.commons import CommonsConfig
from tests.conftest import shared_file
from tests.crawl.fakes import RecordedFetcher, answer, params_of

RECORDED = "search/commons-api"


def recorded(name: str) -> Any:
    return json.loads(shared_file(f"{RECORDED}/{name}").read_text(encoding="utf-8"))


def example_page(**extmetadata: str) -> dict[str, Any]:
    """The recorded example page, with extmetadata fields replaced."""
    page = copy.deepcopy(recorded("image_data_example.json"))
    meta = page["imageinfo"][0]["extmetadata"]
    for name, value in extmetadata.items():
        meta[name] = {"source": "commons-desc-page", "value": value}
    return page


def test_search_url_asks_the_file_namespace_with_image_info():
    config = CommonsConfig(api_url="http://127.0.0.1:8080/w/api.php")
    params = commons.search_params("Danaus plexippus", config, limit=20)
    url = commons.api_url(config.api_url, params)

    assert url.startswith("http://127.0.0.1:8080/w/api.php?action=query&")
    asked = params_of(url)
    assert asked["generator"] == "search"
    assert asked["gsrnamespace"] == "6"
    assert asked["gsrsearch"] == "Danaus plexippus filetype:bitmap"
    assert asked["gsrlimit"] == "20"
    assert asked["prop"] == "imageinfo"
    assert asked["iiprop"] == "url|size|mime|extmetadata"
    assert asked["iiurlwidth"] == "640"
    assert asked["format"] == "json"
    # The same query builds the same URL: replay finds recorded answers.
    assert url == commons.api_url(config.api_url, dict(params))


def test_file_titles_from_the_p18_values_of_real_entities():
    dump = shared_file("wikidata/onezoom-entities.json.bz2")
    values = []
    with bz2.open(dump, "rt", encoding="utf-8") as lines:
        for line in lines:
            line = line.strip().rstrip(",")
            if line.startswith("{"):
                claims = json.loads(line)["claims"].get("P18", [])
                values += [claim["mainsnak"]["datavalue"]["value"] for claim in claims]

    assert "Douglas adams portrait cropped.jpg" in values
    titles = [commons.file_title(value) for value in values]
    assert "File:Douglas adams portrait cropped.jpg" in titles
    assert "File:Male Lion and Cub Chitwa South Africa Luca Galuzzi 2004.JPG" in titles

    # The same file as the RDF dumps and the query service write it.
    as_url = (
        "http://commons.wikimedia.org/wiki/Special:FilePath/"
        "Male%20Lion%20and%20Cub%20Chitwa%20South%20Africa%20Luca%20Galuzzi%202004.JPG"
    )
    assert commons.file_title(as_url) == (
        "File:Male Lion and Cub Chitwa South Africa Luca Galuzzi 2004.JPG"
    )
    assert (
        commons.file_title("File:cheetah_Feb09_02.jpg") == "File:Cheetah Feb09 02.jpg"
    )


def test_example_page_gives_urls_size_author_and_license():
    result = commons.page_result(recorded("image_data_example.json"), rank=3)

    assert result is not None
    assert result.rank == 3
    assert result.image_url == (
        "https://upload.wikimedia.org/wikipedia/commons/2/25/"
        "20120925_PlozevetBretagne_LoneTree_DSC07971_PtrQs.jpg"
    )
    assert result.page_url == (
        "https://commons.wikimedia.org/wiki/"
        "File:20120925_PlozevetBretagne_LoneTree_DSC07971_PtrQs.jpg"
    )
    assert (result.width, result.height) == (5514, 3102)
    assert result.author == "PtrQs"  # the link text of the Artist HTML
    assert result.license == "CC BY-SA 4.0"
    # Its description is the camera's "SONY DSC"; the object name says more.
    assert result.title == "20120925 PlozevetBretagne LoneTree DSC07971 PtrQs"


def test_html_description_becomes_plain_text():
    html = recorded("image_data_html_description.json")["imageinfo"][0]["extmetadata"]
    page = example_page(ImageDescription=html["ImageDescription"]["value"])

    result = commons.page_result(page, rank=1)

    assert result is not None
    assert result.title == (
        "Identificatie Titel(s): Allegorie op kunstenaar Francesco Mazzoli, "
        "bekend als Parmigianino"
    )


@pytest.mark.parametrize(
    ("recording", "author"),
    [
        ("image_info_artist_div.json", "Jona Lendering"),
        ("image_info_artist_internal_link.json", "NotaRealUser"),
        ("image_info_artist_link.json", "link text"),
        ("image_info_artist_partial_link.json", "Jeff & Brian from Eastbourne"),
        ("image_info_artist_string.json", "Artist Name"),
    ],
)
def test_artist_html_becomes_the_author(recording, author):
    artist = recorded(recording)["extmetadata"]["Artist"]["value"]
    result = commons.page_result(example_page(Artist=artist), rank=1)
    assert result is not None
    assert result.author == author


def test_pages_without_an_image_are_skipped():
    assert commons.page_result(recorded("image_data_missing_imageinfo.json"), 1) is None
    assert commons.page_result(recorded("image_data_missing_image_url.json"), 1) is None

    # A sound file has image info and a URL, but is no image.
    page = {
        "title": "File:Nl-Javaanse herten.ogg",
        "imageinfo": [recorded("audio_filedata_ogg.json")],
    }
    assert commons.page_result(page, 1) is None


def test_sparse_pages_keep_what_they_have():
    minimal = commons.page_result(recorded("image_data_minimal.json"), rank=1)
    assert minimal is not None
    assert minimal.image_url == "https://upload.wikimedia.org/image.jpg"
    assert minimal.page_url == "https://commons.wikimedia.org/descriptionurl"
    assert minimal.license == "https://creativecommons.org/licenses/by-sa/4.0"
    assert minimal.title is None and minimal.author is None

    bare = commons.page_result(recorded("image_data_missing_foreign_url.json"), rank=1)
    assert bare is not None
    assert bare.page_url is None


def test_search_follows_continue_and_matches_the_expected_rows():
    fetcher = RecordedFetcher(
        answer(recorded("response_large_0.json")),
        answer(recorded("response_large_1.json")),
    )
    outcome = asyncio.run(commons.search("pretty pictures", fetcher, limit=10))

    assert outcome.status == "ok"
    assert params_of(fetcher.asked[1])["gaicontinue"] == "next.jpg"
    assert params_of(fetcher.asked[1])["gsrsearch"] == "pretty pictures filetype:bitmap"

    # The rows the recordings' own project expects from these two answers.
    expected = csv.reader(
        shared_file(f"{RECORDED}/exec_job_expect_output.tsv").open(encoding="utf-8"),
        delimiter="\t",
    )
    for result, row in zip(outcome.results, expected, strict=True):
        assert result.image_url == row[2]
        assert result.thumbnail_url == row[3]
        assert (result.width, result.height) == (int(row[4]), int(row[5]))
        assert result.author == row[9]
        assert result.title == json.loads(row[12])["description"]
    assert [r.rank for r in outcome.results] == [1, 2, 3]


def test_pages_split_over_a_continued_batch_are_merged():
    pages: dict[str, dict[str, Any]] = {}
    for name in ("wmc_pretty1.json", "wmc_pretty2.json", "wmc_pretty3.json"):
        commons.merge_pages(pages, recorded(f"continuation/{name}"))

    whole = recorded("continuation/wmc_pretty123.json")["query"]["pages"]
    assert set(pages) == set(whole)
    for page_id, page in whole.items():
        assert pages[page_id]["imageinfo"] == page["imageinfo"]
        assert pages[page_id]["globalusage"] == page["globalusage"]

    left = recorded("continuation/page_44672212_left.json")
    right = recorded("continuation/page_44672212_right.json")
    merged: dict[str, dict[str, Any]] = {}
    for part in (left, right):
        commons.merge_pages(merged, {"query": {"pages": {"44672212": part}}})
    expected = recorded("continuation/page_44672212_merged.json")
    assert merged["44672212"]["globalusage"] == expected["globalusage"]


def test_search_sends_each_continue_and_stops_at_the_limit():
    names = [
        "wmc_pretty1.json",
        "wmc_pretty2.json",
        "wmc_pretty3.json",
        "wmc_pretty4.json",
    ]
    fetcher = RecordedFetcher(*(answer(recorded(f"continuation/{n}")) for n in names))

    outcome = asyncio.run(commons.search("Niedercunnersdorf", fetcher, limit=20))

    asked = [params_of(url) for url in fetcher.asked]
    assert len(asked) == 4
    assert asked[1]["gucontinue"].startswith("Edvard_Munch_-_Night_in_Nice")
    assert asked[2]["gucontinue"].startswith("Niedercunnersdorf_Gartenweg_12")
    assert asked[3]["gaicontinue"].startswith("20151031230201|Lancelot")
    assert len(outcome.results) == 20
    assert outcome.results[0].page_url == (
        "https://commons.wikimedia.org/wiki/File:Minchinmavida_Volcano.jpg"
    )


def test_files_come_in_the_order_asked_and_missing_ones_are_left_out():
    fetcher = RecordedFetcher(
        answer(recorded("continuation/wmc_pretty_nocontinue.json"))
    )
    names = [
        "Edvard_Munch_-_Night_in_Nice_(1891).jpg",
        "http://commons.wikimedia.org/wiki/Special:FilePath/Minchinmavida%20Volcano.jpg",
        "No such file.jpg",
        "File:Stigbygel - Livrustkammaren - 61961-negative.tif",
    ]
    outcome = asyncio.run(commons.search_files(names, fetcher))

    titles = params_of(fetcher.asked[0])["titles"].split("|")
    assert titles[:2] == [
        "File:Edvard Munch - Night in Nice (1891).jpg",
        "File:Minchinmavida Volcano.jpg",
    ]
    pages = [r.page_url.rsplit("/", 1)[-1] for r in outcome.results if r.page_url]
    assert pages == [
        "File:Edvard_Munch_-_Night_in_Nice_(1891).jpg",
        "File:Minchinmavida_Volcano.jpg",
        "File:Stigbygel_-_Livrustkammaren_-_61961-negative.tif",
    ]
    assert [r.rank for r in outcome.results] == [1, 2, 3]


def test_files_are_asked_fifty_titles_at_a_time():
    no_pages = answer({"batchcomplete": ""})
    fetcher = RecordedFetcher(no_pages, no_pages, no_pages)
    names = [f"Specimen {number}.jpg" for number in range(120)]

    outcome = asyncio.run(commons.search_files(names, fetcher))

    sizes = [len(params_of(url)["titles"].split("|")) for url in fetcher.asked]
    assert sizes == [50, 50, 20]
    assert outcome.status == "empty"


def test_a_search_without_hits_is_empty():
    recording = shared_file(f"{RECORDED}/vcr/wt_wikicommons_search_not_found.json")
    interaction = json.loads(recording.read_text())["http_interactions"][0]
    body = interaction["response"]["body"]["string"].encode()
    fetcher = RecordedFetcher(answer(body))

    outcome = asyncio.run(commons.search("asdfadfaadfadfs", fetcher, limit=10))

    assert outcome.status == "empty"
    assert outcome.results == []


def test_rate_limits_block_and_api_errors_carry_the_message():
    blocked = asyncio.run(
        commons.search("x", RecordedFetcher(answer(b"", 429)), limit=5)
    )
    assert blocked.status == "blocked"

    # MediaWiki reports a refused request inside an HTTP 200 answer.
    refused = {"error": {"code": "badvalue", "info": "Unrecognized value for gsrwhat."}}
    error = asyncio.run(commons.search("x", RecordedFetcher(answer(refused)), limit=5))
    assert error.status == "error"
    assert error.error == "badvalue: Unrecognized value for gsrwhat."

    lagging = {"error": {"code": "maxlag", "info": "Waiting for a database server."}}
    lag = asyncio.run(commons.search("x", RecordedFetcher(answer(lagging)), limit=5))
    assert lag.status == "blocked"

    garbled = asyncio.run(
        commons.search("x", RecordedFetcher(answer(b"<html>")), limit=5)
    )
    assert garbled.status == "error" and garbled.error.startswith("invalid_json")


def test_a_failure_while_paging_keeps_the_first_results():
    fetcher = RecordedFetcher(
        answer(recorded("response_large_0.json")), answer(b"", 503)
    )

    outcome = asyncio.run(commons.search("pretty", fetcher, limit=10))

    assert outcome.status == "ok"
    assert [r.image_url for r in outcome.results] == ["https://upl.wiki.org/url0"]
    assert "http_503" in (outcome.error or "")


def test_thumbnail_size_replaces_the_original():
    page = recorded("response_large_0.json")["query"]["pages"]["123"]
    config = CommonsConfig(image_size="thumbnail")

    result = commons.page_result(page, rank=1, config=config)

    assert result is not None
    assert result.image_url == "https://upl.wiki.org/thumburl0"
    assert (result.width, result.height) == (300, 180)
