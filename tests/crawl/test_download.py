"""The download stage on the fixture web: rows, resumption, replay, partitions,
and a run killed mid-way."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl.archive import WarcArchive
from crawl.download import (
    DownloadConfig,
    PartWriter,
    distinct_urls,
    download,
    download_partitioned,
    partition_of,
    read_downloads,
    split_partitions,
)
from crawl.records import DOWNLOADS_SCHEMA, RESULTS_SCHEMA
from kg.errors import InputError
from tests.conftest import REPO
from tests.crawl.conftest import ConfigMaker
from tests.crawl.fixture_web import DEFAULT_IMAGE, FixtureWeb


def rows_by_url(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        row["url"]: row for row in read_downloads(run_dir / "downloads").to_pylist()
    }


def results_table(urls: list[str]) -> pa.Table:
    """A results table as the search stage writes it (one row per result)."""
    rows = [
        {"result_id": f"r{i}", "image_url": url, "rank": i + 1, "engine": "fixture"}
        for i, url in enumerate(urls)
    ]
    return pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA)


def test_download_writes_one_row_per_distinct_url(
    web: FixtureWeb, make_config: ConfigMaker, tmp_path: Path
) -> None:
    images = web.image_paths()[:30]
    good = [web.url(f"/images/{p}", site=i % 2) for i, p in enumerate(images)]
    bad = {
        web.url("/status/404"): "http_404",
        web.url("/html-as-jpeg"): "not_an_image",
        web.url(f"/private/{DEFAULT_IMAGE}"): "robots_disallowed",
        web.url("/x-robots?tag=noimageai"): "x_robots_tag",
    }
    urls = good + list(bad) + good[:5]  # the same image found by two queries
    config = DownloadConfig(fetch=make_config(), batch_rows=8)
    seen: list[tuple[int, int]] = []
    counts = download(
        results_table(urls),
        tmp_path,
        config,
        partition="p000",
        progress=lambda done, total: seen.append((done, total)),
    )

    assert counts["num_urls"] == 34 and counts["num_done_before"] == 0
    assert (counts["num_ok"], counts["num_failed"]) == (30, 4)
    assert counts["failed_http_404"] == counts["failed_not_an_image"] == 1
    assert counts["bytes"] == sum(len(web.image_bytes(p)) for p in images)
    assert seen == [(n, 34) for n in range(1, 35)]
    rows = rows_by_url(tmp_path)
    assert len(rows) == 34
    assert {rows[url]["error"] for url in bad} == set(bad.values())
    parts = sorted(p.name for p in (tmp_path / "downloads").iterdir())
    assert len(parts) == 5 and all(p.startswith("part-p000-") for p in parts)

    # Each stored image's row points at its bytes in the archive.
    archive = WarcArchive(tmp_path / "archive")
    for url, path in zip(good, images, strict=True):
        row = rows[url]
        assert row["sha256"] == hashlib.sha256(web.image_bytes(path)).hexdigest()
        assert row["status"] == 200 and row["attempts"] == 1
        response = archive.read_at(row["warc_file"], row["warc_offset"])
        assert response.body == web.image_bytes(path)
    opted_out = rows[web.url("/x-robots?tag=noimageai")]
    assert opted_out["bytes"] == 0 and opted_out["sha256"] is None
    assert opted_out["warc_file"] is not None  # the opt-out itself is on record


def test_rerun_skips_what_is_done_and_retries_what_may_pass(
    web: FixtureWeb, make_config: ConfigMaker, tmp_path: Path
) -> None:
    flaky = web.url(f"/flaky/rerun-{time.time_ns()}?fail=1&status=503")
    urls = [
        web.url(f"/images/{DEFAULT_IMAGE}"),
        web.url("/status/404"),
        web.url("/status/503"),  # busy on every run
        flaky,  # busy on the first run only
    ]
    config = DownloadConfig(fetch=make_config(max_attempts=1), max_attempts_total=2)

    first = download(urls, tmp_path, config)
    assert (first["num_ok"], first["failed_http_503"]) == (1, 2)

    web.reset()
    second = download(urls, tmp_path, config)
    assert second["num_done_before"] == 2  # the image and the 404
    assert (second["num_ok"], second["failed_http_503"]) == (1, 1)
    assert sorted(h.path for h in web.hits(0) if h.path != "/robots.txt") == sorted(
        [urls[2].split(str(web.ports[0]))[1], flaky.split(str(web.ports[0]))[1]]
    )
    rows = rows_by_url(tmp_path)
    assert rows[flaky]["error"] is None and rows[flaky]["attempts"] == 2
    assert rows[urls[2]]["attempts"] == 2

    # The busy URL has spent its budget of two attempts: nothing is left.
    web.reset()
    third = download(urls, tmp_path, config)
    assert third["num_done_before"] == 4 and web.hits(0) == []
    assert len(read_downloads(tmp_path / "downloads")) == 4


def test_replay_rebuilds_the_same_rows_offline(
    images_dir: Path, make_config: ConfigMaker, tmp_path: Path
) -> None:
    recorded_dir, replayed_dir = tmp_path / "recorded", tmp_path / "replayed"
    with FixtureWeb(images_dir, num_sites=2) as own_web:
        paths = own_web.image_paths()[100:140]
        urls = [own_web.url(f"/images/{p}", site=i % 2) for i, p in enumerate(paths)]
        urls += [own_web.url("/html-as-jpeg"), own_web.url("/redirect/2")]
        download(urls, recorded_dir, DownloadConfig(fetch=make_config()))

    # Server gone; the replay has only the archive.
    shutil.copytree(recorded_dir / "archive", replayed_dir / "archive")
    replay = DownloadConfig(fetch=make_config(mode="replay", allow_networks=[]))
    counts = download(urls, replayed_dir, replay)

    assert counts["num_ok"] == 41 and counts["num_requests"] == 0
    before, after = rows_by_url(recorded_dir), rows_by_url(replayed_dir)
    compared = ("final_url", "status", "error", "bytes", "sha256", "warc_file")
    for url in urls:
        assert {k: after[url][k] for k in compared} == {
            k: before[url][k] for k in compared
        }


def test_a_killed_run_resumes_with_every_url_recorded_once(
    web: FixtureWeb, make_config: ConfigMaker, tmp_path: Path
) -> None:
    paths = web.image_paths()[200:350]
    urls = [
        web.url(f"/slow/kill-{time.time_ns()}-{i}?delay=0.05&img={p}", site=i % 3)
        for i, p in enumerate(paths)
    ]
    fetch = make_config(per_host_connections=2)
    config = DownloadConfig(fetch=fetch, batch_rows=10, batch_s=600)

    # Kill the run between two part files, with rows answered but not written.
    process = _start_download(urls, tmp_path, config)
    try:
        _wait_for_unwritten_rows(tmp_path, process, min_parts=2, min_unwritten=3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    written = read_downloads(tmp_path / "downloads")
    assert 20 <= len(written) < len(urls)

    counts = download(urls, tmp_path, config)
    assert counts["num_done_before"] == len(written)
    assert counts["num_recovered"] >= 1  # answered before the kill, not refetched
    rows = rows_by_url(tmp_path)
    assert len(rows) == len(urls) and all(r["error"] is None for r in rows.values())
    archive = WarcArchive(tmp_path / "archive")
    answers = [loc for loc, r in archive.iter_responses() if r.url in rows]
    assert len(answers) == len(urls)  # every URL's answer exactly once
    for url, path in zip(urls, paths, strict=True):
        row = rows[url]
        body = archive.read_at(row["warc_file"], row["warc_offset"]).body
        assert body == web.image_bytes(path)


def _start_download(
    urls: list[str], run_dir: Path, config: DownloadConfig
) -> subprocess.Popen[bytes]:
    arguments = json.dumps(
        {"urls": urls, "dir": str(run_dir), "config": asdict(config)}
    )
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from crawl.download import DownloadConfig, download\n"
        "a = json.loads(sys.stdin.read())\n"
        "download(a['urls'], Path(a['dir']), DownloadConfig(**a['config']))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdin=subprocess.PIPE,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert process.stdin is not None
    process.stdin.write(arguments.encode())
    process.stdin.close()
    return process


def _wait_for_unwritten_rows(
    run_dir: Path, process: subprocess.Popen[bytes], min_parts: int, min_unwritten: int
) -> None:
    """Wait until the run has written ``min_parts`` parts and has recorded at
    least ``min_unwritten`` answers beyond them."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the download ended before it could be killed"
        parts = list((run_dir / "downloads").glob("part-*.parquet"))
        indexes = (run_dir / "archive").glob("*.idx")
        answers = sum(
            1
            for index in indexes
            for line in index.read_text().splitlines()
            if "/slow/" in line
        )
        written = sum(pq.read_metadata(p).num_rows for p in parts)
        if len(parts) >= min_parts and answers - written >= min_unwritten:
            return
        time.sleep(0.005)
    pytest.fail("the download made no progress in 30 s")


