"""The one record definition and everything derived from it (Arrow schema, validation, rejects)."""

from schemas import memory as _memory  # noqa: F401  (first: sets the allocator before pyarrow loads)
from schemas.record import (
    RANKS,
    RECORD_SCHEMA,
    SCHEMA_VERSION,
    Record,
    conform,
    empty_records,
    make_record_id,
)
from schemas.rejects import REJECT_SCHEMA, Reason, empty_rejects, make_rejects

__all__ = [
    "RANKS",
    "RECORD_SCHEMA",
    "REJECT_SCHEMA",
    "SCHEMA_VERSION",
    "Reason",
    "Record",
    "conform",
    "empty_records",
    "empty_rejects",
    "make_record_id",
    "make_rejects",
]
