"""The run's catalog: ``catalog.duckdb`` in the run directory.

Stage outputs live beside it as Parquet files; the catalog shows each as a
view of the same name (``entities`` over ``entities.parquet``) and keeps its
own small table ``stage_runs``: one row per stage run with its partition,
config hash, start and end times, status, error and counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import duckdb

from kg.errors import StoreError
from kg.store import now_iso

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.duckdb"
# Tables each stage writes, as Parquet files in the run directory.
# A table is either one file (``entities.parquet``) or a folder of part files
# written by the partitions of a stage (``downloads/*.parquet``).
TABLES = (
    "entities", "queries", "searches", "results", "downloads", "images", "pairs",
    "shards",
)  # fmt: skip


def config_hash(config: Any) -> str:
    """A short, stable hash of a JSON-able config."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Catalog:
    """The DuckDB catalog of one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / CATALOG_FILE
        try:
            self.con = duckdb.connect(str(path))
        except duckdb.IOException as error:
            raise StoreError(
                f"cannot open the catalog {path}: {error}. Another kgclip process "
                "may be using this run directory; wait for it or set run.dir."
            ) from error
        self.con.execute(
            """CREATE TABLE IF NOT EXISTS stage_runs (
                id BIGINT, stage VARCHAR, partition VARCHAR, config_hash VARCHAR,
                started VARCHAR, finished VARCHAR, status VARCHAR, error VARCHAR,
                counts JSON)"""
        )
        self.refresh_views()

    @classmethod
    def detached(cls, run_dir: Path) -> Catalog:
        """The run directory without its database, for the processes of a
        distributed training other than rank 0: rank 0 holds the catalog
        and records the stage. Only ``run_dir`` may be used."""
        catalog = cls.__new__(cls)
        catalog.run_dir = Path(run_dir)
        return catalog

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh_views(self) -> None:
        """(Re)create one view per table whose Parquet file exists."""
        for table in TABLES:
            path = self.run_dir / f"{table}.parquet"
            parts = self.run_dir / table
            if path.exists():
                source = f"'{path.resolve()}'"
            elif parts.is_dir() and any(parts.glob("*.parquet")):
                source = f"'{parts.resolve()}/*.parquet', union_by_name = true"
            else:
                continue
            self.con.execute(
                f"CREATE OR REPLACE VIEW {table} AS "
                f"SELECT * FROM read_parquet({source})"
            )

    def begin(self, stage: str, partition: str, hash_: str) -> int:
        """Record that a stage started; returns its run id."""
        row = self.con.execute("SELECT coalesce(max(id), 0) + 1 FROM stage_runs")
        run_id = int(row.fetchone()[0])  # type: ignore[index]
        self.con.execute(
            "INSERT INTO stage_runs "
            "VALUES (?, ?, ?, ?, ?, NULL, 'running', NULL, NULL)",
            [run_id, stage, partition, hash_, now_iso()],
        )
        return run_id

    def finish(
        self, run_id: int, status: str, counts: dict[str, Any], error: str | None = None
    ) -> None:
        """Record how a stage run ended, with its counts."""
        self.con.execute(
            "UPDATE stage_runs SET finished = ?, status = ?, error = ?, counts = ? "
            "WHERE id = ?",
            [now_iso(), status, error, json.dumps(counts, default=str), run_id],
        )
