"""Benchmark kgclip's knowledge-graph stage against rdflib and Oxigraph.

What it measures, on a synthetic truthy Wikidata N-Triples dump that it
builds itself (seeded, cached in ``--out``):

1. the dump: ``--lines`` lines shaped like ``latest-truthy.nt`` (a taxon tree
   with multi-parent taxa and a deep subtree of exactly ``--taxa`` taxa,
   labels, descriptions and aliases in a dozen languages, ranks, taxon names,
   common names, images, sitelinks, and the many identifiers and foreign
   language terms that the ingest filter must drop), plain and gzip;
2. kgclip's filter alone (``kg.dumps.read_ntriples``, batches discarded) and
   kgclip's ingest (``kg.ingest.ingest``) of the plain and the gzip file into
   fresh stores, each the median of ``--repeat`` runs: wall and CPU seconds,
   lines/s, kept triples/s, peak RSS, store size;
3. kgclip's harvest of the subtree (``kg.harvest.harvest`` on
   ``kg.backend.EmbeddedGraph``): median of 3 runs after a warm-up, the entity
   count, and every lineage checked against the generator's own tree;
4. the reference tools on the same input: rdflib's in-memory ``Graph`` on the
   first ``--reference-lines`` lines, Oxigraph's on-disk ``bulk_load`` of the
   whole file, and the same harvest SPARQL through both (rdflib only on a
   smaller subtree that lies wholly in its prefix, since it is slow).

Each load and each harvest runs in its own subprocess, so that its peak RSS
(``os.wait4``) is its own. The table is printed with the goals next to the
figures and written to ``--out/bench_kg.json`` and ``--out/bench_kg.md``.

Run it as ``make bench-kg`` or::

    .venv/bin/python benchmarks/bench_kg.py [--lines N] [--taxa N] [--out DIR]
        [--seed N] [--runs N] [--repeat N] [--reference-lines N]
        [--reference-taxa N] [--reference-query-limit S] [--skip-reference]

``benchmarks/README.md`` explains each figure and holds measured results.

The exit status is 1 when a correctness check fails (entity count, lineages,
fact rows that differ between systems), 0 otherwise; missed speed goals are
reported, not fatal.
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import common
from common import Row, fmt, rate, verdict

GENERATOR_VERSION = 2
SNAPSHOT = "2026-01-01"
CHILD_TIMEOUT_S = 1800
FLUSH_LINES = 200_000

# Goals of the knowledge-graph stage.
GOAL_FILTER = 1_000_000
GOAL_KEPT_PER_S = 200_000
GOAL_PEAK_MB = 2048
GOAL_HARVEST_S = 1.0

# --------------------------------------------------------------------------
# Vocabulary, spelled as the real truthy dumps spell it

WD = "http://www.wikidata.org/entity/Q"
WDT = "<http://www.wikidata.org/prop/direct/"
LABEL = "<http://www.w3.org/2000/01/rdf-schema#label>"
PREF_LABEL = "<http://www.w3.org/2004/02/skos/core#prefLabel>"
ALT_LABEL = "<http://www.w3.org/2004/02/skos/core#altLabel>"
S_NAME = "<http://schema.org/name>"
S_DESCRIPTION = "<http://schema.org/description>"
S_ABOUT = "<http://schema.org/about>"
S_PART_OF = "<http://schema.org/isPartOf>"
S_IN_LANGUAGE = "<http://schema.org/inLanguage>"
S_VERSION = "<http://schema.org/version>"
S_MODIFIED = "<http://schema.org/dateModified>"
WB = "<http://wikiba.se/ontology#"
ENTITY_DATA = "<https://www.wikidata.org/wiki/Special:EntityData/Q"
FILE_PATH = "<http://commons.wikimedia.org/wiki/Special:FilePath/"
XSD_INT = "^^<http://www.w3.org/2001/XMLSchema#integer>"
XSD_DATE = "^^<http://www.w3.org/2001/XMLSchema#dateTime>"

LANGS = ("en", "de", "fr", "es", "ja", "it", "nl", "ru", "pt", "zh", "sv", "pl")
OTHER_LANGS = LANGS[1:]
TAXON_CLASS = 16521  # Q16521 taxon
RANKS = {
    36732: "kingdom", 2752679: "subkingdom", 38348: "phylum",
    1153785: "subphylum", 3504061: "superclass", 37517: "class",
    5867051: "subclass", 5868144: "superorder", 36602: "order",
    5867959: "suborder", 2136103: "superfamily", 35409: "family",
    164280: "subfamily", 227936: "tribe", 34740: "genus", 3965313: "subgenus",
    7432: "species", 68947: "subspecies", 713623: "clade",
}  # fmt: skip
RANK_BY_DEPTH = list(RANKS)[:16]
CLADE, SPECIES = 713623, 7432
CLASSES = {5: "human", 515: "city", 13442814: "scholarly article", 11424: "film"}
SYLLABLES = (
    "ka", "lo", "mi", "ra", "ten", "tus", "phy", "lla", "cor", "dra", "mo",
    "nia", "spi", "the", "xo", "za", "bu", "cri", "den", "gal", "hy", "lep",
    "mar", "nos", "or", "pel", "qua", "sar", "tri", "ur", "vel", "zon",
)  # fmt: skip
CHAIN = 25  # the subtree starts with a chain this deep
SUBTREE_BASE = 10_000_000  # QIDs of the harvested subtree
OTHER_BASE = 50_000_000  # QIDs of all other entities
MULTI_PARENT_SHARE = 0.05


def word(n: int) -> str:
    """A pseudo-Latin word of three syllables, fixed by ``n``."""
    n = (n * 2654435761) & 0x7FFF
    return SYLLABLES[n & 31] + SYLLABLES[(n >> 5) & 31] + SYLLABLES[n >> 10]


def unique_word(n: int) -> str:
    """A word of four syllables, one per ``n`` among 2**20 consecutive ``n``."""
    n = (n * 2654435761) & 0xFFFFF  # odd factor: a bijection of the low bits
    return "".join(SYLLABLES[(n >> shift) & 31] for shift in (0, 5, 10, 15))


def ent(qid: int) -> str:
    return f"<{WD}{qid}>"


# --------------------------------------------------------------------------
# The harvested subtree


@dataclass
class Subtree:
    """The harvested taxon subtree; node 0 is the root, nodes in file order."""

    qids: list[int]
    parents: list[list[int]]  # node indices, primary parent first
    depth: list[int]  # depth in the primary tree

    @property
    def root(self) -> str:
        return f"Q{self.qids[0]}"


def build_subtree(size: int, seed: int) -> Subtree:
    """A random recursive tree of ``size`` taxa, relabelled in DFS order.

    The first ``CHAIN`` taxa form a chain, so the tree is at least that deep;
    about 5% of taxa get one or two more parents: siblings of their primary
    parent (a tie in lineage length) or, lacking those, their grandparent.
    """
    rng = random.Random(seed)
    created = [-1] + [i - 1 if i < CHAIN else rng.randrange(i) for i in range(1, size)]
    children: list[list[int]] = [[] for _ in range(size)]
    for node, parent in enumerate(created[1:], start=1):
        children[parent].append(node)
    order = _preorder(children)
    position = {node: pos for pos, node in enumerate(order)}
    primary = [-1] + [position[created[node]] for node in order[1:]]
    depth = [0] * size
    for pos in range(1, size):
        depth[pos] = depth[primary[pos]] + 1
    qid_numbers = list(range(SUBTREE_BASE, SUBTREE_BASE + size))
    rng.shuffle(qid_numbers)
    parents = _add_parents(primary, depth, rng)
    return Subtree(qid_numbers, parents, depth)


def _preorder(children: list[list[int]]) -> list[int]:
    order, stack = [], [0]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(children[node]))
    return order


def _add_parents(
    primary: list[int], depth: list[int], rng: random.Random
) -> list[list[int]]:
    kids: dict[int, list[int]] = {}
    for node, parent in enumerate(primary[1:], start=1):
        kids.setdefault(parent, []).append(node)
    parents: list[list[int]] = [[]] + [[p] for p in primary[1:]]
    for node in range(1, len(primary)):
        if depth[node] < 2 or rng.random() >= MULTI_PARENT_SHARE:
            continue
        up = primary[node]
        grand = primary[up]
        siblings = [s for s in kids[grand] if s != up]
        extra = 1 if rng.random() < 0.75 else 2
        pool = siblings or [grand]
        parents[node] += rng.sample(pool, min(extra, len(pool)))
    return parents


def expected_lineages(tree: Subtree, rule: str) -> dict[str, list[str]]:
    """Each taxon's lineage: the shortest chain of parents from the root.

    Among chains of equal length, ``rule`` picks:

    - ``lowest-qid-parent``, the rule ``kg/harvest.py`` documents: the chain
      through the parent with the lowest QID number;
    - ``first-reached``: the chain that a breadth-first walk from the root,
      visiting children in QID-number order, reaches first.
    """
    size = len(tree.qids)
    down: list[list[int]] = [[] for _ in range(size)]
    for node, ups in enumerate(tree.parents):
        for up in ups:
            down[up].append(node)
    chain: dict[int, list[str]] = {0: [tree.root]}
    queue = deque([0])
    while queue:
        node = queue.popleft()
        for child in sorted(down[node], key=lambda n: tree.qids[n]):
            if child not in chain:
                chain[child] = [*chain[node], f"Q{tree.qids[child]}"]
                queue.append(child)
    if rule == "lowest-qid-parent":
        _relink_to_lowest_parent(tree, chain, list(chain))
    return {f"Q{tree.qids[node]}": lineage for node, lineage in chain.items()}


def _relink_to_lowest_parent(
    tree: Subtree, chain: dict[int, list[str]], order: list[int]
) -> None:
    """Rebuild chains in BFS order through the lowest-QID shortest parent."""
    depth = {node: len(lineage) for node, lineage in chain.items()}
    for node in order[1:]:
        best = min(
            (p for p in tree.parents[node] if depth[p] == depth[node] - 1),
            key=lambda p: tree.qids[p],
        )
        chain[node] = [*chain[best], f"Q{tree.qids[node]}"]


def deep_taxon(tree: Subtree, lineages: dict[str, list[str]]) -> str:
    """The deepest taxon, preferring one whose lineage passes a tie of parents."""
    tied = {f"Q{tree.qids[n]}" for n, ups in enumerate(tree.parents) if len(ups) > 1}

    def key(qid: str) -> tuple[int, bool, str]:
        lineage = lineages[qid]
        return (len(lineage), any(q in tied for q in lineage), qid)

    return max(lineages, key=key)


def closure(down: list[list[int]], start: int, complete: int, most: int) -> int:
    """The size of a node's subtree through every parent edge, node included.

    0 when the subtree has more than ``most`` nodes or reaches a node at or
    after ``complete`` (one outside the prefix).
    """
    seen, stack = {start}, [start]
    while stack:
        for child in down[stack.pop()]:
            if child in seen:
                continue
            if child >= complete or len(seen) >= most:
                return 0
            seen.add(child)
            stack.append(child)
    return len(seen)


def small_root(tree: Subtree, complete: int, target: int) -> tuple[str, int] | None:
    """A root whose whole subtree lies in the first ``complete`` nodes.

    Returns the root QID and its subtree's size, the largest not above
    ``target``; None when no such subtree of at least 10 taxa exists.
    """
    down: list[list[int]] = [[] for _ in tree.qids]
    for node, ups in enumerate(tree.parents):
        for up in ups:
            down[up].append(node)
    best: tuple[str, int] | None = None
    for node in range(1, complete):
        size = closure(down, node, complete, target) if down[node] else 0
        if size and (best is None or size > best[1]):
            best = (f"Q{tree.qids[node]}", size)
    return best if best and best[1] >= 10 else None


# --------------------------------------------------------------------------
# The dump writer


class DumpSink:
    """Collects lines and writes them to the plain file and to gzip."""

    def __init__(self, plain: IO[bytes], gzip_in: IO[bytes]):
        self.plain, self.gzip_in = plain, gzip_in
        self.out: list[str] = []
        self.lines = 0

    def flush(self) -> None:
        data = "".join(self.out).encode()
        self.plain.write(data)
        self.gzip_in.write(data)
        self.lines += len(self.out)
        self.out = []

    def count(self) -> int:
        return self.lines + len(self.out)


def _names(
    out: list[str], s: str, name: str, langs: list[str], rng: random.Random
) -> None:
    """Label, prefLabel and schema:name in each language, as truthy dumps do."""
    for lang in langs:
        text = name if lang != "ja" else f"タクソン{len(name)}{name[:3]}"
        for predicate in (LABEL, PREF_LABEL, S_NAME):
            out.append(f'{s} {predicate} "{text}"@{lang} .\n')
    if rng.random() < 0.3:
        out.append(f'{s} {ALT_LABEL} "{name.split()[0]} sp."@en .\n')
    if rng.random() < 0.5:
        for lang in rng.sample(OTHER_LANGS, 2):
            out.append(f'{s} {ALT_LABEL} "{name} ({lang})"@{lang} .\n')


def _descriptions(out: list[str], s: str, kind: str, rng: random.Random) -> None:
    texts = {
        "en": f"{kind} of insect",
        "de": f"Art der Gattung {kind.title()}",
        "fr": f"espèce d'insectes ({kind})",
        "es": f"especie de insecto ({kind})",
        "it": f"specie di insetto ({kind})",
        "nl": f"soort uit het geslacht {kind}",
    }
    if rng.random() < 0.05:
        texts["en"] = f'{kind} of \\"true\\" bugs'
    for lang in ["en", *rng.sample(list(texts)[1:], rng.randint(2, 5))]:
        out.append(f'{s} {S_DESCRIPTION} "{texts[lang]}"@{lang} .\n')


def _data_node(out: list[str], qid: int, rng: random.Random) -> None:
    """The entity-data node: sitelink count and dump metadata."""
    d = f"{ENTITY_DATA}{qid}>"
    sitelinks = rng.choice((0, 0, 1, 1, 2, 3, 5, 8))
    out.append(f"{d} {S_ABOUT} {ent(qid)} .\n")
    out.append(f'{d} {WB}sitelinks> "{sitelinks}"{XSD_INT} .\n')
    out.append(f'{d} {S_VERSION} "{2_300_000_000 + qid}"{XSD_INT} .\n')
    out.append(f'{d} {S_MODIFIED} "2025-12-{1 + qid % 28:02d}T10:00:00Z"{XSD_DATE} .\n')
    out.append(f'{d} {WB}statements> "{rng.randint(3, 40)}"{XSD_INT} .\n')
    out.append(f'{d} {WB}identifiers> "{rng.randint(0, 20)}"{XSD_INT} .\n')


def _sitelinks(out: list[str], qid: int, name: str, rng: random.Random) -> None:
    title = name.replace(" ", "_")
    for lang in rng.sample(LANGS, rng.choice((0, 0, 1, 1, 2, 3))):
        page = f"<https://{lang}.wikipedia.org/wiki/{title}>"
        out.append(f"{page} {S_ABOUT} {ent(qid)} .\n")
        out.append(f"{page} {S_PART_OF} <https://{lang}.wikipedia.org/> .\n")
        out.append(f'{page} {S_IN_LANGUAGE} "{lang}" .\n')
        out.append(f'{page} {S_NAME} "{name}"@{lang} .\n')


def _identifiers(
    out: list[str], s: str, qid: int, name: str, rng: random.Random
) -> None:
    """Identifier and string claims of a taxon, all dropped by the filter."""
    out.append(f'{s} {WDT}P846> "{qid * 7 % 9_999_991}" .\n')
    out.append(f'{s} {WDT}P685> "{qid % 2_999_999}" .\n')
    out.append(f'{s} {WDT}P10585> "{qid % 46_656:X}Q" .\n')
    if rng.random() < 0.5:
        out.append(f'{s} {WDT}P830> "{qid % 4_999_999}" .\n')
        out.append(f'{s} {WDT}P815> "{qid % 999_999}" .\n')
        out.append(f'{s} {WDT}P3151> "{qid % 1_999_999}" .\n')
    if rng.random() < 0.3:
        out.append(f'{s} {WDT}P373> "{name}" .\n')
        out.append(f'{s} {WDT}P646> "/m/0{qid % 99_991:x}" .\n')
    if rng.random() < 0.1:
        out.append(f'{s} {WDT}P935> "{name}" .\n')
        out.append(f'{s} {WDT}P2671> "/g/11{qid % 999_983:x}" .\n')


def write_taxon(
    out: list[str], qid: int, parents: list[int], rank: int, rng: random.Random
) -> None:
    """Every line the truthy dump holds about one taxon."""
    s = ent(qid)
    name = f"{word(qid // 7).capitalize()} {unique_word(qid)}us"
    langs = (["en"] if rng.random() < 0.95 else []) + rng.sample(
        OTHER_LANGS, rng.randint(1, 6)
    )
    _names(out, s, name, langs, rng)
    _descriptions(out, s, RANKS[rank], rng)
    out.append(f"{s} {WDT}P31> {ent(TAXON_CLASS)} .\n")
    for parent in parents:
        out.append(f"{s} {WDT}P171> {ent(parent)} .\n")
    out.append(f"{s} {WDT}P105> {ent(rank)} .\n")
    out.append(f'{s} {WDT}P225> "{name}" .\n')
    common = word(qid + 11)
    if rng.random() < 0.4:
        out.append(f'{s} {WDT}P1843> "spotted {common}"@en .\n')
    for lang in rng.sample(OTHER_LANGS, rng.choice((0, 1, 2, 3))):
        out.append(f'{s} {WDT}P1843> "{common} ({lang})"@{lang} .\n')
    if rng.random() < 0.3:
        file = name.replace(" ", "%20")
        out.append(f"{s} {WDT}P18> {FILE_PATH}{file}%20{qid % 97}.jpg> .\n")
    _identifiers(out, s, qid, name, rng)
    _data_node(out, qid, rng)
    _sitelinks(out, qid, name, rng)


def write_filler(out: list[str], qid: int, rng: random.Random) -> None:
    """A non-taxon entity: a person, a city, a film or a scholarly article."""
    s = ent(qid)
    cls = rng.choice(list(CLASSES))
    name = f"{word(qid).capitalize()} {unique_word(qid).capitalize()}"
    _names(out, s, name, ["en", *rng.sample(OTHER_LANGS, rng.randint(0, 4))], rng)
    out.append(f'{s} {S_DESCRIPTION} "{CLASSES[cls]} ({qid % 1000})"@en .\n')
    out.append(f"{s} {WDT}P31> {ent(cls)} .\n")
    if cls == 13442814:
        out.append(f'{s} {WDT}P1476> "On {name}"@en .\n')
        out.append(f'{s} {WDT}P356> "10.1000/{qid:x}" .\n')
        out.append(f'{s} {WDT}P577> "20{qid % 25:02d}-01-01T00:00:00Z"{XSD_DATE} .\n')
        for author in range(rng.randint(2, 9)):
            out.append(f'{s} {WDT}P2093> "{word(qid + author).title()} X." .\n')
    else:
        out.append(f"{s} {WDT}P17> {ent(183 + qid % 7)} .\n")
        out.append(f'{s} {WDT}P214> "{qid * 13 % 99_999_989}" .\n')
        out.append(f'{s} {WDT}P646> "/m/0{qid % 99_991:x}" .\n')
    _data_node(out, qid, rng)
    _sitelinks(out, qid, name, rng)


def write_header(out: list[str]) -> None:
    """Dump metadata, then the rank and class entities the harvest names."""
    dump = f"{WB}Dump>"
    out.append(f'{dump} {S_MODIFIED} "{SNAPSHOT}T00:00:00Z"{XSD_DATE} .\n')
    out.append(f"{dump} <http://creativecommons.org/ns#license> ")
    out[-1] += "<http://creativecommons.org/publicdomain/zero/1.0/> .\n"
    out.append(f'{dump} {WB}dumpFormatVersion> "1.0.0" .\n')
    for qid, name in {**RANKS, TAXON_CLASS: "taxon", **CLASSES}.items():
        s = ent(qid)
        out.append(f'{s} {LABEL} "{name}"@en .\n')
        out.append(f'{s} {LABEL} "{name.title()}"@de .\n')
        out.append(f'{s} {S_DESCRIPTION} "level in a taxonomic hierarchy"@en .\n')


def subtree_rank(tree: Subtree, node: int, is_leaf: bool) -> int:
    if is_leaf and tree.depth[node] >= 3:
        return SPECIES
    depth = tree.depth[node]
    return RANK_BY_DEPTH[depth] if depth < len(RANK_BY_DEPTH) else CLADE


@dataclass
class DumpInfo:
    """The cached dump: its files, counts and where the subtree's lines end."""

    plain: str
    gz: str
    lines: int
    plain_bytes: int
    gz_bytes: int
    taxa: int
    root: str
    seconds: float
    subtree_line_ends: list[int] = field(repr=False)


