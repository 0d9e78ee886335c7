"""The run's web archive: every answer the crawl receives, as WARC records.

Layout, under ``DIR/archive/``:

- ``kgclip-{writer}-{stamp}-{pid}-{seq}.warc.gz``: WARC 1.1 files, one gzip
  member per record, so a record is read by seeking to its offset. Each writer
  (one per partition process) opens new files of its own and never appends to
  an existing one, so several processes write at once without clashing and a
  file left with a torn last record by a killed process is never continued. A
  file rotates once it passes ``max_file_bytes``.
- ``{warc file}.idx``: one JSON line per response record (url, offset, end,
  status, date), appended after the record and written out when its buffer
  fills or the file is closed. Lookups load these; a WARC file longer than its
  index says (the index is behind, lost its last lines, or is missing) is
  scanned from where the index ends.

An answer's records (the response and its request) are written in one
``write`` and flushed, so a killed process loses at most the answer it was
writing; reading checks each member's gzip trailer and the record's length,
and skips a torn record.

Records are written as bytes here, not through warcio (which building two
records per URL made a fifth of a download's CPU time); warcio reads them, and
the tests check that it does. Image answers are stored in gzip members without
compression (level 0, deflate's stored blocks, built by hand), since image
formats are compressed already; other answers are deflated at
``compress_level``.

Bodies are stored as they came over the wire (after de-chunking), with their
``Content-Encoding``; :func:`decode_body` undoes gzip and deflate when they are
read back. A record whose body was not kept whole (too large, cut off, or
withheld because the publisher opted out) carries ``WARC-Truncated``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http
import io
import json
import logging
import os
import random
import string
import struct
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from multidict import CIMultiDict, CIMultiDictProxy
from warcio.archiveiterator import ArchiveIterator
from warcio.recordloader import ArcWarcRecord

from crawl.web import Location, Response
from kg.errors import InputError

log = logging.getLogger(__name__)

# Record types that answer a URL: HTTP responses, and files read from disk.
ANSWERS = ("response", "resource")

GIB = 1024**3
WARC_SUFFIX = ".warc.gz"
INDEX_SUFFIX = ".idx"
WARC_VERSION = b"WARC/1.1"
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

    ``compress_level`` is the gzip level of an answer's records;
    ``image_compress_level`` replaces it for answers whose Content-Type is
    ``image/*`` (0: stored, not compressed).

    Not safe for use from several threads at once.
    """

    def __init__(
        self,
        folder: Path,
        *,
        writer_id: str = "w0",
        max_file_bytes: int = GIB,
        compress_level: int = 6,
        image_compress_level: int = 0,
        write_requests: bool = True,
        fsync: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.writer_id = _safe_name(writer_id)
        self.max_file_bytes = max_file_bytes
        self.compress_level = compress_level
        self.image_compress_level = image_compress_level
        self.write_requests = write_requests
        self.fsync = fsync
        self._out: BinaryIO | None = None
        self._out_bytes = 0  # the open file's size: tell() would cost a syscall
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
        body is not the whole answer. A URL that is not http(s) (a file read
        from disk) gets a ``resource`` record instead. Returns where the
        response record lies.
        """
        date = _warc_date()
        record_id = _record_id()
        response, kind = _response_record(
            url, status, headers, body, date, record_id, truncated
        )
        level = self.compress_level
        if kind.lower().startswith("image/"):
            level = self.image_compress_level
        members = [_gzip_member(response, level)]
        if self.write_requests and request_headers is not None:
            # the request follows its response, in the same file and write
            request = _request_record(url, request_headers, date, record_id)
            members.append(_gzip_member(request, level))

        offset = self._append(b"".join(members))
        location = Location(self._out_name, offset)
        self._index(url, status, date, location, self._out_bytes)
        return location

    def _append(self, data: bytes) -> int:
        # One gzip member per record, an answer's members written in a single
        # call and flushed, so a reader can seek to any record and a kill
        # leaves at most one answer torn.
        # Known shortcoming: this runs on the fetcher's event loop and blocks
        # it while compressing a page or writing a large image. Images are
        # stored, not compressed, so that is short; a writer thread would win
        # the rest back at the cost of ordering care.
        out = self._writable(len(data))
        offset = self._out_bytes
        try:
            out.write(data)
            out.flush()
            if self.fsync:
                os.fsync(out.fileno())
        except OSError:
            # The file may now end in a partial record: never write after it.
            self._close_files()
            raise
        self._out_bytes += len(data)
        return offset

    def _writable(self, num_bytes: int) -> BinaryIO:
        # A record larger than the limit still goes into a file of its own.
        out = self._out
        if out is not None:
            size = self._out_bytes
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
        self._out, self._out_name, self._out_bytes = out, name + WARC_SUFFIX, 0
        self._index_out = open(  # noqa: SIM115
            self.folder / (self._out_name + INDEX_SUFFIX), "a", encoding="utf-8"
        )
        log.debug("writing WARC file %s", self._out_name)
        return out

    def _index(
        self, url: str, status: int, date: str, location: Location, end: int
    ) -> None:
        # The line json.dumps would make of the same dict, without the dict.
        line = f'{{"url": {json.dumps(url)}, "offset": {location.offset}, '
        line += f'"end": {end}, "status": {status}, "date": "{date}"}}\n'
        # Not flushed: the WARC file is the record and is flushed; a reader
        # scans what the index does not cover yet (a few dozen records).
        assert self._index_out is not None
        self._index_out.write(line)
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

    def __contains__(self, url: object) -> bool:
        """Whether a response for ``url`` is recorded; reads no record."""
        return url in self._load_entries()

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
    record_id: str,
    truncated: str | None,
) -> tuple[bytes, str]:
    """The bytes of the record answering ``url``, and the answer's Content-Type.

    A URL that is not http(s) gets a ``resource`` record: a file read from
    disk (a local collection) carries its bytes and type, but no HTTP exchange.
    """
    if not url.startswith(("http:", "https:")):
        kind = _content_type(headers) or "application/octet-stream"
        fields = _warc_fields("resource", url, date, record_id)
        return _warc_record(fields, kind, b"", body), kind
    head, kind = _http_head(f"HTTP/1.1 {status} {_reason(status)}", headers)
    extra = f"WARC-Truncated: {truncated}\r\n" if truncated else ""
    fields = _warc_fields("response", url, date, record_id, extra)
    return _warc_record(fields, _HTTP_RESPONSE, head, body), kind


def _request_record(
    url: str, headers: Mapping[str, str], date: str, response_id: str
) -> bytes:
    # Known shortcoming: the request line reads "HTTP/1.1 GET /path", protocol
    # first, as warcio wrote it for this project before; HTTP sends "GET /path
    # HTTP/1.1". Readers (warcio too) take it apart without complaint, and the
    # archives written so far agree; writing it the HTTP way would change what
    # a reader sees as the request line, which the archive tests pin down.
    head, _kind = _http_head(f"HTTP/1.1 GET {_request_target(url)}", headers)
    extra = f"WARC-Concurrent-To: {response_id}\r\n"
    fields = _warc_fields("request", url, date, _record_id(), extra)
    return _warc_record(fields, _HTTP_REQUEST, head, b"")


_HTTP_RESPONSE = "application/http; msgtype=response"
_HTTP_REQUEST = "application/http; msgtype=request"


def _warc_fields(
    kind: str, url: str, date: str, record_id: str, extra: str = ""
) -> str:
    """The WARC header lines naming a record, each ending in CRLF."""
    return (
        f"WARC-Type: {kind}\r\nWARC-Record-ID: {record_id}\r\n"
        f"WARC-Date: {date}\r\nWARC-Target-URI: {url}\r\n{extra}"
    )


def _warc_record(fields: str, content_type: str, head: bytes, payload: bytes) -> bytes:
    """A whole WARC/1.1 record: ``fields``, then digests, type and length, then
    the block: ``head`` (an HTTP head, or nothing) followed by ``payload``.

    The digests are SHA-1 in base 32, as warcio and most WARC tools write them.
    """
    payload_digest = _sha1_base32(payload) if payload else _SHA1_OF_NOTHING
    block_digest = payload_digest
    if head:
        block = hashlib.sha1(head)
        block.update(payload)
        block_digest = _base32(block.digest())
    warc_head = (
        f"WARC/1.1\r\n{fields}"
        f"WARC-Payload-Digest: sha1:{payload_digest}\r\n"
        f"WARC-Block-Digest: sha1:{block_digest}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(head) + len(payload)}\r\n\r\n"
    )
    # surrogateescape: a URL is text, but never let an odd one stop the crawl
    warc_bytes = warc_head.encode("utf-8", "surrogateescape")
    return b"".join((warc_bytes, head, payload, b"\r\n\r\n"))


def _http_head(first_line: str, headers: Mapping[str, str]) -> tuple[bytes, str]:
    """An HTTP head (first line, header lines, blank line) as bytes, and the
    value of its Content-Type.

    aiohttp decodes header bytes as UTF-8 with ``surrogateescape``, so encoding
    them back the same way stores the bytes as they came over the wire. The
    body is stored de-chunked, so its Transfer-Encoding no longer applies.
    """
    lines = [first_line]
    kind = ""
    # items() of a multidict yields every line, repeated names included.
    for name, value in headers.items():
        lower = name.lower()
        if lower == "transfer-encoding":
            continue
        if lower == "content-type" and not kind:
            kind = value
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape"), kind


def _content_type(headers: Mapping[str, str]) -> str:
    for name, value in headers.items():
        if name.lower() == "content-type":
            return value
    return ""


def _sha1_base32(data: bytes) -> str:
    return _base32(hashlib.sha1(data).digest())


# Base 32 (RFC 4648) ten bits at a time: base64.b32encode works five bytes at
# a time in Python, and took longer than hashing a 3 KB image.
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_PAIRS = [a + b for a in _BASE32 for b in _BASE32]
_SHIFTS_160 = range(150, -1, -10)  # a SHA-1 digest: 160 bits, 16 pairs


def _base32(digest: bytes) -> str:
    """A 20-byte digest in base 32, as ``base64.b32encode`` writes it."""
    bits = int.from_bytes(digest, "big")
    return "".join([_BASE32_PAIRS[(bits >> shift) & 1023] for shift in _SHIFTS_160])


_SHA1_OF_NOTHING = _sha1_base32(b"")


def _record_id() -> str:
    """A random (version 4) UUID as a WARC-Record-ID.

    From ``random`` rather than ``uuid.uuid4``, which asks the kernel for 16
    bytes each time; ``random`` is seeded from the kernel and again in every
    forked child, so two writers never share a sequence.
    """
    bits = random.getrandbits(128) & _UUID_RANDOM_BITS | _UUID_VERSION_4
    text = f"{bits:032x}"
    return f"<urn:uuid:{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}>"


# The version (4) and variant (10) bits of a random UUID, RFC 4122, 4.4.
_UUID_VERSION_4 = (0x4 << 76) | (0x2 << 62)
_UUID_RANDOM_BITS = ~((0xF << 76) | (0x3 << 62))


# A gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS
# unknown; what gzip.compress(data, 0, mtime=0) writes.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A stored deflate block holds at most this many bytes (RFC 1951, 3.2.4).
_STORED_BLOCK_BYTES = 65_535


def _gzip_member(data: bytes, level: int) -> bytes:
    """``data`` as one gzip member, deflated at ``level`` or, at 0, stored."""
    if level > 0:
        return gzip.compress(data, level, mtime=0)
    return _stored_gzip(data)


def _stored_gzip(data: bytes) -> bytes:
    """A gzip member of stored (uncompressed) deflate blocks, built by hand.

    zlib sets up its 256 KB deflate state for every call, even at level 0,
    which for a 3 KB image cost more than all the rest of writing its record
    (about 55 µs); a stored block is just a 5-byte header before the bytes.
    """
    parts: list[bytes | memoryview] = [_GZIP_HEADER]
    view = memoryview(data)
    start = 0
    while True:
        end = min(start + _STORED_BLOCK_BYTES, len(data))
        size = end - start
        is_last = end == len(data)
        # BFINAL in bit 0, BTYPE 00 (stored), then LEN and its complement
        parts.append(struct.pack("<BHH", is_last, size, size ^ 0xFFFF))
        parts.append(view[start:end])
        if is_last:
            break
        start = end
    parts.append(struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF))
    return b"".join(parts)


def _request_target(url: str) -> str:
    scheme_end = url.find("://")
    path_start = url.find("/", scheme_end + 3 if scheme_end >= 0 else 0)
    target = url[path_start:] if path_start >= 0 else "/"
    if not target.isascii():
        # HTTP sends a target in ASCII: UTF-8, %-escaped, as aiohttp does
        return quote(target, safe=string.punctuation, errors="surrogateescape")
    return target


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def _warc_date() -> str:
    """Now, as WARC-Date writes it: ``2026-12-03T19:43:26.952674Z``."""
    now = time.time()
    second = int(now)
    return f"{_up_to_second(second)}.{int((now - second) * 1e6):06d}Z"


@functools.lru_cache(maxsize=4)
def _up_to_second(second: int) -> str:
    # strftime took 3 µs a call, more than the rest of the date; this way it
    # runs once a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _iso_from_warc_date(date: str) -> str:
    return date.replace("Z", "+00:00") if date else ""


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text) or "w"
