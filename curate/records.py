"""The rows curation writes: images, pairs and shards, as Arrow schemas.

An image is identified by the sha256 of its bytes (``image_id``). Near
duplicates are kept once: the others point at the kept one through
``duplicate_of``. A pair is one kept image with one entity it shows, with the
texts that may caption it; the export turns pairs into webdataset samples.
"""

from __future__ import annotations

import pyarrow as pa

# One row per distinct image (by sha256) that the crawl stored.
IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # sha256 hex of the bytes as downloaded
        ("url", pa.string()),  # the first URL that gave these bytes
        ("warc_file", pa.string()),
        ("warc_offset", pa.int64()),
        ("bytes", pa.int64()),
        ("format", pa.string()),  # JPEG, PNG, WEBP, ... as Pillow names it
        ("mode", pa.string()),  # the decoded mode before conversion to RGB
        ("width", pa.int32()),  # after EXIF orientation
        ("height", pa.int32()),
        ("phash", pa.uint64()),  # 64-bit perceptual hash
        # ok | rejected | duplicate | contaminated
        ("status", pa.string()),
        ("reason", pa.string()),  # why not ok: decode_error, too_small, ...
        ("duplicate_of", pa.string()),  # the kept image of its near-duplicate group
    ]
)

TEXT = pa.struct([("source", pa.string()), ("text", pa.string())])
SOURCE = pa.struct(
    [
        ("url", pa.string()),
        ("page_url", pa.string()),
        ("license", pa.string()),
        ("author", pa.string()),
        ("engine", pa.string()),
        ("query", pa.string()),
        ("rank", pa.int32()),
    ]
)

# One row per kept image and entity it is labelled with.
PAIRS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("qid", pa.string()),
        ("root", pa.string()),
        ("kind", pa.string()),  # class | instance | taxon
        ("label", pa.string()),
        ("lineage", pa.list_(pa.string())),  # QIDs root .. entity
        ("rank", pa.string()),
        # texts from the web (alt text, title) and from the knowledge graph,
        # kept apart so that training chooses the mix
        ("web_texts", pa.list_(TEXT)),
        ("kg_texts", pa.list_(TEXT)),
        ("caption", pa.string()),  # the default caption (the .txt of a sample)
        ("sources", pa.list_(SOURCE)),  # every result that found the image
        ("split", pa.string()),  # train | val | test
    ]
)

# One row per written shard.
SHARDS_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("path", pa.string()),  # relative to the run directory
        ("num_samples", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)
