"""Harvest: every entity under some roots, with the names and facts that later
become search queries and captions.

The work is one SPARQL query per kind of entity (``kg/queries/harvest.rq``),
the same text for the embedded store and for QLever. Its long answer (one row
per fact) is pivoted in DuckDB into one record per entity and root, and the
lineage of each entity is walked from the parent edges. The result is an
Arrow table with the columns of :data:`ENTITY_SCHEMA`.

Lineage rule: an entity may have several parents (taxa often do). Its lineage
is the shortest chain of parents from the root down to it, root and entity
included; among chains of equal length the one through the parent with the
lowest QID number wins, so the same data always gives the same lineage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kg import terms
from kg.backend import EmbeddedGraph, KnowledgeGraph, query_template
from kg.errors import ConfigError

log = logging.getLogger(__name__)

# kind -> (path from entity up to a root, direct parent path, entity kind)
MEMBERSHIP = {
    "classes": ("wdt:P279*", "wdt:P279", "class"),
    "instances": ("wdt:P31/wdt:P279*", "wdt:P31", "instance"),
    "taxa": ("wdt:P171*", "wdt:P171", "taxon"),
}

# Attribute properties harvested by default: colour, has part, has characteristic.
ATTRIBUTES = ("P462", "P527", "P1552")

# Labels of entities outside the harvest are asked for in batches of this many.
LABEL_BATCH = 2000

# Which kind wins when one entity is reached both ways under the same root.
KIND_ORDER = {"class": 0, "taxon": 0, "instance": 1}

# Labels of the common taxon ranks, used where the data lacks the rank's label.
RANK_NAMES = {
    "Q36732": "kingdom", "Q38348": "phylum", "Q37517": "class", "Q36602": "order",
    "Q35409": "family", "Q34740": "genus", "Q7432": "species",
    "Q68947": "subspecies", "Q2136103": "superfamily", "Q164280": "subfamily",
    "Q227936": "tribe", "Q5867959": "suborder", "Q5867051": "subclass",
    "Q713623": "clade", "Q146481": "domain", "Q767728": "variety",
    "Q2752679": "subkingdom", "Q1153785": "subphylum", "Q3504061": "superclass",
    "Q5868144": "superorder", "Q3965313": "subgenus", "Q4886": "cultivar",
}  # fmt: skip

ENTITY_SCHEMA = pa.schema(
    [
        ("qid", pa.string()),
        ("label", pa.string()),
        ("description", pa.string()),
        ("aliases", pa.list_(pa.string())),
        ("kind", pa.string()),
        ("root", pa.string()),
        ("parents", pa.list_(pa.string())),
        ("lineage", pa.list_(pa.string())),
        ("rank", pa.string()),
        ("rank_qid", pa.string()),
        ("taxon_name", pa.string()),
        (
            "common_names",
            pa.list_(pa.struct([("language", pa.string()), ("name", pa.string())])),
        ),
        ("images", pa.list_(pa.string())),
        ("sitelinks", pa.int64()),
        ("parent_labels", pa.list_(pa.string())),
        (
            "attributes",
            pa.list_(
                pa.struct(
                    [
                        ("property", pa.string()),
                        ("value", pa.string()),
                        ("label", pa.string()),
                    ]
                )
            ),
        ),
        ("source", pa.string()),
        ("snapshot", pa.string()),
    ]
)


@dataclass
class HarvestConfig:
    """What to harvest; see ``conf/harvest/*.yaml``."""

    kind: str = "classes"
    roots: list[str] = field(default_factory=list)
    instances: bool = False
    exclude: list[str] = field(default_factory=list)
    min_sitelinks: int = 0
    limit: int | None = None
    languages: list[str] = field(default_factory=lambda: ["en"])
    # Properties whose values become attribute queries ("white horse").
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting."""
        if self.kind not in ("classes", "taxa"):
            raise ConfigError(
                f"harvest.kind={self.kind!r} is not known; use classes or taxa "
                "(or harvest=world for the 21 roots of the paper)"
            )
        if not self.roots:
            raise ConfigError(
                "harvest.roots is empty; name at least one QID, e.g. [Q5113]"
            )
        for qid in [*self.roots, *self.exclude]:
            if not (qid[:1] == "Q" and qid[1:].isdigit()):
                raise ConfigError(
                    f"{qid!r} in harvest.roots/exclude is not a Wikidata item id "
                    "such as Q42889"
                )
        for prop in self.attributes:
            if not (prop[:1] == "P" and prop[1:].isdigit()):
                raise ConfigError(
                    f"{prop!r} in harvest.attributes is not a Wikidata property id "
                    "such as P462"
                )
        if not self.languages:
            raise ConfigError(
                "harvest.languages is empty; name at least one, e.g. [en]"
            )


def build_queries(config: HarvestConfig) -> list[tuple[str, str]]:
    """The filled SPARQL of a harvest, as (entity kind, query) pairs.

    One query per root and kind of membership: some engines (Virtuoso) cannot
    start a transitive path from several roots at once, and smaller answers
    page better on large endpoints.
    """
    config.validate()
    memberships = ["taxa"] if config.kind == "taxa" else ["classes"]
    if config.instances:
        memberships.append("instances")
    languages = ", ".join(f'"{lang.lower()}"' for lang in config.languages)
    queries = []
    for membership in memberships:
        member_path, parent_path, kind = MEMBERSHIP[membership]
        exclusions = ""
        if config.exclude:
            exclusions = query_template("exclusions").substitute(
                excluded=" ".join(f"wd:{q}" for q in config.exclude),
                member_path=member_path,
            )
        taxon_facts = ""
        if config.kind == "taxa":
            taxon_facts = query_template("taxon_facts").substitute(languages=languages)
        attribute_facts = "".join(
            query_template("attribute_facts").substitute(property=prop)
            for prop in config.attributes
        )
        for root in config.roots:
            query = query_template("harvest").substitute(
                roots=f"wd:{root}",
                member_path=member_path,
                parent_path=parent_path,
                exclusions=exclusions,
                languages=languages,
                taxon_facts=taxon_facts,
                attribute_facts=attribute_facts,
            )
            queries.append((kind, query))
    return queries


def harvest(
    graph: KnowledgeGraph, config: HarvestConfig, snapshot: str | None
) -> pa.Table:
    """Harvest the entities under ``config.roots`` from ``graph``.

    Args:
        graph: the embedded store or a SPARQL endpoint.
        config: roots, kind, exclusions, limits.
        snapshot: the KG snapshot date to record; asked of the graph if None.

    Returns:
        One row per entity and root, columns as in :data:`ENTITY_SCHEMA`.
    """
    snapshot = snapshot or graph.snapshot()
    con, facts = _fact_sources(graph, build_queries(config))
    entities = _pivot(con, facts, config)
    log.info("harvest found %d entity rows", entities.num_rows)
    entities = _attach_lineage(entities)
    entities = _add_names(graph, entities, config)
    entities = _select(con, entities, config)
    rows = entities.num_rows
    for name, value in (("source", graph.source), ("snapshot", snapshot)):
        column = pa.repeat(pa.scalar(value, pa.string()), rows)
        entities = entities.append_column(name, column)
    return entities.select(ENTITY_SCHEMA.names).cast(ENTITY_SCHEMA)


def _fact_sources(
    graph: KnowledgeGraph, queries: list[tuple[str, str]]
) -> tuple[duckdb.DuckDBPyConnection, list[tuple[str, str]]]:
    """A DuckDB connection and, per query, the SQL that reads its fact rows.

    The embedded store answers inside its own connection, so the pivot runs
    in the same statement as the query and the long answer (eight rows per
    entity) never becomes Python or Arrow data. An endpoint's answers are
    registered as Arrow tables on a fresh connection.
    """
    if isinstance(graph, EmbeddedGraph):
        return graph.store.con, [
            (kind, f"({graph.select_sql(q)})") for kind, q in queries
        ]
    con = duckdb.connect()
    sources = []
    for number, (kind, query) in enumerate(queries):
        answer = graph.select(query)
        log.info("%s query answered %d fact rows", kind, answer.num_rows)
        con.register(f"facts_{number}", answer)
        sources.append((kind, f"facts_{number}"))
    return con, sources


def _pivot(
    con: duckdb.DuckDBPyConnection,
    facts: list[tuple[str, str]],
    config: HarvestConfig,
) -> pa.Table:
    """One row per (root, entity) from the long fact rows, in DuckDB.

    An entity reached both as a class and as an instance of a class under the
    same root is kept once, as a class. Lists are sorted after grouping
    (``list_sort``), which is much cheaper than ordered aggregates. Rows come
    ordered by root, then QID number.

    The fact rows are sorted by entity before grouping. They arrive one kind
    of fact after another, each kind touching every entity, which defeats the
    thread-local pre-aggregation of DuckDB's hash aggregate; sorted, each
    entity's facts meet in one place and the grouping costs a fraction.
    """
    parts = [
        f"SELECT *, {KIND_ORDER[kind]} AS kind_order, '{kind}' AS kind FROM {source}"
        for kind, source in facts
    ]
    kept = f"({' UNION ALL '.join(parts)})"
    if len({kind for kind, _ in facts}) > 1:
        kept = f"""(SELECT * FROM {kept} QUALIFY
            kind_order = min(kind_order) OVER (PARTITION BY root, item))"""

    languages = [lang.lower() for lang in config.languages]
    qid = f"replace({{}}, '{terms.WD}', '')"
    # Values computed from a fact go inside CASE: DuckDB evaluates an
    # aggregate's argument on every row, its FILTER only selects afterwards.
    attribute = "key LIKE 'attribute:%'"
    return con.sql(
        f"""
        SELECT
            {qid.format("item")} AS qid,
            arg_min(value, lang_pos) FILTER (key = 'label') AS label,
            arg_min(value, lang_pos) FILTER (key = 'description') AS description,
            list_sort(coalesce(list(value) FILTER (key = 'alias'), [])) AS aliases,
            any_value(kind) AS kind,
            {qid.format("root")} AS root,
            list_sort(coalesce(list(
                CASE WHEN key = 'parent' THEN {qid.format("value")} END
            ) FILTER (key = 'parent'), [])) AS parents,
            {qid.format("min(value) FILTER (key = 'rank')")} AS rank_qid,
            min(value) FILTER (key = 'taxon_name') AS taxon_name,
            list_transform(list_sort(coalesce(list(
                CASE WHEN key = 'common_name'
                THEN {{'p': lang_pos, 'language': lang, 'name': value}} END
            ) FILTER (key = 'common_name'), [])),
                lambda c: {{'language': c.language, 'name': c.name}}) AS common_names,
            list_sort(coalesce(list(value) FILTER (key = 'image'), [])) AS images,
            max(
                CASE WHEN key = 'sitelinks' THEN TRY_CAST(value AS BIGINT) END
            ) AS sitelinks,
            list_sort(coalesce(list(
                CASE WHEN {attribute} THEN {{
                    'property': substr(key, 11), 'value': {qid.format("value")}
                }} END
            ) FILTER ({attribute}), [])) AS attributes
        FROM (
            SELECT *, coalesce(list_position(?, lang), 0) AS lang_pos FROM {kept}
            ORDER BY root, item
        )
        GROUP BY root, item
        ORDER BY root, TRY_CAST(substr(qid, 2) AS BIGINT), qid
        """,
        params=[languages],
    ).to_arrow_table()


def _attach_lineage(entities: pa.Table) -> pa.Table:
    """Add ``lineage``: the QIDs from the root down to each entity.

    The walk runs level by level on row numbers in NumPy: each level is one
    pass over the parent edges, so 100,000 taxa 40 levels deep take a few
    hundredths of a second.
    """
    qids = entities.column("qid").combine_chunks()
    roots = entities.column("root").combine_chunks()
    parents = entities.column("parents").combine_chunks()
    num_rows = len(qids)

    # Parent edges between members reached from the same root, as row numbers.
    owners = pc.list_parent_indices(parents)
    flat_parents = pc.list_flatten(parents)
    if roots.null_count == 0 and pc.count_distinct(roots).as_py() <= 1:
        # One root: a QID alone names a row.
        found = pc.index_in(pa.concat_arrays([flat_parents, roots]), value_set=qids)
        parent_rows = found.slice(0, len(flat_parents))
        root_rows = found.slice(len(flat_parents))
    else:
        keys = pc.binary_join_element_wise(roots, qids, "|")
        edge_keys = pc.binary_join_element_wise(roots.take(owners), flat_parents, "|")
        parent_rows = pc.index_in(edge_keys, value_set=keys)
        root_keys = pc.binary_join_element_wise(roots, roots, "|")
        root_rows = pc.index_in(root_keys, value_set=keys)
    child = owners.to_numpy(zero_copy_only=False).astype(np.int64)
    parent = parent_rows.to_numpy(zero_copy_only=False)
    inside = ~np.isnan(parent) if parent.dtype.kind == "f" else parent >= 0
    child, parent = child[inside], parent[inside].astype(np.int64)
    child, parent = child[child != parent], parent[child != parent]

    numbers = _qid_numbers(qids)
    root_row = root_rows.to_numpy(zero_copy_only=False)
    root_row = np.where(np.isnan(root_row), -1, root_row).astype(np.int64)
    depth, chosen = _walk_down(
        num_rows, np.unique(root_row[root_row >= 0]), child, parent, numbers
    )

    # Rows no parent edge reaches hang directly below their root, if it is a row.
    unreached = depth < 0
    chosen[unreached] = root_row[unreached]
    depth[unreached] = np.where(root_row[unreached] >= 0, 1, 0)
    flat, offsets = _chains(depth, chosen)
    values = qids.take(pa.array(flat))
    lineage = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    return entities.append_column("lineage", lineage)


def _walk_down(
    num_rows: int,
    start: np.ndarray,
    child: np.ndarray,
    parent: np.ndarray,
    numbers: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Depth and chosen parent of each row, level by level from the roots.

    A row first reached at depth d takes, among its parents at depth d-1, the
    one with the lowest QID number. Unreached rows keep depth -1.
    """
    depth = np.full(num_rows, -1, np.int64)
    chosen = np.full(num_rows, -1, np.int64)
    depth[start] = 0
    level, frontier = 0, np.zeros(num_rows, bool)
    frontier[start] = True
    while frontier.any():
        step = frontier[parent] & (depth[child] < 0)
        kids, dads = child[step], parent[step]
        order = np.lexsort((numbers[dads], kids))
        kids, dads = kids[order], dads[order]
        first = np.ones(len(kids), bool)
        first[1:] = kids[1:] != kids[:-1]
        level += 1
        depth[kids[first]] = level
        chosen[kids[first]] = dads[first]
        frontier[:] = False
        frontier[kids[first]] = True
    return depth, chosen


def _chains(depth: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's chain of chosen parents, root first, as flat rows + offsets.

    Chains are filled from their ends: step k writes the k-th ancestor of
    every row at least k deep, so the work is the total length of the chains.
    """
    lengths = depth + 1
    offsets = np.zeros(len(depth) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(offsets[-1], np.int64)
    ends = offsets[1:] - 1
    rows = np.arange(len(depth))
    above, step = rows, 0
    while len(rows):
        flat[ends[rows] - step] = above
        deeper = depth[rows] > step
        rows, above = rows[deeper], chosen[above[deeper]]
        step += 1
    return flat, offsets


def _qid_numbers(qids: pa.Array) -> np.ndarray:
    """The number of each QID (Q42 -> 42); 0 for anything else."""
    digits = pc.utf8_slice_codeunits(qids, 1)
    valid = pc.match_substring_regex(qids, r"^Q[0-9]{1,18}$")
    numbers = pc.cast(pc.if_else(valid, digits, "0"), pa.int64())
    return numbers.to_numpy(zero_copy_only=False)


def _labels_of(
    graph: KnowledgeGraph, qids: list[str], config: HarvestConfig
) -> dict[str, str]:
    """Labels of entities outside the harvest, in the preferred language."""
    names: dict[str, str] = {}
    languages = ", ".join(f'"{lang.lower()}"' for lang in config.languages)
    order = {lang.lower(): i for i, lang in enumerate(config.languages)}
    for start in range(0, len(qids), LABEL_BATCH):
        batch = qids[start : start + LABEL_BATCH]
        query = query_template("labels").substitute(
            items=" ".join(f"wd:{qid}" for qid in batch), languages=languages
        )
        found = graph.select(query).to_pylist()
        # Least preferred first, so that the preferred language is written last.
        for row in sorted(found, key=lambda r: -order.get(r["lang"] or "", 99)):
            names[terms.qid_of(row["item"])] = row["value"]
    return names


def _add_names(
    graph: KnowledgeGraph, entities: pa.Table, config: HarvestConfig
) -> pa.Table:
    """Add ``rank``, ``parent_labels`` and the labels of ``attributes``' values.

    Parents and values are named from the harvested rows first. The graph is
    asked once (per :data:`LABEL_BATCH`) for the ranks and for the QIDs that
    are no harvested row: a harvested row without a label has none in these
    languages. Lookups run on flat Arrow arrays.
    """
    qids = entities.column("qid").combine_chunks()
    labels = entities.column("label").combine_chunks()
    parents = entities.column("parents").combine_chunks()
    attributes = entities.column("attributes").combine_chunks()
    flat_parents = pc.list_flatten(parents)
    flat_attributes = pc.list_flatten(attributes)
    values = flat_attributes.field("value")
    named = pa.concat_arrays([flat_parents, values])

    has_label = pc.is_valid(labels)
    found = pc.index_in(named, value_set=pc.filter(qids, has_label))
    missing = pc.unique(pc.filter(named, pc.is_null(found)))
    unlabelled = pc.filter(qids, pc.invert(has_label))
    outside = pc.filter(missing, pc.invert(pc.is_in(missing, value_set=unlabelled)))
    ranks = pc.unique(entities.column("rank_qid").combine_chunks())
    asked = {q for q in [*outside.to_pylist(), *ranks.to_pylist()] if q and _is_qid(q)}
    extra = _labels_of(graph, sorted(asked), config)
    entities = _name_ranks(entities, extra)

    from_rows = pc.filter(labels, has_label).take(found)
    extra_qids = pa.array(list(extra), pa.string())
    extra_labels = pa.array(list(extra.values()), pa.string())
    from_graph = extra_labels.take(pc.index_in(named, value_set=extra_qids))
    names = pc.coalesce(from_rows, from_graph)
    parent_labels = names.slice(0, len(flat_parents))
    value_labels = names.slice(len(flat_parents))
    # A literal value (a colour given as text, say) is its own label.
    value_labels = pc.if_else(_qid_mask(values), value_labels, values)

    parent_lists = pa.ListArray.from_arrays(_offsets(parents), parent_labels)
    attribute_structs = pa.StructArray.from_arrays(
        [flat_attributes.field("property"), values, value_labels],
        names=["property", "value", "label"],
    )
    attribute_lists = pa.ListArray.from_arrays(_offsets(attributes), attribute_structs)
    entities = entities.drop_columns(["attributes"])
    entities = entities.append_column("parent_labels", parent_lists)
    return entities.append_column("attributes", attribute_lists)


def _name_ranks(entities: pa.Table, labels: dict[str, str]) -> pa.Table:
    """Add ``rank``: the rank's label from the data, else a known name, else QID."""
    rank_qids = entities.column("rank_qid").combine_chunks()
    distinct = [q for q in pc.unique(rank_qids).to_pylist() if q]
    names = [labels[q] if q in labels else RANK_NAMES.get(q, q) for q in distinct]
    keys = pa.array(distinct, pa.string())
    ranks = pa.array(names, pa.string()).take(pc.index_in(rank_qids, value_set=keys))
    return entities.append_column("rank", ranks)


def _offsets(lists: pa.ListArray) -> pa.Array:
    """The offsets of a list array, starting at 0 even when it is a slice."""
    offsets = lists.offsets
    return pc.subtract(offsets, offsets[0])


def _qid_mask(values: pa.Array) -> pa.Array:
    return pc.match_substring_regex(values, r"^Q[0-9]+$")


def _is_qid(value: str) -> bool:
    return value[:1] == "Q" and value[1:].isdigit()


def _select(
    con: duckdb.DuckDBPyConnection, entities: pa.Table, config: HarvestConfig
) -> pa.Table:
    """Apply min_sitelinks and limit, keeping the order of the rows.

    Only the sort keys go through DuckDB; the wide rows are then taken by
    index, which is much cheaper than sorting rows with list columns.
    """
    if config.min_sitelinks <= 0 and config.limit is None:
        return entities
    keys = entities.select(["qid", "root", "sitelinks"]).append_column(
        "row", pa.array(range(entities.num_rows), pa.int64())
    )
    con.register("keys", keys)
    where = f"coalesce(sitelinks, 0) >= {int(config.min_sitelinks)}"
    limit = f"LIMIT {int(config.limit)}" if config.limit is not None else ""
    number = "TRY_CAST(substr(qid, 2) AS BIGINT)"
    rows = con.sql(
        f"""
        SELECT row FROM (
            SELECT * FROM keys WHERE {where}
            ORDER BY coalesce(sitelinks, 0) DESC, {number}, qid, root {limit}
        ) ORDER BY row
        """
    ).to_arrow_table()
    return entities.take(rows.column("row"))
