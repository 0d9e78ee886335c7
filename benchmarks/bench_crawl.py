"""Benchmark kgclip's image download against img2dataset, and its browser search.

Everything runs on this machine; nothing is sent beyond 127.0.0.1.

1. **The web.** One server process (this file with ``--serve``) listens on
   ``--hosts`` ports of 127.0.0.1. Each port is one host to both downloaders
   (kgclip's politeness works per host and port). Every host serves a
   robots.txt that allows everything and the real JPEGs of
   ``shared/data/images/flowers5``, held in memory; one more port serves
   Bing-shaped results pages and the server's own counters. The server runs
   apart from the downloaders, so their CPU time is their own, and it counts
   per host the requests, the connections open at once and the time between
   request starts.
2. **The URLs.** ``--urls`` distinct image URLs, ``/img/<n>/<class>/<file>``,
   spread round-robin over the hosts, each a real file (the 4,317 files
   repeat under new URLs).
3. **kgclip**: ``crawl.download.download`` in one process, one partition,
   with politeness on: robots.txt, ``X-Robots-Tag``, at most
   ``--per-host`` connections per host and ``--host-delay`` seconds between
   request starts on one host; every answer into a WARC archive, one row
   per URL into Parquet.
4. **img2dataset** on the same URL list, as alike as its options allow: one
   process, ``--threads`` threads, no resizing or re-encoding, no EXIF,
   SHA-256 of each image, webdataset tar output. It honours
   ``X-Robots-Tag`` but has no robots.txt and no per-host limit.
5. **Result pages per second**: ``crawl.browser.search_web`` on the
   Bing-shaped pages (tiles with thumbnails, two more batches loaded by
   scrolling) for ``--queries`` queries, through headless Chromium, every
   page saved to a WARC archive. Skipped, saying why, without Chromium.

Each tool runs in its own subprocess. "Per core" figures are downloads per
CPU-second: user+sys of all threads. Each tool gets two rows: the download
alone (kgclip: ``download()``; img2dataset: its download process's
``download_shard``, timed from inside that process) and the whole process
tree (interpreter start, imports, and for img2dataset its spawned download
and logger processes). The goal: kgclip's downloads per CPU-second at least
twice img2dataset's, download alone, with politeness on. The table is
printed and written to ``--out/bench_crawl.json`` and ``--out/bench_crawl.md``.

Run it as ``make bench-crawl`` or::

    .venv/bin/python benchmarks/bench_crawl.py [--urls N] [--hosts N]
        [--host-delay S] [--per-host N] [--max-connections N]
        [--warc-level N] [--threads N] [--repeat N] [--queries N]
        [--images DIR] [--out DIR] [--skip-img2dataset] [--skip-browser]

``benchmarks/README.md`` explains each figure and holds measured results.
The exit status is 1 when a check fails (a URL not downloaded, bytes that
differ from the files, robots.txt asked more than once per host, more
connections to one host than allowed); a missed speed goal is reported, not
fatal, and so are request starts closer than the host delay as the server
saw them, since the server's own scheduling on a busy machine moves them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import common
from common import Row, fmt, rate, verdict

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "images" / "flowers5"
LOOPBACK = "127.0.0.1"  # the only address anything here listens on or asks
CHILD_TIMEOUT_S = 600
SERVER_LIFETIME_S = 1800  # the server stops by itself after this long
# Set in img2dataset's download process: where it appends each shard's times.
SHARD_CLOCK_ENV = "BENCH_CRAWL_SHARD_CLOCK"
GOAL_RATIO = 2.0  # kgclip's downloads per CPU-second over img2dataset's

ROBOTS_TXT = b"User-agent: *\nAllow: /\n"
TILES_PER_BATCH = 35  # Bing shows about 35 tiles, then more as one scrolls
TILE_BATCHES = 3
BING_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{query}</title>
<style>.imgpt {{ height: 200px; }} .imgpt img {{ width: 128px; }}</style></head>
<body><div id="grid">{tiles}</div>
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


# --------------------------------------------------------------------------
# The web: a server process on many ports of 127.0.0.1


def image_files(folder: Path) -> list[str]:
    """The JPEGs of the folder, relative to it, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.jpg"))


