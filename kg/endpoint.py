"""A SPARQL 1.1 protocol client for QLever, Virtuoso and other endpoints.

:class:`SparqlEndpoint` sends a query, asks for SPARQL JSON results and returns
a :class:`pyarrow.Table` with one string column per variable, each cell the
binding's ``value`` (an IRI bare, a literal's lexical form, a blank node as
``_:label``), null where unbound: the same table the embedded store gives (see
:mod:`kg.terms`).

It retries what may pass (refused or dropped connections, HTTP 429 and 503
from a busy server, other 5xx) with exponential backoff that yields to
``Retry-After``. It never retries a rejected query, nor one the server reports
as out of time (QLever: HTTP 429 or 500 whose ``exception`` says it timed out),
since it would only time out again. Every failure becomes an
:class:`~kg.errors.EndpointError` whose message names the endpoint and what to
try next.

Large answers can be fetched in pages (``page_size``): the query is sent again
with ``LIMIT n OFFSET k`` appended until a page comes back short. Pages only
line up when the order is fixed, so a paged query must end with ``ORDER BY``.

How servers differ, and what the defaults do about it:

- ``method="post-form"`` (the default) posts ``query=...`` form-encoded; QLever
  and Virtuoso both take it. ``"post"`` posts the bare query as
  ``application/sparql-query``, which QLever takes but Virtuoso 7.2 never
  answers (openlink/virtuoso-opensource#842); ``"get"`` puts it in the URL.
- QLever's ``timeout`` parameter (``600s``) is sent unless ``qlever_timeout`` is
  off. QLever refuses (HTTP 403) a timeout above its ``default-query-timeout``
  unless the access token comes along, and Virtuoso reads ``timeout`` as
  milliseconds and rejects ``600s``; in both cases the client resends the
  query without it and stops sending it, so the server's own limit applies.
  QLever wants every parameter of a form POST in the body, none in the URL.
- Virtuoso answers a query that ran out of time with a partial result and
  ``X-SQL-State: S1TAT``, and caps answers at ``ResultSetMaxRows``
  (``X-SPARQL-MaxRows``); both are reported as errors, never returned as if
  complete. Its ``ASK`` answer comes as a one-row SELECT; :meth:`ask` reads both.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import httpx
import pyarrow as pa

from kg.errors import (
    ConfigError,
    EndpointError,
    EndpointHTTPError,
    EndpointQueryError,
    EndpointTimeoutError,
    EndpointUnreachableError,
)

try:  # orjson parses large answers several times faster
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _JSON_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - orjson is a dependency
    import json

    _loads = json.loads
    _JSON_ERRORS = (ValueError,)

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=EndpointError)

METHODS = ("post", "post-form", "get")
RESULTS_JSON = "application/sparql-results+json"
DEFAULT_USER_AGENT = "kgclip/0.1 (+mailto:nobody@example.org)"

_UNREACHABLE_HINT = (
    "is the QLever server running? Start it with `qlever start`, or check kg.endpoint"
)
_QUERY_HINT = "fix the query (`kgclip harvest --dry-run` prints it)"
_SERVER_HINT = "check the server's log, or retry later"
# The query already ends with its own slice; paging would add a second one.
_OWN_SLICE = re.compile(r"\b(?:LIMIT|OFFSET)\s+(\d+)\s*$", re.IGNORECASE)
_OWN_LIMIT = re.compile(r"\bLIMIT\s+(\d+)(?:\s+OFFSET\s+\d+)?\s*$", re.IGNORECASE)
_ORDER_BY = re.compile(r"\bORDER\s+BY\b", re.IGNORECASE)
# How QLever and Virtuoso word a query that ran out of time.
_TIMEOUT_TEXT = re.compile(
    r"time[ -]?out|timed out|time limit|exceeds the limit", re.IGNORECASE
)
# Virtuoso's compile and data errors (SQLSTATE 37000, 42xxx, 22xxx) come as
# HTTP 500 but fail again on every retry.
_VIRTUOSO_QUERY_ERROR = re.compile(r"^\s*Virtuoso (?:37|42|22)\w{3} Error", re.M)


@dataclass
class EndpointConfig:
    """Where a SPARQL endpoint is and how to talk to it.

    Attributes:
        url: the endpoint, e.g. ``http://localhost:7001`` (QLever) or
            ``http://localhost:8890/sparql`` (Virtuoso).
        timeout_s: total seconds one request may take; also sent to QLever as
            its ``timeout`` parameter.
        connect_timeout_s: seconds to wait for the connection itself.
        retries: further attempts after the first for refused or dropped
            connections, HTTP 429 and 503 (unless they report a timeout) and
            other 5xx.
        backoff_s: first wait between attempts; doubles each time, capped at
            ``max_backoff_s``; a ``Retry-After`` header wins (same cap).
        page_size: fetch answers in pages of this many rows; None: one request.
        method: ``post-form`` (form-encoded POST), ``post`` (direct POST,
            ``application/sparql-query``; Virtuoso 7 never answers it) or ``get``.
        qlever_timeout: send QLever's ``timeout`` parameter.
        user_agent: the User-Agent header; name a contact.
        access_token: QLever's ``access-token``, sent only when set.
        max_backoff_s: the longest wait between two attempts.

    Raises:
        ConfigError: when a value is out of range or the method is unknown.
    """

    url: str
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 1.0
    page_size: int | None = None
    method: str = "post-form"
    qlever_timeout: bool = True
    user_agent: str = DEFAULT_USER_AGENT
    access_token: str | None = None
    max_backoff_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(
                f"kg.endpoint={self.url!r} is not an http(s) URL; "
                "use e.g. http://localhost:7001"
            )
        if self.method not in METHODS:
            raise ConfigError(
                f"kg.method={self.method!r} is not known; use one of "
                + ", ".join(METHODS)
            )
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError("kg.timeout_s and kg.connect_timeout_s must be > 0")
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError("kg.retries and kg.backoff_s must not be negative")
        if self.page_size is not None and self.page_size <= 0:
            raise ConfigError(
                f"kg.page_size={self.page_size} must be a positive number of "
                "rows, or null to fetch the answer in one request"
            )


@dataclass
class _Reply:
    """One HTTP answer, read in full."""

    status: int
    headers: httpx.Headers
    body: bytes
    seconds: float


class _Retry(Exception):
    """An attempt failed in a way another attempt may not; carries the error."""

    def __init__(self, error: EndpointError, retry_after: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class SparqlEndpoint:
    """A SPARQL 1.1 endpoint that answers SELECT and ASK queries.

    Args:
        config: where the endpoint is and how to talk to it.
        sleep: waits between attempts; tests pass a recorder.
        transport: an httpx transport to use instead of the network.

    Use as a context manager, or call :meth:`close` when done.
    """

    def __init__(
        self,
        config: EndpointConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        self.config = config
        self._sleep = sleep
        # QLever's `timeout` is dropped for good once a server refuses it
        # (Virtuoso, or QLever when it is above the server's own limit).
        self._send_timeout = config.qlever_timeout
        self._client = httpx.Client(
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            headers={"User-Agent": config.user_agent, "Accept": RESULTS_JSON},
            follow_redirects=False,  # a redirected POST would lose its body
            transport=transport,
        )

    def __enter__(self) -> SparqlEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def select(self, query: str) -> pa.Table:
        """Run a SELECT query.

        With ``page_size`` set, and unless the query ends with its own LIMIT or
        OFFSET, the answer is fetched in pages; the query must then end with
        ORDER BY so that the pages line up.

        Args:
            query: a SPARQL SELECT query.

        Returns:
            One string column per variable of ``head.vars``, in that order;
            null where a variable is unbound.

        Raises:
            EndpointUnreachableError, EndpointTimeoutError, EndpointHTTPError,
            EndpointQueryError: as described in the module docstring.
        """
        own = _OWN_SLICE.search(query)
        if self.config.page_size is None or own is not None:
            limit = _OWN_LIMIT.search(query)
            return self._select_once(query, int(limit.group(1)) if limit else None)
        return self._select_pages(query, self.config.page_size)

    def ask(self, query: str) -> bool:
        """Run an ASK query; True when the pattern has a solution.

        Raises:
            EndpointError: as :meth:`select` does, or EndpointHTTPError when
                the answer is no boolean.
        """
        payload = self._answer(query)
        if isinstance(payload.get("boolean"), bool):
            return bool(payload["boolean"])
        # Virtuoso answers ASK as a SELECT of one row (true) or none (false).
        table = _results_table(payload)
        if table.num_rows == 0:
            return False
        value = table.column(0)[0].as_py() if table.num_columns else None
        if value in ("1", "true"):
            return True
        if value in ("0", "false"):
            return False
        raise self._error(
            EndpointHTTPError, f"answered ASK without a boolean (got {value!r})"
        )

    def _select_once(self, query: str, limit: int | None) -> pa.Table:
        table = _results_table(self._answer(query, limit))
        log.debug("%s answered %d rows", self.config.url, table.num_rows)
        return table

    def _select_pages(self, query: str, size: int) -> pa.Table:
        if not _ORDER_BY.search(query):
            log.warning(
                "paging a query without ORDER BY through %s: pages may overlap "
                "or miss rows; end the query with ORDER BY",
                self.config.url,
            )
        pages: list[pa.Table] = []
        offset = 0
        while True:
            paged = f"{query.rstrip()}\nLIMIT {size} OFFSET {offset}"
            page = _results_table(self._answer(paged, size))
            pages.append(page)
            log.debug("page at offset %d: %d rows", offset, page.num_rows)
            if page.num_rows < size:
                break
            offset += size
        # Servers agree on the variables of every page; cast guards the types.
        first = pages[0].schema
        return pa.concat_tables([p.select(first.names).cast(first) for p in pages])

    def _answer(self, query: str, limit: int | None = None) -> dict[str, Any]:
        """The parsed JSON answer to ``query``, after any retries."""
        attempt = 0
        while True:
            try:
                return self._attempt(query, limit)
            except _Retry as retry:
                if attempt >= self.config.retries:
                    tries = f"gave up after {attempt + 1} attempt(s)"
                    raise type(retry.error)(f"{retry.error} ({tries})") from retry
                wait = self._wait_s(attempt, retry.retry_after)
                log.warning(
                    "%s; retry %d of %d in %.1f s",
                    retry.error,
                    attempt + 1,
                    self.config.retries,
                    wait,
                )
                self._sleep(wait)
                attempt += 1

    def _attempt(self, query: str, limit: int | None) -> dict[str, Any]:
        reply = self._exchange(self._request(query))
        if self._send_timeout and self._rejects_timeout(reply):
            # Sending no timeout lets the server's own limit apply; the resend
            # is no retry, since the query was never run.
            self._send_timeout = False
            reply = self._exchange(self._request(query))
        payload = self._interpret(reply)
        self._check_complete(reply, payload, limit)
        return payload

    def _rejects_timeout(self, reply: _Reply) -> bool:
        """Whether the server cannot take QLever's ``timeout`` as it was sent."""
        if reply.headers.get("server", "").startswith("Virtuoso"):
            # Virtuoso takes `timeout` as milliseconds and rejects `600s`.
            log.warning(
                "%s is Virtuoso, which cannot read QLever's timeout parameter; "
                "no longer sending it",
                self.config.url,
            )
            return True
        text = _text(reply.body, 300)
        if reply.status == 403 and "timeout" in text.lower():
            # QLever refuses a timeout above its --default-query-timeout unless
            # the access token comes along.
            log.warning(
                "%s refuses a timeout of %g s (%s); no longer sending one, so the "
                "server's own limit applies. For longer queries raise QLever's "
                "default-query-timeout or set kg.access_token",
                self.config.url,
                self.config.timeout_s,
                text,
            )
            return True
        return False

    def _wait_s(self, attempt: int, retry_after: float | None) -> float:
        wait = self.config.backoff_s * 2**attempt
        if retry_after is not None:
            wait = retry_after
        return max(0.0, min(wait, self.config.max_backoff_s))

    def _request(self, query: str) -> httpx.Request:
        """The HTTP request for ``query`` in the configured method."""
        params: dict[str, str] = {}
        if self._send_timeout:
            params["timeout"] = f"{math.ceil(self.config.timeout_s)}s"
        if self.config.access_token:
            params["access-token"] = self.config.access_token
        url = self.config.url
        if self.config.method == "post":
            headers = {"Content-Type": "application/sparql-query"}
            return self._client.build_request(
                "POST", url, params=params, content=query.encode(), headers=headers
            )
        if self.config.method == "post-form":
            # QLever rejects a form POST with parameters in the URL.
            form = {"query": query, **params}
            return self._client.build_request("POST", url, data=form)
        return self._client.build_request("GET", url, params={"query": query, **params})

    def _exchange(self, request: httpx.Request) -> _Reply:
        """Send ``request`` and read the whole answer within ``timeout_s``.

        Raises:
            _Retry: refused, failed or dropped connections.
            EndpointTimeoutError: no complete answer in time.
        """
        started = time.monotonic()
        deadline = started + self.config.timeout_s
        try:
            response = self._client.send(request, stream=True)
            try:
                chunks = []
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("total timeout", request=request)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                what = f"connecting timed out ({exc})"
                raise _Retry(self._unreachable(what)) from exc
            raise self._error(
                EndpointTimeoutError,
                f"no answer within {self.config.timeout_s:g} s",
                "raise kg.timeout_s, narrow the query, or set kg.page_size",
            ) from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            raise _Retry(self._unreachable(f"cannot connect ({exc})")) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            what = f"the connection dropped without an answer ({exc})"
            raise _Retry(self._unreachable(what)) from exc
        body = b"".join(chunks)
        seconds = time.monotonic() - started
        log.debug(
            "%s %s: %d-byte request -> HTTP %d, %d bytes in %.2f s",
            request.method,
            self.config.url,
            len(request.content) + len(str(request.url)),
            response.status_code,
            len(body),
            seconds,
        )
        return _Reply(response.status_code, response.headers, body, seconds)

    def _interpret(self, reply: _Reply) -> dict[str, Any]:
        """The SPARQL JSON results of ``reply``, or the error it stands for.

        Raises:
            _Retry: HTTP 429, 503 and other server errors that may pass.
            EndpointQueryError, EndpointTimeoutError, EndpointHTTPError.
        """
        payload = _json_object(reply.body)
        exception = str(payload.get("exception", "")) if payload else ""
        # QLever answers 429 both when busy and when the query ran out of time;
        # only the first may pass, the same query would time out again.
        if reply.status in (429, 503) and not _TIMEOUT_TEXT.search(exception):
            raise _Retry(self._busy(reply, payload), _retry_after(reply.headers))
        if payload is not None and "exception" in payload:
            self._raise_qlever_exception(reply.status, exception)
        if reply.status >= 300:
            self._raise_for_status(reply)
        if payload is None or not _is_results(payload):
            raise self._error(
                EndpointHTTPError,
                "answered with something other than SPARQL JSON results "
                f"({_describe(reply)})",
                "is kg.endpoint the SPARQL endpoint itself? QLever answers at "
                "http://HOST:PORT, Virtuoso at http://HOST:PORT/sparql",
            )
        return payload

    def _raise_qlever_exception(self, status: int, text: str) -> None:
        """Raise the error a QLever JSON answer with ``exception`` stands for."""
        text = text if len(text) <= 1000 else text[:1000] + "..."
        if _TIMEOUT_TEXT.search(text):
            raise self._error(
                EndpointTimeoutError,
                f"the query ran out of time on the server: {text}",
                "raise kg.timeout_s (and QLever's --default-query-timeout), "
                "or set kg.page_size",
            )
        if status >= 500:
            raise _Retry(
                self._error(EndpointHTTPError, f"HTTP {status}: {text}", _SERVER_HINT)
            )
        raise self._error(
            EndpointQueryError, f"rejected the query: {text}", _QUERY_HINT
        )

    def _raise_for_status(self, reply: _Reply) -> None:
        """Raise the error an HTTP status of 300 or more stands for."""
        status, text = reply.status, _text(reply.body, 300)
        if 300 <= status < 400:
            target = reply.headers.get("location", "?")
            hint = f"set kg.endpoint to {target}"
            raise self._error(EndpointHTTPError, f"redirects to {target}", hint)
        if status in (408, 504) or (status >= 500 and _TIMEOUT_TEXT.search(text)):
            hint = "raise kg.timeout_s and the server's time limit, or narrow the query"
            raise self._error(
                EndpointTimeoutError, f"HTTP {status}, out of time: {text}", hint
            )
        if status == 400 or _VIRTUOSO_QUERY_ERROR.search(text):
            what = f"rejected the query (HTTP {status}): {_text(reply.body, 1000)}"
            raise self._error(EndpointQueryError, what, _QUERY_HINT)
        if status >= 500:
            raise _Retry(
                self._error(EndpointHTTPError, f"HTTP {status}: {text}", _SERVER_HINT)
            )
        raise self._error(
            EndpointHTTPError,
            f"HTTP {status}: {text}",
            _client_error_hint(status, text),
        )

    def _check_complete(
        self, reply: _Reply, payload: dict[str, Any], limit: int | None
    ) -> None:
        """Refuse a partial answer that Virtuoso marks as complete-looking."""
        if reply.headers.get("x-sql-state") == "S1TAT":
            raise self._error(
                EndpointTimeoutError,
                "stopped the query at its time limit and sent a partial answer "
                f"({reply.headers.get('x-sql-message', '')[:200]})",
                "raise Virtuoso's MaxQueryExecutionTime, or set kg.page_size",
            )
        cap = reply.headers.get("x-sparql-maxrows", "")
        rows = len(payload.get("results", {}).get("bindings", []))
        if cap.isdigit() and rows >= int(cap) and (limit is None or limit > int(cap)):
            raise self._error(
                EndpointHTTPError,
                f"cut the answer off at {cap} rows (ResultSetMaxRows)",
                f"set kg.page_size below {cap}, or raise the server's limit",
            )

    def _busy(self, reply: _Reply, payload: dict[str, Any] | None) -> EndpointError:
        detail = str(payload["exception"]) if payload and "exception" in payload else ""
        detail = detail or _text(reply.body, 300)
        return self._error(
            EndpointTimeoutError,
            f"HTTP {reply.status}: the server is overloaded or the query exceeded "
            f"its time limit{': ' + detail if detail else ''}",
            "retry later, raise kg.timeout_s and the server's time limit, "
            "or set kg.page_size",
        )

    def _unreachable(self, what: str) -> EndpointUnreachableError:
        return self._error(EndpointUnreachableError, what, _UNREACHABLE_HINT)

    def _error(self, kind: type[_E], what: str, hint: str = "") -> _E:
        """An error of ``kind`` naming the endpoint, what happened and a hint."""
        message = f"SPARQL endpoint {self.config.url}: {what}"
        return kind(f"{message}; {hint}" if hint else message)


