"""SparqlEndpoint against a scripted HTTP server on 127.0.0.1.

Each route of the fixture server plays one kind of endpoint behaviour: a good
answer, QLever's error JSON, 429 with Retry-After, a 500 that passes, a slow
answer, HTML instead of JSON, a paged result, Virtuoso's quirks. The server
records every request so that tests can check how many were made and what
they carried.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest

from kg.endpoint import EndpointConfig, SparqlEndpoint
from kg.errors import (
    ConfigError,
    EndpointHTTPError,
    EndpointQueryError,
    EndpointTimeoutError,
    EndpointUnreachableError,
)

RESULTS = "application/sparql-results+json"
WD = "http://www.wikidata.org/entity/"


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    url_params: dict[str, list[str]]
    content_type: str
    body: bytes
    query: str | None  # the SPARQL query, however it was sent
    form: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = RESULTS
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def results(names: list[str], rows: list[dict[str, dict[str, str]]]) -> Reply:
    """A SPARQL JSON SELECT answer."""
    payload = {"head": {"vars": names}, "results": {"bindings": rows}}
    return Reply(200, json.dumps(payload).encode())


def uri(value: str) -> dict[str, str]:
    return {"type": "uri", "value": value}


def lit(value: str, **extra: str) -> dict[str, str]:
    return {"type": "literal", "value": value, **extra}


GOOD = results(
    ["item", "label", "missing", "node", "count"],
    [
        {
            "item": uri(WD + "Q42889"),
            "label": lit("vehicle", **{"xml:lang": "en"}),
            "node": {"type": "bnode", "value": "b0"},
            "count": {
                "type": "literal",
                "datatype": "http://www.w3.org/2001/XMLSchema#integer",
                "value": "102",
            },
        },
        {"item": uri(WD + "Q1420"), "label": lit('say "car"\n')},
    ],
)
QLEVER_ERROR = {
    "exception": "Invalid SPARQL query: Token \"}\": mismatched input '}'",
    "status": "ERROR",
    "query": "SELECT ?x WHERE { ?x }",
}
PAGED_ROWS = 25
_SLICE = re.compile(r"LIMIT\s+(\d+)\s+OFFSET\s+(\d+)\s*$")


def _paged(seen: Seen) -> Reply:
    """The slice of a 25-row answer that the query's LIMIT/OFFSET asks for."""
    match = _SLICE.search(seen.query or "")
    limit, offset = (int(match[1]), int(match[2])) if match else (PAGED_ROWS, 0)
    numbers = range(PAGED_ROWS)[offset : offset + limit]
    return results(["n"], [{"n": lit(str(n))} for n in numbers])


def _echo(seen: Seen) -> Reply:
    """Echo the query, but only when it came as a direct POST."""
    if seen.method != "POST" or seen.content_type != "application/sparql-query":
        return Reply(415, b"expected a POST of application/sparql-query", "text/plain")
    return results(["query"], [{"query": lit(seen.query or "")}])


def _first_then_good(first: Reply) -> Callable[[Seen, int], Reply]:
    """A route that answers ``first`` on its first request, then GOOD."""
    return lambda seen, n: first if n == 1 else GOOD


ROUTES: dict[str, Callable[[Seen, int], Reply]] = {
    "/ok": lambda seen, n: GOOD,
    "/echo": lambda seen, n: _echo(seen),
    "/retry-after": _first_then_good(
        Reply(429, b"Too Many Requests", "text/plain", {"Retry-After": "7"})
    ),
    "/always-429": lambda seen, n: Reply(429, b"Too Many Requests", "text/plain"),
    "/bad-query": lambda seen, n: Reply(400, json.dumps(QLEVER_ERROR).encode()),
    "/qlever-timeout": lambda seen, n: Reply(
        500,
        json.dumps(
            {**QLEVER_ERROR, "exception": "Operation IndexScan timed out after 30s"}
        ).encode(),
    ),
    "/qlever-429-timeout": lambda seen, n: Reply(
        429,
        json.dumps(
            {**QLEVER_ERROR, "exception": "Operation timed out. Last operation: Sort"}
        ).encode(),
    ),
    "/qlever-timeout-cap": lambda seen, n: (
        Reply(
            403,
            b"User submitted timeout was higher than what is currently allowed "
            b"by this instance (30s). Please use a valid-access token to "
            b"override this server configuration.",
            "text/plain",
        )
        if "timeout" in seen.form
        else GOOD
    ),
    "/flaky-500": _first_then_good(Reply(500, b"internal error", "text/plain")),
    "/always-500": lambda seen, n: Reply(500, b"boom " * 200, "text/plain"),
    "/slow": lambda seen, n: Reply(200, GOOD.body, delay_s=1.0),
    "/html": lambda seen, n: Reply(
        200, b"<html><body>QLever UI</body></html>", "text/html"
    ),
    "/paged": lambda seen, n: _paged(seen),
}


