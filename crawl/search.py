"""Search: every query goes to its engine; the results become rows.

Engines are of three sorts, all answering with
:class:`~crawl.engines.base.SearchOutcome`:

- the local collection (a folder of images or a caption table), matched in
  one pass over all its captions; no network;
- image APIs (Wikimedia Commons, its files named by P18, iNaturalist),
  through the polite fetcher that archives every answer;
- web image search (Bing, DuckDuckGo, Google) through a headless browser
  whose result pages are archived.

Rows go to ``DIR/searches/`` (one per query and engine: how it went) and
``DIR/results/`` (one per result) as Parquet part files, written in batches,
so a killed search loses at most one batch. A rerun skips every query whose
search ended ``ok`` or ``empty`` and tries the others again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl.archive import WarcArchive
from crawl.browser import BrowserConfig, search_web
from crawl.download import PartWriter, merge_counts
from crawl.engines import commons, inaturalist
from crawl.engines.base import SearchOutcome, result_rows, search_row
from crawl.engines.local import LocalCollection, LocalConfig
from crawl.fetch import FetchConfig, HttpFetcher
from crawl.queries import FILES_ENGINE
from crawl.records import RESULTS_SCHEMA, SEARCHES_SCHEMA
from crawl.web import Fetcher
from kg.errors import ConfigError

log = logging.getLogger(__name__)

SEARCHES_DIR = "searches"
RESULTS_DIR = "results"
WEB_ENGINES = ("bing", "duckduckgo", "google")
API_ENGINES = ("commons", "inaturalist", FILES_ENGINE)
ENGINES = ("local", *API_ENGINES, *WEB_ENGINES)
DONE = ("ok", "empty")  # a search that ended so is not made again

Counts = dict[str, Any]


@dataclass
class SearchConfig:
    """Which engines to ask and how; see ``conf/crawl/default.yaml``.

    ``local_path`` is the local collection (a folder or a table);
    ``api_concurrency`` bounds the API searches in flight; ``web_batch``
    queries go to one browser session before their rows are written.
    """

    engines: list[str] = field(default_factory=lambda: ["local"])
    mode: str = "record"
    local_path: str | None = None
    local: LocalConfig = field(default_factory=LocalConfig)
    commons: commons.CommonsConfig = field(default_factory=commons.CommonsConfig)
    inaturalist: inaturalist.INaturalistConfig = field(
        default_factory=inaturalist.INaturalistConfig
    )
    browser: BrowserConfig = field(default_factory=BrowserConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    api_concurrency: int = 4
    web_batch: int = 20
    batch_rows: int = 1000

    def validate(self) -> None:
        unknown = [engine for engine in self.engines if engine not in ENGINES]
        if unknown:
            raise ConfigError(
                f"engines={unknown} are not known; use some of {', '.join(ENGINES)}"
            )
        if self.mode not in ("record", "replay"):
            raise ConfigError(f"crawl.mode={self.mode!r}: use record or replay")
        if "local" in self.engines and not self.local_path:
            raise ConfigError(
                "the local engine needs crawl.search.local_path: a folder of "
                "images or a caption table (Parquet, TSV)"
            )


def pending_queries(
    queries: pa.Table, run_dir: Path, engines: Sequence[str]
) -> pa.Table:
    """The queries of ``engines`` whose search has not ended ok or empty."""
    wanted = queries.filter(pc.is_in(queries.column("engine"), pa.array(engines)))
    done = read_parts(run_dir / SEARCHES_DIR, SEARCHES_SCHEMA)
    done = done.filter(pc.is_in(done.column("status"), pa.array(DONE)))
    if done.num_rows == 0:
        return wanted
    keys = pc.binary_join_element_wise(done["query_id"], done["engine"], "|")
    mine = pc.binary_join_element_wise(wanted["query_id"], wanted["engine"], "|")
    return wanted.filter(pc.invert(pc.is_in(mine, value_set=keys)))


def read_parts(folder: Path, schema: pa.Schema) -> pa.Table:
    """Every Parquet part under ``folder`` as one table (empty when none)."""
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    tables = [pq.read_table(part).select(schema.names).cast(schema) for part in parts]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def search(
    queries: pa.Table,
    run_dir: Path,
    config: SearchConfig,
    *,
    partition: str = "p000",
) -> Counts:
    """Search every pending query of ``queries``; write searches and results.

    Returns counts: ``num_queries`` (pending before), ``searched``,
    ``status_<status>`` per status, ``results``, ``seconds``.
    """
    config.validate()
    started = time.monotonic()
    todo = pending_queries(queries, run_dir, config.engines)
    counts: Counts = {"num_queries": queries.num_rows, "pending": todo.num_rows}
    writers = _Writers(run_dir, partition, config.batch_rows)
    archive = WarcArchive(run_dir / "archive", writer_id=f"search-{partition}")
    try:
        for engine in config.engines:
            rows = todo.filter(pc.equal(todo.column("engine"), engine)).to_pylist()
            if rows:
                log.info("searching %d queries on %s", len(rows), engine)
                _search_engine(engine, rows, run_dir, config, archive, writers)
    finally:
        writers.flush()
        archive.close()
    counts |= writers.counts
    counts["seconds"] = round(time.monotonic() - started, 3)
    return counts


class _Writers:
    """The part writers of one partition, with running counts."""

    def __init__(self, run_dir: Path, partition: str, batch_rows: int) -> None:
        self.searches = PartWriter(
            run_dir / SEARCHES_DIR, partition, batch_rows, SEARCHES_SCHEMA
        )
        self.results = PartWriter(
            run_dir / RESULTS_DIR, partition, batch_rows, RESULTS_SCHEMA
        )
        self.counts: Counts = {"searched": 0, "results": 0}

    def add(self, row: dict[str, Any], outcome: SearchOutcome, engine: str) -> None:
        """One search's rows; the results first, so a kill between the two
        leaves the search to be made again rather than results without it."""
        ids = {"query_id": row["query_id"], "engine": engine, "query": row["text"]}
        for result in result_rows(outcome, **ids):
            self.results.add(result)
        self.results.flush()
        self.searches.add(search_row(outcome, **ids))
        self.count(outcome.status, len(outcome.results))

    def count(self, status: str, num_results: int) -> None:
        self.counts["searched"] += 1
        self.counts["results"] += num_results
        key = f"status_{status}"
        self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self) -> None:
        self.results.flush()
        self.searches.flush()


def _search_engine(
    engine: str,
    rows: list[dict[str, Any]],
    run_dir: Path,
    config: SearchConfig,
    archive: WarcArchive,
    writers: _Writers,
) -> None:
    if engine == "local":
        _search_local(rows, config, writers)
    elif engine in API_ENGINES:
        asyncio.run(_search_api(engine, rows, config, archive, writers))
    else:
        _search_browser(engine, rows, run_dir, config, archive, writers)


def _search_local(
    rows: list[dict[str, Any]], config: SearchConfig, writers: _Writers
) -> None:
    """All queries of the local collection in one pass over its captions."""
    assert config.local_path is not None  # validate() saw to it
    collection = LocalCollection.open(config.local_path, config.local)
    outcomes = collection.search_many((row["query_id"], row["text"]) for row in rows)
    for row in rows:
        outcome = outcomes[row["query_id"]]
        wanted = row["results_wanted"] or len(outcome.results)
        writers.add(row, replace(outcome, results=outcome.results[:wanted]), "local")


async def _search_api(
    engine: str,
    rows: list[dict[str, Any]],
    config: SearchConfig,
    archive: WarcArchive,
    writers: _Writers,
) -> None:
    """API searches, a few in flight at once, each written as it ends."""
    fetch_config = replace(config.fetch, mode=config.mode)
    slots = asyncio.Semaphore(config.api_concurrency)
    async with HttpFetcher(fetch_config, archive) as fetcher:

        async def one(row: dict[str, Any]) -> None:
            async with slots:
                outcome = await _ask_api(engine, row, fetcher, config)
            writers.add(row, outcome, engine)

        await asyncio.gather(*(one(row) for row in rows))


async def _ask_api(
    engine: str, row: dict[str, Any], fetcher: Fetcher, config: SearchConfig
) -> SearchOutcome:
    text, limit = row["text"], row["results_wanted"] or 50
    if engine == "commons":
        return await commons.search(text, fetcher, limit=limit, config=config.commons)
    if engine == FILES_ENGINE:
        return await commons.search_files([text], fetcher, config=config.commons)
    return await inaturalist.search(
        text, fetcher, limit=limit, config=config.inaturalist
    )


def _search_browser(
    engine: str,
    rows: list[dict[str, Any]],
    run_dir: Path,
    config: SearchConfig,
    archive: WarcArchive,
    writers: _Writers,
) -> None:
    """Web searches in batches; each batch's rows are written when it ends."""
    excluded = tuple(rows[0]["excluded_terms"] or ())
    wanted = max(row["results_wanted"] or 0 for row in rows) or None
    browser = replace(
        config.browser,
        excluded_terms=excluded,
        results_wanted=wanted or config.browser.results_wanted,
    )
    mode: Literal["record", "replay"] = (
        "replay" if config.mode == "replay" else "record"
    )
    for start in range(0, len(rows), config.web_batch):
        batch = rows[start : start + config.web_batch]
        pairs = [(row["query_id"], row["text"]) for row in batch]
        results, searches = asyncio.run(
            search_web(pairs, engine, archive, browser, mode, run_dir=run_dir)
        )
        for result in results.to_pylist():
            writers.results.add(result)
        writers.results.flush()
        for row in searches.to_pylist():
            writers.searches.add(row)
            writers.count(row["status"], row["num_results"])
        writers.searches.flush()


