"""Stand-ins the engine and browser tests share: fetchers that answer from
recordings or over plain HTTP, an archive in memory, and a local server.

Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from crawl.web import Location, Purpose, Response


def answer(body: Any, status: int = 200) -> Response:
    """A response carrying ``body``: bytes as they are, anything else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(url="", final_url="", status=status, body=data, fetched="t")


def params_of(url: str) -> dict[str, str]:
    """The query parameters of a URL, the first value of each."""
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


class RecordedFetcher:
    """Answers API requests in turn with recorded answers, keeping the URLs asked."""

    def __init__(self, *answers: Response) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def fetch(
        self,
        url: str,
        *,
        purpose: Purpose = "image",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        assert purpose == "api"
        self.asked.append(url)
        got = self.answers.pop(0)
        return Response(url, url, got.status, got.headers, got.body, got.error)


class HttpFetcher:
    """A plain fetcher over HTTP, enough to talk to a local server."""

    async def fetch(
        self,
        url: str,
        *,
        purpose: Purpose = "image",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        async with httpx.AsyncClient(trust_env=False) as client:
            got = await client.get(url)
        lowered = {name.lower(): value for name, value in got.headers.items()}
        return Response(url, str(got.url), got.status_code, lowered, got.content)


class FakeArchive:
    """Keeps every record in a dict, keyed by URL; the last one wins."""

    def __init__(self) -> None:
        self.records: dict[str, Response] = {}

    def record(
        self,
        url: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        request_headers: Mapping[str, str] | None = None,
    ) -> Location:
        location = Location("fake.warc.gz", len(self.records))
        self.records[url] = Response(
            url, url, status, dict(headers), body, location=location, fetched="T"
        )
        return location

    def lookup(self, url: str) -> Response | None:
        return self.records.get(url)

    def read(self, location: Location) -> Response:
        return next(r for r in self.records.values() if r.location == location)


@contextmanager
def local_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 and a port the system picks, in a
    thread; yields the server's base URL and stops it on leaving."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
