"""Queries: each harvested entity becomes the image-search queries that find it.

An entity's names and facts (label, natural type, scientific name, common
names, aliases, attributes) are filled into format-string templates, one list
per kind of entity (``class``, ``instance``, ``taxon``). The candidates are
normalised and deduplicated, cut to a budget that grows with the entity's
popularity, and sent to every configured engine that takes that kind. A query
asked by several entities is made once: its row lists every QID that asked.

Placeholders (:data:`PLACEHOLDERS`):

- ``{label}``: the entity's label, in the harvest's language.
- ``{parent}``: a term for the entity's natural type, so that "jaguar" is
  searched as an animal and not as a car. Taxa: the nearest ancestor on the
  lineage whose rank is one of ``parent_ranks`` (``class`` by default:
  "mammal", "bird", "insect"), else the harvest's root. Classes and
  instances: the parent on the lineage (the chain of parents up to the root,
  so the parent that belongs to the harvested subtree). Then, for every
  kind, the direct parents in the harvest's order, named from
  ``parent_labels`` where the harvest gives them and from the table's own
  rows otherwise. The first whose name is not already part of the label wins
  ("Homo" adds nothing to "Homo sapiens"); an ancestor whose label is only
  its scientific name is named by its common name where it has one.
- ``{taxon_name}``: the scientific name (taxa).
- ``{common_name}``: each common name in one of ``languages`` (taxa).
- ``{alias}``: each alias.
- ``{attribute}``: the label of each value of the ``attribute_properties``
  (colour, has part, has characteristic), as in "white horse".

A placeholder with several values (aliases, common names, attributes) gives
one query per value; one without a value gives none, so "{label} {parent}"
makes nothing for an entity whose type is unknown.

Languages: common names carry their own language; labels, aliases, parent
terms and attribute labels are taken to be in the first of ``languages`` (the
harvest's preferred language); the scientific name has no language and takes
that of whatever it is combined with. A template that would mix two languages
in one query makes nothing.

Entity images: the pseudo-engine ``commons_files`` (:data:`FILES_ENGINE`)
turns each Commons file of an entity's image (P18) into one row whose text is
the file name, e.g. "Dagestani man and woman.jpg", template ``{file}``; the
engine behind it fetches that file and its description instead of searching.
Those rows take no query budget, want one result each and exclude no terms.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple
from urllib.parse import unquote

import pyarrow as pa

from crawl.records import QUERIES_SCHEMA
from kg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

# Where the settings live in the Hydra config, for error messages.
CONFIG_KEY = "crawl.queries"

KINDS = ("class", "instance", "taxon")

PLACEHOLDERS = {
    "label": "the entity's label",
    "parent": "its natural type: an ancestor at a parent rank, the lineage parent",
    "taxon_name": "its scientific name",
    "common_name": "each common name in one of the languages",
    "alias": "each alias",
    "attribute": "the label of each value of the attribute properties",
}

# The pseudo-engine of entity images (P18): one row per Commons file.
FILES_ENGINE = "commons_files"
FILE_TEMPLATE = "{file}"

# The key of ``excluded_terms`` that holds the terms of engines not named.
DEFAULT_ENGINE = "default"

# Terms the EntityNet paper excluded from web image search.
PAPER_EXCLUDED_TERMS = (
    "drawing", "clipart", "illustration", "cartoon", "vector", "painting",
)  # fmt: skip

# QUERIES_SCHEMA plus ``priority``: the query's best position (0 first) in the
# budget of any entity that asked for it, so a search can go round by round.
QUERY_TABLE_SCHEMA = QUERIES_SCHEMA.append(pa.field("priority", pa.int32()))

# A query that is only a Wikidata id is a missing label, not a name.
WIKIDATA_ID = re.compile(r"[QqPp][0-9]+")

REQUIRED_COLUMNS = ("qid", "label", "kind")


def _default_templates() -> dict[str, list[str]]:
    return {
        "class": ["{label}", "{label} {parent}", "{alias}", "{attribute} {label}"],
        "instance": ["{label}", "{label} {parent}", "{alias}"],
        "taxon": [
            "{label}",
            "{common_name}",
            "{taxon_name}",
            "{label} {parent}",
            "{alias}",
            "{attribute} {label}",
        ],
    }


@dataclass
class QueriesConfig:
    """How entities become queries; see ``conf/crawl/queries.yaml``.

    Template order is priority order: when an entity's budget is smaller than
    its candidates, the earlier templates win.
    """

    templates: dict[str, list[str]] = field(default_factory=_default_templates)
    languages: list[str] = field(default_factory=lambda: ["en"])
    parent_ranks: list[str] = field(default_factory=lambda: ["class"])
    attribute_properties: list[str] = field(
        default_factory=lambda: ["P462", "P527", "P1552"]
    )
    engines: list[str] = field(default_factory=lambda: ["commons", "bing"])
    engine_kinds: dict[str, list[str]] = field(
        default_factory=lambda: {"inaturalist": ["taxon"]}
    )
    engine_templates: dict[str, list[str]] = field(
        default_factory=lambda: {"inaturalist": ["{taxon_name}"]}
    )
    excluded_terms: dict[str, list[str]] = field(
        default_factory=lambda: {
            DEFAULT_ENGINE: list(PAPER_EXCLUDED_TERMS),
            "inaturalist": [],
            "local": [],
        }
    )
    queries_base: int = 3
    queries_per_doubling: float = 1.0
    queries_max: int = 10
    results_base: int = 20
    results_per_doubling: float = 10.0
    results_max: int = 100
    max_per_template: int | None = None
    min_chars: int = 2
    max_chars: int = 100

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> QueriesConfig:
        """The config from a plain mapping (the resolved Hydra section).

        Raises:
            ConfigError: a key is not a setting of this config.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(
                f"{CONFIG_KEY} has unknown keys {unknown}; "
                f"the settings are {sorted(known)}"
            )
        return cls(**dict(section))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting and what to try."""
        self._validate_lists()
        self._validate_templates()
        self._validate_engines()
        if not self.languages or not all(isinstance(x, str) for x in self.languages):
            raise ConfigError(
                f"{CONFIG_KEY}.languages={self.languages!r} must name at least "
                "one language, e.g. [en]; the first is the labels' language"
            )
        for prop in self.attribute_properties:
            if not WIKIDATA_ID.fullmatch(prop) or prop[0] != "P":
                raise ConfigError(
                    f"{prop!r} in {CONFIG_KEY}.attribute_properties is not a "
                    "Wikidata property id such as P462"
                )
        self._validate_budget()

    def _validate_lists(self) -> None:
        """Each value of the mappings is a list (YAML makes `a: b` a string)."""
        lists = {"templates": self.templates, "engine_kinds": self.engine_kinds}
        lists |= {"engine_templates": self.engine_templates}
        lists |= {"excluded_terms": self.excluded_terms}
        for name, mapping in lists.items():
            for key, values in mapping.items():
                if isinstance(values, str) or not isinstance(values, Sequence):
                    raise ConfigError(
                        f"{CONFIG_KEY}.{name}.{key}={values!r} must be a list, "
                        f"e.g. {key}: [{values}]"
                    )

    def _validate_templates(self) -> None:
        for kind, templates in self.templates.items():
            if kind not in KINDS:
                raise ConfigError(
                    f"{CONFIG_KEY}.templates has the kind {kind!r}; "
                    f"the kinds of entity are {list(KINDS)}"
                )
            for template in templates:
                template_placeholders(template)

    def _validate_engines(self) -> None:
        if not self.engines or len(set(self.engines)) != len(self.engines):
            raise ConfigError(
                f"{CONFIG_KEY}.engines={self.engines!r} must name each engine "
                "once, e.g. [commons, bing]"
            )
        for engine, kinds in self.engine_kinds.items():
            if not set(kinds) <= set(KINDS):
                raise ConfigError(
                    f"{CONFIG_KEY}.engine_kinds.{engine}={kinds!r} names a kind "
                    f"that is not one of {list(KINDS)}"
                )
        for templates in self.engine_templates.values():
            for template in templates:
                template_placeholders(template)

    def _validate_budget(self) -> None:
        checks = [
            ("queries_base", self.queries_base >= 1),
            ("queries_max", self.queries_max >= self.queries_base),
            ("queries_per_doubling", self.queries_per_doubling >= 0),
            ("results_base", self.results_base >= 1),
            ("results_max", self.results_max >= self.results_base),
            ("results_per_doubling", self.results_per_doubling >= 0),
            ("min_chars", self.min_chars >= 1),
            ("max_chars", self.max_chars >= self.min_chars),
            ("max_per_template", (self.max_per_template or 1) >= 1),
            ("max_per_template", self.max_per_template != 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(
                    f"{CONFIG_KEY}.{name}={getattr(self, name)!r} is out of range: "
                    "bases and minimums are at least 1, maximums at least the "
                    "base or minimum, growth factors at least 0"
                )


@functools.cache
def template_placeholders(template: str) -> tuple[str, ...]:
    """The distinct placeholders of a template, in order of appearance.

    Raises:
        ConfigError: the template is malformed, has no placeholder, or uses a
            placeholder (or a format spec) that is not known.
    """
    known = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(
            f"template {template!r} in {CONFIG_KEY} is malformed ({error}); "
            f"write placeholders in braces, known: {known}"
        ) from error

    names: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            raise ConfigError(
                f"template {template!r} in {CONFIG_KEY} uses the unknown "
                f"placeholder {{{name}}}; known placeholders: {known}"
            )
        names.append(name)
    if not names:
        raise ConfigError(
            f"template {template!r} in {CONFIG_KEY} has no placeholder and would "
            f"give every entity the same query; use some of {known}"
        )
    return tuple(dict.fromkeys(names))


def query_id(engine: str, language: str | None, text: str) -> str:
    """The stable id of a query: sha1 of engine, language and text, 16 hex digits.

    The text is case-folded first (queries are deduplicated case-insensitively),
    except for Commons file names, whose case matters.
    """
    key = text if engine == FILES_ENGINE else text.casefold()
    digest = hashlib.sha1(f"{engine}\x1f{language or ''}\x1f{key}".encode())
    return digest.hexdigest()[:16]


def normalise(text: str, min_chars: int = 2, max_chars: int = 100) -> str | None:
    """A query text with whitespace collapsed, or None when it is not a query.

    Dropped: texts shorter than ``min_chars`` or longer than ``max_chars``,
    texts without a letter, and bare Wikidata ids such as "Q123".
    """
    text = " ".join(text.split())
    if not min_chars <= len(text) <= max_chars:
        return None
    if WIKIDATA_ID.fullmatch(text) or not any(ch.isalpha() for ch in text):
        return None
    return text


def file_name(image: str) -> str | None:
    """The Commons file name of an image value (a Special:FilePath URL or a name).

    Underscores become spaces and the first letter is upper case, as MediaWiki
    normalises titles, so one file is one query however Wikidata spells it.
    """
    name = unquote(image.rsplit("/", 1)[-1]).replace("_", " ")
    name = " ".join(name.split())
    return f"{name[:1].upper()}{name[1:]}" or None


def entity_budget(sitelinks: int | None, config: QueriesConfig) -> tuple[int, int]:
    """(number of queries, results per query) for an entity with these sitelinks.

    Each grows by its ``*_per_doubling`` for every doubling of 1 + sitelinks,
    from its base up to its max; unknown sitelinks count as 0.
    """
    doublings = math.log2(1 + max(sitelinks or 0, 0))
    num_queries = config.queries_base + int(config.queries_per_doubling * doublings)
    num_results = config.results_base + int(config.results_per_doubling * doublings)
    return min(num_queries, config.queries_max), min(num_results, config.results_max)


def build_queries(entities: pa.Table, config: QueriesConfig) -> pa.Table:
    """The search queries of harvested entities.

    Args:
        entities: the harvest's table (``entities.parquet``); ``parent_labels``
            and ``attributes`` are used where present.
        config: templates, languages, engines and budget.

    Returns:
        One row per distinct (engine, language, case-folded text), with the
        columns of :data:`QUERY_TABLE_SCHEMA`. Rows come in entity order (QID
        number), then the entity's priority, then engine order, so the same
        input gives the same table.

    Raises:
        ConfigError: a setting is invalid (an unknown placeholder, say).
        InputError: the table lacks a column every harvest writes.
    """
    # Known shortcoming: entities are handled one by one in Python, about 4.5 s
    # per 100,000 entity rows (measured on 111,000). For a harvest of millions
    # that is minutes, which is tolerable because the stage runs once per
    # partition of the entities, in parallel. Filling templates column-wise
    # in Arrow (one pass per template) would make it several times faster.
    config.validate()
    rows = _entity_rows(entities)
    names = _Names.of(rows, config.languages[0].lower())

    collector = _Collector()
    num_entities = num_without = 0
    for qid, group in itertools.groupby(rows, key=lambda row: row["qid"]):
        before = collector.num_additions
        _add_entity(collector, qid, list(group), names, config)
        num_entities += 1
        num_without += collector.num_additions == before

    queries = collector.table(config)
    counts = summarize(queries)
    log.info(
        "queries entities=%d without_queries=%d %s",
        num_entities,
        num_without,
        " ".join(f"{key}={value}" for key, value in counts.items()),
    )
    return queries


def summarize(queries: pa.Table) -> dict[str, int]:
    """Counts of a queries table for the summary line and ``stage_runs``: rows,
    distinct texts, rows shared by several entities, entities asking, rows per
    engine."""
    engines = queries.column("engine").to_pylist()
    entities = queries.column("entities").to_pylist()
    counts = {
        "rows": queries.num_rows,
        "texts": len({t.casefold() for t in queries.column("text").to_pylist()}),
        "shared": sum(len(qids) > 1 for qids in entities),
        "entities_with_queries": len({qid for qids in entities for qid in qids}),
    }
    for engine in sorted(set(engines)):
        counts[f"rows_{engine}"] = engines.count(engine)
    return counts


# Columns read from the entities table; all but REQUIRED_COLUMNS may be absent.
USED_COLUMNS = (
    "qid", "label", "kind", "root", "aliases", "parents", "lineage", "rank",
    "rank_qid", "taxon_name", "common_names", "images", "sitelinks",
    "parent_labels", "attributes",
)  # fmt: skip


def _entity_rows(entities: pa.Table) -> list[dict[str, Any]]:
    """The rows that name an entity, sorted by QID number, then root, then kind."""
    missing = [name for name in REQUIRED_COLUMNS if name not in entities.column_names]
    if missing:
        raise InputError(
            f"the entities table lacks the columns {missing}; it is not the "
            "output of `kgclip harvest`, or an old one: run the harvest again"
        )
    present = [name for name in USED_COLUMNS if name in entities.column_names]
    rows = [row for row in entities.select(present).to_pylist() if row["qid"]]
    rows.sort(
        key=lambda row: (
            _qid_order(row["qid"]),
            _qid_order(row.get("root") or ""),
            row["kind"] or "",
        )
    )
    return rows


def _qid_order(qid: str) -> tuple[int, int, str]:
    if qid[:1] == "Q" and qid[1:].isdigit():
        return (0, int(qid[1:]), qid)
    return (1, 0, qid)


class _Name(NamedTuple):
    """A value for a placeholder; language None for scientific names."""

    text: str
    language: str | None


@dataclass
class _Names:
    """What the entities table tells of each QID it names: label, taxon name,
    rank and a common name in the labels' language."""

    labels: dict[str, str]
    taxon_names: dict[str, str]
    ranks: dict[str, set[str]]
    common_names: dict[str, str]

    @classmethod
    def of(cls, rows: list[dict[str, Any]], language: str) -> _Names:
        names = cls({}, {}, {}, {})
        for row in rows:
            qid = row["qid"]
            if row["label"]:
                names.labels.setdefault(qid, row["label"])
            if row.get("taxon_name"):
                names.taxon_names.setdefault(qid, row["taxon_name"])
            ranks = {row.get("rank"), row.get("rank_qid")}
            names.ranks.setdefault(qid, set()).update(r for r in ranks if r)
            for common in row.get("common_names") or []:
                if (common["language"] or "").lower() == language and common["name"]:
                    names.common_names.setdefault(qid, common["name"])

        # Labels of parents outside the harvest, where the harvest gave them.
        for row in rows:
            parents = row.get("parents") or []
            labels = row.get("parent_labels") or []
            for parent, label in zip(parents, labels, strict=False):
                if label:
                    names.labels.setdefault(parent, label)
        return names

    def term(self, qid: str) -> str | None:
        """How to name a QID in a query: its label, or its common name where
        the label is only the scientific name ("Carnivora")."""
        label = self.labels.get(qid)
        if label is not None and label == self.taxon_names.get(qid):
            return self.common_names.get(qid, label)
        return label


