"""Wikimedia Commons as an image source, through the MediaWiki API.

Two ways in: :func:`search` runs a text search over the File namespace (the
query text against file titles and descriptions), and :func:`search_files`
asks for the files an entity names itself (its ``P18`` image values). Both
return a :class:`~crawl.engines.base.SearchOutcome` whose results carry the
original image URL, the file's description page, a thumbnail, the size, a
plain-text description, the author and the license.

Answers come through a :class:`~crawl.web.Fetcher`, so they are archived (or
replayed). The API pages its answers with ``continue``; the properties of one
page may arrive spread over several answers of a batch, so pages are merged
by page id before they are read. URLs are built with their parameters in a
fixed order, so a rerun asks for the very same URLs and replay finds them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import quote, unquote, urlencode, urlsplit

from crawl.engines.base import (
    ParsedResult,
    SearchOutcome,
    SearchStatus,
    outcome_of,
)
from crawl.web import Fetcher, Response

log = logging.getLogger(__name__)

ENGINE = "commons"
DEFAULT_API_URL = "https://commons.wikimedia.org/w/api.php"
FILE_PAGE_URL = "https://commons.wikimedia.org/wiki/"

# The API accepts at most 50 titles in one request (500 for bots).
MAX_TITLES_PER_REQUEST = 50

# Only these fields of extmetadata are read; asking for fewer keeps answers
# small (a file's full extmetadata is often several kilobytes).
EXTMETADATA_FIELDS = (
    "ImageDescription",
    "ObjectName",
    "Artist",
    "LicenseShortName",
    "LicenseUrl",
)

# MediaWiki error codes that mean "slow down" rather than "this is wrong".
_THROTTLE_CODES = frozenset({"ratelimited", "maxlag"})

# Descriptions that cameras write into every file; a file title says more.
_CAMERA_DESCRIPTIONS = frozenset(
    {"sony dsc", "olympus digital camera", "digital camera", "dcim", "camera"}
)

# Files Commons holds that are not raster images, known by the extension of
# their URL where an answer has no mime type (iiprop without mime).
_SOUND_EXTENSIONS = (".ogg", ".oga", ".opus", ".wav", ".mp3", ".flac", ".mid", ".midi")
_VIDEO_EXTENSIONS = (".ogv", ".webm", ".mpg", ".mpeg")
_DOCUMENT_EXTENSIONS = (".pdf", ".djvu", ".svg", ".stl")
_NOT_IMAGE_EXTENSIONS = (*_SOUND_EXTENSIONS, *_VIDEO_EXTENSIONS, *_DOCUMENT_EXTENSIONS)


@dataclass(frozen=True)
class CommonsConfig:
    """How to ask Commons.

    ``image_size`` "thumbnail" makes the thumbnail (``thumb_width_px`` wide)
    the image URL, which is lighter on Commons and on the downloader than the
    original (often 20 megapixels); "original" keeps the original.
    """

    api_url: str = DEFAULT_API_URL
    thumb_width_px: int = 640
    image_size: Literal["original", "thumbnail"] = "original"
    language: str = "en"  # language of the descriptions in extmetadata
    # Added to every text search; CirrusSearch's filetype:bitmap leaves out
    # drawings (SVG), sound, video and documents before they take up a page.
    search_keywords: str = "filetype:bitmap"
    page_size: int = 50  # search hits per request (gsrlimit)
    max_requests: int = 10  # per search, continuation included
    mime_types: tuple[str, ...] = (
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/tiff",
    )


async def search(
    query_text: str,
    fetcher: Fetcher,
    *,
    limit: int,
    config: CommonsConfig | None = None,
) -> SearchOutcome:
    """Search the File namespace of Commons for ``query_text``.

    Returns at most ``limit`` results in the API's order of relevance. A
    throttled answer gives status ``blocked``, an error answer ``error`` with
    the API's own message, no image among the hits ``empty``. Nothing is
    raised for a failed answer.
    """
    config = config or CommonsConfig()
    params = search_params(query_text, config, limit=limit)
    gathered = await _gather(params, fetcher, config, wanted=limit)
    if gathered.outcome.status != "ok":
        return gathered.outcome

    # generator=search gives each page its place in the ranking as "index".
    ordered = sorted(gathered.pages.values(), key=lambda page: page.get("index", 0))
    return _finish(gathered.outcome, ordered, config, limit=limit)


async def search_files(
    file_names: Sequence[str],
    fetcher: Fetcher,
    *,
    config: CommonsConfig | None = None,
) -> SearchOutcome:
    """Ask for the files an entity names (``P18`` values), in the given order.

    ``file_names`` may be bare file names, ``File:`` titles or
    ``Special:FilePath`` URLs, as the entities table holds them. Files that do
    not exist are left out. Requests go in batches of 50 titles; the outcome
    describes the first answer, and a failed batch ends the search with what
    earlier batches found.
    """
    config = config or CommonsConfig()
    titles = list(dict.fromkeys(file_title(name) for name in file_names))
    if not titles:
        return SearchOutcome("empty", error="no file names given")

    found: dict[str, dict[str, Any]] = {}
    first: SearchOutcome | None = None
    for start in range(0, len(titles), MAX_TITLES_PER_REQUEST):
        batch = titles[start : start + MAX_TITLES_PER_REQUEST]
        gathered = await _gather(
            files_params(batch, config), fetcher, config, wanted=len(batch)
        )
        if gathered.outcome.status in ("blocked", "error"):
            if first is None:
                return gathered.outcome
            first = _noting(first, gathered.outcome)
            break
        first = first or gathered.outcome
        found.update(gathered.pages_by_title())

    assert first is not None  # the loop ran at least once and set it
    ordered = [found[title] for title in titles if title in found]
    return _finish(first, ordered, config, limit=len(titles))


def search_params(
    query_text: str, config: CommonsConfig, *, limit: int
) -> dict[str, str]:
    """The parameters of a File-namespace text search (before continuation)."""
    return {
        "action": "query",
        "generator": "search",
        "gsrnamespace": "6",
        "gsrsearch": f"{query_text} {config.search_keywords}".strip(),
        "gsrlimit": str(max(1, min(limit, config.page_size))),
        **_imageinfo_params(config),
    }


def files_params(titles: Sequence[str], config: CommonsConfig) -> dict[str, str]:
    """The parameters that ask for the image info of up to 50 file titles."""
    if len(titles) > MAX_TITLES_PER_REQUEST:
        raise ValueError(f"at most {MAX_TITLES_PER_REQUEST} titles per request")
    return {"action": "query", "titles": "|".join(titles), **_imageinfo_params(config)}


def api_url(base_url: str, params: Mapping[str, str]) -> str:
    """The URL of one API request; parameters keep their given order."""
    return f"{base_url}?{urlencode(params, quote_via=quote)}"


def file_title(value: str) -> str:
    """The ``File:`` page title of a P18 value.

    Accepts ``Name.jpg``, ``File:Name.jpg`` and
    ``http://commons.wikimedia.org/wiki/Special:FilePath/Name.jpg`` (the form
    Wikidata's RDF uses, percent-encoded). Underscores become spaces and the
    first letter is upper case, as MediaWiki normalises titles.
    """
    name = value.strip()
    if "://" in name:
        path = urlsplit(name).path
        marker = "Special:FilePath/"
        name = path.split(marker, 1)[1] if marker in path else path.rsplit("/", 1)[-1]
        name = unquote(name)
    for prefix in ("File:", "Image:", "file:", "image:"):
        name = name.removeprefix(prefix)
    name = " ".join(name.replace("_", " ").split())
    return f"File:{name[:1].upper()}{name[1:]}"


def page_result(
    page: Mapping[str, Any], rank: int, config: CommonsConfig | None = None
) -> ParsedResult | None:
    """The result of one page of an answer, or None when it has no image.

    A page has no image when its ``imageinfo`` is missing (a missing file, or
    a continued answer that did not reach it), when the info has no URL, or
    when the file is not an image (audio, video, PDF).
    """
    config = config or CommonsConfig()
    infos = page.get("imageinfo") or []
    info = infos[0] if infos else {}
    original_url = info.get("url")
    if not original_url or not _is_image(info, config):
        return None

    meta = info.get("extmetadata") or {}
    title = page.get("title")
    image_url, width, height = original_url, info.get("width"), info.get("height")
    if config.image_size == "thumbnail" and info.get("thumburl"):
        image_url = info["thumburl"]
        width, height = info.get("thumbwidth"), info.get("thumbheight")

    return ParsedResult(
        rank=rank,
        image_url=image_url,
        page_url=(
            info.get("descriptionurl")
            or info.get("descriptionshorturl")
            or _page_url(title)
        ),
        title=_description(meta, title),
        thumbnail_url=info.get("thumburl"),
        width=width or None,
        height=height or None,
        license=_meta(meta, "LicenseShortName") or _meta(meta, "LicenseUrl"),
        author=_meta(meta, "Artist"),
    )


def plain_text(html: str) -> str:
    """The text of an HTML fragment: tags dropped, entities decoded, white
    space collapsed. Block tags (``<br>``, ``<p>``, ``<div>``, ``<li>``) part
    words."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    return " ".join("".join(parser.parts).split())


