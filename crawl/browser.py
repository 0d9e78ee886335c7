"""Web image search through a headless Chromium driven by Playwright.

For each query the driver loads the engine's results URL, accepts its consent
wall when one is shown, scrolls until enough result tiles are on the page or
the page stops growing, and saves the page's final HTML in the run's archive
under the results URL. That HTML is then checked for the engine's robot check
(status ``blocked``) and parsed (``ok``, or ``empty`` when nothing was found).
Replay reads the same HTML back from the archive and parses it again, with no
browser at all, so a recorded search gives the same results offline.

Politeness is per engine: a pause between queries, a pause that doubles after
each block, and after a number of blocks in a row the engine is not asked
again in this run (its remaining queries are marked blocked, saying why).

Entry points: :func:`search_web` (a list of queries on one engine, to Arrow
tables of ``RESULTS_SCHEMA`` and ``SEARCHES_SCHEMA``) and
:func:`check_engines` (one known query per engine: do the parsers still find
results?).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from crawl.engines import bing, duckduckgo, google
from crawl.engines.base import (
    CAPTURE_STATUS_ATTRIBUTE,
    CAPTURE_URL_ATTRIBUTE,
    ParsedResult,
    SafeSearch,
    SearchOptions,
    SearchOutcome,
    SearchStatus,
    WebEngine,
    result_rows,
    search_row,
)
from crawl.records import RESULTS_SCHEMA, SEARCHES_SCHEMA
from crawl.web import Archive
from kg.errors import ConfigError, KgclipError

log = logging.getLogger(__name__)

WEB_ENGINES: dict[str, WebEngine] = {
    engine.name: engine for engine in (google.ENGINE, bing.ENGINE, duckduckgo.ENGINE)
}

Mode = Literal["record", "replay"]
Verdict = Literal["ok", "blocked", "no_results", "unreachable", "error"]

# The query every engine is asked by check_engines: common, photographed often.
CHECK_QUERY = "Eiffel Tower"

# Chromium builds looked for when Playwright's own is not installed, in order:
# Debian's chromium-headless-shell (the binary behind /usr/bin's wrapper
# script), then the full Debian chromium.
SYSTEM_BROWSERS = (
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/bin/chromium-headless-shell",
    "/usr/lib/chromium/chromium",
    "/usr/bin/chromium",
)

# Where Playwright installs its browsers, relative to its browsers folder.
PLAYWRIGHT_BROWSER_GLOBS = (
    "chromium_headless_shell-*/chrome-*/chrome-headless-shell",
    "chromium_headless_shell-*/chrome-*/headless_shell",
    "chromium-*/chrome-linux*/chrome",
)

# Background traffic (updates, sync, field trials, QUIC probes) cannot reach
# anything on a closed network and only slows the browser down.
QUIET_ARGS = (
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)

# Headers of the original answer that do not describe the saved page.
DROPPED_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class BrowserNotFoundError(KgclipError):
    """No Chromium could be found to drive."""


class BrowserLaunchError(KgclipError):
    """Chromium was found but would not start."""


@dataclass(frozen=True)
class BrowserConfig:
    """How web searches are made; the defaults suit the public engines.

    ``results_wanted``: scrolling stops once this many tiles are on the page.
    ``scroll_wait_s``: how long one scroll waits for the page to grow.
    ``min_interval_s``: the least pause between two queries to one engine.
    ``backoff_s``: the pause after a block, doubled for each further block in
    a row, at most ``backoff_max_s``. ``max_consecutive_blocks``: blocks in a
    row after which the engine is dropped for the rest of the run.
    ``base_urls``: engine name -> base URL replacing the engine's own (a
    mirror, or a local test server). ``profile_root``: where the browser keeps
    cookies, one folder per engine; default ``<run_dir>/browser``.
    """

    results_wanted: int = 100
    max_scrolls: int = 20
    scroll_wait_s: float = 3.0
    page_timeout_s: float = 30.0
    min_interval_s: float = 10.0
    backoff_s: float = 60.0
    backoff_max_s: float = 900.0
    max_consecutive_blocks: int = 3
    language: str = "en"
    safe_search: SafeSearch = "moderate"
    excluded_terms: tuple[str, ...] | None = None  # None: each engine's default
    base_urls: Mapping[str, str] = field(default_factory=dict)
    executable_path: str | None = None  # None: found by find_browser
    headless: bool = True
    # None: the browser's own. Debian's headless shell says "HeadlessChrome",
    # which engines may answer with robot checks sooner; set a desktop
    # Chrome's string when that happens.
    user_agent: str | None = None
    profile_root: str | None = None

    def options(self, engine: str) -> SearchOptions:
        return SearchOptions(
            language=self.language,
            safe_search=self.safe_search,
            excluded_terms=self.excluded_terms,
            base_url=self.base_urls.get(engine),
        )


@dataclass(frozen=True)
class EngineCheck:
    """Whether one engine still gives results its parser can read."""

    engine: str
    verdict: Verdict
    num_results: int
    url: str
    detail: str | None = None


def web_engine(name: str) -> WebEngine:
    """The web engine of this name, or ConfigError listing the known ones."""
    if name not in WEB_ENGINES:
        known = ", ".join(sorted(WEB_ENGINES))
        raise ConfigError(f"unknown web search engine {name!r}; use one of: {known}")
    return WEB_ENGINES[name]


def find_browser(explicit: str | None = None) -> str:
    """The Chromium executable to drive: ``explicit`` when given, else
    Playwright's own Chromium when installed, else Debian's
    chromium-headless-shell or chromium. Raises BrowserNotFoundError."""
    if explicit:
        if Path(explicit).is_file():
            return explicit
        raise BrowserNotFoundError(
            f"browser executable {explicit} does not exist; fix the configured "
            "executable path, or leave it empty to find one automatically"
        )
    for candidate in [*_playwright_browsers(), *map(Path, SYSTEM_BROWSERS)]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BrowserNotFoundError(
        "no Chromium found for web search; install Debian's package "
        "(apt-get install chromium-headless-shell) or Playwright's browser "
        "(playwright install chromium-headless-shell), or set the executable path"
    )


def _playwright_browsers() -> list[Path]:
    folder = os.environ.get("PLAYWRIGHT_BROWSERS_PATH")
    root = Path(folder) if folder else Path.home() / ".cache" / "ms-playwright"
    found: list[Path] = []
    for pattern in PLAYWRIGHT_BROWSER_GLOBS:
        found.extend(sorted(root.glob(pattern), reverse=True))
    return found


def launch_args() -> list[str]:
    """Chromium's command line flags; no sandbox only when running as root,
    where Chromium refuses to start with one."""
    return (["--no-sandbox"] if _is_root() else []) + list(QUIET_ARGS)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Capture:
    """A response the engine's parser needs besides the page itself."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class PageSnapshot:
    """A results page as the browser had it at the end: the final answer's
    status and headers, and the page's HTML."""

    url: str
    status: int
    headers: dict[str, str]
    html: str
    captures: list[Capture] = field(default_factory=list)


