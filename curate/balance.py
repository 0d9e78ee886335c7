"""Which entities an image is labelled with, and how many images each keeps.

Label rule. The same image is often found for several entities: a photo of a
jaguar answers the queries for "Panthera onca", "Panthera" and "Felidae", and
after dedup the kept image carries the entities of every copy. One rule,
chosen in :class:`LabelConfig`, decides its labels:

- ``keep_all``: one label per entity that found it.
- ``most_specific``: drop each entity that is an ancestor (by the recorded
  lineages) of another of the image's entities; siblings all stay. For classes
  and taxa alike.
- ``lowest_common_ancestor``: one label, the deepest entity common to the
  lineages of all the image's entities under one root. Where no root holds all
  of them there is no common ancestor in the harvest; ``no_common_ancestor``
  then drops the image (the default: entities from unrelated subtrees usually
  mean a search answered one query with a wrong picture) or falls back to
  ``keep_all`` or ``most_specific``.

Balancing, after MetaCLIP (Xu et al. 2023, "Demystifying CLIP data"): an entity
with more images than ``max_per_entity`` keeps that many, those ranked first by
the MD5 of "<seed>:<image_id>", so the same inputs always keep the same images
and an image kept for one entity tends to be kept for the others; rarer
entities keep all they have. Entities left with fewer than ``min_per_entity``
images are dropped or flagged. The report lists them, with counts before and
after and a histogram of images per entity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

LABEL_RULES = ("keep_all", "most_specific", "lowest_common_ancestor")
NO_COMMON_ANCESTOR = ("drop", "keep_all", "most_specific")
BELOW_MIN = ("drop", "flag")

# Lower edges of the histogram of images per entity (the last bin is open).
HISTOGRAM_EDGES = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)

LABELS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("qid", pa.string()),  # the entity the image is labelled with
        ("root", pa.string()),
        ("lineage", pa.list_(pa.string())),  # QIDs root .. qid
        # single (found for one entity), keep_all, most_specific,
        # lowest_common_ancestor, or no_common_ancestor:<fallback>
        ("rule", pa.string()),
        ("found_qids", pa.list_(pa.string())),  # every entity that found the image
    ]
)


@dataclass(frozen=True)
class LabelConfig:
    """The label rule for images found for several entities."""

    rule: str = "most_specific"
    # lowest_common_ancestor only, where no root holds all the image's entities
    no_common_ancestor: str = "drop"

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the key with an unknown value."""
        _check_choice("curate.labels.rule", self.rule, LABEL_RULES)
        _check_choice(
            "curate.labels.no_common_ancestor",
            self.no_common_ancestor,
            NO_COMMON_ANCESTOR,
        )


