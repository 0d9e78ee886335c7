"""The kgclip command line, run as a user runs it, on the bundled defaults."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]


def kgclip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from train.pipeline.cli import main; main()"]
    done = subprocess.run(
        [*command, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kgclip {args} failed:\n{done.stdout}\n{done.stderr}")
    return done


def stage_runs(run_dir: Path) -> list[tuple]:
    with duckdb.connect(str(run_dir / "catalog.duckdb"), read_only=True) as con:
        return con.execute(
            "SELECT stage, status, counts FROM stage_runs ORDER BY id"
        ).fetchall()


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run_dir = tmp_path_factory.mktemp("run") / "default"
    return run_dir, kgclip("run", f"run.dir={run_dir}")


def test_main_job_runs_every_stage_on_bundled_defaults(main_run):
    run_dir, done = main_run
    output = done.stdout + done.stderr
    assert "stage=ingest status=done" in output
    # the paper's 21 roots over the bundled excerpt
    assert "stage=harvest status=done entities=6242" in output
    runs = stage_runs(run_dir)
    assert [(stage, status) for stage, status, _ in runs] == [
        (stage, "done")
        for stage in ("ingest", "harvest", "queries", "search", "download",
                      "curate", "export", "train", "evaluate")
    ]  # fmt: skip
    counts = {stage: json.loads(text) for stage, _, text in runs}
    assert counts["ingest"]["lines"] == 383_120
    with duckdb.connect(str(run_dir / "catalog.duckdb"), read_only=True) as con:
        count = con.execute("SELECT count(*) FROM entities WHERE root = 'Q42889'")
        assert count.fetchone() == (97,)  # 102 vehicle classes less 5 fictional ones
        label = con.execute("SELECT label FROM entities WHERE qid = 'Q42889'")
        assert label.fetchone() == ("vehicle",)

    # every bundled photo found is curated, split and trained on
    curated = counts["curate"]
    assert curated["images_downloaded"] == counts["download"]["num_ok"] >= 5
    assert min(curated[f"pairs_in_{split}"] for split in ("train", "val", "test")) >= 1
    assert counts["train"]["steps"] == 200
    report = json.loads((run_dir / "train/report/report.json").read_text())
    assert report["latest"]["images"] == counts["evaluate"]["images"] >= 1
    assert report["latest"]["source"] == "shards/test"
    for name in ("report.md", "loss.png", "accuracy.png"):
        assert (run_dir / "train/report" / name).stat().st_size > 0


def test_rerun_reopens_the_store_and_skips_the_ingest(main_run):
    run_dir, _ = main_run
    done = kgclip("ingest", f"run.dir={run_dir}")
    assert "skipped=True" in done.stdout + done.stderr
    assert stage_runs(run_dir)[-1][:2] == ("ingest", "done")


def test_dry_run_prints_the_filled_query_and_writes_nothing(tmp_path):
    done = kgclip("harvest", "harvest=taxa", "harvest.roots=[Q5113]", "--dry-run",
                  f"run.dir={tmp_path}")  # fmt: skip
    assert "wdt:P171*" in done.stdout and "wd:Q5113" in done.stdout
    assert "SELECT ?root ?item ?key ?value ?lang" in done.stdout
    assert not (tmp_path / "entities.parquet").exists()


def test_cfg_job_and_help_work_as_in_hydra(tmp_path):
    done = kgclip("harvest", "harvest=world", "--cfg", "job")
    assert "Q13226383" in done.stdout and "stage: harvest" in done.stdout
    helped = kgclip("harvest", "--help")
    assert "Stages: ingest, harvest, queries, search, download, curate" in (
        helped.stdout
    )
    assert "harvest: classes, taxa, world" in helped.stdout


def test_multirun_sweeps_roots(tmp_path):
    store = tmp_path / "shared-kg"
    done = kgclip("run", "run.until=harvest", "--multirun", "harvest=classes",
                  "harvest.roots=[Q42889],[Q39546]",
                  f"run.dir={tmp_path}/" + "run-${hydra:job.num}",
                  f"kg.store={store}", f"hydra.sweep.dir={tmp_path}/sweep")  # fmt: skip
    output = done.stdout + done.stderr
    for job, count in ((0, 102), (1, 332)):
        path = tmp_path / f"run-{job}" / "catalog.duckdb"
        with duckdb.connect(str(path), read_only=True) as con:
            found = con.execute("SELECT count(*) FROM entities").fetchone()
        assert found == (count,), output
    assert output.count("skipping") == 1  # the second job reopened the shared store


def test_bad_input_is_a_clear_error_recorded_as_failed(tmp_path):
    missing = tmp_path / "nowhere.nt.gz"
    done = kgclip("ingest", f"kg.source={missing}", f"run.dir={tmp_path}", check=False)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "dump file not found" in output and "kg.source" in output
    assert "Traceback" not in output
    assert stage_runs(tmp_path)[-1][:2] == ("ingest", "failed")


def test_run_until_stops_after_the_named_stage(tmp_path):
    kgclip("run", "run.until=queries", f"run.dir={tmp_path}")
    assert [stage for stage, _, _ in stage_runs(tmp_path)] == [
        "ingest",
        "harvest",
        "queries",
    ]
    done = kgclip("run", "run.until=crawl", f"run.dir={tmp_path}", check=False)
    assert done.returncode == 2
    assert "run.until=crawl is not a stage" in done.stdout + done.stderr


def test_unknown_stage_lists_the_stages():
    done = kgclip("crawl-everything", check=False)
    assert done.returncode == 2
    assert "unknown stage" in done.stderr and "ingest, harvest" in done.stderr


def test_main_job_finds_and_archives_the_bundled_photos(main_run):
    run_dir, _ = main_run
    with duckdb.connect(str(run_dir / "catalog.duckdb"), read_only=True) as con:
        # "rocket" (a vehicle class) finds the bundled Falcon 9 photo
        found = con.execute(
            "SELECT image_url FROM results WHERE query = 'rocket'"
        ).fetchall()
        assert [url for (url,) in found] == [
            (REPO / "crawl/data/samples/skimage_rocket.jpg").as_uri()
        ]
        stored = con.execute(
            "SELECT count(*), count(warc_file) FROM downloads WHERE error IS NULL"
        ).fetchone()
        assert stored[0] >= 1 and stored[0] == stored[1]


def test_replay_rebuilds_the_crawl_from_the_archive_alone(main_run, tmp_path):
    run_dir, _ = main_run
    replay = tmp_path / "replay"
    replay.mkdir()
    shutil.copytree(run_dir / "archive", replay / "archive")
    shutil.copy(run_dir / "queries.parquet", replay / "queries.parquet")
    for stage in ("search", "download"):
        kgclip(stage, f"run.dir={replay}", "crawl.mode=replay")

    def downloads(folder: Path) -> list[tuple]:
        with duckdb.connect(str(folder / "catalog.duckdb"), read_only=True) as con:
            return con.execute(
                "SELECT url, status, error, bytes, sha256 FROM downloads ORDER BY url"
            ).fetchall()

    assert downloads(replay) == downloads(run_dir)


def test_check_engines_reports_an_engine_it_cannot_reach(tmp_path):
    from crawl.browser import BrowserNotFoundError, find_browser

    try:
        find_browser()
    except BrowserNotFoundError as missing:
        pytest.skip(f"no Chromium to drive: {missing}")
    # A port on 127.0.0.1 where nothing listens: the engine is unreachable.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = kgclip(
        "search",
        "--check-engines",
        f"run.dir={tmp_path}",
        "engines=[bing]",
        f"+crawl.search.browser.base_urls.bing=http://127.0.0.1:{port}",
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("bing"))
    assert line.split("\t")[1] == "unreachable"


def test_ddp_on_two_cpu_processes_through_the_command_line(main_run, tmp_path):
    """Lightning starts rank 1 by running the command again: `kgclip train`
    must come back as the train stage alone, recorded once, by rank 0."""
    run_dir, _ = main_run
    shutil.copytree(run_dir / "shards", tmp_path / "shards")
    done = kgclip(
        "train", f"run.dir={tmp_path}", "run.progress=false",
        "train/trainer=ddp", "train.trainer.accelerator=cpu",
        "train.trainer.precision=32-true", "train.trainer.devices=2",
        "train.data.resampled=true", "train.data.workers=1", "train.threads=1",
        "train.trainer.max_steps=6", "train.trainer.val_check_interval=3",
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    runs = stage_runs(tmp_path)
    assert [(stage, status) for stage, status, _ in runs] == [("train", "done")]
    assert json.loads(runs[0][2])["steps"] == 6
    assert (tmp_path / "train/model").is_dir()
