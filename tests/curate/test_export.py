"""Export to webdataset shards and the datasheet, on real photos and real entities."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from crawl.records import RESULTS_SCHEMA
from curate.captions import CaptionConfig, caption_pairs
from curate.datasheet import write_datasheet
from curate.export import ExportConfig, export_shards, sample_key
from curate.records import IMAGES_SCHEMA, PAIRS_SCHEMA, SHARDS_SCHEMA
from curate.splits import SplitConfig, assign_splits
from kg.errors import InputError

FLOWERS = ("daisy", "dandelion", "rose", "sunflower", "tulip")
PER_FLOWER = 6
LICENSES = ("CC BY 2.0", "CC BY-SA 4.0", None)


def encode(data: bytes) -> bytes:
    """A small stand-in for curate.images: decode, shrink, JPEG."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=85)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """image_id -> bytes of 30 real flower photos, with their folder as a tag."""
    from tests.conftest import shared_file

    folder = shared_file("images/flowers5")
    found = {}
    for flower in FLOWERS:
        for path in sorted((folder / flower).glob("*.jpg"))[:PER_FLOWER]:
            data = path.read_bytes()
            found[hashlib.sha256(data).hexdigest()] = data
    return found


@pytest.fixture(scope="module")
def entities(onezoom_taxa: pa.Table) -> pa.Table:
    return onezoom_taxa


@pytest.fixture(scope="module")
def pairs(photos, entities) -> pa.Table:
    """Each photo paired with a named real taxon, captioned and split."""
    taxa = sorted(r["qid"] for r in entities.to_pylist() if r["label"])
    rows, results = [], []
    for n, image_id in enumerate(sorted(photos)):
        url = f"https://images.example.org/{image_id[:12]}.jpg"
        source = {
            "url": url,
            "page_url": f"https://pages.example.org/{n}",
            "license": LICENSES[n % 3],
            "author": f"photographer {n % 4}",
            "engine": "local",
            "query": FLOWERS[n // PER_FLOWER],
            "rank": n % 7 + 1,
        }
        title = f"{FLOWERS[n // PER_FLOWER]} in a garden, photo {n}"
        results.append({**source, "image_url": url, "title": title})
        qid = taxa[n % len(taxa)]
        rows.append({"image_id": image_id, "qid": qid, "sources": [source]})
    by_qid = {r["qid"]: r for r in entities.to_pylist()}
    for row in rows:
        entity = by_qid[row["qid"]]
        row |= {k: entity[k] for k in ("root", "kind", "label", "lineage", "rank")}
    table = pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)
    results_table = pa.Table.from_pylist(results, schema=RESULTS_SCHEMA)
    table = caption_pairs(table, entities, results_table, CaptionConfig())
    split, drops = assign_splits(table, SplitConfig(train=0.5, val=0.25, test=0.25))
    assert drops == {"shared_across_splits": 0}
    return split


def export(pairs, photos, run_dir: Path, per_shard: int = 4):
    config = ExportConfig(samples_per_shard=per_shard)
    return export_shards(pairs, run_dir, photos.__getitem__, encode, config)


def shard_bytes(run_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run_dir).as_posix(): p.read_bytes()
        for p in sorted((run_dir / "shards").rglob("*"))
        if p.is_file()
    }


def test_same_input_gives_byte_identical_shards(pairs, photos, tmp_path):
    first = export(pairs, photos, tmp_path / "a").shards
    second = export(pairs, photos, tmp_path / "b").shards
    assert first.equals(second)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")

    # rows shuffled, and the table cut into chunks: still the same bytes
    order = list(range(pairs.num_rows))
    random.Random(7).shuffle(order)
    shuffled = pa.concat_tables([pairs.take(order[:11]), pairs.take(order[11:])])
    third = export(shuffled, photos, tmp_path / "c").shards
    assert third.equals(first)
    assert shard_bytes(tmp_path / "c") == shard_bytes(tmp_path / "a")


def test_shard_rows_sizes_and_headers(pairs, photos, tmp_path):
    result = export(pairs, photos, tmp_path)
    shards = result.shards
    assert shards.schema == SHARDS_SCHEMA
    assert result.failed == {}
    rows = shards.to_pylist()
    splits = pairs.column("split").to_pylist()
    for split in ("train", "val", "test"):
        mine = [r for r in rows if r["split"] == split]
        sizes = [r["num_samples"] for r in mine]
        assert sum(sizes) == splits.count(split)
        assert all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4
        assert [r["path"] for r in mine] == [
            f"shards/{split}/{i:06d}.tar" for i in range(len(mine))
        ]
    for row in rows:
        data = (tmp_path / row["path"]).read_bytes()
        assert row["bytes"] == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        with tarfile.open(tmp_path / row["path"]) as tar:
            members = tar.getmembers()
        assert len(members) == 3 * row["num_samples"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o644)
        }
    assert not list(tmp_path.rglob("*.partial"))


def test_webdataset_reads_every_sample_back(pairs, photos, tmp_path):
    import webdataset as wds

    result = export(pairs, photos, tmp_path)
    urls = [str(tmp_path / p) for p in result.shards.column("path").to_pylist()]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == pairs.num_rows

    expected = {sample_key(r["image_id"], r["qid"]): r for r in pairs.to_pylist()}
    assert {s["__key__"] for s in samples} == set(expected)
    for sample in samples:
        pair = expected[sample["__key__"]]
        meta = json.loads(sample["json"])
        assert sample["txt"].decode() == pair["caption"]
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert image.format == "JPEG" and image.size == (64, 64)
        assert meta["image_id"] == pair["image_id"] and meta["qid"] == pair["qid"]
        assert meta["lineage"] == pair["lineage"] and meta["split"] == pair["split"]
        assert meta["web_texts"] == pair["web_texts"]
        assert meta["kg_texts"] == pair["kg_texts"]
        assert meta["url"] == pair["sources"][0]["url"]
        assert meta["license"] == pair["sources"][0]["license"]
        assert meta["query"] in pair["caption"]  # the local title names the flower


def test_a_smaller_export_removes_the_shards_it_no_longer_needs(
    pairs, photos, tmp_path
):
    export(pairs, photos, tmp_path, per_shard=2)
    many = set(shard_bytes(tmp_path))
    result = export(pairs, photos, tmp_path, per_shard=100)
    assert set(shard_bytes(tmp_path)) == set(result.shards.column("path").to_pylist())
    assert len(many) > result.shards.num_rows == 3


def test_images_that_fail_to_encode_are_left_out(pairs, photos, tmp_path):
    broken = sorted(photos)[0]
    damaged = {**photos, broken: photos[broken][:200]}
    result = export(pairs, damaged, tmp_path)
    assert list(result.failed) == [broken]
    assert sum(result.shards.column("num_samples").to_pylist()) == pairs.num_rows - 1


def test_pairs_without_a_split_are_refused(pairs, photos, tmp_path):
    unsplit = pairs.set_column(
        pairs.schema.get_field_index("split"),
        "split",
        pa.nulls(pairs.num_rows, pa.string()),
    )
    with pytest.raises(InputError, match=r"assign_splits"):
        export(unsplit, photos, tmp_path)


def test_datasheet_states_counts_drops_licenses_and_plots(pairs, entities, tmp_path):
    images = pa.Table.from_pylist(
        [{"image_id": i, "status": "ok", "format": "JPEG"} for i in pairs["image_id"]]
        + [{"image_id": "x", "status": "rejected", "reason": "too_small"}],
        schema=IMAGES_SCHEMA,
    )
    counts = {"downloads ok": 40, "decoded": 36, "after dedup": 32, "exported": 30}
    drops = {"decode_error": 4, "near_duplicate": 3, "exact_duplicate": 1}
    config = {"curate": {"split": SplitConfig(mode="entity"), "export": {"n": 4}}}
    kwargs = dict(
        entities=entities, pairs=pairs, images=images, counts=counts, drops=drops
    )
    path = write_datasheet(tmp_path, config=config, **kwargs)
    text = path.read_text()
    assert path == tmp_path / "datasheet.md"
    assert "| embedded:onezoom-entities.json.bz2 | 2024-04-08 |" in text
    assert "| local | 30 | 30 |" in text
    for step, count in counts.items():
        assert f"| {step} | {count} |" in text
    for reason, count in drops.items():
        assert f"| {reason} | {count} |" in text
    assert "| rejected | too_small | 1 |" in text
    licenses = [LICENSES[n % 3] for n in range(30)]
    for name in ("CC BY 2.0", "CC BY-SA 4.0"):
        assert f"| {name} | {licenses.count(name)} |" in text
    assert f"| (none) | {licenses.count(None)} |" in text
    assert "| species |" in text and "Homo sapiens" in text
    assert "mode: entity" in text and "```yaml" in text
    for name in ("images_per_entity", "per_rank", "licenses"):
        png = tmp_path / "datasheet" / f"{name}.png"
        assert f"](datasheet/{name}.png)" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the page depends on the data alone
    again = write_datasheet(tmp_path / "again", config=config, **kwargs)
    assert again.read_text() == text.replace(
        "# Datasheet: " + tmp_path.name, "# Datasheet: again"
    )
