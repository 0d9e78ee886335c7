"""Benchmark the near-duplicate search of the curate stage at scale.

What it measures, for each size in ``--sizes`` (default one and ten million
hashes), each step in its own subprocess so that its peak RSS (``os.wait4``)
is its own:

1. ``pairs``: ``curate.dedup.near_pairs`` over distinct 64-bit hashes: uniform
   random hashes plus planted clusters (a centre and 1-4 copies of it, each
   with 1-4 bits flipped; ``--cluster-share`` of all hashes are copies). Every
   pair found is checked to be within the distance, every planted
   (centre, copy) pair must be found, and the rest are counted: pairs of two
   copies of one centre, and chance pairs of unrelated hashes (expected:
   ``n**2 / 2 * P(distance <= d)``, about 2 for ten million uniform hashes
   at d = 4).
2. ``groups``: ``curate.dedup.group_near_duplicates`` over the same hashes plus
   exact repeats (0.5% of the hashes again, and 5,000 copies of one "blank"
   hash): the whole grouping, union-find included. Every planted cluster must
   be one group.
3. ``decontaminate``: ``curate.dedup.near_pairs_between`` of all the hashes
   against an evaluation set of ``--eval-size`` hashes, half of them copies of
   candidates with 1-4 bits flipped (all must be found), half uniform.
4. ``stage`` (sizes in ``--stage-sizes``): ``curate.dedup.dedup_images`` over an
   Arrow images table of that many rows (sha256-like ids, sizes, hashes):
   the step as the pipeline runs it, representatives and columns included.
5. ``exact``: on a sample of ``--exact-sample`` hashes (uniform ones and whole
   clusters), the pairs of ``near_pairs`` against comparing all pairs.

The goal: ``pairs`` over ten million hashes in under five minutes on the
2-core machine, under 6 GB. The table is printed and written to
``--out/bench_curate_dedup.json`` and ``--out/bench_curate_dedup.md``.

Run it as::

    .venv/bin/python benchmarks/bench_curate_dedup.py [--sizes N ...]
        [--distance D] [--cluster-share F] [--eval-size N]
        [--stage-sizes N ...] [--exact-sample N] [--seed N] [--out DIR]

The exit status is 1 when a correctness check fails, 0 otherwise; a missed
speed goal is reported, not fatal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

GOAL_PAIRS_S = 300.0  # ten million hashes
GOAL_SIZE = 10_000_000
GOAL_PEAK_MB = 6144
CHILD_TIMEOUT_S = 1800
BLANK = 0x8000_0000_0000_0000  # the hash of an empty image, repeated 5,000 times


# --------------------------------------------------------------------------
# Hashes with planted near-duplicate clusters


def flip_bits(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Each value with 1-4 distinct random bits flipped."""
    count = rng.integers(1, 5, values.size)
    positions = np.argsort(rng.random((values.size, 64)), axis=1)[:, :4]
    used = np.arange(4)[None, :] < count[:, None]
    masks = np.where(used, np.uint64(1) << positions.astype(np.uint64), np.uint64(0))
    return values ^ np.bitwise_or.reduce(masks, axis=1)


def planted_hashes(size: int, share: float, seed: int) -> dict[str, np.ndarray]:
    """``size`` distinct hashes, ``share`` of them copies of planted centres.

    Returns the sorted distinct ``hashes`` and the planted ``centres`` and
    ``copies`` (as positions into ``hashes``, one row per copy).
    """
    rng = np.random.default_rng(seed)
    num_copies = int(size * share)
    num_clusters = max(1, int(num_copies / 2.5))
    uniform = rng.integers(0, 2**64, size - num_copies, dtype=np.uint64)
    centre_of = rng.integers(0, num_clusters, num_copies)  # first clusters' hashes
    copies = flip_bits(rng, uniform[:num_clusters][centre_of])
    hashes = np.unique(np.concatenate((uniform, copies)))
    return {
        "hashes": hashes,
        "centres": np.searchsorted(hashes, uniform[:num_clusters][centre_of]),
        "copies": np.searchsorted(hashes, copies),
    }


def popcount(x: np.ndarray) -> np.ndarray:
    return (
        np.bitwise_count(x)
        if hasattr(np, "bitwise_count")
        else np.array([bin(int(v)).count("1") for v in x])
    )


# --------------------------------------------------------------------------
# Steps, each run in a child process


