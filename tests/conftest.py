"""Shared fixtures: where the real data lives, and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of the shared real data, or skip the test saying what is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not found: {path} (the shared data folder is absent)")
    return path


@pytest.fixture
def arnold_dump() -> Path:
    """Real Wikidata subgraph, truthy N-Triples, gzip: 383,120 lines."""
    return shared_file("wikidata/arnold-subgraph-truthy.nt.gz")


@pytest.fixture
def onezoom_dump() -> Path:
    """13 real entities in the Wikidata JSON dump layout, bzip2."""
    return shared_file("wikidata/onezoom-entities.json.bz2")


@pytest.fixture
def q42_turtle() -> Path:
    """The full Turtle export of Q42 (Douglas Adams)."""
    return shared_file("wikidata/Q42-full.ttl")
