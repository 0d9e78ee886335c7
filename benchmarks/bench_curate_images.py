"""Benchmark kgclip's image checks and export against img2dataset's resizer.

What it measures, on one CPU core (the process is pinned to it, OpenCV set to
one thread), in images per CPU-second (user+sys of this process):

1. ``kgclip check``: ``curate.images.check_image``: identify, check the
   format and shape, decode (JPEGs at reduced scale, luma only), hash;
2. ``imagehash check``: the same bytes opened and fully decoded by Pillow,
   hashed by the imagehash library's ``phash`` (the common reference pHash);
3. ``kgclip export``: ``curate.images.export_jpeg``: decode (JPEGs at reduced
   scale), shorter side to ``--size`` with the default hamming filter,
   JPEG quality 95; a colour JPEG that needs no resizing is copied with its
   metadata stripped (``keep_jpeg``); also with ``keep_jpeg=False``
   (everything re-encoded) and with the sharper bicubic filter;
4. ``img2dataset``: ``img2dataset.resizer.Resizer`` with the same rule
   (``keep_ratio``), size and quality, on the same bytes (OpenCV's
   INTER_AREA when shrinking, of about the same sharpness); also with its
   ``skip_reencode`` (a JPEG that needs no resizing is returned as it came,
   metadata included);
5. for each export, the PSNR of its output against a reference (full decode,
   Lanczos resize in floating point to the same size), and its size;
6. ``curate.images.check_images`` on all cores, in images per wall second.

The images: every flowers5 JPEG (4,317 photos of 128x128), the 19 sample
photos (PNG and JPEG, 191 to 1,411 px) and a "large" set made from the sample
photos, resized (most enlarged) to 1,024 px on the longer side and saved as
JPEG quality 90, each also mirrored: web images are mostly that large.
Neither side enlarges images smaller than ``--size``.

Run it as ``make bench-curate-images`` or::

    .venv/bin/python benchmarks/bench_curate_images.py [--size N]
        [--min-seconds S] [--out DIR] [--skip-reference]

The table is printed and written to ``DIR/bench_curate_images.json`` and
``DIR/bench_curate_images.md``. The exit status is 1 when a correctness check
fails (an image rejected that should pass, export sizes that differ between
kgclip and img2dataset); missed speed goals are reported, not fatal.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import fmt, verdict
from PIL import Image, features

from curate import images as ci

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
LARGE_SIDE_PX = 1024
PSNR_SAMPLE = 200  # images per set whose export quality is measured
# Above this PSNR the export's pixels are the source's (a copied JPEG).
LOSSLESS_DB = 100
# Goal: more images per core than img2dataset's resizer, on every set.
GOAL_SPEEDUP = 1.0


@dataclass
class ImageSet:
    name: str
    description: str
    datas: list[bytes]


@dataclass
class Figures:
    machine: dict[str, Any]
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)
    goals: dict[str, bool | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# Images


def load_sets() -> list[ImageSet]:
    flowers = sorted((IMAGES / "flowers5").glob("*/*.jpg"))
    samples = sorted(
        p for p in (IMAGES / "samples").iterdir() if p.suffix in (".jpg", ".png")
    )
    if not flowers or not samples:
        raise SystemExit(f"the shared images are missing under {IMAGES}")
    sample_datas = [p.read_bytes() for p in samples]
    sides = [side for p in samples for side in Image.open(p).size]
    return [
        ImageSet(
            "flowers5",
            f"{len(flowers):,} JPEG, 128 px",
            [p.read_bytes() for p in flowers],
        ),
        ImageSet(
            "samples",
            f"{len(samples)} PNG+JPEG, {min(sides)}-{max(sides):,} px",
            sample_datas,
        ),
        ImageSet(
            "large",
            f"{2 * len(samples)} JPEG, {LARGE_SIDE_PX:,} px",
            make_large(sample_datas),
        ),
    ]


def make_large(datas: Sequence[bytes]) -> list[bytes]:
    """Each photo at LARGE_SIDE_PX on its longer side, as is and mirrored."""
    large = []
    for data in datas:
        image = ci.to_rgb(Image.open(io.BytesIO(data)))
        scale = LARGE_SIDE_PX / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
        for variant in (image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
            large.append(ci.encode_jpeg(variant, 90))
    return large


# --------------------------------------------------------------------------
# The workers measured


def kgclip_check(data: bytes) -> Any:
    return ci.check_image(data)


def imagehash_check(data: bytes) -> Any:
    import imagehash

    image = Image.open(io.BytesIO(data))
    return imagehash.phash(image)


def kgclip_export(size: int, **options: Any) -> Callable[[bytes], bytes]:
    config = ci.ResizeConfig(size_px=size, quality=95, **options)
    return lambda data: ci.export_jpeg(data, None, config)


def img2dataset_export(
    size: int, skip_reencode: bool = False
) -> Callable[[bytes], bytes]:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check
    from img2dataset.resizer import Resizer

    resizer = Resizer(
        image_size=size,
        resize_mode="keep_ratio",
        resize_only_if_bigger=True,
        encode_format="jpg",
        encode_quality=95,
        skip_reencode=skip_reencode,
    )

    def run(data: bytes) -> bytes:
        out, *_, error = resizer(io.BytesIO(data))
        if error:
            raise RuntimeError(f"img2dataset's resizer failed: {error}")
        return out

    return run


def time_workers(
    workers: dict[str, Callable[[bytes], Any]],
    datas: Sequence[bytes],
    min_seconds: float,
) -> dict[str, dict[str, float]]:
    """Images per CPU-second and per wall second of each worker.

    One warm-up over a few images, then rounds in which each worker makes one
    pass over all images, in turn, so that a change in the machine's load
    falls on all alike; rounds go on until the workers have had ``min_seconds``
    of CPU time each on average, three rounds at least. Each figure is from
    the worker's median pass.
    """
    cpu: dict[str, list[float]] = {name: [] for name in workers}
    wall: dict[str, list[float]] = {name: [] for name in workers}
    for work in workers.values():
        for data in datas[:5]:
            work(data)
    spent = 0.0
    while len(cpu[next(iter(workers))]) < 3 or spent < min_seconds * len(workers):
        for name, work in workers.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            for data in datas:
                work(data)
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
            spent += cpu[name][-1]
    return {name: rates(len(datas), cpu[name], wall[name]) for name in workers}


def rates(images: int, cpu: list[float], wall: list[float]) -> dict[str, float]:
    cpu_s, wall_s = statistics.median(cpu), statistics.median(wall)
    return {
        "passes": len(cpu),
        "cpu_s": round(cpu_s, 4),
        "per_cpu_s": images / cpu_s,
        "per_wall_s": images / wall_s,
    }


# --------------------------------------------------------------------------
# Quality of the exports


def reference(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Full decode, Lanczos resize per channel in 32-bit float."""
    image = ci.decode_rgb(data)
    bands = [
        np.asarray(band.convert("F").resize(size, Image.Resampling.LANCZOS))
        for band in image.split()
    ]
    return np.clip(np.stack(bands, axis=-1), 0, 255)


