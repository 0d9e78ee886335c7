"""Fixtures of the curate tests: entities harvested from the real Wikidata
excerpts by the project's own ingest and harvest."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest

from kg.backend import EmbeddedGraph
from kg.harvest import HarvestConfig, harvest
from kg.ingest import IngestConfig, ingest
from tests.conftest import shared_file

HOMO, MAMMALS = "Q171283", "Q7377"

Harvester = Callable[..., pa.Table]


@pytest.fixture(scope="session")
def harvest_dump(tmp_path_factory: pytest.TempPathFactory) -> Harvester:
    """A function of a dump (a path in the shared data), a harvest config and
    a snapshot date: the dump ingested into a fresh store, the harvest's
    entity table."""

    def harvested(
        dump: str, config: HarvestConfig, snapshot: str | None = None
    ) -> pa.Table:
        store = tmp_path_factory.mktemp("harvest") / "kg"
        ingest(IngestConfig(source=shared_file(dump), store=store))
        graph = EmbeddedGraph(store)
        try:
            return harvest(graph, config, snapshot=snapshot)
        finally:
            graph.close()

    return harvested


@pytest.fixture(scope="session")
def onezoom_taxa(harvest_dump: Harvester) -> pa.Table:
    """The taxa under Homo and under Mammalia, harvested from the real JSON dump."""
    return harvest_dump(
        "wikidata/onezoom-entities.json.bz2",
        HarvestConfig(kind="taxa", roots=[HOMO, MAMMALS]),
        snapshot="2024-04-08",
    )
