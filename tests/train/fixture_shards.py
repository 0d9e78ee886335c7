"""Webdataset shards of real photos, in the layout the export stage writes.

``write_flower_shards`` takes the flowers5 folder (``CLASS/*.jpg``, 128x128
Flickr photos) and writes ``OUT/{train,val,test}/NNNNNN.tar`` as
``curate/export.py`` does: each sample (key: 16 hex digits of the image id,
``_``, the QID) holds the photo's bytes as ``.jpg``, the default caption as
``.txt`` and a ``.json`` with the keys of an exported pair (image_id, qid,
root, kind, label, lineage, rank, split, caption, web_texts, kg_texts,
sources and the first source's url, license, ... at the top level).

The taxonomy is real (daisy is Bellis perennis, family Asteraceae, ...), but
the QIDs are stand-ins numbered from Q90000001, not Wikidata's, so that no
wrong claim about Wikidata is written down. Splits are drawn per class with a
fixed seed: a file is in exactly one split.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Taxon:
    qid: str
    label: str
    rank: str
    parent: str | None
    scientific_name: str | None = None


# Magnoliopsida > order > family > genus (> species): stand-in QIDs, real names.
TAXA = [
    Taxon("Q90000001", "Magnoliopsida", "class", None, "Magnoliopsida"),
    Taxon("Q90000002", "Asterales", "order", "Q90000001", "Asterales"),
    Taxon("Q90000003", "Asteraceae", "family", "Q90000002", "Asteraceae"),
    Taxon("Q90000004", "Bellis", "genus", "Q90000003", "Bellis"),
    Taxon("Q90000005", "daisy", "species", "Q90000004", "Bellis perennis"),
    Taxon("Q90000006", "Taraxacum", "genus", "Q90000003", "Taraxacum"),
    Taxon("Q90000007", "dandelion", "species", "Q90000006", "Taraxacum officinale"),
    Taxon("Q90000008", "Helianthus", "genus", "Q90000003", "Helianthus"),
    Taxon("Q90000009", "sunflower", "species", "Q90000008", "Helianthus annuus"),
    Taxon("Q90000010", "Rosales", "order", "Q90000001", "Rosales"),
    Taxon("Q90000011", "Rosaceae", "family", "Q90000010", "Rosaceae"),
    Taxon("Q90000012", "rose", "genus", "Q90000011", "Rosa"),
    Taxon("Q90000013", "Liliales", "order", "Q90000001", "Liliales"),
    Taxon("Q90000014", "Liliaceae", "family", "Q90000013", "Liliaceae"),
    Taxon("Q90000015", "tulip", "genus", "Q90000014", "Tulipa"),
]
BY_QID = {taxon.qid: taxon for taxon in TAXA}
FOLDERS = {  # flowers5 folder -> the taxon its photos show
    "daisy": "Q90000005",
    "dandelion": "Q90000007",
    "rose": "Q90000012",
    "sunflower": "Q90000009",
    "tulip": "Q90000015",
}
COMMON_NAMES = {
    "daisy": "common daisy",
    "dandelion": "common dandelion",
    "rose": "rose",
    "sunflower": "common sunflower",
    "tulip": "tulip",
}


def lineage(qid: str) -> list[str]:
    """QIDs root .. ``qid``."""
    chain = [qid]
    while (parent := BY_QID[chain[-1]].parent) is not None:
        chain.append(parent)
    return chain[::-1]


def ranks() -> dict[str, str]:
    """QID -> rank of every taxon of the fixture."""
    return {taxon.qid: taxon.rank for taxon in TAXA}


def write_entities(run_dir: Path) -> Path:
    """DIR/entities.parquet with the qid and rank of every taxon, as harvested."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "qid": [taxon.qid for taxon in TAXA],
            "label": [taxon.label for taxon in TAXA],
            "rank": [taxon.rank for taxon in TAXA],
            "lineage": [lineage(taxon.qid) for taxon in TAXA],
        }
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, run_dir / "entities.parquet")
    return run_dir / "entities.parquet"