def _parent_term(row: dict[str, Any], names: _Names, ranks: Sequence[str]) -> str:
    """The term for an entity's natural type, or "" when none helps.

    Taxa: the nearest ancestor in the lineage whose rank is one of ``ranks``,
    else the harvest's root. Classes and instances: the parent on the lineage
    (the chain of parents up to the root). Then, for all kinds, the direct
    parents in the harvest's order. The first of these with a name that is
    not already part of the label wins: "Homo" adds nothing to "Homo sapiens".
    """
    qid = row["qid"]
    ancestors = [q for q in reversed(row.get("lineage") or []) if q != qid]
    if row["kind"] == "taxon":
        wanted = set(ranks)
        ranked = [q for q in ancestors if names.ranks.get(q, set()) & wanted]
        chosen = ranked[:1] + ancestors[-1:]
    else:
        chosen = ancestors[:1]

    label_words = set((row["label"] or "").casefold().split())
    for candidate in [*chosen, *(row.get("parents") or [])]:
        term = names.term(candidate) if candidate != qid else None
        if term and not set(term.casefold().split()) <= label_words:
            return term
    return ""


def _values(
    row: dict[str, Any], names: _Names, config: QueriesConfig
) -> dict[str, list[_Name]]:
    """The values of every placeholder for one row of the entities table."""
    primary = config.languages[0].lower()
    wanted = {language.lower() for language in config.languages}
    label, taxon_name = row["label"], row.get("taxon_name")
    parent = _parent_term(row, names, config.parent_ranks) if label else ""
    # Known shortcoming: the harvest keeps aliases of every harvest language
    # without their language tags, so a German alias ("Hund") is sent as a
    # query in the first language. Harmless for web search, which reads any
    # language; recording the alias language in the harvest would fix it.
    return {
        "label": [_Name(label, primary)] if label else [],
        "parent": [_Name(parent, primary)] if parent else [],
        "taxon_name": [_Name(taxon_name, None)] if taxon_name else [],
        "common_name": [
            _Name(common["name"], common["language"].lower())
            for common in row.get("common_names") or []
            if common["name"] and (common["language"] or "").lower() in wanted
        ],
        "alias": [_Name(alias, primary) for alias in row.get("aliases") or [] if alias],
        "attribute": _attribute_names(row, config.attribute_properties, primary),
    }


