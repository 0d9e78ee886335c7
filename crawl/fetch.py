"""The polite asynchronous fetcher: record answers into the archive, or replay them.

:class:`HttpFetcher` implements ``crawl.web.Fetcher``. In ``record`` mode it
gets each URL over HTTP with aiohttp and writes every answer it receives (each
redirect hop, each retried attempt, robots.txt) to the archive before looking
at it. In ``replay`` mode it answers only from the archive's latest record for
each URL and never opens a socket; the same checks run on the recorded answer,
so a replay gives the same bodies and the same verdicts as the recording.

Politeness and safety, all set in :class:`FetchConfig`:

- a global cap on requests in flight, and per host a cap and a minimum time
  between request starts (raised by a robots.txt ``Crawl-delay``, up to a cap);
- robots.txt, fetched once per host (scheme, name and port) and honoured for
  the crawler's product token; RFC 9309 for hosts whose robots.txt fails;
- ``X-Robots-Tag`` opt-outs (``noai``, ``noimageai``, ``noindex``,
  ``noimageindex``, ``none``) on images: error ``x_robots_tag``. The answer is
  recorded with its headers only (``WARC-Truncated: unspecified``): the archive
  shows why the image is missing without keeping what the publisher withheld;
- retries with exponential backoff for 408, 429, 5xx (500, 502, 503, 504),
  timeouts, dropped connections and cut-off bodies; ``Retry-After`` (seconds
  or an HTTP date) wins, capped by ``max_backoff_s``, and holds back the
  whole host;
- connect, read and total timeouts; a body size limit (``too_large``; the
  answer is recorded with headers only, ``WARC-Truncated: length``);
- for images, a check of the first bytes (``not_an_image``), since servers
  send HTML error pages as ``image/jpeg``;
- no connection to private, loopback, link-local, multicast or reserved
  addresses (``private_address``), checked for every resolved address of every
  hop, unless ``allow_hosts``/``allow_networks``/``allow_private`` say so.

Failures come back as a :class:`~crawl.web.Response` with ``error`` set:
``http_NNN``, ``timeout``, ``connection_error``, ``dns_error``, ``tls_error``,
``bad_response``, ``truncated_body``, ``too_large``, ``not_an_image``,
``too_many_redirects``, ``robots_disallowed``, ``robots_unreachable``,
``x_robots_tag``, ``private_address``, ``invalid_url``,
``unsupported_scheme``, ``not_in_archive`` (replay). :data:`RETRYABLE_ERRORS`
says which of them a later run may try again. Only a bad configuration
(:class:`~kg.errors.ConfigError`) or an archive that cannot be written
(``OSError``) raises.

aiohttp rather than httpx: from the fixture server (tests/crawl/fixture_web.py,
2,000 small JPEGs, client on one core) aiohttp's bare client fetched about
1,400 images a second and httpx's about 200; and aiohttp's resolver hook lets
the address guard check the very addresses a connection is made to.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import mimetypes
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy

from crawl.archive import (
    TRUNCATED_DISCONNECT,
    TRUNCATED_LENGTH,
    TRUNCATED_WITHHELD,
    decode_body,
)
from crawl.politeness import (
    ALLOW_ALL,
    AddressGuard,
    HostGate,
    PrivateAddressError,
    RobotsVerdict,
    as_tuple,
    ip_literal,
    product_token,
    robots_verdict,
    x_robots_opt_out,
)
from crawl.web import Archive, Purpose, Response
from kg.errors import ConfigError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MODES = ("record", "replay")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Answers a server gives when busy or briefly broken; asking again may work.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Failures without an HTTP status that asking again may cure.
RETRY_ERRORS = frozenset({"timeout", "connection_error", "truncated_body"})
# Errors a later run may retry (the downloader's attempt budget decides);
# every other error is permanent: asking again gives the same answer.
RETRYABLE_ERRORS = RETRY_ERRORS | {
    "dns_error",
    "robots_unreachable",
    "not_in_archive",  # a replay lacked it; a recording run may fetch it
    *(f"http_{s}" for s in RETRY_STATUSES),
}
_ACCEPT = {
    "image": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
    "page": "text/html,application/xhtml+xml,*/*;q=0.8",
    "api": "application/json,*/*;q=0.8",
    "robots": "text/plain,*/*;q=0.8",
}
# Brands of the ISO base media file format that hold a still image.
_HEIF_BRANDS = frozenset(
    {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
    | {b"mif1", b"msf1"}
)


@dataclass
class FetchConfig:
    """How the fetcher behaves; the defaults are those of a polite crawler.

    Attributes:
        mode: ``record`` (fetch over the network and archive every answer) or
            ``replay`` (answer from the archive only; nothing is sent).
        contact: an e-mail address or URL named in the User-Agent, so that a
            site's operator can reach whoever runs the crawl.
        user_agent: the whole User-Agent; empty: ``kgclip/0.1 (+mailto:...)``.
        max_connections: requests in flight at once, all hosts together.
        per_host_connections: requests in flight at once to one host.
        host_delay_s: minimum seconds between request starts on one host.
        max_crawl_delay_s: a robots.txt ``Crawl-delay`` raises the host's
            delay up to this many seconds.
        connect_timeout_s, read_timeout_s, total_timeout_s: seconds to
            connect, to wait for the next bytes, and for a whole request.
        max_attempts: tries per URL (per redirect hop) for retryable failures.
        backoff_s: first wait before a retry; doubles each time.
        max_backoff_s: cap on any wait before a retry, ``Retry-After`` too.
        max_body_bytes: larger bodies are dropped (error ``too_large``).
        max_redirects: redirect hops followed (``too_many_redirects`` beyond).
        robots: honour robots.txt for the purposes in ``robots_purposes``;
            API calls are exempt by default, as an API invites programs.
        x_robots_tag: honour ``X-Robots-Tag`` opt-outs for the purposes in
            ``x_robots_purposes`` (images: result pages of search engines say
            ``noindex`` about themselves, which is no opt-out of their images).
        x_robots_directives: the directives that count as an opt-out.
        allow_private: connect to any address, private ones included.
        allow_hosts: host names (or IP literals) exempt from the address check.
        allow_networks: networks (CIDR) whose addresses may be reached.
        check_image: for images, require image magic bytes.
        robots_cache_hosts: robots.txt files kept in memory at once.
        file_roots: folders whose files may be read through ``file://`` URLs
            (a local collection); each read is archived like an answer.
    """

    mode: str = "record"
    contact: str = "nobody@example.org"
    user_agent: str = ""
    max_connections: int = 64
    per_host_connections: int = 2
    host_delay_s: float = 1.0
    max_crawl_delay_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 120.0
    max_attempts: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_body_bytes: int = 32 * MIB
    max_redirects: int = 5
    robots: bool = True
    robots_purposes: Sequence[str] = ("page", "image")
    x_robots_tag: bool = True
    x_robots_directives: Sequence[str] = (
        "noai",
        "noimageai",
        "noindex",
        "noimageindex",
        "none",
    )
    x_robots_purposes: Sequence[str] = ("image",)
    allow_private: bool = False
    allow_hosts: Sequence[str] = ()
    allow_networks: Sequence[str] = ()
    check_image: bool = True
    robots_cache_hosts: int = 10_000
    file_roots: Sequence[str] = ()

    def __post_init__(self) -> None:
        # Hydra hands lists; keep tuples so the config stays hashable.
        for name in (
            "robots_purposes",
            "x_robots_directives",
            "x_robots_purposes",
            "allow_hosts",
            "allow_networks",
            "file_roots",
        ):
            setattr(self, name, as_tuple(getattr(self, name)))
        if self.mode not in MODES:
            raise ConfigError(
                f"fetch mode {self.mode!r} is unknown; use one of {', '.join(MODES)}"
            )
        if not self.user_agent:
            self.user_agent = f"kgclip/0.1 (+{_contact_link(self.contact)})"
        self._check_numbers()

    def _check_numbers(self) -> None:
        positive: tuple[str, ...] = ("max_connections", "per_host_connections")
        positive += ("max_attempts", "max_body_bytes", "robots_cache_hosts")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"fetch.{name} must be at least 1")
        for name in ("host_delay_s", "backoff_s", "max_backoff_s", "max_redirects"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fetch.{name} must not be negative")
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fetch.{name} must be positive")

    @property
    def agent(self) -> str:
        """The product token robots.txt and X-Robots-Tag rules name us by."""
        return product_token(self.user_agent)


def _contact_link(contact: str) -> str:
    contact = contact.strip()
    if contact.startswith(("http://", "https://", "mailto:")):
        return contact
    if "@" in contact and " " not in contact:
        return f"mailto:{contact}"
    raise ConfigError(
        f"contact {contact!r} is neither an e-mail address nor a URL; set "
        "contact=you@example.org so site operators can reach you"
    )


def image_kind(body: bytes) -> str | None:
    """The image format the first bytes announce, or None when none does.

    Knows JPEG, PNG, GIF, WebP, BMP, TIFF and the HEIF family (AVIF, HEIC).
    """
    head = body[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        # the major brand at 8, then compatible brands up to the box's end
        box_end = min(int.from_bytes(head[:4], "big"), len(head))
        brands = {head[i : i + 4] for i in range(8, box_end - 3, 4)}
        if brands & _HEIF_BRANDS:
            return "avif" if brands & {b"avif", b"avis"} else "heif"
    return None


def is_retryable(error: str | None) -> bool:
    """Whether a later run may try a URL that failed with ``error`` again."""
    return error is not None and error in RETRYABLE_ERRORS


def now_iso() -> str:
    """Now, UTC, to the microsecond: ``2026-12-03T19:43:26.952674+00:00``."""
    now = time.time()
    second = int(now)
    return f"{_iso_up_to_second(second)}.{int((now - second) * 1e6):06d}+00:00"


@functools.lru_cache(maxsize=4)
def _iso_up_to_second(second: int) -> str:
    # Formatting a datetime took 2 µs an answer; this way it runs once a second.
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]


class _GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing hosts with any address the guard rejects.

    Checking here, rather than before the request, checks the addresses the
    connection is then made to: a second DNS answer cannot slip past.
    """

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: Any = 0
    ) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        self._guard.check(host, (info["host"] for info in infos))
        return infos

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class _Site:
    """What the fetcher works out once per scheme and authority of its URLs
    (``https://example.org:8443``), instead of parsing every URL again for
    each check.

    ``refusal`` says why no URL of the site may be asked (``invalid_url``,
    ``unsupported_scheme``, ``private_address``); the other fields are set
    when it is None: the origin robots.txt lives under, the Host header, and
    the gate of the host (name and port).
    """

    refusal: str | None
    origin: str = ""
    host_header: str = ""
    gate: HostGate | None = None