@dataclass(frozen=True)
class BalanceConfig:
    """How many images an entity may keep, and how few it may be left with."""

    # MetaCLIP caps each of 500k entries at 20k for 400M pairs; an entity
    # dataset of thousands of entities with hundreds of images each needs a
    # much lower cap before its head dominates. None: no cap.
    max_per_entity: int | None = 1000
    # five images are the least that can feed train, val and test splits
    min_per_entity: int = 5
    below_min: str = "drop"  # drop | flag (keep, with a below_min column)
    seed: int = 0  # changes which images a capped entity keeps

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the key that is out of range."""
        _check_choice("curate.balance.below_min", self.below_min, BELOW_MIN)
        if self.min_per_entity < 0:
            raise ConfigError(
                f"curate.balance.min_per_entity={self.min_per_entity} is negative: "
                "use 0 to keep every entity"
            )
        cap = self.max_per_entity
        if cap is not None and cap < max(self.min_per_entity, 1):
            raise ConfigError(
                f"curate.balance.max_per_entity={cap} is below "
                f"min_per_entity={self.min_per_entity}: every capped entity would "
                "fall under the minimum; raise the cap or lower the minimum"
            )


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is unknown: use one of {list(choices)}")


def _as_table(rows: pa.Table | Sequence[Mapping[str, Any]]) -> pa.Table:
    return rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))


def _require_columns(table: pa.Table, names: Sequence[str], stage: str) -> None:
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise InputError(
            f"{stage}: the input lacks the columns {missing} (it has "
            f"{table.column_names}): give one row per image and entity"
        )


# --------------------------------------------------------------------------
# Label rule


@dataclass(frozen=True)
class LabelCounts:
    num_images: int
    num_images_multi: int  # found for two or more entities
    num_images_dropped: int  # left without a label (no common ancestor)
    num_pairs_before: int  # distinct (image, entity, root)
    num_pairs_after: int


@dataclass(frozen=True)
class LabelResult:
    labels: pa.Table  # LABELS_SCHEMA, sorted by image_id, qid, root
    counts: LabelCounts


def apply_label_rule(
    found: pa.Table | Sequence[Mapping[str, Any]], config: LabelConfig | None = None
) -> LabelResult:
    """The (image, entity) labels that the rule keeps.

    ``found`` has one row per image and entity that found it, with the columns
    ``image_id``, ``qid``, ``root`` and ``lineage`` (QIDs from the root down to
    the entity, as the harvest writes them); other columns are ignored, since
    the lowest-common-ancestor rule changes the entity (join the entities table
    on qid and root for labels and texts). Raises :class:`InputError` for a
    missing column and :class:`ConfigError` for an unknown rule.
    """
    config = config or LabelConfig()
    config.check()
    table = _as_table(found)
    _require_columns(table, ("image_id", "qid", "root", "lineage"), "labels")
    con = _rows_by_image(table)

    # keep_all and most_specific are set operations; the common ancestor is
    # worked out image by image
    if config.rule == "lowest_common_ancestor":
        labels, num_dropped = _lowest_common_ancestors(con, config.no_common_ancestor)
    else:
        query = KEEP_ALL if config.rule == "keep_all" else MOST_SPECIFIC
        labels, num_dropped = con.sql(query).to_arrow_table().cast(LABELS_SCHEMA), 0

    [(num_images, num_multi, num_rows)] = con.execute(
        "SELECT count(*), count(*) FILTER (num_qids > 1), sum(num_rows) FROM images"
    ).fetchall()
    con.close()
    counts = LabelCounts(
        num_images=num_images,
        num_images_multi=num_multi,
        num_images_dropped=num_dropped,
        num_pairs_before=int(num_rows or 0),
        num_pairs_after=labels.num_rows,
    )
    log.info("labels: rule=%s %s", config.rule, _key_values(counts))
    return LabelResult(labels, counts)


def _rows_by_image(table: pa.Table) -> duckdb.DuckDBPyConnection:
    """A connection with the tables ``rows`` (distinct image, entity, root,
    lineage) and ``images`` (entities and rows per image).

    A missing lineage reads as root and entity.
    """
    con = duckdb.connect()
    con.register("found", table.select(["image_id", "qid", "root", "lineage"]))
    con.execute(
        """
        CREATE TABLE rows AS
        SELECT image_id, qid, root,
               CASE WHEN coalesce(len(any_value(lineage)), 0) > 0
                    THEN any_value(lineage)
                    WHEN qid = root THEN [qid] ELSE [root, qid] END AS lineage
        FROM found GROUP BY image_id, qid, root;
        CREATE TABLE images AS
        SELECT image_id, count(DISTINCT qid) AS num_qids, count(*) AS num_rows,
               list_sort(list_distinct(list(qid))) AS found_qids
        FROM rows GROUP BY image_id;
        """
    )
    return con


KEEP_ALL = """
SELECT image_id, qid, root, lineage,
       CASE WHEN num_qids = 1 THEN 'single' ELSE 'keep_all' END AS rule, found_qids
FROM rows JOIN images USING (image_id)
ORDER BY image_id, qid, root
"""

# Rows whose entity is in no lineage of another of the image's entities.
# Lineages are the shortest chains the harvest recorded, so an ancestor met
# only along a longer path is not seen as one. Where every entity is an
# ancestor of another (a cycle across roots) all stay, as keep_all.
MOST_SPECIFIC = """
WITH ancestors AS (
    SELECT DISTINCT image_id, unnest(lineage[1:len(lineage) - 1]) AS qid
    FROM rows JOIN images USING (image_id) WHERE num_qids > 1
),
kept AS (SELECT * FROM rows ANTI JOIN ancestors USING (image_id, qid))
SELECT image_id, qid, root, lineage,
       CASE WHEN num_qids = 1 THEN 'single' ELSE 'most_specific' END AS rule,
       found_qids