def partition_of(query_id: str, num_partitions: int) -> int:
    """A query's partition: a stable hash, the same in every process."""
    digest = hashlib.blake2b(query_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_partitions


def search_partitioned(
    queries: pa.Table,
    run_dir: Path,
    config: SearchConfig,
    *,
    num_partitions: int = 1,
    max_workers: int = 1,
) -> Counts:
    """:func:`search` on hash partitions of the queries, in processes.

    Partition ``i`` is named ``p{i:03d}`` and writes its own part and WARC
    files, so partitions can also run on other machines.
    """
    if num_partitions <= 1:
        return search(queries, run_dir, config)
    started = time.monotonic()
    ids = queries.column("query_id").to_pylist()
    numbers = pa.array([partition_of(q, num_partitions) for q in ids], pa.int32())
    jobs = [
        (queries.filter(pc.equal(numbers, i)), run_dir, config, f"p{i:03d}")
        for i in range(num_partitions)
    ]
    with ProcessPoolExecutor(max_workers=max_workers) as pool:
        parts = list(pool.map(_run_partition, jobs))
    counts = merge_counts(parts)
    counts["seconds"] = round(time.monotonic() - started, 3)
    return counts


def _run_partition(job: tuple[pa.Table, Path, SearchConfig, str]) -> Counts:
    queries, run_dir, config, partition = job
    return search(queries, run_dir, config, partition=partition)


def read_results(run_dir: Path) -> pa.Table:
    """Every result row written so far, one per result id (the first kept)."""
    table = read_parts(run_dir / RESULTS_DIR, RESULTS_SCHEMA)
    if table.num_rows == 0:
        return table
    _, first = _first_rows(table.column("result_id"))
    return table.take(first)


def _first_rows(keys: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """The distinct keys and the row of each one's first occurrence."""
    seen: dict[str, int] = {}
    for row, key in enumerate(keys.to_pylist()):
        seen.setdefault(key, row)
    return pa.array(list(seen)), pa.array(list(seen.values()), pa.int64())
