"""SparqlEndpoint against a real SPARQL server: Virtuoso with real Wikidata.

The ``virtuoso_arnold`` fixture (tests/kg/conftest.py) starts Virtuoso once per
session, loaded with the Arnold subgraph, and skips where Virtuoso or the data
is absent. The expected counts come from the data itself (the embedded store
answers the same).
"""

from __future__ import annotations

import string

import pytest

from kg.backend import QUERIES
from kg.endpoint import EndpointConfig, SparqlEndpoint
from kg.errors import EndpointTimeoutError
from kg.terms import WD
from tests.kg.virtuoso import VirtuosoServer

pytestmark = pytest.mark.slow

PREFIXES = """\
PREFIX wd: <http://www.wikidata.org/entity/>
PREFIX wdt: <http://www.wikidata.org/prop/direct/>
PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>
"""


@pytest.fixture
def client(virtuoso_arnold: VirtuosoServer) -> SparqlEndpoint:
    """A client with the default settings, as kgclip would make it."""
    return SparqlEndpoint(EndpointConfig(url=virtuoso_arnold.sparql_url))


@pytest.mark.parametrize(
    ("root", "classes"), [("Q42889", 102), ("Q41176", 306), ("Q39546", 332)]
)
def test_counts_the_classes_under_a_root(
    client: SparqlEndpoint, root: str, classes: int
) -> None:
    query = PREFIXES + (
        f"SELECT (COUNT(DISTINCT ?c) AS ?n) WHERE {{ ?c wdt:P279* wd:{root} }}"
    )
    with client:
        table = client.select(query)

    assert table.column("n").to_pylist() == [str(classes)]


def test_fetches_labels_with_their_language(client: SparqlEndpoint) -> None:
    query = PREFIXES + (
        "SELECT ?item ?label (LANG(?label) AS ?lang) WHERE { "
        "VALUES ?item { wd:Q42889 wd:P1262 } ?item rdfs:label ?label } ORDER BY ?item"
    )
    with client:
        rows = client.select(query).to_pylist()

    assert rows == [
        {"item": WD + "P1262", "label": "RAÄ number", "lang": "en"},
        {"item": WD + "Q42889", "label": "vehicle", "lang": "en"},
    ]


def test_ask(client: SparqlEndpoint) -> None:
    with client:
        assert client.ask(PREFIXES + "ASK { wd:Q1420 wdt:P279+ wd:Q42889 }")
        assert not client.ask(PREFIXES + "ASK { wd:Q42889 wdt:P279 wd:Q1420 }")


def test_pages_line_up(virtuoso_arnold: VirtuosoServer) -> None:
    config = EndpointConfig(url=virtuoso_arnold.sparql_url, page_size=40)
    query = PREFIXES + (
        "SELECT DISTINCT ?c WHERE { ?c wdt:P279* wd:Q42889 } ORDER BY ?c"
    )
    with SparqlEndpoint(config) as client:
        items = client.select(query).column("c").to_pylist()

    assert len(items) == 102
    assert items == sorted(set(items))


def test_property_paths_repeat_items_reached_twice(client: SparqlEndpoint) -> None:
    # SPARQL 1.1 gives each item of `wdt:P279*` once; Virtuoso once per path,
    # so what it answers must be de-duplicated.
    query = PREFIXES + "SELECT ?c WHERE { ?c wdt:P279* wd:Q42889 }"
    with client:
        items = client.select(query).column("c").to_pylist()

    assert len(set(items)) == 102
    assert len(items) > 102


def test_direct_post_gets_no_answer(virtuoso_arnold: VirtuosoServer) -> None:
    # Virtuoso 7.2 never answers application/sparql-query (issue #842 of
    # openlink/virtuoso-opensource); hence the default method is post-form.
    config = EndpointConfig(url=virtuoso_arnold.sparql_url, method="post", timeout_s=2)
    with SparqlEndpoint(config) as client, pytest.raises(EndpointTimeoutError):
        client.select("SELECT * WHERE { ?s ?p ?o } LIMIT 1")


def test_harvest_query_finds_every_class_and_label(client: SparqlEndpoint) -> None:
    template = string.Template((QUERIES / "harvest.rq").read_text(encoding="utf-8"))
    query = template.substitute(
        roots="wd:Q42889",
        member_path="wdt:P279*",
        parent_path="wdt:P279",
        exclusions="",
        languages='"en"',
        taxon_facts="",
        attribute_facts="",
    )
    labelled = PREFIXES + (
        "SELECT DISTINCT ?item WHERE { ?item wdt:P279* wd:Q42889 . "
        '?item rdfs:label ?l FILTER(LANG(?l) = "en") }'
    )
    with client:
        expected = set(client.select(labelled).column("item").to_pylist())
        rows = client.select(query).to_pylist()

    assert len(expected) == 102
    assert len({r["item"] for r in rows}) == 102
    assert {r["item"] for r in rows if r["key"] == "member"} == expected
    assert {r["item"] for r in rows if r["key"] == "label"} == expected
