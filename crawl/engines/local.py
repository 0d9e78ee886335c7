"""A local collection of images as a search engine, so the pipeline runs offline.

A collection is either a folder of images, or a table of captions with image
URLs or paths (Parquet, TSV or CSV). Every image gets a caption: from the
folder, the folder names and the file name (``flowers5/daisy/123.jpg`` is a
daisy), or a ``labels.csv`` / ``captions.tsv`` beside the images; from a table,
its caption column.

Searching matches the names of entities against the captions the way MetaCLIP
matches alt texts to its list of entries: case-insensitive substring matching
of all the names at once with an Aho-Corasick automaton, where a name only
counts as a whole word or phrase ("cat" matches "a cat." but not
"category"). Both sides are brought to one form first: case folded, and
every run of characters that are not letters or digits turned into a single
space, padded with a space at each end. A name then matches exactly where the
padded name occurs in the padded caption, so word boundaries need no second
check (" cat " cannot occur inside " category ").

Open a collection once (captions are read and brought to that form), then ask
for all queries in one :meth:`LocalCollection.search_many` call: the
automaton is built over the query names and the captions are scanned once.
Measured on one core, 10,000 names against 103,332 web alt texts and
captions: the scan runs at about 230,000 captions a second when the names are
common words (nine matches a caption), 730,000 when they are two-word names
as rare as entity names; reading captions into the matching form at open runs
at about 470,000 a second. Where matches are dense, building the result
records costs more than the scan.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import ahocorasick_rs
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from crawl.engines.base import ParsedResult, SearchOutcome
from kg.errors import InputError

log = logging.getLogger(__name__)

ENGINE = "local"

_NON_WORD = re.compile(r"[\W_]+")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TABLE_SUFFIXES = (".parquet", ".tsv", ".csv", ".txt")

# File-name words that name the camera or the act, not what is shown.
_FILE_NAME_NOISE = frozenset(
    {"img", "image", "dsc", "dscn", "dscf", "pict", "photo", "pic", "scan", "copy"}
)


@dataclass(frozen=True)
class LocalConfig:
    """Where captions and image locations are found, and how much to return.

    Column names are tried in order and compared without regard to case.
    ``headerless_columns`` names the columns of a TSV or CSV without a header
    row (Conceptual Captions' TSV is caption, then URL).
    """

    caption_columns: tuple[str, ...] = ("caption", "text")
    url_columns: tuple[str, ...] = ("url", "path")
    label_columns: tuple[str, ...] = ("label",)
    license_columns: tuple[str, ...] = ("license",)
    file_columns: tuple[str, ...] = ("file", "filename", "path")  # of labels files
    headerless_columns: tuple[str, ...] = ("caption", "url")
    sidecar_files: tuple[str, ...] = ("labels.csv", "captions.tsv")
    image_extensions: tuple[str, ...] = (
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
    )
    max_results_per_query: int | None = 1000  # None: every match
    min_name_chars: int = 2  # shorter names (after normalising) are not searched


@dataclass(frozen=True)
class CollectionItem:
    """One image of a collection.

    ``caption`` becomes the result's title; ``match_text`` is what names are
    matched against (the caption, plus a label and folder names where known).
    """

    image_url: str
    caption: str
    match_text: str
    license: str | None = None


def match_form(text: str) -> str:
    """``text`` as matching sees it: case folded, every run of characters
    other than letters and digits one space, and a space at each end."""
    return f" {_NON_WORD.sub(' ', text.casefold())} "


class LocalCollection:
    """A searchable collection of captioned images; see :meth:`open`."""

    def __init__(
        self, items: Sequence[CollectionItem], *, source: str, config: LocalConfig
    ) -> None:
        self.items = list(items)
        self.source = source  # a file:// URI, the "URL asked" of every search
        self.config = config
        self._match_texts = [match_form(item.match_text) for item in self.items]

    @classmethod
    def open(
        cls, path: str | Path, config: LocalConfig | None = None
    ) -> LocalCollection:
        """Read a collection: a folder of images, or a Parquet, TSV or CSV table.

        Raises :class:`~kg.errors.InputError` when the path is missing, of an
        unknown kind, lacks the caption or URL column, or holds no image.
        """
        config = config or LocalConfig()
        path = Path(path).expanduser().resolve()
        if path.is_dir():
            items = _folder_items(path, config)
        elif path.is_file() and _table_suffix(path) in _TABLE_SUFFIXES:
            items = _table_items(path, config)
        elif path.is_file():
            raise InputError(
                f"{path}: not a collection; give a folder of images or a table "
                f"ending in one of {', '.join(_TABLE_SUFFIXES)}"
            )
        else:
            raise InputError(f"{path}: no such file or folder; check the path")

        if not items:
            raise InputError(
                f"{path}: no captioned image found; check that it holds images "
                f"({', '.join(config.image_extensions)}) or rows with a caption and "
                "a URL"
            )
        log.info("local collection %s: num_items=%d", path, len(items))
        return cls(items, source=path.as_uri(), config=config)

    def __len__(self) -> int:
        return len(self.items)

    def search(self, query_text: str, *, limit: int | None = None) -> SearchOutcome:
        """The images whose captions name ``query_text``; see :meth:`search_many`."""
        return self.search_many([("", query_text)], limit=limit)[""]

    def search_many(
        self, queries: Iterable[tuple[str, str]], *, limit: int | None = None
    ) -> dict[str, SearchOutcome]:
        """Match many queries against every caption in one scan.

        ``queries`` are (query id, text) pairs; a query id may come with
        several texts (a label and its aliases), and then an image that names
        any of them is found once. Results keep the collection's order and
        are capped at ``limit`` (default ``max_results_per_query``) per query.
        Every query id gets an outcome: ``ok`` with results, or ``empty``.
        """
        limit = limit if limit is not None else self.config.max_results_per_query
        names, query_ids = self._names(queries)
        started = time.perf_counter()
        hits = self._scan(names, len(query_ids), limit)
        elapsed_s = time.perf_counter() - started

        num_results = sum(len(found) for found in hits)
        log.info(
            "local search: num_queries=%d num_names=%d num_captions=%d "
            "num_results=%d captions_per_s=%.0f",
            len(query_ids),
            len(names),
            len(self.items),
            num_results,
            len(self.items) / elapsed_s if elapsed_s > 0 else float("inf"),
        )
        fetched = datetime.now(UTC).isoformat(timespec="seconds")
        return {
            query_id: self._outcome(found, fetched)
            for query_id, found in zip(query_ids, hits, strict=True)
        }

    def _names(
        self, queries: Iterable[tuple[str, str]]
    ) -> tuple[dict[str, list[int]], list[str]]:
        """The padded names to look for, each with the queries (by position in
        the returned list of query ids) that asked for it."""
        names: dict[str, list[int]] = {}
        positions: dict[str, int] = {}
        for query_id, text in queries:
            position = positions.setdefault(query_id, len(positions))
            core = match_form(text).strip()
            if len(core) < self.config.min_name_chars:
                log.debug("local search: name %r too short, not searched", text)
                continue
            askers = names.setdefault(f" {core} ", [])
            if position not in askers:
                askers.append(position)
        return names, list(positions)

    def _scan(
        self, names: dict[str, list[int]], num_queries: int, limit: int | None
    ) -> list[list[int]]:
        """For each query, the positions of the items that name it, in order."""
        hits: list[list[int]] = [[] for _ in range(num_queries)]
        if not names:
            return hits
        askers = list(names.values())
        automaton = ahocorasick_rs.AhoCorasick(list(names))
        cap = limit if limit is not None else len(self._match_texts)

        for position, text in enumerate(self._match_texts):
            matches = automaton.find_matches_as_indexes(text, overlapping=True)
            for name_index, _start, _end in matches:
                for query in askers[name_index]:
                    found = hits[query]
                    # All matches of one caption come together, so a repeat
                    # (the name twice, or two names of one query) is the last.
                    if len(found) < cap and (not found or found[-1] != position):
                        found.append(position)
        return hits

    def _outcome(self, found: list[int], fetched: str) -> SearchOutcome:
        results = [
            ParsedResult(
                rank=rank,
                image_url=self.items[position].image_url,
                title=self.items[position].caption,
                license=self.items[position].license,
            )
            for rank, position in enumerate(found, start=1)
        ]
        return SearchOutcome(
            "ok" if results else "empty",
            results=results,
            url=self.source,
            fetched=fetched,
        )


def _table_suffix(path: Path) -> str:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


@dataclass(frozen=True)
class _Label:
    """What a ``labels.csv`` or ``captions.tsv`` row says about one image."""

    caption: str | None
    label: str | None
    license: str | None


def _folder_items(root: Path, config: LocalConfig) -> list[CollectionItem]:
    """The images under ``root`` (all depths, in path order), captioned from a
    labels file where it names them and from their folders and file names
    otherwise."""
    labels = _read_labels(root, config)
    extensions = {extension.lower() for extension in config.image_extensions}
    paths = sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in extensions
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )

    items = []
    for path in paths:
        relative = path.relative_to(root).as_posix()
        item = _folder_item(path, relative, labels.pop(relative, None))
        if item is not None:
            items.append(item)

    if labels:
        log.warning(
            "%s: %d rows of the labels file name no image found, e.g. %s",
            root,
            len(labels),
            next(iter(labels)),
        )
    return items


def _folder_item(
    path: Path, relative: str, label: _Label | None
) -> CollectionItem | None:
    """One image of a folder; None when nothing about it gives a caption."""
    folders = [_words(part) for part in Path(relative).parts[:-1]]
    file_words = _file_name_words(path.stem)
    named = [phrase for phrase in [*folders, file_words] if phrase]

    caption = (label.caption or label.label) if label else None
    caption = caption or ", ".join(dict.fromkeys(named))
    if not caption:
        return None
    extra = [label.label] if label and label.label else []
    match_text = " | ".join(dict.fromkeys([caption, *extra, *named]))
    return CollectionItem(
        image_url=path.as_uri(),
        caption=caption,
        match_text=match_text,
        license=label.license if label else None,
    )


def _words(name: str) -> str:
    """A folder name as words: ``fire_truck`` and ``fire-truck`` are "fire truck"."""
    return " ".join(re.split(r"[\s_\-.]+", name)).strip()


def _file_name_words(stem: str) -> str:
    """The words of a file name that may say what it shows: tokens of letters
    only, two letters or more, and not a camera's prefix (``IMG``, ``DSC``).
    ``100080576_f52e8ee070_n`` gives nothing, ``red_rose_03`` "red rose"."""
    tokens = re.split(r"[\s_\-.]+", stem)
    words = [
        token
        for token in tokens
        if token.isalpha() and len(token) > 1 and token.lower() not in _FILE_NAME_NOISE
    ]
    return " ".join(words)


def _read_labels(root: Path, config: LocalConfig) -> dict[str, _Label]:
    """The first labels file found beside the images, keyed by the path of
    each image relative to ``root``; empty when there is none.

    A labels file has a header naming its columns (a file column, and a
    caption and/or a label column), or no header and the columns file,
    caption, label in that order.
    """
    for name in config.sidecar_files:
        path = root / name
        if path.is_file():
            return _parse_labels(path, root, config)
    return {}


def _parse_labels(path: Path, root: Path, config: LocalConfig) -> dict[str, _Label]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    with path.open(encoding="utf-8", newline="") as stream:
        rows = [row for row in csv.reader(stream, delimiter=delimiter) if row]
    if not rows:
        return {}

    header = [cell.strip().lower() for cell in rows[0]]
    if _find(header, config.file_columns) is None:
        header, body = ["file", "caption", "label"], rows
    else:
        body = rows[1:]
    file_at = _find(header, config.file_columns)
    caption_at = _find(header, config.caption_columns)
    label_at = _find(header, config.label_columns)
    license_at = _find(header, config.license_columns)
    assert file_at is not None  # either found in the header, or column 0

    labels = {}
    for row in body:
        file = _cell(row, file_at)
        if file is None:
            continue
        labels[Path(file).as_posix()] = _Label(
            caption=_cell(row, caption_at),
            label=_cell(row, label_at),
            license=_cell(row, license_at),
        )
    log.debug("%s: %d labelled images under %s", path, len(labels), root)
    return labels


def _find(header: Sequence[str], names: Sequence[str]) -> int | None:
    """The position of the first of ``names`` in ``header`` (lower case)."""
    for name in names:
        if name.lower() in header:
            return header.index(name.lower())
    return None


def _cell(row: Sequence[str], at: int | None) -> str | None:
    if at is None or at >= len(row):
        return None
    return row[at].strip() or None


def _table_items(path: Path, config: LocalConfig) -> list[CollectionItem]:
    """The rows of a caption table that have both a caption and a URL or
    path, in table order."""
    table = _read_table(path, config)
    names = [name.lower() for name in table.column_names]
    caption_at = _require(names, config.caption_columns, path, "caption_columns")
    url_at = _require(names, config.url_columns, path, "url_columns")
    license_at = _find(names, config.license_columns)

    captions = _strings(table, caption_at)
    urls = _strings(table, url_at)
    licenses = _strings(table, license_at) if license_at is not None else None

    items = []
    for row, (caption, url) in enumerate(zip(captions, urls, strict=True)):
        caption, url = (caption or "").strip(), (url or "").strip()
        if not caption or not url:
            continue
        license = licenses[row] if licenses is not None else None
        image_url = _image_url(url, path.parent)
        items.append(CollectionItem(image_url, caption, caption, license or None))

    num_skipped = table.num_rows - len(items)
    if num_skipped:
        log.info("%s: %d rows without a caption or URL skipped", path, num_skipped)
    return items


def _read_table(path: Path, config: LocalConfig) -> pa.Table:
    """A Parquet, TSV or CSV table; a text table without a header row gets
    the names of ``headerless_columns``. Rows of the wrong width are skipped."""
    if _table_suffix(path) == ".parquet":
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read as Parquet ({exc})") from exc

    tsv = _table_suffix(path) in (".tsv", ".txt")
    parse = pa_csv.ParseOptions(
        delimiter="\t" if tsv else ",",
        quote_char=False if tsv else '"',
        invalid_row_handler=lambda row: "skip",
    )
    read = pa_csv.ReadOptions(autogenerate_column_names=True, block_size=1 << 24)
    try:
        table = pa_csv.read_csv(path, read_options=read, parse_options=parse)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read as a table ({exc})") from exc
    return _named_columns(table, config)


def _named_columns(table: pa.Table, config: LocalConfig) -> pa.Table:
    """Take the first row as the header when it names a caption or URL
    column; otherwise name the columns after ``headerless_columns``."""
    first = [
        str(table.column(at)[0].as_py() or "").strip().lower()
        for at in range(table.num_columns if table.num_rows else 0)
    ]
    known = {name.lower() for name in (*config.caption_columns, *config.url_columns)}
    if known.intersection(first):
        return table.slice(1).rename_columns(first)
    names = (
        list(config.headerless_columns)
        + table.column_names[len(config.headerless_columns) :]
    )
    return table.rename_columns(names[: table.num_columns])


def _require(names: Sequence[str], wanted: Sequence[str], path: Path, key: str) -> int:
    at = _find(names, wanted)
    if at is None:
        raise InputError(
            f"{path}: none of the columns {', '.join(wanted)} found (it has "
            f"{', '.join(names)}); set the local engine's {key} to the right name"
        )
    return at


def _strings(table: pa.Table, at: int) -> list[str | None]:
    column = table.column(at)
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(
        column.type
    ):
        column = column.cast(pa.string())
    return column.to_pylist()


def _image_url(value: str, base: Path) -> str:
    """A URL as it is; a path (relative to the table's folder) as a file URI.

    The path is made absolute without asking the file system (no symlinks
    resolved, no check that it exists), which keeps large tables fast.
    """
    if _URL_SCHEME.match(value):
        return value
    path = Path(value).expanduser()
    return Path(os.path.normpath(base / path)).as_uri()
