"""The browser driver against a local server shaped like the engines: a
consent page to click first, results that grow as the page is scrolled, a
block page, and a DuckDuckGo-like page that loads its results from i.js.

The server listens on 127.0.0.1 only, on a port the system picks, and every
URL its pages load points back to it. The tests drive a real headless
Chromium and skip when none is installed.
"""

from __future__ import annotations

import asyncio
import html
import json
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import quote, urlsplit

import pytest

from crawl import browser
from crawl.browser import BrowserConfig, EngineGate, check_engines, search_web
from crawl.engines import bing
from crawl.engines.base import SearchStatus
from tests.crawl.fakes import FakeArchive, local_server, params_of


def _chromium_or_skip() -> str:
    pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    try:
        return browser.find_browser()
    except browser.BrowserNotFoundError as error:
        pytest.skip(f"no Chromium binary found: {error}")


# -- the local server ------------------------------------------------------

TILES_PER_BATCH = 20
TOTAL_TILES = 60  # three batches: one on load, two more by scrolling

BING_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{query}</title>
<style>.imgpt {{ height: 200px; }}</style></head><body>
<div id="grid">{tiles}</div>
<script>
const query = {query_json};
let first = {next_first};
let loading = false;
window.addEventListener('scroll', async () => {{
  const bottom = window.innerHeight + window.scrollY;
  if (loading || first > {total} || bottom < document.body.scrollHeight - 300) return;
  loading = true;
  const answer = await fetch('/images/async?q=' + encodeURIComponent(query)
                             + '&first=' + first);
  document.getElementById('grid').insertAdjacentHTML('beforeend', await answer.text());
  first += {per_batch};
  loading = false;
}});
</script></body></html>"""

CONSENT_PAGE = """<!DOCTYPE html><html><head><title>Before you continue</title></head>
<body><p>We use cookies.</p>
<button id="bnp_btn_accept" onclick="document.cookie = 'consent=yes; path=/';
  location.href = {target};">Accept</button></body></html>"""

BLOCK_PAGE = (
    "<!DOCTYPE html><html><head><title>One last step</title></head><body>"
    "<h1>One last step</h1><p>Please solve the challenge below to continue</p>"
    '<div id="b_captcha"></div></body></html>'
)