def _attribute_names(
    row: dict[str, Any], properties: Sequence[str], language: str
) -> list[_Name]:
    """Labels of the entity's attributes, in the order of ``properties``."""
    order = {prop: position for position, prop in enumerate(properties)}
    chosen = [
        attribute
        for attribute in row.get("attributes") or []
        if attribute["property"] in order and attribute["label"]
    ]
    chosen.sort(key=lambda attribute: order[attribute["property"]])
    return [_Name(attribute["label"], language) for attribute in chosen]


def _expand(
    template: str, values: dict[str, list[_Name]]
) -> Iterator[tuple[str, str | None]]:
    """Each filling of a template: one per combination of placeholder values.

    Yields (text, language); a combination of two languages is skipped.
    """
    placeholders = template_placeholders(template)
    for combination in itertools.product(*(values[name] for name in placeholders)):
        languages = {value.language for value in combination} - {None}
        if len(languages) > 1:
            continue
        filled = template.format(
            **{
                name: value.text
                for name, value in zip(placeholders, combination, strict=True)
            }
        )
        yield filled, next(iter(languages), None)


@dataclass
class _Candidate:
    """One query an entity asks for, before the budget and the engines.

    ``sources`` are the (template, kind) pairs that made it, first one first:
    "Homo sapiens" is both the label and the taxon name, and an engine that
    takes only taxon names must still get it.
    """

    text: str
    language: str
    sources: list[tuple[str, str]]


