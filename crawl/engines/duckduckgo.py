"""DuckDuckGo Images through a browser: results URL, parser, block check.

The results page holds no results itself. Its script asks the ``i.js``
endpoint (``/i.js?q=...&o=json&vqd=...``, the ``vqd`` token coming from the
page) and renders the answer as tiles; each scroll to the bottom asks for the
next batch (the answer's ``next`` field). Every answer is JSON with a
``results`` list whose entries carry ``image``, ``url`` (the page),
``title``, ``thumbnail``, ``width`` and ``height``.

The parser reads that JSON, not the rendered tiles: the tiles show only a
proxied thumbnail and the page link, while the original image URL is in the
JSON alone. The browser driver captures every ``i.js`` answer
(:data:`ENGINE`'s ``capture_marker``) and adds it to the saved page as a
``<script type="application/json" data-capture-url=...>`` element, so the
saved page is enough to parse and to replay. The parser also accepts one
``i.js`` answer on its own.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

from crawl.engines.base import (
    CAPTURE_STATUS_ATTRIBUTE,
    CAPTURE_URL_ATTRIBUTE,
    ParsedResult,
    SearchOptions,
    WebEngine,
    shows_marker,
)
from crawl.engines.markup import parse_html

log = logging.getLogger(__name__)

BASE_URL = "https://duckduckgo.com"
CAPTURE_MARKER = "/i.js"

# DuckDuckGo shows no cookie wall; none is needed.
CONSENT_SELECTORS: tuple[str, ...] = ()

TILE_SELECTOR = ".tile--img, [data-testid='image-result']"

# The "anomaly" dialog DuckDuckGo shows to clients it takes for robots.
BLOCK_MARKERS = (
    "anomaly-modal",
    "bots use duckduckgo too",
    "complete the following challenge",
)
# An i.js answer with one of these statuses means the token or the client
# was refused.
BLOCK_STATUSES = frozenset({"403", "418", "429"})

# kp: 1 strict, -1 moderate, -2 off.
SAFE_SEARCH = {"strict": "1", "moderate": "-1", "off": "-2"}


def results_url(text: str, options: SearchOptions) -> str:
    """The images results URL for a query, excluded terms appended as ``-term``."""
    params = {
        "q": options.query(text),
        "iax": "images",
        "ia": "images",
        "kp": SAFE_SEARCH[options.safe_search],
        "kl": _region(options.language),
    }
    return f"{options.origin(BASE_URL)}/?{urlencode(params)}"


def is_blocked(html: str) -> bool:
    """Whether a page shows DuckDuckGo's robot check, or an ``i.js`` answer
    captured from it was refused."""
    if shows_marker(html, BLOCK_MARKERS, head_chars=500_000):
        return True
    if html.lstrip().startswith("{"):
        return False
    captures = parse_html(html).find_all("script", attr=CAPTURE_STATUS_ATTRIBUTE)
    return any(c.attrs[CAPTURE_STATUS_ATTRIBUTE] in BLOCK_STATUSES for c in captures)


def parse(html: str) -> list[ParsedResult]:
    """The results of every ``i.js`` answer in a saved page (or of one answer
    given alone), in order, ranks from 1. Entries without an image are skipped."""
    results: list[ParsedResult] = []
    for entry in _entries(html):
        if not isinstance(entry, dict) or not entry.get("image"):
            continue
        results.append(
            ParsedResult(
                rank=len(results) + 1,
                image_url=entry["image"],
                page_url=entry.get("url") or None,
                title=entry.get("title") or None,
                thumbnail_url=entry.get("thumbnail") or None,
                width=_int(entry.get("width")),
                height=_int(entry.get("height")),
            )
        )
    return results


def _entries(html: str) -> list[Any]:
    """The ``results`` entries of every answer, in the order they came."""
    if html.lstrip().startswith("{"):
        answers = [html]
    else:
        captures = parse_html(html).find_all("script", attr=CAPTURE_URL_ATTRIBUTE)
        answers = [
            "".join(child for child in capture.children if isinstance(child, str))
            for capture in captures
            if CAPTURE_MARKER in capture.attrs[CAPTURE_URL_ATTRIBUTE]
        ]
    entries: list[Any] = []
    for answer in answers:
        try:
            value = json.loads(answer)
        except ValueError:
            log.debug("skipping an i.js answer that is not JSON")
            continue
        if isinstance(value, dict) and isinstance(value.get("results"), list):
            entries.extend(value["results"])
    return entries


def _region(language: str) -> str:
    # DuckDuckGo names regions country-language; English goes to the US one.
    return "us-en" if language == "en" else f"{language}-{language}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


ENGINE = WebEngine(
    name="duckduckgo",
    results_url=results_url,
    parse=parse,
    is_blocked=is_blocked,
    consent_selectors=CONSENT_SELECTORS,
    tile_selector=TILE_SELECTOR,
    capture_marker=CAPTURE_MARKER,
)
