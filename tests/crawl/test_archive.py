"""The web archive: standard WARC records, found again by offset and by URL,
and nothing lost or misread when a writer is killed mid-record."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator

from crawl.archive import ArchiveError, WarcArchive, decode_body
from crawl.web import Location
from tests.conftest import shared_file

JPEG_HEADERS = {"Content-Type": "image/jpeg", "Server": "fixture"}


@pytest.fixture
def images() -> list[bytes]:
    names = ["sklearn_flower.jpg", "skimage_coffee.png", "skimage_rocket.jpg"]
    return [shared_file(f"images/samples/{n}").read_bytes() for n in names]


@dataclass(frozen=True)
class Seen:
    """One record as warcio alone reads it: what any WARC tool would see."""

    type: str
    uri: str
    warc: dict[str, str]
    http: dict[str, str]  # the HTTP header lines; the status/request line too
    content: bytes


def warc_records(folder: Path) -> list[Seen]:
    found = []
    for path in sorted(folder.glob("*.warc.gz")):
        with open(path, "rb") as stream:
            for record in ArchiveIterator(stream):
                http = dict(record.http_headers.headers) if record.http_headers else {}
                if record.http_headers:
                    http[":line"] = record.http_headers.statusline
                found.append(
                    Seen(
                        record.rec_type,
                        record.rec_headers.get_header("WARC-Target-URI"),
                        dict(record.rec_headers.headers),
                        http,
                        record.raw_stream.read(),
                    )
                )
    return found


def test_records_are_standard_warc_read_back_by_offset(
    tmp_path: Path, images: list[bytes]
) -> None:
    folder = tmp_path / "archive"
    request = {"User-Agent": "kgclip/0.1 (+mailto:a@example.org)", "Accept": "*/*"}
    with WarcArchive(folder, writer_id="p007") as archive:
        locations = [
            archive.record(
                f"http://example.org/{i}.jpg",
                200,
                JPEG_HEADERS,
                body,
                request_headers=request,
            )
            for i, body in enumerate(images)
        ]

    # Any WARC reader sees a response and its request record per answer.
    records = warc_records(folder)
    assert [r.type for r in records] == ["response", "request"] * 3
    assert [r.content for r in records if r.type == "response"] == images
    assert records[0].http[":line"] == "200 OK"
    assert records[1].warc["WARC-Concurrent-To"] == records[0].warc["WARC-Record-ID"]
    assert records[1].http[":line"] == "GET /0.jpg"
    assert records[1].http["User-Agent"] == request["User-Agent"]

    # Each record is its own gzip member, read back alone by its offset.
    reader = WarcArchive(folder)
    for location, body in zip(locations, images, strict=True):
        response = reader.read(location)
        assert response.body == body
        assert response.status == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert response.fetched.endswith("+00:00")
    assert all(loc.warc_file.startswith("kgclip-p007-") for loc in locations)


def test_lookup_finds_the_latest_answer_for_a_url(
    tmp_path: Path, images: list[bytes]
) -> None:
    folder = tmp_path / "archive"
    url = "http://example.org/flaky.jpg"
    with WarcArchive(folder) as archive:
        archive.record(url, 503, {"Content-Type": "text/html"}, b"busy")
        archive.record("http://example.org/other.jpg", 200, JPEG_HEADERS, images[1])
        latest = archive.record(url, 200, JPEG_HEADERS, images[0])
        assert archive.lookup(url) is not None

    found = WarcArchive(folder).lookup(url)
    assert found is not None
    assert (found.status, found.body, found.location) == (200, images[0], latest)
    assert WarcArchive(folder).lookup("http://example.org/never.jpg") is None


def test_lookup_rebuilds_a_missing_index_by_scanning(
    tmp_path: Path, images: list[bytes]
) -> None:
    folder = tmp_path / "archive"
    with WarcArchive(folder) as archive:
        for i, body in enumerate(images):
            archive.record(f"http://example.org/{i}.jpg", 200, JPEG_HEADERS, body)
    (index,) = folder.glob("*.idx")
    index.unlink()

    reader = WarcArchive(folder)
    assert reader.urls() == {f"http://example.org/{i}.jpg" for i in range(3)}
    found = reader.lookup("http://example.org/2.jpg")
    assert found is not None and found.body == images[2]


def test_a_torn_last_record_is_skipped_and_never_appended_to(
    tmp_path: Path, images: list[bytes]
) -> None:
    folder = tmp_path / "archive"
    with WarcArchive(folder) as archive:
        archive.record("http://example.org/0.jpg", 200, JPEG_HEADERS, images[0])
        torn = archive.record("http://example.org/1.jpg", 200, JPEG_HEADERS, images[1])
    (path,) = folder.glob("*.warc.gz")
    # A killed writer: the file ends in the middle of the last record, and the
    # index lost its last line too.
    with open(path, "r+b") as stream:
        stream.truncate(torn.offset + 5000)
    index = path.with_name(path.name + ".idx")
    index.write_text(index.read_text().splitlines()[0] + "\n")
    torn_size = path.stat().st_size

    reader = WarcArchive(folder)
    assert reader.urls() == {"http://example.org/0.jpg"}
    assert reader.lookup("http://example.org/1.jpg") is None
    with pytest.raises(ArchiveError, match="torn"):
        reader.read(torn)

    # A new writer starts a file of its own; the torn one stays as it was.
    with WarcArchive(folder) as writer:
        again = writer.record("http://example.org/1.jpg", 200, JPEG_HEADERS, images[1])
    assert again.warc_file != path.name
    assert path.stat().st_size == torn_size
    found = WarcArchive(folder).lookup("http://example.org/1.jpg")
    assert found is not None and found.body == images[1]


def test_files_rotate_at_the_size_limit_and_writers_never_share_one(
    tmp_path: Path, images: list[bytes]
) -> None:
    folder = tmp_path / "archive"
    limit = 200_000  # the images are 5 kB to 400 kB, compressed a little less
    first = WarcArchive(folder, writer_id="p000", max_file_bytes=limit)
    second = WarcArchive(folder, writer_id="p001", max_file_bytes=limit)
    locations = []
    for i in range(6):
        writer = first if i % 2 == 0 else second
        url = f"http://example.org/{i}.jpg"
        locations.append(writer.record(url, 200, JPEG_HEADERS, images[i % 3]))
    first.close()
    second.close()

    files = {loc.warc_file for loc in locations}
    assert len(files) >= 4
    for name in files:
        size = (folder / name).stat().st_size
        records_in_file = sum(loc.warc_file == name for loc in locations)
        assert size <= limit or records_in_file == 1
    reader = WarcArchive(folder)
    for i, location in enumerate(locations):
        assert reader.read(location).body == images[i % 3]
    assert {n.split("-")[1] for n in files} == {"p000", "p001"}


def test_reading_a_missing_file_or_a_request_record_says_so(
    tmp_path: Path, images: list[bytes]
) -> None:
    folder = tmp_path / "archive"
    with WarcArchive(folder) as archive:
        location = archive.record(
            "http://example.org/a.jpg",
            200,
            JPEG_HEADERS,
            images[0],
            request_headers={"Accept": "*/*"},
        )
    reader = WarcArchive(folder)
    with pytest.raises(ArchiveError, match="cannot read WARC file"):
        reader.read(Location("nowhere.warc.gz", 0))
    (path,) = folder.glob("*.warc.gz")
    (request_offset,) = _offsets_of(path, "request")
    with pytest.raises(ArchiveError, match="request record"):
        reader.read(Location(location.warc_file, request_offset))


def _offsets_of(path: Path, record_type: str) -> list[int]:
    with open(path, "rb") as stream:
        records = ArchiveIterator(stream)
        return [
            records.get_record_offset() for r in records if r.rec_type == record_type
        ]


def test_encoded_bodies_are_stored_as_sent_and_read_decoded(tmp_path: Path) -> None:
    payload = b'{"results": [1, 2, 3]}' * 100
    folder = tmp_path / "archive"
    with WarcArchive(folder) as archive:
        location = archive.record(
            "http://example.org/api",
            200,
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            gzip.compress(payload),
        )
    (record,) = warc_records(folder)
    assert record.content[:2] == b"\x1f\x8b"  # stored as it came over the wire
    assert WarcArchive(folder).read(location).body == payload


def test_decode_body_passes_bodies_that_are_not_encoded() -> None:
    payload = b"already decoded by whoever recorded it"
    assert decode_body("gzip", payload) == payload
    assert decode_body("deflate", payload) == payload
    assert decode_body("br", payload) == payload
    assert decode_body("gzip", gzip.compress(payload)) == payload
    assert len(decode_body("gzip", gzip.compress(bytes(10_000)), 100)) == 101


def test_image_records_are_stored_and_every_digest_checks_out(
    tmp_path: Path, images: list[bytes]
) -> None:
    # The records are written by hand, not by warcio: warcio must read them
    # and find their SHA-1 digests right. Images are stored (gzip level 0,
    # blocks of at most 64 KiB; the rocket is 400 kB), other answers deflated.
    folder = tmp_path / "archive"
    request = {"User-Agent": "kgclip/0.1 (+mailto:a@example.org)"}
    page = b"<html>" + b"<p>the same words again</p>" * 500 + b"</html>"
    with WarcArchive(folder) as archive:
        for i, body in enumerate([*images, b""]):
            url = f"http://example.org/{i}.jpg"
            archive.record(url, 200, JPEG_HEADERS, body, request_headers=request)
        archive.record(
            "http://example.org/page", 200, {"content-type": "text/html"}, page
        )

    (path,) = folder.glob("*.warc.gz")
    with open(path, "rb") as stream:
        records = ArchiveIterator(stream, check_digests="raise")
        contents = [(r.rec_type, r.content_stream().read()) for r in records]
    responses = [content for kind, content in contents if kind == "response"]
    assert responses == [*images, b"", page]
    assert len(contents) == 2 * len(images) + 3

    members = _members_of(path)
    for member in members[: 2 * len(images) + 2]:
        # stored: 18 bytes of gzip header and trailer, 5 per block of 64 KiB
        stored = gzip.decompress(member)
        num_blocks = len(stored) // 65_535 + 1
        assert len(member) == len(stored) + 18 + 5 * num_blocks
    assert len(members[-1]) < len(page) // 10  # the page was deflated


def _members_of(path: Path) -> list[bytes]:
    with open(path, "rb") as stream:
        records = ArchiveIterator(stream)
        offsets = [records.get_record_offset() for _ in records]
    data = path.read_bytes()
    return [data[a:b] for a, b in zip(offsets, [*offsets[1:], len(data)], strict=True)]


def test_headers_and_urls_beyond_ascii_are_stored_as_they_came(tmp_path: Path) -> None:
    # aiohttp hands header bytes decoded as UTF-8 with surrogateescape; they go
    # back to the archive as the bytes the server sent, whatever they were.
    folder = tmp_path / "archive"
    url = "http://example.org/fleurs/rosé.jpg"
    headers = {"Content-Type": "image/jpeg", "X-Title": "Rosé", "X-Raw": "caf\udce9"}
    with WarcArchive(folder) as archive:
        location = archive.record(
            url, 200, headers, b"\xff\xd8\xff", request_headers={"Accept": "*/*"}
        )

    (path,) = folder.glob("*.warc.gz")
    plain = gzip.decompress(path.read_bytes())
    assert b"X-Title: Ros\xc3\xa9\r\n" in plain and b"X-Raw: caf\xe9\r\n" in plain
    assert b"GET /fleurs/ros%C3%A9.jpg\r\n" in plain  # the target as sent
    response = WarcArchive(folder).read(location)
    assert response.url == url and response.headers["x-title"] == "Rosé"