def merge_pages(
    into: dict[str, dict[str, Any]], answer: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Merge the pages of one answer into those of earlier answers.

    A continued answer may carry more properties of pages already seen; lists
    (``imageinfo``) are extended, other values kept from the first answer.
    Pages are keyed by page id (by title for missing files, which have none).
    """
    pages = (answer.get("query") or {}).get("pages") or {}
    for page in pages.values() if isinstance(pages, Mapping) else pages:
        key = str(page.get("pageid") or page.get("title"))
        merged = into.setdefault(key, {})
        for name, value in page.items():
            if isinstance(value, list) and isinstance(merged.get(name), list):
                merged[name] = merged[name] + value
            else:
                merged.setdefault(name, value)
    return into


@dataclass
class _Gathered:
    """The merged pages of one request and its continuations, the title
    normalisations the API reported, and how the first answer went."""

    outcome: SearchOutcome
    pages: dict[str, dict[str, Any]] = field(default_factory=dict)
    normalized: dict[str, str] = field(default_factory=dict)

    def pages_by_title(self) -> dict[str, dict[str, Any]]:
        """Pages keyed by the titles that were asked for, as far as known."""
        by_title = {
            page["title"]: page for page in self.pages.values() if "title" in page
        }
        for asked, title in self.normalized.items():
            if title in by_title:
                by_title[asked] = by_title[title]
        return by_title


def _imageinfo_params(config: CommonsConfig) -> dict[str, str]:
    return {
        "prop": "imageinfo",
        "iiprop": "url|size|mime|extmetadata",
        "iiurlwidth": str(config.thumb_width_px),
        "iiextmetadatafilter": "|".join(EXTMETADATA_FIELDS),
        "iiextmetadatalanguage": config.language,
        "format": "json",
    }


async def _gather(
    params: Mapping[str, str], fetcher: Fetcher, config: CommonsConfig, *, wanted: int
) -> _Gathered:
    """Ask, then follow ``continue`` until ``wanted`` pages carry an image.

    The outcome describes the first answer. A failure after it keeps the
    pages gathered so far and notes the failure in the outcome's ``error``.
    """
    gathered: _Gathered | None = None
    continuation: dict[str, str] = {}

    for _ in range(max(1, config.max_requests)):
        url = api_url(config.api_url, {**params, **continuation})
        response = await fetcher.fetch(url, purpose="api")
        answer, failure = _answer(response)
        if failure is not None:
            if gathered is None:
                return _Gathered(failure)
            gathered.outcome = _noting(gathered.outcome, failure)
            break

        gathered = gathered or _Gathered(outcome_of(response, "ok"))
        merge_pages(gathered.pages, answer)
        for item in (answer.get("query") or {}).get("normalized") or []:
            gathered.normalized[item["from"]] = item["to"]

        continuation = {
            str(k): str(v) for k, v in (answer.get("continue") or {}).items()
        }
        num_images = sum(
            1 for page in gathered.pages.values() if _has_image(page, config)
        )
        if not continuation or num_images >= wanted:
            break

    assert gathered is not None  # the loop runs at least once
    return gathered


def _answer(response: Response) -> tuple[dict[str, Any], SearchOutcome | None]:
    """The decoded answer, or the outcome of a failed one.

    MediaWiki reports errors inside a 200 answer as ``{"error": {"code",
    "info"}}``; rate limiting and replication lag mean ``blocked``.
    """
    if response.status == 429:
        return {}, outcome_of(response, "blocked", "http_429 (rate limited)")
    if response.error is not None:
        return {}, outcome_of(response, "error", response.error)
    if not response.ok:
        return {}, outcome_of(response, "error", f"http_{response.status}")
    try:
        answer = json.loads(response.body)
    except ValueError as exc:
        return {}, outcome_of(response, "error", f"invalid_json: {exc}")
    if not isinstance(answer, dict):
        return {}, outcome_of(response, "error", "invalid_json: not an object")

    error = answer.get("error")
    if isinstance(error, Mapping):
        code = str(error.get("code", "unknown"))
        status: SearchStatus = "blocked" if code in _THROTTLE_CODES else "error"
        return {}, outcome_of(response, status, f"{code}: {error.get('info', '')}")
    if "warnings" in answer:
        log.debug("commons warnings for %s: %s", response.url, answer["warnings"])
    return answer, None


def _noting(outcome: SearchOutcome, failure: SearchOutcome) -> SearchOutcome:
    """The outcome of the first answer, noting that a later request failed."""
    note = f"stopped early, {failure.status} at {failure.url}: {failure.error}"
    return replace(outcome, error=note)


def _finish(
    outcome: SearchOutcome,
    pages: Sequence[Mapping[str, Any]],
    config: CommonsConfig,
    *,
    limit: int,
) -> SearchOutcome:
    """The outcome with the results of ``pages``, ranked from 1, at most
    ``limit``; status ``empty`` when no page has an image."""
    results: list[ParsedResult] = []
    for page in pages:
        if len(results) >= limit:
            break
        result = page_result(page, rank=len(results) + 1, config=config)
        if result is not None:
            results.append(result)

    num_skipped = len(pages) - len(results)
    if num_skipped:
        log.debug("commons: %d pages without a usable image", num_skipped)
    status: SearchStatus = "ok" if results else "empty"
    return replace(outcome, status=status, results=results)


def _has_image(page: Mapping[str, Any], config: CommonsConfig) -> bool:
    infos = page.get("imageinfo") or []
    return bool(infos) and bool(infos[0].get("url")) and _is_image(infos[0], config)


def _is_image(info: Mapping[str, Any], config: CommonsConfig) -> bool:
    """Whether an imageinfo describes a raster image: by its mime type, or
    where the answer has none, by the extension of its URL."""
    mime = info.get("mime")
    if mime:
        return str(mime).lower() in config.mime_types
    path = urlsplit(str(info.get("url", ""))).path.lower()
    return not any(path.endswith(extension) for extension in _NOT_IMAGE_EXTENSIONS)


def _meta(meta: Mapping[str, Any], name: str) -> str | None:
    """One extmetadata field as plain text, None when absent or empty."""
    entry = meta.get(name)
    value = entry.get("value") if isinstance(entry, Mapping) else None
    if value is None:
        return None
    text = plain_text(str(value))
    return text or None


def _description(meta: Mapping[str, Any], title: str | None) -> str | None:
    """The file's description; its object name or file title where the
    description is missing or a camera's default."""
    description = _meta(meta, "ImageDescription")
    if description and description.lower() not in _CAMERA_DESCRIPTIONS:
        return description
    name = _meta(meta, "ObjectName")
    if name:
        return name
    if not title:
        return description
    stem = title.removeprefix("File:")
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def _page_url(title: str | None) -> str | None:
    """The description page of a file title, where the answer gives none."""
    if not title:
        return None
    return FILE_PAGE_URL + quote(title.replace(" ", "_"), safe=":/(),'!*")


class _TextParser(HTMLParser):
    """Collects the text of an HTML fragment; block tags become spaces."""

    _BLOCK_TAGS = frozenset({"br", "p", "div", "li", "ul", "ol", "tr", "td", "th"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)
