"""Fixtures of the crawl tests: the fixture web and a fetch config aimed at it.

Every request the tests send goes to 127.0.0.1, where the fixture web listens;
the configs allow only that address, and refusals are tested on 127.0.0.2,
to which nothing is ever sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crawl.archive import WarcArchive
from crawl.fetch import FetchConfig
from tests.conftest import shared_file
from tests.crawl.fixture_web import FixtureWeb

ConfigMaker = Callable[..., FetchConfig]


@pytest.fixture(scope="session")
def images_dir() -> Path:
    """The real images: flowers5 (4,326 JPEGs), samples, the broken GIF."""
    return shared_file("images/flowers5").parent


@pytest.fixture(scope="session")
def fixture_web_session(images_dir: Path) -> Iterator[FixtureWeb]:
    with FixtureWeb(images_dir, num_sites=4) as web:
        yield web


@pytest.fixture
def web(fixture_web_session: FixtureWeb) -> FixtureWeb:
    """The fixture web with its request log and per-site peaks cleared."""
    fixture_web_session.reset()
    return fixture_web_session


@pytest.fixture
def make_config() -> ConfigMaker:
    """A fetch config for the fixture web: fast, allowing only 127.0.0.1."""

    def make(**overrides: Any) -> FetchConfig:
        settings: dict[str, Any] = {
            "contact": "crawl-tests@example.org",
            "allow_networks": ["127.0.0.1/32"],
            "host_delay_s": 0.0,
            "per_host_connections": 8,
            "connect_timeout_s": 2.0,
            "read_timeout_s": 2.0,
            "total_timeout_s": 10.0,
            "backoff_s": 0.05,
            "max_backoff_s": 2.0,
            "max_body_bytes": 8 * 1024 * 1024,
        }
        return FetchConfig(**(settings | overrides))

    return make


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[WarcArchive]:
    with WarcArchive(tmp_path / "archive", writer_id="test") as opened:
        yield opened
