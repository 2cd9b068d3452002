"""The per-image download status: the fixed failure vocabulary and the sidecar Parquet schema."""

from __future__ import annotations

import pyarrow as pa

OK = "ok"
FAILED = "failed"

# The fixed vocabulary of download failure reasons; stats and the sidecar group by these, so a
# new kind of failure gets a constant here rather than a free-text message per URL.
HTTP_404 = "http_404"
HTTP_4XX = "http_4xx"
HTTP_5XX = "http_5xx"
HTTP_429_EXHAUSTED = "http_429_exhausted"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
HOST_UNRESOLVED = "host_unresolved"  # the host name does not resolve (DNS), tried and given up on
BODY_TRUNCATED = "body_truncated"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED_IMAGE = "truncated_image"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_LARGE = "too_large"
ROBOTS_NOAI = "robots_noai"
PRIVATE_ADDRESS = "private_address"
TOO_MANY_REDIRECTS = "too_many_redirects"
DECODE_ERROR = "decode_error"
LOCAL_MISSING = "local_missing"
INVALID_URL = "invalid_url"
DUPLICATE_KEY = "duplicate_key"

REASONS: tuple[str, ...] = (
    HTTP_404,
    HTTP_4XX,
    HTTP_5XX,
    HTTP_429_EXHAUSTED,
    TIMEOUT,
    CONNECTION_ERROR,
    HOST_UNRESOLVED,
    BODY_TRUNCATED,
    NOT_AN_IMAGE,
    TRUNCATED_IMAGE,
    DECOMPRESSION_BOMB,
    TOO_LARGE,
    ROBOTS_NOAI,
    PRIVATE_ADDRESS,
    TOO_MANY_REDIRECTS,
    DECODE_ERROR,
    LOCAL_MISSING,
    INVALID_URL,
    DUPLICATE_KEY,
)

# One row per attempted image, in the shard's sidecar ``{split}-{n:06d}.parquet``.
STATUS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("host", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("sha256", pa.string()),
        pa.field("phash", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("stored_width", pa.int32()),
        pa.field("stored_height", pa.int32()),
        pa.field("bytes", pa.int64()),
        pa.field("stored_bytes", pa.int64()),
        pa.field("format", pa.string()),
    ]
)

STATUS_COLUMNS: tuple[str, ...] = tuple(STATUS_SCHEMA.names)


def status_table(rows: list[dict]) -> pa.Table:
    """Build a sidecar table from status dicts (missing fields are null), rows sorted by key."""
    rows = sorted(rows, key=lambda r: r["key"])
    return pa.table({name: [r.get(name) for r in rows] for name in STATUS_COLUMNS}, schema=STATUS_SCHEMA)


def check_reason(reason: str | None) -> str | None:
    """Return ``reason`` unchanged, or raise if it is not in the fixed vocabulary (a bug)."""
    if reason is not None and reason not in REASONS:
        raise ValueError(f"download reason {reason!r} is not in shards.status.REASONS")
    return reason
