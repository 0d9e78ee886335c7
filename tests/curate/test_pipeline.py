"""The curate and export stages end to end, on a crawl of real photos.

A local collection of real flowers5 photos is searched and downloaded into
the web archive with the crawl's own code; one daisy is planted again,
resized and recompressed, in the tulip folder, so that two entities find
copies of one image. The entities are a small hand-made harvest.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crawl.download import DownloadConfig, download
from crawl.fetch import FetchConfig
from crawl.queries import QueriesConfig, build_queries
from crawl.search import SearchConfig, read_results, search
from curate.balance import BalanceConfig
from curate.pipeline import CurateConfig, ExportStageConfig, curate, export
from kg.errors import InputError
from kg.harvest import ENTITY_SCHEMA
from tests.conftest import shared_file

FLOWERS = ("daisy", "rose", "tulip")


def entity(qid: str, label: str) -> dict:
    return {
        "qid": qid, "label": label, "description": f"{label}, a flower",
        "aliases": [], "kind": "class", "root": "Q506", "parents": ["Q506"],
        "lineage": ["Q506", qid], "common_names": [], "images": [],
        "parent_labels": ["flower"], "attributes": [], "source": "test",
        "snapshot": "2026-12-03",
    }  # fmt: skip


@pytest.fixture(scope="module")
def crawled(tmp_path_factory) -> tuple[Path, pa.Table, pa.Table]:
    """A run directory whose crawl found 8 photos of each flower, plus a
    resized copy of the first daisy filed under tulip."""
    flowers = shared_file("images/flowers5")
    root = tmp_path_factory.mktemp("curate")
    collection = root / "collection"
    for name in FLOWERS:
        (collection / name).mkdir(parents=True)
        for path in sorted((flowers / name).glob("*.jpg"))[:8]:
            shutil.copy(path, collection / name / path.name)
    first = sorted((flowers / "daisy").glob("*.jpg"))[0]
    copy = Image.open(first).convert("RGB").resize((112, 112))
    copy.save(collection / "tulip" / "copy_of_daisy.jpg", quality=80)

    rows = [entity("Q1", "daisy"), entity("Q2", "rose"), entity("Q3", "tulip")]
    entities = pa.Table.from_pylist(rows, schema=ENTITY_SCHEMA)
    config = QueriesConfig.from_mapping({"engines": ["local"]})
    queries = build_queries(entities, config)
    run_dir = root / "run"
    search(queries, run_dir, SearchConfig(local_path=str(collection)))
    fetch = FetchConfig(file_roots=(str(collection),))
    download(read_results(run_dir), run_dir, DownloadConfig(fetch=fetch))
    return run_dir, entities, queries


def test_curate_merges_copies_and_keeps_both_finds(crawled):
    run_dir, entities, queries = crawled
    config = CurateConfig(balance=BalanceConfig(min_per_entity=1), processes=1)
    counts = curate(run_dir, entities, queries, config)

    assert counts["images_downloaded"] == 25
    assert counts["images_after_dedup"] == 24  # the copy joined its original
    images = pq.read_table(run_dir / "images.parquet").to_pylist()
    (duplicate,) = [row for row in images if row["status"] == "duplicate"]
    assert duplicate["url"].endswith("copy_of_daisy.jpg")
    kept = {row["image_id"]: row for row in images}[duplicate["duplicate_of"]]
    assert "/daisy/" in kept["url"] and kept["width"] == 128

    # the kept daisy is labelled with both entities that found a copy
    pairs = pq.read_table(run_dir / "pairs.parquet").to_pylist()
    labels = sorted(p["label"] for p in pairs if p["image_id"] == kept["image_id"])
    assert labels == ["daisy", "tulip"]
    assert all(p["split"] in ("train", "val", "test") for p in pairs)
    tulip = next(
        p for p in pairs if p["image_id"] == kept["image_id"] and p["qid"] == "Q3"
    )
    assert {s["query"] for s in tulip["sources"]} == {"daisy", "tulip"}
    assert {"source": "label", "text": "tulip"} in tulip["kg_texts"]

    record = json.loads((run_dir / "curation.json").read_text())
    assert record["drops"]["near_duplicate"] == 1


def test_export_writes_identical_shards_and_a_datasheet(crawled):
    run_dir, entities, queries = crawled
    config = CurateConfig(balance=BalanceConfig(min_per_entity=1), processes=1)
    curate(run_dir, entities, queries, config)
    counts = export(run_dir, entities, ExportStageConfig(), {"test": True})
    assert counts["samples"] == 25 and counts["failed"] == 0

    shards = sorted(run_dir.glob("shards/*/*.tar"))
    first = {path: path.read_bytes() for path in shards}
    export(run_dir, entities, ExportStageConfig(), {"test": True})
    assert {path: path.read_bytes() for path in shards} == first

    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
        jpg = tar.extractfile(next(n for n in names if n.endswith(".jpg")))
        assert Image.open(io.BytesIO(jpg.read())).format == "JPEG"  # type: ignore[union-attr]
    assert {name.rsplit(".", 1)[1] for name in names} == {"jpg", "txt", "json"}
    sheet = (run_dir / "datasheet.md").read_text()
    assert "near_duplicate" in sheet or "near duplicate" in sheet
    assert (run_dir / "datasheet" / "images_per_entity.png").exists()


def test_curate_before_download_is_a_clear_error(tmp_path):
    entities = pa.Table.from_pylist([entity("Q1", "daisy")], schema=ENTITY_SCHEMA)
    queries = build_queries(
        entities, QueriesConfig.from_mapping({"engines": ["local"]})
    )
    with pytest.raises(InputError, match="kgclip download"):
        curate(tmp_path, entities, queries, CurateConfig())


def test_clip_filter_drops_the_pairs_scoring_below_the_threshold(
    crawled, tiny_clip, tmp_path
):
    """A small random model: its scores mean nothing, but the stage must
    drop exactly the pairs that score below the threshold, and count them."""
    from crawl.archive import WarcArchive
    from crawl.web import Location
    from curate.clip_filter import ClipFilterConfig, ClipScorer

    name, weights = tiny_clip
    source, entities, queries = crawled
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)

    def run(threshold: float) -> tuple[dict, set[tuple[str, str]]]:
        clip = ClipFilterConfig(
            enabled=True, model=name, checkpoint=str(weights),
            threshold=threshold, batch_size=8,
        )  # fmt: skip
        config = CurateConfig(
            balance=BalanceConfig(min_per_entity=1), processes=1, clip_filter=clip
        )
        counts = curate(run_dir, entities, queries, config)
        pairs = pq.read_table(run_dir / "pairs.parquet").to_pylist()
        return counts, {(p["image_id"], p["qid"]) for p in pairs}

    counts, everything = run(-1.0)
    assert counts["pairs_after_clip_filter"] == counts["pairs_after_balancing"]

    # the scores, computed apart from the stage, on the same bytes and captions
    pairs = pq.read_table(run_dir / "pairs.parquet").to_pylist()
    images = {
        r["image_id"]: r for r in pq.read_table(run_dir / "images.parquet").to_pylist()
    }
    with WarcArchive(run_dir / "archive", writer_id="test") as archive:
        data = [
            archive.read(Location(images[p["image_id"]]["warc_file"],
                                  images[p["image_id"]]["warc_offset"])).body
            for p in pairs
        ]  # fmt: skip
    clip = ClipFilterConfig(model=name, checkpoint=str(weights))
    scores = ClipScorer.load(clip).score(data, [p["caption"] for p in pairs])
    threshold = float(sorted(scores)[len(scores) // 2])
    expected = {
        (p["image_id"], p["qid"])
        for p, s in zip(pairs, scores, strict=True)
        if s >= threshold
    }
    assert 0 < len(expected) < len(everything)

    counts, kept = run(threshold)
    assert kept == expected
    record = json.loads((run_dir / "curation.json").read_text())
    dropped = record["drops"]["clip_score_below_threshold"]
    assert (
        dropped == counts["pairs_after_balancing"] - counts["pairs_after_clip_filter"]
    )
    assert dropped >= len(everything) - len(expected)
