"""Reading Wikidata dumps: detect the format, stream, keep what the harvest needs.

Three formats are read, each plain, gzip or bzip2 compressed:

- N-Triples (the truthy ``latest-truthy.nt`` and the full ``latest-all.nt``),
  filtered line by line without a full parse: a fast byte search finds the
  lines whose predicate is kept, and only those are split into terms;
- Turtle (``latest-all.ttl`` and entity exports), parsed by Oxigraph's
  streaming parser and filtered triple by triple;
- the JSON dump (``[``, one entity per line with a trailing comma), turned
  into the same triples the truthy RDF dump would hold: best-rank claims
  only, labels, descriptions and aliases per language, and the sitelink count.

Every reader yields :class:`TripleBatch` objects of stored-form terms (see
:mod:`kg.terms`) and counts lines, kept triples and malformed lines in a
:class:`ReadStats`, so that memory stays flat however large the dump is.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyoxigraph

from kg import terms
from kg.errors import DumpFormatError, InputError, MalformedDumpError

log = logging.getLogger(__name__)

BLOCK_BYTES = 16 << 20  # decompressed bytes handled per step; bounds memory
COMMONS_FILE_PATH = "http://commons.wikimedia.org/wiki/Special:FilePath/"


class DumpFormat(StrEnum):
    NTRIPLES = "ntriples"
    TURTLE = "turtle"
    JSON = "json"


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    BZIP2 = "bzip2"


@dataclass(frozen=True)
class KeepRules:
    """Which triples of a dump are kept.

    ``properties`` are Wikidata property ids kept as truthy ``wdt:`` claims;
    ``languages`` restrict every language-tagged literal (labels,
    descriptions, aliases, monolingual claims such as common names); an empty
    list keeps all languages. Labels, descriptions and aliases are always kept.
    """

    properties: tuple[str, ...]
    languages: tuple[str, ...]
    sitelinks: bool = True

    def predicates(self) -> list[str]:
        """The full IRIs of every kept predicate."""
        kept = [terms.RDFS_LABEL, terms.SCHEMA_DESCRIPTION, terms.SKOS_ALT_LABEL]
        kept += [terms.WDT + pid for pid in self.properties]
        if self.sitelinks:
            kept += [terms.WIKIBASE_SITELINKS, terms.SCHEMA_ABOUT]
        return [*kept, terms.SCHEMA_DATE_MODIFIED]

    def keeps_language(self, lang: str) -> bool:
        return not self.languages or lang in self.languages


@dataclass
class TripleBatch:
    """Stored-form subjects, predicates and objects: parallel lists filled
    one triple at a time, and Arrow columns added a block at a time."""

    s: list[str] = field(default_factory=list)
    p: list[str] = field(default_factory=list)
    o: list[str] = field(default_factory=list)
    columns: list[tuple[pa.Array, pa.Array, pa.Array]] = field(default_factory=list)

    def add(self, s: str, p: str, o: str) -> None:
        self.s.append(s)
        self.p.append(p)
        self.o.append(o)

    def extend(self, s: pa.Array, p: pa.Array, o: pa.Array) -> None:
        if len(s):
            self.columns.append((s, p, o))

    def table(self) -> pa.Table:
        """Every triple of the batch as a table of string columns s, p, o."""
        parts = [pa.table([pa.array(self.s), pa.array(self.p), pa.array(self.o)],
                          schema=TRIPLE_SCHEMA)]  # fmt: skip
        for s, p, o in self.columns:
            parts.append(pa.table([s, p, o], schema=TRIPLE_SCHEMA))
        return pa.concat_tables(parts)

    def __len__(self) -> int:
        return len(self.s) + sum(len(s) for s, _, _ in self.columns)


TRIPLE_SCHEMA = pa.schema([("s", pa.string()), ("p", pa.string()), ("o", pa.string())])


@dataclass
class ReadStats:
    """What a reader saw; malformed lines keep their 1-based line numbers."""

    lines: int = 0
    kept: int = 0
    malformed: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)
    bytes_read: int = 0

    def record_malformed(self, line_number: int, text: str, max_examples: int) -> None:
        self.malformed += 1
        if len(self.examples) < max_examples:
            self.examples.append((line_number, text[:200]))


def detect(path: Path) -> tuple[DumpFormat, Compression]:
    """Tell a dump's format and compression from its name and first bytes.

    Raises:
        InputError: the file does not exist or cannot be read.
        DumpFormatError: neither the name nor the content says N-Triples,
            Turtle or the JSON dump.
    """
    if not path.is_file():
        raise InputError(f"dump file not found: {path}; check kg.source")
    with path.open("rb") as raw:
        magic = raw.read(4)
    if magic.startswith(b"\x1f\x8b"):
        compression = Compression.GZIP
    elif magic.startswith(b"BZh"):
        compression = Compression.BZIP2
    else:
        compression = Compression.NONE

    stem = path.name.lower()
    for suffix in (".gz", ".gzip", ".bz2"):
        stem = stem.removesuffix(suffix)
    by_name = {".nt": DumpFormat.NTRIPLES, ".ttl": DumpFormat.TURTLE}
    by_name[".json"] = DumpFormat.JSON
    for suffix, found in by_name.items():
        if stem.endswith(suffix):
            return found, compression
    return _sniff_format(path, compression), compression


def _sniff_format(path: Path, compression: Compression) -> DumpFormat:
    with open_dump(path, compression) as stream:
        head = stream.read(4096).lstrip()
    if head.startswith((b"[", b"{")):
        return DumpFormat.JSON
    if head[:7].lower() in (b"@prefix", b"prefix ") or head.startswith(b"@base"):
        return DumpFormat.TURTLE
    if head.startswith((b"<", b"_:")):
        return DumpFormat.NTRIPLES
    raise DumpFormatError(
        f"cannot tell the format of {path}: expected N-Triples (.nt), Turtle "
        "(.ttl) or the Wikidata JSON dump (.json), each plain, .gz or .bz2; "
        f"the file starts with {head[:40]!r}. Rename it with the right suffix "
        "or point kg.source at a Wikidata dump."
    )


def open_dump(path: Path, compression: Compression) -> BinaryIO:
    """Open a dump for reading decompressed bytes.

    Known shortcoming: Python's bz2 decompresses about ten times slower than
    gzip, on one core, so a ``.bz2`` dump ingests far below the filter's
    speed. Wikimedia publishes every dump as ``.gz`` too, which is the one to
    use; a parallel bzip2 reader (the indexed_bzip2 package) would fix it.
    """
    if compression is Compression.GZIP:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression is Compression.BZIP2:
        return bz2.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def read_blocks(stream: BinaryIO) -> Iterator[bytes]:
    """Yield blocks of whole lines, each about ``BLOCK_BYTES`` long."""
    rest = b""
    while chunk := stream.read(BLOCK_BYTES):
        chunk = rest + chunk
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            rest = chunk
            continue
        rest = chunk[cut:]
        yield chunk[:cut]
    if rest:
        yield rest + b"\n"


Reader = Callable[[BinaryIO, KeepRules, ReadStats, int], Iterator[TripleBatch]]


def reader_for(fmt: DumpFormat) -> Reader:
    """The reader function of a dump format."""
    readers: dict[DumpFormat, Reader] = {
        DumpFormat.NTRIPLES: read_ntriples,
        DumpFormat.TURTLE: read_turtle,
        DumpFormat.JSON: read_json_dump,
    }
    return readers[fmt]


# --------------------------------------------------------------------------
# N-Triples


class _LineFilter:
    """Find kept lines of an N-Triples block by searching for their predicate.

    The search runs over the whole block in C (``re`` with a literal prefix),
    so the dropped majority of lines costs no Python work at all; only the
    matched lines are cut into subject, predicate and object. For the
    predicates whose objects are names (labels, descriptions, aliases, common
    names) the pattern also demands a kept language tag at the line's end, so
    names in other languages are skipped in C too.

    Matched lines are then cut out and split by Arrow compute functions, a
    block at a time, so a kept line costs no Python work either; on the
    benchmark's dump this reads about 1.3 million lines per CPU-second
    against 0.8 million when each kept line was split in Python.
    """

    def __init__(self, rules: KeepRules):
        kept = [p for p in rules.predicates() if p not in SUBJECT_BOUND]
        named = [p for p in kept if p in NAME_PREDICATES]
        other = [p for p in kept if p not in NAME_PREDICATES]
        pattern = rb"> <(" + _alternation(other) + rb")> "
        if named:
            tags = rb"[A-Za-z0-9-]+"
            if rules.languages:
                tags = _alternation(list(rules.languages))
            # lookahead: the object is a literal tagged with a kept language
            pattern += rb"|> <(" + _alternation(named) + rb')> (?="[^\n]*"@(?i:'
            pattern += tags + rb")[ \t]*\.[ \t\r]*\n)"
        self.pattern = re.compile(pattern)
        # Lines kept only for one subject, found by their subject instead, so
        # that the many article sitelinks (schema:about) cost no Python work:
        # the entity's data node says what it is about, and the dump's own
        # node gives the dump's date.
        self.about_pattern = re.compile(
            rb"\n(<" + re.escape(terms.ENTITY_DATA.encode()) + rb"[^>\n]*>) <"
            + re.escape(terms.SCHEMA_ABOUT.encode()) + rb"> ([^\n]*)"
        )  # fmt: skip
        self.keeps_about = terms.SCHEMA_ABOUT in rules.predicates()
        self.dump_date = (
            f"<{terms.WIKIBASE_DUMP}> <{terms.SCHEMA_DATE_MODIFIED}> ".encode()
        )
        self.rules = rules

    def keep(self, block: bytes, batch: TripleBatch) -> None:
        starts = [match.start() for match in self.pattern.finditer(block)]
        if starts:
            batch.extend(*self._triples(block, np.array(starts, np.int64)))
        find = block.find
        if self.keeps_about:
            # The pattern starts at a line break; the first line has none.
            lines = self.about_pattern.findall(b"\n" + block[: find(b"\n") + 1])
            for subject, obj in lines + self.about_pattern.findall(block):
                batch.add(
                    subject.decode(),
                    f"<{terms.SCHEMA_ABOUT}>",
                    terms.canonical_term(obj.rstrip(b" .\t\r").decode()),
                )
        at = find(self.dump_date)
        if at >= 0 and (at == 0 or block[at - 1 : at] == b"\n"):
            obj = block[at + len(self.dump_date) : find(b"\n", at)]
            batch.add(
                f"<{terms.WIKIBASE_DUMP}>",
                f"<{terms.SCHEMA_DATE_MODIFIED}>",
                terms.canonical_term(obj.rstrip(b" .\t\r").decode()),
            )

    def _triples(
        self, block: bytes, starts: np.ndarray
    ) -> tuple[pa.Array, pa.Array, pa.Array]:
        """The kept triples of the lines the pattern matched, split in Arrow.

        Per matched line only a few array operations run, none in Python: the
        lines are cut out of the block by their offsets, a match counts when it
        sits right after the subject (not inside a literal), and each line is
        split into subject, predicate and object at its first two spaces.
        """
        breaks = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
        line = np.unique(np.searchsorted(breaks, starts))
        line_start = np.concatenate(([0], breaks + 1))[line]
        first_match = starts[np.searchsorted(starts, line_start)]
        lines = _lines(block, breaks).take(pa.array(line))
        text = pc.cast(lines, pa.large_string())
        # The subject ends at the line's first space, right before " <pred>".
        space = pc.find_substring(text, " ").to_numpy(zero_copy_only=False)
        at_subject = pa.array(space == first_match - line_start + 1)
        parts = pc.split_pattern(pc.filter(text, at_subject), " ", max_splits=2)
        subjects = pc.list_element(parts, 0)
        predicates = pc.list_element(parts, 1)
        objects = pc.utf8_rtrim(pc.list_element(parts, 2), characters=" .\t\r\n")
        good = pc.or_(pc.starts_with(subjects, "<"), pc.starts_with(subjects, "_:"))
        good = pc.and_(good, self._language_kept(objects))
        subjects, predicates, objects = (
            pc.filter(column, good) for column in (subjects, predicates, objects)
        )
        return _small(subjects), _small(predicates), _small(_canonical(objects))

    def _language_kept(self, objects: pa.Array) -> pa.Array:
        """False for literals tagged with a language the rules drop."""
        if not self.rules.languages:
            return pa.array(np.ones(len(objects), bool))
        # struct_field, unlike .field(), keeps the nulls of unmatched rows
        found = pc.extract_regex(objects, r'"@(?P<tag>[A-Za-z0-9-]+)$')
        tags = pc.struct_field(found, "tag")
        kept = pc.is_in(pc.utf8_lower(tags), pa.array(list(self.rules.languages)))
        return pc.fill_null(pc.or_kleene(pc.is_null(tags), kept), True)


def _lines(block: bytes, breaks: np.ndarray) -> pa.Array:
    """Every line of ``block`` (line break included) as a binary array that
    shares the block's memory."""
    offsets = np.concatenate(([0], breaks + 1)).astype(np.int64)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(block)]
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(breaks), buffers)


