"""RDF terms as the embedded store keeps them, and the Wikidata vocabulary.

The store holds every term in its N-Triples form, one canonical spelling per
term, so that equal terms are equal strings:

- IRIs as ``<http://...>``;
- literals as ``"lexical"``, ``"lexical"@lang`` (tag lower-cased) or
  ``"lexical"^^<datatype>``, with ``xsd:string`` dropped (RDF 1.1 treats
  ``"x"`` and ``"x"^^xsd:string`` as one term) and only ``\\``, ``"``, LF and CR
  escaped; every other character is kept as UTF-8;
- blank nodes as ``_:label``.

Query results leave the store *decoded*: an IRI as its bare IRI, a literal as
its lexical form, a blank node as ``_:label``. SPARQL endpoints' JSON results
carry the same ``value`` strings, so both backends answer alike.
"""

from __future__ import annotations

import re

WD = "http://www.wikidata.org/entity/"
WDT = "http://www.wikidata.org/prop/direct/"
RDFS_LABEL = "http://www.w3.org/2000/01/rdf-schema#label"
SCHEMA_DESCRIPTION = "http://schema.org/description"
SCHEMA_ABOUT = "http://schema.org/about"
SCHEMA_DATE_MODIFIED = "http://schema.org/dateModified"
SKOS_ALT_LABEL = "http://www.w3.org/2004/02/skos/core#altLabel"
WIKIBASE_SITELINKS = "http://wikiba.se/ontology#sitelinks"
WIKIBASE_DUMP = "http://wikiba.se/ontology#Dump"
ENTITY_DATA = "https://www.wikidata.org/wiki/Special:EntityData/"
XSD = "http://www.w3.org/2001/XMLSchema#"
XSD_STRING = XSD + "string"
XSD_INTEGER = XSD + "integer"
XSD_DATETIME = XSD + "dateTime"

# Predicates whose literal objects are kept only in the configured languages.
LANGUAGE_PREDICATES = (RDFS_LABEL, SCHEMA_DESCRIPTION, SKOS_ALT_LABEL)

_ESCAPES = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"'}
_ESCAPES.update({"'": "'", "\\": "\\"})
_ESCAPE_RE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.S)
_LITERAL_RE = re.compile(r'^"(.*)"(?:@([A-Za-z0-9-]+)|\^\^<([^>]*)>)?$', re.S)


def qid_iri(qid: str) -> str:
    """``Q42`` -> ``<http://www.wikidata.org/entity/Q42>``."""
    return f"<{WD}{qid}>"


def iri(value: str) -> str:
    """An IRI in its stored form."""
    return f"<{value}>"


def escape_lexical(text: str) -> str:
    """Escape a literal's lexical form the way the store spells it."""
    if not any(c in text for c in '\\"\n\r'):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return text.replace("\n", "\\n").replace("\r", "\\r")


def unescape_lexical(text: str) -> str:
    """Undo N-Triples/Turtle string escapes (``\\n``, ``\\"``, ``\\u00e9``, ...)."""
    if "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        short, long, char = match.groups()
        if short or long:
            return chr(int(short or long, 16))
        return _ESCAPES.get(char, "\\" + char)

    return _ESCAPE_RE.sub(replace, text)


def literal(lexical: str, lang: str | None = None, datatype: str | None = None) -> str:
    """A literal in its stored form; ``xsd:string`` is dropped, tags lower-cased."""
    body = f'"{escape_lexical(lexical)}"'
    if lang:
        return f"{body}@{lang.lower()}"
    if datatype and datatype != XSD_STRING:
        return f"{body}^^<{datatype}>"
    return body


def canonical_term(term: str) -> str:
    """Bring an N-Triples term from a dump into the store's one spelling.

    Dumps already write nearly every term canonically; this only rewrites the
    rare literal with ``\\u`` escapes, an upper-case language tag or an explicit
    ``xsd:string``.
    """
    if not term.startswith('"'):
        return term
    # Fast path for the usual case: no \u escape, no xsd:string, no capitals
    # in the language tag.
    tail = term[term.rfind('"') + 1 :]
    escaped = "\\u" in term or "\\U" in term
    capitals = tail.startswith("@") and tail != tail.lower()
    if not escaped and not capitals and not tail.endswith("#string>"):
        return term
    match = _LITERAL_RE.match(term)
    if match is None:
        return term
    lexical, lang, datatype = match.groups()
    if lang is not None and lang != lang.lower():
        return literal(unescape_lexical(lexical), lang=lang)
    if datatype == XSD_STRING or "\\u" in lexical or "\\U" in lexical:
        return literal(unescape_lexical(lexical), lang=lang, datatype=datatype)
    return term


def decode_term(term: str | None) -> str | None:
    """The value of a stored term: bare IRI, lexical form, or ``_:label``."""
    if term is None:
        return None
    if term.startswith("<"):
        return term[1:-1]
    if term.startswith('"'):
        end = term.rfind('"')
        return unescape_lexical(term[1:end])
    return term


def term_language(term: str) -> str:
    """The language tag of a stored literal, or ``""``."""
    if term.startswith('"') and not term.endswith('"'):
        tail = term[term.rfind('"') + 1 :]
        if tail.startswith("@"):
            return tail[1:]
    return ""


def qid_of(value: str) -> str:
    """``http://www.wikidata.org/entity/Q42`` -> ``Q42``; other values unchanged."""
    return value[len(WD) :] if value.startswith(WD) else value
