"""Near-duplicate search, grouping and decontamination on real photos.

The hashes come from the flower photos of the shared data, hashed here by a
small DCT perceptual hash (the same recipe as pHash: 32x32 grey, 2-D DCT, the
8x8 lowest frequencies against their median), so that the tests do not depend
on the image checks of ``curate.images``. The key check: the band search finds
exactly the pairs that comparing all pairs finds.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate import dedup
from curate.dedup import (
    DUPLICATES_SCHEMA,
    MATCHES_SCHEMA,
    DedupConfig,
    EvaluationSet,
    decontaminate,
    dedup_images,
    group_near_duplicates,
    near_pairs,
    near_pairs_between,
    read_evaluation_set,
)
from curate.records import IMAGES_SCHEMA
from kg.errors import ConfigError, InputError
from tests.conftest import shared_file

SIDE = 32
_K = np.arange(SIDE)
DCT = np.cos(np.pi * (2 * _K[None, :] + 1) * _K[:, None] / (2 * SIDE))


def phash(data: bytes) -> int | None:
    """64-bit DCT perceptual hash of an image's bytes; None if it does not decode."""
    try:
        image = Image.open(io.BytesIO(data))
        grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    except OSError:
        return None
    low = (DCT @ np.asarray(grey, dtype=np.float64) @ DCT.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def copy_of(data: bytes, scale: float, quality: int) -> bytes:
    """The photo resized by ``scale`` and saved again as JPEG at ``quality``."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    size = (round(image.width * scale), round(image.height * scale))
    out = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=quality)
    return out.getvalue()


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (numpy's own count where it has one)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    bits = np.unpackbits(np.ascontiguousarray(x).view(np.uint8))
    return bits.reshape(*x.shape, 64).sum(axis=-1)


def all_pairs(hashes: np.ndarray, d: int) -> set[tuple[int, int]]:
    """The reference: every pair compared."""
    dist = popcount(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(dist <= d, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def all_pairs_between(left: np.ndarray, right: np.ndarray, d: int) -> set:
    i, j = np.nonzero(popcount(left[:, None] ^ right[None, :]) <= d)
    return set(zip(i.tolist(), j.tolist(), strict=True))


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, pairs.tolist()))


def image_row(data: bytes, **fields) -> dict:
    image = Image.open(io.BytesIO(data))
    row = {
        "image_id": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "status": "ok",
    }
    if "phash" not in fields:
        row["phash"] = phash(data)
    return row | fields


@pytest.fixture(scope="module")
def flowers() -> list[bytes]:
    folder = shared_file("images/flowers5")
    return [path.read_bytes() for path in sorted(folder.rglob("*.jpg"))]


@pytest.fixture(scope="module")
def flower_hashes(flowers) -> np.ndarray:
    return np.array([phash(data) for data in flowers], dtype=np.uint64)


@pytest.fixture(scope="module")
def planted(flowers) -> list[tuple[int, bytes]]:
    """(original's index, copy) for 300 photos: a smaller copy and a re-save."""
    copies = []
    for index in range(0, 3000, 10):
        copies.append((index, copy_of(flowers[index], 0.75, 50)))
        copies.append((index, copy_of(flowers[index], 1.0, 40)))
    return copies


# --------------------------------------------------------------------------
# The band search against comparing all pairs


@pytest.fixture
def bands_only(monkeypatch):
    """Make comparing all pairs look dear, so that every search below the depth
    limit goes through the band tables (small inputs would otherwise not)."""
    monkeypatch.setattr(dedup, "BRUTE_NS", 10**6)


@pytest.mark.parametrize("d", [0, 1, 2, 4, 6, 8, 10])
def test_band_search_equals_all_pairs_on_real_hashes(
    flower_hashes, planted, d, bands_only
):
    copies = np.array([phash(data) for _, data in planted], dtype=np.uint64)
    hashes = np.unique(np.concatenate((flower_hashes, copies)))
    assert hashes.size > 4000
    found = near_pairs(hashes, d)
    assert as_set(found) == all_pairs(hashes, d)
    assert np.all(found[:, 0] < found[:, 1])


def synthetic(seed: int) -> np.ndarray:
    """Uniform hashes, clusters with 1-4 flipped bits, and 3,000 hashes sharing
    their 40 high bits (one large bucket in every table)."""
    rng = np.random.default_rng(seed)
    uniform = rng.integers(0, 2**64, 2000, dtype=np.uint64)
    centres = uniform[:400]
    members = np.repeat(centres, 3)
    for _ in range(4):
        flip = rng.integers(0, 64, members.size).astype(np.uint64)
        members ^= (np.uint64(1) << flip) * (rng.random(members.size) < 0.8)
    prefix = np.uint64(0x5A5A_F00D_C3) << np.uint64(24)
    shared = prefix | rng.integers(0, 2**24, 2000, dtype=np.uint64)
    return np.unique(np.concatenate((uniform, members, shared)))


@pytest.mark.parametrize("d", [1, 3, 4, 5])
def test_band_search_equals_all_pairs_on_clusters_and_large_buckets(d, bands_only):
    hashes = synthetic(seed=d)
    order = np.random.default_rng(0).permutation(hashes.size)  # input order free
    found = near_pairs(hashes[order], d, max_bucket=64)
    expected = all_pairs(hashes[order], d)
    assert as_set(found) == {(min(p), max(p)) for p in expected}


@pytest.mark.parametrize("d", [0, 2, 4, 6])
def test_search_between_two_sets_equals_all_pairs(
    flower_hashes, planted, d, bands_only
):
    left = np.concatenate((flower_hashes, synthetic(seed=1)[:2000]))
    right = np.array([phash(data) for _, data in planted[::3]], dtype=np.uint64)
    right = np.concatenate((right, synthetic(seed=1)[-500:], right[:5]))  # repeats
    found = near_pairs_between(left, right, d, max_bucket=32)
    assert as_set(found) == all_pairs_between(left, right, d)


def test_groups_are_the_connected_components_of_close_pairs(flower_hashes, planted):
    copies = np.array([phash(data) for _, data in planted], dtype=np.uint64)
    hashes = np.concatenate((flower_hashes, copies))
    labels = group_near_duplicates(hashes, 4)
    # reference: components by a plain union-find over all close pairs
    parent = list(range(hashes.size))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j in all_pairs(hashes, 4):
        parent[find(i)] = find(j)
    roots = [find(x) for x in range(hashes.size)]
    same_group = labels[:, None] == labels[None, :]
    assert np.array_equal(same_group, np.equal.outer(roots, roots))


def test_a_chain_of_close_hashes_is_one_group():
    a = 0
    b = a ^ 0b1111  # 4 bits from a
    c = b ^ (0b1111 << 8)  # 4 bits from b, 8 from a
    labels = group_near_duplicates([a, b, c, 2**64 - 1], 4)
    assert labels[0] == labels[1] == labels[2] != labels[3]


# --------------------------------------------------------------------------
# Large buckets stay fast


def test_five_thousand_equal_hashes_are_one_group_quickly():
    rng = np.random.default_rng(5)
    blank = np.full(5000, 0x8000_0000_0000_0000, dtype=np.uint64)
    hashes = np.concatenate((blank, rng.integers(0, 2**64, 20_000, dtype=np.uint64)))
    started = time.perf_counter()
    labels = group_near_duplicates(hashes, 4)
    assert time.perf_counter() - started < 2.0
    assert len(set(labels[:5000].tolist())) == 1
    assert len(set(labels.tolist())) == 20_001


def test_many_distinct_hashes_sharing_most_bits_stay_fast():
    rng = np.random.default_rng(6)
    prefix = np.uint64(0xFFFF_FFFF_FF) << np.uint64(24)
    hashes = np.unique(prefix | rng.integers(0, 2**24, 20_000, dtype=np.uint64))
    started = time.perf_counter()
    found = near_pairs(hashes, 4)
    assert time.perf_counter() - started < 5.0
    sample = hashes[:4000]  # the reference on a part: pairs inside it agree
    inside = found[found[:, 1] < 4000]
    assert as_set(inside) == all_pairs(sample, 4)


# --------------------------------------------------------------------------
# The images table


@pytest.fixture(scope="module")
def images_table(flowers, flower_hashes, planted) -> pa.Table:
    rows = [image_row(flowers[i], phash=int(flower_hashes[i])) for i in range(3000)]
    rows += [image_row(data) for _, data in planted]
    rows.append(image_row(flowers[3001], status="rejected", reason="too_small"))
    rows.append({"image_id": "f" * 64, "status": "rejected", "reason": "decode_error"})
    # the photo collection holds a few files twice: one row per distinct image
    by_id = {row["image_id"]: row for row in reversed(rows)}
    return pa.Table.from_pylist(list(by_id.values())[::-1], schema=IMAGES_SCHEMA)


def test_planted_copies_are_kept_once_as_the_largest(images_table, flowers, planted):
    result = dedup_images(images_table)
    rows = {r["image_id"]: r for r in result.images.to_pylist()}
    assert result.images.schema == IMAGES_SCHEMA
    assert result.duplicates.schema == DUPLICATES_SCHEMA

    # every copy is a duplicate of its original's group, never its kept image
    # when smaller; the original's group keeps the largest image
    for index, data in planted:
        original = rows[hashlib.sha256(flowers[index]).hexdigest()]
        copy = rows[hashlib.sha256(data).hexdigest()]
        kept = original["duplicate_of"] or original["image_id"]
        assert copy["status"] == "duplicate" and copy["duplicate_of"] == kept
        assert copy["reason"] == "near_duplicate"
        assert rows[kept]["status"] == "ok" and rows[kept]["duplicate_of"] is None
        assert rows[kept]["width"] * rows[kept]["height"] >= 128 * 128

    # distinct flowers are rarely within 4 bits: the rest are ok
    counts = result.counts
    assert counts.num_duplicates == len(result.duplicates)
    assert len(planted) <= counts.num_duplicates <= len(planted) + 30
    assert 2990 + len(planted) <= counts.num_candidates <= 3000 + len(planted)
    assert rows["f" * 64]["status"] == "rejected"
    mapping = result.duplicates.to_pylist()
    assert all(m["distance"] >= 0 for m in mapping)
    assert {m["duplicate_of"] for m in mapping} <= {
        r["image_id"] for r in rows.values() if r["status"] == "ok"
    }


def test_dedup_runs_again_to_the_same_answer(images_table):
    once = dedup_images(images_table)
    twice = dedup_images(once.images)
    assert twice.images.equals(once.images)
    assert twice.duplicates.sort_by("image_id").equals(
        once.duplicates.sort_by("image_id")
    )


def test_representative_is_largest_then_heaviest_then_lowest_id():
    rows = [
        {"image_id": "c", "width": 100, "height": 100, "bytes": 10, "phash": 1},
        {"image_id": "b", "width": 200, "height": 100, "bytes": 5, "phash": 3},
        {"image_id": "a", "width": 100, "height": 200, "bytes": 5, "phash": 7},
        {
            "image_id": "d",
            "width": 100,
            "height": 200,
            "bytes": 9,
            "phash": 0xFFFF << 48,
        },
        {
            "image_id": "e",
            "width": 100,
            "height": 200,
            "bytes": 9,
            "phash": 0xFFFF << 48,
        },
    ]
    table = pa.Table.from_pylist([r | {"status": "ok"} for r in rows], IMAGES_SCHEMA)
    result = dedup_images(table, DedupConfig(max_distance=2))
    got = {r["image_id"]: r["duplicate_of"] for r in result.images.to_pylist()}
    assert got == {"a": None, "b": "a", "c": "a", "d": None, "e": "d"}
    assert result.counts.num_same_phash == 1
    assert result.counts.num_groups == 2


# --------------------------------------------------------------------------
# Decontamination


def write_shard(path: Path, samples: list[bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for number, data in enumerate(samples):
            for name, payload in (
                (f"{number:06d}.jpg", data),
                (f"{number:06d}.txt", b"x"),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_evaluation_copies_are_contaminated_with_their_groups(
    images_table, flowers, tmp_path
):
    # set "folder": 20 originals as files, plus a broken one; set "shards": a
    # webdataset shard of smaller copies of 10 other originals
    folder = tmp_path / "eval-folder"
    (folder / "daisy").mkdir(parents=True)
    for index in range(100, 120):  # originals 100, 110 have planted copies
        (folder / "daisy" / f"{index}.jpg").write_bytes(flowers[index])
    (folder / "broken.jpg").write_bytes(b"not an image")
    write_shard(
        tmp_path / "eval-000000.tar",
        [copy_of(flowers[i], 0.5, 70) for i in range(500, 510)],
    )

    sets = [
        read_evaluation_set("folder", folder, phash),
        read_evaluation_set("shards", tmp_path / "eval-000000.tar", phash),
    ]
    assert (sets[0].num_files, sets[0].num_unreadable) == (21, 1)
    assert sets[1].phashes.size == 10

    deduped = dedup_images(images_table).images
    result = decontaminate(deduped, sets)
    rows = {r["image_id"]: r for r in result.images.to_pylist()}
    assert result.images.schema == IMAGES_SCHEMA
    assert result.matches.schema == MATCHES_SCHEMA
    for index in [*range(100, 120), *range(500, 510)]:
        assert rows[hashlib.sha256(flowers[index]).hexdigest()]["status"] == (
            "contaminated"
        )
    # the planted copies of 100 and 110 go with them, whatever their distance
    kept_of_100 = rows[hashlib.sha256(flowers[100]).hexdigest()]
    group = [r for r in rows.values() if r["duplicate_of"] == kept_of_100["image_id"]]
    assert group and all(r["status"] == "contaminated" for r in group)
    assert kept_of_100["reason"] == "near_eval:folder"

    counts = result.counts
    assert counts.per_set["folder"].num_hashes == 20
    assert counts.per_set["folder"].num_unreadable == 1
    assert counts.per_set["folder"].num_matched == 20
    assert counts.per_set["shards"].num_matched == 10
    assert counts.num_contaminated >= 30 + 4
    assert counts.num_kept_lost >= 30
    assert rows["f" * 64]["status"] == "rejected"


def test_decontamination_from_given_hashes_and_nothing_close():
    ids = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(50)]
    rows = [{"image_id": i, "phash": int(i[:16], 16), "status": "ok"} for i in ids]
    table = pa.Table.from_pylist(rows, IMAGES_SCHEMA)
    far = EvaluationSet.from_hashes("far", [rows[7]["phash"] ^ 0xFFFF])
    near = EvaluationSet.from_hashes("near", [rows[7]["phash"] ^ 0b101])
    result = decontaminate(table, [far, near])
    assert result.counts.per_set["far"].num_images == 0
    assert result.counts.per_set["near"].num_images == 1
    assert result.matches.to_pylist() == [
        {"image_id": ids[7], "eval_set": "near", "distance": 2}
    ]
    nothing = decontaminate(table, [])
    assert nothing.counts.num_contaminated == 0
    assert nothing.images.column("status").to_pylist() == ["ok"] * 50


# --------------------------------------------------------------------------
# Errors name the input and what to do


def test_errors_name_the_input(tmp_path):
    with pytest.raises(ConfigError, match="max_distance"):
        dedup_images(pa.table({"image_id": ["a"]}), DedupConfig(max_distance=40))
    with pytest.raises(InputError, match="phash"):
        dedup_images(pa.table({"image_id": ["a"], "status": ["ok"]}))
    with pytest.raises(ValueError, match="distinct"):
        near_pairs([1, 2, 1])
    twice = pa.Table.from_pylist(
        [{"image_id": "a", "phash": 5, "status": "ok"}] * 2, IMAGES_SCHEMA
    )
    with pytest.raises(InputError, match="several rows"):
        dedup_images(twice)
    with pytest.raises(InputError, match="does not exist"):
        read_evaluation_set("x", tmp_path / "missing", phash)
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(InputError, match="no images"):
        read_evaluation_set("x", tmp_path, phash)
    (tmp_path / "cut.tar").write_bytes(b"\0" * 100 + b"garbage")
    with pytest.raises(InputError, match="tar shard"):
        read_evaluation_set("x", tmp_path / "cut.tar", phash)
    one = EvaluationSet.from_hashes("same", [1])
    table = pa.Table.from_pylist([{"image_id": "a", "phash": 1, "status": "ok"}])
    with pytest.raises(ConfigError, match="repeat a name"):
        decontaminate(table, [one, one])