def _candidates(
    rows: list[dict[str, Any]], names: _Names, config: QueriesConfig
) -> list[_Candidate]:
    """An entity's queries in priority order (template order, then value order),
    normalised; a repeat of an earlier one, ignoring case, only adds its source."""
    primary = config.languages[0].lower()
    cap = config.max_per_template
    found: dict[tuple[str, str], _Candidate] = {}
    for row in rows:
        values = _values(row, names, config)
        for template in config.templates.get(row["kind"], []):
            made = 0
            for filled, language in _expand(template, values):
                text = normalise(filled, config.min_chars, config.max_chars)
                if text is None:
                    continue
                key = (language or primary, text.casefold())
                if key in found:
                    found[key].sources.append((template, row["kind"]))
                    continue
                if cap is not None and made >= cap:
                    break
                found[key] = _Candidate(text, key[0], [(template, row["kind"])])
                made += 1
    return list(found.values())


def _accepted_template(
    config: QueriesConfig, engine: str, candidate: _Candidate
) -> str | None:
    """The first template of a candidate that the engine takes, if any.

    ``engine_kinds`` limits the kinds of entity an engine takes and
    ``engine_templates`` the templates; an engine named in neither takes all.
    """
    kinds = config.engine_kinds.get(engine)
    templates = config.engine_templates.get(engine)
    for template, kind in candidate.sources:
        if kinds is not None and kind not in kinds:
            continue
        if templates is None or template in templates:
            return template
    return None


