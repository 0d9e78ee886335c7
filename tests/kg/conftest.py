"""Fixtures of the kg tests: a real SPARQL server loaded with real Wikidata."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kg.ingest import IngestConfig, ingest
from kg.store import TripleStore
from tests.conftest import shared_file
from tests.kg.virtuoso import INSTALL_HINT, SERVER_BINARY, VirtuosoServer

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def virtuoso_arnold(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VirtuosoServer]:
    """Virtuoso on 127.0.0.1 loaded with the real Arnold subgraph (383k lines).

    Skips when the data or Virtuoso is absent; CI (``.ci/run``) installs
    Virtuoso, so there it runs. Starting and loading take 10-20 s.
    """
    if shutil.which(SERVER_BINARY) is None:
        pytest.skip(f"`{SERVER_BINARY}` not found; {INSTALL_HINT}")
    dump = shared_file("wikidata/arnold-subgraph-truthy.nt.gz")
    taxa = export_ntriples(
        [shared_file("wikidata/onezoom-entities.json.bz2")],
        tmp_path_factory.mktemp("taxa-export") / "taxa.nt",
    )
    with VirtuosoServer(tmp_path_factory.mktemp("virtuoso"), [dump, taxa]) as server:
        log.info(
            "Virtuoso started in %.1f s, loaded %s in %.1f s",
            server.start_s,
            dump.name,
            server.load_s,
        )
        yield server


def export_ntriples(dumps: list[Path], target: Path) -> Path:
    """Ingest dumps into a scratch store and write its triples as N-Triples.

    This gives a SPARQL server the very triples the embedded store holds, for
    formats (the JSON dump) that a server cannot load itself.
    """
    store_dir = target.parent / "store"
    for dump in dumps:
        ingest(IngestConfig(source=dump, store=store_dir))
    with TripleStore(store_dir, read_only=True) as store:
        rows = store.con.execute("SELECT s, p, o FROM triples").fetchall()
    target.write_text("".join(f"{s} {p} {o} .\n" for s, p, o in rows))
    return target
