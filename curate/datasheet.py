"""Datasheet: what a run's dataset holds and how it was made, in one Markdown page.

``RUN_DIR/datasheet.md`` states the knowledge-graph source and snapshot, the
engines, the counts after each curation step, every reason a row was dropped,
the splits, images per entity (summary, top and bottom) and per rank, the
licenses, and the config used. Plots of the distributions are PNG files in
``RUN_DIR/datasheet/``, linked from the page. The page holds no times or
machine names, so the same run gives the same page.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from curate.export import ordered_sources
from curate.splits import SPLITS

log = logging.getLogger(__name__)

PLOT_DIR = "datasheet"
TOP_ENTITIES = 10  # entities listed at each end of the images-per-entity table
TOP_BARS = 25  # bars at most in a bar chart; the rest are summed as "other"
NO_VALUE = "(none)"


def write_datasheet(
    run_dir: Path,
    *,
    entities: pa.Table,
    pairs: pa.Table,
    images: pa.Table | None,
    counts: Mapping[str, int],
    drops: Mapping[str, int],
    config: Any,
) -> Path:
    """Write ``run_dir/datasheet.md`` and its plots; return the page's path.

    Args:
        run_dir: the run directory.
        entities: the harvest (``kg.harvest.ENTITY_SCHEMA``).
        pairs: the exported pairs (:data:`curate.records.PAIRS_SCHEMA`).
        images: the images table (:data:`curate.records.IMAGES_SCHEMA`), for
            statuses and formats; None leaves that section out.
        counts: rows left after each step, in step order, e.g.
            ``{"downloads ok": ..., "decoded": ..., "after dedup": ...}``.
        drops: rows dropped, by reason.
        config: the config used (a mapping, a dataclass or nested ones).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stats = _gather(pairs)
    plots = _draw_plots(run_dir, stats)
    sections = [
        [f"# Datasheet: {run_dir.name}", ""],
        _sources(entities, stats),
        _counts(counts, drops),
        _splits(stats),
        _images(images),
        _per_entity(entities, stats, plots),
        _per_rank(stats, plots),
        _licenses(stats, plots),
        _config(config),
    ]
    text = "\n".join(line for section in sections for line in section)
    path = run_dir / "datasheet.md"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    partial.replace(path)
    log.info("datasheet written to %s with %d plots", path, len(plots))
    return path


@dataclasses.dataclass
class _Stats:
    """What the page and the plots count over the pairs, gathered in one pass."""

    images_per_entity: Counter[str]
    labels: dict[str, str]
    ranks: dict[str, tuple[int, int]]  # rank -> (entities, images)
    licenses: Counter[str]  # per image, its first source's license
    engines: dict[str, tuple[int, int]]  # engine -> (images, results)
    splits: dict[str, tuple[int, int, int]]  # split -> (pairs, images, entities)


def _gather(pairs: pa.Table) -> _Stats:
    columns = ["image_id", "qid", "label", "rank", "kind", "sources", "split"]
    rows = pairs.select(columns).to_pylist()
    entity_images: dict[str, set[str]] = {}
    rank_of: dict[str, str] = {}
    first_license: dict[str, str] = {}
    engine_images: dict[str, set[str]] = {}
    engine_results: Counter[str] = Counter()
    split_rows: dict[str, list[tuple[str, str]]] = {}
    labels: dict[str, str] = {}
    for row in rows:
        image_id, qid = row["image_id"], row["qid"]
        entity_images.setdefault(qid, set()).add(image_id)
        labels.setdefault(qid, row["label"] or "")
        rank_of.setdefault(qid, row["rank"] or f"({row['kind'] or 'no rank'})")
        sources = ordered_sources(row["sources"])
        if sources:
            first_license.setdefault(image_id, sources[0].get("license") or NO_VALUE)
        for source in sources:
            engine = source.get("engine") or NO_VALUE
            engine_images.setdefault(engine, set()).add(image_id)
            engine_results[engine] += 1
        split_rows.setdefault(row["split"] or NO_VALUE, []).append((image_id, qid))

    per_entity = Counter({qid: len(ids) for qid, ids in entity_images.items()})
    return _Stats(
        images_per_entity=per_entity,
        labels=labels,
        ranks=_rank_totals(rank_of, entity_images),
        licenses=Counter(first_license.values()),
        engines={e: (len(ids), engine_results[e]) for e, ids in engine_images.items()},
        splits={
            split: (len(found), len({i for i, _ in found}), len({q for _, q in found}))
            for split, found in split_rows.items()
        },
    )