@dataclass(frozen=True)
class _Kept:
    """An answer as it came, before it is archived and judged."""

    url: str
    answer: aiohttp.ClientResponse
    headers: CIMultiDictProxy[str]  # the answer's, names in lower case
    sent: Mapping[str, str]  # the request's headers
    raw: bytes  # the body as it came, up to the size limit
    truncated: str | None  # WARC-Truncated reason
    fetched: str
    read_error: str | None = None  # why reading the body stopped early


# Sites kept worked out; past this many the cache starts again (the gates,
# which hold each host's timing, are kept apart and stay).
_MAX_SITES = 100_000


@dataclass
class FetchStats:
    """Counts of what a fetcher did: requests sent, answers replayed, robots.txt
    files fetched."""

    requests: int = 0
    replayed: int = 0
    robots_fetched: int = 0


class HttpFetcher:
    """Gets URLs politely, archiving every answer, or replays the archive.

    Use it as ``async with HttpFetcher(config, archive) as fetcher:``; one
    instance serves one event loop. ``fetch`` never raises for a failed URL.
    """

    def __init__(self, config: FetchConfig, archive: Archive) -> None:
        self.config = config
        self.archive = archive
        self.stats = FetchStats()
        self._agent = config.agent  # worked out of the User-Agent once
        self._guard = AddressGuard(
            allow_private=config.allow_private,
            allow_hosts=config.allow_hosts,
            allow_networks=config.allow_networks,
        )
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.max_connections)
        self._gates: dict[str, HostGate] = {}
        self._sites: dict[str, _Site] = {}
        self._robots: OrderedDict[str, asyncio.Future[RobotsVerdict]] = OrderedDict()

    async def __aenter__(self) -> HttpFetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; a later fetch opens new ones."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one URL, hop by hop ------------------------------------------------

    async def fetch(
        self,
        url: str,
        *,
        purpose: Purpose = "image",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Get ``url`` following redirects; the final answer or the failure.

        ``url`` and ``final_url`` of the result are the URL asked and the last
        hop's; ``attempts`` counts the requests tried, retries included;
        ``location`` is where the final answer lies in the archive.
        """
        if url.startswith("file:"):
            if self.config.mode == "replay":
                return self._replay(url, purpose)
            return self._read_file(url, purpose)
        current, attempts = url, 0
        for _hop in range(self.config.max_redirects + 1):
            site = self._site(current)
            refusal = site.refusal
            if refusal is None and purpose in self._robots_purposes():
                refusal = await self._robots_refusal(current, site)
            if refusal is not None:
                return _failure(url, current, refusal, attempts)

            answer = await self._hop(current, site, purpose, headers)
            attempts += answer.attempts
            target = _redirect_target(current, answer)
            if target is None:
                if (answer.url, answer.final_url, answer.attempts) == (
                    url,
                    current,
                    attempts,
                ):
                    return answer  # no redirect: nothing to change, no copy
                return replace(answer, url=url, final_url=current, attempts=attempts)
            current = target
        return _failure(url, current, "too_many_redirects", attempts)

    def _read_file(self, url: str, purpose: Purpose) -> Response:
        """A file of a local collection, archived as if a server had sent it.

        Only files under ``file_roots`` are read, so a result can never make
        the crawl archive an arbitrary file of the machine.
        """
        path = Path(url2pathname(urlsplit(url).path)).resolve()
        roots = [Path(root).resolve() for root in self.config.file_roots]
        if not any(path.is_relative_to(root) for root in roots):
            return _failure(url, url, "file_not_allowed", 1)
        try:
            body = path.read_bytes()
        except OSError as exc:
            log.debug("%s: %s", url, exc)
            return _failure(url, url, "file_unreadable", 1)
        if len(body) > self.config.max_body_bytes:
            return _failure(url, url, "too_large", 1)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"content-type": kind, "content-length": str(len(body))}
        location = self.archive.record(url, 200, headers, body)
        error = self._verdict(200, _lower_headers(headers), body, None, purpose)
        return Response(
            url=url,
            final_url=url,
            status=200,
            headers=headers,
            body=body,
            error=error,
            location=location,
            fetched=now_iso(),
        )

    def _site(self, url: str) -> _Site:
        """The site of a URL, worked out on its first URL."""
        prefix = _site_prefix(url)
        if prefix is None:  # no authority: never asked, so not worth keeping
            return self._new_site(url)
        site = self._sites.get(prefix)
        if site is None:
            if len(self._sites) >= _MAX_SITES:
                self._sites.clear()
            site = self._sites[prefix] = self._new_site(prefix)
        return site

    def _new_site(self, prefix: str) -> _Site:
        try:
            parsed = yarl.URL(prefix)
            host, key = parsed.host, f"{parsed.host}:{parsed.port}"
            origin, host_header = str(parsed.origin()), parsed.host_port_subcomponent
        except ValueError:
            return _Site("invalid_url")
        if parsed.scheme not in ("http", "https"):
            return _Site("unsupported_scheme")
        if not host:
            return _Site("invalid_url")
        if self._refuses_address(host):
            return _Site("private_address")
        return _Site(None, origin, host_header or "", self._gate(key))

    def _refuses_address(self, host: str) -> bool:
        # aiohttp connects to an IP literal without asking the resolver. A
        # replay connects nowhere, so the guard has nothing to guard there.
        ip = ip_literal(host)
        if self.config.mode == "replay" or ip is None:
            return False
        return not self._guard.allows(host, str(ip))

    async def _hop(
        self,
        url: str,
        site: _Site,
        purpose: Purpose,
        headers: Mapping[str, str] | None,
    ) -> Response:
        if self.config.mode == "replay":
            return self._replay(url, purpose)
        return await self._request_with_retries(url, site, purpose, headers)

    # -- replay -------------------------------------------------------------

    def _replay(self, url: str, purpose: Purpose) -> Response:
        recorded = self.archive.lookup(url)
        if recorded is None:
            return _failure(url, url, "not_in_archive", 0)
        self.stats.replayed += 1
        error = self._verdict(
            recorded.status,
            recorded.headers,
            recorded.body,
            recorded.truncated,
            purpose,
        )
        return replace(recorded, url=url, final_url=url, error=error, attempts=1)

    # -- record: retries around one request ---------------------------------

    async def _request_with_retries(
        self,
        url: str,
        site: _Site,
        purpose: Purpose,
        headers: Mapping[str, str] | None,
    ) -> Response:
        gate = site.gate
        assert gate is not None  # a site that is not refused has one
        attempt = 0
        while True:
            attempt += 1
            # The host's slot, then the crawl's, then the host's turn: taken
            # last, the turn spaces the sends themselves (see HostGate).
            async with gate.slot(), self._slots:
                await gate.turn()
                answer = await self._request(url, site, purpose, headers)
            wait_s = self._retry_wait_s(answer, attempt)
            if wait_s is None:
                if answer.attempts == attempt:
                    return answer
                return replace(answer, attempts=attempt)
            if answer.status in (429, 503):
                gate.defer(wait_s)  # the host asked everyone to wait
            log.debug("retrying %s in %.1f s (%s)", url, wait_s, _why(answer))
            await asyncio.sleep(wait_s)

    def _retry_wait_s(self, answer: Response, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to stop."""
        retry = answer.status in RETRY_STATUSES or answer.error in RETRY_ERRORS
        if not retry or attempt >= self.config.max_attempts:
            return None
        wait_s = retry_after_s(answer.headers.get("retry-after", ""))
        if wait_s is None:
            wait_s = self.config.backoff_s * 2 ** (attempt - 1)
        return min(wait_s, self.config.max_backoff_s)

    def _gate(self, key: str) -> HostGate:
        """The gate of a host, by name and port (``example.org:443``)."""
        gate = self._gates.get(key)
        if gate is None:
            config = self.config
            gate = HostGate(config.per_host_connections, config.host_delay_s)
            self._gates[key] = gate
        return gate

    # -- record: one request ------------------------------------------------

    async def _request(
        self,
        url: str,
        site: _Site,
        purpose: Purpose,
        headers: Mapping[str, str] | None,
    ) -> Response:
        sent = self._request_headers(site, purpose, headers)
        self.stats.requests += 1
        try:
            async with self._open_session().get(
                url, headers=sent, allow_redirects=False
            ) as answer:
                return await self._receive(url, purpose, answer, sent)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("%s: %s: %s", url, type(exc).__name__, exc)
            return _failure(url, url, _error_kind(exc), 1)

    async def _receive(
        self,
        url: str,
        purpose: Purpose,
        answer: aiohttp.ClientResponse,
        sent: Mapping[str, str],
    ) -> Response:
        headers = _lower_headers(answer.headers)
        status = answer.status
        fetched = now_iso()

        # Refuse from the headers alone, before any of the body is read.
        too_large = (answer.content_length or 0) > self.config.max_body_bytes
        if too_large or self._opted_out(status, headers, purpose):
            answer.close()
            reason = TRUNCATED_LENGTH if too_large else TRUNCATED_WITHHELD
            kept = _Kept(url, answer, headers, sent, b"", reason, fetched)
            return self._keep(kept, purpose)

        raw, truncated, error = await self._read_body(answer)
        kept = _Kept(url, answer, headers, sent, raw, truncated, fetched, error)
        return self._keep(kept, purpose)

    def _keep(self, kept: _Kept, purpose: Purpose) -> Response:
        """Archive the answer, then judge it as a replay would."""
        answer, headers, truncated = kept.answer, kept.headers, kept.truncated
        location = self.archive.record(
            kept.url,
            answer.status,
            answer.headers,
            kept.raw,
            request_headers=kept.sent,
            truncated=truncated,
        )
        limit = self.config.max_body_bytes
        body = decode_body(headers.get("content-encoding", ""), kept.raw, limit)
        error = self._verdict(answer.status, headers, body, truncated, purpose)
        if kept.read_error == "timeout":  # the recorded marker reads "disconnect"
            error = kept.read_error
        return Response(
            url=kept.url,
            final_url=kept.url,
            status=answer.status,
            headers=headers,
            body=body if len(body) <= limit else b"",
            error=error,
            location=location,
            fetched=kept.fetched,
            truncated=truncated,
        )

    async def _read_body(
        self, answer: aiohttp.ClientResponse
    ) -> tuple[bytes, str | None, str | None]:
        """(raw body, WARC-Truncated reason, error) read up to the size limit."""
        limit = self.config.max_body_bytes
        content = answer.content
        if content.is_eof() and content.exception() is None:
            # A small body often came whole with the head: take it at once
            # rather than through the chunk iterator.
            raw = content.read_nowait()
            if len(raw) > limit:
                answer.close()
                return b"", TRUNCATED_LENGTH, "too_large"
            return raw, None, None
        pieces: list[bytes] = []
        size = 0
        try:
            async for piece in answer.content.iter_chunked(256 * 1024):
                size += len(piece)
                if size > limit:
                    answer.close()
                    return b"", TRUNCATED_LENGTH, "too_large"
                pieces.append(piece)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # Keep what came: the archive shows how far the server got.
            return b"".join(pieces), TRUNCATED_DISCONNECT, _error_kind(exc)
        return b"".join(pieces), None, None

    def _request_headers(
        self, site: _Site, purpose: Purpose, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        # Every header is set here, so the archived request is what was sent.
        headers = {
            "Host": site.host_header,
            "User-Agent": self.config.user_agent,
            "Accept": _ACCEPT.get(purpose, "*/*"),
            "Accept-Encoding": "gzip, deflate",
        }
        headers.update(extra or {})
        return headers

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            config = self.config
            connector = aiohttp.TCPConnector(
                limit=0,  # the fetcher's own semaphores limit connections
                resolver=_GuardedResolver(self._guard),
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=config.total_timeout_s,
                    sock_connect=config.connect_timeout_s,
                    sock_read=config.read_timeout_s,
                ),
                auto_decompress=False,  # archive the body as it came
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    # -- verdicts shared by record and replay -------------------------------

    def _verdict(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        truncated: str | None,
        purpose: Purpose,
    ) -> str | None:
        """The error an answer amounts to for this purpose, or None."""
        if truncated == TRUNCATED_LENGTH or len(body) > self.config.max_body_bytes:
            return "too_large"
        if truncated == TRUNCATED_DISCONNECT:
            return "truncated_body"
        if self._opted_out(status, headers, purpose):
            return "x_robots_tag"
        if status in REDIRECT_STATUSES and "location" in headers:
            return None
        if not 200 <= status < 300:
            return f"http_{status}"
        if purpose == "image" and self.config.check_image and not image_kind(body):
            return "not_an_image"
        return None

    def _opted_out(
        self, status: int, headers: Mapping[str, str], purpose: Purpose
    ) -> bool:
        config = self.config
        if not config.x_robots_tag or purpose not in config.x_robots_purposes:
            return False
        if not 200 <= status < 300:
            return False
        values = _header_values(headers, "x-robots-tag")
        if not values:
            return False
        found = x_robots_opt_out(values, self._agent, config.x_robots_directives)
        return found is not None

    # -- robots.txt ---------------------------------------------------------

    def _robots_purposes(self) -> Sequence[str]:
        return self.config.robots_purposes if self.config.robots else ()

    async def _robots_refusal(self, url: str, site: _Site) -> str | None:
        verdict = await self._robots_verdict(site.origin)
        if not verdict.allowed(url, self._agent):
            return verdict.error or "robots_disallowed"
        return None

    async def _robots_verdict(self, origin: str) -> RobotsVerdict:
        # One fetch per origin: later callers await the same future. The
        # shield keeps one caller's cancellation from cancelling the others'.
        # Known shortcoming: a verdict, a failed fetch included, holds for the
        # fetcher's life, so a host whose robots.txt timed out once is skipped
        # for the rest of the run (its rows are retryable, so a rerun tries
        # again). Asking again after some minutes would cure it.
        future = self._robots.get(origin)
        if future is not None and future.done() and not future.cancelled():
            self._robots.move_to_end(origin)
            return future.result()  # the common case: no shield, no wait
        if future is None:
            future = asyncio.ensure_future(self._load_robots(origin))
            self._robots[origin] = future
            if len(self._robots) > self.config.robots_cache_hosts:
                self._robots.popitem(last=False)
        else:
            self._robots.move_to_end(origin)
        return await asyncio.shield(future)

    async def _load_robots(self, origin: str) -> RobotsVerdict:
        answer = await self.fetch(origin + "/robots.txt", purpose="robots")
        self.stats.robots_fetched += 1
        if answer.error == "not_in_archive":
            return ALLOW_ALL  # replay of a crawl that did not ask
        if answer.status == 0:
            # No answer at all (no such host, refused, timed out): RFC 9309
            # says disallow, and the URLs fail for the reason the host did.
            verdict = RobotsVerdict(rules=None, allow_all=False, error=answer.error)
        else:
            verdict = robots_verdict(answer.status, answer.body)
        if verdict.error:
            log.info("%s/robots.txt: %s; fetching nothing there", origin, _why(answer))
        delay_s = verdict.crawl_delay_s(self._agent)
        gate = self._site(origin).gate
        if delay_s and gate is not None:
            # The gate outlives the verdict in the cache, so once is enough.
            gate.slow_down(min(delay_s, self.config.max_crawl_delay_s))
        return verdict


def retry_after_s(value: str) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay or HTTP date)."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _redirect_target(url: str, answer: Response) -> str | None:
    if answer.error is not None or answer.status not in REDIRECT_STATUSES:
        return None
    location = answer.headers.get("location", "")
    return urljoin(url, location.strip()) if location.strip() else None


def _error_kind(exc: BaseException) -> str:
    """A short name for why a request failed without an HTTP answer."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, PrivateAddressError):
            return "private_address"
        return "dns_error"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls_error"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid_url"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated_body"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "bad_response"  # the answer was not valid HTTP
    return "connection_error"


def _failure(url: str, final_url: str, error: str, attempts: int) -> Response:
    return Response(
        url=url,
        final_url=final_url,
        status=0,
        error=error,
        attempts=attempts,
        fetched=now_iso(),
    )


def _lower_headers(headers: Mapping[str, str]) -> CIMultiDictProxy[str]:
    # A multidict keeps repeated headers (X-Robots-Tag may come several times).
    return CIMultiDictProxy(CIMultiDict((k.lower(), v) for k, v in headers.items()))


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)
    return [value] if value is not None else []


def _site_prefix(url: str) -> str | None:
    """``scheme://authority`` of a URL: all its site depends on; None when the
    URL has no authority."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    end = len(url)
    for mark in "/?#":
        found = url.find(mark, scheme_end + 3)
        if 0 <= found < end:
            end = found
    return url[:end]


def _why(answer: Response) -> str:
    return answer.error or f"HTTP {answer.status}"
