"""iNaturalist as an image source for taxa, through its public API (v1).

A search is two steps: find the taxon by its name (``/taxa`` or
``/taxa/autocomplete``), then take the photos of research-grade observations
of it (``/observations``), best voted first, under the licenses the config
allows. Each photo becomes one result: the photo at the configured size, the
observation's page, the taxon's scientific and common name as title, the
photographer's attribution and the photo's license code.

The API serves every photo at several sizes whose URLs differ only in the
size word (``.../photos/ID/square.jpg`` becomes ``.../original.jpg``); answers
carry the ``square`` URL. Answers come through a :class:`~crawl.web.Fetcher`,
so they are archived (or replayed); URLs keep their parameters in a fixed
order, so a rerun asks for the same URLs. The API asks clients for about one
request a second at most; pacing requests is the fetcher's work.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote, urlencode

from crawl.engines.base import (
    ParsedResult,
    SearchOutcome,
    SearchStatus,
    outcome_of,
)
from crawl.web import Fetcher, Response

log = logging.getLogger(__name__)

ENGINE = "inaturalist"
DEFAULT_API_URL = "https://api.inaturalist.org/v1"
DEFAULT_SITE_URL = "https://www.inaturalist.org"

# Creative Commons codes as iNaturalist spells them. The no-derivatives
# licenses are left out by default: a resized crop used for training is
# arguably a derivative.
DEFAULT_LICENSES = ("cc0", "cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nc-sa")

PhotoSize = Literal["original", "large", "medium", "small", "thumb", "square"]

# The longest side of each served size, in pixels; originals are stored with
# at most 2048 px on the longest side, and "square" is cropped to 75 x 75.
_SIZE_LONGEST_PX = {"large": 1024, "medium": 500, "small": 240, "thumb": 100}
_SQUARE_PX = 75

_SIZE_IN_URL = re.compile(r"/square(\.\w+)")


@dataclass(frozen=True)
class INaturalistConfig:
    """How to ask iNaturalist.

    ``licenses`` are photo license codes (``cc0``, ``cc-by``, ...);
    ``taxon_lookup`` "taxa" asks ``/taxa?q=`` and "autocomplete" asks
    ``/taxa/autocomplete?q=``. With ``exact_name`` only a taxon whose
    scientific name (or, failing that, common name) equals the query is
    taken; otherwise the API's first taxon is.
    """

    api_url: str = DEFAULT_API_URL
    site_url: str = DEFAULT_SITE_URL
    licenses: tuple[str, ...] = DEFAULT_LICENSES
    quality_grade: str = "research"
    photo_size: PhotoSize = "original"
    order_by: str = "votes"
    per_page: int = 50  # observations per request; the API allows 200
    max_requests: int = 5  # observation pages per search
    photos_per_observation: int = 1  # the first photos; later ones often repeat
    taxon_lookup: Literal["taxa", "autocomplete"] = "taxa"
    exact_name: bool = True
    locale: str = "en"  # language of the common names


async def search(
    query_text: str,
    fetcher: Fetcher,
    *,
    limit: int,
    rank: str | None = None,
    taxon_id: int | None = None,
    config: INaturalistConfig | None = None,
) -> SearchOutcome:
    """Photos of the taxon named ``query_text`` (at ``rank``, when given).

    Pass ``taxon_id`` (Wikidata's P3151) to skip the name lookup. Returns at
    most ``limit`` results; status ``empty`` when no taxon has the name or no
    observation has a photo under the allowed licenses, ``blocked`` when the
    API rate-limits, ``error`` with the API's message when it refuses.
    """
    config = config or INaturalistConfig()
    if taxon_id is None:
        taxon, outcome = await find_taxon(query_text, fetcher, rank=rank, config=config)
        if taxon is None:
            return outcome
        taxon_id = int(taxon["id"])

    return await _observation_photos(taxon_id, fetcher, limit=limit, config=config)


async def find_taxon(
    name: str,
    fetcher: Fetcher,
    *,
    rank: str | None = None,
    config: INaturalistConfig | None = None,
) -> tuple[dict[str, Any] | None, SearchOutcome]:
    """The taxon called ``name``, and the outcome of the lookup.

    The taxon is None when the lookup failed or found no taxon of that name;
    the outcome then says which (``empty``, ``blocked`` or ``error``).
    """
    config = config or INaturalistConfig()
    url = taxa_url(name, config, rank=rank)
    answer, outcome = _answer(await fetcher.fetch(url, purpose="api"))
    if outcome.status != "ok":
        return None, outcome

    taxon = pick_taxon(answer.get("results") or [], name, config=config)
    if taxon is None:
        return None, replace(outcome, status="empty", error=f"no taxon named {name!r}")
    return taxon, outcome


def taxa_url(name: str, config: INaturalistConfig, *, rank: str | None = None) -> str:
    """The URL that looks a taxon up by name."""
    path = "taxa/autocomplete" if config.taxon_lookup == "autocomplete" else "taxa"
    params = {"q": name, "rank": rank, "is_active": "true", "locale": config.locale}
    return _url(config.api_url, path, params)


def observations_url(
    taxon_id: int, config: INaturalistConfig, *, page: int = 1, per_page: int = 50
) -> str:
    """The URL of one page of observations of a taxon that have photos."""
    params = {
        "taxon_id": str(taxon_id),
        "quality_grade": config.quality_grade or None,
        "photos": "true",
        "photo_license": ",".join(config.licenses) or None,
        "order_by": config.order_by,
        "order": "desc",
        "locale": config.locale,
        "per_page": str(per_page),
        "page": str(page),
    }
    return _url(config.api_url, "observations", params)


def pick_taxon(
    taxa: Sequence[Mapping[str, Any]], name: str, *, config: INaturalistConfig
) -> dict[str, Any] | None:
    """The taxon of ``taxa`` that ``name`` means.

    A name search also returns taxa whose names merely start alike
    ("Nicrophorus vespillo" finds "Nicrophorus vespilloides" first), so the
    scientific name must match exactly, case aside; failing that, the common
    name. Without ``exact_name`` the API's first taxon is taken.
    """
    wanted = name.casefold().strip()
    for field in ("name", "preferred_common_name", "matched_term"):
        for taxon in taxa:
            if str(taxon.get(field) or "").casefold() == wanted:
                return dict(taxon)
    if taxa and not config.exact_name:
        return dict(taxa[0])
    return None


def photo_results(
    observations: Sequence[Mapping[str, Any]],
    *,
    config: INaturalistConfig,
    first_rank: int = 1,
) -> list[ParsedResult]:
    """The results of the photos of ``observations``, ranked from
    ``first_rank``.

    Photos whose license is not allowed (an observation may mix licenses),
    flagged photos and observations of another quality grade are skipped,
    even though the request already asked the API to leave them out.
    """
    results: list[ParsedResult] = []
    for observation in observations:
        grade = observation.get("quality_grade")
        if config.quality_grade and grade and grade != config.quality_grade:
            continue
        photos = [photo for photo in _photos(observation) if _usable(photo, config)]
        for photo in photos[: config.photos_per_observation]:
            rank = first_rank + len(results)
            results.append(_photo_result(observation, photo, rank, config))
    return results


def photo_url(square_url: str, size: PhotoSize) -> str:
    """The URL of a photo at ``size``, from the ``square`` URL answers carry."""
    return _SIZE_IN_URL.sub(lambda match: f"/{size}{match.group(1)}", square_url, 1)


def served_size(
    width: int | None, height: int | None, size: PhotoSize
) -> tuple[int | None, int | None]:
    """The pixel size of a photo served at ``size``, from its original size.

    Smaller sizes fit the longest side into their bound and never enlarge.
    """
    if size == "square":
        return _SQUARE_PX, _SQUARE_PX
    if not width or not height or size == "original":
        return width or None, height or None
    scale = min(1.0, _SIZE_LONGEST_PX[size] / max(width, height))
    return round(width * scale), round(height * scale)


async def _observation_photos(
    taxon_id: int, fetcher: Fetcher, *, limit: int, config: INaturalistConfig
) -> SearchOutcome:
    """Page through the observations of a taxon until ``limit`` photos.

    The outcome describes the first answer; a failure after it keeps the
    results so far and says so in ``error``.
    """
    per_page = max(1, min(config.per_page, 200))
    results: list[ParsedResult] = []
    first: SearchOutcome | None = None

    for page in range(1, max(1, config.max_requests) + 1):
        url = observations_url(taxon_id, config, page=page, per_page=per_page)
        answer, outcome = _answer(await fetcher.fetch(url, purpose="api"))
        if outcome.status != "ok":
            if first is None:
                return outcome
            note = f"stopped early, {outcome.status} at {url}: {outcome.error}"
            first = replace(first, error=note)
            break
        first = first or outcome

        observations = answer.get("results") or []
        first_rank = len(results) + 1
        results += photo_results(observations, config=config, first_rank=first_rank)
        num_seen = (page - 1) * per_page + len(observations)
        if len(results) >= limit or num_seen >= int(answer.get("total_results") or 0):
            break
        if not observations:
            break

    assert first is not None  # the loop runs at least once
    results = results[:limit]
    status: SearchStatus = "ok" if results else "empty"
    return replace(first, status=status, results=results)


def _photos(observation: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The photos of an observation, in their order on the observation."""
    photos = observation.get("photos")
    if photos:
        return list(photos)
    linked = observation.get("observation_photos") or []
    ordered = sorted(linked, key=lambda item: item.get("position") or 0)
    return [item["photo"] for item in ordered if item.get("photo")]


def _usable(photo: Mapping[str, Any], config: INaturalistConfig) -> bool:
    if not photo.get("url") or photo.get("license_code") not in config.licenses:
        return False
    flags = photo.get("flags") or []
    return not any(not flag.get("resolved") for flag in flags)


def _photo_result(
    observation: Mapping[str, Any],
    photo: Mapping[str, Any],
    rank: int,
    config: INaturalistConfig,
) -> ParsedResult:
    taxon = observation.get("taxon") or {}
    dimensions = photo.get("original_dimensions") or {}
    width, height = served_size(
        dimensions.get("width"), dimensions.get("height"), config.photo_size
    )
    page_url = observation.get("uri") or (
        f"{config.site_url}/observations/{observation.get('id')}"
    )
    return ParsedResult(
        rank=rank,
        image_url=photo_url(photo["url"], config.photo_size),
        page_url=page_url,
        title=taxon_title(taxon),
        thumbnail_url=photo_url(photo["url"], "medium"),
        width=width,
        height=height,
        license=photo.get("license_code"),
        author=photo.get("attribution"),
    )


def taxon_title(taxon: Mapping[str, Any]) -> str | None:
    """``Danaus plexippus (Monarch)``: the scientific name, and the common
    name where there is one."""
    name = taxon.get("name")
    common = taxon.get("preferred_common_name")
    if name and common and common.casefold() != name.casefold():
        return f"{name} ({common})"
    return name or common or None


def _url(api_url: str, path: str, params: Mapping[str, str | None]) -> str:
    kept = {key: value for key, value in params.items() if value is not None}
    return f"{api_url.rstrip('/')}/{path}?{urlencode(kept, quote_via=quote)}"


def _answer(response: Response) -> tuple[dict[str, Any], SearchOutcome]:
    """The decoded answer and an ``ok`` outcome, or an empty dict and the
    outcome of a failed answer.

    iNaturalist refuses a request with an HTTP error and a JSON body
    (``{"error": ..., "status": ...}``), whose message the outcome keeps.
    """
    if response.status == 429:
        return {}, outcome_of(response, "blocked", "http_429 (rate limited)")
    if response.error is not None:
        return {}, outcome_of(response, "error", response.error)

    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    answer = answer if isinstance(answer, dict) else None
    message = _error_message(answer.get("error")) if answer else ""

    if not response.ok:
        detail = f"http_{response.status}" + (f": {message}" if message else "")
        return {}, outcome_of(response, "error", detail)
    if answer is None:
        return {}, outcome_of(response, "error", "invalid_json: not a JSON object")
    if message:
        return {}, outcome_of(response, "error", message)
    return answer, outcome_of(response, "ok")


def _error_message(error: Any) -> str:
    """The message of an ``error`` field: a string, or an object whose
    ``original.error`` or ``message`` says what went wrong."""
    if isinstance(error, Mapping):
        original = error.get("original")
        if isinstance(original, Mapping) and original.get("error"):
            return str(original["error"])
        return str(error.get("message") or json.dumps(error))
    return str(error) if error else ""
