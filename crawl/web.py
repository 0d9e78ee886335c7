"""What the crawl's parts share: a response, the fetcher and the archive.

Every byte the crawl receives (a result page, an API answer, an image) comes
through a :class:`Fetcher` and is written to the web archive before anything
else sees it; in replay mode the same fetcher answers from the archive and
never opens a connection. Engines and the downloader depend only on these
protocols, so record and replay are one code path for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

Purpose = Literal["page", "api", "image", "robots"]


@dataclass(frozen=True)
class Location:
    """Where a record lies in the archive: a WARC file (name relative to the
    archive folder) and the byte offset of its record."""

    warc_file: str
    offset: int


@dataclass(frozen=True)
class Response:
    """One answer, or the failure to get one.

    ``status`` is the HTTP status of the final answer (0 when none came);
    ``error`` names what went wrong in a few words (``timeout``,
    ``robots_disallowed``, ``not_an_image``, ...), None when all went well.
    """

    url: str
    final_url: str
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    error: str | None = None
    attempts: int = 1
    location: Location | None = None
    fetched: str = ""  # ISO time the answer came (or was recorded, on replay)
    # The WARC-Truncated reason when the body was not kept whole: ``length``
    # (past the size limit), ``disconnect`` (the server stopped sending) or
    # ``unspecified`` (withheld: the publisher opted out); None otherwise.
    truncated: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


class Fetcher(Protocol):
    """Gets URLs, writing every answer to the archive (or replaying it)."""

    async def fetch(
        self,
        url: str,
        *,
        purpose: Purpose = "image",
        headers: Mapping[str, str] | None = None,
    ) -> Response: ...


class Archive(Protocol):
    """The run's web archive, ``DIR/archive/*.warc.gz``."""

    def record(
        self,
        url: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        request_headers: Mapping[str, str] | None = None,
        truncated: str | None = None,
    ) -> Location: ...

    def lookup(self, url: str) -> Response | None: ...

    def read(self, location: Location) -> Response: ...
