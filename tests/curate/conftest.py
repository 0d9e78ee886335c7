"""Fixtures of the curate tests: entities harvested from the real Wikidata
excerpts by the project's own ingest and harvest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

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


# A CLIP small enough to build in a second: the CLIP filter's tests score
# with it, randomly initialised (no weights can be downloaded).
TINY_CLIP = "clip-filter-tiny"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1,
                   "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The tiny CLIP's name, registered with open_clip, and a file of its
    random weights (seed 0)."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("tiny-clip")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    weights = folder / "weights.pt"
    torch.save(open_clip.create_model(TINY_CLIP).state_dict(), weights)
    return TINY_CLIP, weights
