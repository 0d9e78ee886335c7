"""The rows the crawl writes: queries, results and downloads, as Arrow schemas."""

from __future__ import annotations

import pyarrow as pa

# One row per distinct query text and engine; ``entities`` lists every entity
# that asked for it (identical queries are made once).
QUERIES_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),  # stable hash of (engine, language, text)
        ("text", pa.string()),
        ("engine", pa.string()),
        ("language", pa.string()),
        ("template", pa.string()),  # the template that made it first
        ("entities", pa.list_(pa.string())),  # QIDs that asked for it
        ("results_wanted", pa.int32()),
        ("excluded_terms", pa.list_(pa.string())),
    ]
)

# One row per search result.
RESULTS_SCHEMA = pa.schema(
    [
        ("result_id", pa.string()),  # stable hash of (query_id, image_url)
        ("query_id", pa.string()),
        ("engine", pa.string()),
        ("query", pa.string()),
        ("rank", pa.int32()),  # 1-based position in the engine's answer
        ("image_url", pa.string()),
        ("page_url", pa.string()),
        ("title", pa.string()),  # title, alt text or file description
        ("thumbnail_url", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("license", pa.string()),
        ("author", pa.string()),
        ("fetched", pa.string()),  # ISO time of the answer
    ]
)

# One row per distinct image URL fetched.
DOWNLOADS_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("final_url", pa.string()),
        ("status", pa.int32()),  # HTTP status, 0 when none came
        ("error", pa.string()),  # None when the image was stored
        ("attempts", pa.int32()),
        ("content_type", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("warc_file", pa.string()),
        ("warc_offset", pa.int64()),
        ("fetched", pa.string()),
    ]
)

# One row per (query, engine) search attempt: how it went. A query with a row
# of status ``ok`` or ``empty`` is not searched again on a rerun.
SEARCHES_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("engine", pa.string()),
        ("query", pa.string()),
        ("status", pa.string()),  # ok | empty | blocked | error
        ("error", pa.string()),
        ("num_results", pa.int32()),
        ("url", pa.string()),  # the results page or API URL asked
        ("warc_file", pa.string()),
        ("warc_offset", pa.int64()),
        ("fetched", pa.string()),
    ]
)