DDG_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{query}</title>
<style>.tile--img {{ height: 200px; }}</style></head><body>
<div id="tiles"></div>
<script>
const query = {query_json};
let next = '/i.js?o=json&vqd=4-1&s=0&q=' + encodeURIComponent(query);
let loading = false;
async function more() {{
  if (loading || !next) return;
  loading = true;
  const answer = await (await fetch(next)).json();
  for (const result of answer.results) {{
    const tile = document.createElement('div');
    tile.className = 'tile tile--img';
    tile.textContent = result.title;
    document.getElementById('tiles').appendChild(tile);
  }}
  next = answer.next ? '/' + answer.next : null;
  loading = false;
}}
window.addEventListener('scroll', () => {{
  if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 300) more();
}});
more();
</script></body></html>"""


def bing_tiles(query: str, first: int) -> str:
    tiles = []
    for number in range(first, min(first + TILES_PER_BATCH, TOTAL_TILES + 1)):
        metadata = {
            "murl": f"https://images.example.org/{quote(query)}/{number}.jpg",
            "purl": f"https://pages.example.org/{quote(query)}/{number}",
            "turl": f"https://thumbs.example.org/{number}",
            "t": f"{query} {number}",
        }
        attribute = html.escape(json.dumps(metadata))
        tiles.append(
            f'<div class="imgpt"><a class="iusc" m="{attribute}">'
            f'<img alt="{html.escape(query)}"></a><div class="img_info">'
            f'<span class="nowrap">{640 + number} x 480 · jpeg</span></div></div>'
        )
    return "\n".join(tiles)


def ddg_answer(query: str, start: int) -> dict[str, object]:
    results = [
        {
            "image": f"https://images.example.org/ddg/{start + n}.jpg",
            "url": f"https://pages.example.org/ddg/{start + n}",
            "title": f"{query} </script> {start + n}",
            "thumbnail": f"https://thumbs.example.org/ddg/{start + n}",
            "width": 800,
            "height": 600,
        }
        for n in range(1, 11)
    ]
    answer: dict[str, object] = {"query": query, "results": results}
    if start == 0:
        answer["next"] = f"i.js?o=json&vqd=4-1&s=10&q={quote(query)}"
    return answer


@dataclass
class EngineServer:
    base_url: str
    hits: Counter[str] = field(default_factory=Counter)
    queries: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server_state: EngineServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        params = params_of(self.path)
        self.server_state.hits[parts.path] += 1
        if parts.path == "/images/search":
            self._bing_search(params.get("q", ""))
        elif parts.path == "/images/async":
            tiles = bing_tiles(params.get("q", ""), int(params.get("first", "1")))
            self._send(200, tiles)
        elif parts.path == "/consent":
            target = json.dumps(params.get("continue", "/"))
            self._send(200, CONSENT_PAGE.format(target=html.escape(target)))
        elif parts.path == "/" and "q" in params:
            query = params["q"]
            self._send(200, DDG_PAGE.format(query=query, query_json=json.dumps(query)))
        elif parts.path == "/i.js":
            answer = ddg_answer(params.get("q", ""), int(params.get("s", "0")))
            self._send(200, json.dumps(answer), "application/json")
        else:
            self._send(404, "not here")

    def _bing_search(self, query: str) -> None:
        if "consent=yes" not in self.headers.get("Cookie", ""):
            self.send_response(302)
            self.send_header("Location", f"/consent?continue={quote(self.path)}")
            self.end_headers()
            return
        self.server_state.queries.append(query)
        if "blockme" in query:
            self._send(200, BLOCK_PAGE)
            return
        page = BING_PAGE.format(
            query=html.escape(query),
            query_json=json.dumps(query),
            tiles=bing_tiles(query, 1),
            next_first=TILES_PER_BATCH + 1,
            total=TOTAL_TILES,
            per_batch=TILES_PER_BATCH,
        )
        self._send(200, page)

    def _send(self, status: int, body: str, kind: str = "text/html") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output quiet


@pytest.fixture
def engines() -> Iterator[EngineServer]:
    """The engine-shaped server on 127.0.0.1, and what it has seen."""
    with local_server(_Handler) as base_url:
        state = EngineServer(base_url=base_url)
        _Handler.server_state = state
        yield state


def fast_config(state: EngineServer, tmp_path, **changes) -> BrowserConfig:
    config = BrowserConfig(
        results_wanted=100,
        scroll_wait_s=1.0,
        page_timeout_s=10.0,
        min_interval_s=0.0,
        backoff_s=0.0,
        max_consecutive_blocks=2,
        excluded_terms=(),
        base_urls={"bing": state.base_url, "duckduckgo": state.base_url},
        profile_root=str(tmp_path / "profiles"),
    )
    return BrowserConfig(**{**config.__dict__, **changes})


def without_fetched(table) -> list[dict[str, object]]:
    return [
        {k: v for k, v in row.items() if k != "fetched"} for row in table.to_pylist()
    ]


# -- the tests ----------------------------------------------------------------


def test_consent_scrolling_archive_and_replay(engines, tmp_path, monkeypatch):
    _chromium_or_skip()
    archive = FakeArchive()
    config = fast_config(engines, tmp_path)
    queries = [("q1", "house sparrow"), ("q2", "tree sparrow")]

    results, searches = asyncio.run(
        search_web(queries, "bing", archive, config, "record", run_dir=tmp_path)
    )

    # The consent page was shown once, clicked, and remembered for the second
    # query; scrolling loaded all three batches of tiles, not just the first.
    assert engines.hits["/consent"] == 1
    assert engines.queries == ["house sparrow", "tree sparrow"]
    assert searches.column("status").to_pylist() == ["ok", "ok"]
    assert searches.column("num_results").to_pylist() == [TOTAL_TILES, TOTAL_TILES]
    assert TOTAL_TILES > TILES_PER_BATCH
    first = results.to_pylist()[0]
    assert first["image_url"] == "https://images.example.org/house%20sparrow/1.jpg"
    assert (first["rank"], first["width"], first["height"]) == (1, 641, 480)

    # Each results page is in the archive under its results URL.
    urls = searches.column("url").to_pylist()
    assert all(archive.lookup(url) is not None for url in urls)
    assert searches.column("warc_file").to_pylist() == ["fake.warc.gz"] * 2

    # Replay gives the same rows without starting a browser.
    async def no_browser(self):
        raise AssertionError("replay must not start a browser")

    monkeypatch.setattr(browser.BrowserSession, "__aenter__", no_browser)
    replayed, replayed_searches = asyncio.run(
        search_web(queries, "bing", archive, config, "replay")
    )
    assert without_fetched(replayed) == without_fetched(results)
    assert without_fetched(replayed_searches) == without_fetched(searches)

    # A query never recorded is an error row, not an exception.
    _, missing = asyncio.run(
        search_web([("q9", "wren")], "bing", archive, config, "replay")
    )
    assert missing.to_pylist()[0]["status"] == "error"
    assert missing.to_pylist()[0]["error"] == "not_in_archive"


def test_blocks_are_recorded_and_the_engine_is_dropped(engines, tmp_path):
    _chromium_or_skip()
    archive = FakeArchive()
    config = fast_config(engines, tmp_path, max_consecutive_blocks=2)
    queries = [
        ("q1", "sparrow"),
        ("q2", "blockme one"),
        ("q3", "blockme two"),
        ("q4", "blockme three"),
        ("q5", "robin"),
    ]

    _, searches = asyncio.run(
        search_web(queries, "bing", archive, config, run_dir=tmp_path)
    )
    rows = searches.to_pylist()

    assert [row["status"] for row in rows] == ["ok"] + ["blocked"] * 4
    assert rows[1]["error"].startswith("blocked: bing")
    assert "not asked again" in rows[3]["error"]
    assert "not asked again" in rows[4]["error"]

    # After the second block in a row the engine was left alone.
    assert engines.queries == ["sparrow", "blockme one", "blockme two"]
    assert archive.lookup(rows[2]["url"]) is not None
    assert archive.lookup(rows[3]["url"]) is None


def test_answers_loaded_by_script_are_captured_and_saved(engines, tmp_path):
    _chromium_or_skip()
    archive = FakeArchive()
    config = fast_config(engines, tmp_path)

    results, searches = asyncio.run(
        search_web([("q1", "sparrow")], "duckduckgo", archive, config, run_dir=tmp_path)
    )

    # Two i.js answers of ten: the first on load, the second by scrolling.
    assert searches.to_pylist()[0]["status"] == "ok"
    assert results.num_rows == 20
    assert results.column("title").to_pylist()[0] == "sparrow </script> 1"
    assert engines.hits["/i.js"] == 2

    # Both answers are archived on their own as well, and the saved page
    # replays to the same results.
    assert sum("/i.js" in url for url in archive.records) == 2
    replayed, _ = asyncio.run(
        search_web([("q1", "sparrow")], "duckduckgo", archive, config, "replay")
    )
    assert without_fetched(replayed) == without_fetched(results)


def test_check_engines_reports_ok_and_unreachable(engines, tmp_path):
    _chromium_or_skip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = fast_config(
        engines,
        tmp_path,
        base_urls={
            "bing": engines.base_url,
            "duckduckgo": f"http://127.0.0.1:{closed_port}",
        },
    )

    checks = asyncio.run(
        check_engines(["bing", "duckduckgo"], config, run_dir=tmp_path)
    )

    assert [check.verdict for check in checks] == ["ok", "unreachable"]
    assert checks[0].num_results >= TILES_PER_BATCH
    assert checks[1].detail is not None
    assert "ERR_CONNECTION_REFUSED" in checks[1].detail


def test_engine_gate_waits_doubles_after_blocks_and_drops():
    clock = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    config = BrowserConfig(
        min_interval_s=2.0, backoff_s=10.0, backoff_max_s=30.0, max_consecutive_blocks=4
    )
    gate = EngineGate(config, clock=lambda: clock[0], sleep=sleep)

    async def run(statuses: list[SearchStatus]) -> None:
        for status in statuses:
            await gate.wait_turn()
            gate.done(status)

    asyncio.run(
        run(["ok", "blocked", "blocked", "ok", "blocked", "blocked", "blocked"])
    )
    assert waits == [2.0, 10.0, 20.0, 2.0, 10.0, 20.0]
    assert not gate.dropped
    gate.done("blocked")
    assert gate.dropped


def test_launch_flags_and_missing_browser(monkeypatch, tmp_path):
    args = browser.launch_args()
    for flag in browser.QUIET_ARGS:
        assert flag in args
    assert ("--no-sandbox" in args) == browser._is_root()

    monkeypatch.setattr(browser, "SYSTEM_BROWSERS", ())
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path))
    with pytest.raises(browser.BrowserNotFoundError, match="chromium-headless-shell"):
        browser.find_browser()
    with pytest.raises(browser.BrowserNotFoundError, match="does not exist"):
        browser.find_browser(str(tmp_path / "nothing"))
    assert bing.ENGINE is browser.web_engine("bing")
