"""Ingest into the embedded store: counts, idempotence, malformed input."""

from __future__ import annotations

import gzip

import pytest
from rdflib import Literal, URIRef

from kg import terms
from kg.errors import MalformedDumpError
from kg.ingest import IngestConfig, ingest
from kg.store import TripleStore


def test_real_truthy_dump_ingests_once(tmp_path, arnold_dump):
    config = IngestConfig(source=arnold_dump, store=tmp_path / "kg")
    first = ingest(config)
    assert not first.skipped
    assert first.lines == 383_120
    assert first.malformed == 0
    # The excerpt repeats a few lines; the store keeps each triple once.
    assert first.store_triples == first.new_triples < first.kept

    again = ingest(config)
    assert again.skipped
    assert again.store_triples == first.store_triples

    with TripleStore(tmp_path / "kg", read_only=True) as store:
        assert len(store) == first.store_triples
        assert [s.fingerprint for s in store.sources()] != []
        # sorted by predicate, so the table's first rows share one predicate
        rows = store.con.execute("SELECT p FROM triples LIMIT 3").fetchall()
        assert len({p for (p,) in rows}) == 1


def test_two_formats_share_one_store(tmp_path, onezoom_dump, q42_turtle):
    store_dir = tmp_path / "kg"
    ingest(IngestConfig(source=onezoom_dump, store=store_dir))
    result = ingest(IngestConfig(source=q42_turtle, store=store_dir))
    assert result.snapshot == "2024-04-08"  # stated by wikibase:Dump
    with TripleStore(store_dir, read_only=True) as store:
        label = f"<{terms.RDFS_LABEL}>"
        rows = store.con.execute(
            "SELECT o FROM triples WHERE s = ? AND p = ?",
            [terms.qid_iri("Q42"), label],
        ).fetchall()
        assert rows == [('"Douglas Adams"@en',)]
        assert len(store.sources()) == 2


def test_malformed_share_stops_and_leaves_the_store_unchanged(tmp_path):
    good = f'<{terms.WD}Q1> <{terms.RDFS_LABEL}> "one"@en .\n'
    text = "".join(good if i % 2 else f"broken line {i}\n" for i in range(3000))
    dump = tmp_path / "bad.nt.gz"
    dump.write_bytes(gzip.compress(text.encode()))
    config = IngestConfig(source=dump, store=tmp_path / "kg", max_malformed_share=0.1)
    with pytest.raises(
        MalformedDumpError, match=r"bad\.nt\.gz.*line 1: 'broken line 0'"
    ):
        ingest(config)
    with TripleStore(tmp_path / "kg", read_only=True) as store:
        assert len(store) == 0
        assert store.sources() == []


def test_some_malformed_lines_are_counted_not_fatal(tmp_path):
    good = f'<{terms.WD}Q1> <{terms.RDFS_LABEL}> "one"@en .\n'
    dump = tmp_path / "mostly-good.nt"
    dump.write_text(good * 2000 + "oops\n" + good)
    result = ingest(IngestConfig(source=dump, store=tmp_path / "kg"))
    assert result.malformed == 1
    assert result.store_triples == 1


def test_store_answers_through_rdflib_api(tmp_path, arnold_dump):
    ingest(IngestConfig(source=arnold_dump, store=tmp_path / "kg"))
    with TripleStore(tmp_path / "kg", read_only=True) as store:
        graph = store.graph()
        vehicle = URIRef(terms.WD + "Q42889")
        labels = list(graph.objects(vehicle, URIRef(terms.RDFS_LABEL)))
        assert labels == [Literal("vehicle", lang="en")]
        rows = graph.query(
            "PREFIX wd: <http://www.wikidata.org/entity/> "
            "PREFIX wdt: <http://www.wikidata.org/prop/direct/> "
            "SELECT DISTINCT ?c WHERE { ?c wdt:P279* wd:Q42889 }"
        )
        assert len(list(rows)) == 102
