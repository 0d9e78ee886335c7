"""The curate and export stages: downloads in, images, pairs and shards out.

``curate`` reads every stored image from the run's web archive, checks and
hashes it, merges near duplicates, drops images of the evaluation sets,
labels each image with the entities that found it, balances entities,
captions the pairs and assigns splits. It writes ``images.parquet``,
``pairs.parquet`` and ``curation.json`` (the counts and drop reasons after
each step, which the datasheet reports). ``export`` turns the pairs into
webdataset shards and writes the datasheet.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl.archive import WarcArchive
from crawl.download import read_downloads
from crawl.search import read_results
from crawl.web import Location
from curate.balance import BalanceConfig, LabelConfig, apply_label_rule, balance
from curate.captions import CaptionConfig, caption_pairs
from curate.clip_filter import ClipFilterConfig, ClipScorer, keep
from curate.datasheet import write_datasheet
from curate.dedup import (
    DedupConfig,
    EvaluationSet,
    decontaminate,
    dedup_images,
    read_evaluation_set,
)
from curate.export import ExportConfig, export_shards
from curate.images import (
    ImageConfig,
    ResizeConfig,
    check_image,
    check_images,
    export_jpeg,
)
from curate.records import IMAGES_SCHEMA, PAIRS_SCHEMA, SHARDS_SCHEMA
from curate.splits import SplitConfig, assign_splits
from kg.errors import InputError

log = logging.getLogger(__name__)

CURATION_FILE = "curation.json"
Counts = dict[str, Any]


@dataclass
class CurateConfig:
    """Every curation setting; see ``conf/curate/default.yaml``.

    ``evaluation_sets`` maps a name to a folder of images or webdataset
    shards whose near duplicates are dropped; ``processes`` decode images
    in parallel (None: one per core).
    """

    images: ImageConfig = field(default_factory=ImageConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    clip_filter: ClipFilterConfig = field(default_factory=ClipFilterConfig)
    evaluation_sets: dict[str, str] = field(default_factory=dict)
    processes: int | None = None


def curate(
    run_dir: Path, entities: pa.Table, queries: pa.Table, config: CurateConfig
) -> Counts:
    """Curate what the crawl of ``run_dir`` stored; write images and pairs.

    Returns the counts of the summary line. Raises :class:`InputError` when
    nothing was downloaded yet.
    """
    started = time.monotonic()
    found = _found(run_dir, queries)
    if found.num_rows == 0:
        raise InputError(
            f"{run_dir} holds no downloaded image; run `kgclip download "
            f"run.dir={run_dir}` first (or `kgclip run`)"
        )
    steps: dict[str, int] = {"images downloaded": _distinct(found, "image_id")}
    drops: dict[str, int] = {}

    images = _checked_images(run_dir, found, config)
    _count_rejections(images, drops)
    steps["images decoded and accepted"] = _with_status(images, "ok")

    images = dedup_images(images, config.dedup).images
    drops["near_duplicate"] = _with_status(images, "duplicate")
    steps["images after dedup"] = _with_status(images, "ok")

    images = _decontaminate(images, config, drops)
    steps["images after decontamination"] = _with_status(images, "ok")

    pairs = _labelled_pairs(images, found, entities, config, drops)
    steps["pairs after labelling"] = pairs.num_rows
    balanced = balance(pairs, config.balance)
    drops["balance_cap_or_minimum"] = pairs.num_rows - balanced.pairs.num_rows
    pairs = balanced.pairs
    steps["pairs after balancing"] = pairs.num_rows

    results = read_results(run_dir)
    pairs = _pairs_table(pairs, images, found, entities)
    pairs = caption_pairs(pairs, entities, results, config.captions)
    if config.clip_filter.enabled:
        pairs = _clip_filtered(run_dir, pairs, images, config.clip_filter, drops)
        steps["pairs after clip filter"] = pairs.num_rows
    pairs, split_counts = assign_splits(pairs, config.splits)
    drops["shared_across_splits"] = split_counts.get("shared_across_splits", 0)
    for split in ("train", "val", "test"):
        in_split = pc.sum(pc.equal(pairs["split"], split)).as_py()
        steps[f"pairs in {split}"] = int(in_split or 0)

    _write(run_dir / "images.parquet", images.cast(IMAGES_SCHEMA))
    _write(run_dir / "pairs.parquet", pairs.cast(PAIRS_SCHEMA))
    below = [{"qid": q, "images": n} for q, n in balanced.report.below_min]
    record = {"steps": steps, "drops": drops, "below_min": below}
    (run_dir / CURATION_FILE).write_text(json.dumps(record, indent=2) + "\n")

    counts: Counts = {key.replace(" ", "_"): value for key, value in steps.items()}
    counts["entities"] = _distinct(pairs, "qid")
    counts["entities_below_min"] = len(below)
    counts["seconds"] = round(time.monotonic() - started, 3)
    return counts


def _found(run_dir: Path, queries: pa.Table) -> pa.Table:
    """One row per stored image, result and entity that asked the query."""
    downloads = read_downloads(run_dir / "downloads")
    results = read_results(run_dir)
    con = duckdb.connect()
    con.register("downloads", downloads)
    con.register("results", results)
    con.register("queries", queries.select(["query_id", "entities"]))
    return con.sql(
        """
        SELECT d.sha256 AS image_id, d.url, d.warc_file, d.warc_offset,
               d.bytes, r.page_url, r.license, r.author, r.engine, r.query,
               r.rank, unnest(q.entities) AS qid
        FROM downloads d
        JOIN results r ON r.image_url = d.url
        JOIN queries q ON q.query_id = r.query_id
        WHERE d.error IS NULL AND d.sha256 IS NOT NULL AND d.warc_file IS NOT NULL
        ORDER BY image_id, qid, engine, query, rank
        """
    ).to_arrow_table()


def _checked_images(run_dir: Path, found: pa.Table, config: CurateConfig) -> pa.Table:
    """One row per distinct image: decoded, checked and hashed."""
    con = duckdb.connect()
    con.register("found", found)
    first = con.sql(
        """
        SELECT image_id, min(url) AS url, arg_min(warc_file, url) AS warc_file,
               arg_min(warc_offset, url) AS warc_offset, max(bytes) AS bytes
        FROM found GROUP BY image_id ORDER BY image_id
        """
    ).to_arrow_table()
    rows = first.to_pylist()
    checks = check_images(
        _archived_bytes(run_dir, rows), config.images, processes=config.processes
    )
    for row, (image_id, check) in zip(rows, checks, strict=True):
        assert image_id == row["image_id"]  # checks come in input order
        row |= {
            "format": check.format,
            "mode": check.mode,
            "width": check.width,
            "height": check.height,
            "phash": check.phash,
            "status": check.status,
            "reason": check.reason,
            "duplicate_of": None,
        }
    return pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)


def _archived_bytes(
    run_dir: Path, rows: list[dict[str, Any]]
) -> Iterator[tuple[str, bytes]]:
    """(image_id, bytes) of each row, read back from the web archive."""
    with WarcArchive(run_dir / "archive", writer_id="curate") as archive:
        for row in rows:
            answer = archive.read(Location(row["warc_file"], row["warc_offset"]))
            yield row["image_id"], answer.body


def _clip_filtered(
    run_dir: Path,
    pairs: pa.Table,
    images: pa.Table,
    config: ClipFilterConfig,
    drops: dict[str, int],
    chunk: int = 1024,
) -> pa.Table:
    """The pairs whose image and default caption score at least the threshold.

    Shortcoming: an image found for several entities is encoded once per
    pair. Acceptable while the filter is off by default and most images have
    one or two pairs; scoring each distinct image once against all its
    captions (an image-then-texts method on ClipScorer) would remove it.
    """
    scorer = ClipScorer.load(config)
    where = {
        row["image_id"]: row
        for row in images.select(["image_id", "warc_file", "warc_offset"]).to_pylist()
    }
    ids = pairs.column("image_id").to_pylist()
    captions = pairs.column("caption").to_pylist()
    scores = np.empty(len(ids), dtype=np.float32)
    for start in range(0, len(ids), chunk):  # a chunk's bytes in memory at a time
        part = ids[start : start + chunk]
        data = dict(_archived_bytes(run_dir, [where[i] for i in dict.fromkeys(part)]))
        scores[start : start + chunk] = scorer.score(
            [data[i] for i in part], captions[start : start + chunk]
        )
    passed = keep(scores, config.threshold)
    dropped = int((~passed).sum())
    drops["clip_score_below_threshold"] = dropped
    log.info(
        "clip filter: %d of %d pairs score below %.3f (median score %.3f)",
        dropped, len(ids), config.threshold,
        float(np.nanmedian(scores)) if len(ids) else float("nan"),
    )  # fmt: skip
    return pairs.filter(pa.array(passed))


def _decontaminate(
    images: pa.Table, config: CurateConfig, drops: dict[str, int]
) -> pa.Table:
    if not config.evaluation_sets:
        return images
    hash_fn = functools.partial(_phash_of, config=config.images)
    sets: list[EvaluationSet] = [
        read_evaluation_set(name, Path(path), hash_fn)
        for name, path in sorted(config.evaluation_sets.items())
    ]
    result = decontaminate(images, sets, config.dedup)
    drops["near_evaluation_image"] = result.counts.num_contaminated
    return result.images


def _phash_of(data: bytes, config: ImageConfig) -> int | None:
    check = check_image(data, config)
    return check.phash if check.ok else None


def _labelled_pairs(
    images: pa.Table,
    found: pa.Table,
    entities: pa.Table,
    config: CurateConfig,
    drops: dict[str, int],
) -> pa.Table:
    """(image, entity) pairs of kept images, through the label rule.

    A duplicate's finds count for the image it was merged into, so the kept
    image stays linked to every entity and query that found any copy.
    """
    con = duckdb.connect()
    con.register("images", images.select(["image_id", "status", "duplicate_of"]))
    con.register("found", found.select(["image_id", "qid"]))
    con.register("entities", entities.select(["qid", "root", "lineage"]))
    candidates = con.sql(
        """
        SELECT DISTINCT coalesce(i.duplicate_of, i.image_id) AS image_id,
               e.qid, e.root, e.lineage
        FROM found f
        JOIN images i ON i.image_id = f.image_id
        JOIN entities e ON e.qid = f.qid
        WHERE i.status IN ('ok', 'duplicate')
        ORDER BY image_id, e.qid, e.root
        """
    ).to_arrow_table()
    labelled = apply_label_rule(candidates, config.labels)
    drops["no_common_label"] = labelled.counts.num_images_dropped
    return labelled.labels


def _pairs_table(
    labels: pa.Table, images: pa.Table, found: pa.Table, entities: pa.Table
) -> pa.Table:
    """Label rows widened to :data:`PAIRS_SCHEMA`: the entity's label, kind
    and rank, and every result that found the image or a copy of it (texts
    and split are filled by the next steps)."""
    con = duckdb.connect()
    con.register("labels", labels.select(["image_id", "qid", "root"]))
    con.register("images", images.select(["image_id", "duplicate_of"]))
    con.register("found", found)
    con.register("entities", entities)
    table = con.sql(
        """
        WITH finds AS (
            SELECT coalesce(i.duplicate_of, i.image_id) AS image_id,
                   list(DISTINCT {'url': f.url, 'page_url': f.page_url,
                         'license': f.license, 'author': f.author,
                         'engine': f.engine, 'query': f.query, 'rank': f.rank})
                       AS sources
            FROM found f JOIN images i ON i.image_id = f.image_id
            GROUP BY 1
        )
        SELECT l.image_id, l.qid, l.root, e.kind, e.label, e.lineage, e.rank,
               []::STRUCT(source VARCHAR, text VARCHAR)[] AS web_texts,
               []::STRUCT(source VARCHAR, text VARCHAR)[] AS kg_texts,
               NULL::VARCHAR AS caption,
               list_sort(f.sources) AS sources,
               NULL::VARCHAR AS split
        FROM labels l
        JOIN entities e ON e.qid = l.qid AND e.root = l.root
        JOIN finds f ON f.image_id = l.image_id
        ORDER BY l.image_id, l.qid, l.root
        """
    ).to_arrow_table()
    return table.cast(PAIRS_SCHEMA)


def _with_status(images: pa.Table, status: str) -> int:
    return int(pc.sum(pc.equal(images["status"], status)).as_py() or 0)


def _distinct(table: pa.Table, column: str) -> int:
    return len(pc.unique(table[column]))


def _count_rejections(images: pa.Table, drops: dict[str, int]) -> None:
    rejected = images.filter(pc.equal(images["status"], "rejected"))
    for reason in sorted(set(rejected["reason"].to_pylist()), key=str):
        drops[str(reason)] = int(pc.sum(pc.equal(rejected["reason"], reason)).as_py())


def _write(target: Path, table: pa.Table) -> None:
    partial = target.with_suffix(".parquet.partial")
    pq.write_table(table, partial)
    partial.replace(target)


@dataclass
class ExportStageConfig:
    """The export settings; see ``conf/curate/default.yaml``."""

    images: ImageConfig = field(default_factory=ImageConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    shards: ExportConfig = field(default_factory=ExportConfig)


def export(
    run_dir: Path, entities: pa.Table, config: ExportStageConfig, settings: Any
) -> Counts:
    """Write the pairs as webdataset shards and the datasheet.

    ``settings`` is the whole configuration, quoted in the datasheet.
    """
    started = time.monotonic()
    pairs = _read(run_dir, "pairs", "curate")
    images = _read(run_dir, "images", "curate")
    read_image = _image_reader(run_dir, images)
    encode = functools.partial(
        export_jpeg, config=config.images, resize_config=config.resize
    )
    result = export_shards(pairs, run_dir, read_image, encode, config.shards)
    _write(run_dir / "shards.parquet", result.shards.cast(SHARDS_SCHEMA))

    curation = _curation(run_dir)
    steps = dict(curation["steps"])
    drops = dict(curation["drops"])
    steps["samples exported"] = int(pc.sum(result.shards["num_samples"]).as_py() or 0)
    if result.failed:
        drops["export_failed"] = len(result.failed)
    page = write_datasheet(
        run_dir,
        entities=entities,
        pairs=pairs,
        images=images,
        counts=steps,
        drops=drops,
        config=settings,
    )
    return {
        "shards": result.shards.num_rows,
        "samples": steps["samples exported"],
        "failed": len(result.failed),
        "bytes": int(pc.sum(result.shards["bytes"]).as_py() or 0),
        "datasheet": str(page.relative_to(run_dir)),
        "seconds": round(time.monotonic() - started, 3),
    }


def _image_reader(run_dir: Path, images: pa.Table) -> Callable[[str], bytes]:
    """image_id -> its bytes, read from the web archive by (file, offset)."""
    where = {
        row["image_id"]: Location(row["warc_file"], row["warc_offset"])
        for row in images.select(["image_id", "warc_file", "warc_offset"]).to_pylist()
    }
    archive = WarcArchive(run_dir / "archive", writer_id="export")

    def read(image_id: str) -> bytes:
        return archive.read(where[image_id]).body

    return read


def _read(run_dir: Path, name: str, stage: str) -> pa.Table:
    path = run_dir / f"{name}.parquet"
    if not path.exists():
        raise InputError(
            f"{path} does not exist; run `kgclip {stage} run.dir={run_dir}` first "
            "(or `kgclip run`)"
        )
    return pq.read_table(path)


def _curation(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CURATION_FILE
    if not path.exists():
        return {"steps": {}, "drops": {}}
    return dict(json.loads(path.read_text()))


def settings_of(config: Any) -> dict[str, Any]:
    """A dataclass config as plain data, for the datasheet."""
    return asdict(config)
