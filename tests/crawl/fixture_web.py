"""A real HTTP server on 127.0.0.1 that behaves like the web the crawler meets.

:class:`FixtureWeb` listens on several ephemeral ports; each port is one
"site" (a host to the fetcher, whose politeness works per host and port), so
per-host limits can be watched from the server's side. It serves the real
images of ``shared/data/images`` and the misbehaviour of real servers:

==============================  ==============================================
path                            answer
==============================  ==============================================
/robots.txt                     sites 0, 1: disallow /private/ (and all for
                                ``otherbot``); site 2: 404; site 3: 503
/images/REL                     the image file REL (e.g. flowers5/rose/x.jpg)
/private/REL                    the image REL, but robots.txt forbids it
/status/CODE                    that status with a small HTML page
/flaky/KEY?fail=N&status=S      status S (503) the first N times, then an image
/retry-after/KEY?seconds=S      429 with Retry-After: S once, then an image;
                                ``&date=1`` gives it as an HTTP date
/slow/KEY?delay=S               an image after S seconds
/truncated                      Content-Length larger than sent, then close
/html-as-jpeg                   an HTML page served as image/jpeg
/missing/NAME                   200 with the imageNotFound.gif placeholder
/redirect/N?to=URL              N redirects, the last to URL (an image)
/loop/I                         redirects forever (/loop/I+1)
/x-robots?tag=T&tag=...         an image with one X-Robots-Tag line per tag
/huge                           a JPEG declared as 200 MiB, sent until closed
/endless                        a JPEG without Content-Length, sent until
                                closed (up to 64 MiB)
/gzip-json                      a JSON answer with Content-Encoding: gzip
==============================  ==============================================

Every image route takes ``?img=REL`` to pick the image. Every request is
logged as it arrives (site, path, headers, start and end times), so a test
can count requests and how many ran at once.

Run ``python -m tests.crawl.fixture_web IMAGES_DIR`` to serve from another
process (it prints the ports as JSON and serves until stdin closes), so a
throughput measurement does not share the client's interpreter.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

ROBOTS_TXT = (
    b"User-agent: otherbot\nDisallow: /\n\nUser-agent: *\nDisallow: /private/\n"
)
DEFAULT_IMAGE = "samples/sklearn_flower.jpg"
PLACEHOLDER = "broken/imageNotFound.gif"
HUGE_BYTES = 200 * 1024 * 1024
ENDLESS_BYTES = 64 * 1024 * 1024
_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
_TYPES |= {".gif": "image/gif"}
_HTML = b"<!doctype html><html><body><h1>Not here</h1></body></html>"


@dataclass
class Hit:
    """One request the server received, logged as it arrives."""

    site: int
    path: str
    started: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    ended: float | None = None  # when the answer was sent (or abandoned)


@dataclass
class _State:
    """What the sites share: the request log and counters per key."""

    images: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: list[Hit] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)


class FixtureWeb:
    """Several sites on 127.0.0.1 serving real images and real misbehaviour."""

    def __init__(self, images: Path, num_sites: int = 4) -> None:
        self.state = _State(images=images)
        self.num_sites = num_sites
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    @property
    def ports(self) -> list[int]:
        return [server.server_address[1] for server in self._servers]

    def start(self) -> FixtureWeb:
        for site in range(self.num_sites):
            server = _Server(("127.0.0.1", 0), _handler_for(site, self.state))
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fixture-web-{site}",
                daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> FixtureWeb:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, path: str, site: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[site]}{path}"

    def image_paths(self) -> list[str]:
        """Every servable image, relative to the images folder, sorted."""
        root = self.state.images
        found = [*root.glob("flowers5/*/*.jpg"), *root.glob("samples/*.*")]
        return sorted(
            str(p.relative_to(root)) for p in found if p.suffix.lower() in _TYPES
        )

    def image_bytes(self, relative: str) -> bytes:
        return (self.state.images / relative).read_bytes()

    def hits(self, site: int | None = None, prefix: str = "") -> list[Hit]:
        with self.state.lock:
            return [
                hit
                for hit in self.state.hits
                if (site is None or hit.site == site) and hit.path.startswith(prefix)
            ]

    def max_concurrent(
        self, site: int | None = None, prefix: str = "", slack: float = 0.0
    ) -> int:
        """Most matching requests the server was answering at one moment.

        Waits (up to 5 s) for the matching requests to end first, since the
        client may have its answer before the server has logged the end. A
        server thread may also log its end a little after the client has its
        answer and sent the next request: ``slack`` seconds are taken off
        each request's end, so that only a real overlap counts (use it with
        answers that take longer than that).
        """
        deadline = time.monotonic() + 5
        hits = self.hits(site, prefix)
        while any(h.ended is None for h in hits) and time.monotonic() < deadline:
            time.sleep(0.01)
        spans = [(h.started, (h.ended or h.started) - slack) for h in hits]
        return max(
            (sum(start <= s < end for start, end in spans) for s, _ in spans),
            default=0,
        )

    def reset(self) -> None:
        """Forget the request log; the counters of keys stay."""
        with self.state.lock:
            self.state.hits.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 refuses bursts of connections

    def handle_error(self, request: object, client_address: object) -> None:
        # A client closing a kept-alive connection is no error; others are.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s hung up", client_address)
        else:
            log.exception("fixture web: error answering %s", client_address)


def _handler_for(site: int, state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.site = site
    Handler.state = state
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    site: int
    state: _State

    def log_message(self, format: str, *args: object) -> None:
        log.debug("site %d: " + format, self.site, *args)

    def do_GET(self) -> None:
        hit = Hit(self.site, self.path, time.monotonic(), dict(self.headers))
        with self.state.lock:
            self.state.hits.append(hit)
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up, as it may
        finally:
            hit.ended = time.monotonic()

    def _route(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v for k, v in parse_qs(parts.query).items()}
        first, _, rest = parts.path.lstrip("/").partition("/")
        route = _ROUTES.get(first)
        if route is None:
            self._send(404, _HTML, "text/html")
        else:
            route(self, rest, query)

    # -- helpers ------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _image(
        self, relative: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        path = self.state.images / relative
        if ".." in relative or not path.is_file():
            self._send(404, _HTML, "text/html")
            return
        kind = _TYPES.get(path.suffix.lower(), "application/octet-stream")
        self._send(200, path.read_bytes(), kind, headers)

    def _count(self, key: str) -> int:
        """How many times this key was asked, this time included."""
        with self.state.lock:
            self.state.counters[key] += 1
            return self.state.counters[key]

    def _stream(self, head: bytes, total: int) -> None:
        # Zeros after a real image header, in pieces, until the client leaves.
        self.wfile.write(head)
        piece = bytes(64 * 1024)
        sent = len(head)
        while sent < total:
            self.wfile.write(piece[: total - sent])
            sent += len(piece)
        self.close_connection = True

    # -- routes -------------------------------------------------------------

    def robots(self, rest: str, query: dict[str, list[str]]) -> None:
        if self.site in (0, 1):
            self._send(200, ROBOTS_TXT, "text/plain")
        elif self.site == 2:
            self._send(404, _HTML, "text/html")
        else:
            self._send(503, _HTML, "text/html")

    def images(self, rest: str, query: dict[str, list[str]]) -> None:
        self._image(rest)

    def status(self, rest: str, query: dict[str, list[str]]) -> None:
        self._send(int(rest), _HTML, "text/html")

    def flaky(self, rest: str, query: dict[str, list[str]]) -> None:
        fail = int(_first(query, "fail", "1"))
        if self._count(f"flaky/{rest}") <= fail:
            self._send(int(_first(query, "status", "503")), _HTML, "text/html")
        else:
            self._image(_first(query, "img", DEFAULT_IMAGE))

    def retry_after(self, rest: str, query: dict[str, list[str]]) -> None:
        seconds = float(_first(query, "seconds", "1"))
        if self._count(f"retry-after/{rest}") > 1:
            self._image(_first(query, "img", DEFAULT_IMAGE))
            return
        value = str(int(seconds))
        if _first(query, "date", ""):
            value = email.utils.formatdate(time.time() + seconds, usegmt=True)
        self._send(429, _HTML, "text/html", [("Retry-After", value)])

    def slow(self, rest: str, query: dict[str, list[str]]) -> None:
        time.sleep(float(_first(query, "delay", "1")))
        self._image(_first(query, "img", DEFAULT_IMAGE))

    def truncated(self, rest: str, query: dict[str, list[str]]) -> None:
        body = (self.state.images / _first(query, "img", DEFAULT_IMAGE)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body) + 1000))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def html_as_jpeg(self, rest: str, query: dict[str, list[str]]) -> None:
        self._send(200, _HTML, "image/jpeg")

    def missing(self, rest: str, query: dict[str, list[str]]) -> None:
        self._image(PLACEHOLDER)

    def redirect(self, rest: str, query: dict[str, list[str]]) -> None:
        hops = int(rest or "0")
        target = _first(query, "to", f"/images/{DEFAULT_IMAGE}")
        # relative Location headers on the way, as many servers send
        raw_query = urlsplit(self.path).query
        next_hop = f"{hops - 1}?{raw_query}" if raw_query else str(hops - 1)
        location = next_hop if hops > 1 else target
        self._send(302, b"", "text/html", [("Location", location)])

    def loop(self, rest: str, query: dict[str, list[str]]) -> None:
        self._send(302, b"", "text/html", [("Location", f"/loop/{int(rest) + 1}")])

    def x_robots(self, rest: str, query: dict[str, list[str]]) -> None:
        tags = [("X-Robots-Tag", tag) for tag in query.get("tag", [])]
        self._image(_first(query, "img", DEFAULT_IMAGE), tags)

    def huge(self, rest: str, query: dict[str, list[str]]) -> None:
        head = (self.state.images / DEFAULT_IMAGE).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(HUGE_BYTES))
        self.end_headers()
        self._stream(head, HUGE_BYTES)

    def endless(self, rest: str, query: dict[str, list[str]]) -> None:
        head = (self.state.images / DEFAULT_IMAGE).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        self._stream(head, ENDLESS_BYTES)

    def gzip_json(self, rest: str, query: dict[str, list[str]]) -> None:
        body = json.dumps({"results": [{"rank": i} for i in range(200)]}).encode()
        headers = [("Content-Encoding", "gzip")]
        self._send(200, gzip.compress(body), "application/json", headers)


def _first(query: dict[str, list[str]], name: str, default: str) -> str:
    return query.get(name, [default])[0]


_ROUTES = {
    "robots.txt": _Handler.robots,
    "images": _Handler.images,
    "private": _Handler.images,
    "status": _Handler.status,
    "flaky": _Handler.flaky,
    "retry-after": _Handler.retry_after,
    "slow": _Handler.slow,
    "truncated": _Handler.truncated,
    "html-as-jpeg": _Handler.html_as_jpeg,
    "missing": _Handler.missing,
    "redirect": _Handler.redirect,
    "loop": _Handler.loop,
    "x-robots": _Handler.x_robots,
    "huge": _Handler.huge,
    "endless": _Handler.endless,
    "gzip-json": _Handler.gzip_json,
}


def main(argv: list[str]) -> None:
    """Serve IMAGES_DIR until stdin closes; print the ports as one JSON line."""
    num_sites = int(argv[1]) if len(argv) > 1 else 4
    with FixtureWeb(Path(argv[0]), num_sites=num_sites) as web:
        sys.stdout.write(json.dumps({"ports": web.ports}) + "\n")
        sys.stdout.flush()
        sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1:])