def _results_table(payload: dict[str, Any]) -> pa.Table:
    """The table of a SPARQL JSON SELECT answer; see :meth:`SparqlEndpoint.select`."""
    names = [str(v) for v in payload.get("head", {}).get("vars", [])]
    rows = payload.get("results", {}).get("bindings", [])
    columns = {
        name: pa.array([_value(row.get(name)) for row in rows], type=pa.string())
        for name in names
    }
    return pa.table(columns) if columns else pa.table({})


def _value(binding: dict[str, Any] | None) -> str | None:
    """One binding's value as the store spells decoded terms (:mod:`kg.terms`)."""
    if binding is None:
        return None
    value = binding.get("value")
    if not isinstance(value, str):
        return None if value is None else str(value)
    if binding.get("type") == "bnode":
        # Virtuoso names blank nodes `nodeID://b10000`.
        label = value.removeprefix("nodeID://").removeprefix("_:")
        return "_:" + label
    return value


def _json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object, or None."""
    try:
        parsed = _loads(body)
    except _JSON_ERRORS:
        return None
    return parsed if isinstance(parsed, dict) else None


def _is_results(payload: dict[str, Any]) -> bool:
    """Whether ``payload`` has the layout of SPARQL JSON results."""
    if isinstance(payload.get("boolean"), bool):
        return True
    head, results = payload.get("head"), payload.get("results")
    return (
        isinstance(head, dict)
        and isinstance(head.get("vars", []), list)
        and isinstance(results, dict)
        and isinstance(results.get("bindings"), list)
    )


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (number or HTTP date)."""
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _text(body: bytes, limit: int) -> str:
    """The start of ``body`` as one line of text."""
    text = body[: limit * 4].decode("utf-8", errors="replace")
    # Virtuoso appends the whole query to its error messages.
    text = text.split("\nSPARQL query:", 1)[0]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(reply: _Reply) -> str:
    kind = reply.headers.get("content-type", "no content type")
    start = _text(reply.body, 120) or "an empty body"
    return f"HTTP {reply.status}, {kind}: {start!r}"


def _client_error_hint(status: int, text: str) -> str:
    """What to try after a 4xx other than 400."""
    if status == 403 and "timeout" in text.lower():
        return (
            "QLever refuses a timeout above its own limit: lower kg.timeout_s, "
            "set kg.access_token, or turn the qlever_timeout parameter off"
        )
    if status in (401, 403):
        return "check kg.access_token and the server's access rules"
    if status == 404:
        return "check kg.endpoint: QLever answers at /, Virtuoso at /sparql"
    if status in (405, 411, 413, 414, 415):
        return "try kg.method=post-form (or post, or get)"
    return "check kg.endpoint and kg.method"
