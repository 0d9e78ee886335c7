"""DuckDuckGo Images: the parser reads i.js answers, alone or as the browser
driver saves them inside the page; the block check."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from crawl.engines import duckduckgo
from crawl.engines.base import SearchOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "search"


def read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_saved_page_gives_the_results_of_every_answer_in_order():
    results = duckduckgo.parse(read("duckduckgo-images.html"))

    # Two i.js answers (2 + 1 results); the capture of another endpoint is
    # not read.
    assert [r.rank for r in results] == [1, 2, 3]
    first, _, third = results
    assert first.image_url == (
        "https://upload.wikimedia.org/wikipedia/commons/6/6e/"
        "Passer_domesticus_male_%2815%29.jpg"
    )
    assert first.page_url == "https://en.wikipedia.org/wiki/House_sparrow"
    assert first.thumbnail_url == "https://tse1.mm.bing.net/th?id=OIP.aaa&pid=Api"
    assert (first.width, first.height) == (2592, 1728)
    assert third.title == "Sparrow in snow </b>"  # "<\/" read back as "</"


def test_one_answer_alone_and_entries_without_image():
    results = duckduckgo.parse(read("duckduckgo-i.js.json"))
    assert len(results) == 2  # the third entry has no image
    assert results[1].title == "House Sparrow Identification, All About Birds"
    assert duckduckgo.parse("{not json") == []


def test_block_page_and_refused_answer_are_recognised():
    assert duckduckgo.is_blocked(read("duckduckgo-block.html"))
    assert duckduckgo.is_blocked(read("duckduckgo-refused.html"))
    assert not duckduckgo.is_blocked(read("duckduckgo-images.html"))
    assert not duckduckgo.is_blocked(read("duckduckgo-i.js.json"))
    assert duckduckgo.parse(read("duckduckgo-refused.html")) == []


def test_results_url_carries_query_exclusions_and_settings():
    url = duckduckgo.results_url("house sparrow", SearchOptions(safe_search="strict"))
    parts = urlsplit(url)
    params = parse_qs(parts.query)
    assert parts.netloc == "duckduckgo.com"
    assert params["q"][0].startswith("house sparrow -drawing -clipart")
    assert params["iax"] == ["images"]
    assert params["kp"] == ["1"]
    assert params["kl"] == ["us-en"]
