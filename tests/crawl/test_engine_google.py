"""Google Images: the parser on the real saved results page and on a small
page with the script data a live page has; the block check on the real block
page."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from crawl.engines import google
from crawl.engines.base import SearchOptions
from tests.conftest import shared_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "search"


@pytest.fixture(scope="module")
def elections_results() -> list[google.ParsedResult]:
    page = shared_file("search/google-images-elections-2023-03-15.html")
    return google.parse(page.read_text(encoding="utf-8"))


def test_real_page_gives_its_300_tiles_in_order(elections_results):
    assert len(elections_results) == 300
    assert [r.rank for r in elections_results] == list(range(1, 301))
    first = elections_results[0]
    assert first.title == "BMI - Bundestag elections"
    assert first.page_url is not None
    assert first.page_url.startswith("https://www.bmi.bund.de/EN/topics/")
    assert (first.width, first.height) == (933, 525)


def test_real_page_fields_are_plausible(elections_results):
    # Every tile names its page and the original image's size.
    assert all(r.page_url and r.page_url.startswith("http") for r in elections_results)
    assert all(r.width and r.height for r in elections_results)
    assert sum(bool(r.title) for r in elections_results) >= 290
    assert len({r.page_url for r in elections_results}) >= 290

    # Thumbnails are http(s) where the page has them; inline data: ones are
    # left out.
    thumbnails = [r.thumbnail_url for r in elections_results if r.thumbnail_url]
    assert len(thumbnails) >= 40
    assert all(t.startswith("https://encrypted-tbn") for t in thumbnails)


def test_real_page_has_no_original_image_urls(elections_results):
    # The saved copy was stored without any <script> element, and Google keeps
    # the original image URLs in script data only; no tile can have one.
    assert all(r.image_url is None for r in elections_results)


def test_block_page_is_recognised():
    block = shared_file("search/google-block-page.html").read_text(encoding="utf-8")
    results = shared_file("search/google-images-elections-2023-03-15.html")
    assert google.is_blocked(block)
    assert not google.is_blocked(results.read_text(encoding="utf-8"))
    assert google.parse(block) == []


def test_image_urls_from_script_data_and_imgres_links():
    page = (FIXTURES / "google-script-data.html").read_text(encoding="utf-8")
    first, second, third = google.parse(page)

    # From the script data, with JSON escapes undone; sizes fill in.
    assert first.image_url == (
        "https://upload.wikimedia.org/wikipedia/commons/6/6e/Passer.jpg?x=1&y=2"
    )
    assert (first.width, first.height) == (2592, 1728)
    assert first.thumbnail_url == "https://encrypted-tbn0.gstatic.com/images?q=tbn:A1"

    # A pressed link's /imgres target wins over the script data.
    assert second.image_url == "https://www.allaboutbirds.org/guide/sparrow.jpg"
    assert second.page_url == "https://www.allaboutbirds.org/guide/House_Sparrow"
    assert second.thumbnail_url is None

    # Neither: no image URL, the rest still read; the alt text stands in for
    # an empty heading.
    assert third.image_url is None
    assert third.title == "Sparrow at the feeder"
    assert third.thumbnail_url == "https://encrypted-tbn2.gstatic.com/images?q=tbn:C3"


def test_results_url_carries_query_exclusions_and_settings():
    url = google.results_url("house sparrow", SearchOptions(safe_search="strict"))
    parts = urlsplit(url)
    params = parse_qs(parts.query)
    assert parts.netloc == "www.google.com"
    assert params["q"] == [
        "house sparrow -drawing -clipart -illustration -cartoon -vector -painting"
    ]
    assert params["tbm"] == ["isch"]
    assert params["safe"] == ["active"]
    assert params["hl"] == ["en"]

    local = google.results_url(
        "x", SearchOptions(base_url="http://127.0.0.1:9/", excluded_terms=())
    )
    assert local == "http://127.0.0.1:9/search?q=x&tbm=isch&hl=en"