def _canonical(objects: pa.Array) -> pa.Array:
    """Objects in the store's spelling; only the rare literal needing a
    rewrite (``\\u`` escapes, capitals in a tag, xsd:string) goes to Python."""
    rare = pc.match_substring_regex(
        objects, r'^".*(\\[uU]|#string>$|"@[^"]*[A-Z][^"]*$)'
    )
    if not pc.any(rare).as_py():
        return objects
    fixed = [terms.canonical_term(t) for t in pc.filter(objects, rare).to_pylist()]
    return pc.replace_with_mask(objects, rare, pa.array(fixed, objects.type))


def _small(column: pa.Array) -> pa.Array:
    return pc.cast(column, pa.string())


# Predicates kept only for one kind of subject: schema:about for the entity's
# data node (not its articles), schema:dateModified for the dump itself.
SUBJECT_BOUND = frozenset([terms.SCHEMA_ABOUT, terms.SCHEMA_DATE_MODIFIED])

# Predicates whose objects are names, filtered by language in the pattern.
NAME_PREDICATES = frozenset([*terms.LANGUAGE_PREDICATES, terms.WDT + "P1843"])


def _alternation(items: list[str]) -> bytes:
    """A regex matching any of the items, shared prefixes factored out.

    ``re`` tries the branches of an alternation one by one; written as a
    trie (``http://www.wikidata.org/prop/direct/P(?:31|279|...)``) each
    position costs one walk instead of one try per predicate.
    """
    return _trie_pattern(sorted({item.encode() for item in items}))