def generate(lines: int, tree: Subtree, sink: DumpSink, seed: int) -> list[int]:
    """Write the dump; returns the line count after each subtree taxon."""
    rng = random.Random(seed + 1)
    write_header(sink.out)
    leaves = set(range(len(tree.qids))) - {p for ups in tree.parents for p in ups}
    ends = []
    for node in range(len(tree.qids)):
        parents = [tree.qids[p] for p in tree.parents[node]]
        rank = subtree_rank(tree, node, node in leaves)
        write_taxon(sink.out, tree.qids[node], parents, rank, rng)
        ends.append(sink.count())
        if len(sink.out) >= FLUSH_LINES:
            sink.flush()
    _write_rest(lines, sink, rng)
    sink.flush()
    return ends


def _write_rest(lines: int, sink: DumpSink, rng: random.Random) -> None:
    """Other taxa (another tree, also with multi-parent taxa) and non-taxa."""
    others: list[int] = []
    qid = OTHER_BASE
    while sink.count() < lines:
        qid += rng.randint(1, 3)
        if rng.random() < 0.5:
            write_filler(sink.out, qid, rng)
        else:
            parents = [rng.choice(others)] if others else []
            if others and rng.random() < MULTI_PARENT_SHARE:
                parents.append(rng.choice(others))
            rank = SPECIES if rng.random() < 0.7 else rng.choice(RANK_BY_DEPTH)
            write_taxon(sink.out, qid, sorted(set(parents)), rank, rng)
            others.append(qid)
        if len(sink.out) >= FLUSH_LINES:
            sink.flush()