def test_partitions_run_in_processes_and_add_up(
    web: FixtureWeb, make_config: ConfigMaker, tmp_path: Path
) -> None:
    paths = web.image_paths()[400:440]
    urls = [web.url(f"/images/{p}", site=i % 2) for i, p in enumerate(paths)]
    urls.append(web.url("/status/404"))
    config = DownloadConfig(fetch=make_config())
    counts = download_partitioned(urls, tmp_path, config, num_partitions=2)

    assert counts["num_urls"] == 41
    assert (counts["num_ok"], counts["failed_http_404"]) == (40, 1)
    rows = rows_by_url(tmp_path)
    assert len(rows) == 41
    parts = {p.name.split("-")[1] for p in (tmp_path / "downloads").iterdir()}
    warcs = {p.name.split("-")[1] for p in (tmp_path / "archive").glob("*.warc.gz")}
    assert parts == warcs == {"p000", "p001"}
    for url in urls:
        # each row was written by the partition its URL hashes to
        assert f"p{partition_of(url, 2):03d}" == _partition_of_row(tmp_path, url)


def _partition_of_row(run_dir: Path, url: str) -> str:
    for part in (run_dir / "downloads").glob("part-*.parquet"):
        if url in pq.read_table(part, columns=["url"]).column("url").to_pylist():
            return part.name.split("-")[1]
    return ""