def _trie_pattern(items: list[bytes]) -> bytes:
    if len(items) == 1:
        return re.escape(items[0])
    # items are sorted, so the first and last share the prefix common to all
    first, last = items[0], items[-1]
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    prefix = first[:size]
    rest = [item[len(prefix) :] for item in items]
    optional = b"" in rest
    groups: dict[bytes, list[bytes]] = {}
    for item in rest:
        if item:
            groups.setdefault(item[:1], []).append(item)
    branches = [_trie_pattern(group) for group in groups.values()]
    body = b"(?:" + b"|".join(branches) + b")" + (b"?" if optional else b"")
    return re.escape(prefix) + body


def _is_clean(block: bytes, num_lines: int) -> bool:
    """True when every line starts with '<' and ends with ' .', in one pass.

    In a clean dump each line break sits between a '.' and a '<', so one
    count settles it; a block that fails this is checked line by line.
    """
    breaks_inside = block.count(b".\n<")
    return breaks_inside == num_lines - 1 and block.startswith(b"<")


def _find_malformed(
    block: bytes, first_line: int, stats: ReadStats, max_examples: int
) -> None:
    """Slow path, run only on a block whose fast counts disagree."""
    for offset, line in enumerate(block.split(b"\n")[:-1]):
        text = line.strip()
        if not text or text.startswith(b"#"):
            continue
        if text.startswith((b"<", b"_:")) and text.endswith(b".") and b" " in text:
            continue
        stats.record_malformed(
            first_line + offset, line.decode(errors="replace"), max_examples
        )


