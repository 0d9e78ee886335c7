"""Bing Images through a browser: results URL, page parser, block check.

Each result is an ``a.iusc`` link whose ``m`` attribute holds a JSON object:
``murl`` the image, ``purl`` the page it is on, ``turl`` the thumbnail, ``t``
the title. The link sits in a ``div.imgpt`` beside ``div.img_info``, whose
``span.nowrap`` reads like ``1280 x 720 · jpeg`` (the image's width and
height). More tiles are loaded as the page is scrolled, and a "See more
images" button appears when loading stalls.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlencode

from crawl.engines.base import (
    ParsedResult,
    SearchOptions,
    WebEngine,
    shows_marker,
)
from crawl.engines.markup import Element, parse_html

log = logging.getLogger(__name__)

BASE_URL = "https://www.bing.com"

# The cookie banner shown in Europe; accepting it sets a cookie and stays on
# the page.
CONSENT_SELECTORS = ("button#bnp_btn_accept", "#bnp_btn_accept")

TILE_SELECTOR = "a.iusc"
MORE_SELECTOR = "a.btn_seemore"

# Bing's challenge page ("One last step") and its captcha frame.
BLOCK_MARKERS = (
    "/turing/captcha",
    'id="b_captcha"',
    "please solve the challenge below to continue",
    "our systems have detected unusual traffic",
)

_DIMENSIONS = re.compile(r"(\d+)\s*[x×]\s*(\d+)")


def results_url(text: str, options: SearchOptions) -> str:
    """The images results URL for a query, excluded terms appended as ``-term``."""
    params = {
        "q": options.query(text),
        "form": "HDRSC2",
        "first": "1",
        "adlt": options.safe_search,
        "setlang": options.language,
    }
    return f"{options.origin(BASE_URL)}/images/search?{urlencode(params)}"


def is_blocked(html: str) -> bool:
    """Whether a page is Bing's challenge page instead of results."""
    return shows_marker(html, BLOCK_MARKERS)


def parse(html: str) -> list[ParsedResult]:
    """The results of a Bing Images page, in page order, ranks from 1. Tiles
    whose ``m`` attribute is not JSON with an image URL are skipped."""
    results: list[ParsedResult] = []
    for link in parse_html(html).find_all("a", cls="iusc", attr="m"):
        metadata = _metadata(link.attrs["m"])
        if not metadata.get("murl"):
            continue
        width, height = _dimensions(link)
        image = link.find("img")
        results.append(
            ParsedResult(
                rank=len(results) + 1,
                image_url=metadata["murl"],
                page_url=metadata.get("purl") or None,
                title=metadata.get("t") or (image.get("alt") if image else None),
                thumbnail_url=metadata.get("turl") or None,
                width=width,
                height=height,
            )
        )
    return results


def _metadata(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dimensions(link: Element) -> tuple[int | None, int | None]:
    """Width and height from the tile's info line, when the tile has one."""
    tile = link.parent
    while tile is not None and not tile.has_class("imgpt"):
        tile = tile.parent
    info = tile.find("span", cls="nowrap") if tile is not None else None
    match = _DIMENSIONS.search(info.text()) if info is not None else None
    if match is None:
        return None, None
    return int(match.group(1)), int(match.group(2))


ENGINE = WebEngine(
    name="bing",
    results_url=results_url,
    parse=parse,
    is_blocked=is_blocked,
    consent_selectors=CONSENT_SELECTORS,
    tile_selector=TILE_SELECTOR,
    more_selector=MORE_SELECTOR,
)
