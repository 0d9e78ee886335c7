"""The embedded store and a real SPARQL server give the same entities.

Virtuoso on 127.0.0.1 holds the real Wikidata excerpts; the embedded store is
filled from the same files. The harvest, the same SPARQL text on both, must
return the same table (but for the ``source`` column, which names each).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from kg.backend import EmbeddedGraph, EndpointGraph
from kg.endpoint import EndpointConfig
from kg.harvest import HarvestConfig, harvest
from kg.ingest import IngestConfig, ingest
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> EmbeddedGraph:
    store = tmp_path_factory.mktemp("agree") / "kg"
    for name in ("arnold-subgraph-truthy.nt.gz", "onezoom-entities.json.bz2"):
        ingest(IngestConfig(source=shared_file(f"wikidata/{name}"), store=store))
    return EmbeddedGraph(Path(store))


@pytest.fixture(scope="module")
def endpoint(virtuoso_arnold) -> EndpointGraph:
    return EndpointGraph(EndpointConfig(url=virtuoso_arnold.sparql_url, timeout_s=60))


def comparable(table: pa.Table) -> list[dict]:
    return table.drop_columns(["source"]).to_pylist()


@pytest.mark.parametrize(
    "settings",
    [
        {"kind": "classes", "roots": ["Q42889", "Q41176", "Q39546"]},
        {"kind": "classes", "roots": ["Q42889"], "instances": True},
        {"kind": "classes", "roots": ["Q39546"], "exclude": ["Q1183543"]},
        {"kind": "classes", "roots": ["Q41176"], "limit": 25},
        {"kind": "taxa", "roots": ["Q171283"]},
    ],
    ids=["three-roots", "instances", "exclusion", "limit", "taxa"],
)
def test_same_entities_from_both_backends(embedded, endpoint, settings):
    config = HarvestConfig(**settings)
    ours = harvest(embedded, config, snapshot="2026-01-01")
    theirs = harvest(endpoint, config, snapshot="2026-01-01")
    assert ours.num_rows > 0
    assert comparable(ours) == comparable(theirs)
    assert theirs.column("source")[0].as_py() == endpoint.source