def _virtuoso(seen: Seen, n: int) -> Reply:
    """Virtuoso 7.2: rejects `timeout=600s`, else marks itself in every reply."""
    server = {"Server": "Virtuoso/07.20.3229 (Linux) x86_64-pc-linux-gnu"}
    if "timeout" in seen.form or "timeout" in seen.url_params:
        body = b"Virtuoso 22005 Error SR341: Invalid integer value converting '600s'"
        return Reply(500, body, "text/plain", server)
    query = seen.query or ""
    if query.startswith("ASK"):
        yes = "nope" not in query
        row = [{"__ASK_RETVAL": lit("1")}] if yes else []
        return Reply(200, results(["__ASK_RETVAL"], row).body, headers=server)
    if "partial" in query:
        partial = {**server, "X-SQL-State": "S1TAT", "X-SQL-Message": "RC...: ..."}
        return Reply(200, GOOD.body, headers=partial)
    if "capped" in query:
        rows = [{"n": lit(str(i))} for i in range(3)]
        return Reply(
            200, results(["n"], rows).body, headers={**server, "X-SPARQL-MaxRows": "3"}
        )
    if "broken" in query:
        body = b"Virtuoso 37000 Error SQ156: Internal Optimized compiler error"
        return Reply(500, body, "text/plain", server)
    return Reply(200, GOOD.body, headers=server)


ROUTES["/virtuoso"] = _virtuoso
ROUTES["/ask"] = lambda seen, n: Reply(200, b'{"head": {}, "boolean": false}')


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean

    def _serve(self) -> None:
        seen = self._seen()
        with self.server.lock:
            self.server.requests.append(seen)
            n = sum(1 for r in self.server.requests if r.path == seen.path)
        route = ROUTES.get(seen.path)
        reply = route(seen, n) if route else Reply(404, b"no such route", "text/plain")
        time.sleep(reply.delay_s)
        # send_response writes the Server header itself.
        self.server_version = reply.headers.get("Server", "BaseHTTP")
        self.sys_version = ""
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                if name != "Server":
                    self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the slow route)

    def _seen(self) -> Seen:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "")
        url_params = parse_qs(parts.query)
        form: dict[str, list[str]] = {}
        if content_type.startswith("application/x-www-form-urlencoded"):
            form = parse_qs(body.decode())
        if content_type.startswith("application/sparql-query"):
            query: str | None = body.decode()
        else:
            given = form.get("query") or url_params.get("query")
            query = given[0] if given else None
        return Seen(
            self.command, parts.path, url_params, content_type, body, query, form
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # do not wait for the slow route's sleeping thread

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Seen] = []
        self.lock = threading.Lock()


