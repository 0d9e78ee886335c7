"""Captions: the texts that may describe each kept image, and its default caption.

Every pair (one kept image, one entity it shows) gets texts from two sources,
stored apart so that training chooses the mix:

- **web texts**: the title or alt text of each search result that found the
  image, cleaned (HTML entities decoded, whitespace collapsed), deduplicated
  regardless of case, and with junk dropped: bare URLs, camera file names
  ("IMG_1234.jpg", "DSC01234"), camera defaults ("OLYMPUS DIGITAL CAMERA")
  and texts without a single meaningful word. A file name with words in it
  ("Homo_sapiens_skull.jpg") is kept as its words ("Homo sapiens skull").
  Each text's source is the engine of the result that gave it.
- **knowledge-graph texts** of the entity, with these sources
  (:data:`KG_SOURCES`): ``label``; ``label_description`` ("label,
  description"); ``alias`` (each); ``common_name:LANG`` (each, LANG the
  language code, e.g. ``common_name:en``); ``scientific_name`` (the taxon
  name); ``taxonomic`` (the ranks from kingdom down to species, as BioCLIP
  writes them, see :func:`taxonomic_string`); ``attribute`` ("white horse":
  the label of an attribute value, then the entity's label).

The default caption (the ``.txt`` of a sample) follows
:attr:`CaptionConfig.rule`.
"""

from __future__ import annotations

import html
import logging
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa

from curate.records import PAIRS_SCHEMA
from kg.errors import ConfigError

log = logging.getLogger(__name__)

Text = dict[str, str]  # {"source": ..., "text": ...}, the TEXT struct of a pair

KG_SOURCES = (
    "label",
    "label_description",
    "alias",
    "common_name",  # written common_name:LANG
    "scientific_name",
    "taxonomic",
    "attribute",
)

# The seven ranks of BioCLIP's taxonomic string, from the top down.
LINNAEAN_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

RULES = ("web_first", "template")

# Placeholders a caption template may use; one the entity lacks becomes its label.
TEMPLATE_FIELDS = (
    "label",
    "description",
    "scientific_name",
    "common_name",
    "taxonomic",
)

