"""Export: captioned, split pairs to webdataset shards, byte for byte reproducible.

Layout, under the run directory::

    shards/train/000000.tar, shards/train/000001.tar, ...
    shards/val/000000.tar, ...
    shards/test/000000.tar, ...

so that training reads e.g. ``shards/train/{000000..000041}.tar``. Each shard
holds ``samples_per_shard`` samples (the last of a split fewer). A sample is
three tar members sharing a key, ``KEY.jpg``, ``KEY.json``, ``KEY.txt``, as
the webdataset library groups them:

- ``.jpg``: the image, as the ``encode`` function makes it from the
  downloaded bytes;
- ``.txt``: the default caption;
- ``.json``: image_id, qid, root, kind, label, lineage, rank, split, caption,
  web_texts and kg_texts (each ``{source, text}``), every source (url,
  page_url, license, author, engine, query, rank), and the first source's
  url, page_url, license, author, engine and query at the top level for
  attribution.

The key is the first 16 hex digits of the image id, ``_``, then the QID
("3f2a...9c01_Q15978631"): unique per pair, and without dots, which the
webdataset reader would take for the start of an extension.

Reproducibility: samples are ordered by split, then by a hash of seed, image
id and QID, so the input's row order does not matter; tar headers carry
mtime 0, uid and gid 0, empty user and group names and mode 0644; JSON has
sorted keys and fixed separators. The same pairs, images and encoder give
the same bytes. Each shard is written under a temporary name and renamed
when complete, and shards a previous export left beyond the new count are
removed, so the folder always holds one consistent export.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.records import SHARDS_SCHEMA
from curate.splits import SPLITS, hash_unit
from kg.errors import ConfigError, InputError, KgclipError

log = logging.getLogger(__name__)

SHARD_DIR = "shards"
KEY_HEX_DIGITS = 16

# Fixed tar header fields: nothing of the machine or the moment gets in.
MEMBER_MTIME = 0
MEMBER_MODE = 0o644

# What a failing reader or encoder raises for one bad image (Pillow's
# UnidentifiedImageError is an OSError); anything else is a bug and stops.
IMAGE_ERRORS = (OSError, ValueError, KgclipError)

# The first source's fields repeated at the top of a sample's JSON.
ATTRIBUTION = ("url", "page_url", "license", "author", "engine", "query")

ReadImage = Callable[[str], bytes]  # image_id -> the bytes as downloaded
Encode = Callable[[bytes], bytes]  # downloaded bytes -> the sample's .jpg bytes


@dataclass
class ExportConfig:
    """How shards are cut.

    Attributes:
        samples_per_shard: samples in each shard but the last of a split; about
            1,000 keeps shards near 50-100 MB at CLIP sizes, large enough for
            fast sequential reads and small enough to spread over workers.
        seed: mixed into the hash that orders samples within a split.
    """

    samples_per_shard: int = 1000
    seed: str = "kgclip"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting."""
        if self.samples_per_shard < 1:
            raise ConfigError(
                f"curate.export.samples_per_shard={self.samples_per_shard} must be "
                "at least 1 (1000 is usual)"
            )


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        shards: one row per shard, in :data:`SHARDS_SCHEMA`.
        failed: image_id -> error, for samples left out because reading or
            encoding their image failed.
    """

    shards: pa.Table
    failed: dict[str, str] = field(default_factory=dict)


def sample_key(image_id: str, qid: str) -> str:
    """The webdataset key of a pair: 16 hex digits of the image id, then the QID."""
    return f"{image_id[:KEY_HEX_DIGITS]}_{qid}"


def export_shards(
    pairs: pa.Table,
    run_dir: Path,
    read_image: ReadImage,
    encode: Encode,
    config: ExportConfig,
) -> ExportResult:
    """Write the pairs as webdataset shards under ``run_dir/shards``.

    Args:
        pairs: rows of :data:`curate.records.PAIRS_SCHEMA` with ``split`` and
            ``caption`` set. A pair repeated under several roots (same image
            and QID) becomes one sample, that of the lowest root.
        run_dir: the run directory; shard paths in the result are relative
            to it.
        read_image: gives the downloaded bytes of an image id (from the web
            archive).
        encode: turns downloaded bytes into the sample's ``.jpg`` bytes
            (decode, resize, JPEG); it must be deterministic for the shards to
            be.
        config: shard size and ordering seed.

    Returns:
        The shards written, and the images that failed to read or encode
        (their samples are left out).

    Raises:
        ConfigError: the config is invalid.
        InputError: a pair has no split, or one not in train/val/test.
    """
    config.validate()
    samples = _ordered_samples(pairs, config)
    written: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for split in SPLITS:
        rows = (s for s in samples if s["split"] == split)
        folder = Path(run_dir) / SHARD_DIR / split
        made = _write_split(rows, folder, run_dir, read_image, encode, config, failed)
        _remove_stale(folder, {Path(run_dir) / row["path"] for row in made})
        written += [{"split": split, **row} for row in made]

    shards = pa.Table.from_pylist(written, schema=SHARDS_SCHEMA)
    num_samples = sum(row["num_samples"] for row in written)
    log.info(
        "export num_shards=%d num_samples=%d num_failed=%d bytes=%d",
        len(written),
        num_samples,
        len(failed),
        sum(row["bytes"] for row in written),
    )
    return ExportResult(shards=shards, failed=failed)


def _ordered_samples(pairs: pa.Table, config: ExportConfig) -> list[dict[str, Any]]:
    """The pairs, one per (image, QID), by split then hash: input order is lost."""
    rows = pairs.to_pylist()
    bad = sorted({str(row.get("split")) for row in rows} - set(SPLITS))
    if bad:
        raise InputError(
            f"pairs have split values {bad}; every pair needs one of "
            f"{', '.join(SPLITS)}: run the split step (curate.splits.assign_splits) "
            "before the export"
        )

    # One sample per image and entity; the lowest root wins, whatever the order.
    rows.sort(key=lambda row: (row["image_id"], row["qid"], row.get("root") or ""))
    unique = {(row["image_id"], row["qid"]): row for row in reversed(rows)}
    if len(unique) < len(rows):
        log.info(
            "%d pairs repeat an image and QID under another root",
            len(rows) - len(unique),
        )

    order = {name: i for i, name in enumerate(SPLITS)}
    return sorted(
        unique.values(),
        key=lambda row: (
            order[row["split"]],
            hash_unit(config.seed, f"{row['image_id']}_{row['qid']}"),
            row["image_id"],
            row["qid"],
        ),
    )


def _write_split(
    rows: Iterable[dict[str, Any]],
    folder: Path,
    run_dir: Path,
    read_image: ReadImage,
    encode: Encode,
    config: ExportConfig,
    failed: dict[str, str],
) -> list[dict[str, Any]]:
    """Write one split's samples in shards of ``samples_per_shard``."""
    made: list[dict[str, Any]] = []
    batch: list[dict[str, bytes]] = []
    for members in _encoded(rows, read_image, encode, failed):
        batch.append(members)
        if len(batch) == config.samples_per_shard:
            made.append(_write_shard(folder / f"{len(made):06d}.tar", batch, run_dir))
            batch = []
    if batch:
        made.append(_write_shard(folder / f"{len(made):06d}.tar", batch, run_dir))
    return made


