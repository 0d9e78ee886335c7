"""Ingest: stream a Wikidata dump into the embedded store, keeping what is needed.

``ingest(config)`` detects the dump's format, streams it block by block
through the matching reader of :mod:`kg.dumps`, stages the kept triples and
merges them into the :class:`kg.store.TripleStore`. Memory stays flat: one
block of the dump and one batch of kept triples are held at a time, and the
final merge runs inside DuckDB under its memory limit.

A dump already ingested (same fingerprint) is skipped. Malformed lines are
counted and the first few reported with their line numbers; once their
share passes ``max_malformed_share`` the ingest stops with an error and the
store is left as it was.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kg import dumps
from kg.errors import MalformedDumpError
from kg.store import SourceRecord, TripleStore, fingerprint, now_iso

log = logging.getLogger(__name__)

# Below this many lines a share of malformed lines says little; wait for more.
MIN_LINES_FOR_SHARE = 1000


# Truthy claims kept by default: class and taxon structure, rank, taxon name,
# common names, image, and the attributes behind attribute queries.
PROPERTIES = (
    "P31", "P279", "P171", "P105", "P225", "P1843", "P18", "P462", "P527", "P1552",
)  # fmt: skip


@dataclass
class IngestConfig:
    """What to ingest and what to keep; see ``conf/kg/wikidata.yaml``."""

    source: Path
    store: Path
    properties: list[str] = field(default_factory=lambda: list(PROPERTIES))
    languages: list[str] = field(default_factory=lambda: ["en"])
    sitelinks: bool = True
    max_malformed_share: float = 0.01
    max_reported: int = 5
    memory_limit: str = "1GB"


@dataclass
class IngestResult:
    """Counts of one ingest, for the summary line and the catalog."""

    source: str
    format: str
    compression: str
    skipped: bool
    lines: int = 0
    kept: int = 0
    new_triples: int = 0
    malformed: int = 0
    store_triples: int = 0
    store_bytes: int = 0
    seconds: float = 0.0
    store_s: float = 0.0  # of those, time spent writing into the store
    snapshot: str | None = None

    def counts(self) -> dict[str, int | float | str | bool | None]:
        return dict(self.__dict__)


ProgressCallback = Callable[[int, int], None]  # (compressed bytes read, total)


def ingest(
    config: IngestConfig, progress: ProgressCallback | None = None
) -> IngestResult:
    """Stream ``config.source`` into the store at ``config.store``.

    Raises:
        InputError, DumpFormatError: the dump is missing or not a known format.
        MalformedDumpError: too large a share of the dump could not be parsed.
        StoreError: the store cannot be opened for writing.
    """
    source = Path(config.source)
    fmt, compression = dumps.detect(source)
    print_id = fingerprint(source)
    result = IngestResult(str(source), fmt.value, compression.value, skipped=False)

    with TripleStore(config.store, memory_limit=config.memory_limit) as store:
        done = store.find_source(print_id)
        if done is not None:
            log.info("already ingested %s on %s; skipping", source, done.ingested_at)
            result.skipped = True
            result.lines, result.kept = done.lines, done.kept
            result.snapshot = done.snapshot
            return _finish(result, store, 0.0)

        started = time.perf_counter()
        stats, staging_s = _stream_into(
            store, source, fmt, compression, config, progress
        )
        result.lines, result.kept, result.malformed = (
            stats.lines,
            stats.kept,
            stats.malformed,
        )
        result.snapshot = _snapshot(store, source)
        record = SourceRecord(
            str(source.resolve()), print_id, fmt.value, compression.value,
            stats.lines, stats.kept, stats.malformed, result.snapshot, now_iso(),
        )  # fmt: skip
        merge_started = time.perf_counter()
        result.new_triples = store.commit_ingest(record)
        result.store_s = round(staging_s + time.perf_counter() - merge_started, 3)
        return _finish(result, store, time.perf_counter() - started)


def _finish(result: IngestResult, store: TripleStore, seconds: float) -> IngestResult:
    result.store_triples = len(store)
    result.store_bytes = store.size_bytes()
    result.seconds = round(seconds, 3)
    return result


def _stream_into(
    store: TripleStore,
    source: Path,
    fmt: dumps.DumpFormat,
    compression: dumps.Compression,
    config: IngestConfig,
    progress: ProgressCallback | None,
) -> tuple[dumps.ReadStats, float]:
    """Read the dump block by block into the store's staging table.

    Returns the read's counts and the seconds spent writing to the store.

    Known shortcoming: reading, filtering and staging take turns in one
    thread, so on two cores one idles for most of an ingest (staging and the
    merge are about a quarter of the time). It is simple and keeps memory
    flat; a reader thread handing blocks to the filter through a bounded
    queue, or one filter process per byte range of an uncompressed dump,
    would use the other cores.
    """
    rules = dumps.KeepRules(
        tuple(config.properties), tuple(lang.lower() for lang in config.languages),
        config.sitelinks,
    )  # fmt: skip
    stats = dumps.ReadStats()
    staging_s = 0.0
    reader = dumps.reader_for(fmt)
    total = source.stat().st_size
    store.begin_ingest()

    with source.open("rb") as raw:
        stream = _decompressing(raw, compression)
        for batch in reader(stream, rules, stats, config.max_reported):
            staged = time.perf_counter()
            store.stage(batch.table())
            staging_s += time.perf_counter() - staged
            _check_malformed(stats, source, config, final=False)
            if progress is not None:
                progress(raw.tell(), total)
    _check_malformed(stats, source, config, final=True)
    if stats.malformed:
        shown = "; ".join(f"line {n}: {text!r}" for n, text in stats.examples)
        log.warning(
            "%d malformed lines in %s (first: %s)", stats.malformed, source, shown
        )
    return stats, staging_s


def _decompressing(raw: BinaryIO, compression: dumps.Compression) -> BinaryIO:
    if compression is dumps.Compression.GZIP:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression is dumps.Compression.BZIP2:
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    return raw


def _check_malformed(
    stats: dumps.ReadStats, source: Path, config: IngestConfig, final: bool
) -> None:
    """Stop the ingest once malformed lines pass the configured share."""
    if stats.malformed == 0 or (not final and stats.lines < MIN_LINES_FOR_SHARE):
        return
    share = stats.malformed / max(stats.lines, 1)
    if share <= config.max_malformed_share:
        return
    shown = "; ".join(f"line {n}: {text!r}" for n, text in stats.examples)
    raise MalformedDumpError(
        f"{stats.malformed} of the first {stats.lines} lines of {source} are "
        f"malformed ({share:.1%}, more than kg.max_malformed_share="
        f"{config.max_malformed_share}); first ones: {shown}. Check that the file "
        "is a complete Wikidata dump, or raise kg.max_malformed_share."
    )


def _snapshot(store: TripleStore, source: Path) -> str:
    """The dump's date: as the data states it, else from the name, else mtime."""
    stated = store.snapshot_date()
    if stated:
        return stated
    named = re.search(r"(20\d{2})-?(\d{2})-?(\d{2})", source.name)
    if named:
        return "-".join(named.groups())
    mtime = dt.datetime.fromtimestamp(source.stat().st_mtime, dt.UTC)
    return mtime.date().isoformat()