@dataclass
class Fake:
    """The running fixture server."""

    server: _Server

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def seen(self, path: str) -> list[Seen]:
        with self.server.lock:
            return [r for r in self.server.requests if r.path == path]


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Fake(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def endpoint(url: str, waits: list[float], **options: object) -> SparqlEndpoint:
    """A client of ``url`` whose waits are recorded instead of slept."""
    config = EndpointConfig(url=url, backoff_s=0.5, **options)  # type: ignore[arg-type]
    return SparqlEndpoint(config, sleep=waits.append)


def test_select_decodes_every_kind_of_value(fake: Fake) -> None:
    with endpoint(fake.url("/ok"), []) as client:
        table = client.select("SELECT * WHERE { ?s ?p ?o }")

    assert table.column_names == ["item", "label", "missing", "node", "count"]
    assert all(t == pa.string() for t in table.schema.types)
    assert table.to_pylist() == [
        {
            "item": WD + "Q42889",
            "label": "vehicle",
            "missing": None,
            "node": "_:b0",
            "count": "102",
        },
        {
            "item": WD + "Q1420",
            "label": 'say "car"\n',
            "missing": None,
            "node": None,
            "count": None,
        },
    ]


def test_direct_post_sends_the_bare_query(fake: Fake) -> None:
    query = 'SELECT ?x WHERE { ?x ?p "é & ?" }'
    with endpoint(fake.url("/echo"), [], method="post", timeout_s=30) as client:
        table = client.select(query)

    assert table.column("query").to_pylist() == [query]
    (seen,) = fake.seen("/echo")
    assert seen.url_params["timeout"] == ["30s"]
    assert "access-token" not in seen.url_params


def test_form_post_puts_every_parameter_in_the_body(fake: Fake) -> None:
    # QLever rejects a form POST that also has parameters in the URL.
    options = {"timeout_s": 12.5, "access_token": "secret"}
    with endpoint(fake.url("/ok"), [], **options) as client:
        client.select("SELECT * WHERE { ?s ?p ?o }")

    (seen,) = fake.seen("/ok")
    assert seen.method == "POST"
    assert seen.url_params == {}
    assert seen.form == {
        "query": ["SELECT * WHERE { ?s ?p ?o }"],
        "timeout": ["13s"],
        "access-token": ["secret"],
    }


def test_get_puts_the_query_in_the_url(fake: Fake) -> None:
    with endpoint(fake.url("/ok"), [], method="get", qlever_timeout=False) as client:
        assert client.select("SELECT ?s WHERE { ?s ?p ?o }").num_rows == 2

    (seen,) = fake.seen("/ok")
    assert seen.method == "GET"
    assert seen.url_params == {"query": ["SELECT ?s WHERE { ?s ?p ?o }"]}


def test_429_is_retried_after_the_wait_the_server_asks_for(fake: Fake) -> None:
    waits: list[float] = []
    with endpoint(fake.url("/retry-after"), waits) as client:
        table = client.select("SELECT * WHERE { ?s ?p ?o }")

    assert table.num_rows == 2
    assert len(fake.seen("/retry-after")) == 2
    assert waits == [7.0]


def test_persistent_429_is_a_timeout_after_the_retries(fake: Fake) -> None:
    waits: list[float] = []
    with (
        endpoint(fake.url("/always-429"), waits, retries=2) as client,
        pytest.raises(EndpointTimeoutError) as raised,
    ):
        client.select("SELECT * WHERE { ?s ?p ?o }")

    assert len(fake.seen("/always-429")) == 3
    assert waits == [0.5, 1.0]  # backoff_s, doubled
    assert fake.url("/always-429") in str(raised.value)
    assert "429" in str(raised.value)


def test_a_rejected_query_is_never_retried(fake: Fake) -> None:
    with (
        endpoint(fake.url("/bad-query"), []) as client,
        pytest.raises(EndpointQueryError) as raised,
    ):
        client.select("SELECT ?x WHERE { ?x }")

    assert len(fake.seen("/bad-query")) == 1
    assert QLEVER_ERROR["exception"] in str(raised.value)
    assert fake.url("/bad-query") in str(raised.value)


def test_qlever_reporting_its_timeout_is_a_timeout(fake: Fake) -> None:
    with (
        endpoint(fake.url("/qlever-timeout"), []) as client,
        pytest.raises(EndpointTimeoutError, match="timed out after 30s"),
    ):
        client.select("SELECT * WHERE { ?s ?p ?o }")

    assert len(fake.seen("/qlever-timeout")) == 1


def test_a_429_reporting_a_timeout_is_not_retried(fake: Fake) -> None:
    # QLever's answer to a query that ran out of time: retrying cannot help.
    with (
        endpoint(fake.url("/qlever-429-timeout"), []) as client,
        pytest.raises(EndpointTimeoutError, match="Operation timed out"),
    ):
        client.select("SELECT * WHERE { ?s ?p ?o }")

    assert len(fake.seen("/qlever-429-timeout")) == 1


def test_a_timeout_above_the_servers_cap_is_dropped(fake: Fake) -> None:
    waits: list[float] = []
    with endpoint(fake.url("/qlever-timeout-cap"), waits) as client:
        assert client.select("SELECT * WHERE { ?s ?p ?o }").num_rows == 2
        assert client.select("SELECT * WHERE { ?s ?p ?o }").num_rows == 2

    sent = fake.seen("/qlever-timeout-cap")
    assert ["timeout" in s.form for s in sent] == [True, False, False]
    assert waits == []


def test_a_500_that_passes_is_retried(fake: Fake) -> None:
    waits: list[float] = []
    with endpoint(fake.url("/flaky-500"), waits) as client:
        assert client.select("SELECT * WHERE { ?s ?p ?o }").num_rows == 2

    assert len(fake.seen("/flaky-500")) == 2
    assert waits == [0.5]


def test_a_lasting_500_names_status_and_body(fake: Fake) -> None:
    with (
        endpoint(fake.url("/always-500"), [], retries=1) as client,
        pytest.raises(EndpointHTTPError) as raised,
    ):
        client.select("SELECT * WHERE { ?s ?p ?o }")

    message = str(raised.value)
    assert "HTTP 500" in message and "boom boom" in message
    assert len(message) < 600  # the body is quoted, not pasted whole
    assert len(fake.seen("/always-500")) == 2


def test_a_slow_answer_is_a_timeout(fake: Fake) -> None:
    started = time.monotonic()
    with (
        endpoint(fake.url("/slow"), [], timeout_s=0.3) as client,
        pytest.raises(EndpointTimeoutError, match=r"no answer within 0\.3 s"),
    ):
        client.select("SELECT * WHERE { ?s ?p ?o }")

    assert time.monotonic() - started < 0.9
    assert len(fake.seen("/slow")) == 1


def test_html_instead_of_json_says_what_came_back(fake: Fake) -> None:
    with (
        endpoint(fake.url("/html"), []) as client,
        pytest.raises(EndpointHTTPError) as raised,
    ):
        client.select("SELECT * WHERE { ?s ?p ?o }")

    assert "text/html" in str(raised.value)
    assert "<html><body>QLever UI" in str(raised.value)


def test_paging_fetches_until_a_short_page(fake: Fake) -> None:
    query = "SELECT ?n WHERE { ?s ?p ?n } ORDER BY ?n"
    with endpoint(fake.url("/paged"), [], page_size=10) as client:
        table = client.select(query)

    assert table.column("n").to_pylist() == [str(n) for n in range(PAGED_ROWS)]
    assert [s.query for s in fake.seen("/paged")] == [
        f"{query}\nLIMIT 10 OFFSET {offset}" for offset in (0, 10, 20)
    ]


def test_paging_leaves_a_query_with_its_own_limit_alone(fake: Fake) -> None:
    query = "SELECT ?n WHERE { ?s ?p ?n } ORDER BY ?n LIMIT 5 OFFSET 3"
    with endpoint(fake.url("/paged"), [], page_size=10) as client:
        assert client.select(query).column("n").to_pylist() == ["3", "4", "5", "6", "7"]

    assert [s.query for s in fake.seen("/paged")] == [query]


def test_an_exact_multiple_of_the_page_size_ends_on_an_empty_page(
    fake: Fake,
) -> None:
    with endpoint(fake.url("/paged"), [], page_size=5) as client:
        table = client.select("SELECT ?n WHERE { ?s ?p ?n } ORDER BY ?n")

    assert table.num_rows == PAGED_ROWS
    assert len(fake.seen("/paged")) == 6


def test_a_refused_connection_is_unreachable_after_the_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    url = f"http://127.0.0.1:{port}/sparql"
    waits: list[float] = []
    with (
        endpoint(url, waits, retries=2) as client,
        pytest.raises(EndpointUnreachableError) as raised,
    ):
        client.select("SELECT * WHERE { ?s ?p ?o }")

    assert waits == [0.5, 1.0]
    assert url in str(raised.value)
    assert "qlever start" in str(raised.value)
    assert "3 attempt" in str(raised.value)


def test_virtuoso_gets_no_qlever_timeout_and_still_answers(fake: Fake) -> None:
    waits: list[float] = []
    with endpoint(fake.url("/virtuoso"), waits) as client:
        assert client.select("SELECT * WHERE { ?s ?p ?o }").num_rows == 2
        assert client.select("SELECT * WHERE { ?s ?p ?o }").num_rows == 2

    sent = fake.seen("/virtuoso")
    assert ["timeout" in s.form for s in sent] == [True, False, False]
    assert waits == []  # the resend is no retry


def test_virtuoso_ask_in_select_layout(fake: Fake) -> None:
    with endpoint(fake.url("/virtuoso"), [], qlever_timeout=False) as client:
        assert client.ask("ASK { ?s ?p ?o }") is True
        assert client.ask("ASK { ?s <nope> ?o }") is False


def test_standard_ask(fake: Fake) -> None:
    with endpoint(fake.url("/ask"), []) as client:
        assert client.ask("ASK { ?s ?p ?o }") is False


def test_virtuoso_partial_answer_is_a_timeout(fake: Fake) -> None:
    with (
        endpoint(fake.url("/virtuoso"), [], qlever_timeout=False) as client,
        pytest.raises(EndpointTimeoutError, match="partial answer"),
    ):
        client.select("SELECT * WHERE { ?s ?p ?o } # partial")


def test_virtuoso_row_cap_is_an_error(fake: Fake) -> None:
    with (
        endpoint(fake.url("/virtuoso"), [], qlever_timeout=False) as client,
        pytest.raises(EndpointHTTPError, match="page_size below 3"),
    ):
        client.select("SELECT * WHERE { ?s ?p ?o } # capped")


def test_virtuoso_compile_error_is_a_query_error(fake: Fake) -> None:
    with (
        endpoint(fake.url("/virtuoso"), [], qlever_timeout=False) as client,
        pytest.raises(EndpointQueryError, match="SQ156"),
    ):
        client.select("SELECT * WHERE { ?s ?p ?o } # broken")

    assert len(fake.seen("/virtuoso")) == 1


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"url": "localhost:7001"}, "http"),
        ({"url": "http://x", "method": "put"}, "post-form"),
        ({"url": "http://x", "page_size": 0}, "page_size"),
        ({"url": "http://x", "timeout_s": 0}, "timeout_s"),
    ],
)
def test_bad_settings_are_config_errors(
    options: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        EndpointConfig(**options)  # type: ignore[arg-type]