class BrowserSession:
    """One Chromium with a persistent profile (cookies and consent survive
    between queries and runs), and one tab that loads results pages."""

    def __init__(self, profile_dir: Path, config: BrowserConfig):
        self.profile_dir = profile_dir
        self.config = config
        self._playwright: Any = None
        self._context: Any = None
        self.page: Any = None

    async def __aenter__(self) -> BrowserSession:
        from playwright.async_api import Error, async_playwright

        executable = find_browser(self.config.executable_path)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self._playwright = await async_playwright().start()
        try:
            self._context = await self._launch(executable)
        except Error as error:
            await self._playwright.stop()
            raise BrowserLaunchError(
                f"Chromium at {executable} did not start ({_first_line(error)}); "
                "check that its libraries are installed (run it with --version), "
                "or set another executable path"
            ) from error
        self._context.set_default_timeout(self.config.page_timeout_s * 1000)
        pages = self._context.pages
        self.page = pages[0] if pages else await self._context.new_page()
        log.debug("browser started: %s, profile %s", executable, self.profile_dir)
        return self

    async def _launch(self, executable: str) -> Any:
        assert self._playwright is not None
        return await self._playwright.chromium.launch_persistent_context(
            str(self.profile_dir),
            executable_path=executable,
            headless=self.config.headless,
            args=launch_args(),
            chromium_sandbox=not _is_root(),
            locale=self.config.language,
            user_agent=self.config.user_agent,
            viewport={"width": 1366, "height": 900},
        )

    async def __aexit__(self, *exc_info: object) -> None:
        if self._context is not None:
            await self._context.close()
        if self._playwright is not None:
            await self._playwright.stop()

    async def load(self, engine: WebEngine, url: str) -> PageSnapshot:
        """Load a results page, pass consent, scroll, and read the page.
        Raises Playwright's errors (unreachable host, timeout)."""
        pending: list[asyncio.Task[Capture | None]] = []

        def on_response(response: Any) -> None:
            if engine.capture_marker and engine.capture_marker in response.url:
                pending.append(asyncio.ensure_future(_capture(response)))

        self.page.on("response", on_response)
        try:
            snapshot = await self._load(engine, url, pending)
        finally:
            self.page.remove_listener("response", on_response)
        return snapshot

    async def _load(
        self, engine: WebEngine, url: str, pending: list[asyncio.Task[Capture | None]]
    ) -> PageSnapshot:
        response = await self.page.goto(url, wait_until="load")

        # A consent wall, once accepted, is remembered in the profile's cookies.
        # Accepting leads back to the results or stays on them (a banner); when
        # it leads anywhere else, the results page is loaded anew.
        consent_passed, after_consent = await self._pass_consent(engine)
        if after_consent is not None:
            response = after_consent
        if consent_passed and self.page.url != url:
            response = await self.page.goto(url, wait_until="load")

        # A robot check has no tiles to wait for or scroll through.
        if not engine.is_blocked(await self.page.content()):
            await self._first_tiles(engine)
            await self._scroll(engine)
        if engine.prepare_script:
            await self.page.evaluate(engine.prepare_script)
        captures = [c for c in await asyncio.gather(*pending) if c is not None]
        if captures:
            await self.page.evaluate(EMBED_CAPTURES_SCRIPT, _capture_items(captures))

        headers = dict(await response.all_headers()) if response else {}
        return PageSnapshot(
            url=url,
            status=response.status if response else 0,
            headers=headers,
            html=await self.page.content(),
            captures=captures,
        )

    async def _pass_consent(self, engine: WebEngine) -> tuple[bool, Any]:
        """Click the first visible consent button. Returns whether one was
        clicked, and the answer of the page it led to (None if it led nowhere)."""
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        for selector in engine.consent_selectors:
            button = self.page.locator(selector).first
            if not await button.count() or not await button.is_visible():
                continue
            log.info("%s: accepting the consent wall (%s)", engine.name, selector)
            try:
                async with self.page.expect_navigation(timeout=5000) as navigation:
                    await button.click()
                return True, await navigation.value
            except PlaywrightTimeout:
                return True, None  # a banner in the results page: it stays there
        return False, None

    async def _first_tiles(self, engine: WebEngine) -> None:
        """Wait a little for the first tiles, which some engines add by script
        after the page has loaded; a page without any is read as it is."""
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        with contextlib.suppress(PlaywrightTimeout):
            await self.page.wait_for_selector(
                engine.tile_selector,
                state="attached",
                timeout=self.config.scroll_wait_s * 1000,
            )

    async def _scroll(self, engine: WebEngine) -> None:
        """Scroll to the bottom until enough tiles are shown, or the page
        stops growing and has no "more results" button left to press."""
        tiles = self.page.locator(engine.tile_selector)
        for _ in range(self.config.max_scrolls):
            if await tiles.count() >= self.config.results_wanted:
                return
            height = await self.page.evaluate("document.body.scrollHeight")
            await self.page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            if await self._grew(height):
                continue
            if not await self._press_more(engine, height):
                return

    async def _grew(self, height: int) -> bool:
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        try:
            await self.page.wait_for_function(
                "h => document.body.scrollHeight > h",
                arg=height,
                timeout=self.config.scroll_wait_s * 1000,
            )
        except PlaywrightTimeout:
            return False
        return True

    async def _press_more(self, engine: WebEngine, height: int) -> bool:
        if not engine.more_selector:
            return False
        button = self.page.locator(engine.more_selector).first
        if not await button.count() or not await button.is_visible():
            return False
        await button.click()
        return await self._grew(height)


