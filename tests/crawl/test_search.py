"""The search stage: queries in, searches and results written as parts.

The local engine runs over the real flowers5 photos; the API path goes to a
server on 127.0.0.1 that answers with recorded iNaturalist answers, and is
then replayed from the archive with no server at all.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from crawl.engines.inaturalist import INaturalistConfig
from crawl.fetch import FetchConfig
from crawl.queries import query_id
from crawl.records import QUERIES_SCHEMA, SEARCHES_SCHEMA
from crawl.search import (
    SEARCHES_DIR,
    SearchConfig,
    read_parts,
    read_results,
    search,
    search_partitioned,
)
from kg.errors import ConfigError
from tests.conftest import shared_file


def queries_of(engine: str, texts: list[str], wanted: int = 1000) -> pa.Table:
    rows = [
        {
            "query_id": query_id(engine, "en", text),
            "text": text,
            "engine": engine,
            "language": "en",
            "template": "{label}",
            "entities": ["Q1"],
            "results_wanted": wanted,
            "excluded_terms": [],
        }
        for text in texts
    ]
    return pa.Table.from_pylist(rows, schema=QUERIES_SCHEMA)


@pytest.fixture
def flowers() -> Path:
    return shared_file("images/flowers5")


def test_local_engine_finds_the_photos_of_each_flower(tmp_path, flowers):
    config = SearchConfig(engines=["local"], local_path=str(flowers))
    queries = queries_of("local", ["daisy", "tulip", "orchid"])

    counts = search(queries, tmp_path, config)

    assert counts["searched"] == 3
    assert counts["status_ok"] == 2 and counts["status_empty"] == 1
    results = read_results(tmp_path)
    by_query: dict[str, list[dict[str, Any]]] = {}
    for row in results.to_pylist():
        by_query.setdefault(row["query"], []).append(row)
    expected = len(list((flowers / "daisy").glob("*.jpg")))
    assert len(by_query["daisy"]) == expected
    assert all("/flowers5/daisy/" in r["image_url"] for r in by_query["daisy"])
    assert all(r["image_url"].startswith("file://") for r in results.to_pylist())
    assert "orchid" not in by_query


def test_results_wanted_caps_each_query(tmp_path, flowers):
    config = SearchConfig(engines=["local"], local_path=str(flowers))
    search(queries_of("local", ["rose"], wanted=7), tmp_path, config)
    ranks = read_results(tmp_path).column("rank").to_pylist()
    assert ranks == [1, 2, 3, 4, 5, 6, 7]


def test_rerun_skips_finished_searches_and_redoes_lost_ones(tmp_path, flowers):
    config = SearchConfig(engines=["local"], local_path=str(flowers), batch_rows=1)
    queries = queries_of("local", ["daisy", "tulip", "sunflower"])
    search(queries, tmp_path, config)
    again = search(queries, tmp_path, config)
    assert again["pending"] == 0 and again["searched"] == 0

    # A kill before the last searches part was written: that search is redone.
    parts = sorted((tmp_path / SEARCHES_DIR).glob("part-*.parquet"))
    lost = read_parts(tmp_path / SEARCHES_DIR, SEARCHES_SCHEMA).column("query")
    parts[-1].unlink()
    redone = search(queries, tmp_path, config)
    assert redone["pending"] == 1
    searches = read_parts(tmp_path / SEARCHES_DIR, SEARCHES_SCHEMA)
    assert sorted(searches.column("query").to_pylist()) == sorted(lost.to_pylist())
    # Results are keyed by id: the redone search adds no second copy.
    results = read_results(tmp_path)
    assert len(set(results.column("result_id").to_pylist())) == results.num_rows


def test_partitions_find_what_one_process_finds(tmp_path, flowers):
    config = SearchConfig(engines=["local"], local_path=str(flowers))
    queries = queries_of("local", ["daisy", "tulip", "rose", "dandelion"])
    search(queries, tmp_path / "one", config)
    counts = search_partitioned(
        queries, tmp_path / "two", config, num_partitions=2, max_workers=2
    )
    assert counts["searched"] == 4
    one = set(read_results(tmp_path / "one").column("result_id").to_pylist())
    two = set(read_results(tmp_path / "two").column("result_id").to_pylist())
    assert one == two and len(one) > 2000
    parts = {p.name.split("-")[1] for p in (tmp_path / "two" / "results").iterdir()}
    assert parts == {"p000", "p001"}


def test_unknown_engine_and_missing_collection_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="altavista"):
        search(
            queries_of("local", ["x"]), tmp_path, SearchConfig(engines=["altavista"])
        )
    with pytest.raises(ConfigError, match="local_path"):
        search(queries_of("local", ["x"]), tmp_path, SearchConfig(engines=["local"]))


@pytest.fixture
def inaturalist_api() -> Iterator[tuple[str, Callable[[], None]]]:
    """A server on 127.0.0.1 answering /v1/taxa and /v1/observations with the
    recorded iNaturalist answers; yields its API URL and a way to stop it."""
    folder = shared_file("search/inaturalist-api/v1")
    answers = {
        "/v1/taxa": (folder / "get_taxa.json").read_bytes(),
        "/v1/observations": (folder / "get_observation.json").read_bytes(),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answers.get(urlsplit(self.path).path, b'{"error": "not found"}')
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            server.shutdown()
            server.server_close()

    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", stop
    finally:
        stop()


def test_api_answers_are_archived_and_replay_offline(tmp_path, inaturalist_api):
    api_url, stop_server = inaturalist_api
    fetch = FetchConfig(allow_networks=("127.0.0.1/32",), host_delay_s=0.0)
    config = SearchConfig(
        engines=["inaturalist"],
        inaturalist=INaturalistConfig(api_url=api_url),
        fetch=fetch,
    )
    queries = queries_of("inaturalist", ["Nicrophorus vespillo"], wanted=5)
    counts = search(queries, tmp_path / "live", config)
    assert counts["status_ok"] == 1
    live = read_results(tmp_path / "live").to_pylist()
    assert live and live[0]["license"]
    assert list((tmp_path / "live" / "archive").glob("*.warc.gz"))

    # A new run directory holding only the archive answers the same with the
    # server gone: nothing is sent in replay.
    stop_server()
    shutil.copytree(tmp_path / "live" / "archive", tmp_path / "replay" / "archive")
    config.mode = "replay"
    search(queries, tmp_path / "replay", config)
    again = read_results(tmp_path / "replay").to_pylist()

    def without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k != "fetched"} for row in rows]

    assert without_time(again) == without_time(live)
    searches = read_parts(tmp_path / "replay" / SEARCHES_DIR, SEARCHES_SCHEMA)
    assert searches.column("status").to_pylist() == ["ok"]
