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
import pyarrow as pa
import pyarrow.compute as pc

from kg import terms
from kg.backend import KnowledgeGraph, query_template
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
    # Known shortcoming: 100,000 taxa take about 1.9 s, not the 1 s aimed at.
    # The long answer is decoded into strings by the backend (a third of
    # the time), then pivoted and walked in a second pass. For the embedded
    # store, pivoting inside the same DuckDB statement on stored terms would
    # skip the decoding of most cells; it is left for when harvests of whole
    # kingdoms make it matter.
    snapshot = snapshot or graph.snapshot()
    facts = []
    for kind, query in build_queries(config):
        answer = graph.select(query)
        log.info("%s query answered %d fact rows", kind, answer.num_rows)
        facts.append((kind, answer))

    con = duckdb.connect()
    entities = _pivot(con, facts, config)
    entities = _attach_lineage(entities)
    entities = _name_ranks(graph, entities, config)
    entities = _name_parents_and_attributes(graph, entities, config)
    entities = _select(con, entities, config)
    rows = entities.num_rows
    source = pa.array([graph.source] * rows, pa.string())
    entities = entities.append_column("source", source)
    entities = entities.append_column(
        "snapshot", pa.array([snapshot] * rows, pa.string())
    )
    return entities.select(ENTITY_SCHEMA.names).cast(ENTITY_SCHEMA)


def _pivot(
    con: duckdb.DuckDBPyConnection,
    facts: list[tuple[str, pa.Table]],
    config: HarvestConfig,
) -> pa.Table:
    """One row per (root, entity) from the long fact rows, in DuckDB.

    An entity reached both as a class and as an instance of a class under the
    same root is kept once, as a class. Lists are sorted after grouping
    (``list_sort``), which is much cheaper than ordered aggregates.
    """
    parts = []
    for number, (kind, table) in enumerate(facts):
        con.register(f"facts_{number}", table)
        parts.append(
            f"SELECT *, {KIND_ORDER[kind]} AS kind_order, '{kind}' AS kind "
            f"FROM facts_{number}"
        )
    kept = f"({' UNION ALL '.join(parts)})"
    if len({kind for kind, _ in facts}) > 1:
        kept = f"""(SELECT * FROM {kept} QUALIFY
            kind_order = min(kind_order) OVER (PARTITION BY root, item))"""

    languages = [lang.lower() for lang in config.languages]
    qid = f"replace({{}}, '{terms.WD}', '')"
    return con.sql(
        f"""
        SELECT
            {qid.format("item")} AS qid,
            arg_min(value, lang_pos) FILTER (key = 'label') AS label,
            arg_min(value, lang_pos) FILTER (key = 'description') AS description,
            list_sort(coalesce(list(value) FILTER (key = 'alias'), [])) AS aliases,
            any_value(kind) AS kind,
            {qid.format("root")} AS root,
            list_sort(coalesce(list({qid.format("value")}) FILTER (key = 'parent'),
                [])) AS parents,
            {qid.format("min(value) FILTER (key = 'rank')")} AS rank_qid,
            min(value) FILTER (key = 'taxon_name') AS taxon_name,
            list_transform(list_sort(coalesce(
                list({{'p': lang_pos, 'language': lang, 'name': value}})
                FILTER (key = 'common_name'), [])),
                lambda c: {{'language': c.language, 'name': c.name}}) AS common_names,
            list_sort(coalesce(list(value) FILTER (key = 'image'), [])) AS images,
            max(TRY_CAST(value AS BIGINT)) FILTER (key = 'sitelinks') AS sitelinks,
            list_sort(coalesce(list({{
                'property': substr(key, 11), 'value': {qid.format("value")}
            }}) FILTER (key LIKE 'attribute:%'), [])) AS attributes
        FROM (
            SELECT *, coalesce(list_position(?, lang), 0) AS lang_pos FROM {kept}
        )
        GROUP BY root, item
        """,
        params=[languages],
    ).to_arrow_table()


