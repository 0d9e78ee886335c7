"""Compile SPARQL SELECT queries into one DuckDB SQL statement.

The embedded store is a DuckDB table ``triples(s, p, o)`` whose cells hold
terms in the canonical N-Triples spelling of :mod:`kg.terms`. This module
parses a query with rdflib, walks rdflib's SPARQL algebra and writes a single
SQL statement (a chain of CTEs) whose columns are the projected variables,
each holding the stored term or NULL when unbound. :func:`run_select` runs it
and decodes the terms the way :func:`kg.terms.decode_term` does.

Supported subset
    SELECT with variables and ``(expr AS ?v)``, DISTINCT/REDUCED, ORDER BY,
    LIMIT, OFFSET, sub-selects; basic graph patterns (blank nodes act as
    variables); property paths ``p``, ``^p``, ``a/b``, ``a|b``, ``p?``, ``p*``,
    ``p+`` and their combinations; Join, OPTIONAL (with its filter), UNION,
    MINUS, FILTER, BIND, VALUES (with UNDEF), FILTER [NOT] EXISTS over
    self-contained patterns; GROUP BY with COUNT, SAMPLE, MIN, MAX and
    GROUP_CONCAT; the operators ``= != < > <= >= && || ! IN`` and ``NOT IN`` and
    the functions BOUND, LANG, LANGMATCHES, STR, DATATYPE, isIRI/isURI,
    isLiteral, isBlank, isNumeric, sameTerm, STRSTARTS, STRENDS, CONTAINS,
    REGEX, COALESCE and IF. Everything else (arithmetic, other functions, SUM,
    AVG, GRAPH, SERVICE, negated property sets, ASK/CONSTRUCT/DESCRIBE, and a
    zero-length path between two variables that nothing binds) raises
    :class:`UnsupportedQueryError`.

Unbound values and joins
    Every compiled sub-pattern records which variables are *certainly* bound
    (never NULL) and which may be unbound (they come from OPTIONAL, UNION
    branches lacking them, VALUES with UNDEF, or expressions that may fail). A
    join on certainly bound variables is a plain equality that DuckDB hashes;
    a join on a maybe-unbound variable uses SPARQL compatibility (equal, or
    either side NULL) and keeps the bound value. A join against a UNION whose
    branches bind the shared variables differently is distributed over groups
    of like branches, so that each group joins by equality (the harvest's
    ``{ BIND("member" AS ?key) } UNION { ?item ... }`` becomes one cross join
    and one hash join). Expression errors are SQL NULLs: SQL's
    three-valued AND/OR/NOT is exactly SPARQL's error logic, and FILTER keeps
    only rows whose condition is true.

Property paths
    ``*`` and ``+`` become ``WITH RECURSIVE`` CTEs using ``UNION`` (set
    semantics, so cycles terminate). A path end that is a constant, or a
    variable certainly bound by VALUES, an already joined pattern or a
    ``FILTER(?v = <iri>)``/``IN`` around the pattern, seeds the recursion,
    so ``?item wdt:P279* ?root`` with ``?root`` from VALUES walks down from
    the roots instead of computing the graph's closure. A zero-length step
    pairs each seed node with itself, as rdflib does when it substitutes the
    bound value into the pattern.

Comparison and order
    ``=``/``!=``/IN compare stored terms, except that two numeric literals
    compare by value (as DOUBLE); ``<`` and friends compare numbers by value
    and simple literals, language-tagged literals of one language, dates and
    booleans by lexical form; other pairs are errors. ORDER BY, MIN and MAX
    rank unbound < blank nodes < IRIs < numeric literals (by value) < other
    literals (by stored lexical form); numbers of equal value tie.
    GROUP_CONCAT's order is unspecified and its DISTINCT compares strings.

Decoding
    :func:`run_select` decodes in SQL: it strips ``<>`` or the quotes and
    tag/datatype, and undoes the store's escapes (``\\`` ``\"`` ``\n`` ``\r``
    ``\t``). Values holding any other escape come back escaped and are
    finished in Python by :func:`kg.terms.unescape_lexical`. String functions
    in expressions (CONTAINS, REGEX...) see the lexical form with the store's
    escapes undone.

The table is taken to be a set of triples, as RDF graphs are: a repeated row
repeats solutions.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyparsing import ParseBaseException
from rdflib import BNode, Literal, URIRef, Variable
from rdflib.paths import AlternativePath, InvPath, MulPath, Path, SequencePath
from rdflib.plugins.sparql.algebra import translateQuery
from rdflib.plugins.sparql.parser import parseQuery
from rdflib.plugins.sparql.parserutils import CompValue
from rdflib.plugins.sparql.sparql import Query

from kg.errors import QueryError
from kg.terms import XSD, XSD_INTEGER, escape_lexical, iri, literal, unescape_lexical

log = logging.getLogger(__name__)

TABLE = "triples"

_XSD_BOOLEAN = XSD + "boolean"
_RDF_LANGSTRING = "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString"
_NUMERIC_TYPES = [
    *("integer", "decimal", "double", "float", "int", "long", "short", "byte"),
    *("nonNegativeInteger", "positiveInteger", "negativeInteger"),
    *("nonPositiveInteger", "unsignedLong", "unsignedInt", "unsignedShort"),
    "unsignedByte",
]
# A literal's lexical form (group 1) when its datatype is numeric, else no match.
_NUM_RE = r'^"([^"]*)"\^\^<' + re.escape(XSD) + f"(?:{'|'.join(_NUMERIC_TYPES)})>$"
_TRUE = f'"true"^^<{_XSD_BOOLEAN}>'
_FALSE = f'"false"^^<{_XSD_BOOLEAN}>'
_NULL = "NULL::VARCHAR"


class UnsupportedQueryError(QueryError):
    """The query is valid SPARQL but uses a construct this compiler lacks."""


@dataclass(frozen=True)
class CompiledQuery:
    """One DuckDB statement and the variables its columns hold, in order."""

    sql: str
    variables: list[str]


# --------------------------------------------------------------------------
# Public API


def parse_select(query: str, init_ns: Mapping[str, str] | None = None) -> Query:
    """Parse and translate SPARQL text into rdflib's algebra.

    Raises :class:`QueryError` for syntax errors (naming rdflib's position)
    and unknown prefixes.
    """
    query, lifted = _lift_values(query)
    try:
        parsed = parseQuery(query)
    except ParseBaseException as exc:
        raise QueryError(
            f"SPARQL syntax error at line {exc.lineno}, column {exc.col}: {exc.msg}"
        ) from exc
    try:
        translated = translateQuery(parsed, initNs=dict(init_ns or {}))
    except Exception as exc:
        # rdflib reports an unknown prefix with a bare Exception; re-raise
        # anything more specific untouched.
        if type(exc) is not Exception:
            raise
        raise QueryError(f"invalid SPARQL query: {exc}") from exc
    for block in lifted:
        _restore_values(translated.algebra, block)
    return translated


# A VALUES block of one variable and many plain IRIs. The parser spends about
# 0.1 ms per term, so a block of thousands (a batch of labels to look up) is
# cut to its first term before parsing and filled in again in the algebra.
_VALUES_BLOCK = re.compile(r"VALUES\s+\?(\w+)\s*\{([^{}]*)\}")
_PLAIN_TERM = re.compile(r"<[^<>\"{}|^`\\\s]*>|[A-Za-z][\w-]*:[A-Za-z0-9_][\w-]*")
_LIFT_AT = 64  # smaller blocks parse fast enough as they are


@dataclass
class _LiftedValues:
    variable: str
    terms: list[str]  # as written: <iri> or prefix:local, all of one form
    found: bool = False


def _lift_values(query: str) -> tuple[str, list[_LiftedValues]]:
    """Cut long VALUES blocks of plain IRIs to their first term."""
    lifted: list[_LiftedValues] = []

    def cut(match: re.Match[str]) -> str:
        terms = match.group(2).split()
        if len(terms) < _LIFT_AT or not all(_PLAIN_TERM.fullmatch(t) for t in terms):
            return match.group(0)
        prefixes = {t.split(":", 1)[0] if t[0] != "<" else "<" for t in terms}
        if len(prefixes) != 1:
            return match.group(0)
        lifted.append(_LiftedValues(match.group(1), terms))
        return f"VALUES ?{match.group(1)} {{ {terms[0]} }}"

    return _VALUES_BLOCK.sub(cut, query), lifted


def _restore_values(node: Any, block: _LiftedValues) -> None:
    """Put a lifted block's terms back into the ``values`` node holding it."""
    if isinstance(node, CompValue):
        if node.name == "values" and _is_lifted(node, block):
            first = str(node.res[0][Variable(block.variable)])
            head = block.terms[0]
            # The first term's expansion gives the namespace of all of them.
            namespace = "" if head[0] == "<" else first[: -len(head.split(":", 1)[1])]
            variable = Variable(block.variable)
            node.res = [
                {
                    variable: URIRef(
                        t[1:-1] if t[0] == "<" else namespace + t.split(":", 1)[1]
                    )
                }
                for t in block.terms
            ]
            block.found = True
            return
        children: Iterable[Any] = node.values()
    elif isinstance(node, list | tuple):
        children = node
    else:
        return
    for child in children:
        _restore_values(child, block)


def _is_lifted(node: CompValue, block: _LiftedValues) -> bool:
    res = node.get("res")
    return (
        not block.found
        and isinstance(res, list)
        and len(res) == 1
        and list(res[0]) == [Variable(block.variable)]
    )


def compile_select(
    query: str, init_ns: Mapping[str, str] | None = None
) -> CompiledQuery:
    """Compile a SPARQL SELECT query into one DuckDB statement.

    ``init_ns`` maps extra prefixes to namespaces. The statement's columns
    are the projected variables in projection order, each holding the stored
    term or NULL. Raises :class:`QueryError` on invalid SPARQL and
    :class:`UnsupportedQueryError` outside the supported subset.
    """
    return compile_algebra(parse_select(query, init_ns))


def compile_algebra(query: Query, decode: bool = False) -> CompiledQuery:
    """Compile an already translated rdflib query (see :func:`compile_select`).

    With ``decode`` the statement returns, per variable, the decoded value
    and a boolean column ``<var>__escaped`` telling whether the value still
    holds string escapes that :func:`kg.terms.unescape_lexical` must undo.
    """
    algebra = query.algebra
    if algebra.name != "SelectQuery":
        raise UnsupportedQueryError(f"{algebra.name} is not supported, only SELECT")
    if algebra.datasetClause:
        raise UnsupportedQueryError("FROM / FROM NAMED dataset clauses")
    compiler = _Compiler()
    sql, variables = compiler.top(algebra.p, decode)
    log.debug("compiled SPARQL into SQL:\n%s", sql)
    return CompiledQuery(sql=sql, variables=variables)


def run_select(con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
    """Run a SPARQL SELECT query on the store behind ``con``.

    Returns one string column per projected variable holding decoded values
    (bare IRI, lexical form, ``_:label``; null when unbound). Raises like
    :func:`compile_select`.
    """
    compiled = compile_algebra(parse_select(query), decode=True)
    result = con.sql(compiled.sql)
    # duckdb 1.4 renamed fetch_arrow_table to to_arrow_table.
    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    table = fetch()
    columns = [_unescape_column(table, i) for i in range(len(compiled.variables))]
    return pa.table(columns, names=compiled.variables)


_UNESCAPE_UDF = "kgclip_unescape"


def decoded_sql(con: duckdb.DuckDBPyConnection, query: str) -> str:
    """A statement on ``con`` whose columns are the decoded variables.

    Unlike :func:`run_select`, nothing leaves DuckDB: the caller can group or
    join the answer in the same statement. The rare values with escapes are
    finished by a Python function registered on ``con``; DuckDB calls it only
    for them.
    """
    compiled = compile_algebra(parse_select(query), decode=True)
    # DuckDB refuses a second function of the same name: an earlier call on
    # this connection registered it already.
    with contextlib.suppress(duckdb.NotImplementedException):
        con.create_function(
            _UNESCAPE_UDF, unescape_lexical, ["VARCHAR"], "VARCHAR",
            side_effects=False,
        )  # fmt: skip
    columns = ", ".join(
        f"CASE WHEN c{2 * i + 1} THEN {_UNESCAPE_UDF}(c{2 * i}) ELSE c{2 * i} END "
        f"AS {_ident(name)}"
        for i, name in enumerate(compiled.variables)
    )
    names = ", ".join(f"c{i}" for i in range(2 * len(compiled.variables)))
    return f"SELECT {columns} FROM ({compiled.sql}) AS decoded({names})"


def _unescape_column(table: pa.Table, index: int) -> pa.ChunkedArray:
    """Column ``index`` with Python unescaping applied where flagged."""
    values = table.column(2 * index)
    flags = table.column(2 * index + 1)
    if not pc.any(flags).as_py():
        return values
    # Only the few values with a rare escape pay for the Python call.
    values, flags = values.combine_chunks(), pc.fill_null(flags.combine_chunks(), False)
    escaped = pc.filter(values, flags).to_pylist()
    fixed = pa.array([unescape_lexical(v) for v in escaped], values.type)
    return pa.chunked_array([pc.replace_with_mask(values, flags, fixed)])


def encode_term(term: Any) -> str:
    """An rdflib term (URIRef, Literal, BNode) in the store's spelling."""
    if isinstance(term, URIRef):
        return iri(str(term))
    if isinstance(term, Literal):
        datatype = str(term.datatype) if term.datatype else None
        return literal(str(term), lang=term.language, datatype=datatype)
    if isinstance(term, BNode):
        return f"_:{term}"
    raise UnsupportedQueryError(f"term {term!r} cannot be stored")


# --------------------------------------------------------------------------
# SQL snippets over stored terms (``x`` is any SQL expression)


def _str(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _inner(x: str) -> str:
    """``x`` without its first and last character (faster than slicing)."""
    return f"substring({x}, 2, length({x}) - 2)"


def _literal_lexical(x: str) -> str:
    """The escaped lexical form of ``x``, known to be a literal.

    String functions, not regular expressions: several times faster. The
    last ``"`` ends the lexical form, since neither a datatype IRI nor a
    language tag holds one.
    """
    return (
        f"""CASE WHEN ends_with({x}, '"') THEN {_inner(x)} ELSE """
        f"""substring({x}, 2, length({x}) - strpos(reverse({x}), '"') - 1) END"""
    )


def _lex(x: str) -> str:
    """The escaped lexical form of a literal; NULL for IRIs and blank nodes."""
    return f"""CASE WHEN starts_with({x}, '"') THEN {_literal_lexical(x)} END"""


def _unescape(raw: str) -> str:
    """Undo the store's escapes (``\\\\ \\" \\n \\r \\t``) in SQL."""
    # Hide escaped backslashes first so that ``\\\\n`` stays backslash + n.
    out = f"replace({raw}, '\\\\', chr(1))"
    for esc, char in (('\\"', "'\"'"), ("\\n", "chr(10)"), ("\\r", "chr(13)")):
        out = f"replace({out}, '{esc}', {char})"
    out = f"replace(replace({out}, '\\t', chr(9)), chr(1), '\\')"
    return f"CASE WHEN contains({raw}, '\\') THEN {out} ELSE {raw} END"


# An escape other than the store's five (``\\u``, ``\\b``...): Python decodes
# those. ``\\\\u`` (escaped backslash, then u) matches too, which costs a
# Python call, never a wrong value.
_RARE_ESCAPE = _str(r'\\[^\\"nrt]')


def _tail(x: str) -> str:
    """What follows a literal's closing quote: ``@lang``, ``^^<dt>`` or ``''``."""
    return (
        f"""CASE WHEN NOT starts_with({x}, '"') OR ends_with({x}, '"') THEN '' """
        f"""WHEN ends_with({x}, '>') THEN '^^' || split_part({x}, '"^^', -1) """
        f"""ELSE '@' || split_part({x}, '"@', -1) END"""
    )


def _lang(x: str) -> str:
    """A literal's language tag as SQL text (``''`` when none); NULL otherwise."""
    return (
        f"""CASE WHEN NOT starts_with({x}, '"') THEN NULL """
        f"""WHEN ends_with({x}, '"') OR ends_with({x}, '>') THEN '' """
        f"""ELSE split_part({x}, '"@', -1) END"""
    )


def _num(x: str) -> str:
    """A numeric literal's value as DOUBLE; NULL for anything else."""
    return f"TRY_CAST(regexp_extract({x}, '{_NUM_RE}', 1) AS DOUBLE)"


def _is_simple(x: str) -> str:
    """True for a literal without language tag or datatype (xsd:string)."""
    return f"""(starts_with({x}, '"') AND ends_with({x}, '"'))"""


def _plain(sql_text: str) -> str:
    """A plain literal whose escaped lexical form is the SQL text given."""
    return f"""'"' || {sql_text} || '"'"""


def _bool_term(cond: str) -> str:
    """An SQL boolean as an xsd:boolean literal; NULL stays NULL (error)."""
    return (
        f"CASE WHEN {cond} THEN {_str(_TRUE)} WHEN NOT ({cond}) THEN {_str(_FALSE)} END"
    )


def _ebv(x: str) -> str:
    """SPARQL effective boolean value of a term; NULL where it is an error."""
    return (
        f"CASE WHEN {x} IN ({_str(_TRUE)}, '\"1\"^^<{_XSD_BOOLEAN}>') THEN true "
        f"WHEN ends_with({x}, '^^<{_XSD_BOOLEAN}>') THEN false "
        f"WHEN {_num(x)} IS NOT NULL THEN {_num(x)} <> 0 "
        f"WHEN starts_with({x}, '\"') AND ({_is_simple(x)} OR {_tail(x)} LIKE '@%') "
        f"THEN {_lex(x)} <> '' END"
    )


def _order_keys(x: str) -> list[str]:
    """ORDER BY keys: kind rank, numeric value, then stored lexical form."""
    rank = (
        f"CASE WHEN {x} IS NULL THEN 0 WHEN starts_with({x}, '_:') THEN 1 "
        f"WHEN starts_with({x}, '<') THEN 2 WHEN {_num(x)} IS NOT NULL THEN 3 "
        "ELSE 4 END"
    )
    # Numbers equal in value tie here, leaving the order to the next key.
    text = f"CASE WHEN {_num(x)} IS NULL THEN coalesce({_lex(x)}, {x}) END"
    return [rank, _num(x), text]


def _decode(x: str) -> str:
    """A stored term decoded as :func:`kg.terms.decode_term` does, in SQL.

    Literals with a rare escape keep their escaped lexical form; the caller
    decodes those few in Python (see :func:`_escaped_flag`). CASE arms run
    only on the rows the earlier arms left, so the regular expression sees
    only literals holding a backslash.
    """
    lexical = _literal_lexical(x)
    return (
        f"CASE WHEN starts_with({x}, '<') THEN {_inner(x)} "
        f"""WHEN NOT starts_with({x}, '"') THEN {x} """
        f"WHEN NOT contains({x}, '\\') THEN {lexical} "
        f"WHEN regexp_matches({x}, {_RARE_ESCAPE}) THEN {lexical} "
        f"ELSE {_unescape(lexical)} END"
    )


def _escaped_flag(x: str) -> str:
    """True for values :func:`_decode` leaves escaped for Python to finish."""
    return (
        f"CASE WHEN contains({x}, '\\') THEN starts_with({x}, '\"') "
        f"AND regexp_matches({x}, {_RARE_ESCAPE}) ELSE false END"
    )


# --------------------------------------------------------------------------
# Compiled relations


@dataclass(frozen=True)
class _Rel:
    """A CTE holding solutions: one column per variable (or ``_unit``)."""

    name: str
    bound: frozenset[str]  # variables never NULL
    maybe: frozenset[str]  # variables that may be NULL (unbound)
    cost: int = 2  # 1 for VALUES: cheapest to seed a path from
    branches: tuple[_Rel, ...] = ()  # UNION branches, to distribute joins
    # Variables known to hold only IRIs ("iri") or only plain literals free
    # of escapes ("plain"): both decode by dropping the first and last
    # character, which the final SELECT does more cheaply.
    kinds: Mapping[str, str] = field(default_factory=dict)

    @property
    def vars(self) -> frozenset[str]:
        return self.bound | self.maybe


@dataclass(frozen=True)
class _Seed:
    """A set of nodes a path end is restricted to: a constant or a query."""

    sql: str  # one-column SELECT, or the stored constant when ``const``
    cost: int  # 0 constant, 1 VALUES, 2 other patterns
    const: bool = False

    def member(self, column: str) -> str:
        """SQL condition: ``column`` is one of the seed's nodes."""
        if self.const:
            return f"{column} = {_str(self.sql)}"
        return f"{column} IN ({self.sql})"

    def rows(self) -> str:
        """A SELECT listing the seed's nodes in a column ``v``."""
        if self.const:
            return f"SELECT {_str(self.sql)} AS v"
        return f"SELECT * FROM ({self.sql}) AS z(v)"


@dataclass(frozen=True)
class _Env:
    """How expressions reach variables: SQL per variable, and which are bound."""

    cols: Mapping[str, str]
    certain: frozenset[str]
    rel: _Rel | None = None


@dataclass
class _Modifiers:
    """The solution modifiers above a (sub-)query's pattern."""

    pattern: CompValue
    projection: list[str]
    order: list[Any]
    distinct: bool = False
    start: int = 0
    length: int | None = None


Seeds = Mapping[str, _Seed]

_BOOLEAN_EXPRS = {
    "RelationalExpression",
    "ConditionalAndExpression",
    "ConditionalOrExpression",
    "UnaryNot",
    "Builtin_BOUND",
    "Builtin_isIRI",
    "Builtin_isURI",
    "Builtin_isLITERAL",
    "Builtin_isBLANK",
    "Builtin_isNUMERIC",
    "Builtin_sameTerm",
    "Builtin_STRSTARTS",
    "Builtin_STRENDS",
    "Builtin_CONTAINS",
    "Builtin_REGEX",
    "Builtin_LANGMATCHES",
    "Builtin_EXISTS",
    "Builtin_NOTEXISTS",
}


def _var(term: Any) -> str | None:
    """The name of a variable (blank nodes in patterns count as variables)."""
    if isinstance(term, Variable):
        return str(term)
    if isinstance(term, BNode):
        return f"_bnode_{term}"
    return None


def _flatten(node: CompValue, name: str) -> list[CompValue]:
    """Operands of a left-deep chain of ``name`` nodes (UNION, say)."""
    if isinstance(node, CompValue) and node.name == name:
        return _flatten(node.p1, name) + _flatten(node.p2, name)
    return [node]


def _is_values(node: CompValue) -> bool:
    return node.name == "values" or (
        node.name == "ToMultiSet" and node.p.name == "values"
    )


def _implied_bound(expr: Any) -> set[str]:
    """Variables a true FILTER condition proves bound (``?v = x``, ``?v IN``)."""
    if not isinstance(expr, CompValue):
        return set()
    if expr.name == "ConditionalAndExpression":
        found = _implied_bound(expr.expr)
        for other in expr.other or []:
            found |= _implied_bound(other)
        return found
    if expr.name == "Builtin_BOUND":
        return {str(expr.arg)}
    if expr.name == "RelationalExpression" and expr.op != "NOT IN":
        found = {str(expr.expr)} if isinstance(expr.expr, Variable) else set()
        if isinstance(expr.other, Variable):
            found.add(str(expr.other))
        return found
    return set()


# --------------------------------------------------------------------------
# The compiler


class _Compiler:
    """Turns rdflib algebra into CTEs; one instance per statement."""

    def __init__(self) -> None:
        self._ctes: list[tuple[str, str, str]] = []  # name, header, body
        self._recursive = False
        self._cols: dict[str, str] = {}
        self._taken: set[str] = set()

    # -- naming and bookkeeping ------------------------------------------

    def col(self, var: str) -> str:
        """The column of a variable. DuckDB folds case, SPARQL does not."""
        if var not in self._cols:
            name, n = var, 1
            while name.lower() in self._taken or name.startswith("_"):
                name, n = f"v{n}_{var}", n + 1
            self._taken.add(name.lower())
            self._cols[var] = _ident(name)
        return self._cols[var]

    def cte(self, body: str, columns: str = "", recursive: bool = False) -> str:
        """Add a CTE and return its name."""
        name = f"cte{len(self._ctes)}"
        self._ctes.append((name, name + columns, body))
        self._recursive |= recursive
        return name

    def rel(
        self,
        body: str,
        bound: Iterable[str],
        maybe: Iterable[str] = (),
        cost: int = 2,
        branches: tuple[_Rel, ...] = (),
        kinds: Mapping[str, str] | None = None,
    ) -> _Rel:
        """Add a CTE and describe its solutions."""
        name = self.cte(body)
        return _Rel(
            name, frozenset(bound), frozenset(maybe), cost, branches, kinds or {}
        )

    def select_list(self, rel: _Rel, alias: str, skip: str | None = None) -> list[str]:
        """``alias.col`` for each variable of ``rel`` (sorted), minus ``skip``."""
        return [f"{alias}.{self.col(v)}" for v in sorted(rel.vars) if v != skip]

    def env(self, rel: _Rel, alias: str) -> _Env:
        """Expression environment over the columns of ``rel`` as ``alias``."""
        cols = {v: f"{alias}.{self.col(v)}" for v in rel.vars}
        return _Env(cols, rel.bound, rel)

    def unit(self) -> _Rel:
        """One solution binding nothing."""
        return self.rel("SELECT 1 AS _unit", ())

    def statement(self, final: str) -> str:
        """Prepend the CTEs ``final`` needs; materialise those used twice."""
        uses: dict[str, int] = {}
        kept: list[tuple[str, str, str]] = []
        pending = final
        for name, header, body in reversed(self._ctes):
            count = len(re.findall(rf"\b{name}\b", pending))
            if count:
                uses[name] = count
                kept.append((name, header, body))
                pending += " " + body
        if not kept:
            return final
        parts = []
        for name, header, body in reversed(kept):
            # Computed once, read twice (a join and a path's seed, say).
            keyword = " AS MATERIALIZED " if uses[name] > 1 else " AS "
            parts.append(f"{header}{keyword}(\n{body}\n)")
        head = "WITH RECURSIVE " if self._recursive else "WITH "
        return head + ",\n".join(parts) + "\n" + final

    # -- query level -------------------------------------------------------

    def top(self, node: CompValue, decode: bool) -> tuple[str, list[str]]:
        """The whole statement for a SELECT and its variables."""
        mods = _peel(node)
        rel, order = self.select_rel(mods)
        outs = []
        for var in mods.projection:
            column = f"f.{self.col(var)}"
            if decode and var in rel.kinds:
                outs.append(f"{_inner(column)} AS {_ident(var)}")
                outs.append(f"false AS {_ident(var + '__escaped')}")
            elif decode:
                outs.append(f"{_decode(column)} AS {_ident(var)}")
                flag = _escaped_flag(column)
                outs.append(f"{flag} AS {_ident(var + '__escaped')}")
            else:
                outs.append(f"{column} AS {_ident(var)}")
        final = f"SELECT {', '.join(outs) or '1 AS _unit'} FROM {rel.name} f"
        if order:
            final += " ORDER BY " + ", ".join(f"f.{key}" for key in order)
        return self.statement(final), mods.projection

    def select_rel(self, mods: _Modifiers) -> tuple[_Rel, list[str]]:
        """A CTE of the projected, ordered, sliced solutions.

        Returns it with the ORDER BY items (over its columns) that restore
        its order in the statement's final SELECT.
        """
        inner = self.pattern(mods.pattern, {})
        env = self.env(inner, "r")
        cols = [f"{env.cols.get(v, _NULL)} AS {self.col(v)}" for v in mods.projection]
        keys: list[tuple[str, bool]] = []  # SQL, descending
        for condition in mods.order:
            ordered = (
                isinstance(condition, CompValue) and condition.name == "OrderCondition"
            )
            expr = condition.expr if ordered else condition
            descending = ordered and condition.order == "DESC"
            keys += [(k, descending) for k in _order_keys(self.term(expr, env))]
        order_by = [k + (" DESC" if d else "") for k, d in keys]
        if mods.distinct:
            body, order = self._distinct_body(inner, cols, order_by, mods.projection)
        else:
            named = [f"{k} AS _k{i}" for i, (k, _) in enumerate(keys)]
            cols = cols + named
            body = f"SELECT {', '.join(cols) or '1 AS _unit'} FROM {inner.name} r"
            order = [f"_k{i}" + (" DESC" if d else "") for i, (_, d) in enumerate(keys)]
            if order_by:
                body += " ORDER BY " + ", ".join(order_by)
        body += _slice(mods.start, mods.length)
        proj = set(mods.projection)
        kinds = {v: k for v, k in inner.kinds.items() if v in proj}
        rel = self.rel(body, proj & inner.bound, proj - inner.bound, kinds=kinds)
        return rel, order

    def _distinct_body(
        self, inner: _Rel, cols: list[str], keys: list[str], projection: list[str]
    ) -> tuple[str, list[str]]:
        """SELECT DISTINCT, keeping each row's first position under ORDER BY."""
        names = [self.col(v) for v in projection] or ["_unit"]
        cols = cols or ["1 AS _unit"]
        if not keys:
            return f"SELECT DISTINCT {', '.join(cols)} FROM {inner.name} r", []
        ranked = (
            f"SELECT {', '.join(cols)}, row_number() OVER (ORDER BY {', '.join(keys)})"
            f" AS _rn FROM {inner.name} r"
        )
        body = (
            f"SELECT {', '.join(names)}, min(_rn) AS _rn FROM ({ranked}) "
            f"GROUP BY {', '.join(names)} ORDER BY _rn"
        )
        return body, ["_rn"]

    # -- graph patterns ------------------------------------------------------

    def pattern(self, node: CompValue, ctx: Seeds) -> _Rel:
        """Compile a graph pattern. ``ctx`` seeds paths from bound variables.

        A seed for ``?v`` lists every value ``?v`` can take in solutions that
        survive the enclosing join, so rows binding ``?v`` to anything else
        may be dropped early.
        """
        handler = _PATTERNS.get(node.name)
        if handler is None:
            raise UnsupportedQueryError(
                f"the {node.name} graph pattern is not supported"
            )
        return handler(self, node, ctx)

    def _bgp(self, node: CompValue, ctx: Seeds) -> _Rel:
        """Triple patterns: plain ones in one join, then path patterns."""
        plain = [t for t in node.triples if not isinstance(t[1], Path)]
        paths = [t for t in node.triples if isinstance(t[1], Path)]
        rels = [self._plain_triples(plain)] if plain or not paths else []
        seeds = dict(ctx)
        for rel in rels:
            _add_seeds(self, seeds, rel)
        while paths:
            triple = _next_path(paths, seeds)
            paths.remove(triple)
            rel = self._path_triple(triple, seeds)
            _add_seeds(self, seeds, rel)
            rels.append(rel)
        result = rels[0]
        for rel in rels[1:]:
            result = self.join(result, rel)
        return result

    def _plain_triples(self, triples: Sequence[Any]) -> _Rel:
        """Triple patterns with constant or variable predicates, one SELECT."""
        if not triples:
            return self.unit()
        refs: dict[str, str] = {}
        conds, froms = [], []
        kinds = {str(t[1]): "iri" for t in triples if isinstance(t[1], Variable)}
        for i, triple in enumerate(triples):
            froms.append(f"{TABLE} t{i}")
            for position, term in zip("spo", triple, strict=True):
                ref, var = f"t{i}.{position}", _var(term)
                if var is None:
                    conds.append(f"{ref} = {_str(encode_term(term))}")
                elif var in refs:
                    conds.append(f"{ref} = {refs[var]}")
                else:
                    refs[var] = ref
        cols = [f"{refs[v]} AS {self.col(v)}" for v in sorted(refs)] or ["1 AS _unit"]
        body = f"SELECT {', '.join(cols)} FROM {', '.join(froms)}"
        if conds:
            body += " WHERE " + " AND ".join(conds)
        return self.rel(body, refs, kinds=kinds)

    def _path_triple(self, triple: Any, seeds: Seeds) -> _Rel:
        """A triple pattern whose predicate is a property path."""
        subject, path, obj = triple
        start, end = _seed_for(subject, seeds), _seed_for(obj, seeds)
        pairs = self.path(path, start, end)
        s_var, o_var = _var(subject), _var(obj)
        cols, conds = [], []
        if s_var is not None:
            cols.append(f"s AS {self.col(s_var)}")
        if o_var is not None and o_var == s_var:
            conds.append("s = o")
        elif o_var is not None:
            cols.append(f"o AS {self.col(o_var)}")
        body = f"SELECT {', '.join(cols) or '1 AS _unit'} FROM {pairs}"
        if conds:
            body += " WHERE " + " AND ".join(conds)
        return self.rel(body, {v for v in (s_var, o_var) if v is not None})

    def _join_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        # VALUES compiles first wherever it stands: it seeds the other side.
        first, second = node.p1, node.p2
        if _is_values(second) and not _is_values(first):
            first, second = second, first
        left = self.pattern(first, ctx)
        right = self.pattern(second, _with_seeds(self, ctx, left))
        return self.join(left, right)

    def join(self, left: _Rel, right: _Rel) -> _Rel:
        """SPARQL Join: merge compatible solutions.

        Joining a UNION whose branches bind the shared variables differently
        would need a non-equi join; the branches are grouped by how they bind
        the other side's variables, and each group joins separately, by
        equality where both sides always bind.
        """
        shared = left.vars & right.vars
        loose = {v for v in shared if not (v in left.bound and v in right.bound)}
        if loose:
            for side, other in ((right, left), (left, right)):
                groups = _group_branches(side.branches, other)
                if len(groups) > 1:
                    parts = [g[0] if len(g) == 1 else self.union(g) for g in groups]
                    return self.union([self.join(other, part) for part in parts])
        cols, conds = [], []
        for var in sorted(left.vars | right.vars):
            a, b = f"a.{self.col(var)}", f"b.{self.col(var)}"
            if var not in shared:
                cols.append(a if var in left.vars else b)
            elif var in loose:
                conds.append(f"({a} = {b} OR {a} IS NULL OR {b} IS NULL)")
                cols.append(f"coalesce({a}, {b}) AS {self.col(var)}")
            else:
                conds.append(f"{a} = {b}")
                cols.append(a)
        on = " AND ".join(conds) or "true"
        body = (
            f"SELECT {', '.join(cols) or '1 AS _unit'} "
            f"FROM {left.name} a JOIN {right.name} b ON {on}"
        )
        bound = left.bound | right.bound
        kinds = _joined_kinds(left, right, loose)
        return self.rel(body, bound, (left.vars | right.vars) - bound, kinds=kinds)

    def _left_join_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        """OPTIONAL: keep each left solution, extended where the right fits."""
        left = self.pattern(node.p1, ctx)
        right = self.pattern(node.p2, _with_seeds(self, _restrict(ctx, left), left))
        shared = left.vars & right.vars
        conds, cols, merged = [], [], {}
        for var in sorted(left.vars | right.vars):
            a, b = f"a.{self.col(var)}", f"b.{self.col(var)}"
            if var not in shared:
                merged[var] = a if var in left.vars else b
            elif var in left.bound and var in right.bound:
                conds.append(f"{a} = {b}")
                merged[var] = a
            else:
                conds.append(f"({a} = {b} OR {a} IS NULL OR {b} IS NULL)")
                merged[var] = a if var in left.bound else f"coalesce({a}, {b})"
            cols.append(f"{merged[var]} AS {self.col(var)}")
        expr = node.expr
        if expr is not None and getattr(expr, "name", None) != "TrueFilter":
            env = _Env(merged, left.bound | right.bound)
            conds.append(f"({self.cond(expr, env)})")
        body = (
            f"SELECT {', '.join(cols) or '1 AS _unit'} FROM {left.name} a "
            f"LEFT JOIN {right.name} b ON {' AND '.join(conds) or 'true'}"
        )
        loose = {v for v in shared if not (v in left.bound and v in right.bound)}
        kinds = _joined_kinds(left, right, loose)
        maybe = (left.vars | right.vars) - left.bound
        return self.rel(body, left.bound, maybe, kinds=kinds)

    def _minus_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        """MINUS: drop left solutions compatible with a right one on a shared,
        bound variable."""
        left = self.pattern(node.p1, ctx)
        right = self.pattern(node.p2, _with_seeds(self, _restrict(ctx, left), left))
        shared = sorted(left.vars & right.vars)
        if not shared:
            return left
        conds, overlap = [], []
        for var in shared:
            a, b = f"a.{self.col(var)}", f"b.{self.col(var)}"
            if var in left.bound and var in right.bound:
                conds.append(f"{a} = {b}")
            else:
                conds.append(f"({a} = {b} OR {a} IS NULL OR {b} IS NULL)")
                overlap.append(f"({a} IS NOT NULL AND {b} IS NOT NULL)")
        # Without a shared variable bound on both sides, one must be bound
        # in this very pair (disjoint domains never remove anything).
        if len(overlap) == len(shared):
            conds.append("(" + " OR ".join(overlap) + ")")
        cols = ", ".join(self.select_list(left, "a")) or "1 AS _unit"
        body = (
            f"SELECT {cols} FROM {left.name} a WHERE NOT EXISTS "
            f"(SELECT 1 FROM {right.name} b WHERE {' AND '.join(conds)})"
        )
        return self.rel(body, left.bound, left.maybe, kinds=left.kinds)

    def _union_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        return self.union([self.pattern(b, ctx) for b in _flatten(node, "Union")])

    def union(self, rels: Sequence[_Rel]) -> _Rel:
        """UNION ALL of solutions; a variable missing in a branch is NULL."""
        branches = tuple(b for rel in rels for b in (rel.branches or (rel,)))
        names = sorted(frozenset().union(*(b.vars for b in branches)))
        bound = frozenset.intersection(*(b.bound for b in branches))
        selects = []
        for branch in branches:
            cols = [
                self.col(v) if v in branch.vars else f"{_NULL} AS {self.col(v)}"
                for v in names
            ]
            selects.append(
                f"SELECT {', '.join(cols) or '1 AS _unit'} FROM {branch.name}"
            )
        body = "\nUNION ALL ".join(selects)
        kinds = _union_kinds(branches)
        return self.rel(body, bound, set(names) - bound, branches=branches, kinds=kinds)

    def _filter_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        # ``?v = <iri>`` or ``?v IN (...)`` drops every other ?v: a seed.
        seeds = dict(ctx)
        for var, seed in _filter_seeds(node.expr).items():
            if var not in seeds or seed.cost < seeds[var].cost:
                seeds[var] = seed
        return self.filter(self.pattern(node.p, seeds), node.expr)

    def filter(self, rel: _Rel, expr: Any) -> _Rel:
        """FILTER: keep solutions whose condition is true (not false/error)."""
        if rel.branches:
            return self.union([self.filter(b, expr) for b in rel.branches])
        cond = self.cond(expr, self.env(rel, "r"))
        cols = ", ".join(self.select_list(rel, "r")) or "1 AS _unit"
        body = f"SELECT {cols} FROM {rel.name} r WHERE {cond}"
        proven = _implied_bound(expr) & rel.vars
        bound, maybe = rel.bound | proven, rel.maybe - proven
        return self.rel(body, bound, maybe, rel.cost, kinds=rel.kinds)

    def _extend_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        var = str(node.var)
        inner = {k: v for k, v in ctx.items() if k != var}
        return self.extend(self.pattern(node.p, inner), var, node.expr)

    def extend(self, rel: _Rel, var: str, expr: Any) -> _Rel:
        """BIND: add (or, after GROUP BY, replace) a variable; errors leave it
        unbound."""
        if rel.branches:
            return self.union([self.extend(b, var, expr) for b in rel.branches])
        value = self.term(expr, self.env(rel, "r"))
        cols = [*self.select_list(rel, "r", skip=var), f"{value} AS {self.col(var)}"]
        body = f"SELECT {', '.join(cols)} FROM {rel.name} r"
        always = isinstance(expr, URIRef | Literal) or (
            isinstance(expr, Variable) and str(expr) in rel.bound
        )
        bound = (rel.bound - {var}) | ({var} if always else set())
        kinds = {v: k for v, k in rel.kinds.items() if v != var}
        kind = _expr_kind(expr, rel)
        if kind is not None:
            kinds[var] = kind
        maybe = rel.vars - bound | {var} - bound
        return self.rel(body, bound, maybe, rel.cost, kinds=kinds)

    def _multiset_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        if node.p.name == "values":
            return self._values(node.p, ctx)
        return self.pattern(node.p, {})

    def _values(self, node: CompValue, ctx: Seeds) -> _Rel:
        """VALUES: inline rows; UNDEF is NULL and makes its variable maybe-bound."""
        rows = [{str(k): v for k, v in row.items() if v != "UNDEF"} for row in node.res]
        names = sorted({k for row in rows for k in row})
        if not rows:
            nulls = (
                ", ".join(f"{_NULL} AS {self.col(v)}" for v in names) or "1 AS _unit"
            )
            return self.rel(f"SELECT {nulls} WHERE false", names, cost=1)
        if not names:
            return self.rel(f"SELECT 1 AS _unit FROM range({len(rows)})", (), cost=1)
        tuples = []
        for row in rows:
            cells = [_str(encode_term(row[v])) if v in row else "NULL" for v in names]
            tuples.append("(" + ", ".join(cells) + ")")
        aliases = ", ".join(f"c{i}" for i in range(len(names)))
        cols = ", ".join(
            f"CAST(c{i} AS VARCHAR) AS {self.col(v)}" for i, v in enumerate(names)
        )
        body = f"SELECT {cols} FROM (VALUES {', '.join(tuples)}) AS v({aliases})"
        bound = {v for v in names if all(v in row for row in rows)}
        kinds = _common_kinds(names, rows)
        return self.rel(body, bound, set(names) - bound, cost=1, kinds=kinds)

    def _subselect_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        return self.select_rel(_peel(node))[0]

    def _aggregate_node(self, node: CompValue, ctx: Seeds) -> _Rel:
        """GROUP BY and aggregates; only the aggregates' results stay in scope."""
        group = node.p
        if group.name != "Group":
            raise UnsupportedQueryError(f"aggregation over {group.name}")
        inner = self.pattern(group.p, {})
        env = self.env(inner, "r")
        cols, bound = [], set()
        for agg in node.A:
            cols.append(f"{self.aggregate(agg, env)} AS {self.col(str(agg.res))}")
            if agg.name in ("Aggregate_Count", "Aggregate_GroupConcat"):
                bound.add(str(agg.res))
        body = f"SELECT {', '.join(cols) or '1 AS _unit'} FROM {inner.name} r"
        if group.expr:
            body += " GROUP BY " + ", ".join(self.term(e, env) for e in group.expr)
        names = {str(agg.res) for agg in node.A}
        return self.rel(body, bound, names - bound)

    # -- property paths ------------------------------------------------------

    def path(self, path: Any, start: _Seed | None, end: _Seed | None) -> str:
        """A CTE ``(s, o)`` of the path's pairs with ``s`` in ``start`` and
        ``o`` in ``end`` (each optional). Sequences and alternatives keep
        duplicates, as SPARQL's translation into joins and unions does."""
        if isinstance(path, URIRef):
            conds = [f"p = {_str(iri(str(path)))}"]
            conds += [seed.member(c) for c, seed in (("s", start), ("o", end)) if seed]
            return self.cte(f"SELECT s, o FROM {TABLE} WHERE {' AND '.join(conds)}")
        if isinstance(path, InvPath):
            return self._swap(self.path(path.arg, end, start))
        if isinstance(path, AlternativePath):
            parts = [f"SELECT s, o FROM {self.path(a, start, end)}" for a in path.args]
            return self.cte(" UNION ALL ".join(parts))
        if isinstance(path, SequencePath):
            return self._sequence(list(path.args), start, end)
        if isinstance(path, MulPath):
            return self._repeat(path, start, end)
        raise UnsupportedQueryError(f"the property path {path!r}")

    def _swap(self, pairs: str) -> str:
        return self.cte(f"SELECT o AS s, s AS o FROM {pairs}")

    def _sequence(
        self, steps: list[Any], start: _Seed | None, end: _Seed | None
    ) -> str:
        """``a/b/c``: each step seeded by the nodes the previous one reached."""
        if start is None and end is not None:
            # Walk from the bound end: the reversed sequence of inverse steps.
            reverse = [InvPath(step) for step in reversed(steps)]
            return self._swap(self._sequence(reverse, end, None))
        names, seed = [], start
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            names.append(self.path(step, seed, end if last else None))
            seed = _Seed(f"SELECT DISTINCT o FROM {names[-1]}", 2)
        joins = " ".join(
            f"JOIN {n} j{i + 1} ON j{i}.o = j{i + 1}.s" for i, n in enumerate(names[1:])
        )
        return self.cte(f"SELECT j0.s, j{len(names) - 1}.o FROM {names[0]} j0 {joins}")

    def _repeat(self, path: MulPath, start: _Seed | None, end: _Seed | None) -> str:
        """``p?``, ``p*``, ``p+``: distinct pairs, walked from the cheaper end."""
        if start is None and end is None:
            if path.zero:
                raise UnsupportedQueryError(
                    f"zero-length path {path.n3()} between two unbound variables"
                )
            return self._closure(path.path, None, path.zero, path.more)
        if end is not None and (start is None or end.cost <= start.cost):
            pairs = self._swap(
                self._closure(InvPath(path.path), end, path.zero, path.more)
            )
            other, column = start, "s"
        else:
            pairs = self._closure(path.path, start, path.zero, path.more)
            other, column = end, "o"
        if other is None:
            return pairs
        return self.cte(f"SELECT s, o FROM {pairs} WHERE {other.member(column)}")

    def _closure(self, step: Any, seed: _Seed | None, zero: bool, more: bool) -> str:
        """Pairs ``(s, o)``, ``s`` in ``seed``, joined by 0/1 (``?``), 0+ or 1+
        steps; a recursive CTE whose UNION drops pairs already found."""
        if zero:
            assert seed is not None  # _repeat refuses zero-length without a seed
            anchor = f"SELECT v AS s, v AS o FROM ({seed.rows()})"
        else:
            anchor = f"SELECT s, o FROM {self.path(step, seed, None)}"
        if not more:
            one = self.path(step, seed, None)
            return self.cte(f"{anchor} UNION SELECT s, o FROM {one}")
        source, s_col, o_col, cond = self._step(step)
        name = f"cte{len(self._ctes)}"
        recurse = (
            f"SELECT r.s, t.{o_col} AS o FROM {name} r JOIN {source} t "
            f"ON t.{s_col} = r.o{cond}"
        )
        return self.cte(f"{anchor}\nUNION\n{recurse}", "(s, o)", recursive=True)

    def _step(self, step: Any) -> tuple[str, str, str, str]:
        """One step for a recursion: source, its start and end columns, and a
        condition; a plain or inverse predicate reads the table directly."""
        inverse = isinstance(step, InvPath) and isinstance(step.arg, URIRef)
        predicate = step.arg if inverse else step
        if isinstance(predicate, URIRef):
            cond = f" AND t.p = {_str(iri(str(predicate)))}"
            return (TABLE, "o", "s", cond) if inverse else (TABLE, "s", "o", cond)
        return self.path(step, None, None), "s", "o", ""

    # -- expressions ---------------------------------------------------------

    def term(self, expr: Any, env: _Env) -> str:
        """SQL for an expression's value as a stored term (NULL: error)."""
        if isinstance(expr, Variable):
            return env.cols.get(str(expr), _NULL)
        if isinstance(expr, URIRef | Literal | BNode):
            return _str(encode_term(expr))
        if not isinstance(expr, CompValue):
            raise UnsupportedQueryError(f"the expression {expr!r}")
        if expr.name in _BOOLEAN_EXPRS:
            return _bool_term(self.cond(expr, env))
        handler = _TERM_EXPRS.get(expr.name)
        if handler is None:
            raise UnsupportedQueryError(f"the SPARQL function {_expr_name(expr)}")
        return handler(self, expr, env)

    def cond(self, expr: Any, env: _Env) -> str:
        """SQL boolean for an expression's effective boolean value (NULL: error)."""
        if isinstance(expr, CompValue) and expr.name in _BOOLEAN_EXPRS:
            handler = _COND_EXPRS.get(expr.name)
            if handler is None:
                raise UnsupportedQueryError(f"the SPARQL function {_expr_name(expr)}")
            return f"({handler(self, expr, env)})"
        return f"({_ebv(self.term(expr, env))})"

    def equal(self, left: Any, right: Any, env: _Env) -> str:
        """``=``: same stored term, or numerically equal numeric literals."""
        for expr, const in ((left, right), (right, left)):
            tag = _lang_constant(expr, const)
            if tag is not None:
                # LANG(?x) = "en" without building LANG's value: cheap on
                # hundreds of millions of labels. NULL (error) unless literal.
                x = self.term(expr.arg, env)
                return (
                    f"""CASE WHEN starts_with({x}, '"') """
                    f"""THEN ends_with({x}, {_str('"@' + tag)}) END"""
                )
        a, b = self.term(left, env), self.term(right, env)
        for const, other in ((left, b), (right, a)):
            if isinstance(const, Literal | URIRef):
                if _is_numeric(const):
                    num = _num(_str(encode_term(const)))
                    return (
                        f"CASE WHEN {_num(other)} IS NOT NULL "
                        f"THEN {_num(other)} = {num} ELSE {a} = {b} END"
                    )
                return f"{a} = {b}"
        return (
            f"CASE WHEN {_num(a)} IS NOT NULL AND {_num(b)} IS NOT NULL "
            f"THEN {_num(a)} = {_num(b)} ELSE {a} = {b} END"
        )

    def compare(self, op: str, left: Any, right: Any, env: _Env) -> str:
        """``< > <= >=`` on numbers by value, on like-typed literals lexically."""
        a, b = self.term(left, env), self.term(right, env)
        same_lexical = (
            f"(starts_with({a}, '\"') AND {_tail(a)} = {_tail(b)} AND "
            f"({_is_simple(a)} OR {_tail(a)} LIKE '@%' OR "
            f"{_tail(a)} LIKE '^^<{XSD}date%' OR {_tail(a)} = '^^<{_XSD_BOOLEAN}>'))"
        )
        return (
            f"CASE WHEN {_num(a)} IS NOT NULL AND {_num(b)} IS NOT NULL "
            f"THEN {_num(a)} {op} {_num(b)} WHEN {same_lexical} "
            f"THEN {_unescape(_lex(a))} {op} {_unescape(_lex(b))} END"
        )

    def exists(self, expr: CompValue, env: _Env) -> str:
        """EXISTS { pattern }: some pattern solution is compatible with the row.

        The pattern is compiled on its own and matched by compatibility,
        which equals substituting the row's values into it as long as no
        filter inside looks at variables from outside; that is checked.
        """
        _check_self_contained(expr.graph)
        seeds: dict[str, _Seed] = {}
        if env.rel is not None:
            _add_seeds(self, seeds, env.rel)
        rel = self.pattern(expr.graph, seeds)
        conds = []
        for var in sorted(rel.vars & set(env.cols)):
            a, b = env.cols[var], f"x.{self.col(var)}"
            if var in env.certain and var in rel.bound:
                conds.append(f"{a} = {b}")
            else:
                conds.append(f"({a} = {b} OR {a} IS NULL OR {b} IS NULL)")
        where = " WHERE " + " AND ".join(conds) if conds else ""
        return f"EXISTS (SELECT 1 FROM {rel.name} x{where})"

    def aggregate(self, agg: CompValue, env: _Env) -> str:
        """An aggregate's SQL, yielding a stored term."""
        distinct = "DISTINCT " if agg.distinct else ""
        if agg.name == "Aggregate_Count":
            if agg.vars == "*":
                row = ", ".join(env.cols.values())
                counted = (
                    f"count(DISTINCT row({row or '1'}))" if distinct else "count(*)"
                )
            else:
                counted = f"count({distinct}{self.term(agg.vars, env)})"
            return f"""'"' || {counted} || '"^^<{XSD_INTEGER}>'"""
        value = self.term(agg.vars, env)
        if agg.name == "Aggregate_Sample":
            return f"any_value({value})"
        if agg.name in ("Aggregate_Min", "Aggregate_Max"):
            keys = _order_keys(value)
            key = f"{{'r': {keys[0]}, 'n': coalesce({keys[1]}, 0), 'l': {keys[2]}}}"
            func = "arg_min" if agg.name == "Aggregate_Min" else "arg_max"
            return f"{func}({value}, CASE WHEN {value} IS NOT NULL THEN {key} END)"
        if agg.name == "Aggregate_GroupConcat":
            return _group_concat(value, agg.separator, bool(distinct))
        raise UnsupportedQueryError(
            f"the aggregate {agg.name.removeprefix('Aggregate_')}"
        )


# --------------------------------------------------------------------------
# Helpers around the compiler


def _group_concat(value: str, separator: Any, distinct: bool) -> str:
    """GROUP_CONCAT: a plain literal joining the values' string forms
    (DISTINCT compares those strings)."""
    sep = escape_lexical(str(separator) if separator is not None else " ")
    iri_text = f"CASE WHEN starts_with({value}, '<') THEN {_inner(value)} END"
    items = f"list(coalesce({_lex(value)}, {iri_text}))"
    if distinct:
        items = f"list_distinct({items})"
    return _plain(f"coalesce(array_to_string({items}, {_str(sep)}), '')")


def _peel(node: CompValue) -> _Modifiers:
    """Split Slice/Distinct/Project/OrderBy off a (sub-)query's pattern."""
    start, length, distinct = 0, None, False
    if node.name == "Slice":
        start, length, node = node.start or 0, node.length, node.p
    if node.name in ("Distinct", "Reduced"):
        distinct, node = True, node.p
    if node.name != "Project":
        raise UnsupportedQueryError(f"a {node.name} without a projection")
    projection = [str(v) for v in node.PV]
    node = node.p
    order: list[Any] = []
    if node.name == "OrderBy":
        order, node = list(node.expr), node.p
    return _Modifiers(node, projection, order, distinct, start, length)


def _term_kind(term: Any) -> str | None:
    """ "iri" or "plain" (escape-free plain literal) for a constant, else None."""
    if isinstance(term, URIRef):
        return "iri"
    if isinstance(term, Literal):
        stored = encode_term(term)
        if stored.endswith('"') and "\\" not in stored:
            return "plain"
    return None


def _expr_kind(expr: Any, rel: _Rel) -> str | None:
    """The kind of a BIND expression's values, where it is known."""
    if isinstance(expr, Variable):
        return rel.kinds.get(str(expr))
    if isinstance(expr, CompValue):
        # Language tags hold neither quotes nor backslashes.
        return "plain" if expr.name == "Builtin_LANG" else None
    return _term_kind(expr)


def _common_kinds(
    names: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Kinds of VALUES columns: those whose every value has the same kind."""
    kinds = {}
    for var in names:
        found = {_term_kind(row[var]) for row in rows if var in row}
        kind = found.pop() if len(found) == 1 else None
        if kind is not None:
            kinds[var] = kind
    return kinds


def _joined_kinds(left: _Rel, right: _Rel, loose: set[str]) -> dict[str, str]:
    """Kinds after a join: an equi-joined variable has the kind of either
    side; one that may come from either side needs both to agree."""
    kinds = {}
    for var in left.vars | right.vars:
        a, b = left.kinds.get(var), right.kinds.get(var)
        if var in loose:
            kind = a if a == b else None
        elif var in left.vars and var in right.vars:
            kind = a or b
        else:
            kind = a if var in left.vars else b
        if kind is not None:
            kinds[var] = kind
    return kinds


def _union_kinds(branches: Sequence[_Rel]) -> dict[str, str]:
    """Kinds after UNION: those on which all branches binding the var agree."""
    kinds = {}
    for var in frozenset().union(*(b.vars for b in branches)):
        found = {b.kinds.get(var) for b in branches if var in b.vars}
        kind = found.pop() if len(found) == 1 else None
        if kind is not None:
            kinds[var] = kind
    return kinds


def _group_branches(branches: Sequence[_Rel], other: _Rel) -> list[list[_Rel]]:
    """UNION branches grouped by which of ``other``'s variables they bind,
    and whether always."""
    groups: dict[tuple[tuple[bool, bool], ...], list[_Rel]] = {}
    for branch in branches:
        key = tuple((v in branch.vars, v in branch.bound) for v in sorted(other.vars))
        groups.setdefault(key, []).append(branch)
    return list(groups.values())


def _slice(start: int, length: int | None) -> str:
    out = f" LIMIT {int(length)}" if length is not None else ""
    return out + (f" OFFSET {int(start)}" if start else "")


def _add_seeds(compiler: _Compiler, seeds: dict[str, _Seed], rel: _Rel) -> None:
    """Offer ``rel``'s certainly bound variables as seeds, cheapest kept."""
    for var in rel.bound:
        if var not in seeds or rel.cost < seeds[var].cost:
            sql = f"SELECT DISTINCT {compiler.col(var)} FROM {rel.name}"
            seeds[var] = _Seed(sql, rel.cost)


def _with_seeds(compiler: _Compiler, ctx: Seeds, rel: _Rel) -> dict[str, _Seed]:
    seeds = dict(ctx)
    _add_seeds(compiler, seeds, rel)
    return seeds


def _restrict(ctx: Seeds, left: _Rel) -> dict[str, _Seed]:
    """Outer seeds that remain safe below OPTIONAL or MINUS: those for
    variables the left side always binds (else dropping a right row could
    turn an excluded row into an unbound, compatible one)."""
    return {v: s for v, s in ctx.items() if v in left.bound}


def _filter_seeds(expr: Any) -> dict[str, _Seed]:
    """Seeds from a filter's ``?v = c`` and ``?v IN (c, ...)`` conjuncts.

    Only IRIs and non-numeric literals: those compare as stored terms, while
    ``?v = 1`` also holds for ``1.0``.
    """
    if not isinstance(expr, CompValue):
        return {}
    if expr.name == "ConditionalAndExpression":
        seeds: dict[str, _Seed] = {}
        for part in [expr.expr, *expr.other]:
            seeds.update(_filter_seeds(part))
        return seeds
    if expr.name != "RelationalExpression" or not isinstance(expr.expr, Variable):
        return {}
    if expr.op == "=":
        consts = [expr.other]
    elif expr.op == "IN" and isinstance(expr.other, list):
        consts = expr.other
    else:
        return {}
    if not consts or not all(
        isinstance(c, URIRef | Literal) and not _is_numeric(c) for c in consts
    ):
        return {}
    terms = sorted({encode_term(c) for c in consts})
    if len(terms) == 1:
        return {str(expr.expr): _Seed(terms[0], 0, const=True)}
    rows = ", ".join(f"({_str(t)})" for t in terms)
    return {str(expr.expr): _Seed(f"SELECT v FROM (VALUES {rows}) AS z(v)", 1)}


def _seed_for(term: Any, seeds: Seeds) -> _Seed | None:
    var = _var(term)
    if var is None:
        return _Seed(encode_term(term), 0, const=True)
    return seeds.get(var)


def _next_path(paths: list[Any], seeds: Seeds) -> Any:
    """The path pattern to compile next: the one with the cheapest seed."""

    def cost(triple: Any) -> int:
        found = [_seed_for(triple[0], seeds), _seed_for(triple[2], seeds)]
        return min((s.cost for s in found if s is not None), default=9)

    return min(paths, key=cost)


def _lang_constant(expr: Any, const: Any) -> str | None:
    """The tag when ``expr`` is ``LANG(...)`` and ``const`` a plain literal
    spelling a (non-empty) language tag; else None."""
    if not (isinstance(expr, CompValue) and expr.name == "Builtin_LANG"):
        return None
    if not isinstance(const, Literal) or const.language or const.datatype:
        return None
    tag = str(const)
    return tag if re.fullmatch(r"[A-Za-z0-9-]+", tag) else None


def _is_numeric(term: Any) -> bool:
    return (
        isinstance(term, Literal)
        and str(term.datatype or "").removeprefix(XSD) in _NUMERIC_TYPES
        and str(term.datatype).startswith(XSD)
    )


def _expr_name(expr: CompValue) -> str:
    return str(expr.name).removeprefix("Builtin_")


def _variables(node: Any) -> set[str]:
    """Every variable named anywhere inside an algebra node or expression."""
    if isinstance(node, Variable):
        return {str(node)}
    if isinstance(node, CompValue):
        node = list(node.values())
    if isinstance(node, list | tuple):
        return set().union(*(_variables(item) for item in node))
    return set()


def _check_self_contained(node: Any) -> None:
    """Refuse EXISTS patterns whose result depends on outer bindings beyond
    compatibility: filters or binds reading outside variables, OPTIONAL,
    MINUS, sub-queries."""
    if not isinstance(node, CompValue):
        return
    allowed = {"BGP", "Join", "Union", "Filter", "ToMultiSet", "values", "Extend"}
    if node.name not in allowed:
        raise UnsupportedQueryError(f"{node.name} inside EXISTS")
    if node.name in ("Filter", "Extend") and not _variables(node.expr) <= _variables(
        node.p
    ):
        raise UnsupportedQueryError("an EXISTS filter reading outer variables")
    for child in ("p", "p1", "p2"):
        if child in node:
            _check_self_contained(node[child])


_PATTERNS: dict[str, Callable[[_Compiler, CompValue, Seeds], _Rel]] = {
    "BGP": _Compiler._bgp,
    "Join": _Compiler._join_node,
    "LeftJoin": _Compiler._left_join_node,
    "Minus": _Compiler._minus_node,
    "Union": _Compiler._union_node,
    "Filter": _Compiler._filter_node,
    "Extend": _Compiler._extend_node,
    "ToMultiSet": _Compiler._multiset_node,
    "values": _Compiler._values,
    "AggregateJoin": _Compiler._aggregate_node,
    "Project": _Compiler._subselect_node,
    "Slice": _Compiler._subselect_node,
    "Distinct": _Compiler._subselect_node,
    "Reduced": _Compiler._subselect_node,
}


# --------------------------------------------------------------------------
# Expression tables: term-valued and boolean functions


def _lang_term(c: _Compiler, e: CompValue, env: _Env) -> str:
    return _plain(_lang(c.term(e.arg, env)))


def _str_term(c: _Compiler, e: CompValue, env: _Env) -> str:
    x = c.term(e.arg, env)
    return (
        f"CASE WHEN starts_with({x}, '<') THEN {_plain(_inner(x))} "
        f"WHEN starts_with({x}, '\"') THEN {_plain(_lex(x))} END"
    )


def _datatype_term(c: _Compiler, e: CompValue, env: _Env) -> str:
    x = c.term(e.arg, env)
    tail = _tail(x)
    return (
        f"CASE WHEN NOT starts_with({x}, '\"') THEN NULL "
        f"WHEN {tail} LIKE '@%' THEN '<{_RDF_LANGSTRING}>' "
        f"WHEN {tail} LIKE '^^%' THEN substr({tail}, 3) ELSE '<{XSD}string>' END"
    )


def _coalesce_term(c: _Compiler, e: CompValue, env: _Env) -> str:
    args = [c.term(a, env) for a in e.arg]
    return f"coalesce({', '.join(args)})" if args else _NULL


def _if_term(c: _Compiler, e: CompValue, env: _Env) -> str:
    test = c.cond(e.arg1, env)
    then, other = c.term(e.arg2, env), c.term(e.arg3, env)
    return f"CASE WHEN {test} THEN {then} WHEN NOT {test} THEN {other} END"


_TERM_EXPRS: dict[str, Callable[[_Compiler, CompValue, _Env], str]] = {
    "Builtin_LANG": _lang_term,
    "Builtin_STR": _str_term,
    "Builtin_DATATYPE": _datatype_term,
    "Builtin_COALESCE": _coalesce_term,
    "Builtin_IF": _if_term,
}


def _relational(c: _Compiler, e: CompValue, env: _Env) -> str:
    op = e.op
    if op in ("IN", "NOT IN"):
        # rdflib spells an empty list as rdf:nil.
        items = e.other if isinstance(e.other, list) else []
        tests = [c.equal(e.expr, other, env) for other in items]
        found = " OR ".join(f"({t})" for t in tests) or "false"
        # An empty list is false even for an unbound left side.
        return found if op == "IN" else f"NOT ({found})"
    if op == "=":
        return c.equal(e.expr, e.other, env)
    if op == "!=":
        return f"NOT ({c.equal(e.expr, e.other, env)})"
    return c.compare(op, e.expr, e.other, env)


def _and(c: _Compiler, e: CompValue, env: _Env) -> str:
    return " AND ".join(c.cond(x, env) for x in [e.expr, *e.other])


def _or(c: _Compiler, e: CompValue, env: _Env) -> str:
    return " OR ".join(c.cond(x, env) for x in [e.expr, *e.other])


def _kind_test(prefix: str) -> Callable[[_Compiler, CompValue, _Env], str]:
    def test(c: _Compiler, e: CompValue, env: _Env) -> str:
        return f"starts_with({c.term(e.arg, env)}, {_str(prefix)})"

    return test


def _is_numeric_test(c: _Compiler, e: CompValue, env: _Env) -> str:
    x = c.term(e.arg, env)
    return f"CASE WHEN {x} IS NOT NULL THEN {_num(x)} IS NOT NULL END"


def _string_args(c: _Compiler, e: CompValue, env: _Env) -> tuple[str, str, str]:
    """Decoded lexical forms of two string arguments, and whether they are
    compatible (the second has no language tag, or the first's)."""
    a, b = c.term(e.arg1, env), c.term(e.arg2, env)
    compatible = f"({_lang(b)} = '' OR {_lang(a)} = {_lang(b)})"
    return _unescape(_lex(a)), _unescape(_lex(b)), compatible


def _string_test(func: str) -> Callable[[_Compiler, CompValue, _Env], str]:
    def test(c: _Compiler, e: CompValue, env: _Env) -> str:
        a, b, compatible = _string_args(c, e, env)
        return f"CASE WHEN {compatible} THEN {func}({a}, {b}) END"

    return test


def _regex(c: _Compiler, e: CompValue, env: _Env) -> str:
    if not isinstance(e.pattern, Literal) or not isinstance(e.flags, Literal | None):
        raise UnsupportedQueryError("REGEX with a pattern or flags that vary")
    flags = str(e.flags or "")
    if set(flags) - set("ism"):
        raise UnsupportedQueryError(f"REGEX flags {flags!r}")
    # RE2 takes XPath's i, s and m flags inline.
    pattern = (f"(?{flags})" if flags else "") + str(e.pattern)
    text = _unescape(_lex(c.term(e.text, env)))
    return f"regexp_matches({text}, {_str(pattern)})"


def _langmatches(c: _Compiler, e: CompValue, env: _Env) -> str:
    tag = f"lower({_lex(c.term(e.arg1, env))})"
    pattern = f"lower({_lex(c.term(e.arg2, env))})"
    return (
        f"CASE WHEN {pattern} = '*' THEN {tag} <> '' "
        f"ELSE {tag} = {pattern} OR starts_with({tag}, {pattern} || '-') END"
    )


def _bound(c: _Compiler, e: CompValue, env: _Env) -> str:
    return f"{c.term(e.arg, env)} IS NOT NULL"


def _same_term(c: _Compiler, e: CompValue, env: _Env) -> str:
    return f"{c.term(e.arg1, env)} = {c.term(e.arg2, env)}"


def _not(c: _Compiler, e: CompValue, env: _Env) -> str:
    return f"NOT {c.cond(e.expr, env)}"


def _exists(c: _Compiler, e: CompValue, env: _Env) -> str:
    return c.exists(e, env)


def _not_exists(c: _Compiler, e: CompValue, env: _Env) -> str:
    return f"NOT {c.exists(e, env)}"


_COND_EXPRS: dict[str, Callable[[_Compiler, CompValue, _Env], str]] = {
    "RelationalExpression": _relational,
    "ConditionalAndExpression": _and,
    "ConditionalOrExpression": _or,
    "UnaryNot": _not,
    "Builtin_BOUND": _bound,
    "Builtin_isIRI": _kind_test("<"),
    "Builtin_isURI": _kind_test("<"),
    "Builtin_isLITERAL": _kind_test('"'),
    "Builtin_isBLANK": _kind_test("_:"),
    "Builtin_isNUMERIC": _is_numeric_test,
    "Builtin_sameTerm": _same_term,
    "Builtin_STRSTARTS": _string_test("starts_with"),
    "Builtin_STRENDS": _string_test("ends_with"),
    "Builtin_CONTAINS": _string_test("contains"),
    "Builtin_REGEX": _regex,
    "Builtin_LANGMATCHES": _langmatches,
    "Builtin_EXISTS": _exists,
    "Builtin_NOTEXISTS": _not_exists,
}

__all__ = [
    "CompiledQuery",
    "UnsupportedQueryError",
    "compile_algebra",
    "compile_select",
    "encode_term",
    "parse_select",
    "run_select",
]
