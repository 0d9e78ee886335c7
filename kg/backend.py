"""The two knowledge-graph backends behind one interface.

Both answer the same SPARQL with the same table: one string column per
variable, values decoded (bare IRIs, literal lexical forms), null where
unbound. :class:`EmbeddedGraph` compiles the query onto the DuckDB store;
:class:`EndpointGraph` sends it to QLever or another SPARQL 1.1 server.
"""

from __future__ import annotations

import logging
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from kg import sparql_sql
from kg.store import TripleStore

if TYPE_CHECKING:
    from kg.endpoint import EndpointConfig

log = logging.getLogger(__name__)

QUERIES = Path(__file__).parent / "queries"


def query_template(name: str) -> Template:
    """A SPARQL template from ``kg/queries/NAME.rq``."""
    return Template((QUERIES / f"{name}.rq").read_text(encoding="utf-8"))


class KnowledgeGraph(Protocol):
    """What the harvest needs of a backend."""

    source: str

    def select(self, query: str) -> pa.Table:
        """Run a SELECT query; one decoded string column per variable."""
        ...

    def snapshot(self) -> str | None:
        """The snapshot date of the data, where known."""
        ...

    def close(self) -> None: ...


class EmbeddedGraph:
    """The on-disk store filled by ``kgclip ingest``, opened read-only."""

    def __init__(self, store: Path, memory_limit: str = "1GB"):
        self.store = TripleStore(store, read_only=True, memory_limit=memory_limit)
        names = [Path(record.path).name for record in self.store.sources()]
        self.source = "embedded:" + ",".join(names)

    def select(self, query: str) -> pa.Table:
        return sparql_sql.run_select(self.store.con, query)

    def select_sql(self, query: str) -> str:
        """The query as SQL on ``self.store.con``, columns decoded."""
        return sparql_sql.decoded_sql(self.store.con, query)

    def snapshot(self) -> str | None:
        # A date the data states (wikibase:Dump) beats one read off a file name.
        stated = self.store.snapshot_date()
        dates = [r.snapshot for r in self.store.sources() if r.snapshot]
        return stated or (max(dates) if dates else None)

    def close(self) -> None:
        self.store.close()


class EndpointGraph:
    """A SPARQL endpoint: QLever, or any SPARQL 1.1 server."""

    def __init__(self, config: EndpointConfig):
        from kg.endpoint import SparqlEndpoint  # httpx is only needed here

        self.client = SparqlEndpoint(config)
        self.source = config.url

    def select(self, query: str) -> pa.Table:
        return self.client.select(query)

    def snapshot(self) -> str | None:
        dates = self.client.select(query_template("snapshot").substitute()).column(0)
        values = [d for d in dates.to_pylist() if d]
        return max(values)[:10] if values else None

    def close(self) -> None:
        self.client.close()
