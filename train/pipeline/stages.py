"""The stages as the command line runs them: config in, catalog rows out.

Each function here turns the Hydra config into a package's own config,
calls the stage's library code, writes its output into the run directory and
returns the counts for the summary line and ``stage_runs``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from crawl.browser import BrowserConfig
from crawl.download import DownloadConfig, download, download_partitioned
from crawl.engines.commons import CommonsConfig
from crawl.engines.inaturalist import INaturalistConfig
from crawl.engines.local import LocalConfig
from crawl.fetch import FetchConfig
from crawl.search import SearchConfig, pending_queries, read_results, search_partitioned
from curate.balance import BalanceConfig, LabelConfig
from curate.captions import CaptionConfig
from curate.clip_filter import ClipFilterConfig
from curate.dedup import DedupConfig
from curate.export import ExportConfig
from curate.images import ImageConfig, ResizeConfig
from curate.pipeline import CurateConfig, ExportStageConfig, curate, export
from curate.splits import SplitConfig
from kg.backend import EmbeddedGraph, EndpointGraph, KnowledgeGraph
from kg.errors import ConfigError, InputError
from kg.harvest import HarvestConfig, build_queries, harvest
from kg.ingest import IngestConfig, ingest
from train.pipeline.catalog import Catalog
from train.pipeline.progress import byte_progress

log = logging.getLogger(__name__)

Counts = dict[str, Any]
T = TypeVar("T")
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


def _dataclass(cls: type[T], section: dict[str, Any], key: str) -> T:
    """A package's config dataclass from a config section, naming bad keys."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(
            f"{key} has unknown settings {unknown}; known: {', '.join(sorted(known))}"
        )
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    return cls(**tuples)


def fetch_config(cfg: DictConfig) -> FetchConfig:
    """The fetcher's settings, with the local collection's folder readable."""
    section = section_of(cfg.crawl.fetch)
    local = cfg.crawl.search.local_path
    if local:
        path = Path(str(local)).expanduser().resolve()
        folder = path if path.is_dir() else path.parent
        section["file_roots"] = [*section.get("file_roots", []), str(folder)]
    section["mode"] = str(cfg.crawl.mode)
    return _dataclass(FetchConfig, section, "crawl.fetch")


def search_config(cfg: DictConfig) -> SearchConfig:
    """The search settings of the Hydra config."""
    section = section_of(cfg.crawl.search)
    engines = {
        "local": (LocalConfig, "crawl.search.local"),
        "commons": (CommonsConfig, "crawl.search.commons"),
        "inaturalist": (INaturalistConfig, "crawl.search.inaturalist"),
        "browser": (BrowserConfig, "crawl.search.browser"),
    }
    for name, (cls, key) in engines.items():
        section[name] = _dataclass(cls, section.get(name) or {}, key)
    browser = section["browser"]
    section["browser"] = dataclasses.replace(browser, base_urls=dict(browser.base_urls))
    section["engines"] = [str(engine) for engine in cfg.engines]
    section["mode"] = str(cfg.crawl.mode)
    section["fetch"] = fetch_config(cfg)
    return _dataclass(SearchConfig, section, "crawl.search")


