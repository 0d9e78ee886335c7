"""Bing Images: the parser and the block check on pages in Bing's structure."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from crawl.engines import bing
from crawl.engines.base import SearchOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "search"


def read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_tiles_give_image_page_thumbnail_title_and_size():
    results = bing.parse(read("bing-images.html"))

    # Six tiles; the one whose metadata is not JSON and the one without an
    # image URL are skipped, and ranks close up.
    assert [r.rank for r in results] == [1, 2, 3, 4]
    first = results[0]
    assert first.image_url == (
        "https://upload.wikimedia.org/wikipedia/commons/6/6e/"
        "Passer_domesticus_male_%2815%29.jpg"
    )
    assert first.page_url == "https://en.wikipedia.org/wiki/House_sparrow"
    assert first.thumbnail_url == "https://tse1.mm.bing.net/th?id=OIP.aaa&pid=15.1"
    assert first.title == "House sparrow - Wikipedia"
    assert (first.width, first.height) == (2592, 1728)


def test_size_line_variants_and_title_fallback():
    second, third, fourth = bing.parse(read("bing-images.html"))[1:]
    assert (second.width, second.height) == (1280, 853)  # "1280 × 853"
    assert third.title == "A house sparrow on a fence & a post"  # empty "t": alt
    assert fourth.title == "Passer domesticus – female"
    assert (fourth.width, fourth.height) == (None, None)


def test_block_page_is_recognised():
    assert bing.is_blocked(read("bing-block.html"))
    assert not bing.is_blocked(read("bing-images.html"))
    assert bing.parse(read("bing-block.html")) == []


def test_results_url_carries_query_exclusions_and_settings():
    options = SearchOptions(language="de", safe_search="off", excluded_terms=("map",))
    params = parse_qs(urlsplit(bing.results_url("Haussperling", options)).query)
    assert params["q"] == ["Haussperling -map"]
    assert params["adlt"] == ["off"]
    assert params["setlang"] == ["de"]
    assert bing.results_url(
        "a", SearchOptions(base_url="http://127.0.0.1:1")
    ).startswith("http://127.0.0.1:1/images/search?q=a+-drawing")
