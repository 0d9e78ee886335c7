"""An rdflib ``Store`` over the embedded DuckDB triple store.

``Graph(store="kgclip-duckdb")`` (or ``Graph(store=DuckDBStore(con))``) reads
the ``triples(s, p, o)`` table that :mod:`kg.terms` describes; the store is
read-only. ``triples()`` turns a pattern into one SQL query. ``query()`` runs
SELECT queries through the SPARQL-to-SQL compiler of :mod:`kg.sparql_sql`;
for anything the compiler does not cover (ASK, CONSTRUCT, DESCRIBE, unsupported
functions, initial bindings) it raises ``NotImplementedError``, upon which
rdflib's ``Graph.query`` falls back to its own evaluator over ``triples()``:
slower, but complete.

Stored terms become rdflib terms without normalisation, so a literal keeps
the exact lexical form of the dump (``"+1.50"^^xsd:decimal`` stays as is).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import duckdb
from rdflib import BNode, Literal, URIRef, Variable, plugin
from rdflib.query import Result
from rdflib.store import VALID_STORE, Store
from rdflib.term import Identifier, Node

from kg.errors import StoreError

if TYPE_CHECKING:
    from rdflib.graph import Graph
from kg.sparql_sql import (
    TABLE,
    UnsupportedQueryError,
    compile_algebra,
    encode_term,
    parse_select,
)
from kg.terms import unescape_lexical

log = logging.getLogger(__name__)

_LITERAL_RE = re.compile(r'^"(.*)"(?:@([A-Za-z0-9-]+)|\^\^<([^>]*)>)?$', re.S)

__all__ = ["DuckDBStore", "term_from_stored"]


def term_from_stored(term: str) -> Identifier:
    """An rdflib term from its stored spelling (see :mod:`kg.terms`).

    Raises ``ValueError`` for a string that is no stored term.
    """
    if term.startswith("<") and term.endswith(">"):
        return URIRef(term[1:-1])
    if term.startswith("_:"):
        return BNode(term[2:])
    match = _LITERAL_RE.match(term)
    if match is None:
        raise ValueError(f"not a stored RDF term: {term!r}")
    lexical, lang, datatype = match.groups()
    value = unescape_lexical(lexical)
    if lang:
        return Literal(value, lang=lang, normalize=False)
    if datatype:
        return Literal(value, datatype=URIRef(datatype), normalize=False)
    return Literal(value, normalize=False)


class DuckDBStore(Store):
    """Read-only rdflib store over a DuckDB ``triples`` table.

    ``configuration`` is an open DuckDB connection or the path of a database
    file (opened read-only); either may also be given later to ``open``.
    """

    context_aware = False
    formula_aware = False
    transaction_aware = False
    graph_aware = False

    def __init__(
        self,
        configuration: duckdb.DuckDBPyConnection | str | os.PathLike[str] | None = None,
        identifier: Identifier | None = None,
    ) -> None:
        self._con: duckdb.DuckDBPyConnection | None = None
        self._owned = False
        self._prefixes: dict[str, URIRef] = {}
        self._namespaces: dict[URIRef, str] = {}
        self._cache: dict[str, Identifier] = {}
        super().__init__(None, identifier)
        if configuration is not None:
            self.open(configuration)

    # -- connection ----------------------------------------------------------

    def open(self, configuration: Any, create: bool = False) -> int | None:
        """Attach a connection or open the database file at a path read-only."""
        if create:
            raise StoreError("the kgclip DuckDB store is read-only; build it by ingest")
        if isinstance(configuration, duckdb.DuckDBPyConnection):
            self._con, self._owned = configuration, False
        else:
            path = os.fspath(configuration)
            if not os.path.exists(path):
                raise StoreError(f"no DuckDB store at {path}; run the ingest first")
            self._con, self._owned = duckdb.connect(path, read_only=True), True
        return VALID_STORE

    def close(self, commit_pending_transaction: bool = False) -> None:
        """Close the connection if this store opened it."""
        if self._con is not None and self._owned:
            self._con.close()
        self._con = None

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The open DuckDB connection; raises StoreError when closed."""
        if self._con is None:
            raise StoreError("the DuckDB store is not open; call open(path) first")
        return self._con

    # -- reading -------------------------------------------------------------

    def triples(
        self, triple_pattern: Any, context: Any = None
    ) -> Iterator[tuple[tuple[Node, Node, Node], Iterator[Any]]]:
        """Triples matching ``(s, p, o)``; None (or a Variable) matches anything."""
        conds, params = [], []
        for column, term in zip("spo", triple_pattern, strict=True):
            if term is None or isinstance(term, Variable):
                continue
            if not isinstance(term, URIRef | Literal | BNode):
                # Paths and other pattern objects are rdflib's to expand.
                raise NotImplementedError(f"pattern term {term!r}")
            conds.append(f"{column} = ?")
            params.append(encode_term(term))
        sql = f"SELECT s, p, o FROM {TABLE}"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        # A cursor of its own: rdflib's evaluator nests these generators.
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(10_000):
                for s, p, o in rows:
                    yield (self._term(s), self._term(p), self._term(o)), iter(())
        finally:
            cursor.close()

    def __len__(self, context: Any = None) -> int:
        # fetchall, not fetchone: duckdb 2 refuses new work on a connection
        # while a result is unfinished.
        rows = self.connection.execute(f"SELECT count(*) FROM {TABLE}").fetchall()
        return int(rows[0][0])

    def contexts(self, triple: Any = None) -> Generator[Graph, None, None]:
        """The store has only its default graph, which is no named context."""
        yield from ()

    def _term(self, stored: str) -> Identifier:
        # Predicates and classes repeat a lot; parse each spelling once.
        term = self._cache.get(stored)
        if term is None:
            term = term_from_stored(stored)
            if len(self._cache) < 100_000:
                self._cache[stored] = term
        return term

    # -- writing is not supported ------------------------------------------

    def add(self, triple: Any, context: Any = None, quoted: bool = False) -> None:
        raise StoreError("the kgclip DuckDB store is read-only")

    def remove(self, triple: Any, context: Any = None) -> None:
        raise StoreError("the kgclip DuckDB store is read-only")

    # -- namespaces ------------------------------------------------------------

    def bind(self, prefix: str, namespace: URIRef, override: bool = True) -> None:
        """Bind a prefix in memory (the database keeps none)."""
        if not override and (prefix in self._prefixes or namespace in self._namespaces):
            return
        old = self._prefixes.pop(prefix, None)
        if old is not None:
            self._namespaces.pop(old, None)
        self._namespaces.pop(namespace, None)
        self._prefixes = {p: n for p, n in self._prefixes.items() if n != namespace}
        self._prefixes[prefix] = namespace
        self._namespaces[namespace] = prefix

    def prefix(self, namespace: URIRef) -> str | None:
        return self._namespaces.get(namespace)

    def namespace(self, prefix: str) -> URIRef | None:
        return self._prefixes.get(prefix)

    def namespaces(self) -> Iterator[tuple[str, URIRef]]:
        yield from self._prefixes.items()

    # -- SPARQL ------------------------------------------------------------------

    def query(
        self,
        query: Any,
        initNs: Mapping[str, Any],  # rdflib names these in camelCase
        initBindings: Mapping[str, Identifier],
        queryGraph: Any,
        **kwargs: Any,
    ) -> Result:
        """Answer a SELECT query with one SQL statement.

        Raises NotImplementedError (so that ``Graph.query`` falls back to
        rdflib's evaluator) for non-SELECT queries, initial bindings and
        constructs the compiler does not support; QueryError for invalid
        SPARQL.
        """
        if initBindings:
            raise NotImplementedError("initial bindings: left to rdflib")
        prepared = query if not isinstance(query, str) else None
        if prepared is None:
            namespaces = {str(k): str(v) for k, v in (initNs or {}).items()}
            prepared = parse_select(query, namespaces)
        try:
            compiled = compile_algebra(prepared)
        except UnsupportedQueryError as exc:
            log.info("SPARQL query left to rdflib's evaluator: %s", exc)
            raise NotImplementedError(str(exc)) from exc
        rows = self.connection.execute(compiled.sql).fetchall()
        return self._result(compiled.variables, rows)

    def _result(self, variables: list[str], rows: list[tuple[Any, ...]]) -> Result:
        """A SELECT result; unbound variables are left out of each binding."""
        result = Result("SELECT")
        names = [Variable(v) for v in variables]
        result.vars = names
        result.bindings = [
            {n: self._term(v) for n, v in zip(names, row, strict=True) if v is not None}
            for row in rows
        ]
        return result

    def __repr__(self) -> str:
        state = "open" if self._con is not None else "closed"
        return f"<DuckDBStore {state}>"


plugin.register("kgclip-duckdb", Store, "kg.rdflib_store", "DuckDBStore")