def step_pairs(size: int, share: float, d: int, seed: int) -> dict[str, Any]:
    from curate.dedup import near_pairs

    data = planted_hashes(size, share, seed)
    hashes, centres, copies = data["hashes"], data["centres"], data["copies"]
    input_mb = common.peak_mb()
    started = time.perf_counter()
    pairs = near_pairs(hashes, d)
    seconds = time.perf_counter() - started

    # classify what was found: planted (centre, copy), two copies of one
    # centre, or chance
    n = hashes.size
    distance = popcount(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]])
    code = pairs[:, 0] * n + pairs[:, 1]
    planted = np.unique(np.minimum(centres, copies) * n + np.maximum(centres, copies))
    is_planted = np.isin(code, planted)
    cluster_of = np.full(n, -1)
    cluster_of[copies] = centres
    cluster_of[centres] = centres
    same_cluster = cluster_of[pairs[:, 0]] == cluster_of[pairs[:, 1]]
    copy_pairs = same_cluster & ~is_planted & (cluster_of[pairs[:, 0]] >= 0)
    return {
        "size": int(n),
        "seconds": round(seconds, 2),
        "input_peak_mb": input_mb,
        "pairs": int(pairs.shape[0]),
        "planted": int(planted.size),
        "planted_found": int(is_planted.sum()),
        "copy_pairs": int(copy_pairs.sum()),
        "chance_pairs": int((~is_planted & ~copy_pairs).sum()),
        "expected_chance_pairs": round(expected_chance(n, d), 2),
        "too_far": int((distance > d).sum()),
    }


def expected_chance(size: int, d: int) -> float:
    from math import comb

    return size * (size - 1) / 2 * sum(comb(64, k) for k in range(d + 1)) / 2.0**64


