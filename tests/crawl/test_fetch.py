"""The fetcher against the fixture web: what a user sees for each thing the
real web does, and what the archive holds afterwards."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import json
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from crawl.archive import WarcArchive
from crawl.fetch import FetchConfig, HttpFetcher, image_kind, retry_after_s
from crawl.politeness import x_robots_opt_out
from crawl.web import Purpose, Response
from kg.errors import ConfigError
from tests.crawl.conftest import ConfigMaker
from tests.crawl.fixture_web import DEFAULT_IMAGE, FixtureWeb
from tests.crawl.test_archive import warc_records


def fetch_all(
    config: FetchConfig,
    archive: WarcArchive,
    urls: Sequence[str],
    purpose: Purpose = "image",
) -> list[Response]:
    async def run() -> list[Response]:
        async with HttpFetcher(config, archive) as fetcher:
            tasks = [fetcher.fetch(url, purpose=purpose) for url in urls]
            return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def fetch_one(config: FetchConfig, archive: WarcArchive, url: str) -> Response:
    return fetch_all(config, archive, [url])[0]


def recorded(archive: WarcArchive, url: str) -> list[tuple[int, bytes, dict[str, str]]]:
    """(status, payload, WARC headers) of every response recorded for url."""
    return [
        (int(r.http[":line"].split()[0]), r.content, r.warc)
        for r in warc_records(archive.folder)
        if r.type == "response" and r.uri == url
    ]


# -- answers that work ------------------------------------------------------


def test_an_image_is_fetched_recorded_and_named_by_its_sender(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url(f"/images/{DEFAULT_IMAGE}")
    response = fetch_one(make_config(), archive, url)

    assert response.ok and response.error is None
    assert response.status == 200 and response.attempts == 1
    assert response.content_type == "image/jpeg"
    assert response.body == web.image_bytes(DEFAULT_IMAGE)
    assert response.location is not None
    assert archive.read(response.location).body == response.body
    (hit,) = web.hits(0, "/images/")
    assert hit.headers["User-Agent"] == "kgclip/0.1 (+mailto:crawl-tests@example.org)"


def test_robots_txt_is_fetched_once_per_host_and_recorded(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    paths = web.image_paths()[:12]
    urls = [web.url(f"/images/{p}", site=i % 2) for i, p in enumerate(paths)]
    responses = fetch_all(make_config(), archive, urls)

    assert all(r.ok for r in responses)
    assert len(web.hits(0, "/robots.txt")) == 1
    assert len(web.hits(1, "/robots.txt")) == 1
    assert len(recorded(archive, web.url("/robots.txt", site=0))) == 1


def test_placeholder_gif_is_kept_as_an_image_with_its_known_hash(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive, images_dir: Path
) -> None:
    # The fetcher cannot tell a placeholder from a photo; curation drops it by
    # hash, so the hash must be that of the placeholder file.
    response = fetch_one(make_config(), archive, web.url("/missing/Rosa_canina.jpg"))
    placeholder = (images_dir / "broken/imageNotFound.gif").read_bytes()

    assert response.ok and image_kind(response.body) == "gif"
    digest = hashlib.sha256(response.body).hexdigest()
    assert digest == hashlib.sha256(placeholder).hexdigest()


def test_a_redirect_chain_is_followed_and_each_hop_recorded(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url("/redirect/3")
    response = fetch_one(make_config(), archive, url)

    assert response.ok and response.url == url
    assert response.final_url == web.url(f"/images/{DEFAULT_IMAGE}")
    assert response.attempts == 4  # three redirects and the image
    hops = [web.url(f"/redirect/{n}") for n in (3, 2, 1)]
    assert [recorded(archive, hop)[0][0] for hop in hops] == [302, 302, 302]


def test_gzip_encoded_answers_are_archived_encoded_and_returned_decoded(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url("/gzip-json")
    (response,) = fetch_all(make_config(), archive, [url], purpose="api")

    assert response.ok
    assert len(json.loads(response.body)["results"]) == 200
    ((_status, payload, _warc),) = recorded(archive, url)
    assert gzip.decompress(payload) == response.body


# -- answers that fail ------------------------------------------------------


@pytest.mark.parametrize("code", [404, 403, 410])
def test_http_errors_are_reported_once_and_recorded(
    web: FixtureWeb,
    make_config: ConfigMaker,
    archive: WarcArchive,
    code: int,
) -> None:
    url = web.url(f"/status/{code}")
    response = fetch_one(make_config(), archive, url)

    assert (response.status, response.error, response.attempts) == (
        code,
        f"http_{code}",
        1,
    )
    assert [status for status, _, _ in recorded(archive, url)] == [code]


def test_503_then_success_is_retried_and_both_answers_archived(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url("/flaky/twice?fail=2&status=503")
    response = fetch_one(make_config(max_attempts=3), archive, url)

    assert response.ok and response.attempts == 3
    assert [s for s, _, _ in recorded(archive, url)] == [503, 503, 200]
    latest = archive.lookup(url)
    assert latest is not None and latest.status == 200


def test_retries_stop_after_max_attempts(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url("/flaky/forever?fail=100&status=502")
    response = fetch_one(make_config(max_attempts=2), archive, url)

    assert (response.status, response.error, response.attempts) == (502, "http_502", 2)
    assert len(web.hits(0, "/flaky/forever")) == 2


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_429_waits_as_retry_after_says(
    web: FixtureWeb,
    make_config: ConfigMaker,
    archive: WarcArchive,
    form: str,
) -> None:
    key = f"{form}-{time.time_ns()}"
    date = "&date=1" if form == "date" else ""
    url = web.url(f"/retry-after/{key}?seconds=2{date}")
    response = fetch_one(make_config(backoff_s=0.01), archive, url)

    assert response.ok and response.attempts == 2
    first, second = web.hits(0, "/retry-after/")
    # an HTTP date has whole seconds, so its wait may come out a second short
    assert second.started - first.started >= (1.9 if form == "seconds" else 0.9)


def test_retry_after_is_capped_by_the_config(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url(f"/retry-after/cap-{time.time_ns()}?seconds=3600")
    started = time.monotonic()
    response = fetch_one(make_config(max_backoff_s=0.3), archive, url)

    assert response.ok and response.attempts == 2
    assert time.monotonic() - started < 5


def test_a_slow_server_times_out_after_each_attempt(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url("/slow/too-slow?delay=1.5")
    config = make_config(read_timeout_s=0.3, max_attempts=2)
    response = fetch_one(config, archive, url)

    assert (response.status, response.error, response.attempts) == (0, "timeout", 2)
    assert recorded(archive, url) == []  # no answer came, nothing to archive


def test_a_truncated_body_is_an_error_and_archived_as_cut(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url("/truncated")
    response = fetch_one(make_config(max_attempts=1), archive, url)

    assert (response.status, response.error) == (200, "truncated_body")
    ((_status, payload, warc),) = recorded(archive, url)
    assert warc["WARC-Truncated"] == "disconnect"
    assert payload == web.image_bytes(DEFAULT_IMAGE)[: len(payload)]
    assert 0 < len(payload) < len(web.image_bytes(DEFAULT_IMAGE))


def test_a_host_refusing_connections_fails_with_its_own_reason(
    make_config: ConfigMaker, archive: WarcArchive
) -> None:
    # A port that was just free: nothing listens there.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/images/{DEFAULT_IMAGE}"
    response = fetch_one(make_config(max_attempts=2), archive, url)

    # robots.txt could not be asked, so the image is not asked either
    assert (response.status, response.error, response.attempts) == (
        0,
        "connection_error",
        0,
    )


def test_html_served_as_jpeg_is_not_an_image(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    response = fetch_one(make_config(), archive, web.url("/html-as-jpeg"))

    assert (response.status, response.error) == (200, "not_an_image")
    assert response.content_type == "image/jpeg"
    assert response.body.startswith(b"<!doctype html>")
    # the same page asked for as a page is fine
    (page,) = fetch_all(make_config(), archive, [web.url("/html-as-jpeg")], "page")
    assert page.ok


def test_an_endless_redirect_stops_at_the_limit(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    response = fetch_one(make_config(max_redirects=3), archive, web.url("/loop/0"))

    assert response.error == "too_many_redirects"
    assert response.final_url == web.url("/loop/4")
    assert len(web.hits(0, "/loop/")) == 4


def test_a_body_declared_too_large_is_not_read(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url("/huge")
    started = time.monotonic()
    response = fetch_one(make_config(max_body_bytes=1024 * 1024), archive, url)

    assert (response.status, response.error, response.body) == (200, "too_large", b"")
    assert time.monotonic() - started < 2  # 200 MiB were not downloaded
    ((_status, payload, warc),) = recorded(archive, url)
    assert payload == b"" and warc["WARC-Truncated"] == "length"


def test_a_body_growing_too_large_is_cut_off(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url("/endless")
    response = fetch_one(make_config(max_body_bytes=1024 * 1024), archive, url)

    assert (response.status, response.error, response.body) == (200, "too_large", b"")
    ((_status, payload, warc),) = recorded(archive, url)
    assert payload == b"" and warc["WARC-Truncated"] == "length"


# -- robots.txt and X-Robots-Tag --------------------------------------------


def test_robots_txt_disallow_is_honoured_without_asking_the_path(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    url = web.url(f"/private/{DEFAULT_IMAGE}")
    response = fetch_one(make_config(), archive, url)

    assert (response.status, response.error) == (0, "robots_disallowed")
    assert web.hits(0, "/private/") == []
    assert recorded(archive, url) == []


def test_robots_txt_rules_apply_to_the_configured_agent(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    # The fixture's robots.txt shuts out "otherbot" entirely.
    config = make_config(user_agent="otherbot/2.0 (+mailto:a@example.org)")
    response = fetch_one(config, archive, web.url(f"/images/{DEFAULT_IMAGE}"))

    assert response.error == "robots_disallowed"
    assert web.hits(0, "/images/") == []


def test_missing_robots_allows_and_unreachable_robots_forbids(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    # Site 2 answers robots.txt with 404 (no rules), site 3 with 503, which
    # RFC 9309 asks crawlers to read as "disallow everything".
    urls = [web.url(f"/images/{DEFAULT_IMAGE}", site=s) for s in (2, 3)]
    no_rules, unreachable = fetch_all(make_config(), archive, urls)

    assert no_rules.ok
    assert unreachable.error == "robots_unreachable"
    assert web.hits(3, "/images/") == []


@pytest.mark.parametrize(
    ("tags", "expected_error"),
    [
        (["noai"], "x_robots_tag"),
        (["noimageindex, nofollow"], "x_robots_tag"),
        (["kgclip: noimageai"], "x_robots_tag"),
        (["otherbot: noai"], None),
        (["otherbot: noai", "noindex"], "x_robots_tag"),
        (["max-image-preview: large, nofollow"], None),
    ],
)
def test_x_robots_tag_opt_outs_are_honoured(
    web: FixtureWeb,
    make_config: ConfigMaker,
    archive: WarcArchive,
    tags: list[str],
    expected_error: str | None,
) -> None:
    query = "&".join(f"tag={t.replace(' ', '%20')}" for t in tags)
    url = web.url(f"/x-robots?{query}")
    response = fetch_one(make_config(), archive, url)

    assert response.status == 200 and response.error == expected_error
    ((_status, payload, warc),) = recorded(archive, url)
    if expected_error:
        # the opt-out is on record, the withheld image is not
        assert response.body == b"" and payload == b""
        assert warc["WARC-Truncated"] == "unspecified"
    else:
        assert response.body == payload == web.image_bytes(DEFAULT_IMAGE)


def test_x_robots_tag_can_be_switched_off(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    response = fetch_one(
        make_config(x_robots_tag=False), archive, web.url("/x-robots?tag=noai")
    )
    assert response.ok


def test_x_robots_opt_out_scopes_directives_to_user_agents() -> None:
    directives = ("noai", "noimageai", "noindex", "noimageindex", "none")
    assert x_robots_opt_out(["NoAI"], "kgclip", directives) == "noai"
    assert x_robots_opt_out(["none"], "kgclip", directives) == "none"
    assert x_robots_opt_out(["googlebot: noindex"], "kgclip", directives) is None
    scoped = ["googlebot: nofollow, kgclip: noimageai"]
    assert x_robots_opt_out(scoped, "kgclip", directives) == "noimageai"
    assert x_robots_opt_out(["unavailable_after: 2020-01-01"], "kgclip", ()) is None


# -- addresses --------------------------------------------------------------


def test_private_addresses_are_refused_before_connecting(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    port = web.ports[0]
    literal = f"http://127.0.0.2:{port}/images/{DEFAULT_IMAGE}"
    redirected = web.url(f"/redirect/1?to={literal}")
    by_name = f"http://localhost:{port}/images/{DEFAULT_IMAGE}"

    direct, via_redirect = fetch_all(make_config(), archive, [literal, redirected])
    (named,) = fetch_all(make_config(allow_networks=[]), archive, [by_name])

    assert direct.error == via_redirect.error == named.error == "private_address"
    assert via_redirect.final_url == literal
    # only the redirect itself (and its robots.txt) reached the server
    assert [h.path for h in web.hits(0)] == ["/robots.txt", "/redirect/1?to=" + literal]


def test_allow_hosts_admits_a_named_host(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    config = make_config(allow_networks=[], allow_hosts=["127.0.0.1"])
    response = fetch_one(config, archive, web.url(f"/images/{DEFAULT_IMAGE}"))
    assert response.ok


# -- politeness -------------------------------------------------------------


def test_per_host_and_global_concurrency_limits_hold(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    urls = [web.url(f"/slow/c{i}?delay=0.2", site=i % 2) for i in range(12)]
    config = make_config(per_host_connections=2, max_connections=3)
    responses = fetch_all(config, archive, urls)

    assert all(r.ok for r in responses)
    # each answer takes 0.2 s: an overlap of more than 0.1 s is a real one
    per_host = [web.max_concurrent(site, "/slow/c", slack=0.1) for site in (0, 1)]
    assert per_host == [2, 2]
    assert web.max_concurrent(None, "/slow/c", slack=0.1) == 3


def test_requests_to_one_host_start_the_delay_apart(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    urls = [web.url(f"/images/{p}") for p in web.image_paths()[:4]]
    urls.append(web.url(f"/images/{DEFAULT_IMAGE}", site=1))
    responses = fetch_all(make_config(host_delay_s=0.25), archive, urls)

    assert all(r.ok for r in responses)
    starts = sorted(h.started for h in web.hits(0))  # robots.txt and 4 images
    assert len(starts) == 5
    # measured on arrival, so a new connection may make one gap a little short
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.2
    # the other host does not wait for this one
    assert web.hits(1, "/images/")[0].started < starts[2]


def test_the_delay_holds_when_the_crawl_wide_limit_is_the_bottleneck(
    web: FixtureWeb, make_config: ConfigMaker, archive: WarcArchive
) -> None:
    # A slow answer on site 1 holds the crawl's only connection while two
    # requests to site 0 wait for it, holding site 0's two slots. When the
    # connection frees, they must still leave the delay apart: a turn on the
    # host taken while waiting for the connection would let them go together.
    slow = web.url(f"/slow/hold-{time.time_ns()}?delay=0.8", site=1)
    images = [web.url(f"/images/{p}") for p in web.image_paths()[:4]]
    config = make_config(max_connections=1, per_host_connections=2, host_delay_s=0.3)
    responses = fetch_all(config, archive, [slow, *images])

    assert all(r.ok for r in responses)
    starts = sorted(h.started for h in web.hits(0))  # robots.txt and 4 images
    assert len(starts) == 5
    # the slow answer did hold the connection while site 0's requests waited
    (held,) = web.hits(1, "/slow/")
    assert held.ended is not None and starts[1] >= held.ended - 0.05
    # measured on arrival, so a new connection may make one gap a little short
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.25


# -- replay -----------------------------------------------------------------


def test_replay_answers_from_the_archive_with_the_server_gone(
    images_dir: Path, make_config: ConfigMaker, tmp_path: Path
) -> None:
    archive = WarcArchive(tmp_path / "archive")
    with FixtureWeb(images_dir, num_sites=2) as own_web:
        images = own_web.image_paths()[:20]
        urls = [own_web.url(f"/images/{p}", site=i % 2) for i, p in enumerate(images)]
        urls += [
            own_web.url("/redirect/2"),
            own_web.url("/status/404"),
            own_web.url("/html-as-jpeg"),
            own_web.url("/x-robots?tag=noai"),
            own_web.url(f"/private/{DEFAULT_IMAGE}"),
        ]
        recorded_answers = fetch_all(make_config(), archive, urls)
        missing = own_web.url("/images/never-asked.jpg")
    archive.close()

    # The server is stopped: any connection would fail, so answers can only
    # come from the archive.
    replay = make_config(mode="replay", allow_networks=[])
    replayed = fetch_all(replay, WarcArchive(tmp_path / "archive"), [*urls, missing])

    for before, after in zip(recorded_answers, replayed, strict=False):
        assert (after.status, after.error, after.final_url) == (
            before.status,
            before.error,
            before.final_url,
        )
        assert after.body == before.body
        assert (
            hashlib.sha256(after.body).digest() == hashlib.sha256(before.body).digest()
        )
    assert sum(r.ok for r in replayed) == 21
    assert replayed[-1].error == "not_in_archive"


# -- configuration and helpers ----------------------------------------------


def test_bad_configuration_raises_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="record, replay"):
        FetchConfig(mode="offline")
    with pytest.raises(ConfigError, match="CIDR"):
        HttpFetcher(FetchConfig(allow_networks=["localhost"]), WarcArchive(Path(".")))
    with pytest.raises(ConfigError, match="contact"):
        FetchConfig(contact="nobody")
    with pytest.raises(ConfigError, match="max_connections"):
        FetchConfig(max_connections=0)
    assert FetchConfig(contact="https://example.org/crawler").user_agent == (
        "kgclip/0.1 (+https://example.org/crawler)"
    )


def test_image_kind_reads_magic_bytes_of_real_files(images_dir: Path) -> None:
    samples = images_dir / "samples"
    assert image_kind((samples / "sklearn_china.jpg").read_bytes()) == "jpeg"
    assert image_kind((samples / "skimage_coins.png").read_bytes()) == "png"
    assert image_kind((images_dir / "broken/imageNotFound.gif").read_bytes()) == "gif"
    assert image_kind(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == "webp"
    assert image_kind(b"BM" + bytes(60)) == "bmp"
    assert image_kind(b"II*\x00" + bytes(8)) == "tiff"
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    assert (image_kind(avif), image_kind(heic), image_kind(mp4)) == (
        "avif",
        "heif",
        None,
    )
    assert image_kind(b"<html>") is None and image_kind(b"") is None


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after_s("soon") is None and retry_after_s("") is None
