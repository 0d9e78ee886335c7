"""Google Images through a browser: results URL, page parser, block check.

A results page is a grid of tiles, one ``div`` per result carrying
``data-id`` (the result's id) and ``data-ri`` (its 0-based position), and for
the original image ``data-ow``/``data-oh`` (width and height in pixels). In a
tile, ``h3`` holds the title, an ``img`` the thumbnail (a ``data:`` URI for the
first rows, an ``encrypted-tbn`` URL in ``src`` or ``data-src`` further down)
and a second link, opening in a new tab, the page the image is on.

The original image URL is not in a tile's attributes. Google keeps it in the
page's inline script data, as ``"<id>",["<thumbnail>",h,w],["<image>",h,w]``
arrays next to the tile's id, and writes it into the tile's first link as
``/imgres?imgurl=...&imgrefurl=...`` once that link is pressed (hence
:data:`PREPARE_SCRIPT`, which presses every link before the page is read). The
parser takes the image URL from either place. A page saved without its scripts
and before any press (like the reference page the tests read) has neither, and
its results come without an image URL.

Known shortcoming: the script data and the /imgres link are read as Google
wrote them in 2023, as far as the reference page and public descriptions
show; neither could be checked against a live page from this project's
closed network. Google's later layout (``udm=2`` pages, tiles without
``data-ri``) is not read. When the parser falls behind, ``check_engines``
reports ``no_results`` for Google, and the results it still finds lack
image URLs; a saved live page in the test data would let the parser be
brought up to date.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import parse_qs, urlencode, urlsplit

from crawl.engines.base import (
    ParsedResult,
    SearchOptions,
    WebEngine,
    shows_marker,
)
from crawl.engines.markup import Element, parse_html

log = logging.getLogger(__name__)

BASE_URL = "https://www.google.com"

# The consent wall (consent.google.com, and the older in-page dialog).
CONSENT_SELECTORS = (
    "button#L2AGLb",
    'button[aria-label="Accept all"]',
    'form[action*="consent"] button:has-text("Accept all")',
)

# A result tile: every result carries both attributes, nothing else does.
TILE_SELECTOR = "div[data-ri][data-id]"

# After about 100 results Google stops growing the page until this is pressed.
MORE_SELECTOR = 'input.mye4qd, input[value="Show more results"]'

# Presses each tile's first link, which makes Google write the /imgres link
# holding the original image URL into its href.
PREPARE_SCRIPT = """
() => {
  for (const link of document.querySelectorAll('div[data-ri] a[jsname="sTFXNd"]')) {
    link.dispatchEvent(new MouseEvent('mousedown', {bubbles: true}));
  }
}
"""

# Pieces of text that only Google's "unusual traffic" page carries.
BLOCK_MARKERS = (
    "our systems have detected unusual traffic",
    'id="captcha-form"',
    "id=captcha-form",
    "/sorry/index",
)

SAFE_SEARCH = {"strict": "active", "moderate": None, "off": "off"}

_SCRIPT_IMAGE = re.compile(r'\["(https?:[^"]+)",(\d+),(\d+)\]')
_SCRIPT_ID = re.compile(r'"([\w-]{8,20})",\["https?:')


def results_url(text: str, options: SearchOptions) -> str:
    """The images results URL for a query, excluded terms appended as ``-term``."""
    params = {"q": options.query(text), "tbm": "isch", "hl": options.language}
    safe = SAFE_SEARCH[options.safe_search]
    if safe:
        params["safe"] = safe
    return f"{options.origin(BASE_URL)}/search?{urlencode(params)}"


def is_blocked(html: str) -> bool:
    """Whether a page is Google's "unusual traffic" check instead of results."""
    return shows_marker(html, BLOCK_MARKERS)


def parse(html: str) -> list[ParsedResult]:
    """The results of a Google Images page, in page order, ranks from 1."""
    root = parse_html(html)
    script_images = _script_images(root)
    tiles = [e for e in root.iter() if "data-ri" in e.attrs and "data-id" in e.attrs]
    return [
        _tile_result(tile, rank, script_images.get(tile.attrs["data-id"]))
        for rank, tile in enumerate(tiles, start=1)
    ]


def _tile_result(
    tile: Element, rank: int, from_script: tuple[str, int, int] | None
) -> ParsedResult:
    image_url, page_url = _tile_links(tile)
    width = _int(tile.get("data-ow"))
    height = _int(tile.get("data-oh"))
    if from_script and not image_url:
        image_url = from_script[0]
        width, height = width or from_script[2], height or from_script[1]
    return ParsedResult(
        rank=rank,
        image_url=image_url,
        page_url=page_url,
        title=_tile_title(tile),
        thumbnail_url=_tile_thumbnail(tile),
        width=width,
        height=height,
    )


def _tile_links(tile: Element) -> tuple[str | None, str | None]:
    """The image URL (from an /imgres link) and the page URL of a tile."""
    image_url = page_url = None
    for link in tile.find_all("a", attr="href"):
        href = link.attrs["href"]
        if "/imgres?" in href:
            params = parse_qs(urlsplit(href).query)
            image_url = image_url or _first(params.get("imgurl"))
            page_url = page_url or _first(params.get("imgrefurl"))
        elif href.startswith(("http://", "https://")) and page_url is None:
            page_url = href
    return image_url, page_url


def _tile_title(tile: Element) -> str | None:
    heading = tile.find("h3")
    if heading is not None and heading.text():
        return heading.text()
    for element in tile.iter():
        for name in ("title", "alt"):
            if element.get(name):
                return element.attrs[name]
    return None


def _tile_thumbnail(tile: Element) -> str | None:
    """The first http(s) thumbnail; inline ``data:`` thumbnails are left out,
    being the image itself at tile size rather than a place to fetch it."""
    image = tile.find("img")
    if image is None:
        return None
    for name in ("src", "data-src"):
        value = image.get(name) or ""
        if value.startswith(("http://", "https://")):
            return value
    return None


def _script_images(root: Element) -> dict[str, tuple[str, int, int]]:
    """Tile id -> (original image URL, height, width) from inline script data."""
    found: dict[str, tuple[str, int, int]] = {}
    for script in root.find_all("script"):
        text = "".join(child for child in script.children if isinstance(child, str))
        for match in _SCRIPT_ID.finditer(text):
            entry = _original_after(text, match.start())
            if entry is not None:
                found.setdefault(match.group(1), entry)
    return found


def _original_after(text: str, start: int) -> tuple[str, int, int] | None:
    """The first image array after ``start`` that is not a Google thumbnail."""
    for match in _SCRIPT_IMAGE.finditer(text, start, start + 4000):
        url = _unescape(match.group(1))
        if "gstatic.com" not in url:
            return url, int(match.group(2)), int(match.group(3))
    return None


def _unescape(value: str) -> str:
    # Script data escapes = and & as \u003d and \u0026, as JSON strings do.
    try:
        return str(json.loads(f'"{value}"'))
    except ValueError:
        return value


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None


ENGINE = WebEngine(
    name="google",
    results_url=results_url,
    parse=parse,
    is_blocked=is_blocked,
    consent_selectors=CONSENT_SELECTORS,
    tile_selector=TILE_SELECTOR,
    more_selector=MORE_SELECTOR,
    prepare_script=PREPARE_SCRIPT,
)