# Adds captured answers to the page, so that its saved HTML holds them. JSON
# can only hold "</" inside strings, where "<\/" means the same and cannot end
# the script element early.
EMBED_CAPTURES_SCRIPT = f"""
(items) => {{
  for (const item of items) {{
    const script = document.createElement('script');
    script.type = 'application/json';
    script.setAttribute('{CAPTURE_URL_ATTRIBUTE}', item.url);
    script.setAttribute('{CAPTURE_STATUS_ATTRIBUTE}', String(item.status));
    script.textContent = item.body.split('</').join('<\\\\/');
    document.body.appendChild(script);
  }}
}}
"""


async def _capture(response: Any) -> Capture | None:
    from playwright.async_api import Error

    try:
        body = await response.body()
    except Error:
        return None  # a redirect, or a page gone before its body was read
    return Capture(response.url, response.status, await response.all_headers(), body)


def _capture_items(captures: list[Capture]) -> list[dict[str, Any]]:
    return [
        {"url": c.url, "status": c.status, "body": c.body.decode("utf-8", "replace")}
        for c in captures
    ]


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def classify(
    engine: WebEngine, status: int, html: str
) -> tuple[SearchStatus, list[ParsedResult], str | None]:
    """Status, results and error of a results page, live or replayed alike."""
    if status in (403, 429) or engine.is_blocked(html):
        return "blocked", [], f"blocked: {engine.name} showed its robot check"
    if status >= 400:
        return "error", [], f"http_{status}"
    try:
        results = engine.parse(html)
    except Exception:  # one page must not end the run; the traceback is kept
        log.exception("%s: the parser failed on a page", engine.name)
        return "error", [], "parser_failed"
    return ("ok" if results else "empty"), results, None


