"""Dump detection and the three readers, on real dumps and crafted lines."""

from __future__ import annotations

import bz2
import gzip
import re
import shutil
from pathlib import Path

import pytest

from kg import dumps, terms
from kg.errors import DumpFormatError, InputError

RULES = dumps.KeepRules(properties=("P31", "P279", "P225", "P1843"), languages=("en",))
WD, WDT = terms.WD, terms.WDT
LABEL = terms.RDFS_LABEL


def read_all(path: Path, rules: dumps.KeepRules = RULES):
    fmt, compression = dumps.detect(path)
    stats = dumps.ReadStats()
    triples = []
    with dumps.open_dump(path, compression) as stream:
        for batch in dumps.reader_for(fmt)(stream, rules, stats, 5):
            table = batch.table()
            columns = [table.column(name).to_pylist() for name in ("s", "p", "o")]
            triples += list(zip(*columns, strict=True))
    return triples, stats


def test_detect_real_dumps(arnold_dump, onezoom_dump, q42_turtle):
    assert dumps.detect(arnold_dump) == (
        dumps.DumpFormat.NTRIPLES,
        dumps.Compression.GZIP,
    )
    assert dumps.detect(onezoom_dump) == (
        dumps.DumpFormat.JSON,
        dumps.Compression.BZIP2,
    )
    assert dumps.detect(q42_turtle) == (dumps.DumpFormat.TURTLE, dumps.Compression.NONE)


def test_detect_by_content_when_the_name_says_nothing(
    tmp_path, arnold_dump, q42_turtle
):
    unnamed = tmp_path / "download.data"
    shutil.copy(arnold_dump, unnamed)
    assert dumps.detect(unnamed) == (dumps.DumpFormat.NTRIPLES, dumps.Compression.GZIP)
    turtle = tmp_path / "export.bz2"
    turtle.write_bytes(bz2.compress(q42_turtle.read_bytes()))
    assert dumps.detect(turtle) == (dumps.DumpFormat.TURTLE, dumps.Compression.BZIP2)


def test_detect_rejects_other_files_naming_them(tmp_path):
    odd = tmp_path / "notes.txt"
    odd.write_text("hello world\n")
    with pytest.raises(DumpFormatError, match=r"notes\.txt.*N-Triples"):
        dumps.detect(odd)
    with pytest.raises(InputError, match=r"not found.*kg\.source"):
        dumps.detect(tmp_path / "missing.nt")


NT_SAMPLE = f"""\
# a comment line
<{WD}Q1> <{LABEL}> "one"@en .
<{WD}Q1> <{LABEL}> "eins"@de .
<{WD}Q1> <{LABEL}> "ONE"@EN .
<{WD}Q1> <{WDT}P31> <{WD}Q2> .
<{WD}Q1> <{WDT}P999> <{WD}Q3> .
<{WD}Q1> <{WDT}P999> "text > <{WDT}P31> inside a literal" .
<{WD}Q1> <{WDT}P1843> "caf\\u00E9"@en .
<{WD}Q1> <{WDT}P225> "plain"^^<{terms.XSD_STRING}> .

this line is broken
<{WD}Q4> <{WDT}P279> <{WD}Q2>
<https://en.wikipedia.org/wiki/One> <{terms.SCHEMA_ABOUT}> <{WD}Q1> .
<{terms.ENTITY_DATA}Q1> <{terms.SCHEMA_ABOUT}> <{WD}Q1> .
<{terms.ENTITY_DATA}Q1> <{terms.WIKIBASE_SITELINKS}> "7"^^<{terms.XSD_INTEGER}> .
"""


def test_ntriples_filter_keeps_needed_triples_in_canonical_form(tmp_path):
    path = tmp_path / "sample.nt.gz"
    path.write_bytes(gzip.compress(NT_SAMPLE.encode()))
    triples, stats = read_all(path)
    kept = {(s, p, o) for s, p, o in triples}
    q1 = terms.qid_iri("Q1")
    assert (q1, f"<{LABEL}>", '"one"@en') in kept
    assert (q1, f"<{LABEL}>", '"ONE"@en') in kept  # tag lower-cased
    assert not any(o == '"eins"@de' for _, _, o in kept)  # language filter
    assert (q1, f"<{WDT}P31>", terms.qid_iri("Q2")) in kept
    assert not any("P999" in p for _, p, _ in kept)  # literal text is no predicate
    assert (q1, f"<{WDT}P1843>", '"café"@en') in kept  # \\u escape decoded
    assert (q1, f"<{WDT}P225>", '"plain"') in kept  # xsd:string dropped
    about = [s for s, p, _ in kept if p == f"<{terms.SCHEMA_ABOUT}>"]
    assert about == [f"<{terms.ENTITY_DATA}Q1>"]  # article sitelinks dropped
    assert stats.lines == NT_SAMPLE.count("\n")
    assert stats.malformed == 2
    assert [n for n, _ in stats.examples] == [11, 12]