def test_newest_row_wins_when_parts_disagree(tmp_path: Path) -> None:
    folder = tmp_path / "downloads"
    old = PartWriter(folder, "p000", batch_rows=100)
    old.add(_row("http://a/x.jpg", "http_503", "2026-01-01T00:00:00+00:00"))
    old.add(_row("http://a/y.jpg", None, "2026-01-01T00:00:01+00:00"))
    old.flush()
    new = PartWriter(folder, "p001", batch_rows=100)
    new.add(_row("http://a/x.jpg", None, "2026-01-02T00:00:00+00:00"))
    new.flush()

    table = read_downloads(folder)
    assert table.schema == DOWNLOADS_SCHEMA
    assert sorted((r["url"], r["error"]) for r in table.to_pylist()) == [
        ("http://a/x.jpg", None),
        ("http://a/y.jpg", None),
    ]
    assert len(read_downloads(tmp_path / "nothing-yet")) == 0


def _row(url: str, error: str | None, fetched: str) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in DOWNLOADS_SCHEMA.names}
    return row | {"url": url, "error": error, "fetched": fetched, "attempts": 1}


def test_input_urls_are_distinct_and_partitions_stable() -> None:
    assert distinct_urls([" http://a/1 ", "http://a/2", "", "http://a/1"]) == [
        "http://a/1",
        "http://a/2",
    ]
    with pytest.raises(InputError, match="image_url"):
        distinct_urls(pa.table({"link": ["http://a/1"]}))
    urls = [f"http://example.org/{i}.jpg" for i in range(1000)]
    parts = split_partitions(urls, 4)
    assert sorted(u for part in parts for u in part) == sorted(urls)
    assert all(200 < len(part) < 300 for part in parts)
    # the hash is fixed: the same URL lands in the same partition in any process
    assert partition_of("http://example.org/0.jpg", 4) == partition_of(
        "http://example.org/0.jpg", 4
    )
    assert [partition_of(u, 7) for u in urls[:5]] == [
        int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest()) % 7
        for u in urls[:5]
    ]