def _attach_lineage(entities: pa.Table) -> pa.Table:
    """Add ``lineage``: the QIDs from the root down to each entity.

    The walk runs on row numbers, not QID strings, and the list column is
    built from flat arrays; 100,000 taxa take a few tenths of a second.
    """
    qids = entities.column("qid").combine_chunks()
    names = qids.to_pylist()
    roots = entities.column("root").to_pylist()
    parents = entities.column("parents").combine_chunks()
    owners = pc.list_parent_indices(parents).to_pylist()
    parent_qids = pc.list_flatten(parents).to_pylist()

    # Children of each row, among the members reached from the same root.
    row_of = {key: row for row, key in enumerate(zip(roots, names, strict=True))}
    children: list[list[int]] = [[] for _ in names]
    for child, parent in zip(owners, parent_qids, strict=True):
        row = row_of.get((roots[child], parent))
        if row is not None and row != child:
            children[row].append(child)

    numbers = [_qid_number(qid) for qid in names]
    chains: list[list[int] | None] = [None] * len(names)
    for root in set(roots):
        if (root, root) in row_of:
            _walk_down(row_of[root, root], children, numbers, chains)

    flat: list[int] = []
    offsets = [0]
    for row, chain in enumerate(chains):
        if chain is None:  # not reached by parent edges: root, then itself
            root_row = row_of.get((roots[row], roots[row]))
            chain = [row] if root_row is None else [root_row, row]
        flat += chain
        offsets.append(len(flat))
    values = qids.take(pa.array(flat, pa.int64()))
    lineage = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    return entities.append_column("lineage", lineage)


def _walk_down(
    root: int,
    children: list[list[int]],
    numbers: list[int],
    chains: list[list[int] | None],
) -> None:
    """Level by level from the root row: each row's shortest chain of parents.

    A row first reached at depth d takes, among its parents at depth d-1, the
    one with the lowest QID number. Fills ``chains`` with lists of rows.
    """
    chains[root] = [root]
    level = [root]
    while level:
        chosen: dict[int, int] = {}
        for parent in level:
            for child in children[parent]:
                if chains[child] is not None:
                    continue
                best = chosen.get(child)
                if best is None or numbers[parent] < numbers[best]:
                    chosen[child] = parent
        for child, parent in chosen.items():
            chains[child] = [*chains[parent], child]  # type: ignore[misc]
        level = list(chosen)


def _qid_number(qid: str) -> int:
    return int(qid[1:]) if qid[1:].isdigit() else 0


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


def _name_ranks(
    graph: KnowledgeGraph, entities: pa.Table, config: HarvestConfig
) -> pa.Table:
    """Add ``rank``: the rank's label from the data, else a known name, else QID."""
    rank_qids = sorted({q for q in entities.column("rank_qid").to_pylist() if q})
    names = {qid: RANK_NAMES.get(qid, qid) for qid in rank_qids}
    names.update(_labels_of(graph, rank_qids, config))
    ranks = [
        names.get(q) if q else None for q in entities.column("rank_qid").to_pylist()
    ]
    return entities.append_column("rank", pa.array(ranks, pa.string()))


def _name_parents_and_attributes(
    graph: KnowledgeGraph, entities: pa.Table, config: HarvestConfig
) -> pa.Table:
    """Add ``parent_labels`` and the labels of ``attributes``' values.

    Names come from the harvested rows first; the graph is asked only for the
    parents and values outside the harvest. Lookups run on flat Arrow arrays.
    """
    parents = entities.column("parents").combine_chunks()
    attributes = entities.column("attributes").combine_chunks()
    flat_parents = pc.list_flatten(parents)
    flat_attributes = pc.list_flatten(attributes)
    values = flat_attributes.field("value")

    # Every QID named in the harvest, with its label where the rows have one.
    labelled = entities.filter(pc.is_valid(entities.column("label")))
    known = pc.unique(labelled.column("qid").combine_chunks())
    wanted = pc.unique(pa.concat_arrays([flat_parents, values]))
    outside = pc.filter(wanted, pc.invert(pc.is_in(wanted, value_set=known)))
    outside_qids = [q for q in outside.to_pylist() if q and _is_qid(q)]
    extra = _labels_of(graph, sorted(outside_qids), config)

    names_qid = pa.concat_arrays(
        [labelled.column("qid").combine_chunks(), pa.array(list(extra), pa.string())]
    )
    names_label = pa.concat_arrays(
        [
            labelled.column("label").combine_chunks(),
            pa.array(list(extra.values()), pa.string()),
        ]
    )
    parent_labels = names_label.take(pc.index_in(flat_parents, value_set=names_qid))
    value_labels = names_label.take(pc.index_in(values, value_set=names_qid))
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
    """Apply min_sitelinks and limit, and order rows by root then QID number.

    Only the sort keys go through DuckDB; the wide rows are then taken by
    index, which is much cheaper than sorting rows with list columns.
    """
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
        ) ORDER BY root, {number}, qid
        """
    ).to_arrow_table()
    return entities.take(rows.column("row"))