def step_groups(size: int, share: float, d: int, seed: int) -> dict[str, Any]:
    from curate.dedup import group_near_duplicates

    data = planted_hashes(size, share, seed)
    hashes = data["hashes"]
    rng = np.random.default_rng(seed + 1)
    repeats = hashes[rng.integers(0, hashes.size, size // 200)]
    blank = np.full(5000, BLANK, dtype=np.uint64)
    everything = np.concatenate((hashes, repeats, blank))
    input_mb = common.peak_mb()
    started = time.perf_counter()
    labels = group_near_duplicates(everything, d)
    seconds = time.perf_counter() - started

    split = labels[data["centres"]] != labels[data["copies"]]
    repeats_apart = (
        labels[hashes.size : hashes.size + repeats.size]
        != labels[np.searchsorted(hashes, repeats)]
    )
    return {
        "size": int(everything.size),
        "seconds": round(seconds, 2),
        "input_peak_mb": input_mb,
        "groups": int(np.unique(labels).size),
        "clusters_split": int(split.sum()),
        "repeats_apart": int(repeats_apart.sum()),
        "blank_groups": int(np.unique(labels[-5000:]).size),
    }


def step_decontaminate(
    size: int, share: float, d: int, seed: int, eval_size: int
) -> dict[str, Any]:
    from curate.dedup import near_pairs_between

    hashes = planted_hashes(size, share, seed)["hashes"]
    rng = np.random.default_rng(seed + 2)
    sources = rng.choice(hashes.size, eval_size // 2, replace=False)
    evaluation = np.concatenate(
        (
            flip_bits(rng, hashes[sources]),
            rng.integers(0, 2**64, eval_size - sources.size, dtype=np.uint64),
        )
    )
    input_mb = common.peak_mb()
    started = time.perf_counter()
    pairs = near_pairs_between(hashes, evaluation, d)
    seconds = time.perf_counter() - started
    code = pairs[:, 0] * eval_size + pairs[:, 1]
    planted = sources * eval_size + np.arange(sources.size)
    return {
        "size": int(hashes.size),
        "eval_size": eval_size,
        "seconds": round(seconds, 2),
        "input_peak_mb": input_mb,
        "pairs": int(pairs.shape[0]),
        "planted": int(planted.size),
        "planted_found": int(np.isin(planted, code).sum()),
        "too_far": int(
            (popcount(hashes[pairs[:, 0]] ^ evaluation[pairs[:, 1]]) > d).sum()
        ),
    }


def step_stage(size: int, share: float, d: int, seed: int) -> dict[str, Any]:
    import pyarrow as pa

    from curate.dedup import DedupConfig, dedup_images

    data = planted_hashes(size, share, seed)
    hashes = data["hashes"]
    rng = np.random.default_rng(seed + 3)
    ids = [f"{n:064x}" for n in rng.permutation(hashes.size) * 2654435761 + 1]
    images = pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "bytes": rng.integers(10_000, 500_000, hashes.size),
            "width": rng.integers(64, 1024, hashes.size).astype(np.int32),
            "height": rng.integers(64, 1024, hashes.size).astype(np.int32),
            "phash": pa.array(hashes, pa.uint64()),
            "status": pa.array(["ok"] * hashes.size, pa.string()),
        }
    )
    del ids
    input_mb = common.peak_mb()
    started = time.perf_counter()
    result = dedup_images(images, DedupConfig(max_distance=d))
    seconds = time.perf_counter() - started
    counts = result.counts
    return {
        "size": int(hashes.size),
        "seconds": round(seconds, 2),
        "input_peak_mb": input_mb,
        "groups": counts.num_groups,
        "duplicates": counts.num_duplicates,
        "planted_copies": int(np.unique(data["copies"]).size),
    }


def step_exact(size: int, share: float, d: int, seed: int) -> dict[str, Any]:
    """The band search against comparing all pairs, on a sample dense in
    clusters (30% copies) with 2,000 hashes sharing their 40 high bits."""
    from curate.dedup import near_pairs

    rng = np.random.default_rng(seed + 4)
    clustered = planted_hashes(size - 2000, 0.3, seed)["hashes"]
    shared = (np.uint64(0xC0FFEE1234) << np.uint64(24)) | rng.integers(
        0, 2**24, 2000, dtype=np.uint64
    )
    sample = np.unique(np.concatenate((clustered, shared)))
    started = time.perf_counter()
    found = set(map(tuple, near_pairs(sample, d).tolist()))
    seconds = time.perf_counter() - started

    reference: set[tuple[int, int]] = set()
    for start in range(0, sample.size, 2000):
        block = popcount(sample[start : start + 2000, None] ^ sample[None, :])
        i, j = np.nonzero(block <= d)
        keep = i + start < j
        reference |= set(zip((i + start)[keep].tolist(), j[keep].tolist(), strict=True))
    return {
        "size": int(sample.size),
        "seconds": round(seconds, 2),
        "pairs": len(found),
        "reference_pairs": len(reference),
        "missing": len(reference - found),
        "extra": len(found - reference),
    }


STEPS = {
    "pairs": step_pairs,
    "groups": step_groups,
    "decontaminate": step_decontaminate,
    "stage": step_stage,
    "exact": step_exact,
}


def run_step(out: Path, name: str, step: str, **kwargs: Any) -> dict[str, Any]:
    """Run one step in a child process; its result, with its wall time and peak
    RSS (see ``common.run_worker``)."""
    result = common.run_worker(
        __file__, out, f"dedup-{name}", step, timeout_s=CHILD_TIMEOUT_S, **kwargs
    )
    return {"step": step, "name": name, **result}


# --------------------------------------------------------------------------
# Report

HEADERS = ["step", "hashes", "wall s", "peak MB", "found", "checks", "goal", "status"]


def machine_info() -> dict[str, Any]:
    import duckdb
    import pyarrow

    return {
        **common.machine_info("curate"),
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "duckdb": duckdb.__version__,
    }


def row_of(result: dict[str, Any], distance: int) -> list[str]:
    """One table row: figures, checks, goal and status of a step's result."""
    step, size = result["step"], result.get("size", 0)
    if result["error"]:
        return [
            result["name"],
            f"{size:,}",
            "-",
            "-",
            "-",
            result["error"][:60],
            "",
            "FAIL",
        ]
    found, checks = found_and_checks(result)
    goal, status = "", "PASS" if not problems_of(result) else "FAIL"
    if step == "pairs" and size >= GOAL_SIZE * 0.99:
        goal = f"< {GOAL_PAIRS_S:.0f} s, < {GOAL_PEAK_MB} MB"
        fast = result["seconds"] < GOAL_PAIRS_S and result["peak_mb"] < GOAL_PEAK_MB
        status = status if fast or status == "FAIL" else "MISS"
    return [
        result["name"],
        f"{size:,}",
        f"{result['seconds']:.1f}",
        f"{result['peak_mb']:,.0f}",
        found,
        checks,
        goal,
        status,
    ]


def found_and_checks(result: dict[str, Any]) -> tuple[str, str]:
    step = result["step"]
    if step == "pairs":
        return (
            f"{result['pairs']:,} pairs",
            f"planted {result['planted_found']:,}/{result['planted']:,}, "
            f"copy-copy {result['copy_pairs']:,}, chance {result['chance_pairs']} "
            f"(expected {result['expected_chance_pairs']}), too far "
            f"{result['too_far']}",
        )
    if step == "groups":
        return (
            f"{result['groups']:,} groups",
            f"clusters split {result['clusters_split']}, repeats apart "
            f"{result['repeats_apart']}, blank groups {result['blank_groups']}",
        )
    if step == "decontaminate":
        return (
            f"{result['pairs']:,} pairs",
            f"vs {result['eval_size']:,} eval hashes: planted "
            f"{result['planted_found']:,}/{result['planted']:,}, too far "
            f"{result['too_far']}",
        )
    if step == "stage":
        return (
            f"{result['duplicates']:,} duplicates",
            f"{result['groups']:,} groups, {result['planted_copies']:,} copies planted",
        )
    return (
        f"{result['pairs']:,} pairs",
        f"all-pairs reference {result['reference_pairs']:,}: missing "
        f"{result['missing']}, extra {result['extra']}",
    )


def problems_of(result: dict[str, Any]) -> list[str]:
    """What makes a step's answer wrong, not merely slow."""
    name, step = result["name"], result["step"]
    if result["error"]:
        return [f"{name}: {result['error']}"]
    wrong = []
    if step in ("pairs", "decontaminate"):
        if result["planted_found"] != result["planted"]:
            wrong.append(f"{name}: planted pairs missed")
        if result["too_far"]:
            wrong.append(f"{name}: pairs beyond the distance")
    if step == "groups" and (
        result["clusters_split"]
        or result["repeats_apart"]
        or result["blank_groups"] != 1
    ):
        wrong.append(f"{name}: planted clusters or repeats not grouped")
    if step == "stage" and result["duplicates"] < result["planted_copies"]:
        wrong.append(f"{name}: fewer duplicates than planted copies")
    if step == "exact" and (result["missing"] or result["extra"]):
        wrong.append(f"{name}: band search differs from all pairs")
    return wrong


def title(machine: dict[str, Any], args: argparse.Namespace) -> str:
    m = machine
    return (
        f"{m['date']}, kgclip {m['commit']}, {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gb']} GB RAM; Python {m['python']}, numpy {m['numpy']}; "
        f"distance {args.distance}, copies {args.cluster_share:.1%} of the hashes"
    )


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(
        "Benchmark kgclip's near-duplicate search over millions of perceptual "
        "hashes with planted near-duplicate clusters.",
        worker=True,
    )
    add = parser.add_argument
    add("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    add("--distance", type=int, default=4, help="Hamming distance of a near duplicate")
    add("--cluster-share", type=float, default=0.01, help="share of planted copies")
    add("--eval-size", type=int, default=100_000, help="hashes of the evaluation set")
    add("--stage-sizes", type=int, nargs="*", default=[1_000_000],
        help="sizes at which dedup_images runs on an Arrow table")  # fmt: skip
    add("--exact-sample", type=int, default=20_000, help="hashes checked by all pairs")
    add("--seed", type=int, default=42)
    return parser.parse_args(argv)


def plan_steps(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    common = {"share": args.cluster_share, "d": args.distance, "seed": args.seed}
    steps = [("exact", "exact", common | {"size": args.exact_sample})]
    for size in args.sizes:
        label = f"{size:,}"
        steps.append((f"pairs {label}", "pairs", common | {"size": size}))
        steps.append((f"groups {label}", "groups", common | {"size": size}))
        steps.append(
            (
                f"decontaminate {label}",
                "decontaminate",
                common | {"size": size, "eval_size": args.eval_size},
            )
        )
        if size in args.stage_sizes:
            steps.append((f"stage {label}", "stage", common | {"size": size}))
    return steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        common.worker_main(STEPS, *args.worker)
        return 0

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    results = [run_step(out, name, step, **kw) for name, step, kw in plan_steps(args)]

    heading = title(machine, args)
    rows = [row_of(result, args.distance) for result in results]
    # The steps' names and what their checks found are read from the left.
    left = ("step", "checks")
    common.print_table(f"kgclip dedup benchmark: {heading}", HEADERS, rows, left=left)
    problems = [p for result in results for p in problems_of(result)]
    figures = {"machine": machine, "args": vars(args) | {"out": str(out)}}
    figures |= {"results": results, "problems": problems}
    text = f"{heading}\n\n" + common.markdown_table(HEADERS, rows, left=left)
    return common.write_figures(out, "bench_curate_dedup", figures, text, problems)


if __name__ == "__main__":
    sys.exit(main())
