"""Reject rows: every record a stage does not pass on is written here with a reason."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import pyarrow as pa

REJECT_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)


class Reason(StrEnum):
    """The fixed vocabulary of reject reasons; stats and reports group by these."""

    # schema / parsing
    INVALID_RECORD = "invalid_record"
    MALFORMED_ROW = "malformed_row"
    UNDECODABLE_TEXT = "undecodable_text"
    # ingest
    NO_IMAGE = "no_image"
    NOT_STILL_IMAGE = "not_still_image"
    MATERIAL_CITATION = "material_citation"
    NOT_RESEARCH_GRADE = "not_research_grade"
    NOT_VALIDATED = "not_validated"
    BAD_COORDINATES = "bad_coordinates"
    UNKNOWN_LICENSE = "unknown_license"
    ORPHAN_MEDIA = "orphan_media"
    CORRUPT_IMAGE = "corrupt_image"
    TRUNCATED_ROI = "truncated_roi"
    # resolve
    UNRESOLVED = "unresolved"
    AMBIGUOUS_HOMONYM = "ambiguous_homonym"
    # curate
    LICENSE_POLICY = "license_policy"
    BASIS_OF_RECORD = "basis_of_record"
    LINEAGE_DEPTH = "lineage_depth"
    NON_LIVING = "non_living"
    ANNOTATION_STATUS = "annotation_status"
    IMAGE_TYPE = "image_type"
    IMAGE_TOO_SMALL = "image_too_small"
    DUPLICATE_RECORD = "duplicate_record"
    DUPLICATE_PHOTO = "duplicate_photo"
    DUPLICATE_BYTES = "duplicate_bytes"
    NEAR_DUPLICATE = "near_duplicate"
    EVAL_CONTAMINATION = "eval_contamination"
    RARE_TAXON = "rare_taxon"
    TAXON_CAP = "taxon_cap"
    # download
    DOWNLOAD_FAILED = "download_failed"


def make_rejects(
    record_ids: Sequence[str],
    stage: str,
    reason: str | Sequence[str],
    detail: str | None | Sequence[str | None] = None,
) -> pa.Table:
    """Build a reject table; scalar ``reason``/``detail`` apply to every row."""
    n = len(record_ids)
    reasons = [str(reason)] * n if isinstance(reason, str) else [str(r) for r in reason]
    details = [detail] * n if detail is None or isinstance(detail, str) else list(detail)
    if not (len(reasons) == len(details) == n):
        raise ValueError("record_ids, reason and detail must have the same length")
    return pa.table(
        {"record_id": list(record_ids), "stage": [stage] * n, "reason": reasons, "detail": details},
        schema=REJECT_SCHEMA,
    )


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()