# Words that say nothing about what an image shows: camera and file-name
# tokens, generic nouns, and short function words. A web text made only of
# these (and digits) is junk.
_EMPTY_WORDS = frozenset(
    {
        "img", "image", "images", "imag", "dsc", "dscn", "dscf", "dcim", "pxl",
        "mvimg", "pic", "pict", "picture", "photo", "photos", "foto", "screenshot",
        "untitled", "thumbnail", "thumb", "file", "jpg", "jpeg", "png", "gif", "webp",
        "copy", "edited", "final", "original", "sony", "olympus", "nikon", "canon",
        "digital", "camera", "stock", "default", "placeholder", "icon", "logo",
        "unknown", "no", "null", "none", "nan", "the", "an", "of", "and", "in",
        "on", "for", "with", "to", "by", "at", "from",
    }
)  # fmt: skip
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|www\.)\S*$", re.IGNORECASE)
_FILE_NAME = re.compile(
    r"^(?:file:)?(?P<stem>[^/\\]+?)\."
    r"(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|heif|avif)$",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters, any script
_SPACE = re.compile(r"\s+")


@dataclass
class CaptionConfig:
    """How texts are cleaned and which becomes the default caption.

    Attributes:
        rule: ``web_first``: the first web text (results ordered by rank,
            engine, query), else the template; ``template``: always the
            template.
        template: a format string over :data:`TEMPLATE_FIELDS`, e.g.
            "a photo of {label}"; a field the entity lacks becomes its label.
        min_web_chars: web texts shorter than this are dropped.
        max_web_chars: longer web texts are cut at a word boundary (CLIP reads
            77 tokens; a page-long description only costs space).
    """

    rule: str = "web_first"
    template: str = "a photo of {label}"
    min_web_chars: int = 3
    max_web_chars: int = 300

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting."""
        if self.rule not in RULES:
            raise ConfigError(
                f"curate.captions.rule={self.rule!r} is not known; use one of "
                f"{', '.join(RULES)}"
            )
        names = {name for _, name, _, _ in string.Formatter().parse(self.template)}
        unknown = sorted(n for n in names if n is not None and n not in TEMPLATE_FIELDS)
        if unknown:
            raise ConfigError(
                f"curate.captions.template={self.template!r} uses {unknown}; "
                f"placeholders are {', '.join(TEMPLATE_FIELDS)} in braces"
            )
        if not 0 < self.min_web_chars <= self.max_web_chars:
            raise ConfigError(
                "curate.captions.min_web_chars must be at least 1 and at most "
                f"max_web_chars; got {self.min_web_chars} and {self.max_web_chars}"
            )


class TaxonNode(NamedTuple):
    """What a lineage step contributes to a taxonomic string."""

    name: str
    rank: str | None


def source_kind(source: str) -> str:
    """The kind of a text source without its language: common_name:en -> common_name."""
    return source.split(":", 1)[0]


# ---------------------------------------------------------------------------
# Web texts


def clean_web_text(text: str | None, config: CaptionConfig) -> str | None:
    """One title or alt text made tidy, or None when it says nothing.

    HTML entities are decoded and whitespace collapsed; a file name loses its
    ``File:`` prefix and extension and its underscores become spaces. The
    result is None for bare URLs and for texts whose words are all camera or
    file-name tokens, generic nouns or digits ("IMG_1234.jpg", "DSC01234",
    "image", "OLYMPUS DIGITAL CAMERA").
    """
    if not text:
        return None
    text = _SPACE.sub(" ", html.unescape(text)).strip()
    if _URL.match(text):
        return None

    # Commons and camera file names: the stem may still name the subject.
    file_name = _FILE_NAME.match(text)
    if file_name:
        stem = file_name.group("stem").replace("_", " ")
        text = _SPACE.sub(" ", stem).strip()

    if not _has_meaning(text) or len(text) < config.min_web_chars:
        return None
    return _cut(text, config.max_web_chars)


def _has_meaning(text: str) -> bool:
    """Whether some word of two or more letters is not an empty word."""
    return any(
        len(word) >= 2 and word.casefold() not in _EMPTY_WORDS
        for word in _WORD.findall(text)
    )


def _cut(text: str, max_chars: int) -> str:
    """The text cut to at most ``max_chars``, at a word boundary where one is."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = head.rfind(" ")
    return (head[:space] if space > 0 else head).rstrip(" ,;:-")


def web_texts(
    results: Iterable[Mapping[str, Any]], config: CaptionConfig
) -> list[Text]:
    """The cleaned, deduplicated web texts of one image.

    Args:
        results: the search results that found the image, each with
            ``title``, ``engine``, ``rank`` and ``query`` (rows of the results
            table).
        config: cleaning limits.

    Returns:
        ``{"source": engine, "text": text}`` in the order of the results'
        rank, engine and query, so that the first is the best-ranked text;
        a text already seen (ignoring case) is left out.
    """
    ordered = sorted(results, key=_result_order)
    texts: list[Text] = []
    seen: set[str] = set()
    for result in ordered:
        text = clean_web_text(result.get("title"), config)
        if text is None or text.casefold() in seen:
            continue
        seen.add(text.casefold())
        texts.append({"source": result.get("engine") or "web", "text": text})
    return texts


def _result_order(result: Mapping[str, Any]) -> tuple[int, str, str, str]:
    # Results without a rank (local collections) sort after ranked ones.
    rank = result.get("rank")
    return (
        rank if rank is not None else 1 << 30,
        result.get("engine") or "",
        result.get("query") or "",
        result.get("title") or "",
    )


# ---------------------------------------------------------------------------
# Knowledge-graph texts


def taxon_nodes(entities: pa.Table) -> dict[str, TaxonNode]:
    """QID -> (scientific name or label, rank) over every row of ``entities``.

    An entity harvested under several roots appears once; the first row with
    a name wins. Entities with neither taxon name nor label are left out.
    """
    nodes: dict[str, TaxonNode] = {}
    columns = entities.select(["qid", "taxon_name", "label", "rank"]).to_pydict()
    for qid, taxon_name, label, rank in zip(*columns.values(), strict=True):
        name = taxon_name or label
        if name and qid not in nodes:
            nodes[qid] = TaxonNode(name, rank)
    return nodes


def taxonomic_string(lineage: Sequence[str], nodes: Mapping[str, TaxonNode]) -> str:
    """The taxonomic string of an entity, as BioCLIP writes it.

    From the lineage (QIDs root .. entity) the steps at the seven Linnaean
    ranks are kept, plus the entity itself whatever its rank (a subspecies
    still names itself); where no step has one of those ranks, every named
    step is kept. A name that begins with the name before it gives only the
    rest, so genus "Homo" then species "Homo sapiens" reads "Homo sapiens",
    and a full string reads "Animalia Chordata Mammalia Primates Hominidae
    Homo sapiens". The string starts at the harvest's root: ranks above it
    are not in the lineage. Returns "" when no step is named.
    """
    named = [(i, nodes[q]) for i, q in enumerate(lineage) if q in nodes]
    last = len(lineage) - 1
    standard = [(i, n) for i, n in named if n.rank in LINNAEAN_RANKS or i == last]
    if any(n.rank in LINNAEAN_RANKS for _, n in standard):
        named = standard

    parts: list[str] = []
    previous = ""
    for _, node in named:
        if previous and node.name.startswith(previous + " "):
            parts.append(node.name[len(previous) + 1 :])
        elif node.name != previous:
            parts.append(node.name)
        previous = node.name
    return " ".join(parts)


def kg_texts(entity: Mapping[str, Any], nodes: Mapping[str, TaxonNode]) -> list[Text]:
    """The knowledge-graph texts of one entity (a row of the entities table).

    Sources as in :data:`KG_SOURCES`; a text repeated under one source is
    kept once, the same text under two sources twice (training may pick by
    source). ``nodes`` (from :func:`taxon_nodes`) names the lineage for the
    taxonomic string, which only taxa get.
    """
    label = _tidy(entity.get("label"))
    description = _tidy(entity.get("description"))
    texts: list[tuple[str, str | None]] = [("label", label)]
    if label and description:
        texts.append(("label_description", f"{label}, {description}"))
    texts += [("alias", _tidy(alias)) for alias in entity.get("aliases") or []]
    texts += [
        (f"common_name:{name.get('language') or 'und'}", _tidy(name.get("name")))
        for name in entity.get("common_names") or []
    ]
    texts.append(("scientific_name", _tidy(entity.get("taxon_name"))))
    if entity.get("kind") == "taxon":
        lineage = entity.get("lineage") or [entity["qid"]]
        texts.append(("taxonomic", taxonomic_string(lineage, nodes)))
    if label:
        for attribute in entity.get("attributes") or []:
            value = _tidy(attribute.get("label"))
            texts.append(("attribute", f"{value} {label}" if value else None))
    return _unique(texts)


def _tidy(text: str | None) -> str | None:
    """The text with whitespace collapsed, or None when nothing is left."""
    if not text:
        return None
    return _SPACE.sub(" ", text).strip() or None


def _unique(texts: Iterable[tuple[str, str | None]]) -> list[Text]:
    seen: set[tuple[str, str]] = set()
    unique: list[Text] = []
    for source, text in texts:
        if text and (source, text) not in seen:
            seen.add((source, text))
            unique.append({"source": source, "text": text})
    return unique


# ---------------------------------------------------------------------------
# The default caption, and captions for a whole table of pairs


def default_caption(
    entity: Mapping[str, Any],
    web: Sequence[Text],
    kg: Sequence[Text],
    config: CaptionConfig,
) -> str:
    """The caption a sample's ``.txt`` holds, by ``config.rule``."""
    if config.rule == "web_first" and web:
        return web[0]["text"]
    first: dict[str, str] = {}
    for text in kg:
        first.setdefault(source_kind(text["source"]), text["text"])
    label = first.get("label") or entity.get("taxon_name") or entity["qid"]
    values = {
        "label": label,
        "description": _tidy(entity.get("description")),
        "scientific_name": first.get("scientific_name"),
        "common_name": first.get("common_name"),
        "taxonomic": first.get("taxonomic"),
    }
    return config.template.format(**{k: v or label for k, v in values.items()})


def caption_pairs(
    pairs: pa.Table,
    entities: pa.Table,
    results: pa.Table,
    config: CaptionConfig,
) -> pa.Table:
    """Fill ``web_texts``, ``kg_texts`` and ``caption`` of every pair.

    Args:
        pairs: rows of :data:`PAIRS_SCHEMA`; ``sources`` says which results
            found each image.
        entities: the harvest (``kg.harvest.ENTITY_SCHEMA``); a pair's entity
            is its (qid, root) row, else any row of its qid.
        results: the search results (``crawl.records.RESULTS_SCHEMA``); a
            pair's web texts are the titles of the results whose
            (image_url, engine, query) is one of its sources.
        config: cleaning and the caption rule.

    Returns:
        ``pairs`` with the three columns replaced, in :data:`PAIRS_SCHEMA`.

    Raises:
        ConfigError: the config is invalid.
    """
    config.validate()
    by_key = _entities_by_key(entities)
    nodes = taxon_nodes(entities)
    titles = _results_by_source(results)

    # Many images show one entity: its texts are made once.
    kg_cache: dict[tuple[str, str | None], list[Text]] = {}
    web_column, kg_column, caption_column = [], [], []
    rows = pairs.select(["qid", "root", "sources"]).to_pylist()
    for row in rows:
        entity = by_key.get((row["qid"], row["root"])) or by_key.get((row["qid"], None))
        entity = entity or {"qid": row["qid"]}
        key = (row["qid"], row["root"])
        if key not in kg_cache:
            kg_cache[key] = kg_texts(entity, nodes)
        found = [
            r for s in row["sources"] or [] for r in titles.get(_source_key(s), [])
        ]
        web = web_texts(found, config)
        web_column.append(web)
        kg_column.append(kg_cache[key])
        caption_column.append(default_caption(entity, web, kg_cache[key], config))

    log.info("captioned %d pairs of %d entities", len(rows), len(kg_cache))
    return _replace(
        pairs, web_texts=web_column, kg_texts=kg_column, caption=caption_column
    )


def _entities_by_key(
    entities: pa.Table,
) -> dict[tuple[str, str | None], dict[str, Any]]:
    by_key: dict[tuple[str, str | None], dict[str, Any]] = {}
    for entity in entities.to_pylist():
        by_key.setdefault((entity["qid"], entity["root"]), entity)
        by_key.setdefault((entity["qid"], None), entity)
    return by_key


def _source_key(source: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    return (source.get("url"), source.get("engine"), source.get("query"))


def _results_by_source(
    results: pa.Table,
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Results grouped by (image_url, engine, query), the key a pair's source has."""
    columns = ["image_url", "engine", "query", "rank", "title"]
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for result in results.select(columns).to_pylist():
        key = (result["image_url"], result["engine"], result["query"])
        grouped.setdefault(key, []).append(result)
    return grouped


def _replace(table: pa.Table, **columns: list[Any]) -> pa.Table:
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        field = PAIRS_SCHEMA.field(name)
        table = table.set_column(index, field, pa.array(values, type=field.type))
    return table