def dump_paths(out: Path, lines: int, taxa: int, seed: int) -> tuple[Path, Path, Path]:
    stem = f"truthy-synthetic-{lines}l-{taxa}t-s{seed}-g{GENERATOR_VERSION}"
    return out / f"{stem}.nt", out / f"{stem}.nt.gz", out / f"{stem}.json"


def ensure_dump(out: Path, lines: int, tree: Subtree, seed: int) -> DumpInfo:
    """The cached dump, built first when any of its files is missing."""
    plain, gz, meta = dump_paths(out, lines, len(tree.qids), seed)
    if plain.exists() and gz.exists() and meta.exists():
        return DumpInfo(**json.loads(meta.read_text()))
    print(f"building the synthetic dump {plain.name} (+ .gz) ...", flush=True)
    started = time.perf_counter()
    tmp_plain, tmp_gz = plain.with_suffix(".tmp"), gz.with_suffix(".tmp")
    with tmp_plain.open("wb") as plain_file, tmp_gz.open("wb") as gz_file:
        compressor = subprocess.Popen(
            ["gzip", "-6", "-n", "-c"], stdin=subprocess.PIPE, stdout=gz_file
        )
        if compressor.stdin is None:
            raise RuntimeError("cannot write to gzip")
        sink = DumpSink(plain_file, compressor.stdin)
        ends = generate(lines, tree, sink, seed)
        compressor.stdin.close()
        if compressor.wait() != 0:
            raise RuntimeError("gzip failed while writing the dump")
    tmp_plain.rename(plain)
    tmp_gz.rename(gz)
    info = DumpInfo(
        str(plain),
        str(gz),
        sink.lines,
        plain.stat().st_size,
        gz.stat().st_size,
        len(tree.qids),
        tree.root,
        round(time.perf_counter() - started, 1),
        ends,
    )
    meta.write_text(json.dumps(asdict(info)))
    return info