def taxonomic_string(qid: str) -> str:
    """The names from the root down, a species' genus not repeated (as BioCLIP)."""
    parts: list[str] = []
    previous = ""
    for member in lineage(qid):
        name = BY_QID[member].scientific_name or BY_QID[member].label
        if previous and name.startswith(previous + " "):
            parts.append(name[len(previous) + 1 :])
        else:
            parts.append(name)
        previous = name
    return " ".join(parts)


def sample_meta(folder: str, path: Path, data: bytes, split: str = "train") -> dict:
    """The JSON of one sample, with the keys the export writes."""
    taxon = BY_QID[FOLDERS[folder]]
    image_id = hashlib.sha256(data).hexdigest()
    web = [
        {"source": "local", "text": f"a photo of a {taxon.label}"},
        {"source": "local", "text": f"{taxon.label} in bloom"},
    ]
    source = {
        "url": f"file:///flowers5/{folder}/{path.name}",
        "page_url": None,
        "license": "CC BY 2.0",
        "author": None,
        "engine": "local",
        "query": taxon.label,
        "rank": 1,
    }
    return {
        "key": f"{image_id[:16]}_{taxon.qid}",
        "image_id": image_id,
        "qid": taxon.qid,
        "root": TAXA[0].qid,
        "kind": "taxon",
        "label": taxon.label,
        "lineage": lineage(taxon.qid),
        "rank": taxon.rank,
        "split": split,
        "caption": web[0]["text"],
        "web_texts": web,
        "kg_texts": [
            {"source": "label", "text": taxon.label},
            {"source": "label_description", "text": f"{taxon.label}, flowering plant"},
            {"source": "common_name:en", "text": COMMON_NAMES[folder]},
            {"source": "scientific_name", "text": taxon.scientific_name},
            {"source": "taxonomic", "text": taxonomic_string(taxon.qid)},
        ],
        "sources": [source],
        **{k: source[k] for k in ("url", "page_url", "license", "author", "engine")},
        "query": source["query"],
    }


def write_flower_shards(
    images: Path,
    out: Path,
    per_class: int | None = None,
    splits: Mapping[str, float] | None = None,
    samples_per_shard: int = 100,
    seed: int = 0,
) -> dict[str, int]:
    """Write shards of ``per_class`` photos per class (None: all); return counts.

    ``splits`` gives each split's share of a class's photos (default
    train 0.6, val 0.2, test 0.2); rounding goes to the first split.
    """
    shares = dict(splits or {"train": 0.6, "val": 0.2, "test": 0.2})
    assigned: dict[str, list[tuple[str, Path]]] = {name: [] for name in shares}
    for folder in sorted(FOLDERS):
        files = sorted((images / folder).glob("*.jpg"))
        random.Random(f"{seed}:{folder}").shuffle(files)
        files = files[:per_class] if per_class else files
        counts = [round(len(files) * share) for share in shares.values()]
        counts[0] = len(files) - sum(counts[1:])
        start = 0
        for name, count in zip(shares, counts, strict=True):
            assigned[name] += [(folder, path) for path in files[start : start + count]]
            start += count

    for name, members in assigned.items():
        random.Random(f"{seed}:{name}").shuffle(members)
        _write_split(out / name, name, members, samples_per_shard)
    return {name: len(members) for name, members in assigned.items()}


def _write_split(
    folder: Path, split: str, members: list[tuple[str, Path]], samples_per_shard: int
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(members), samples_per_shard)):
        shard = folder / f"{number:06d}.tar"
        with tarfile.open(shard, "w") as tar:
            for name, path in members[start : start + samples_per_shard]:
                data = path.read_bytes()
                meta = sample_meta(name, path, data, split)
                key = meta["key"]
                _add(tar, f"{key}.jpg", data)
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
                _add(tar, f"{key}.txt", meta["caption"].encode())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same files give the same shard bytes
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