def read_ntriples(
    stream: BinaryIO, rules: KeepRules, stats: ReadStats, max_examples: int = 5
) -> Iterator[TripleBatch]:
    """Stream an N-Triples dump, yielding one batch of kept triples per block."""
    line_filter = _LineFilter(rules)
    for block in read_blocks(stream):
        num_lines = block.count(b"\n")
        if not _is_clean(block, num_lines):
            _find_malformed(block, stats.lines + 1, stats, max_examples)
        batch = TripleBatch()
        line_filter.keep(block, batch)
        stats.lines += num_lines
        stats.bytes_read += len(block)
        stats.kept += len(batch)
        yield batch


# --------------------------------------------------------------------------
# Turtle


def read_turtle(
    stream: BinaryIO, rules: KeepRules, stats: ReadStats, max_examples: int = 5
) -> Iterator[TripleBatch]:
    """Stream a Turtle dump through Oxigraph's parser, keeping needed triples.

    Turtle cannot be resynchronised after a syntax error the way a line
    format can, so the first error stops the read with its position.
    """
    kept = set(rules.predicates())
    data_prefix = "<" + terms.ENTITY_DATA
    dump_subject = terms.iri(terms.WIKIBASE_DUMP)
    batch = TripleBatch()
    try:
        for triple in pyoxigraph.parse(stream, format=pyoxigraph.RdfFormat.TURTLE):
            predicate = triple.predicate.value
            if predicate not in kept:
                continue
            subject, obj = str(triple.subject), triple.object
            if predicate == terms.SCHEMA_ABOUT and not subject.startswith(data_prefix):
                continue
            if predicate == terms.SCHEMA_DATE_MODIFIED and subject != dump_subject:
                continue
            language = obj.language if isinstance(obj, pyoxigraph.Literal) else None
            if language and not rules.keeps_language(language.lower()):
                continue
            batch.add(subject, f"<{predicate}>", terms.canonical_term(str(obj)))
            if len(batch) >= 200_000:
                stats.kept += len(batch)
                yield batch
                batch = TripleBatch()
    except SyntaxError as error:
        stats.record_malformed(getattr(error, "lineno", 0) or 0, str(error), 1)
        raise MalformedDumpError(
            f"Turtle syntax error in the dump: {error}. Turtle cannot be resumed "
            "after an error; repair the file or use the N-Triples or JSON dump."
        ) from error
    stats.bytes_read = stream.tell() if stream.seekable() else stats.bytes_read
    stats.kept += len(batch)
    yield batch