def ensure_prefix(info: DumpInfo, lines: int) -> Path:
    """The first ``lines`` lines of the plain dump, for the slow reference."""
    path = Path(info.plain).with_suffix(f".first{lines}.nt")
    if not path.exists():
        with Path(info.plain).open("rb") as src, path.open("wb") as dst:
            for count, line in enumerate(src):
                if count >= lines:
                    break
                dst.write(line)
    return path


# --------------------------------------------------------------------------
# Workers: each runs in its own subprocess and returns a JSON-able dict


def timed(action: Callable[[], int], runs: int, alone_over_s: float) -> dict[str, Any]:
    """One warm-up, then ``runs`` timed runs; their median as ``s``.

    ``action`` returns a row count. A warm-up slower than ``alone_over_s`` is
    not repeated: its time is reported alone, marked ``cold``.
    """
    started = time.perf_counter()
    rows = action()
    first = round(time.perf_counter() - started, 4)
    if first > alone_over_s:
        return {"s": first, "runs": [first], "cold": True, "rows": rows}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        rows = action()
        times.append(round(time.perf_counter() - started, 4))
    return {"s": statistics.median(times), "runs": times, "cold": False, "rows": rows}


def work_filter(source: str) -> dict[str, Any]:
    """The ingest filter alone: read and filter, discard the batches."""
    from kg import dumps
    from kg.ingest import IngestConfig

    config = IngestConfig(Path(source), Path("unused"))
    rules = dumps.KeepRules(
        tuple(config.properties), tuple(config.languages), config.sitelinks
    )
    stats = dumps.ReadStats()
    clock = common.Clock()
    _, compression = dumps.detect(Path(source))
    with dumps.open_dump(Path(source), compression) as stream:
        for _batch in dumps.read_ntriples(stream, rules, stats):
            pass
    return {**clock.read(), "lines": stats.lines, "kept": stats.kept}


