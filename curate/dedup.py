"""Near-duplicate images kept once, and images too close to an evaluation set.

Two images are near duplicates when their 64-bit perceptual hashes (``phash``)
differ in at most ``max_distance`` bits. Near duplicates are one image: a group
is a connected component of the "within distance" relation, so a chain of close
images is one group even where its two ends are farther apart. Each group keeps
one representative (the largest image, then the most bytes, then the lowest
``image_id``); every other member gets status ``duplicate`` and points at it
through ``duplicate_of``. :func:`dedup_images` returns that member ->
representative mapping too, so the caller can move every entity and query that
found a member onto the representative.

Finding the close pairs without comparing all of them (multi-index hashing)
---------------------------------------------------------------------------
Cut the bits into ``m`` bands, ``m > d``. Two hashes within distance ``d``
differ in at most ``d`` bands, so they agree exactly on at least ``m - d`` of
them (the pigeonhole principle). For every choice of ``m - d`` bands (one
"table"; there are ``C(m, d)``) the hashes are sorted with the chosen bands moved
to the top bits, so that hashes agreeing on those bands (one "bucket") lie next
to each other. Only hashes of one bucket are compared (XOR and popcount) and
those farther apart than ``d`` are dropped. Every pair within ``d`` shares a
bucket in at least one table, so the answer is exactly the all-pairs answer; a
pair met in several tables is kept once.

``m`` is chosen per call by a cost model (:func:`_plan`): the plain split into
``d + 1`` bands leaves keys of ``64 / (d + 1)`` bits, which for ten million
hashes and ``d = 4`` means buckets of ~1,200 hashes and ~6e9 comparisons per
table; ``m = d + 2`` gives 15 tables with ~21-bit keys and ~4 hashes a bucket.

Large buckets. Images with equal hashes (blank images, placeholders) are
collapsed before the search: they join one group without any comparison. A
bucket still larger than ``max_bucket`` distinct hashes (hashes that agree on
many bits) is searched again by the same method on the bits outside its key,
where its members differ, down to ``MAX_DEPTH`` levels, below which it is
compared all against all. Worst case: ``B`` distinct hashes that agree on all
but a few bits cost ``O(B**2)`` comparisons; such a set holds up to ``B**2 / 2``
true pairs, so any method that lists the pairs pays as much. Uniform hashes
cost ``C(m, d)`` sorts of ``n`` words plus a few comparisons per hash.

Bits above the highest one in which the hashes of a search differ are left
out of its bands, so a bucket whose members share a prefix is cut on the bits
that vary.

Memory: a table holds about five arrays of ``n`` 8-byte words, plus the pairs
found; ten million hashes peak at ~850 MB, input included
(``benchmarks/bench_curate_dedup.py``).
"""

from __future__ import annotations

import logging
import math
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

# Images within this many bits of each other are one image. Four of 64 bits
# (94% of the bits equal) joins resized, recompressed and lightly cropped
# copies of a photo while distinct photos almost never come that close: among
# uniform hashes a pair is within 4 bits with probability ~4e-14. Published
# pHash near-duplicate thresholds run from 4 to 10; larger values catch
# heavier edits at the price of joining merely similar photos (two shots of
# the same flower from the same spot).
DEFAULT_MAX_DISTANCE = 4

# Buckets of more distinct hashes than this are searched again on their
# remaining bits instead of compared all against all (B**2 / 2 comparisons:
# ~0.5M at 1,024, a few milliseconds).
DEFAULT_MAX_BUCKET = 1024

# Levels of searching again inside large buckets; below that, all against all.
MAX_DEPTH = 3

# More tables than this cost more than they save (large distances need many).
MAX_TABLES = 500

# Statuses that dedup decides anew on every run; others it leaves alone.
DEDUP_STATUSES = ("ok", "duplicate")

# Estimated nanoseconds of the steps, for choosing the number of bands.
TABLE_NS = 300_000  # fixed numpy overhead of one table
SORT_NS = 150  # permute, sort and scan one hash in one table
CHECK_NS = 40  # gather, XOR and popcount one candidate pair
BRUTE_NS = 4  # one comparison of the all-against-all search

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
UINT64_MASK = (1 << 64) - 1

DUPLICATES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # a member of a near-duplicate group
        ("duplicate_of", pa.string()),  # the group's representative
        ("distance", pa.int32()),  # Hamming distance between their hashes
    ]
)

MATCHES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("eval_set", pa.string()),
        ("distance", pa.int32()),  # to the closest image of that evaluation set
    ]
)