FROM kept JOIN images USING (image_id)
UNION ALL
SELECT image_id, qid, root, lineage, 'keep_all' AS rule, found_qids
FROM rows JOIN images USING (image_id)
WHERE image_id NOT IN (SELECT image_id FROM kept)
ORDER BY image_id, qid, root
"""


def _lowest_common_ancestors(
    con: duckdb.DuckDBPyConnection, fallback: str
) -> tuple[pa.Table, int]:
    """(labels by the lowest-common-ancestor rule, images left without one).

    Shortcoming: images found for several entities are decided one by one in
    Python (~50 s per million such images on one core), since the longest
    common prefix of lists has no set-based form in SQL; the other rules run
    in DuckDB. A list function comparing lineages position by position would
    remove the loop.
    """
    single = con.sql(
        """
        SELECT image_id, qid, root, lineage, 'single' AS rule, found_qids
        FROM rows JOIN images USING (image_id) WHERE num_qids = 1
        """
    ).to_arrow_table()
    multi = con.sql(
        """
        SELECT image_id, qid, root, lineage, found_qids
        FROM rows JOIN images USING (image_id) WHERE num_qids > 1
        ORDER BY image_id, qid, root
        """
    ).to_arrow_table()

    decided: list[dict[str, Any]] = []
    num_dropped = 0
    for image_id, rows in groupby(multi.to_pylist(), key=lambda r: r["image_id"]):
        found = list(rows)
        labels, rule = _lowest_common_ancestor(found, fallback)
        num_dropped += not labels
        decided += [
            {"image_id": image_id, **label, "rule": rule}
            | {"found_qids": found[0]["found_qids"]}
            for label in labels
        ]
    labels = pa.concat_tables(
        [
            single.cast(LABELS_SCHEMA),
            pa.Table.from_pylist(decided, schema=LABELS_SCHEMA),
        ]
    )
    order = [("image_id", "ascending"), ("qid", "ascending"), ("root", "ascending")]
    return labels.sort_by(order), num_dropped


def _most_specific(rows: list[dict[str, Any]]) -> list[dict]:
    """MOST_SPECIFIC for the rows of one image (the common ancestor's fallback)."""
    ancestors = {qid for row in rows for qid in row["lineage"][:-1]}
    return [row for row in rows if row["qid"] not in ancestors] or rows


def _lowest_common_ancestor(
    rows: list[dict[str, Any]], fallback: str
) -> tuple[list[dict], str]:
    """(qid, root, lineage) labels of one image and the rule that gave them.

    The deepest entity common to all lineages, under each root that holds all
    the image's entities; where no root does, the fallback.
    """
    qids = {row["qid"] for row in rows}
    by_root: dict[str, list[dict]] = {}
    for row in rows:
        by_root.setdefault(row["root"], []).append(row)

    labels = []
    for root, under in sorted(by_root.items()):
        if {row["qid"] for row in under} != qids:
            continue
        common = _common_prefix([row["lineage"] for row in under])
        if common:
            labels.append({"qid": common[-1], "root": root, "lineage": common})
    if labels:
        return labels, "lowest_common_ancestor"

    if fallback == "drop":
        return [], f"no_common_ancestor:{fallback}"
    kept = rows if fallback == "keep_all" else _most_specific(rows)
    keys = ("qid", "root", "lineage")
    return [{k: row[k] for k in keys} for row in kept], f"no_common_ancestor:{fallback}"


def _common_prefix(lineages: list[list[str]]) -> list[str]:
    common: list[str] = []
    for step in zip(*lineages, strict=False):
        if len(set(step)) > 1:
            break
        common.append(step[0])
    return common


# --------------------------------------------------------------------------
# Balancing


@dataclass(frozen=True)
class HistogramBin:
    """Entities with ``low <= images < high`` (no ``high``: the open last bin)."""

    low: int
    high: int | None
    num_entities_before: int
    num_entities_after: int


@dataclass(frozen=True)
class BalanceReport:
    num_pairs_before: int
    num_pairs_after: int
    num_images_before: int  # distinct image_id
    num_images_after: int
    num_entities_before: int
    num_entities_after: int  # entities with at least one pair left
    num_entities_capped: int  # sampled down to max_per_entity
    num_entities_below_min: int  # dropped or flagged
    below_min: list[tuple[str, int]]  # (qid, images), fewest first
    histogram: list[HistogramBin]


@dataclass(frozen=True)
class BalanceResult:
    pairs: pa.Table  # the input rows kept (+ below_min where flagged)
    report: BalanceReport


def balance(
    pairs: pa.Table | Sequence[Mapping[str, Any]], config: BalanceConfig | None = None
) -> BalanceResult:
    """Cap and floor the number of images per entity.

    ``pairs`` has one row per image and entity (``image_id``, ``qid``, and any
    other columns, which are kept as they are). An entity's images are its
    distinct image_ids. With ``below_min="flag"`` a boolean ``below_min``
    column is added instead of dropping rows. Raises :class:`InputError` for a
    missing column and :class:`ConfigError` for settings out of range.
    """
    config = config or BalanceConfig()
    config.check()
    table = _as_table(pairs)
    _require_columns(table, ("image_id", "qid"), "balance")
    con = duckdb.connect()
    rows = np.arange(table.num_rows)
    con.register(
        "pairs",
        pa.table({"row": rows, "image_id": table["image_id"], "qid": table["qid"]}),
    )
    before = _images_per_entity(con)
    over, after, below = _plan_entities(before, config)
    dropped = [q for q, _ in below] if config.below_min == "drop" else []

    # the rows that stay, and how many distinct images before and after
    _choose(con, over, config)
    kept_rows = _keep(con, over, dropped)
    images = con.execute(
        "SELECT (SELECT count(DISTINCT image_id) FROM pairs), "
        "(SELECT count(DISTINCT image_id) FROM pairs JOIN kept USING (row))"
    ).fetchall()[0]
    con.close()

    result = _apply(table, kept_rows, {q for q, _ in below}, config)
    for qid in dropped:
        del after[qid]
    report = BalanceReport(
        num_pairs_before=table.num_rows,
        num_pairs_after=result.num_rows,
        num_images_before=images[0],
        num_images_after=images[1],
        num_entities_before=len(before),
        num_entities_after=len(after),
        num_entities_capped=len(over),
        num_entities_below_min=len(below),
        below_min=below,
        histogram=_histogram(before, after),
    )
    log.info("balance: %s", _key_values(report))
    return BalanceResult(result, report)


def _images_per_entity(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    found = con.execute(
        "SELECT qid, count(DISTINCT image_id) FROM pairs GROUP BY qid"
    ).fetchall()
    return dict(found)


def _plan_entities(
    before: dict[str, int], config: BalanceConfig
) -> tuple[list[str], dict[str, int], list[tuple[str, int]]]:
    """(entities above the cap, images each keeps, entities below the minimum
    with their images, fewest first).

    A capped entity keeps exactly the cap; the others keep what they have.
    """
    cap = config.max_per_entity
    over = sorted(q for q, n in before.items() if cap is not None and n > cap)
    after = {q: min(n, cap) if cap is not None else n for q, n in before.items()}
    below = sorted(
        ((q, n) for q, n in after.items() if n < config.min_per_entity),
        key=lambda item: (item[1], item[0]),
    )
    return over, after, below


def _choose(
    con: duckdb.DuckDBPyConnection, over: list[str], config: BalanceConfig
) -> None:
    """Table ``chosen``: the images each entity above the cap keeps.

    The rank of an image is the MD5 of "<seed>:<image_id>": the same on every
    machine and in every version, and the same for every entity that found
    the image, so shared images tend to be kept (or left) together.
    """
    con.execute(
        """
        CREATE TABLE chosen AS
        SELECT qid, image_id, true AS picked FROM (
            SELECT qid, image_id, row_number() OVER (
                PARTITION BY qid
                ORDER BY md5_number($seed || ':' || image_id), image_id
            ) AS place
            FROM (SELECT DISTINCT qid, image_id FROM pairs
                  WHERE qid IN (SELECT unnest($over)))
        ) WHERE place <= $cap
        """,
        {"over": over, "cap": config.max_per_entity or 0, "seed": str(config.seed)},
    )


def _keep(
    con: duckdb.DuckDBPyConnection, over: list[str], dropped: list[str]
) -> np.ndarray:
    """Table ``kept`` and its input row numbers, in input order: rows of
    uncapped entities and the chosen rows of capped ones, less dropped ones."""
    con.execute(
        """
        CREATE TABLE kept AS
        SELECT row FROM pairs LEFT JOIN chosen USING (qid, image_id)
        WHERE (chosen.picked OR pairs.qid NOT IN (SELECT unnest($over)))
          AND pairs.qid NOT IN (SELECT unnest($dropped))
        """,
        {"over": over, "dropped": dropped},
    )
    found = con.sql("SELECT row FROM kept ORDER BY row").to_arrow_table()
    return found["row"].to_numpy().astype(np.int64)


def _apply(
    table: pa.Table, kept_rows: np.ndarray, below: set[str], config: BalanceConfig
) -> pa.Table:
    result = table.take(kept_rows)
    if config.below_min == "flag":
        flagged = pc.is_in(
            result["qid"], value_set=pa.array(sorted(below), pa.string())
        )
        result = result.append_column("below_min", flagged)
    return result


def _histogram(before: dict[str, int], after: dict[str, int]) -> list[HistogramBin]:
    """Entities per bin of images per entity, before and after; empty top bins
    are left out."""
    edges = np.array(HISTOGRAM_EDGES)
    num_before = np.bincount(
        np.searchsorted(edges, list(before.values()), side="right") - 1,
        minlength=edges.size,
    )
    num_after = np.bincount(
        np.searchsorted(edges, list(after.values()), side="right") - 1,
        minlength=edges.size,
    )
    used = np.flatnonzero(num_before + num_after)
    last = int(used[-1]) + 1 if used.size else 0
    return [
        HistogramBin(
            low=int(edges[b]),
            high=int(edges[b + 1]) if b + 1 < edges.size else None,
            num_entities_before=int(num_before[b]),
            num_entities_after=int(num_after[b]),
        )
        for b in range(last)
    ]


def _key_values(counts: object) -> str:
    """``key=value`` pairs of the counts of a dataclass, for the summary line."""
    return " ".join(f"{k}={v}" for k, v in vars(counts).items() if isinstance(v, int))