def work_ingest(source: str, store: str) -> dict[str, Any]:
    """kgclip's ingest into a fresh store."""
    from kg.ingest import IngestConfig, ingest

    clock = common.Clock()
    result = ingest(IngestConfig(Path(source), Path(store)))
    return {**clock.read(), **result.counts()}


def work_harvest(
    store: str, roots: list[str], out_dir: str, runs: int
) -> dict[str, Any]:
    """kgclip's harvest of each root: the whole harvest and its query alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kg.backend import EmbeddedGraph
    from kg.harvest import HarvestConfig, build_queries, harvest

    graph = EmbeddedGraph(Path(store))
    found: dict[str, Any] = {}
    for root in roots:
        config = HarvestConfig(kind="taxa", roots=[root], languages=["en"])
        query = build_queries(config)[0][1]
        last: dict[str, pa.Table] = {}

        def run_harvest(c: HarvestConfig = config, keep: dict = last) -> int:
            keep["table"] = harvest(graph, c, snapshot=SNAPSHOT)
            return int(keep["table"].num_rows)

        def run_query(q: str = query) -> int:
            return graph.select(q).num_rows

        found[root] = {
            "harvest": timed(run_harvest, runs, alone_over_s=60),
            "query": timed(run_query, runs, alone_over_s=60),
        }
        pq.write_table(last["table"], f"{out_dir}/harvest-{root}.parquet")
    graph.close()
    return {"roots": found}


def work_oxigraph_load(source: str, store: str) -> dict[str, Any]:
    """Oxigraph's on-disk bulk load of the whole file, unfiltered."""
    import pyoxigraph

    clock = common.Clock()
    ox = pyoxigraph.Store(store)
    ox.bulk_load(path=source, format=pyoxigraph.RdfFormat.N_TRIPLES)
    ox.flush()
    result: dict[str, Any] = {**clock.read(), "triples": len(ox)}
    result["store_bytes"] = sum(
        f.stat().st_size for f in Path(store).rglob("*") if f.is_file()
    )
    return result


def work_oxigraph_query(store: str, query: str, runs: int) -> dict[str, Any]:
    """One harvest query on the Oxigraph store, every answer row read."""
    import pyoxigraph

    ox = pyoxigraph.Store.read_only(store)

    def run() -> int:
        solutions = ox.query(query)
        if not isinstance(solutions, pyoxigraph.QuerySolutions):
            raise TypeError("the harvest query is a SELECT; Oxigraph says otherwise")
        return sum(1 for _ in solutions)

    return timed(run, runs, alone_over_s=10)


def work_rdflib(source: str, queries: dict[str, str], limit_s: int) -> dict[str, Any]:
    """rdflib's in-memory Graph: parse N-Triples, then each query once."""
    import signal

    import rdflib

    clock = common.Clock()
    graph = rdflib.Graph()
    graph.parse(source, format="nt")
    result: dict[str, Any] = {**clock.read(), "triples": len(graph)}
    result["parse_peak_mb"] = common.peak_mb()

    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError(f"rdflib's query timed out after {limit_s} s")

    signal.signal(signal.SIGALRM, give_up)
    result["queries"] = {}
    for root, query in queries.items():

        def run(q: str = query) -> int:
            return len(list(graph.query(q)))

        signal.alarm(limit_s)
        try:
            answer = timed(run, 0, 0)
        except TimeoutError as error:
            answer = {"error": str(error)}
        finally:
            signal.alarm(0)
        result["queries"][root] = answer
    return result


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "filter": work_filter,
    "ingest": work_ingest,
    "harvest": work_harvest,
    "oxigraph-load": work_oxigraph_load,
    "oxigraph-query": work_oxigraph_query,
    "rdflib": work_rdflib,
}


# --------------------------------------------------------------------------
# Running workers