def test_ntriples_real_truthy_dump(arnold_dump):
    rules = dumps.KeepRules(properties=("P31", "P279"), languages=("en",))
    triples, stats = read_all(arnold_dump, rules)
    assert stats.lines == 383_120
    assert stats.malformed == 0
    predicates = {p for _, p, _ in triples}
    assert f"<{WDT}P279>" in predicates and f"<{LABEL}>" in predicates
    assert f"<{WDT}P373>" not in predicates  # Commons category: not kept
    vehicle = terms.qid_iri("Q42889")
    assert (vehicle, f"<{LABEL}>", '"vehicle"@en') in set(triples)
    assert sum(1 for _, p, _ in triples if p == f"<{WDT}P279>") == 22_064


def test_json_dump_gives_truthy_claims(onezoom_dump):
    rules = dumps.KeepRules(("P171", "P225", "P105", "P1843", "P18"), ("en",))
    triples, stats = read_all(onezoom_dump, rules)
    kept = set(triples)
    sapiens, homo = terms.qid_iri("Q15978631"), terms.qid_iri("Q171283")
    assert (sapiens, f"<{WDT}P171>", homo) in kept
    assert (sapiens, f"<{WDT}P225>", '"Homo sapiens"') in kept
    assert (sapiens, f"<{WDT}P1843>", '"Human"@en') in kept
    assert not any(s == sapiens and o == '"Mensch"@de' for s, _, o in kept)
    # Homo has one preferred parent taxon and three normal ones: truthy = preferred
    homo_parents = {o for s, p, o in kept if s == homo and p == f"<{WDT}P171>"}
    assert homo_parents == {terms.qid_iri("Q242047")}
    data = f"<{terms.ENTITY_DATA}Q15978631>"
    assert (
        data,
        f"<{terms.WIKIBASE_SITELINKS}>",
        f'"55"^^<{terms.XSD_INTEGER}>',
    ) in kept
    assert stats.malformed == 0


def test_json_dump_counts_broken_entities(tmp_path, onezoom_dump):
    lines = bz2.decompress(onezoom_dump.read_bytes()).split(b"\n")
    lines.insert(3, b'{"type":"item","id":"Q1", "labels": {broken json},')
    path = tmp_path / "broken.json"
    path.write_bytes(b"\n".join(lines))
    _, stats = read_all(path)
    assert stats.malformed == 1
    assert stats.examples[0][0] == 4


def test_turtle_full_export(q42_turtle):
    rules = dumps.KeepRules(("P31", "P18"), ("en",))
    triples, _ = read_all(q42_turtle, rules)
    kept = set(triples)
    q42 = terms.qid_iri("Q42")
    assert (q42, f"<{LABEL}>", '"Douglas Adams"@en') in kept
    assert (q42, f"<{WDT}P31>", terms.qid_iri("Q5")) in kept
    assert (q42, f"<{terms.SKOS_ALT_LABEL}>", '"Douglas Noël Adams"@en') in kept
    dump = (terms.iri(terms.WIKIBASE_DUMP), f"<{terms.SCHEMA_DATE_MODIFIED}>")
    assert any((s, p) == dump for s, p, _ in kept)
    assert not any(o.endswith("@fr") for _, _, o in kept)


def test_dump_date_on_the_first_line_is_kept(tmp_path):
    dump_date = f'"2024-04-08T23:00:02Z"^^<{terms.XSD_DATETIME}>'
    text = (
        f"<{terms.WIKIBASE_DUMP}> <{terms.SCHEMA_DATE_MODIFIED}> {dump_date} .\n"
        f"<{terms.ENTITY_DATA}Q1> <{terms.SCHEMA_DATE_MODIFIED}> {dump_date} .\n"
    )
    path = tmp_path / "head.nt"
    path.write_text(text)
    triples, stats = read_all(path)
    assert [s for s, _, _ in triples] == [terms.iri(terms.WIKIBASE_DUMP)]
    assert stats.malformed == 0


def test_factored_alternation_matches_exactly_the_items():
    items = [
        terms.WDT + pid for pid in ("P1", "P18", "P1843", "P171", "P279", "P31")
    ] + [terms.RDFS_LABEL, terms.SCHEMA_ABOUT, terms.WIKIBASE_SITELINKS]
    factored = re.compile(rb"<(" + dumps._alternation(items) + rb")> ")
    candidates = [*items, terms.WDT + "P", terms.WDT + "P2", terms.WDT + "P184"]
    candidates += [terms.WDT + "P18430", terms.RDFS_LABEL + "x", "http://schema.org/"]
    for candidate in candidates:
        match = factored.match(f"<{candidate}> ".encode())
        found = match.group(1).decode() if match else None
        assert found == (candidate if candidate in items else None), candidate