@dataclass(frozen=True)
class DedupConfig:
    """How close two hashes must be to count as one image, and search limits."""

    # bits; the band tables grow as C(m, d), so past about 10 the search falls
    # back to comparing all pairs, which is quadratic
    max_distance: int = DEFAULT_MAX_DISTANCE
    max_bucket: int = DEFAULT_MAX_BUCKET

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the key that is out of range."""
        if not 0 <= self.max_distance < 32:
            raise ConfigError(
                f"curate.dedup.max_distance={self.max_distance} is out of range: "
                "use 0-31 bits of the 64-bit hash (4-10 are usual)"
            )
        if self.max_bucket < 2:
            raise ConfigError(
                f"curate.dedup.max_bucket={self.max_bucket} is too small: use 2 or "
                f"more (default {DEFAULT_MAX_BUCKET})"
            )


# --------------------------------------------------------------------------
# Bit layouts: which bands go to the top in each table


@dataclass(frozen=True)
class _Table:
    """One choice of bands, as bit moves that bring them to the top."""

    moves: tuple[tuple[int, int, int], ...]  # (source low bit, target low bit, bits)
    key_bits: int

    def inverse(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((dst, src, bits) for src, dst, bits in self.moves)


def _bands(width: int, num_bands: int) -> list[tuple[int, int]]:
    """(low bit, bits) of each band of a ``width``-bit word, the top band first."""
    sizes = [width // num_bands + (i < width % num_bands) for i in range(num_bands)]
    bands, top = [], width
    for size in sizes:
        top -= size
        bands.append((top, size))
    return bands


@lru_cache(maxsize=1024)
def _tables(width: int, num_bands: int, d: int) -> tuple[_Table, ...]:
    """The ``C(m, d)`` tables: each set of ``m - d`` bands moved to the top."""
    bands = _bands(width, num_bands)
    tables = []
    for chosen in combinations(range(num_bands), num_bands - d):
        order = list(chosen) + [b for b in range(num_bands) if b not in chosen]
        moves: list[tuple[int, int, int]] = []
        top = width
        for band in order:
            low, bits = bands[band]
            top -= bits
            # a band right below the previous one in both layouts extends its move
            if moves and moves[-1][0] == low + bits and moves[-1][1] == top + bits:
                moves[-1] = (low, top, moves[-1][2] + bits)
            else:
                moves.append((low, top, bits))
        key_bits = sum(bands[b][1] for b in chosen)
        tables.append(_Table(tuple(moves), key_bits))
    return tuple(tables)


def _permute(values: np.ndarray, moves: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """``values`` with each run of bits moved as ``moves`` says."""
    out = np.zeros_like(values)
    part = np.empty_like(values)
    for src, dst, bits in moves:
        np.bitwise_and(values, np.uint64(((1 << bits) - 1) << src), out=part)
        if dst > src:
            np.left_shift(part, np.uint64(dst - src), out=part)
        elif src > dst:
            np.right_shift(part, np.uint64(src - dst), out=part)
        np.bitwise_or(out, part, out=out)
    return out


def _plan(num_pairs: float, num_hashes: int, width: int, d: int) -> tuple[_Table, ...]:
    """The cheapest set of tables, or none where comparing all pairs is cheaper.

    ``num_pairs`` is how many comparisons the all-against-all search would make;
    the expected candidates of a table assume uniform hashes.
    """
    best: tuple[_Table, ...] = ()
    best_ns: float = BRUTE_NS * num_pairs
    for num_bands in range(d + 1, width + 1):
        if math.comb(num_bands, d) > MAX_TABLES:
            break
        tables = _tables(width, num_bands, d)
        candidates = num_pairs * sum(2.0**-t.key_bits for t in tables)
        cost_ns = (
            len(tables) * (TABLE_NS + SORT_NS * num_hashes) + CHECK_NS * candidates
        )
        if cost_ns < best_ns:
            best, best_ns = tables, cost_ns
    return best


def _varying_width(values: np.ndarray) -> int:
    """Bits below the highest bit in which any two of ``values`` differ."""
    if values.size < 2:
        return 0
    return int(np.bitwise_or.reduce(values ^ values[0])).bit_length()


# --------------------------------------------------------------------------
# Pairs within one set


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    as_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(*values.shape, 8)
    return _BYTE_BITS[as_bytes].sum(axis=-1, dtype=np.uint8)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

_EMPTY = np.empty(0, dtype=np.int64)


def _brute_self(values: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j within ``d``, by comparing every pair (in row blocks)."""
    n = values.size
    rows = max(1, 4_000_000 // max(n, 1))  # keep each block near 32 MB
    found_i, found_j = [_EMPTY], [_EMPTY]
    for start in range(0, n - 1, rows):
        block = values[start : start + rows]
        dist = _popcount(block[:, None] ^ values[None, start:])  # (rows, n - start)
        upper = np.arange(n - start)[None, :] > np.arange(block.size)[:, None]
        i, j = np.nonzero((dist <= d) & upper)
        found_i.append(i + start)
        found_j.append(j + start)
    return np.concatenate(found_i), np.concatenate(found_j)


def _runs(same: np.ndarray, max_bucket: int) -> list[tuple[int, int]]:
    """(start, stop) of the buckets bigger than ``max_bucket`` in sorted order.

    ``same[i]`` says that positions ``i`` and ``i + 1`` share a key.
    """
    starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
    sizes = np.diff(np.concatenate((starts, [same.size + 1])))
    big = np.flatnonzero(sizes > max_bucket)
    return [(int(starts[b]), int(starts[b] + sizes[b])) for b in big]


def _pairs_in_runs(
    p: np.ndarray, same: np.ndarray, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions i < j of sorted ``p`` in one bucket and within ``d``.

    Offset by offset: position i is compared with i + k while i + k is still in
    its bucket, so the work is the number of pairs inside buckets.
    """
    found_i, found_j = [_EMPTY], [_EMPTY]
    active = np.flatnonzero(same)
    offset = 1
    while active.size:
        other = active + offset
        close = _popcount(p[active] ^ p[other]) <= d
        found_i.append(active[close])
        found_j.append(other[close])
        active = active[other < same.size]
        active = active[same[active + offset]]
        offset += 1
    return np.concatenate(found_i), np.concatenate(found_j)


def _self_table(
    values: np.ndarray, table: _Table, width: int, d: int, bucket: int, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within ``d`` that share this table's key, as positions in ``values``."""
    p = np.sort(_permute(values, table.moves))
    shift = width - table.key_bits
    same = ((p[1:] ^ p[:-1]) >> np.uint64(shift)) == 0

    # large buckets leave the scan and are searched again on their other bits
    big = _runs(same, bucket)
    for start, stop in big:
        same[start : stop - 1] = False
    i, j = _pairs_in_runs(p, same, d)
    low_bits = np.uint64((1 << shift) - 1)
    for start, stop in big:
        sub_i, sub_j = _self_search(p[start:stop] & low_bits, d, bucket, depth)
        i = np.concatenate((i, sub_i + start))
        j = np.concatenate((j, sub_j + start))

    # back to positions in values, which are sorted and distinct
    inverse = table.inverse()
    a = np.searchsorted(values, _permute(p[i], inverse))
    b = np.searchsorted(values, _permute(p[j], inverse))
    return np.minimum(a, b), np.maximum(a, b)


def _unique_pairs(
    i: np.ndarray, j: np.ndarray, num_right: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs sorted by (i, j), each once."""
    code = np.sort(i.astype(np.int64) * num_right + j)
    if code.size:
        code = code[np.concatenate(([True], code[1:] != code[:-1]))]
    return code // num_right, code % num_right


def _self_search(
    values: np.ndarray, d: int, bucket: int, depth: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Positions i < j of pairs within ``d`` among sorted, distinct ``values``."""
    # bits above the highest varying one are equal in all: leave them out
    n = values.size
    width = _varying_width(values)
    values = values & np.uint64((1 << width) - 1)
    tables = _plan(n * (n - 1) / 2, n, width, d) if depth < MAX_DEPTH else ()
    if not tables:
        return _brute_self(values, d)
    found_i, found_j = [], []
    for number, table in enumerate(tables):
        i, j = _self_table(values, table, width, d, bucket, depth + 1)
        found_i.append(i)
        found_j.append(j)
        if depth == 0:
            log.debug("table %d/%d: %d pairs", number + 1, len(tables), i.size)
    return _unique_pairs(np.concatenate(found_i), np.concatenate(found_j), n)


# --------------------------------------------------------------------------
# Pairs between two sets


def _brute_between(
    left: np.ndarray, right: np.ndarray, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """All (left, right) position pairs within ``d``, comparing every pair."""
    rows = max(1, 4_000_000 // max(right.size, 1))
    found_i, found_j = [_EMPTY], [_EMPTY]
    for start in range(0, left.size, rows):
        block = left[start : start + rows]
        i, j = np.nonzero(_popcount(block[:, None] ^ right[None, :]) <= d)
        found_i.append(i + start)
        found_j.append(j)
    return np.concatenate(found_i), np.concatenate(found_j)


def _between_table(
    left: np.ndarray,
    right: np.ndarray,
    table: _Table,
    width: int,
    d: int,
    bucket: int,
    depth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) position pairs within ``d`` that share this table's key."""
    shift = np.uint64(width - table.key_bits)
    pr = _permute(right, table.moves)
    order = np.argsort(pr, kind="stable")
    pr = pr[order]
    key_right = pr >> shift
    pl = _permute(left, table.moves)
    key_left = pl >> shift

    # each left hash meets the right bucket with its key: positions lo..hi-1
    lo = np.searchsorted(key_right, key_left, side="left")
    hit = np.flatnonzero(key_right[np.minimum(lo, right.size - 1)] == key_left)
    lo = lo[hit]
    hi = np.searchsorted(key_right, key_left[hit], side="right")

    # large right buckets are searched again on the bits outside the key
    big = hi - lo > bucket
    i, j = _pairs_in_ranges(pl, pr, hit[~big], lo[~big], hi[~big], d)
    big_i, big_j = _between_big(
        pl, pr, (hit[big], lo[big], hi[big]), int(shift), d, bucket, depth
    )
    return np.concatenate((i, big_i)), order[np.concatenate((j, big_j))]


def _pairs_in_ranges(
    pl: np.ndarray,
    pr: np.ndarray,
    left: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    d: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each ``pl[left]`` compared with ``pr[lo:hi]``, offset by offset."""
    found_i, found_j = [_EMPTY], [_EMPTY]
    offset = 0
    while left.size:
        other = lo + offset
        close = _popcount(pl[left] ^ pr[other]) <= d
        found_i.append(left[close])
        found_j.append(other[close])
        more = other + 1 < hi
        left, lo, hi = left[more], lo[more], hi[more]
        offset += 1
    return np.concatenate(found_i), np.concatenate(found_j)


def _between_big(
    pl: np.ndarray,
    pr: np.ndarray,
    hits: tuple[np.ndarray, np.ndarray, np.ndarray],
    shift: int,
    d: int,
    bucket: int,
    depth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Left hashes meeting a large right bucket, searched again bucket by bucket.

    ``hits`` holds the left positions and the range ``lo..hi-1`` of the right
    bucket each one meets.
    """
    left, lo, hi = hits
    found_i, found_j = [_EMPTY], [_EMPTY]
    low_bits = np.uint64((1 << shift) - 1)
    for start in np.unique(lo):
        meets = lo == start
        members, stop = left[meets], int(hi[meets][0])
        sub_l = pl[members] & low_bits
        sub_r = pr[start:stop] & low_bits
        i, j = _between_search(sub_l, sub_r, d, bucket, depth)
        found_i.append(members[i])
        found_j.append(j + start)
    return np.concatenate(found_i), np.concatenate(found_j)


def _between_search(
    left: np.ndarray, right: np.ndarray, d: int, bucket: int, depth: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) position pairs within ``d``."""
    if not left.size or not right.size:
        return _EMPTY, _EMPTY
    width = _varying_width(np.concatenate((left, right)))
    left, right = (x & np.uint64((1 << width) - 1) for x in (left, right))
    num_pairs = float(left.size) * right.size
    tables = _plan(num_pairs, left.size + right.size, width, d)
    if depth >= MAX_DEPTH or not tables:
        return _brute_between(left, right, d)
    found_i, found_j = [], []
    for table in tables:
        i, j = _between_table(left, right, table, width, d, bucket, depth + 1)
        found_i.append(i)
        found_j.append(j)
    return _unique_pairs(np.concatenate(found_i), np.concatenate(found_j), right.size)


# --------------------------------------------------------------------------
# Hashes in, pairs and groups out


def as_phashes(
    values: Iterable[int] | np.ndarray | pa.Array | pa.ChunkedArray,
) -> np.ndarray:
    """Hashes as a uint64 array.

    Signed 64-bit values (as DuckDB's BIGINT or Parquet's INT64 hold them) are
    read bit for bit, so ``-1`` is ``0xFFFFFFFFFFFFFFFF``.
    """
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_numpy(zero_copy_only=False)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        if values.dtype.itemsize == 8:
            return values.view(np.uint64)
        return values.astype(np.int64).view(np.uint64)
    return np.fromiter((int(v) & UINT64_MASK for v in values), dtype=np.uint64)


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a mask: numpy's unique is slower)."""
    ordered = np.sort(values)
    if ordered.size:
        ordered = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
    return ordered


def near_pairs(
    hashes: Iterable[int] | np.ndarray,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    *,
    max_bucket: int = DEFAULT_MAX_BUCKET,
) -> np.ndarray:
    """Every pair of distinct hashes within ``max_distance`` bits.

    Returns an int64 array of shape (pairs, 2): positions ``i < j`` into
    ``hashes``, sorted. The answer equals comparing all pairs. Raises
    ``ValueError`` when a hash occurs twice (their pairs would grow with the
    square of the repeats): :func:`group_near_duplicates` joins equal hashes
    first.
    """
    DedupConfig(max_distance, max_bucket).check()
    values = as_phashes(hashes)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    if np.any(ordered[1:] == ordered[:-1]):
        raise ValueError("near_pairs needs distinct hashes; group equal ones first")
    i, j = _self_search(ordered, max_distance, max_bucket)
    a, b = order[i], order[j]
    pairs = np.stack((np.minimum(a, b), np.maximum(a, b)), axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def near_pairs_between(
    left: Iterable[int] | np.ndarray,
    right: Iterable[int] | np.ndarray,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    *,
    max_bucket: int = DEFAULT_MAX_BUCKET,
) -> np.ndarray:
    """Every (left, right) pair within ``max_distance`` bits.

    Returns an int64 array of shape (pairs, 2) of positions into ``left`` and
    ``right``, sorted. Either side may repeat hashes.
    """
    DedupConfig(max_distance, max_bucket).check()
    i, j = _between_search(
        as_phashes(left), as_phashes(right), max_distance, max_bucket
    )
    return np.stack((i, j), axis=1).astype(np.int64)


def group_near_duplicates(
    hashes: Iterable[int] | np.ndarray,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    *,
    max_bucket: int = DEFAULT_MAX_BUCKET,
) -> np.ndarray:
    """The group of each hash: equal labels mean one near-duplicate group.

    Groups are connected components of "within ``max_distance`` bits"; equal
    hashes are always one group. A label is the rank of the group's smallest
    hash among the distinct hashes (int64, one per input hash).
    """
    DedupConfig(max_distance, max_bucket).check()
    values = as_phashes(hashes)
    distinct = _distinct(values)
    i, j = _self_search(distinct, max_distance, max_bucket)
    return _components(distinct.size, i, j)[np.searchsorted(distinct, values)]


def _components(num_nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The root of each node's connected component: its smallest node.

    Union-find in whole-array steps: every edge between two trees hooks the
    larger root under the smaller one, then pointers jump until each node
    points at a root; repeated until no edge joins two trees. Only the nodes
    that edges touch take part.
    """
    root = np.arange(num_nodes)
    nodes = _distinct(np.concatenate((a, b)).astype(np.int64))
    parent = np.arange(nodes.size)
    a, b = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    while a.size:
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    root[nodes] = nodes[parent]
    return root


# --------------------------------------------------------------------------
# The images table: duplicates


@dataclass(frozen=True)
class DedupCounts:
    """What one dedup run found; the stage records these in the catalog."""

    num_images: int  # rows of the images table
    num_candidates: int  # rows with status ok or duplicate and a hash
    num_distinct_phash: int
    num_pairs: int  # pairs of distinct hashes within the distance
    num_groups: int  # groups of two or more images
    num_duplicates: int  # images marked duplicate
    num_same_phash: int  # duplicates whose hash equals their representative's
    seconds: float


@dataclass(frozen=True)
class DedupResult:
    """The images with statuses decided, and who was merged into whom."""

    images: pa.Table  # the input table, status, reason and duplicate_of updated
    duplicates: pa.Table  # DUPLICATES_SCHEMA: member -> representative
    counts: DedupCounts


def dedup_images(images: pa.Table, config: DedupConfig | None = None) -> DedupResult:
    """Mark near-duplicate images, keeping one representative per group.

    ``images`` has the columns of ``IMAGES_SCHEMA`` (at least ``image_id``,
    ``phash`` and ``status``; ``width``, ``height`` and ``bytes`` choose the
    representative where present). Rows with status ``ok`` or ``duplicate``
    and a hash are decided anew, so a second run gives the same answer; other
    rows are left as they are. Raises :class:`InputError` when a column is
    missing and :class:`ConfigError` for settings out of range.
    """
    config = config or DedupConfig()
    config.check()
    _require_columns(images, ("image_id", "phash", "status"), "dedup")
    started = time.perf_counter()

    # the groups of the candidate images, through their distinct hashes
    rows = _candidate_rows(images)
    phash = as_phashes(images["phash"].take(rows))
    distinct = _distinct(phash)
    i, j = _self_search(distinct, config.max_distance, config.max_bucket)
    group = _components(distinct.size, i, j)[np.searchsorted(distinct, phash)]

    # one representative per group; every other member points at it
    members, reps = _representatives(images, rows, group)
    table = _mark_duplicates(images, rows, members, reps)
    duplicates = _duplicates_table(images, members, reps)

    counts = DedupCounts(
        num_images=images.num_rows,
        num_candidates=int(rows.size),
        num_distinct_phash=int(distinct.size),
        num_pairs=int(i.size),
        num_groups=int(np.unique(reps).size),
        num_duplicates=int(members.size),
        num_same_phash=int(pc.sum(pc.equal(duplicates["distance"], 0)).as_py() or 0),
        seconds=time.perf_counter() - started,
    )
    log.info("dedup: %s", _key_values(counts))
    return DedupResult(table, duplicates, counts)


def _key_values(counts: object) -> str:
    """``key=value`` pairs of a counts dataclass, for the summary line."""
    items = vars(counts).items()
    return " ".join(
        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in items
        if not isinstance(v, dict)
    )


def _require_columns(table: pa.Table, names: Sequence[str], stage: str) -> None:
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise InputError(
            f"{stage}: the images table lacks the columns {missing}: give a table "
            "with the columns of curate.records.IMAGES_SCHEMA"
        )


def _candidate_rows(images: pa.Table) -> np.ndarray:
    """Rows whose status dedup decides (ok, duplicate) and that have a hash."""
    takes_part = pc.and_(
        pc.is_in(images["status"], value_set=pa.array(DEDUP_STATUSES)),
        pc.is_valid(images["phash"]),
    )
    return np.flatnonzero(takes_part.to_numpy(zero_copy_only=False))


def _int_column(images: pa.Table, name: str, rows: np.ndarray) -> np.ndarray:
    """An integer column at ``rows`` as int64, nulls and a missing column as 0."""
    if name not in images.column_names:
        return np.zeros(rows.size, dtype=np.int64)
    values = pc.fill_null(images[name].take(rows), 0)
    return values.to_numpy().astype(np.int64)


def _representatives(
    images: pa.Table, rows: np.ndarray, group: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(member rows, their representative's rows) of groups of two or more.

    The representative is the image with the most pixels, then the most bytes,
    then the lowest image_id: the best copy, chosen the same way every run.
    """
    sizes = np.bincount(group) if group.size else np.zeros(0, dtype=np.int64)
    in_group = sizes[group] > 1
    grouped = rows[in_group]
    area = _int_column(images, "width", grouped) * _int_column(
        images, "height", grouped
    )
    candidates = pa.table(
        {
            "group": group[in_group],
            "area": area,
            "bytes": _int_column(images, "bytes", grouped),
            "image_id": images["image_id"].take(grouped),
        }
    )
    order = pc.sort_indices(
        candidates,
        sort_keys=[
            ("group", "ascending"),
            ("area", "descending"),
            ("bytes", "descending"),
            ("image_id", "ascending"),
        ],
    ).to_numpy()
    ordered_group, ordered_rows = group[in_group][order], grouped[order]
    first = np.ones(ordered_group.size, dtype=bool)  # empty when no group
    first[1:] = ordered_group[1:] != ordered_group[:-1]
    rep_rows = ordered_rows[first][np.cumsum(first) - 1]
    return ordered_rows[~first], rep_rows[~first]


def _mark_duplicates(
    images: pa.Table, rows: np.ndarray, members: np.ndarray, reps: np.ndarray
) -> pa.Table:
    """The images table with the candidates' status, reason and duplicate_of."""
    candidate = np.zeros(images.num_rows, dtype=bool)
    candidate[rows] = True
    member = np.zeros(images.num_rows, dtype=bool)
    member[members] = True
    rep_of = np.full(images.num_rows, -1, dtype=np.int64)
    rep_of[members] = reps

    new_duplicate_of = images["image_id"].take(pa.array(rep_of, mask=rep_of < 0))
    decided = {
        "status": pc.if_else(member, "duplicate", "ok"),
        "reason": pc.if_else(member, "near_duplicate", pa.scalar(None, pa.string())),
        "duplicate_of": new_duplicate_of,
    }
    return _update_rows(images, candidate, decided)


def _update_rows(
    images: pa.Table, where: np.ndarray, columns: dict[str, pa.Array]
) -> pa.Table:
    """``images`` with ``columns`` written at the rows ``where`` (others kept)."""
    for name, values in columns.items():
        old = images[name] if name in images.column_names else None
        if old is None:
            old = pa.nulls(images.num_rows, pa.string())
        new = pc.if_else(where, values, old)
        if name in images.column_names:
            images = images.set_column(images.schema.get_field_index(name), name, new)
        else:
            images = images.append_column(name, new)
    return images


def _duplicates_table(
    images: pa.Table, members: np.ndarray, reps: np.ndarray
) -> pa.Table:
    """The member -> representative mapping, with their distance.

    Raises :class:`InputError` when an image_id has several rows: equal bytes
    have equal hashes, so repeated rows always meet in one group.
    """
    member_id = images["image_id"].take(members)
    rep_id = images["image_id"].take(reps)
    repeated = pc.filter(member_id, pc.equal(member_id, rep_id))
    if len(repeated):
        raise InputError(
            f"dedup: image_id {repeated[0]} has several rows in the images table: "
            "give one row per distinct image (the download stage's sha256)"
        )
    phash = as_phashes(images["phash"].take(members))
    rep_phash = as_phashes(images["phash"].take(reps))
    return pa.table(
        {
            "image_id": member_id,
            "duplicate_of": rep_id,
            "distance": _popcount(phash ^ rep_phash).astype(np.int32),
        },
        schema=DUPLICATES_SCHEMA,
    )


# --------------------------------------------------------------------------
# Evaluation sets and decontamination

# Hashes one image's bytes; None where the bytes do not decode.
HashFn = Callable[[bytes], int | None]


@dataclass(frozen=True)
class EvaluationSet:
    """The perceptual hashes of one evaluation set's images."""

    name: str
    phashes: np.ndarray = field(repr=False)  # uint64, one per image
    num_files: int = 0  # image files read (0 where the hashes were given)
    num_unreadable: int = 0  # files that hash_fn could not hash

    @classmethod
    def from_hashes(
        cls, name: str, hashes: Iterable[int] | np.ndarray
    ) -> EvaluationSet:
        """A set from hashes computed elsewhere (a catalog, a published list)."""
        return cls(name, as_phashes(hashes))


def read_evaluation_set(
    name: str, source: Path | str, hash_fn: HashFn
) -> EvaluationSet:
    """Hash every image of a folder or of webdataset ``.tar`` shards.

    ``source`` is a folder (searched recursively; ``.tar`` shards inside it are
    read too) or one ``.tar`` shard. ``hash_fn`` turns an image's bytes into its
    64-bit perceptual hash, or None where they do not decode (counted, not
    fatal); pass the one the candidate images were hashed with. Raises
    :class:`InputError` when the source is missing, holds no images or a shard
    is not a readable tar file.
    """
    path = Path(source)
    if not path.exists():
        raise InputError(
            f"evaluation set {name!r}: {path} does not exist: give a folder of "
            "images or a webdataset .tar shard"
        )
    hashes: list[int] = []
    num_files = num_unreadable = 0
    for where, data in _image_bytes(path):
        num_files += 1
        value = hash_fn(data)
        if value is None:
            num_unreadable += 1
            log.debug("evaluation set %s: cannot hash %s", name, where)
        else:
            hashes.append(value & UINT64_MASK)
    if not num_files:
        raise InputError(
            f"evaluation set {name!r}: no images in {path} (looked for "
            f"{', '.join(IMAGE_SUFFIXES)} files and .tar shards): check the path"
        )
    log.info(
        "evaluation set %s: files=%d hashed=%d unreadable=%d",
        name, num_files, len(hashes), num_unreadable,
    )  # fmt: skip
    phashes = np.array(hashes, dtype=np.uint64)
    return EvaluationSet(name, phashes, num_files, num_unreadable)


def _image_bytes(path: Path) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) of every image file and every image inside a tar shard."""
    files = (
        sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    )
    for file in files:
        name = file.name.lower()
        if name.endswith((".tar", ".tar.gz", ".tgz")):
            yield from _shard_images(file)
        elif name.endswith(IMAGE_SUFFIXES):
            yield str(file), file.read_bytes()


def _shard_images(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        # streaming mode: a shard is read once, front to back
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(
                    IMAGE_SUFFIXES
                ):
                    continue
                stream = tar.extractfile(member)
                if stream is not None:
                    yield f"{path}:{member.name}", stream.read()
    except (tarfile.TarError, EOFError) as error:
        raise InputError(
            f"{path} is not a readable tar shard ({error}): check that the file "
            "is a complete webdataset shard, or remove it from the evaluation set"
        ) from error


@dataclass(frozen=True)
class EvaluationSetCounts:
    """How much one evaluation set overlaps the candidate images."""

    num_hashes: int  # evaluation images hashed
    num_unreadable: int  # evaluation files that could not be hashed
    num_matched: int  # evaluation images within the distance of a candidate
    num_images: int  # candidate images within the distance of one of them


@dataclass(frozen=True)
class DecontaminationCounts:
    num_candidates: int  # rows with status ok or duplicate and a hash
    num_images_matched: int  # of those, within the distance of an evaluation image
    num_contaminated: int  # rows now contaminated (whole near-duplicate groups)
    num_kept_lost: int  # of those, rows that were ok before
    per_set: dict[str, EvaluationSetCounts]
    seconds: float


@dataclass(frozen=True)
class DecontaminationResult:
    images: pa.Table  # the input table, status and reason of contaminated rows set
    matches: pa.Table  # MATCHES_SCHEMA: each matched image and evaluation set
    counts: DecontaminationCounts


def decontaminate(
    images: pa.Table,
    evaluation_sets: Sequence[EvaluationSet],
    config: DedupConfig | None = None,
) -> DecontaminationResult:
    """Mark every image within ``max_distance`` bits of an evaluation image.

    Candidates are rows with status ``ok`` or ``duplicate`` and a hash. A match
    contaminates its whole near-duplicate group (the kept image and all that
    point at it through ``duplicate_of``), so that no copy of an evaluation
    image reaches training through another member. Contaminated rows get status
    ``contaminated`` and reason ``near_eval:<set>`` (the set of the closest
    match); ``duplicate_of`` is kept. Raises :class:`ConfigError` for two sets
    of one name and :class:`InputError` for a missing column.
    """
    config = config or DedupConfig()
    config.check()
    _require_columns(images, ("image_id", "phash", "status"), "decontaminate")
    names = [s.name for s in evaluation_sets]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"evaluation sets {names} repeat a name: give each set its own name"
        )
    started = time.perf_counter()

    # candidate hashes against every evaluation hash, tagged with its set
    rows = _candidate_rows(images)
    phash = as_phashes(images["phash"].take(rows))
    distinct = _distinct(phash)
    eval_hashes = np.concatenate(
        [np.zeros(0, np.uint64)] + [s.phashes for s in evaluation_sets]
    )
    eval_set = np.repeat(
        np.arange(len(names)), [s.phashes.size for s in evaluation_sets]
    )
    i, j = _between_search(
        distinct, eval_hashes, config.max_distance, config.max_bucket
    )
    close = (i, eval_set[j], _popcount(distinct[i] ^ eval_hashes[j]))

    # each matched image with each set it matched; then their whole groups
    position = np.searchsorted(distinct, phash)
    matches, match_rows = _row_matches(images, rows, position, close, names)
    contaminated = _contaminated_rows(images, match_rows)
    table = _mark_contaminated(images, matches, match_rows, contaminated)

    counts = DecontaminationCounts(
        num_candidates=int(rows.size),
        num_images_matched=int(_distinct(match_rows).size),
        num_contaminated=int(contaminated.sum()),
        num_kept_lost=int((contaminated & _status_is(images, "ok")).sum()),
        per_set=_per_set_counts(evaluation_sets, matches, eval_set, j),
        seconds=time.perf_counter() - started,
    )
    log.info("decontaminate: %s", _key_values(counts))
    for name, per_set in counts.per_set.items():
        log.info("decontaminate %s: %s", name, _key_values(per_set))
    return DecontaminationResult(table, matches, counts)


def _status_is(images: pa.Table, status: str) -> np.ndarray:
    equal = pc.fill_null(pc.equal(images["status"], status), False)
    return equal.to_numpy(zero_copy_only=False)


def _row_matches(
    images: pa.Table,
    rows: np.ndarray,
    position: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    names: Sequence[str],
) -> tuple[pa.Table, np.ndarray]:
    """One row per matched image and set, with the closest distance; and the
    images rows of those matches.

    ``position`` is each candidate's place among the distinct hashes; ``pairs``
    holds (distinct hash, evaluation set, distance) of each close pair.
    """
    # the closest match of each distinct hash in each set
    pair_hash, pair_set, pair_distance = pairs
    num_sets = max(len(names), 1)
    code = pair_hash.astype(np.int64) * num_sets + pair_set
    order = np.lexsort((pair_distance, code))
    code, closest = code[order], pair_distance[order]
    first = np.concatenate(([True], code[1:] != code[:-1]))[: code.size]
    code, closest = code[first], closest[first]
    match_hash = code // num_sets

    # every candidate row with a matched hash, times the sets its hash matched
    flagged = np.zeros(position.max(initial=0) + 1, dtype=bool)
    flagged[match_hash] = True
    hit = np.flatnonzero(flagged[position])
    lo = np.searchsorted(match_hash, position[hit], side="left")
    num = np.searchsorted(match_hash, position[hit], side="right") - lo
    starts = np.cumsum(num) - num
    match_of = np.repeat(lo - starts, num) + np.arange(num.sum())
    match_rows = rows[np.repeat(hit, num)]

    table = pa.table(
        {
            "image_id": images["image_id"].take(match_rows),
            "eval_set": pa.array(list(names), pa.string()).take(
                code[match_of] % num_sets
            ),
            "distance": closest[match_of].astype(np.int32),
        },
        schema=MATCHES_SCHEMA,
    )
    return table, match_rows


def _group_keys(images: pa.Table) -> pa.Array:
    """Each row's near-duplicate group: its duplicate_of, else its own id."""
    image_id = images["image_id"].combine_chunks()
    if "duplicate_of" not in images.column_names:
        return image_id
    is_member = pc.and_(
        pc.equal(images["status"], "duplicate"), pc.is_valid(images["duplicate_of"])
    )
    return pc.if_else(is_member, images["duplicate_of"], image_id).combine_chunks()


def _contaminated_rows(images: pa.Table, match_rows: np.ndarray) -> np.ndarray:
    """Candidate rows in the group of a matched row (bool per row)."""
    keys = _group_keys(images)
    hit_keys = pc.unique(keys.take(match_rows))
    in_hit_group = pc.is_in(keys, value_set=hit_keys).to_numpy(zero_copy_only=False)
    candidate = np.zeros(images.num_rows, dtype=bool)
    candidate[_candidate_rows(images)] = True
    return in_hit_group & candidate


def _mark_contaminated(
    images: pa.Table, matches: pa.Table, match_rows: np.ndarray, where: np.ndarray
) -> pa.Table:
    """Status contaminated and reason near_eval:<set> at the rows ``where``.

    A group's reason names the set of its closest match (ties: the set given
    first), so every member of the group gives the same reason.
    """
    keys = _group_keys(images)
    best: dict[str, tuple[int, int, str]] = {}
    found = zip(
        keys.take(match_rows).to_pylist(),
        matches["distance"].to_pylist(),
        matches["eval_set"].to_pylist(),
        strict=True,
    )
    for number, (key, distance, name) in enumerate(found):
        best[key] = min(
            best.get(key, (distance, number, name)), (distance, number, name)
        )

    marked = np.flatnonzero(where)
    reasons = pa.array(
        [f"near_eval:{best[key][2]}" for key in keys.take(marked).to_pylist()],
        pa.string(),
    )
    reason_of = np.full(images.num_rows, -1, dtype=np.int64)
    reason_of[marked] = np.arange(marked.size)
    return _update_rows(
        images,
        where,
        {
            "status": pa.scalar("contaminated"),
            "reason": reasons.take(pa.array(reason_of, mask=reason_of < 0)),
        },
    )


def _per_set_counts(
    evaluation_sets: Sequence[EvaluationSet],
    matches: pa.Table,
    eval_set: np.ndarray,
    eval_positions: np.ndarray,
) -> dict[str, EvaluationSetCounts]:
    matched_eval = _distinct(eval_positions.astype(np.int64))
    num_matched = np.bincount(eval_set[matched_eval], minlength=len(evaluation_sets))
    images_per_set = Counter(matches["eval_set"].to_pylist())
    return {
        s.name: EvaluationSetCounts(
            num_hashes=int(s.phashes.size),
            num_unreadable=s.num_unreadable,
            num_matched=int(num_matched[number]),
            num_images=int(images_per_set.get(s.name, 0)),
        )
        for number, s in enumerate(evaluation_sets)
    }