def run_worker(
    out: Path, name: str, kind: str, timeout_s: float = CHILD_TIMEOUT_S, **kwargs: Any
) -> dict[str, Any]:
    """Run one worker of this file in a subprocess (see ``common.run_worker``)."""
    return common.run_worker(__file__, out, name, kind, timeout_s=timeout_s, **kwargs)


def fresh(path: Path) -> Path:
    """An empty path: the folder is removed if it exists."""
    if path.exists():
        shutil.rmtree(path)
    return path


# --------------------------------------------------------------------------
# The benchmark steps


@dataclass
class Figures:
    """Everything measured, for the table and the JSON file."""

    machine: dict[str, Any]
    dump: dict[str, Any]
    filter: dict[str, Any] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    harvest: dict[str, Any] = field(default_factory=dict)
    oxigraph: dict[str, Any] = field(default_factory=dict)
    rdflib: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    goals: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    import duckdb
    import pyoxigraph
    import rdflib

    return {
        **common.machine_info("kg"),
        "kg_digest": kg_digest(),
        "duckdb": duckdb.__version__,
        "pyoxigraph": pyoxigraph.__version__,
        "rdflib": rdflib.__version__,
    }


def kg_digest() -> str:
    """A digest of kgclip's ``kg`` sources, to tell if they changed mid-run."""
    import hashlib

    import kg

    digest = hashlib.sha256()
    folder = Path(kg.__file__).parent
    for path in sorted([*folder.rglob("*.py"), *folder.rglob("*.rq")]):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def step_load(out: Path, info: DumpInfo, figures: Figures, repeat: int) -> None:
    """The filter alone, then the ingest, of the plain and the gzip file.

    Each runs ``repeat`` times; the run with the median CPU time (filter) or
    wall time (ingest) is reported, every run is kept under ``runs``.
    """
    for label, source in (("nt", info.plain), ("gz", info.gz)):
        runs = [
            run_worker(out, f"filter-{label}-{i}", "filter", source=source)
            for i in range(repeat)
        ]
        figures.filter[label] = median_run(runs, "cpu_s")
        runs = [
            run_worker(
                out, f"ingest-{label}-{i}", "ingest", source=source,
                store=str(fresh(out / f"store-{label}")),
            )
            for i in range(repeat)
        ]  # fmt: skip
        figures.ingest[label] = median_run(runs, "wall_s")


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (the lower one of an even count)."""
    done = sorted((r for r in runs if r["error"] is None), key=lambda r: r[key])
    chosen = done[(len(done) - 1) // 2] if done else runs[-1]
    summary = ("wall_s", "cpu_s", "peak_mb", "error")
    return {
        **chosen,
        "peak_mb": max(r["peak_mb"] for r in runs),  # the highest of all runs
        "runs": [{k: r.get(k) for k in summary} for r in runs],
    }


def step_references(
    out: Path,
    info: DumpInfo,
    tree: Subtree,
    args: argparse.Namespace,
    figures: Figures,
) -> tuple[str, int] | None:
    """Oxigraph on the whole file, rdflib on a prefix; returns the small root.

    The small root's whole subtree lies in the prefix rdflib loads, so every
    system answers its query from the same triples. Without ``kg.harvest``
    (a module of kgclip missing) only the loads run.
    """
    complete = bisect.bisect_right(info.subtree_line_ends, args.reference_lines)
    small = small_root(tree, complete, args.reference_taxa)
    roots = [tree.root] + ([small[0]] if small else [])
    queries = harvest_queries(roots)
    store = fresh(out / "store-oxigraph")
    ox: dict[str, Any] = {"queries": {}}
    ox["load"] = run_worker(
        out, "oxigraph-load", "oxigraph-load", source=info.plain, store=str(store)
    )
    for root, query in queries.items() if ox["load"]["error"] is None else ():
        ox["queries"][root] = run_worker(
            out, f"oxigraph-query-{root}", "oxigraph-query",
            timeout_s=args.reference_query_limit, store=str(store), query=query,
            runs=args.runs,
        )  # fmt: skip
    shutil.rmtree(store, ignore_errors=True)
    prefix = ensure_prefix(info, args.reference_lines)
    rdflib_queries = {r: q for r, q in queries.items() if small and r == small[0]}
    rd = run_worker(
        out, "rdflib", "rdflib", source=str(prefix), queries=rdflib_queries,
        limit_s=args.reference_query_limit,
    )  # fmt: skip
    rd["lines"] = min(args.reference_lines, info.lines)
    figures.oxigraph, figures.rdflib = ox, rd
    return small


def harvest_queries(roots: list[str]) -> dict[str, str]:
    """The filled harvest SPARQL of each root; empty without ``kg.harvest``."""
    if harvest_available() is not None:
        return {}
    from kg.harvest import HarvestConfig, build_queries

    configs = {
        r: HarvestConfig(kind="taxa", roots=[r], languages=["en"]) for r in roots
    }
    return {root: build_queries(c)[0][1] for root, c in configs.items()}


def step_harvest(out: Path, roots: list[str], runs: int, figures: Figures) -> None:
    figures.harvest = run_worker(
        out, "harvest", "harvest", store=str(out / "store-nt"), roots=roots,
        out_dir=str(out), runs=runs,
    )  # fmt: skip


def check_lineages(out: Path, tree: Subtree, figures: Figures) -> None:
    """Compare the harvest's entities and lineages with the generator's tree."""
    import pyarrow.parquet as pq

    table = pq.read_table(out / f"harvest-{tree.root}.parquet")
    got = dict(zip(table["qid"].to_pylist(), table["lineage"].to_pylist(), strict=True))
    documented = expected_lineages(tree, "lowest-qid-parent")
    reached = expected_lineages(tree, "first-reached")
    deep = deep_taxon(tree, documented)
    wrong = sorted(q for q in documented if got.get(q) != documented[q])
    figures.checks.update(
        entities=len(got),
        entities_expected=len(tree.qids),
        entities_ok=len(got) == len(tree.qids) and set(got) == set(documented),
        deep_taxon=deep,
        deep_depth=len(documented[deep]) - 1,
        deep_expected=documented[deep],
        deep_got=got.get(deep),
        deep_ok=got.get(deep) == documented[deep],
        lineages_wrong=len(wrong),
        lineages_wrong_first_reached_rule=sum(
            got.get(q) != reached[q] for q in reached
        ),
        lineages_wrong_examples={
            q: {"expected": documented[q], "got": got.get(q)} for q in wrong[:3]
        },
    )


# --------------------------------------------------------------------------
# Report


def dig(data: dict[str, Any], *keys: str) -> Any:
    """``data[k1][k2]...``, or None where a key is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


