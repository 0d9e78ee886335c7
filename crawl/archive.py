"""The run's web archive: every answer the crawl receives, as WARC records.

Layout, under ``DIR/archive/``:

- ``kgclip-{writer}-{stamp}-{pid}-{seq}.warc.gz``: WARC 1.1 files, one gzip
  member per record, so a record is read by seeking to its offset. Each writer
  (one per partition process) opens new files of its own and never appends to
  an existing one, so several processes write at once without clashing and a
  file left with a torn last record by a killed process is never continued. A
  file rotates once it passes ``max_file_bytes``.
- ``{warc file}.idx``: one JSON line per response record (url, offset, end,
  status, date), appended after the record. Lookups load these; a WARC file
  longer than its index says (the index lost its last lines, or is missing) is
  scanned from where the index ends.

Each response record is written in one ``write`` and flushed, so a killed
process loses at most the record it was writing; reading checks each member's
gzip trailer and the record's length, and skips a torn record.

Bodies are stored as they came over the wire (after de-chunking), with their
``Content-Encoding``; :func:`decode_body` undoes gzip and deflate when they are
read back. A record whose body was not kept whole (too large, cut off, or
withheld because the publisher opted out) carries ``WARC-Truncated``.
"""

from __future__ import annotations

import gzip
import http
import io
import json
import logging
import os
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from multidict import CIMultiDict, CIMultiDictProxy
from warcio.archiveiterator import ArchiveIterator
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crawl.web import Location, Response
from kg.errors import InputError

log = logging.getLogger(__name__)

# Record types that answer a URL: HTTP responses, and files read from disk.
ANSWERS = ("response", "resource")

GIB = 1024**3
WARC_SUFFIX = ".warc.gz"
INDEX_SUFFIX = ".idx"
SOFTWARE = "kgclip/0.1 (warcio)"
# Read a gzip member in pieces of this size while looking for its end.
_READ_CHUNK_BYTES = 256 * 1024
# WARC-Truncated reasons (WARC 1.1, section 5.13) and what they mean here.
TRUNCATED_LENGTH = "length"  # the body passed the size limit and was dropped
TRUNCATED_DISCONNECT = "disconnect"  # the server closed before the body ended
TRUNCATED_WITHHELD = "unspecified"  # not kept: the publisher opted out


class ArchiveError(InputError):
    """A WARC record cannot be read: the file is missing or the record torn."""


@dataclass(frozen=True)
class _Entry:
    """Where the latest response for a URL lies."""

    date: str
    warc_file: str
    offset: int