# --------------------------------------------------------------------------
# JSON dump


def read_json_dump(
    stream: BinaryIO, rules: KeepRules, stats: ReadStats, max_examples: int = 5
) -> Iterator[TripleBatch]:
    """Stream the Wikidata JSON dump: ``[``, one entity per line, ``]``."""
    properties = set(rules.properties)
    for block in read_blocks(stream):
        batch = TripleBatch()
        first_line = stats.lines + 1
        for offset, line in enumerate(block.split(b"\n")[:-1]):
            text = line.strip().rstrip(b",")
            if text in (b"", b"[", b"]"):
                continue
            try:
                entity = orjson.loads(text)
                _entity_triples(entity, rules, properties, batch)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                stats.record_malformed(
                    first_line + offset, f"{err}: {line[:120]!r}", max_examples
                )
        stats.lines += block.count(b"\n")
        stats.bytes_read += len(block)
        stats.kept += len(batch)
        yield batch


def _entity_triples(
    entity: dict, rules: KeepRules, properties: set[str], batch: TripleBatch
) -> None:
    """Add one JSON entity's kept triples, as the truthy RDF dump states them."""
    subject = terms.iri(terms.WD + entity["id"])
    names = (
        ("labels", terms.RDFS_LABEL),
        ("descriptions", terms.SCHEMA_DESCRIPTION),
    )
    for key, predicate in names:
        for lang, entry in entity.get(key, {}).items():
            if rules.keeps_language(lang.lower()):
                batch.add(
                    subject, f"<{predicate}>", terms.literal(entry["value"], lang)
                )
    for lang, entries in entity.get("aliases", {}).items():
        if rules.keeps_language(lang.lower()):
            for entry in entries:
                alias = terms.literal(entry["value"], lang)
                batch.add(subject, f"<{terms.SKOS_ALT_LABEL}>", alias)

    claims = entity.get("claims", {})
    for pid in properties.intersection(claims):
        for value in _truthy_values(claims[pid], rules):
            batch.add(subject, f"<{terms.WDT}{pid}>", value)

    if rules.sitelinks and "sitelinks" in entity:
        data = terms.iri(terms.ENTITY_DATA + entity["id"])
        count = terms.literal(str(len(entity["sitelinks"])), None, terms.XSD_INTEGER)
        batch.add(data, f"<{terms.SCHEMA_ABOUT}>", subject)
        batch.add(data, f"<{terms.WIKIBASE_SITELINKS}>", count)


def _truthy_values(statements: list[dict], rules: KeepRules) -> Iterator[str]:
    """Values of the best-ranked statements (preferred, else normal)."""
    preferred = [s for s in statements if s.get("rank") == "preferred"]
    best = preferred or [s for s in statements if s.get("rank") == "normal"]
    for statement in best:
        snak = statement["mainsnak"]
        if snak.get("snaktype") != "value":
            continue
        value = _datavalue_term(snak, rules)
        if value is not None:
            yield value


def _datavalue_term(snak: dict, rules: KeepRules) -> str | None:
    """A snak's value in stored form; ``None`` for kinds the harvest skips."""
    datavalue = snak["datavalue"]
    kind, value = datavalue["type"], datavalue["value"]
    if kind == "wikibase-entityid":
        return terms.iri(terms.WD + value["id"])
    if kind == "monolingualtext":
        lang = value["language"].lower()
        if not rules.keeps_language(lang):
            return None
        return terms.literal(value["text"], lang)
    if kind == "string":
        if snak.get("datatype") == "commonsMedia":
            return terms.iri(COMMONS_FILE_PATH + quote(value, safe="!$&'()*+,;=:@"))
        if snak.get("datatype") == "url":
            return terms.iri(value)
        return terms.literal(value)
    if kind == "quantity":
        return terms.literal(value["amount"].lstrip("+"), None, terms.XSD + "decimal")
    if kind == "time":
        return terms.literal(value["time"].lstrip("+"), None, terms.XSD_DATETIME)
    return None