HEADERS = ["", "kgclip .nt", "kgclip .nt.gz", "Oxigraph", "rdflib", "goal", "result"]


def load_rows(f: Figures) -> list[Row]:
    """Loading: the filter, the ingest, and the reference tools' loads."""
    nt, gz = f.ingest.get("nt", {}), f.ingest.get("gz", {})
    ox, rd = dig(f.oxigraph, "load") or {}, f.rdflib
    rd_lines = rd.get("lines")
    filter_rate = rate(dig(f.filter, "nt", "lines"), dig(f.filter, "nt", "cpu_s"))
    # The load goal is the store's: kept triples per second spent writing them
    # (staging and the final merge); the filter has its own goal above.
    kept = [rate(d.get("kept"), d.get("store_s")) for d in (nt, gz)]
    kept_wall = [rate(d.get("kept"), d.get("wall_s")) for d in (nt, gz)]
    peaks = [d["peak_mb"] for d in (nt, gz, f.harvest) if d.get("peak_mb")]
    f.goals["filter"] = filter_rate is not None and filter_rate >= GOAL_FILTER
    f.goals["kept"] = all(k is not None and k >= GOAL_KEPT_PER_S for k in kept)
    f.goals["memory"] = len(peaks) == 3 and max(peaks) < GOAL_PEAK_MB
    mb = 2**20

    counted = [(nt, nt.get("lines")), (gz, gz.get("lines"))]
    counted += [(ox, ox.get("triples")), (rd, rd_lines)]

    def per(seconds: str) -> list[str]:
        return [fmt(rate(count, d.get(seconds))) for d, count in counted]

    return [
        ["input", f"{f.dump['lines']:,} lines, {f.dump['plain_bytes'] / mb:,.0f} MB",
         f"same, gzip {f.dump['gz_bytes'] / mb:,.0f} MB", "same .nt, unfiltered",
         f"first {rd_lines:,} lines" if rd_lines else "–", "", ""],
        ["load wall s", *(fmt(d.get("wall_s"), 1) for d in (nt, gz, ox, rd)), "", ""],
        ["load: dump lines/s", *per("wall_s"), "", ""],
        ["load: lines per CPU-s", *per("cpu_s"), "", ""],
        ["filter alone: lines per CPU-s", fmt(filter_rate),
         fmt(rate(dig(f.filter, "gz", "lines"), dig(f.filter, "gz", "cpu_s"))),
         "–", "–", f"≥ {GOAL_FILTER:,} (.nt)", verdict(f.goals["filter"])],
        ["triples kept (loaded)", fmt(nt.get("kept")), fmt(gz.get("kept")),
         fmt(ox.get("triples")), fmt(rd.get("triples")), "", ""],
        ["kept triples per wall s", fmt(kept_wall[0]), fmt(kept_wall[1]), "–", "–",
         "", ""],
        ["store load: kept triples/s", fmt(kept[0]), fmt(kept[1]), "–", "–",
         f"≥ {GOAL_KEPT_PER_S:,}", verdict(f.goals["kept"])],
        ["load peak RSS MB", *(fmt(d.get("peak_mb")) for d in (nt, gz, ox, rd)),
         f"< {GOAL_PEAK_MB:,} (kgclip)", verdict(f.goals["memory"])],
        ["store MB", *(fmt(rate(d.get("store_bytes"), mb), 1) for d in (nt, gz, ox)),
         "in memory", "", ""],
    ]  # fmt: skip


def seconds_cell(timing: dict[str, Any] | None) -> str:
    """A median time, or the error, or how it was cut short."""
    if not timing:
        return "–"
    if timing.get("error"):
        return "timeout" if "timed out" in timing["error"] else "error"
    if timing.get("cold"):
        return f"{timing['s']:,.3f} (1 run)"
    return f"{timing['s']:,.3f}"


def harvest_rows(f: Figures, taxa: int, small: tuple[str, int] | None) -> list[Row]:
    """The harvest of the whole subtree, its checks, and the small harvest."""
    root = f.dump["root"]
    mine = dig(f.harvest, "roots", root) or {}
    ox = dig(f.oxigraph, "queries", root)
    checks = f.checks
    seconds = dig(mine, "harvest", "s")
    f.goals["harvest"] = None if seconds is None else seconds < GOAL_HARVEST_S
    f.goals["entities"] = checks.get("entities_ok")
    f.goals["lineage"] = checks.get("deep_ok")
    deep = f"lineage of {checks.get('deep_taxon', '?')}"
    deep_cell = "–"
    if "deep_ok" in checks:
        deep_cell = "correct" if checks["deep_ok"] else "WRONG"
    rows: list[Row] = [
        [f"harvest {taxa:,} taxa s (median)", seconds_cell(mine.get("harvest")),
         "", "", "not run (too slow)", f"< {GOAL_HARVEST_S:g}",
         verdict(f.goals["harvest"])],
        ["  its query alone s", seconds_cell(mine.get("query")), "",
         seconds_cell(ox), "", "", ""],
        ["  fact rows", fmt(dig(mine, "query", "rows")), "", fmt(dig(ox, "rows")),
         "", "", ""],
        ["  entities", fmt(checks.get("entities")), "", "", "", f"= {taxa:,}",
         verdict(f.goals["entities"], "FAIL")],
        [f"  {deep} (depth {checks.get('deep_depth', '?')})",
         deep_cell, "", "", "", "= generator's", verdict(f.goals["lineage"], "FAIL")],
        ["  lineages ≠ documented rule", fmt(checks.get("lineages_wrong")), "", "",
         "", "0", verdict(_zero(checks.get("lineages_wrong")), "FAIL")],
        ["harvest peak RSS MB", fmt(f.harvest.get("peak_mb")), "",
         fmt(dig(ox, "peak_mb")), "", f"< {GOAL_PEAK_MB:,}", ""],
    ]  # fmt: skip
    return rows + (small_rows(f, small) if small else [])