class WarcArchive:
    """Writes and reads ``DIR/archive/*.warc.gz``; implements ``crawl.web.Archive``.

    ``writer_id`` names the writing process (a partition) in file names, so
    processes of one run never share a file. Reading (``read``, ``lookup``)
    works on every WARC file of the folder, whoever wrote it. ``lookup`` loads
    the indexes once, then sees this writer's own new records; call
    :meth:`refresh` to see what other processes wrote since.

    Not safe for use from several threads at once.
    """

    def __init__(
        self,
        folder: Path,
        *,
        writer_id: str = "w0",
        max_file_bytes: int = GIB,
        compress_level: int = 6,
        write_requests: bool = True,
        fsync: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.writer_id = _safe_name(writer_id)
        self.max_file_bytes = max_file_bytes
        self.compress_level = compress_level
        self.write_requests = write_requests
        self.fsync = fsync
        self._out: BinaryIO | None = None
        self._index_out: io.TextIOWrapper | None = None
        self._out_name = ""
        self._seq = 0
        self._entries: dict[str, _Entry] | None = None

    # -- writing ----------------------------------------------------------

    def record(
        self,
        url: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        request_headers: Mapping[str, str] | None = None,
        truncated: str | None = None,
    ) -> Location:
        """Append a response record (and its request record) and flush them.

        ``headers`` are the response headers as received; a multidict keeps
        repeated headers apart. ``body`` is the payload as received, still
        content-encoded. ``truncated`` is a ``WARC-Truncated`` reason when the
        body is not the whole answer. Returns where the response record lies.
        """
        date = _warc_date()
        response = _response_record(url, status, headers, body, date, truncated)
        offset = self._append(response, may_rotate=True)
        location = Location(self._out_name, offset)
        if self.write_requests and request_headers is not None:
            # the request stays in its response's file, whatever the size
            request = _request_record(url, request_headers, date, response)
            self._append(request, may_rotate=False)
        self._index(url, status, date, location, self._tell())
        return location

    def _append(self, record: ArcWarcRecord, *, may_rotate: bool) -> int:
        # One gzip member per record, written in a single call and flushed, so
        # a reader can seek to any record and a kill leaves at most one torn.
        # Known shortcoming: this runs on the fetcher's event loop and blocks
        # it while compressing (a few ms for a large image). Measured, the
        # archive takes about a fifth of a download's time; moving it to a
        # writer thread would win that back at the cost of ordering care.
        plain = io.BytesIO()
        WARCWriter(plain, gzip=False, warc_version="1.1").write_record(record)
        member = gzip.compress(plain.getvalue(), self.compress_level, mtime=0)
        out = self._writable(len(member), may_rotate)
        offset = out.tell()
        try:
            out.write(member)
            out.flush()
            if self.fsync:
                os.fsync(out.fileno())
        except OSError:
            # The file may now end in a partial record: never write after it.
            self._close_files()
            raise
        return offset

    def _writable(self, num_bytes: int, may_rotate: bool) -> BinaryIO:
        # A record larger than the limit still goes into a file of its own.
        out = self._out
        if out is not None and may_rotate:
            size = out.tell()
            if size > 0 and size + num_bytes > self.max_file_bytes:
                self._close_files()
                out = None
        if out is None:
            out = self._open_next()
        return out

    def _open_next(self) -> BinaryIO:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        while True:
            self._seq += 1
            name = f"kgclip-{self.writer_id}-{stamp}-{os.getpid()}-{self._seq:05d}"
            try:
                # "x": fail rather than share a file with another writer
                out = open(self.folder / (name + WARC_SUFFIX), "xb")  # noqa: SIM115
            except FileExistsError:
                continue
            break
        self._out, self._out_name = out, name + WARC_SUFFIX
        self._index_out = open(  # noqa: SIM115
            self.folder / (self._out_name + INDEX_SUFFIX), "a", encoding="utf-8"
        )
        log.debug("writing WARC file %s", self._out_name)
        return out

    def _tell(self) -> int:
        assert self._out is not None
        return self._out.tell()

    def _index(
        self, url: str, status: int, date: str, location: Location, end: int
    ) -> None:
        line = {"url": url, "offset": location.offset, "end": end}
        line |= {"status": status, "date": date}
        assert self._index_out is not None
        self._index_out.write(json.dumps(line) + "\n")
        self._index_out.flush()
        if self._entries is not None:
            entry = _Entry(date, location.warc_file, location.offset)
            _remember(self._entries, url, entry)

    def close(self) -> None:
        """Close the open WARC file; the next record opens a new one."""
        self._close_files()

    def _close_files(self) -> None:
        for stream in (self._out, self._index_out):
            if stream is not None:
                stream.close()
        self._out = self._index_out = None

    def __enter__(self) -> WarcArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------

    def read(self, location: Location) -> Response:
        """The response recorded at ``location``, body decoded.

        Raises :class:`ArchiveError` when the file is missing or the record is
        torn or not a response.
        """
        path = self.folder / location.warc_file
        try:
            with open(path, "rb") as stream:
                stream.seek(location.offset)
                member = _read_member(stream)
        except OSError as exc:
            raise ArchiveError(
                f"cannot read WARC file {path}: {exc}; is run.dir the run that "
                "wrote it?"
            ) from exc
        if member is None:
            raise ArchiveError(
                f"the record at {path}:{location.offset} is torn (the writing "
                "process was killed); fetch the URL again to record it anew"
            )
        return _to_response(_parse_record(member[0], path, location), location)

    def read_at(self, warc_file: str, offset: int) -> Response:
        """:meth:`read` for a downloads row's ``warc_file`` and ``warc_offset``."""
        return self.read(Location(warc_file, offset))

    def lookup(self, url: str) -> Response | None:
        """The latest response recorded for ``url``, or None."""
        entry = self._load_entries().get(url)
        if entry is None:
            return None
        return self.read(Location(entry.warc_file, entry.offset))

    def refresh(self) -> None:
        """Forget the loaded indexes; the next lookup reads them again."""
        self._entries = None

    def urls(self) -> set[str]:
        """Every URL with at least one readable response record."""
        return set(self._load_entries())

    def _load_entries(self) -> dict[str, _Entry]:
        # Known shortcoming: the index of every URL is held in memory, about
        # 200 bytes a URL, so 10 million URLs take some 2 GB. That is fine for
        # the runs this project makes now; for larger ones the sidecar indexes
        # would be merged into one sorted file (or a DuckDB table) and looked
        # up on disk instead.
        if self._entries is None:
            started = time.monotonic()
            entries: dict[str, _Entry] = {}
            files = sorted(self.folder.glob("*" + WARC_SUFFIX))
            for path in files:
                for url, entry in _file_entries(path):
                    _remember(entries, url, entry)
            self._entries = entries
            log.debug(
                "loaded the archive index: %d URLs in %d files in %.2f s",
                len(entries),
                len(files),
                time.monotonic() - started,
            )
        return self._entries

    def iter_responses(self) -> Iterator[tuple[Location, Response]]:
        """Every readable response record of the folder, file by file."""
        for path in sorted(self.folder.glob("*" + WARC_SUFFIX)):
            for offset, _end, data in _members(path, 0):
                location = Location(path.name, offset)
                record = _parse_record(data, path, location)
                if record.rec_type in ANSWERS:
                    yield location, _to_response(record, location)


def _remember(entries: dict[str, _Entry], url: str, entry: _Entry) -> None:
    # The latest answer wins; file name and offset break ties of equal dates.
    old = entries.get(url)
    if old is None or (entry.date, entry.warc_file, entry.offset) >= (
        old.date,
        old.warc_file,
        old.offset,
    ):
        entries[url] = entry


def _file_entries(path: Path) -> Iterator[tuple[str, _Entry]]:
    """The response records of one WARC file: from its index, then by scanning
    whatever the index does not cover."""
    end = 0
    for line in _index_lines(path.with_name(path.name + INDEX_SUFFIX)):
        end = max(end, int(line["end"]))
        yield line["url"], _Entry(line["date"], path.name, int(line["offset"]))
    if path.stat().st_size > end:
        for offset, _next, data in _members(path, end):
            record = _parse_record(data, path, Location(path.name, offset))
            if record.rec_type in ANSWERS:
                url = record.rec_headers.get_header("WARC-Target-URI")
                date = record.rec_headers.get_header("WARC-Date")
                yield url, _Entry(date, path.name, offset)


def _index_lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with open(path, encoding="utf-8") as lines:
        for text in lines:
            try:
                line = json.loads(text)
            except ValueError:
                # a line cut short by a kill; the scan covers its record
                log.warning("skipping a torn line of %s", path.name)
                return
            yield line


def _members(path: Path, start: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, end, decompressed bytes) of each whole gzip member from start.

    Stops, with a warning, at a torn member: the end of a killed writer's file.
    """
    with open(path, "rb") as stream:
        offset = start
        while True:
            stream.seek(offset)
            member = _read_member(stream)
            if member is None:
                if stream.tell() > offset:
                    log.warning(
                        "%s: torn record at offset %d, skipped (its writer was "
                        "killed while writing it)",
                        path.name,
                        offset,
                    )
                return
            data, size = member
            yield offset, offset + size, data
            offset += size


def _read_member(stream: BinaryIO) -> tuple[bytes, int] | None:
    """Decompress the gzip member at the stream's position.

    Returns its bytes and compressed size, or None when the stream ends before
    the member does (or the member is corrupt).
    """
    decompressor = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    pieces: list[bytes] = []
    size = 0
    while not decompressor.eof:
        chunk = stream.read(_READ_CHUNK_BYTES)
        if not chunk:
            return None
        try:
            pieces.append(decompressor.decompress(chunk))
        except zlib.error:
            return None
        size += len(chunk) - len(decompressor.unused_data)
    return b"".join(pieces), size


def _parse_record(data: bytes, path: Path, location: Location) -> ArcWarcRecord:
    """Parse one whole WARC record, keeping its payload bytes in ``payload``."""
    records = ArchiveIterator(io.BytesIO(data))
    record = next(iter(records), None)
    if record is None:
        raise ArchiveError(f"no WARC record at {path}:{location.offset}")
    record.payload = record.raw_stream.read()
    return record


def _to_response(record: ArcWarcRecord, location: Location) -> Response:
    if record.rec_type == "resource":
        return _resource_response(record, location)
    if record.rec_type != "response" or record.http_headers is None:
        raise ArchiveError(
            f"the record at {location.warc_file}:{location.offset} is a "
            f"{record.rec_type} record, not a response"
        )
    headers = CIMultiDictProxy(
        CIMultiDict((k.lower(), v) for k, v in record.http_headers.headers)
    )
    url = record.rec_headers.get_header("WARC-Target-URI")
    return Response(
        url=url,
        final_url=url,
        status=int(record.http_headers.get_statuscode() or 0),
        headers=headers,
        body=decode_body(headers.get("content-encoding", ""), record.payload),
        location=location,
        fetched=_iso_from_warc_date(record.rec_headers.get_header("WARC-Date")),
        truncated=record.rec_headers.get_header("WARC-Truncated"),
    )


def _resource_response(record: ArcWarcRecord, location: Location) -> Response:
    """A resource record read back as the answer a server would have given."""
    url = record.rec_headers.get_header("WARC-Target-URI")
    kind = record.rec_headers.get_header("Content-Type") or "application/octet-stream"
    return Response(
        url=url,
        final_url=url,
        status=200,
        headers={"content-type": kind, "content-length": str(len(record.payload))},
        body=record.payload,
        location=location,
        fetched=_iso_from_warc_date(record.rec_headers.get_header("WARC-Date")),
    )


def decode_body(content_encoding: str, raw: bytes, max_bytes: int = -1) -> bytes:
    """Undo ``Content-Encoding`` gzip or deflate; other bodies pass unchanged.

    A body that claims an encoding but is not encoded (a recorder that stored
    it decoded) passes unchanged too. With ``max_bytes`` >= 0, at most that many
    bytes plus one are produced, so a caller can see that a body decodes to
    more than it accepts without inflating it all.
    """
    encodings = [e.strip().lower() for e in content_encoding.split(",") if e.strip()]
    body = raw
    for encoding in reversed(encodings):
        if encoding in ("gzip", "x-gzip") and body[:2] == b"\x1f\x8b":
            body = _inflate(body, 31, max_bytes)
        elif encoding == "deflate" and body:
            # Servers send deflate both with a zlib header (the RFC) and bare.
            wbits = 15 if body[0] & 0x0F == 8 else -15
            body = _inflate(body, wbits, max_bytes)
    return body


def _inflate(data: bytes, wbits: int, max_bytes: int) -> bytes:
    decompressor = zlib.decompressobj(wbits=wbits)
    try:
        if max_bytes < 0:
            return decompressor.decompress(data) + decompressor.flush()
        return decompressor.decompress(data, max_bytes + 1)
    except zlib.error:
        return data


def _response_record(
    url: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    date: str,
    truncated: str | None,
) -> ArcWarcRecord:
    if not url.startswith(("http:", "https:")):
        return _resource_record(url, headers, body, date)
    reason = _reason(status)
    http_headers = StatusAndHeaders(
        f"{status} {reason}", list(_header_lines(headers)), protocol="HTTP/1.1"
    )
    warc_headers = {"WARC-Date": date}
    if truncated:
        warc_headers["WARC-Truncated"] = truncated
    return _builder().create_warc_record(
        url,
        "response",
        payload=io.BytesIO(body),
        length=len(body),
        http_headers=http_headers,
        warc_headers_dict=warc_headers,
    )


def _resource_record(
    url: str, headers: Mapping[str, str], body: bytes, date: str
) -> ArcWarcRecord:
    """A file read from disk (a local collection): a WARC resource record,
    which carries the bytes and their type but no HTTP exchange."""
    kind = dict(_header_lines(headers)).get("content-type", "")
    warc_headers = {"WARC-Date": date}
    return _builder().create_warc_record(
        url,
        "resource",
        payload=io.BytesIO(body),
        length=len(body),
        warc_content_type=kind or "application/octet-stream",
        warc_headers_dict=warc_headers,
    )


def _request_record(
    url: str,
    headers: Mapping[str, str],
    date: str,
    response: ArcWarcRecord,
) -> ArcWarcRecord:
    target = _request_target(url)
    http_headers = StatusAndHeaders(
        f"GET {target}", list(_header_lines(headers)), protocol="HTTP/1.1"
    )
    warc_headers = {"WARC-Date": date}
    warc_headers["WARC-Concurrent-To"] = response.rec_headers.get_header(
        "WARC-Record-ID"
    )
    return _builder().create_warc_record(
        url, "request", http_headers=http_headers, warc_headers_dict=warc_headers
    )


def _builder() -> WARCWriter:
    return WARCWriter(io.BytesIO(), gzip=False, warc_version="1.1")


def _header_lines(headers: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    # items() of a multidict yields every line, repeated names included. The
    # body is stored de-chunked, so its Transfer-Encoding no longer applies.
    for name, value in headers.items():
        if name.lower() != "transfer-encoding":
            yield name, value


def _request_target(url: str) -> str:
    scheme_end = url.find("://")
    path_start = url.find("/", scheme_end + 3 if scheme_end >= 0 else 0)
    return url[path_start:] if path_start >= 0 else "/"


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _warc_date() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_from_warc_date(date: str) -> str:
    return date.replace("Z", "+00:00") if date else ""


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text) or "w"