async def search_live(
    session: BrowserSession,
    engine: WebEngine,
    text: str,
    archive: Archive | None,
    config: BrowserConfig,
) -> SearchOutcome:
    """One query through the browser; the page is written to ``archive``."""
    from playwright.async_api import Error

    url = engine.results_url(text, config.options(engine.name))
    try:
        snapshot = await session.load(engine, url)
    except Error as failure:
        log.warning("%s: %s failed: %s", engine.name, url, _first_line(failure))
        return SearchOutcome(
            "error", error=_error_name(failure), url=url, fetched=now_iso()
        )
    fetched = now_iso()

    location = None
    if archive is not None:
        location = _archive_snapshot(archive, snapshot)
    status, results, error = classify(engine, snapshot.status, snapshot.html)
    return SearchOutcome(status, results, error, url, location, fetched)


def _archive_snapshot(archive: Archive, snapshot: PageSnapshot) -> Any:
    """Write the captured answers, then the page, and say where the page lies."""
    for capture in snapshot.captures:
        archive.record(capture.url, capture.status, capture.headers, capture.body)
    headers = {
        name: value
        for name, value in snapshot.headers.items()
        if name.lower() not in DROPPED_HEADERS
    }
    headers["content-type"] = "text/html; charset=utf-8"
    body = snapshot.html.encode("utf-8")
    return archive.record(snapshot.url, snapshot.status, headers, body)