@dataclass
class SiteCounts:
    """What one host (port) of the web saw."""

    requests: int = 0
    robots: int = 0
    connections: int = 0  # opened in all
    open: int = 0
    peak_open: int = 0
    last_start: float = -math.inf


@dataclass
class WebState:
    """The server's images and counters, shared by its sites."""

    images: dict[str, bytes]
    sites: list[SiteCounts]
    gaps_s: list[float] = field(default_factory=list)
    image_port: int = 0

    def reset(self) -> None:
        self.sites = [SiteCounts() for _ in self.sites]
        self.gaps_s = []

    def started(self, site: int) -> None:
        counts = self.sites[site]
        now = time.monotonic()
        counts.requests += 1
        self.gaps_s.append(now - counts.last_start)
        counts.last_start = now

    def summary(self, delay_s: float) -> dict[str, Any]:
        """Counts over all hosts; gaps between request starts on one host, and
        how many were shorter than half of ``delay_s`` (a margin for the time
        a request takes to arrive)."""
        gaps = sorted(g for g in self.gaps_s if math.isfinite(g))
        sites = self.sites
        return {
            "gaps_under_half_delay": sum(g < delay_s / 2 for g in gaps),
            "requests": sum(s.requests for s in sites),
            "robots_requests": sum(s.robots for s in sites),
            "most_robots_requests_one_host": max(s.robots for s in sites),
            "connections": sum(s.connections for s in sites),
            "most_open_one_host": max(s.peak_open for s in sites),
            "min_gap_ms": round(gaps[0] * 1000, 2) if gaps else None,
            "p01_gap_ms": round(gaps[len(gaps) // 100] * 1000, 2) if gaps else None,
            "median_gap_ms": round(statistics.median(gaps) * 1000, 2) if gaps else None,
            "cpu_s": round(time.process_time(), 3),
        }


def site_server(site: int, state: WebState) -> Any:
    """An aiohttp low-level server for one host that counts its connections."""
    from aiohttp import web

    class SiteServer(web.Server):
        def connection_made(self, handler: Any, transport: Any) -> None:
            super().connection_made(handler, transport)
            counts = state.sites[site]
            counts.connections += 1
            counts.open += 1
            counts.peak_open = max(counts.peak_open, counts.open)

        def connection_lost(
            self, handler: Any, exc: BaseException | None = None
        ) -> None:
            super().connection_lost(handler, exc)
            state.sites[site].open -= 1

    async def answer(request: web.BaseRequest) -> web.Response:
        state.started(site)
        path = request.path
        if path == "/robots.txt":
            state.sites[site].robots += 1
            return web.Response(body=ROBOTS_TXT, content_type="text/plain")
        body = (
            state.images.get(path.split("/", 3)[-1])
            if path.startswith("/img/")
            else None
        )
        if body is None:
            return web.Response(status=404, text="not here")
        return web.Response(body=body, content_type="image/jpeg")

    return SiteServer(answer)


def control_server(state: WebState) -> Any:
    """The extra port: Bing-shaped results pages, thumbnails, the counters."""
    from aiohttp import web

    async def answer(request: web.BaseRequest) -> web.Response:
        path, query = request.path, request.query
        if path == "/_stats":
            return web.json_response(state.summary(float(query.get("delay_s", 0))))
        if path == "/_reset":
            state.reset()
            return web.json_response({"reset": True})
        if path.startswith("/thumb/"):
            body = state.images.get(path.removeprefix("/thumb/"))
            if body is not None:
                return web.Response(body=body, content_type="image/jpeg")
        if path == "/images/search":
            return web.Response(
                text=bing_page(query.get("q", ""), state), content_type="text/html"
            )
        if path == "/images/async":
            first = int(query.get("first", "1"))
            tiles = bing_tiles(query.get("q", ""), first, state)
            return web.Response(text=tiles, content_type="text/html")
        return web.Response(status=404, text="not here")

    return web.Server(answer)


def bing_tiles(query: str, first: int, state: WebState) -> str:
    """Result tiles ``first`` on, marked up as Bing marks them up."""
    names = sorted(state.images)
    last = min(first + TILES_PER_BATCH, TILES_PER_BATCH * TILE_BATCHES + 1)
    tiles = []
    for number in range(first, last):
        name = names[(number * 7919 + len(query)) % len(names)]
        metadata = {
            "murl": f"http://{LOOPBACK}:{state.image_port}/img/{number}/{name}",
            "purl": f"https://pages.example.org/{quote(query)}/{number}",
            "turl": f"/thumb/{name}",
            "t": f"{query} {number}",
        }
        attribute = html.escape(json.dumps(metadata))
        tiles.append(
            f'<div class="imgpt"><a class="iusc" m="{attribute}">'
            f'<img src="/thumb/{name}" alt="{html.escape(query)}"></a>'
            '<div class="img_info"><span class="nowrap">128 x 128 · jpeg</span>'
            "</div></div>"
        )
    return "\n".join(tiles)


def bing_page(query: str, state: WebState) -> str:
    return BING_PAGE.format(
        query=html.escape(query),
        query_json=json.dumps(query),
        tiles=bing_tiles(query, 1, state),
        next_first=TILES_PER_BATCH + 1,
        total=TILES_PER_BATCH * TILE_BATCHES,
        per_batch=TILES_PER_BATCH,
    )


async def serve(folder: Path, num_hosts: int) -> None:
    """Listen on ``num_hosts`` + 1 ports of 127.0.0.1 until stdin closes.

    Prints ``{"hosts": [ports], "control": port}`` as one line first.
    """
    images = {name: (folder / name).read_bytes() for name in image_files(folder)}
    state = WebState(images, [SiteCounts() for _ in range(num_hosts)])
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(site_server(i, state), LOOPBACK, 0, backlog=1024)
        for i in range(num_hosts)
    ]
    control = await loop.create_server(control_server(state), LOOPBACK, 0)
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    state.image_port = ports[0]
    print(json.dumps({"hosts": ports, "control": control.sockets[0].getsockname()[1]}))
    sys.stdout.flush()

    # Serve until the benchmark closes stdin (or dies), or the lifetime ends.
    closed: asyncio.Future[None] = loop.create_future()

    class StdinWatch(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            if not closed.done():
                closed.set_result(None)

    await loop.connect_read_pipe(StdinWatch, sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed, SERVER_LIFETIME_S)


class ImageWeb:
    """The server process, seen from the benchmark."""

    def __init__(self, folder: Path, num_hosts: int, log_path: Path) -> None:
        command = [sys.executable, __file__, "--serve", str(folder), str(num_hosts)]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the web server did not start; see {log_path}")
        ports = json.loads(line)
        self.ports: list[int] = ports["hosts"]
        self.control = f"http://{LOOPBACK}:{ports['control']}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def ask(self, path: str) -> dict[str, Any]:
        with self._opener.open(self.control + path, timeout=10) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def build_urls(ports: list[int], files: list[str], count: int) -> list[str]:
    """``count`` distinct URLs, round-robin over the hosts, each a real file."""
    return [
        f"http://{LOOPBACK}:{ports[n % len(ports)]}/img/{n}/{files[n % len(files)]}"
        for n in range(count)
    ]


# --------------------------------------------------------------------------
# Workers: each runs in its own subprocess and returns a JSON-able dict


def work_kgclip(
    urls_file: str, run_dir: str, fetch: dict[str, Any], download: dict[str, Any]
) -> dict[str, Any]:
    """kgclip's download stage: one process, one partition."""
    from crawl.download import DownloadConfig
    from crawl.download import download as run_download
    from crawl.fetch import FetchConfig

    urls = Path(urls_file).read_text().split()
    config = DownloadConfig(fetch=FetchConfig(**fetch), **download)
    clock = common.Clock(children=True)
    counts = run_download(urls, Path(run_dir), config, partition="p000")
    return {**clock.read(), "counts": counts, "config": asdict(config)}


def img2dataset_options(threads: int, num_urls: int) -> dict[str, Any]:
    """img2dataset's settings, as close to kgclip's work as it allows."""
    return {
        "input_format": "txt",
        "output_format": "webdataset",  # tar shards, as kgclip writes WARC
        "processes_count": 1,
        "thread_count": threads,
        "resize_mode": "no",
        "disable_all_reencoding": True,  # keep the bytes as they came
        "extract_exif": False,
        "compute_hash": "sha256",  # kgclip hashes every image too
        "number_sample_per_shard": max(num_urls, 10),  # one shard, no tail
        "timeout": 10,
        "retries": 0,
        # "overwrite" would delete the folder img2dataset has just put its
        # temporary files in; the benchmark hands it a folder not there yet.
        "incremental_mode": "incremental",
        "enable_wandb": False,
    }


def work_img2dataset(urls_file: str, out_dir: str, threads: int) -> dict[str, Any]:
    """img2dataset on the URL list: counts from its stats files, times of its
    download process's shards from the clock this module installs there."""
    from img2dataset import download

    num_urls = len(Path(urls_file).read_text().split())
    options = img2dataset_options(threads, num_urls)
    shard_times = Path(out_dir + ".shards.jsonl")
    shard_times.unlink(missing_ok=True)
    os.environ[SHARD_CLOCK_ENV] = str(shard_times)  # inherited by its processes
    download(url_list=urls_file, output_folder=out_dir, **options)
    shards = [json.loads(line) for line in shard_times.read_text().splitlines()]
    return {
        "wall_s": round(sum(shard["wall_s"] for shard in shards), 3),
        "cpu_s": round(sum(shard["cpu_s"] for shard in shards), 3),
        "shards": shards,
        "options": options,
        **img2dataset_counts(Path(out_dir)),
    }


def clock_img2dataset_shards(record_file: str) -> None:
    """Time each ``Downloader.download_shard`` of this process into a file.

    img2dataset downloads in a process it spawns, which imports this module
    as ``__mp_main__``; the clock goes in there, so that the download's own
    CPU time is measured apart from the imports and the process start.
    """
    from img2dataset.downloader import Downloader

    original = Downloader.download_shard

    def timed(self: Any, row: Any) -> Any:
        clock = common.Clock(children=True)
        try:
            return original(self, row)
        finally:
            with open(record_file, "a") as out:
                out.write(json.dumps({"shard": row[0], **clock.read()}) + "\n")

    Downloader.download_shard = timed


def img2dataset_counts(folder: Path) -> dict[str, Any]:
    """Successes, failures and image bytes of an img2dataset output folder."""
    stats = [json.loads(p.read_text()) for p in folder.glob("*_stats.json")]
    image_bytes = 0
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            image_bytes += sum(m.size for m in tar if m.name.endswith(".jpg"))
    errors: dict[str, int] = {}
    for shard in stats:
        for status, count in shard.get("status_dict", {}).items():
            if status != "success":
                errors[status] = errors.get(status, 0) + count
    return {
        "counts": {
            "num_urls": sum(s["count"] for s in stats),
            "num_ok": sum(s["successes"] for s in stats),
            "num_failed": sum(s["count"] - s["successes"] for s in stats),
            "bytes": image_bytes,
            "errors": errors,
        }
    }


def work_browser(
    base_url: str, queries: list[str], run_dir: str, scroll_wait_s: float
) -> dict[str, Any]:
    """Bing-shaped result pages through crawl.browser.search_web: one query
    first (the browser's start), then all of them in a new session."""
    from crawl.archive import WarcArchive
    from crawl.browser import BrowserConfig, search_web

    config = BrowserConfig(
        results_wanted=TILES_PER_BATCH * (TILE_BATCHES - 1) + 1,
        scroll_wait_s=scroll_wait_s,
        page_timeout_s=30.0,
        min_interval_s=0.0,  # the pause between queries would be all we measure
        backoff_s=0.0,
        excluded_terms=(),
        base_urls={"bing": base_url},
        profile_root=str(Path(run_dir) / "profiles"),
    )
    numbered = [(f"q{i}", text) for i, text in enumerate(queries)]
    found: dict[str, Any] = {}
    with WarcArchive(Path(run_dir) / "archive", writer_id="bench") as archive:
        for label, batch in (("one", numbered[:1]), ("all", numbered)):
            clock = common.Clock(children=True)
            results, searches = asyncio.run(
                search_web(batch, "bing", archive, config, run_dir=run_dir)
            )
            statuses = searches.column("status").to_pylist()
            found[label] = {
                **clock.read(),
                "queries": len(batch),
                "ok": statuses.count("ok"),
                "results": results.num_rows,
            }
    return found


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "kgclip": work_kgclip,
    "img2dataset": work_img2dataset,
    "browser": work_browser,
}


def worker_main(kind: str, args_file: str, result_file: str) -> None:
    """Entry point of a worker subprocess."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    common.worker_main(WORKERS, kind, args_file, result_file)


def child_env() -> dict[str, str]:
    """The environment of the workers: no proxies (everything is local), and
    no update checks or telemetry from img2dataset's dependencies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = f"{LOOPBACK},localhost"
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    env["WANDB_MODE"] = "disabled"
    return env


def run_worker(out: Path, name: str, kind: str, **kwargs: Any) -> dict[str, Any]:
    """Run one worker of this file in a subprocess (see ``common.run_worker``);
    ``child_cpu_s`` covers the whole process tree, start-up included."""
    return common.run_worker(
        __file__, out, name, kind, timeout_s=CHILD_TIMEOUT_S, env=child_env(), **kwargs
    )


# --------------------------------------------------------------------------
# The benchmark steps


@dataclass
class Figures:
    """Everything measured, for the table and the JSON file."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    kgclip: dict[str, Any] = field(default_factory=dict)
    img2dataset: dict[str, Any] = field(default_factory=dict)
    browser: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    goals: dict[str, Any] = field(default_factory=dict)


def fetch_settings(args: argparse.Namespace) -> dict[str, Any]:
    """kgclip's fetch settings: the defaults, politeness on, 127.0.0.1 allowed."""
    return {
        "contact": "bench@example.org",
        "robots": True,
        "x_robots_tag": True,
        "per_host_connections": args.per_host,
        "host_delay_s": args.host_delay,
        "max_connections": args.max_connections,
        "allow_networks": [f"{LOOPBACK}/32"],
    }


def measured(
    web: ImageWeb, run: Callable[[], dict[str, Any]], delay_s: float
) -> dict[str, Any]:
    """Run a tool with the server's counters reset; add what the server saw,
    gaps between request starts on a host compared with ``delay_s``."""
    web.ask("/_reset")
    before = web.ask(f"/_stats?delay_s={delay_s}")
    found = run()
    after = web.ask(f"/_stats?delay_s={delay_s}")
    after["cpu_s"] = round(after["cpu_s"] - before["cpu_s"], 3)
    return {**found, "server": after}


def step_kgclip(
    out: Path, web: ImageWeb, urls_file: Path, args: argparse.Namespace, run: int
) -> dict[str, Any]:
    run_dir = fresh(out / "crawl-kgclip")
    settings = {"warc_compress_level": args.warc_level}
    return measured(
        web,
        lambda: run_worker(
            out, f"kgclip-{run}", "kgclip", urls_file=str(urls_file),
            run_dir=str(run_dir), fetch=fetch_settings(args), download=settings,
        ),
        args.host_delay,
    )  # fmt: skip


def step_img2dataset(
    out: Path, web: ImageWeb, urls_file: Path, args: argparse.Namespace, run: int
) -> dict[str, Any]:
    folder = out / "crawl-img2dataset"
    shutil.rmtree(folder, ignore_errors=True)  # it must not exist, see options
    return measured(
        web,
        lambda: run_worker(
            out, f"img2dataset-{run}", "img2dataset", urls_file=str(urls_file),
            out_dir=str(folder), threads=args.threads,
        ),
        args.host_delay,
    )  # fmt: skip


def step_downloads(
    out: Path, web: ImageWeb, urls_file: Path, args: argparse.Namespace, f: Figures
) -> None:
    """Each tool ``--repeat`` times, taking turns, so that a change in the
    machine's load falls on both; the run of median CPU time is reported."""
    missing = None if args.skip_img2dataset else img2dataset_missing()
    if args.skip_img2dataset or missing:
        f.img2dataset = {"skipped": missing or "--skip-img2dataset"}
        print(f"  img2dataset skipped: {f.img2dataset['skipped']}", flush=True)
    mine, theirs = [], []
    for run in range(args.repeat):
        mine.append(step_kgclip(out, web, urls_file, args, run))
        if not f.img2dataset.get("skipped"):
            theirs.append(step_img2dataset(out, web, urls_file, args, run))
    f.kgclip = median_run(mine)
    if theirs:
        f.img2dataset = median_run(theirs)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU time (the lower of an even count), with a
    summary of every run under ``runs``."""
    done = sorted((r for r in runs if r["error"] is None), key=lambda r: r["cpu_s"])
    chosen = done[(len(done) - 1) // 2] if done else runs[-1]
    keys = ("wall_s", "cpu_s", "child_wall_s", "child_cpu_s", "error")
    return {**chosen, "runs": [{k: r.get(k) for k in keys} for r in runs]}


def step_browser(out: Path, web: ImageWeb, args: argparse.Namespace) -> dict[str, Any]:
    missing = browser_missing()
    if missing:
        print(f"  browser skipped: {missing}", flush=True)
        return {"skipped": missing}
    classes = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    queries = [f"{classes[i % 5]} flower {i}" for i in range(args.queries)]
    return run_worker(
        out, "browser", "browser", base_url=web.control, queries=queries,
        run_dir=str(fresh(out / "crawl-browser")), scroll_wait_s=2.0,
    )  # fmt: skip


def browser_missing() -> str | None:
    """None when a Chromium can be driven; else why not."""
    try:
        import playwright.async_api  # noqa: F401

        from crawl.browser import BrowserNotFoundError, find_browser
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    try:
        find_browser()
    except BrowserNotFoundError as error:
        return str(error)
    return None


def img2dataset_missing() -> str | None:
    """None when img2dataset can be imported here; else why not."""
    probe = [sys.executable, "-c", "import img2dataset"]
    done = subprocess.run(probe, capture_output=True, text=True, env=child_env())
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    reason = lines[-1] if lines else f"exit {done.returncode}"
    return f"{reason} (install it with .venv/bin/pip install img2dataset)"


def fresh(path: Path) -> Path:
    """An empty folder: removed first when it exists."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def machine_info(images: Path) -> dict[str, Any]:
    packages = ("aiohttp", "img2dataset", "playwright")
    return {
        **common.machine_info("crawl"),
        "images": str(images),
        **{package: common.package_version(package) for package in packages},
    }


# --------------------------------------------------------------------------
# Report


HEADERS = ["tool", "URLs", "ok", "wall s", "CPU s", "downloads/s",
           "downloads per CPU-s", "server CPU s", "most connections to a host",
           "starts < ½ delay apart", "politeness"]  # fmt: skip


def tool_rows(label: str, run: dict[str, Any], politeness: str) -> list[Row]:
    """The download alone, then the whole process tree, of one tool."""
    if run.get("error") or "counts" not in run:
        reason = str(run.get("skipped") or run.get("error") or "not run")
        return [[label, *["–"] * (len(HEADERS) - 2), reason]]
    counts, server = run["counts"], run.get("server", {})
    ok = counts["num_ok"]
    gaps = f"{server.get('gaps_under_half_delay', 0):,} of {server['requests']:,}"
    return [
        [f"{label}, download alone", fmt(counts["num_urls"]), fmt(ok),
         fmt(run["wall_s"], 2), fmt(run["cpu_s"], 2), fmt(rate(ok, run["wall_s"])),
         fmt(rate(ok, run["cpu_s"])), fmt(server.get("cpu_s"), 2),
         fmt(server.get("most_open_one_host")), gaps, politeness],
        [f"{label}, whole process", "", "", fmt(run["child_wall_s"], 2),
         fmt(run["child_cpu_s"], 2), fmt(rate(ok, run["child_wall_s"])),
         fmt(rate(ok, run["child_cpu_s"])), "", "", "",
         "interpreter start and imports included"],
    ]  # fmt: skip


def download_rows(f: Figures) -> list[Row]:
    s = f.settings
    polite = (
        f"robots.txt, X-Robots-Tag, ≤ {s['per_host']} connections and "
        f"{s['host_delay_s'] * 1000:g} ms between starts per host"
    )
    rude = "X-Robots-Tag only: no robots.txt, no per-host limit or delay"
    rows = tool_rows("kgclip", f.kgclip, polite)
    rows += tool_rows("img2dataset", f.img2dataset, rude)
    return [*rows, goal_row(f)]


def goal_row(f: Figures) -> Row:
    mine = rate(f.kgclip.get("counts", {}).get("num_ok"), f.kgclip.get("cpu_s"))
    theirs = rate(
        f.img2dataset.get("counts", {}).get("num_ok"), f.img2dataset.get("cpu_s")
    )
    ratio = None if mine is None or not theirs else mine / theirs
    f.goals["ratio_per_cpu_s"] = None if ratio is None else round(ratio, 2)
    f.goals["per_cpu_s"] = None if ratio is None else ratio >= GOAL_RATIO
    cells = ["", "", "", "", "", fmt(ratio, 2) + ("×" if ratio else "")]
    return [f"goal: kgclip ≥ {GOAL_RATIO:g}× img2dataset per CPU-s", *cells,
            "", "", "", verdict(f.goals["per_cpu_s"])]  # fmt: skip


BROWSER_HEADERS = ["result pages", "queries", "ok", "results parsed", "wall s",
                   "CPU s", "pages/s", "pages per CPU-s", "note"]  # fmt: skip


def browser_rows(f: Figures) -> list[Row]:
    """Pages through the browser: the whole run, and less the browser's start
    (a one-query session measures the start and its first page)."""
    b = f.browser
    if b.get("skipped") or b.get("error") or "all" not in b:
        reason = str(b.get("skipped") or b.get("error") or "not run")
        return [["Bing-shaped, local", *["–"] * (len(BROWSER_HEADERS) - 2), reason]]
    one, every = b["one"], b["all"]
    wall = every["wall_s"] - one["wall_s"]
    cpu = every["cpu_s"] - one["cpu_s"]
    ok = every["ok"] - one["ok"]
    return [
        ["whole session", fmt(every["queries"]), fmt(every["ok"]),
         fmt(every["results"]), fmt(every["wall_s"], 2), fmt(every["cpu_s"], 2),
         fmt(rate(every["ok"], every["wall_s"]), 2),
         fmt(rate(every["ok"], every["cpu_s"]), 2),
         "browser start included; no pause between queries"],
        ["less browser start", fmt(every["queries"] - 1), fmt(ok), "",
         fmt(wall, 2), fmt(cpu, 2), fmt(rate(ok, wall), 2), fmt(rate(ok, cpu), 2),
         f"a 1-query session took {one['wall_s']:.2f} s"],
    ]  # fmt: skip


def title(f: Figures) -> str:
    m, s = f.machine, f.settings
    return (
        f"{m['date']}, kgclip {m['commit']}, {m['cpu']}, {m['cores']} cores; "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, img2dataset "
        f"{m['img2dataset']}, playwright {m['playwright']}; {s['urls']:,} URLs "
        f"over {s['hosts']} hosts on 127.0.0.1"
    )


def checks_of(f: Figures, expected_bytes: int) -> list[str]:
    """What makes the run wrong, not merely slow."""
    problems = []
    for name, run in (("kgclip", f.kgclip), ("img2dataset", f.img2dataset)):
        if run.get("error"):
            problems.append(f"{name} failed: {run['error']}")
            continue
        counts = run.get("counts")
        if counts is None:
            continue
        if counts["num_ok"] != f.settings["urls"]:
            problems.append(f"{name} downloaded {counts['num_ok']:,} of "
                            f"{f.settings['urls']:,} URLs: {counts}")  # fmt: skip
        if counts["bytes"] != expected_bytes:
            problems.append(f"{name} stored {counts['bytes']:,} image bytes, the "
                            f"files hold {expected_bytes:,}")  # fmt: skip
    server = f.kgclip.get("server", {})
    if server.get("most_robots_requests_one_host", 1) != 1:
        most = server.get("most_robots_requests_one_host")
        problems.append(f"kgclip asked one host for robots.txt {most} times")
    if server.get("most_open_one_host", 0) > f.settings["per_host"]:
        problems.append(f"kgclip held {server['most_open_one_host']} connections "
                        f"to one host, more than {f.settings['per_host']}")  # fmt: skip
    return problems


def report(out: Path, f: Figures, expected_bytes: int) -> int:
    """Print the tables, write the JSON and Markdown files; 1 on a failed check."""
    downloads, pages = download_rows(f), browser_rows(f)
    # The first column names the row and the last says what it means.
    left = (HEADERS[0], HEADERS[-1], BROWSER_HEADERS[0], BROWSER_HEADERS[-1])
    caption = f"kgclip crawl benchmark: {title(f)}"
    common.print_table(caption, HEADERS, downloads, left=left)
    caption = "Result pages through Playwright"
    common.print_table(caption, BROWSER_HEADERS, pages, left=left)
    problems = checks_of(f, expected_bytes)
    f.checks = {"expected_bytes": expected_bytes, "problems": problems}
    f.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = f"{title(f)}\n\n" + common.markdown_table(HEADERS, downloads, left=left)
    text += "\n" + common.markdown_table(BROWSER_HEADERS, pages, left=left)
    return common.write_figures(out, "bench_crawl", asdict(f), text, problems)


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(
        "Benchmark kgclip's image download against img2dataset on a local web of "
        "many hosts, and its browser search's result pages/s.",
        worker=True,
    )
    add = parser.add_argument
    add("--urls", type=int, default=12_000, help="distinct image URLs")
    add("--hosts", type=int, default=64, help="hosts (ports of 127.0.0.1)")
    add("--host-delay", type=float, default=0.05,
        help="kgclip: seconds between request starts on one host")  # fmt: skip
    add("--per-host", type=int, default=2,
        help="kgclip: requests in flight to one host")  # fmt: skip
    add("--max-connections", type=int, default=64,
        help="kgclip: requests in flight in all")  # fmt: skip
    add("--warc-level", type=int,
        help="kgclip: gzip level of WARC records (default: the stage's)")  # fmt: skip
    add("--threads", type=int, default=64, help="img2dataset: download threads")
    add("--repeat", type=int, default=3, help="runs of each downloader")
    add("--queries", type=int, default=30, help="queries through the browser")
    add("--images", type=Path, default=IMAGES, help="folder of <class>/<file>.jpg")
    add("--skip-img2dataset", action="store_true", help="run kgclip alone")
    add("--skip-browser", action="store_true", help="skip the result pages")
    add("--serve", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    bound = args.hosts / args.host_delay if args.host_delay else math.inf
    return {
        "urls": args.urls,
        "hosts": args.hosts,
        "per_host": args.per_host,
        "host_delay_s": args.host_delay,
        "max_connections": args.max_connections,
        "politeness_bound_per_s": bound,
        "warc_compress_level": args.warc_level,
        "img2dataset_threads": args.threads,
        "repeat": args.repeat,
        "queries": args.queries,
    }


def run_steps(args: argparse.Namespace, f: Figures, out: Path) -> int:
    """Start the web, run each tool on it, stop the web; the expected bytes."""
    files = image_files(args.images)
    sizes = {name: (args.images / name).stat().st_size for name in files}
    web = ImageWeb(args.images, args.hosts, out / "logs" / "server.log")
    try:
        urls = build_urls(web.ports, files, args.urls)
        urls_file = out / "urls.txt"
        urls_file.write_text("\n".join(urls) + "\n")
        step_downloads(out, web, urls_file, args, f)
        if not args.skip_browser:
            f.browser = step_browser(out, web, args)
    finally:
        web.close()
    return sum(sizes[files[n % len(files)]] for n in range(args.urls))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        asyncio.run(serve(Path(args.serve[0]), int(args.serve[1])))
        return 0
    if args.worker:
        worker_main(*args.worker)
        return 0
    from crawl.download import DownloadConfig

    if args.warc_level is None:
        args.warc_level = DownloadConfig().warc_compress_level
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    f = Figures(machine_info(args.images), settings_of(args))
    s = f.settings
    print(
        f"{s['urls']:,} URLs over {s['hosts']} hosts; kgclip politeness: robots.txt "
        f"and X-Robots-Tag on, ≤ {s['per_host']} connections per host, "
        f"{s['host_delay_s']:g} s between starts per host (at most "
        f"{s['politeness_bound_per_s']:,.0f} requests/s over all hosts), "
        f"≤ {s['max_connections']} in all; WARC gzip level {args.warc_level}; "
        f"img2dataset: {args.threads} threads; {args.repeat} runs each",
        flush=True,
    )
    expected_bytes = run_steps(args, f, out)
    return report(out, f, expected_bytes)


# img2dataset's download process imports this file as __mp_main__ (it is
# spawned); the clock of its shards goes in there.
if __name__ == "__mp_main__" and os.environ.get(SHARD_CLOCK_ENV):
    clock_img2dataset_shards(os.environ[SHARD_CLOCK_ENV])

if __name__ == "__main__":
    sys.exit(main())