def _add_entity(
    collector: _Collector,
    qid: str,
    rows: list[dict[str, Any]],
    names: _Names,
    config: QueriesConfig,
) -> None:
    """Add one entity's queries, its budget applied per engine.

    Each engine takes the first ``num_queries`` candidates it accepts, so an
    engine restricted to some templates still gets its share.
    """
    sitelinks = max((row.get("sitelinks") or 0 for row in rows), default=0)
    num_queries, num_results = entity_budget(sitelinks, config)
    engines = [engine for engine in config.engines if engine != FILES_ENGINE]
    taken = dict.fromkeys(engines, 0)
    for candidate in _candidates(rows, names, config):
        for engine in engines:
            template = _accepted_template(config, engine, candidate)
            if taken[engine] >= num_queries or template is None:
                continue
            collector.add(
                qid,
                engine,
                candidate.language,
                candidate.text,
                template,
                num_results,
                taken[engine],
            )
            taken[engine] += 1

    if FILES_ENGINE in config.engines:
        _add_files(collector, qid, rows, config)


def _add_files(
    collector: _Collector, qid: str, rows: list[dict[str, Any]], config: QueriesConfig
) -> None:
    """One row per Commons file of the entity's images; no budget applies."""
    kinds = config.engine_kinds.get(FILES_ENGINE)
    position = 0
    for row in rows:
        if kinds is not None and row["kind"] not in kinds:
            continue
        for image in row.get("images") or []:
            name = file_name(image)
            if name:
                collector.add(qid, FILES_ENGINE, None, name, FILE_TEMPLATE, 1, position)
                position += 1