def _encoded(
    rows: Iterable[dict[str, Any]],
    read_image: ReadImage,
    encode: Encode,
    failed: dict[str, str],
) -> Iterator[dict[str, bytes]]:
    """The tar members of each sample, name -> bytes; bad images are skipped."""
    for row in rows:
        image_id = row["image_id"]
        if image_id in failed:
            continue
        try:
            jpeg = encode(read_image(image_id))
        except IMAGE_ERRORS as error:
            log.warning("image %s left out of the shards: %s", image_id, error)
            failed[image_id] = f"{type(error).__name__}: {error}"
            continue
        key = sample_key(image_id, row["qid"])
        yield {
            f"{key}.jpg": jpeg,
            f"{key}.json": _sample_json(row, key),
            f"{key}.txt": (row.get("caption") or "").encode(),
        }


def ordered_sources(sources: Iterable[Mapping[str, Any]] | None) -> list[Any]:
    """A pair's sources best first: by rank, then engine, query and URLs.

    The first is the one a sample names for attribution.
    """
    return sorted(sources or [], key=_source_order)


def _sample_json(row: Mapping[str, Any], key: str) -> bytes:
    """The sample's metadata as canonical JSON (sorted keys, no spaces)."""
    sources = ordered_sources(row.get("sources"))
    first = sources[0] if sources else {}
    record = {
        "key": key,
        "image_id": row["image_id"],
        "qid": row["qid"],
        "root": row.get("root"),
        "kind": row.get("kind"),
        "label": row.get("label"),
        "lineage": list(row.get("lineage") or []),
        "rank": row.get("rank"),
        "split": row["split"],
        "caption": row.get("caption"),
        "web_texts": list(row.get("web_texts") or []),
        "kg_texts": list(row.get("kg_texts") or []),
        "sources": sources,
        **{name: first.get(name) for name in ATTRIBUTION},
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode()


def _source_order(source: Mapping[str, Any]) -> tuple[Any, ...]:
    rank = source.get("rank")
    return (
        rank if rank is not None else 1 << 30,
        *(source.get(name) or "" for name in ("engine", "query", "url", "page_url")),
    )


def _write_shard(
    path: Path, samples: list[dict[str, bytes]], run_dir: Path
) -> dict[str, Any]:
    """Write one shard atomically; its row of the shards table, less the split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    # USTAR: no PAX headers, which may carry times; names here are short ASCII.
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            for name, data in members.items():
                tar.addfile(_member(name, len(data)), io.BytesIO(data))
    os.replace(partial, path)

    digest = hashlib.sha256()
    with path.open("rb") as shard:
        for block in iter(lambda: shard.read(1 << 20), b""):
            digest.update(block)
    return {
        "path": path.relative_to(run_dir).as_posix(),
        "num_samples": len(samples),
        "bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
    }


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MEMBER_MTIME
    info.mode = MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _remove_stale(folder: Path, keep: set[Path]) -> None:
    """Remove shards, whole or partial, that an earlier export left behind."""
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        stale = path.suffix == ".tar" and path not in keep
        if stale or path.name.endswith(".tar.partial"):
            log.info("removing %s, left by an earlier export", path)
            path.unlink()