def export_quality(
    exports: dict[str, Callable[[bytes], bytes]], datas: Sequence[bytes]
) -> dict[str, dict[str, Any]]:
    """Mean PSNR against the reference, and mean output bytes, per exporter."""
    step = max(1, len(datas) // PSNR_SAMPLE)
    errors: dict[str, list[float]] = {name: [] for name in exports}
    sizes: dict[str, list[int]] = {name: [] for name in exports}
    shapes: dict[str, list[tuple[int, int]]] = {name: [] for name in exports}
    for data in datas[::step]:
        for name, export in exports.items():
            out = export(data)
            image = Image.open(io.BytesIO(out)).convert("RGB")
            mse = np.mean(
                (np.asarray(image, np.float64) - reference(data, image.size)) ** 2
            )
            errors[name].append(float(mse))
            sizes[name].append(len(out))
            shapes[name].append(image.size)
    return {
        name: {
            "psnr_db": psnr_db(float(np.mean(errors[name]))),
            "mean_bytes": float(np.mean(sizes[name])),
            "sizes": shapes[name],
        }
        for name in exports
    }


def psnr_db(mean_squared_error: float) -> float:
    return float(10 * np.log10(255**2 / max(mean_squared_error, 1e-12)))


# --------------------------------------------------------------------------
# Running


def measure_set(image_set: ImageSet, args: argparse.Namespace) -> dict[str, Any]:
    datas = image_set.datas
    pixels = [Image.open(io.BytesIO(d)).size for d in datas]
    found: dict[str, Any] = {
        "images": len(datas),
        "description": image_set.description,
        "mean_megapixels": float(np.mean([w * h for w, h in pixels])) / 1e6,
        "mean_bytes": float(np.mean([len(d) for d in datas])),
    }
    exports = {
        "kgclip": kgclip_export(args.size),
        "kgclip_bicubic": kgclip_export(args.size, resample="bicubic"),
    }
    workers: dict[str, Callable[[bytes], Any]] = {
        "kgclip_check": kgclip_check,
        "kgclip_export": exports["kgclip"],
        "kgclip_export_reencode": kgclip_export(args.size, keep_jpeg=False),
        "kgclip_export_bicubic": exports["kgclip_bicubic"],
    }
    if not args.skip_reference:
        exports["img2dataset"] = img2dataset_export(args.size)
        workers["imagehash_check"] = imagehash_check
        workers["img2dataset_export"] = exports["img2dataset"]
        workers["img2dataset_skip"] = img2dataset_export(args.size, True)
    found |= time_workers(workers, datas, args.min_seconds)
    for name in workers:
        print(f"  {image_set.name} {name}: {speed(found, name):,.0f} images per CPU-s")
    found["quality"] = export_quality(exports, datas)
    found["rejected"] = sum(not ci.check_image(d).ok for d in datas)
    return found


def measure_pool(datas: Sequence[bytes], processes: int) -> dict[str, Any]:
    """check_images over all cores (the process pinning lifted)."""
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    items = list(enumerate(datas))
    list(ci.check_images(items[: processes * 8], processes=processes))
    start = time.perf_counter()
    checks = list(ci.check_images(items, processes=processes))
    wall_s = time.perf_counter() - start
    return {
        "processes": processes,
        "images": len(checks),
        "wall_s": wall_s,
        "per_wall_s": len(checks) / wall_s,
    }


def problems_of(figures: Figures) -> list[str]:
    """What makes the run wrong, not merely slow."""
    problems = []
    for name, found in figures.sets.items():
        if found["rejected"]:
            problems.append(f"{name}: {found['rejected']} images rejected")
        quality = found["quality"]
        if "img2dataset" in quality:
            ours, theirs = quality["kgclip"]["sizes"], quality["img2dataset"]["sizes"]
            differ = sum(
                abs(a[0] - b[0]) > 1 or abs(a[1] - b[1]) > 1
                for a, b in zip(ours, theirs, strict=True)
            )
            if differ:
                problems.append(
                    f"{name}: {differ} export sizes differ from img2dataset"
                )
    return problems


# --------------------------------------------------------------------------
# Report


def speed(found: dict[str, Any], name: str) -> float | None:
    return found[name]["per_cpu_s"] if name in found else None


def row(label: str, cells: list[str], goal: str = "", result: str = "") -> list[str]:
    return [label, *cells, goal, result]


def rows_of(figures: Figures) -> list[list[str]]:
    sets = list(figures.sets.values())
    ratios = [speedup(found) for found in sets]
    known = [r for r in ratios if r is not None]
    figures.goals["export_speedup"] = (
        all(r > GOAL_SPEEDUP for r in known) if len(known) == len(ratios) else None
    )

    def speeds(name: str) -> list[str]:
        return [fmt(speed(found, name)) for found in sets]

    def quality(name: str, key: str, scale: float = 1.0) -> list[str]:
        values = [found["quality"].get(name, {}).get(key) for found in sets]
        return [
            "lossless" if key == "psnr_db" and v and v > LOSSLESS_DB else
            fmt(None if v is None else v / scale, 1)
            for v in values
        ]  # fmt: skip

    pool = [fmt(figures.pool.get("per_wall_s"))] + [""] * (len(sets) - 1)
    return [
        row("images", [found["description"] for found in sets]),
        row("mean megapixels / KB", [
            f"{found['mean_megapixels']:.2f} / {found['mean_bytes'] / 1e3:,.0f}"
            for found in sets
        ]),
        row("kgclip check: decode+check+hash, img/CPU-s", speeds("kgclip_check")),
        row("imagehash: full decode + phash, img/CPU-s", speeds("imagehash_check")),
        row("kgclip export: decode+resize+encode, img/CPU-s",
            speeds("kgclip_export")),
        row("  the same, keep_jpeg=False (re-encode all)",
            speeds("kgclip_export_reencode")),
        row("  the same, resample=bicubic", speeds("kgclip_export_bicubic")),
        row("img2dataset Resizer, img/CPU-s", speeds("img2dataset_export")),
        row("  the same, skip_reencode=True", speeds("img2dataset_skip")),
        row("export speed-up over img2dataset",
            [fmt(r, 2) + "x" if r else "–" for r in ratios],
            f"> {GOAL_SPEEDUP:g}x", verdict(figures.goals["export_speedup"])),
        row("export PSNR vs reference dB: kgclip", quality("kgclip", "psnr_db")),
        row("  kgclip, bicubic", quality("kgclip_bicubic", "psnr_db")),
        row("  img2dataset", quality("img2dataset", "psnr_db")),
        row("export KB: kgclip", quality("kgclip", "mean_bytes", 1e3)),
        row("  img2dataset", quality("img2dataset", "mean_bytes", 1e3)),
        row(f"check_images, {figures.pool.get('processes', '?')} processes, "
            "img/wall-s (all cores)", pool),
    ]  # fmt: skip


def speedup(found: dict[str, Any]) -> float | None:
    """kgclip's export rate over img2dataset's, on one set."""
    theirs = speed(found, "img2dataset_export")
    return found["kgclip_export"]["per_cpu_s"] / theirs if theirs else None


def headers(figures: Figures) -> list[str]:
    return ["", *figures.sets, "goal", "result"]


def title(figures: Figures) -> str:
    m = figures.machine
    return (
        f"{m['date']}, kgclip {m['commit']}, {m['cpu']}, 1 of {m['cores']} cores; "
        f"Python {m['python']}, Pillow {m['pillow']} (libjpeg-turbo "
        f"{m['libjpeg_turbo']}), img2dataset {m['img2dataset']} (OpenCV "
        f"{m['opencv']}), export: shorter side {m['size']} px, quality 95"
    )


def machine_info(size: int) -> dict[str, Any]:
    import cv2

    return {
        **common.machine_info("curate"),
        "pillow": Image.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "img2dataset": common.package_version("img2dataset"),
        "imagehash": common.package_version("imagehash"),
        "size": size,
    }


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(
        "Benchmark kgclip's image checks and export against img2dataset's "
        "resizer, on one core."
    )
    add = parser.add_argument
    add("--size", type=int, default=256, help="shorter side of the export, px")
    add(
        "--min-seconds",
        type=float,
        default=2.0,
        help="CPU seconds each measurement runs, on average (three passes at least)",
    )
    add("--skip-reference", action="store_true", help="skip img2dataset, imagehash")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = Figures(machine_info(args.size))

    # One core: pin the process, and OpenCV to one thread (img2dataset's
    # resizer asks for that too), so that CPU time is one core's time.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import cv2

    cv2.setNumThreads(1)
    sets = load_sets()
    for image_set in sets:
        figures.sets[image_set.name] = measure_set(image_set, args)
    figures.pool = measure_pool(sets[0].datas, os.cpu_count() or 1)
    return report(args.out, figures)


def report(out: Path, figures: Figures) -> int:
    rows = rows_of(figures)
    columns = headers(figures)
    caption = f"kgclip image benchmark: {title(figures)}"
    common.print_table(caption, columns, rows, no_wrap=True)
    figures.problems = problems_of(figures)
    text = f"{title(figures)}\n\n" + common.markdown_table(columns, rows)
    return common.write_figures(
        out, "bench_curate_images", asdict(figures), text, figures.problems
    )


if __name__ == "__main__":
    sys.exit(main())
