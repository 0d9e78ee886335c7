"""Small types every search engine shares.

A parser turns an engine's answer into :class:`ParsedResult` rows; one search
ends in a :class:`SearchOutcome` (its status, its results, where its answer lies
in the archive). :func:`result_rows` and :func:`search_row` turn outcomes into
rows of ``RESULTS_SCHEMA`` and ``SEARCHES_SCHEMA``. Web engines, which are
driven through a browser by :mod:`crawl.browser`, describe themselves with a
:class:`WebEngine`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from crawl.web import Location, Response

SearchStatus = Literal["ok", "empty", "blocked", "error"]
SafeSearch = Literal["strict", "moderate", "off"]

# The browser driver adds each captured response (see WebEngine.capture_marker)
# to the saved page as <script type="application/json"> with these attributes.
CAPTURE_URL_ATTRIBUTE = "data-capture-url"
CAPTURE_STATUS_ATTRIBUTE = "data-capture-status"

# Words that pull drawings and other non-photographs into image results; each
# engine puts them after the query in its own exclusion syntax.
DEFAULT_EXCLUDED_TERMS = (
    "drawing",
    "clipart",
    "illustration",
    "cartoon",
    "vector",
    "painting",
)


@dataclass(frozen=True)
class ParsedResult:
    """One result as an engine gave it; ``rank`` is 1-based. Fields the answer
    does not carry are None."""

    rank: int
    image_url: str | None
    page_url: str | None = None
    title: str | None = None
    thumbnail_url: str | None = None
    width: int | None = None
    height: int | None = None
    license: str | None = None
    author: str | None = None


@dataclass(frozen=True)
class SearchOutcome:
    """How one search went: ``status`` ok | empty | blocked | error, ``error``
    a few words when it did not go well, ``url`` the page or API URL asked."""

    status: SearchStatus
    results: list[ParsedResult] = field(default_factory=list)
    error: str | None = None
    url: str = ""
    location: Location | None = None
    fetched: str = ""


@dataclass(frozen=True)
class SearchOptions:
    """What a results URL may carry besides the query text.

    ``excluded_terms`` None means the engine's own default list; ``base_url``
    replaces the engine's scheme and host (a mirror, or a local test server).
    """

    language: str = "en"
    safe_search: SafeSearch = "moderate"
    excluded_terms: tuple[str, ...] | None = None
    base_url: str | None = None

    def query(self, text: str) -> str:
        """The query text followed by ``-term`` for each excluded term, the
        syntax Google, Bing and DuckDuckGo all understand."""
        terms = self.excluded_terms
        return with_exclusions(text, DEFAULT_EXCLUDED_TERMS if terms is None else terms)

    def origin(self, default: str) -> str:
        """The scheme and host to ask, without a trailing slash: ``base_url``
        when set, else the engine's own ``default``."""
        return (self.base_url or default).rstrip("/")


@dataclass(frozen=True)
class WebEngine:
    """What the browser driver needs to know about one web image search engine.

    ``consent_selectors`` are tried in order on every loaded page, and the first
    visible one is clicked (the engine's cookie or consent wall).
    ``tile_selector`` counts the result tiles while scrolling.
    ``more_selector`` is a "show more results" button clicked when scrolling
    stops growing the page. ``prepare_script`` runs in the page before its HTML
    is read. ``capture_marker`` names responses (by a piece of their URL) whose
    bodies the parser needs; the driver adds them to the saved page.
    """

    name: str
    results_url: Callable[[str, SearchOptions], str]
    parse: Callable[[str], list[ParsedResult]]
    is_blocked: Callable[[str], bool]
    consent_selectors: tuple[str, ...] = ()
    tile_selector: str = "img"
    more_selector: str | None = None
    prepare_script: str | None = None
    capture_marker: str | None = None


def result_id(query_id: str, key: str) -> str:
    """Stable id of a result: a hash of its query and its image URL."""
    digest = hashlib.sha256(f"{query_id}\x1f{key}".encode())
    return digest.hexdigest()[:20]


def result_rows(
    outcome: SearchOutcome, *, query_id: str, engine: str, query: str
) -> list[dict[str, Any]]:
    """The ``RESULTS_SCHEMA`` rows of one search.

    A result without an image URL (a saved page whose script data is gone)
    is keyed by its page URL, or by its rank when it has neither.
    """
    rows = []
    for result in outcome.results:
        key = result.image_url or result.page_url or f"rank:{result.rank}"
        rows.append(
            {
                "result_id": result_id(query_id, key),
                "query_id": query_id,
                "engine": engine,
                "query": query,
                "rank": result.rank,
                "image_url": result.image_url,
                "page_url": result.page_url,
                "title": result.title,
                "thumbnail_url": result.thumbnail_url,
                "width": result.width,
                "height": result.height,
                "license": result.license,
                "author": result.author,
                "fetched": outcome.fetched,
            }
        )
    return rows


def search_row(
    outcome: SearchOutcome, *, query_id: str, engine: str, query: str
) -> dict[str, Any]:
    """The ``SEARCHES_SCHEMA`` row of one search."""
    location = outcome.location
    return {
        "query_id": query_id,
        "engine": engine,
        "query": query,
        "status": outcome.status,
        "error": outcome.error,
        "num_results": len(outcome.results),
        "url": outcome.url,
        "warc_file": location.warc_file if location else None,
        "warc_offset": location.offset if location else None,
        "fetched": outcome.fetched,
    }


def shows_marker(
    html: str, markers: tuple[str, ...], head_chars: int = 200_000
) -> bool:
    """Whether the first ``head_chars`` of a page carry one of ``markers``
    (lower case): how an engine's block or challenge page is told apart."""
    head = html[:head_chars].lower()
    return any(marker in head for marker in markers)


def outcome_of(
    response: Response, status: SearchStatus, error: str | None = None
) -> SearchOutcome:
    """An outcome with no results yet, carrying where ``response`` came from
    and lies in the archive."""
    return SearchOutcome(
        status,
        error=error,
        url=response.url,
        location=response.location,
        fetched=response.fetched,
    )


def with_exclusions(text: str, terms: tuple[str, ...]) -> str:
    """The query text followed by ``-term`` for each excluded term, the syntax
    Google, Bing and DuckDuckGo all understand."""
    extra = " ".join(f"-{term}" for term in terms if term)
    return f"{text} {extra}" if extra else text
