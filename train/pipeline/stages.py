"""The stages as the command line runs them: config in, catalog rows out.

Each function here turns the Hydra config into a package's own config,
calls the stage's library code, writes its output into the run directory and
returns the counts for the summary line and ``stage_runs``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from kg.backend import EmbeddedGraph, EndpointGraph, KnowledgeGraph
from kg.errors import ConfigError, InputError
from kg.harvest import HarvestConfig, build_queries, harvest
from kg.ingest import IngestConfig, ingest
from train.pipeline.catalog import Catalog
from train.pipeline.progress import byte_progress

log = logging.getLogger(__name__)

Counts = dict[str, Any]
Stage = Callable[[DictConfig, Catalog], Counts]


def run_ingest(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip ingest``: stream kg.source into the embedded store."""
    if cfg.kg.backend != "embedded":
        log.info("kg.backend=%s needs no ingest; skipping", cfg.kg.backend)
        return {"skipped": True}
    config = IngestConfig(
        source=Path(cfg.kg.source),
        store=Path(cfg.kg.store),
        properties=list(cfg.kg.properties),
        languages=list(cfg.kg.languages),
        sitelinks=bool(cfg.kg.sitelinks),
        max_malformed_share=float(cfg.kg.max_malformed_share),
        max_reported=int(cfg.kg.max_reported),
        memory_limit=str(cfg.kg.memory_limit),
    )
    if cfg.dry_run:
        from kg.dumps import detect

        fmt, compression = detect(config.source)
        sys.stdout.write(f"would ingest {config.source} ({fmt}, {compression}) ")
        sys.stdout.write(f"into {config.store}\n")
        return {"dry_run": True}
    with byte_progress(f"ingest {config.source.name}", cfg.run.progress) as progress:
        result = ingest(config, progress=progress)
    return result.counts()


def open_graph(cfg: DictConfig) -> KnowledgeGraph:
    """The knowledge graph named by ``kg.backend``."""
    if cfg.kg.backend == "embedded":
        return EmbeddedGraph(Path(cfg.kg.store), memory_limit=str(cfg.kg.memory_limit))
    if cfg.kg.backend == "sparql":
        from kg.endpoint import EndpointConfig

        return EndpointGraph(
            EndpointConfig(
                url=str(cfg.kg.endpoint),
                timeout_s=float(cfg.kg.timeout_s),
                connect_timeout_s=float(cfg.kg.connect_timeout_s),
                retries=int(cfg.kg.retries),
                backoff_s=float(cfg.kg.backoff_s),
                page_size=cfg.kg.page_size,
                method=str(cfg.kg.method),
                user_agent=f"kgclip/0.1 (+mailto:{cfg.contact})",
                access_token=cfg.kg.access_token,
            )
        )
    raise ConfigError(
        f"kg.backend={cfg.kg.backend!r} is not known; use embedded (a dump "
        "ingested with `kgclip ingest`) or sparql (with kg.endpoint=URL)"
    )


def harvest_config(cfg: DictConfig) -> HarvestConfig:
    """The harvest settings of the Hydra config."""
    section = OmegaConf.to_container(cfg.harvest, resolve=True)
    assert isinstance(section, dict)
    return HarvestConfig(
        kind=str(section["kind"]),
        roots=[str(q) for q in section["roots"]],
        instances=bool(section["instances"]),
        exclude=[str(q) for q in section["exclude"] or []],
        min_sitelinks=int(section["min_sitelinks"] or 0),
        limit=section["limit"],
        languages=[str(lang) for lang in section["languages"]],
        attributes=[str(p) for p in section.get("attributes") or []],
    )


def run_harvest(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip harvest``: write ``entities.parquet`` and the ``entities`` view."""
    config = harvest_config(cfg)
    if cfg.dry_run:
        for kind, query in build_queries(config):
            sys.stdout.write(f"# {kind} query for {cfg.kg.backend} backend\n{query}\n")
        return {"dry_run": True}

    graph = open_graph(cfg)
    try:
        entities = harvest(graph, config, snapshot=cfg.kg.snapshot)
    finally:
        graph.close()
    write_table(entities, catalog.run_dir / "entities.parquet")
    catalog.refresh_views()

    return {
        "entities": entities.num_rows,
        "distinct_qids": len(set(entities.column("qid").to_pylist())),
        "with_label": entities.num_rows - entities.column("label").null_count,
        "roots": len(config.roots),
        "source": graph.source,
    }


def section_of(node: Any) -> dict[str, Any]:
    """A config section as a plain dict, interpolations resolved."""
    section = OmegaConf.to_container(node, resolve=True)
    assert isinstance(section, dict)
    return {str(key): value for key, value in section.items()}


def write_table(table: pa.Table, target: Path) -> None:
    """Write a stage's output atomically: a killed stage leaves the old file."""
    partial = target.with_suffix(".parquet.partial")
    pq.write_table(table, partial)
    partial.replace(target)


def read_table(catalog: Catalog, name: str, stage: str) -> pa.Table:
    """A table an earlier stage wrote, or an error saying which stage to run."""
    path = catalog.run_dir / f"{name}.parquet"
    if not path.exists():
        raise InputError(
            f"{path} does not exist; run `kgclip {stage} run.dir={catalog.run_dir}` "
            "first (or `kgclip run` for every stage)"
        )
    return pq.read_table(path)


def run_queries(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip queries``: ``entities`` -> ``queries.parquet``."""
    from crawl.queries import QueriesConfig, build_queries, summarize

    config = QueriesConfig.from_mapping(section_of(cfg.crawl.queries))
    config.validate()
    entities = read_table(catalog, "entities", "harvest")
    queries = build_queries(entities, config)
    if cfg.dry_run:
        for row in queries.slice(0, 20).to_pylist():
            sys.stdout.write(f"{row['engine']}\t{row['text']}\t{row['entities']}\n")
        return {"dry_run": True, "queries": queries.num_rows}
    write_table(queries, catalog.run_dir / "queries.parquet")
    catalog.refresh_views()
    return summarize(queries)


STAGES: dict[str, Stage] = {
    "ingest": run_ingest,
    "harvest": run_harvest,
    "queries": run_queries,
}