def _error_name(error: BaseException) -> str:
    """A few words for a browser failure: unreachable, timeout, or its message."""
    message = _first_line(error)
    if "net::ERR_" in message:
        code = message.split("net::ERR_", 1)[1].split()[0]
        return f"unreachable: ERR_{code}"
    if "Timeout" in type(error).__name__ or "Timeout" in message:
        return "timeout"
    return f"browser_error: {message}"


def search_replay(
    engine: WebEngine, text: str, archive: Archive, config: BrowserConfig
) -> SearchOutcome:
    """One query answered from the archive; no browser, no network."""
    url = engine.results_url(text, config.options(engine.name))
    response = archive.lookup(url)
    if response is None:
        return SearchOutcome("error", error="not_in_archive", url=url)
    html = response.body.decode("utf-8", errors="replace")
    status, results, error = classify(engine, response.status, html)
    return SearchOutcome(
        status, results, error, url, response.location, response.fetched
    )


class EngineGate:
    """Politeness towards one engine: the pause before each query, the
    doubling pause after blocks, and dropping the engine after too many."""

    def __init__(
        self,
        config: BrowserConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.consecutive_blocks = 0
        self.next_start = 0.0

    @property
    def dropped(self) -> bool:
        return self.consecutive_blocks >= self.config.max_consecutive_blocks

    async def wait_turn(self) -> None:
        delay = self.next_start - self.clock()
        if delay > 0:
            await self.sleep(delay)

    def done(self, status: SearchStatus) -> None:
        pause = self.config.min_interval_s
        if status == "blocked":
            self.consecutive_blocks += 1
            doubled = self.config.backoff_s * 2 ** (self.consecutive_blocks - 1)
            pause = max(pause, min(doubled, self.config.backoff_max_s))
        else:
            self.consecutive_blocks = 0
        self.next_start = self.clock() + pause


def profile_dir(run_dir: Path | str, config: BrowserConfig, engine: str) -> Path:
    root = (
        Path(config.profile_root) if config.profile_root else Path(run_dir) / "browser"
    )
    return root / engine


async def search_web(
    queries: Sequence[tuple[str, str]],
    engine_name: str,
    archive: Archive | None,
    config: BrowserConfig | None = None,
    mode: Mode = "record",
    *,
    run_dir: Path | str = ".",
) -> tuple[pa.Table, pa.Table]:
    """Search one web engine for each ``(query_id, text)``.

    ``mode`` record drives the browser and writes every results page to
    ``archive`` (None: nothing is written); replay answers from ``archive``
    alone. Returns ``(results, searches)``: Arrow tables of ``RESULTS_SCHEMA``
    and ``SEARCHES_SCHEMA``, one searches row per query. Raises ConfigError
    for an unknown engine or replay without an archive, BrowserNotFoundError
    and BrowserLaunchError when recording cannot start a browser.
    """
    config = config or BrowserConfig()
    engine = web_engine(engine_name)
    started = time.monotonic()

    if mode == "replay":
        if archive is None:
            raise ConfigError("replay needs the run's archive; none was given")
        outcomes = [search_replay(engine, text, archive, config) for _, text in queries]
    else:
        folder = profile_dir(run_dir, config, engine.name)
        outcomes = await _record_searches(engine, queries, archive, config, folder)

    results, searches = _tables(engine.name, queries, outcomes)
    _log_summary(engine.name, mode, outcomes, time.monotonic() - started)
    return results, searches


async def _record_searches(
    engine: WebEngine,
    queries: Sequence[tuple[str, str]],
    archive: Archive | None,
    config: BrowserConfig,
    folder: Path,
) -> list[SearchOutcome]:
    # Known shortcoming: one engine's queries go one at a time through one tab.
    # Against the public engines the pause between queries dominates anyway,
    # but a fast mirror could take several tabs at once (about 5 pages a
    # second come through one tab from a local server). A pool of pages
    # sharing one EngineGate would fix it.
    if not queries:
        return []
    gate = EngineGate(config)
    outcomes: list[SearchOutcome] = []
    async with BrowserSession(folder, config) as session:
        for number, (_, text) in enumerate(queries, start=1):
            if gate.dropped:
                outcomes.append(_dropped(engine, text, config))
                continue
            await gate.wait_turn()
            outcome = await search_live(session, engine, text, archive, config)
            gate.done(outcome.status)
            outcomes.append(outcome)
            if gate.dropped:
                log.warning(
                    "%s: blocked %d times in a row; not asked again in this run",
                    engine.name,
                    gate.consecutive_blocks,
                )
            if number % 10 == 0:
                log.info(
                    "%s: %d of %d queries searched", engine.name, number, len(queries)
                )
    return outcomes


def _dropped(engine: WebEngine, text: str, config: BrowserConfig) -> SearchOutcome:
    return SearchOutcome(
        "blocked",
        error=(
            f"skipped: {engine.name} blocked {config.max_consecutive_blocks} "
            "queries in a row and is not asked again in this run"
        ),
        url=engine.results_url(text, config.options(engine.name)),
        fetched=now_iso(),
    )


def _tables(
    engine: str, queries: Sequence[tuple[str, str]], outcomes: list[SearchOutcome]
) -> tuple[pa.Table, pa.Table]:
    results: list[dict[str, Any]] = []
    searches: list[dict[str, Any]] = []
    for (query_id, text), outcome in zip(queries, outcomes, strict=True):
        keys = {"query_id": query_id, "engine": engine, "query": text}
        results.extend(result_rows(outcome, **keys))
        searches.append(search_row(outcome, **keys))
    return (
        pa.Table.from_pylist(results, schema=RESULTS_SCHEMA),
        pa.Table.from_pylist(searches, schema=SEARCHES_SCHEMA),
    )


def _log_summary(
    engine: str, mode: str, outcomes: list[SearchOutcome], seconds: float
) -> None:
    counts = Counter(outcome.status for outcome in outcomes)
    num_results = sum(len(outcome.results) for outcome in outcomes)
    rate = len(outcomes) / seconds if seconds > 0 else 0.0
    log.info(
        "search engine=%s mode=%s queries=%d ok=%d empty=%d blocked=%d error=%d "
        "results=%d seconds=%.1f queries_per_s=%.2f",
        engine,
        mode,
        len(outcomes),
        counts["ok"],
        counts["empty"],
        counts["blocked"],
        counts["error"],
        num_results,
        seconds,
        rate,
    )


async def check_engines(
    engine_names: Sequence[str] = tuple(WEB_ENGINES),
    config: BrowserConfig | None = None,
    *,
    run_dir: Path | str = ".",
    archive: Archive | None = None,
    query: str = CHECK_QUERY,
) -> list[EngineCheck]:
    """Ask each engine one known query and say whether its parser still finds
    results: ok, blocked, no_results (the layout may have changed),
    unreachable, or error. Only the first screen of results is read.
    Raises BrowserNotFoundError and BrowserLaunchError."""
    config = replace(config or BrowserConfig(), max_scrolls=0)
    checks = []
    for name in engine_names:
        engine = web_engine(name)
        folder = profile_dir(run_dir, config, name)
        async with BrowserSession(folder, config) as session:
            outcome = await search_live(session, engine, query, archive, config)
        checks.append(_verdict(name, outcome))
        log.info("check engine=%s verdict=%s", name, checks[-1].verdict)
    return checks


def _verdict(engine: str, outcome: SearchOutcome) -> EngineCheck:
    error = outcome.error or ""
    verdict: Verdict
    if outcome.status == "ok":
        verdict, detail = "ok", None
    elif outcome.status == "empty":
        verdict = "no_results"
        detail = "the page loaded but no results were parsed; has the layout changed?"
    elif outcome.status == "blocked":
        verdict, detail = "blocked", error
    elif error.startswith(("unreachable", "timeout")):
        verdict, detail = "unreachable", error
    else:
        verdict, detail = "error", error
    return EngineCheck(engine, verdict, len(outcome.results), outcome.url, detail)
