"""The download stage: fetch every distinct image URL of the results, once.

:func:`download` takes the results (a table with an ``image_url`` or ``url``
column, or a list of URLs), fetches each distinct URL with the polite fetcher
(every answer goes into ``DIR/archive/``) and writes one row of
``DOWNLOADS_SCHEMA`` per URL into Parquet part files under ``DIR/downloads/``.
A part is written every ``batch_rows`` rows or ``batch_s`` seconds, under a
temporary name and then renamed, so a reader never sees half a part.

Rerunning resumes. URLs whose latest row is a success or a permanent failure
(404, ``not_an_image``, ``robots_disallowed``, ...) are skipped; those that
failed in a way that may pass (timeouts, 5xx, 429) are tried again while
their attempts stay below ``max_attempts_total``. A killed run loses at most
its unflushed rows, and not even their answers: before going to the network,
the rerun looks each URL up in the archive and, when its answer was recorded,
builds the row from the record (``recover``). Rows are deduplicated by URL
when read (:func:`read_downloads`; the newest wins), so nothing is counted
twice.

:func:`download_partitioned` splits the URLs by a stable hash into
partitions and runs each in its own process (own event loop, own WARC files,
own part files), then adds up their counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl.archive import GIB, WarcArchive
from crawl.fetch import FetchConfig, HttpFetcher, is_retryable
from crawl.records import DOWNLOADS_SCHEMA
from crawl.web import Response
from kg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (URLs finished, URLs to do)
Counts = dict[str, Any]
DOWNLOADS_DIR = "downloads"
ARCHIVE_DIR = "archive"
PART_PREFIX = "part-"


@dataclass
class DownloadConfig:
    """How the download stage runs.

    Attributes:
        fetch: the fetcher's settings (politeness, limits, record or replay).
        batch_rows: rows per part file; a kill loses at most this many rows.
        batch_s: a part is also written when its oldest row is this old.
        max_attempts_total: a URL that failed in a retryable way is tried
            again on a rerun while its attempts (over all runs) stay below this.
        max_in_flight: URLs being worked on at once in one partition; more
            than ``fetch.max_connections`` so that slow hosts do not idle the
            others.
        recover: build rows from the archive for URLs answered but not
            written before a kill, instead of fetching them again.
        warc_max_bytes: WARC files rotate past this size.
        warc_compress_level: gzip level of the WARC records of answers that
            are not images (robots.txt, error pages).
        warc_image_compress_level: gzip level of the records of image
            answers; 0 stores them: image formats are compressed already
            (flowers5's JPEGs shrink 12% at level 6), and deflating costs more
            CPU than the rest of writing the record.
    """

    fetch: FetchConfig = field(default_factory=FetchConfig)
    batch_rows: int = 1000
    batch_s: float = 60.0
    max_attempts_total: int = 6
    max_in_flight: int = 512
    recover: bool = True
    warc_max_bytes: int = GIB
    warc_compress_level: int = 6
    warc_image_compress_level: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.fetch, Mapping):  # a nested group, as Hydra hands it
            self.fetch = FetchConfig(**self.fetch)
        for name in ("batch_rows", "max_attempts_total", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"download.{name} must be at least 1")
        if self.batch_s <= 0:
            raise ConfigError("download.batch_s must be positive")


def download(
    results: pa.Table | Iterable[str],
    out_dir: Path,
    config: DownloadConfig | None = None,
    *,
    partition: str = "p000",
    progress: Progress | None = None,
) -> Counts:
    """Fetch the distinct image URLs of ``results`` not yet done; write rows.

    ``out_dir`` is the run directory: answers go to ``out_dir/archive/``,
    rows to ``out_dir/downloads/part-{partition}-*.parquet``. ``partition``
    names this process's files; give each concurrent process its own.
    ``progress`` is called with (finished, to do) after each URL.

    Returns counts: ``num_urls``, ``num_done_before`` (skipped), ``num_ok``,
    ``num_failed``, ``failed_{error}`` per error kind, ``num_recovered``,
    ``num_requests``, ``bytes`` (of stored images), ``seconds``.
    Raises :class:`~kg.errors.InputError` when ``results`` has no URL column.
    """
    config = config or DownloadConfig()
    started = time.monotonic()
    urls = distinct_urls(results)
    previous = _previous_attempts(out_dir / DOWNLOADS_DIR)
    todo = _plan(urls, previous, config.max_attempts_total)

    counts: Counts = {"num_urls": len(urls), "num_done_before": len(urls) - len(todo)}
    if todo:
        work = _interleave_hosts(todo)
        counts |= asyncio.run(_download(work, out_dir, config, partition, progress))
    else:
        counts |= _Tally().counts() | {"num_requests": 0}
    counts["seconds"] = round(time.monotonic() - started, 3)
    log.info("download %s: %s", partition, format_counts(counts))
    return counts


def distinct_urls(results: pa.Table | Iterable[str]) -> list[str]:
    """The distinct non-empty URLs, in order of first appearance."""
    if isinstance(results, pa.Table):
        names = results.schema.names
        column = next((c for c in ("image_url", "url") if c in names), "")
        if not column:
            raise InputError(
                f"the results have no image_url or url column (columns: "
                f"{', '.join(names)}); pass the results table"
            )
        results = results.column(column).to_pylist()
    return list(dict.fromkeys(u.strip() for u in results if u and u.strip()))


def format_counts(counts: Counts) -> str:
    """``key=value`` pairs for a stage's summary line."""
    return " ".join(f"{key}={value}" for key, value in counts.items())


# -- what to do -------------------------------------------------------------


def _previous_attempts(folder: Path) -> dict[str, tuple[str | None, int]]:
    """URL -> (error, attempts) of its latest row."""
    rows = read_downloads(folder, columns=["url", "error", "attempts", "fetched"])
    return {
        url: (error, attempts or 0)
        for url, error, attempts in zip(
            rows["url"].to_pylist(),
            rows["error"].to_pylist(),
            rows["attempts"].to_pylist(),
            strict=True,
        )
    }


def _plan(
    urls: Sequence[str],
    previous: dict[str, tuple[str | None, int]],
    budget: int,
) -> list[tuple[str, int]]:
    """(URL, attempts so far) of every URL still to fetch."""
    todo = []
    for url in urls:
        error, attempts = previous.get(url, ("never", 0))
        if error == "never" or (is_retryable(error) and attempts < budget):
            todo.append((url, attempts))
    return todo


def _interleave_hosts(todo: list[tuple[str, int]]) -> list[tuple[str, int]]:
    # Round-robin over hosts, so that the URLs in flight spread over many
    # hosts instead of queueing behind one host's politeness delay.
    by_host: dict[str, deque[tuple[str, int]]] = {}
    for item in todo:
        by_host.setdefault(_host(item[0]), deque()).append(item)
    queues = deque(by_host.values())
    order = []
    while queues:
        queue = queues.popleft()
        order.append(queue.popleft())
        if queue:
            queues.append(queue)
    return order


def _host(url: str) -> str:
    # The authority (host and port, as the fetcher's gates count hosts) cut
    # out of the text: parsing every URL would cost more than the ordering
    # is worth.
    authority = url.partition("://")[2]
    for mark in "/?#":
        authority = authority.partition(mark)[0]
    return authority.rpartition("@")[2].lower()


# -- doing it ---------------------------------------------------------------


@dataclass
class _Tally:
    """What this run did, counted as rows are made."""

    num_ok: int = 0
    num_failed: int = 0
    num_recovered: int = 0
    bytes: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    def add(self, response: Response) -> None:
        if response.error is None:
            self.num_ok += 1
            self.bytes += len(response.body)
        else:
            self.num_failed += 1
            self.failed[response.error] += 1

    def counts(self) -> Counts:
        counts: Counts = {"num_ok": self.num_ok, "num_failed": self.num_failed}
        counts |= {f"failed_{k}": v for k, v in sorted(self.failed.items())}
        counts |= {"num_recovered": self.num_recovered, "bytes": self.bytes}
        return counts


async def _download(
    work: list[tuple[str, int]],
    out_dir: Path,
    config: DownloadConfig,
    partition: str,
    progress: Progress | None,
) -> Counts:
    archive = WarcArchive(
        out_dir / ARCHIVE_DIR,
        writer_id=partition,
        max_file_bytes=config.warc_max_bytes,
        compress_level=config.warc_compress_level,
        image_compress_level=config.warc_image_compress_level,
    )
    writer = PartWriter(out_dir / DOWNLOADS_DIR, partition, config.batch_rows)
    tally = _Tally()
    with archive:
        async with HttpFetcher(config.fetch, archive) as fetcher:
            replayer = None
            if config.recover and config.fetch.mode == "record":
                replay_config = replace(config.fetch, mode="replay")
                replayer = HttpFetcher(replay_config, archive)

            async def one(url: str, attempts: int) -> None:
                response = await _fetch_one(url, fetcher, replayer, archive, tally)
                tally.add(response)
                writer.add(download_row(response, attempts))

            try:
                await _run_all(work, one, config, writer, progress)
            finally:
                writer.flush()  # what is done stays done, even on the way out
    return tally.counts() | {"num_requests": fetcher.stats.requests}


async def _fetch_one(
    url: str,
    fetcher: HttpFetcher,
    replayer: HttpFetcher | None,
    archive: WarcArchive,
    tally: _Tally,
) -> Response:
    # Most URLs were never answered: a look at the archive's index is enough
    # to know, where a replay would check the URL and its robots.txt first.
    if replayer is not None and url in archive:
        recorded = await replayer.fetch(url)
        if recorded.error != "not_in_archive" and not is_retryable(recorded.error):
            tally.num_recovered += 1
            return recorded
    return await fetcher.fetch(url)


async def _run_all(
    work: list[tuple[str, int]],
    one: Callable[[str, int], Any],
    config: DownloadConfig,
    writer: PartWriter,
    progress: Progress | None,
) -> None:
    """Run ``one`` on every item, at most ``max_in_flight`` at once, writing a
    part whenever the oldest unwritten row is ``batch_s`` old.

    ``max_in_flight`` workers take the items in order, one after another: a
    task per item, and a semaphore to wake the loop that starts them, cost
    more than the rest of the stage's own work for a small image.

    A failed URL is a row, not an exception; an exception here means the
    stage cannot go on (the archive cannot be written): the URLs in flight
    are cancelled and the exception is raised.
    """
    items = iter(work)
    num_done = 0

    async def worker() -> None:
        nonlocal num_done
        for url, attempts in items:
            await one(url, attempts)
            num_done += 1
            if progress is not None:
                progress(num_done, len(work))

    num_workers = min(config.max_in_flight, len(work))
    if num_workers == 0:
        return
    workers = [asyncio.create_task(worker()) for _ in range(num_workers)]
    ticker = asyncio.create_task(_flush_every(writer, config.batch_s))
    try:
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        ticker.cancel()
        for task in workers:
            task.cancel()
    for task in done:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure


async def _flush_every(writer: PartWriter, batch_s: float) -> None:
    while True:
        await asyncio.sleep(min(1.0, batch_s))
        if writer.age_s() >= batch_s:
            writer.flush()


def download_row(response: Response, attempts_before: int = 0) -> dict[str, Any]:
    """One row of ``DOWNLOADS_SCHEMA`` for a fetch's outcome."""
    body = response.body
    location = response.location
    return {
        "url": response.url,
        "final_url": response.final_url,
        "status": response.status,
        "error": response.error,
        "attempts": attempts_before + response.attempts,
        "content_type": response.content_type or None,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest() if body else None,
        "warc_file": location.warc_file if location else None,
        "warc_offset": location.offset if location else None,
        "fetched": response.fetched,
    }


# -- part files -------------------------------------------------------------


class PartWriter:
    """Buffers rows and writes them as Parquet part files, atomically.

    Files are ``part-{partition}-{stamp}-{pid}-{seq}.parquet``; each is
    written under a hidden temporary name and renamed when complete.
    """

    def __init__(
        self,
        folder: Path,
        partition: str,
        batch_rows: int,
        schema: pa.Schema = DOWNLOADS_SCHEMA,
    ) -> None:
        self.folder = folder
        self.schema = schema
        self.partition = partition
        self.batch_rows = batch_rows
        self._rows: list[dict[str, Any]] = []
        self._oldest = 0.0
        self._stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self._seq = 0
        self.num_parts = 0

    def add(self, row: dict[str, Any]) -> None:
        if not self._rows:
            self._oldest = time.monotonic()
        self._rows.append(row)
        if len(self._rows) >= self.batch_rows:
            self.flush()

    def _next_name(self) -> str:
        # Two runs of one partition in one second by one pid (a test, a quick
        # rerun) must still not overwrite each other's parts.
        while True:
            self._seq += 1
            name = f"{PART_PREFIX}{self.partition}-{self._stamp}-{os.getpid()}"
            name += f"-{self._seq:05d}.parquet"
            if not (self.folder / name).exists():
                return name

    def age_s(self) -> float:
        """Seconds since the oldest unwritten row came; 0 when none waits."""
        return time.monotonic() - self._oldest if self._rows else 0.0

    def flush(self) -> None:
        if not self._rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self._next_name()
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        temporary = self.folder / f".{name}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, self.folder / name)
        self.num_parts += 1
        log.debug("wrote %s (%d rows)", name, len(self._rows))
        self._rows = []


def read_downloads(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """The downloads rows of every part under ``folder``, one per URL (newest).

    ``folder`` is ``DIR/downloads``; a missing folder gives an empty table.
    """
    schema = DOWNLOADS_SCHEMA
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    parts = sorted(folder.glob(f"{PART_PREFIX}*.parquet")) if folder.is_dir() else []
    tables = [pq.read_table(p, columns=schema.names).cast(schema) for p in parts]
    if not tables:
        return schema.empty_table()
    return _newest_per_url(pa.concat_tables(tables))


def _newest_per_url(table: pa.Table) -> pa.Table:
    # Sort by URL, newest first (later parts break ties), keep each URL's first.
    order = pa.array(range(len(table)), pa.int64())
    keyed = table.append_column("_order", order)
    keys = [("url", "ascending"), ("fetched", "descending"), ("_order", "descending")]
    keyed = keyed.take(pc.sort_indices(keyed, sort_keys=keys))
    urls = keyed.column("url")
    if len(urls) == 0:
        return table
    changed = pc.not_equal(urls.slice(1), urls.slice(0, len(urls) - 1))
    first = pa.concat_arrays([pa.array([True]), changed.combine_chunks()])
    return keyed.filter(first).drop_columns(["_order"])


# -- partitions -------------------------------------------------------------


def partition_of(url: str, num_partitions: int) -> int:
    """The partition of a URL: a stable hash, the same in every process."""
    digest = hashlib.blake2b(url.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_partitions


def split_partitions(urls: Iterable[str], num_partitions: int) -> list[list[str]]:
    parts: list[list[str]] = [[] for _ in range(num_partitions)]
    for url in urls:
        parts[partition_of(url, num_partitions)].append(url)
    return parts


def download_partitioned(
    results: pa.Table | Iterable[str],
    out_dir: Path,
    config: DownloadConfig | None = None,
    *,
    num_partitions: int = 4,
    max_workers: int | None = None,
) -> Counts:
    """Run :func:`download` on ``num_partitions`` hash partitions in processes.

    Partition ``i`` is named ``p{i:03d}``. Each host's politeness budget is
    shared out: every process waits ``num_partitions`` times the host delay
    and takes its share of the host's connections, so a host sees the
    configured rate in total. Returns the summed counts (``seconds``: wall).

    Known shortcoming: sharing the budget out is exact only while every
    partition has URLs of a host in flight; a host whose URLs sit in one
    partition gets 1/N of its allowed rate. Each partition also fetches each
    host's robots.txt once. Partitioning by host instead of by URL would cure
    both, at the price of partitions as uneven as the hosts are.
    """
    config = config or DownloadConfig()
    if num_partitions < 1:
        raise ConfigError("download partitions must be at least 1")
    started = time.monotonic()
    shared = _share_host_budget(config, num_partitions)
    groups = split_partitions(distinct_urls(results), num_partitions)

    # spawn, not fork: the parent may run threads (a progress display, a test
    # server) that a forked child would inherit in an unknown state.
    context = get_context("spawn")
    workers = max_workers or min(num_partitions, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(download, group, out_dir, shared, partition=f"p{i:03d}")
            for i, group in enumerate(groups)
        ]
        counts = merge_counts(future.result() for future in futures)
    counts["seconds"] = round(time.monotonic() - started, 3)
    log.info("download (%d partitions): %s", num_partitions, format_counts(counts))
    return counts


def _share_host_budget(config: DownloadConfig, num_partitions: int) -> DownloadConfig:
    fetch = config.fetch
    shared = replace(
        fetch,
        host_delay_s=fetch.host_delay_s * num_partitions,
        per_host_connections=max(1, fetch.per_host_connections // num_partitions),
    )
    return replace(config, fetch=shared)


def merge_counts(parts: Iterable[Counts]) -> Counts:
    """Add up the counts of several partitions, key by key."""
    merged: Counts = {}
    for counts in parts:
        for key, value in counts.items():
            merged[key] = merged.get(key, 0) + value
    return merged