def _rank_totals(
    rank_of: Mapping[str, str], entity_images: Mapping[str, set[str]]
) -> dict[str, tuple[int, int]]:
    """rank -> (entities, distinct images), over entities that have images."""
    entities: Counter[str] = Counter(rank_of.values())
    images: dict[str, set[str]] = {}
    for qid, rank in rank_of.items():
        images.setdefault(rank, set()).update(entity_images[qid])
    return {rank: (entities[rank], len(ids)) for rank, ids in images.items()}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table, cells escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return [*lines, ""]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _by_count(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Largest first; ties by name, so the page does not depend on input order."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _sources(entities: pa.Table, stats: _Stats) -> list[str]:
    kg = Counter(
        (row["source"] or NO_VALUE, row["snapshot"] or NO_VALUE, row["qid"])
        for row in entities.select(["source", "snapshot", "qid"]).to_pylist()
    )
    per_source = Counter((source, snapshot) for source, snapshot, _ in kg)
    engines = sorted(stats.engines.items(), key=lambda item: (-item[1][0], item[0]))
    return [
        "## Sources",
        "",
        "Knowledge graph (entities harvested, per source and snapshot):",
        "",
        *_table(
            ["source", "snapshot", "entities"],
            [(s, d, n) for (s, d), n in sorted(per_source.items())],
        ),
        "Image search (distinct images kept, and search results that found them):",
        "",
        *_table(
            ["engine", "images", "results"],
            [(e, images, results) for e, (images, results) in engines],
        ),
    ]


def _counts(counts: Mapping[str, int], drops: Mapping[str, int]) -> list[str]:
    lines = ["## Counts after each step", ""]
    lines += _table(["step", "count"], list(counts.items()))
    lines += ["### Drops", "", "Rows left out, by reason:", ""]
    if any(drops.values()):
        lines += _table(["reason", "count"], _by_count(drops))
    else:
        lines += ["No rows were dropped.", ""]
    return lines


def _splits(stats: _Stats) -> list[str]:
    order = [*SPLITS, *sorted(set(stats.splits) - set(SPLITS))]
    rows = [(split, *stats.splits[split]) for split in order if split in stats.splits]
    return ["## Splits", "", *_table(["split", "pairs", "images", "entities"], rows)]


def _images(images: pa.Table | None) -> list[str]:
    if images is None:
        return []
    rows = images.select(["status", "reason", "format"]).to_pylist()
    statuses = Counter((r["status"] or NO_VALUE, r["reason"] or "") for r in rows)
    formats = Counter(r["format"] or NO_VALUE for r in rows if r["status"] == "ok")
    status_rows = sorted(statuses.items(), key=lambda item: (-item[1], item[0]))
    return [
        "## Images",
        "",
        "Every distinct image downloaded, by status and reason:",
        "",
        *_table(
            ["status", "reason", "images"], [(s, r, n) for (s, r), n in status_rows]
        ),
        "Kept images by format as downloaded:",
        "",
        *_table(["format", "images"], _by_count(formats)),
    ]


def _per_entity(
    entities: pa.Table, stats: _Stats, plots: Mapping[str, str]
) -> list[str]:
    harvested = set(entities.column("qid").to_pylist())
    counts = list(stats.images_per_entity.values())
    lines = [
        "## Images per entity",
        "",
        f"- entities harvested: {len(harvested):,}",
        f"- with at least one image: {len(stats.images_per_entity):,}",
        f"- without images: {len(harvested - set(stats.images_per_entity)):,}",
    ]
    if counts:
        lines += [
            f"- images per entity with images: min {min(counts):,}, "
            f"median {statistics.median(counts):,.1f}, "
            f"mean {statistics.fmean(counts):,.2f}, max {max(counts):,}",
        ]
    lines += ["", *_plot_link(plots, "images_per_entity", "Images per entity")]

    ranked = _by_count(stats.images_per_entity)
    header = ["entity", "label", "images"]
    rows = [(qid, stats.labels.get(qid, ""), n) for qid, n in ranked]
    if len(rows) <= 2 * TOP_ENTITIES:
        return [*lines, "### Every entity with images", "", *_table(header, rows)]
    lines += ["### Most images", "", *_table(header, rows[:TOP_ENTITIES])]
    lines += ["### Fewest images", "", *_table(header, rows[-TOP_ENTITIES:][::-1])]
    return lines


def _per_rank(stats: _Stats, plots: Mapping[str, str]) -> list[str]:
    rows = sorted(stats.ranks.items(), key=lambda item: (-item[1][1], item[0]))
    return [
        "## Per rank",
        "",
        "Entities with images and their distinct images, by taxon rank (the kind "
        "in parentheses for entities without a rank):",
        "",
        *_table(["rank", "entities", "images"], [(r, e, i) for r, (e, i) in rows]),
        *_plot_link(plots, "per_rank", "Images per rank"),
    ]


def _licenses(stats: _Stats, plots: Mapping[str, str]) -> list[str]:
    return [
        "## Licenses",
        "",
        "Each image counted once, with the license its best-ranked source states "
        f"({NO_VALUE} where it states none):",
        "",
        *_table(["license", "images"], _by_count(stats.licenses)),
        *_plot_link(plots, "licenses", "Images per license"),
    ]


def _config(config: Any) -> list[str]:
    text = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    return ["## Configuration", "", "```yaml", text.rstrip("\n"), "```", ""]


def _plain(value: Any) -> Any:
    """Nested mappings, dataclasses and sequences as plain YAML-safe values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_plain(item) for item in items]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _plot_link(plots: Mapping[str, str], name: str, title: str) -> list[str]:
    if name not in plots:
        return []  # nothing to draw, or matplotlib is missing (logged)
    return [f"![{title}]({plots[name]})", ""]


def _draw_plots(run_dir: Path, stats: _Stats) -> dict[str, str]:
    """Draw the distributions as PNG files; name -> path relative to ``run_dir``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: the datasheet has no plots")
        return {}

    folder = run_dir / PLOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    bars = {
        "per_rank": ("Images per rank", {r: i for r, (_, i) in stats.ranks.items()}),
        "licenses": ("Images per license", dict(stats.licenses)),
    }
    drawn: dict[str, str] = {}
    # Figures without pyplot: no global backend switch, nothing left open.
    if stats.images_per_entity:
        figure = Figure(figsize=(7, 4))
        FigureCanvasAgg(figure)
        _histogram(figure, list(stats.images_per_entity.values()))
        drawn["images_per_entity"] = _save(figure, folder / "images_per_entity.png")
    for name, (title, counts) in bars.items():
        if counts:
            figure = Figure(figsize=(7, 4))
            FigureCanvasAgg(figure)
            _bars(figure, title, counts)
            drawn[name] = _save(figure, folder / f"{name}.png")
    return {name: f"{PLOT_DIR}/{Path(path).name}" for name, path in drawn.items()}


def _histogram(figure: Any, counts: list[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    axes = figure.add_subplot()
    # One bar per count where few counts occur, else 50 equal bins.
    span = max(counts) - min(counts) + 1
    bins: Any = [min(counts) - 0.5 + i for i in range(span + 1)] if span <= 50 else 50
    axes.hist(counts, bins=bins, color="#4c72b0", edgecolor="white")
    axes.set_xlabel("images per entity")
    axes.set_ylabel("entities")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    # Long tails are the rule: a log scale keeps the rare heavy entities visible.
    if len(counts) > 50:
        axes.set_yscale("log")
    figure.tight_layout()


def _bars(figure: Any, title: str, counts: Mapping[str, int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ranked = _by_count(counts)
    if len(ranked) > TOP_BARS:
        rest = sum(n for _, n in ranked[TOP_BARS - 1 :])
        ranked = [*ranked[: TOP_BARS - 1], ("other", rest)]
    axes = figure.add_subplot()
    names = [name[:30] for name, _ in ranked][::-1]
    axes.barh(names, [n for _, n in ranked][::-1], color="#4c72b0")
    axes.set_xlabel("images")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    figure.tight_layout()


def _save(figure: Any, path: Path) -> str:
    # No "Software" text chunk: the file then depends on the data alone.
    figure.savefig(path, dpi=100, metadata={"Software": None})
    return str(path)