def run_search(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip search``: ``queries`` -> ``searches/`` and ``results/`` parts."""
    config = search_config(cfg)
    config.validate()
    if cfg.check_engines:
        return check_engines(cfg, config, catalog)
    queries = read_table(catalog, "queries", "queries")
    if cfg.dry_run:
        todo = pending_queries(queries, catalog.run_dir, config.engines)
        for engine in config.engines:
            number = pc.sum(pc.equal(todo.column("engine"), engine)).as_py() or 0
            sys.stdout.write(f"would search {number} queries on {engine}\n")
        return {"dry_run": True, "pending": todo.num_rows}
    counts = search_partitioned(
        queries,
        catalog.run_dir,
        config,
        num_partitions=int(cfg.crawl.partitions),
        max_workers=int(cfg.crawl.workers),
    )
    catalog.refresh_views()
    return counts


def check_engines(cfg: DictConfig, config: SearchConfig, catalog: Catalog) -> Counts:
    """``kgclip search --check-engines``: one known query per web engine."""
    import asyncio

    from crawl.browser import WEB_ENGINES
    from crawl.browser import check_engines as check

    names = [e for e in config.engines if e in WEB_ENGINES] or list(WEB_ENGINES)
    checks = asyncio.run(check(names, config.browser, run_dir=catalog.run_dir))
    for found in checks:
        sys.stdout.write(
            f"{found.engine}\t{found.verdict}\t{found.num_results} results\t"
            f"{found.detail or ''}\n"
        )
    return {found.engine: found.verdict for found in checks}


def run_download(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip download``: every result's image into the archive."""
    results = read_results(catalog.run_dir)
    if results.num_rows == 0:
        raise InputError(
            f"{catalog.run_dir} has no search results; run `kgclip search "
            f"run.dir={catalog.run_dir}` first (or `kgclip run`)"
        )
    section = section_of(cfg.crawl.download)
    section["fetch"] = fetch_config(cfg)
    config = _dataclass(DownloadConfig, section, "crawl.download")
    if cfg.dry_run:
        urls = results.column("image_url").drop_null()
        sys.stdout.write(f"would download {len(pc.unique(urls))} image URLs\n")
        return {"dry_run": True}
    partitions = int(cfg.crawl.partitions)
    if partitions <= 1:  # no process to start for a single partition
        counts = download(results, catalog.run_dir, config)
    else:
        counts = download_partitioned(
            results,
            catalog.run_dir,
            config,
            num_partitions=partitions,
            max_workers=int(cfg.crawl.workers),
        )
    catalog.refresh_views()
    return counts


def curate_config(cfg: DictConfig) -> CurateConfig:
    """The curation settings of the Hydra config."""
    section = section_of(cfg.curate)
    parts = {
        "images": ImageConfig,
        "dedup": DedupConfig,
        "labels": LabelConfig,
        "balance": BalanceConfig,
        "captions": CaptionConfig,
        "splits": SplitConfig,
        "clip_filter": ClipFilterConfig,
    }
    settings: dict[str, Any] = {
        name: _dataclass(cls, section[name], f"curate.{name}")
        for name, cls in parts.items()
    }
    settings["splits"] = dataclasses.replace(
        settings["splits"], held_out=list(settings["splits"].held_out)
    )
    settings["evaluation_sets"] = dict(section.get("evaluation_sets") or {})
    settings["processes"] = section.get("processes")
    return CurateConfig(**settings)


def run_curate(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip curate``: downloads -> ``images`` and ``pairs``."""
    config = curate_config(cfg)
    entities = read_table(catalog, "entities", "harvest")
    queries = read_table(catalog, "queries", "queries")
    if cfg.dry_run:
        sys.stdout.write(f"would curate the downloads of {catalog.run_dir}\n")
        return {"dry_run": True}
    counts = curate(catalog.run_dir, entities, queries, config)
    catalog.refresh_views()
    return counts


def run_export(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip export``: pairs -> webdataset shards and the datasheet."""
    section = section_of(cfg.curate)
    config = ExportStageConfig(
        images=_dataclass(ImageConfig, section["images"], "curate.images"),
        resize=_dataclass(ResizeConfig, section["resize"], "curate.resize"),
        shards=_dataclass(ExportConfig, section["shards"], "curate.shards"),
    )
    entities = read_table(catalog, "entities", "harvest")
    if cfg.dry_run:
        sys.stdout.write(f"would export the pairs of {catalog.run_dir}\n")
        return {"dry_run": True}
    settings = OmegaConf.to_container(cfg, resolve=True)
    counts = export(catalog.run_dir, entities, config, settings)
    catalog.refresh_views()
    return counts


def run_train(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip train``: a CLIP model on the run's shards, under DIR/train."""
    from train.trainer import fit  # torch loads only for the stages that need it

    if cfg.dry_run:
        sys.stdout.write(OmegaConf.to_yaml(cfg.train))
        return {"dry_run": True}
    return fit(cfg.train, catalog.run_dir)


def run_evaluate(cfg: DictConfig, catalog: Catalog) -> Counts:
    """``kgclip evaluate``: zero-shot and retrieval; the report in DIR/train."""
    from train.evaluate import run

    if cfg.dry_run:
        sys.stdout.write(OmegaConf.to_yaml(cfg.train.evaluate))
        return {"dry_run": True}
    return run(cfg.train, catalog.run_dir)


STAGES: dict[str, Stage] = {
    "ingest": run_ingest,
    "harvest": run_harvest,
    "queries": run_queries,
    "search": run_search,
    "download": run_download,
    "curate": run_curate,
    "export": run_export,
    "train": run_train,
    "evaluate": run_evaluate,
}