def _zero(count: int | None) -> bool | None:
    return None if count is None else count == 0


def small_rows(f: Figures, small: tuple[str, int]) -> list[Row]:
    root, size = small
    mine = dig(f.harvest, "roots", root) or {}
    ox, rd = dig(f.oxigraph, "queries", root), dig(f.rdflib, "queries", root)
    return [
        [f"small harvest {root} ({size:,} taxa) s", seconds_cell(mine.get("harvest")),
         "", "", "", "", ""],
        ["  its query alone s", seconds_cell(mine.get("query")), "",
         seconds_cell(ox), seconds_cell(rd), "", ""],
        ["  fact rows", fmt(dig(mine, "query", "rows")), "", fmt(dig(ox, "rows")),
         fmt(dig(rd, "rows")), "", ""],
    ]  # fmt: skip


def title(f: Figures) -> str:
    m = f.machine
    return (
        f"{m['date']}, kgclip {m['commit']}, {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gb']} GB RAM; "
        f"Python {m['python']}, duckdb {m['duckdb']}, pyoxigraph {m['pyoxigraph']}, "
        f"rdflib {m['rdflib']}"
    )


def problems_of(f: Figures) -> list[str]:
    """What makes the run wrong, not merely slow."""
    problems = [
        f"{step} {label}: {found['error']}"
        for step in ("filter", "ingest")
        for label, found in getattr(f, step).items()
        if found.get("error")
    ]
    checks = f.checks
    if not checks:
        problems.append(f"the harvest did not run: {f.harvest.get('error')}")
        return problems
    if not checks["entities_ok"]:
        problems.append(
            f"harvest gave {checks['entities']} entities, expected "
            f"{checks['entities_expected']}"
        )
    if checks["lineages_wrong"]:
        problems.append(
            f"{checks['lineages_wrong']} lineages (deep taxon: "
            f"{'right' if checks['deep_ok'] else 'WRONG'}) differ from the rule "
            "documented in kg/harvest.py (lowest-QID parent among equally short "
            f"chains); by first-reached-in-BFS order "
            f"{checks['lineages_wrong_first_reached_rule']} differ; e.g. "
            f"{next(iter(checks['lineages_wrong_examples'].items()))}"
        )
    return problems + _row_mismatches(f)


def _row_mismatches(f: Figures) -> list[str]:
    found = []
    for root, mine in (dig(f.harvest, "roots") or {}).items():
        rows = dig(mine, "query", "rows")
        for name in ("oxigraph", "rdflib"):
            other = dig(getattr(f, name), "queries", root, "rows")
            if other is not None and other != rows:
                found.append(f"{root}: kgclip gave {rows} fact rows, {name} {other}")
    return found


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(
        "Benchmark kgclip's ingest and harvest against rdflib and Oxigraph on a "
        "synthetic truthy Wikidata dump.",
        worker=True,
    )
    add = parser.add_argument
    add("--lines", type=int, default=10_000_000, help="dump lines (at least)")
    add("--taxa", type=int, default=100_000, help="taxa of the harvested subtree")
    add("--seed", type=int, default=42, help="seed of the synthetic dump")
    add("--runs", type=int, default=3, help="timed harvest runs after a warm-up")
    add("--repeat", type=int, default=3, help="runs of each filter and ingest")
    add("--reference-lines", type=int, default=1_000_000,
        help="lines of the dump that rdflib parses")  # fmt: skip
    add("--reference-taxa", type=int, default=25,
        help="most taxa of the small harvest that rdflib runs too")  # fmt: skip
    add("--reference-query-limit", type=int, default=180,
        help="seconds after which a reference query is given up")  # fmt: skip
    add("--skip-reference", action="store_true", help="skip rdflib and Oxigraph")
    return parser.parse_args(argv)


def harvest_available() -> str | None:
    """None when the harvest can run; else why not (a module still missing)."""
    try:
        importlib.import_module("kg.harvest")  # imports kg.backend, kg.sparql_sql
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        common.worker_main(WORKERS, *args.worker)
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tree = build_subtree(args.taxa, args.seed)
    info = ensure_dump(out, args.lines, tree, args.seed)
    if info.root != tree.root:
        raise RuntimeError(f"cached dump has root {info.root}, the tree {tree.root}")
    dump = {k: v for k, v in asdict(info).items() if k != "subtree_line_ends"}
    figures = Figures(machine_info(), dump)
    print(
        f"dump: {info.lines:,} lines, subtree root {info.root} ({info.taxa:,} taxa), "
        f"built in {info.seconds} s",
        flush=True,
    )
    step_load(out, info, figures, args.repeat)
    small = None
    if not args.skip_reference:
        small = step_references(out, info, tree, args, figures)
    missing = harvest_available()
    if missing is None:
        step_harvest(
            out, [tree.root] + ([small[0]] if small else []), args.runs, figures
        )
        if figures.harvest["error"] is None:
            check_lineages(out, tree, figures)
    else:
        figures.harvest = {"error": f"harvest not available: {missing}"}
        print(f"  kgclip's harvest skipped: {missing}", flush=True)
    return report(out, figures, args.taxa, small)


def report(
    out: Path, figures: Figures, taxa: int, small: tuple[str, int] | None
) -> int:
    """Print the table, write the JSON and Markdown files; 1 on a failed check."""
    rows = load_rows(figures) + harvest_rows(figures, taxa, small)
    caption = f"kgclip KG benchmark: {title(figures)}"
    common.print_table(caption, HEADERS, rows, no_wrap=True)
    problems = problems_of(figures)
    figures.checks["problems"] = problems
    figures.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if kg_digest() != figures.machine["kg_digest"]:
        problems.append("kgclip's kg/ sources changed during the run; run it again")
    text = f"{title(figures)}\n\n" + common.markdown_table(HEADERS, rows)
    return common.write_figures(out, "bench_kg", asdict(figures), text, problems)


if __name__ == "__main__":
    sys.exit(main())