@dataclass
class _Query:
    """One row of the queries table as it is being gathered."""

    text: str
    engine: str
    language: str | None
    template: str
    entities: list[str]
    results_wanted: int
    priority: int


class _Collector:
    """Gathers queries, making each (engine, language, text) once.

    The first spelling and template win; ``results_wanted`` is the largest
    and ``priority`` the best of the entities that asked.
    """

    def __init__(self) -> None:
        self.queries: dict[tuple[str, str, str], _Query] = {}
        self.num_additions = 0

    def add(
        self,
        qid: str,
        engine: str,
        language: str | None,
        text: str,
        template: str,
        results_wanted: int,
        priority: int,
    ) -> None:
        self.num_additions += 1
        folded = text if engine == FILES_ENGINE else text.casefold()
        key = (engine, language or "", folded)
        query = self.queries.get(key)
        if query is None:
            self.queries[key] = _Query(
                text, engine, language, template, [qid], results_wanted, priority
            )
            return
        if query.entities[-1] != qid:
            query.entities.append(qid)
        query.results_wanted = max(query.results_wanted, results_wanted)
        query.priority = min(query.priority, priority)

    def table(self, config: QueriesConfig) -> pa.Table:
        """The gathered queries in the order they were first asked for."""
        queries = list(self.queries.values())
        columns = {
            "query_id": [query_id(q.engine, q.language, q.text) for q in queries],
            "text": [q.text for q in queries],
            "engine": [q.engine for q in queries],
            "language": [q.language for q in queries],
            "template": [q.template for q in queries],
            "entities": [q.entities for q in queries],
            "results_wanted": [q.results_wanted for q in queries],
            "excluded_terms": [_excluded_terms(config, q.engine) for q in queries],
            "priority": [q.priority for q in queries],
        }
        return pa.table(columns, schema=QUERY_TABLE_SCHEMA)


def _excluded_terms(config: QueriesConfig, engine: str) -> list[str]:
    """The terms an engine should exclude; none for Commons files."""
    if engine == FILES_ENGINE:
        return []
    default = config.excluded_terms.get(DEFAULT_ENGINE, [])
    return list(config.excluded_terms.get(engine, default))
