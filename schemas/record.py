"""The biocorpus record: defined once here; the Arrow schema and validation are derived from it.

Field names are Darwin Core terms in snake_case (``decimal_latitude`` for ``decimalLatitude``);
the DwC term, where one exists, is kept in each field's metadata (``dwc``) for exports.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from schemas.hashing import hash_string, hash_strings, hex_strings

SCHEMA_VERSION = "1.1.0"  # 1.1: record ids hashed by schemas.hashing (was blake2b)

RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
MATCH_TYPES: tuple[str, ...] = ("exact", "synonym", "fuzzy", "higher_rank", "non_living", "none")


def _f(dwc: str | None = None, required: bool = False, **kw):
    extra = {"required": required}
    if dwc:
        extra["dwc"] = dwc
    return Field(default=None, json_schema_extra=extra, **kw)


class Record(BaseModel):
    """One image with its occurrence, taxon and context. ``None`` means unknown."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")

    # identity
    record_id: str | None = _f(required=True, description="stable dot-free hash of source + media id")
    source: str | None = _f(required=True, description="connector name: gbif, inaturalist, eol, ecotaxa, ifcb, folders")
    source_dataset: str | None = _f("datasetKey")
    occurrence_id: str | None = _f("occurrenceID")
    media_id: str | None = _f("identifier")
    photo_key: str | None = _f(description="same photo across sources, e.g. inat-photo-123; used by dedup")
    # media
    identifier: str | None = _f("accessURI", required=True, description="URL or local URI (file://, zip://, ifcb://) of the image")
    format: str | None = _f("format")
    license: str | None = _f("license", description="normalised code: cc0-1.0, cc-by-4.0, ... or 'unknown'")
    license_raw: str | None = _f(description="licence exactly as the source gave it")
    rights_holder: str | None = _f("rightsHolder")
    creator: str | None = _f("creator")
    references: str | None = _f("references")
    # taxon as given by the source
    verbatim_name: str | None = _f("verbatimScientificName")
    verbatim_rank: str | None = _f("verbatimTaxonRank")
    verbatim_kingdom: str | None = _f("kingdom")
    verbatim_phylum: str | None = _f("phylum")
    verbatim_class: str | None = _f("class")
    verbatim_order: str | None = _f("order")
    verbatim_family: str | None = _f("family")
    verbatim_genus: str | None = _f("genus")
    verbatim_lineage: str | None = _f("higherClassification", description="source hierarchy, '|'-separated, root first")
    source_taxon_id: str | None = _f("taxonID")
    # resolved against the backbone
    taxon_id: str | None = _f("taxonID")
    kingdom: str | None = _f("kingdom")
    phylum: str | None = _f("phylum")
    class_: str | None = _f("class", alias="class")
    order: str | None = _f("order")
    family: str | None = _f("family")
    genus: str | None = _f("genus")
    species: str | None = _f("specificEpithet", description="full binomial, never the epithet alone")
    taxon_rank: str | None = _f("taxonRank")
    accepted_name: str | None = _f("acceptedNameUsage")
    match_type: Literal[MATCH_TYPES] | None = _f()  # type: ignore[valid-type]
    match_score: float | None = _f(ge=0.0, le=1.0)
    match_note: str | None = _f(description="evidence: synonym of, homonym settled by, fallback reason")
    vernacular_name: str | None = _f("vernacularName")
    vernacular_rank: str | None = _f()
    backbone: str | None = _f()
    backbone_version: str | None = _f()
    living: bool | None = _f(description="false for detritus, bubbles, artefacts")
    non_living_class: str | None = _f()
    qualifier: str | None = _f(description="part or life stage from the label, e.g. tail, egg")
    # context
    decimal_latitude: float | None = _f("decimalLatitude", ge=-90.0, le=90.0)
    decimal_longitude: float | None = _f("decimalLongitude", ge=-180.0, le=180.0)
    coordinate_uncertainty_m: float | None = _f("coordinateUncertaintyInMeters", ge=0.0)
    depth_min_m: float | None = _f("minimumDepthInMeters")
    depth_max_m: float | None = _f("maximumDepthInMeters")
    event_date: str | None = _f("eventDate", description="ISO 8601, possibly partial")
    country_code: str | None = _f("countryCode")
    basis_of_record: str | None = _f("basisOfRecord")
    life_stage: str | None = _f("lifeStage")
    sex: str | None = _f("sex")
    instrument: str | None = _f()
    annotation_status: str | None = _f(description="EcoTaxa: validated / predicted / dubious")
    quality_grade: str | None = _f(description="iNaturalist: research / needs_id / casual")
    width: int | None = _f(ge=0, description="image width in pixels when known before download")
    height: int | None = _f(ge=0)
    extra: str | None = _f("dynamicProperties", description="JSON object of source-specific leftovers")


_PY_TO_ARROW = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}


def _arrow_type(annotation) -> pa.DataType:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    if typing.get_origin(base) is Literal or isinstance(base, types.GenericAlias):
        return pa.string()
    return _PY_TO_ARROW[base]


def _column_name(name: str, info) -> str:
    return info.alias or name


def _derive_schema() -> pa.Schema:
    fields = []
    for name, info in Record.model_fields.items():
        extra = info.json_schema_extra or {}
        meta = {"description": info.description or ""}
        if "dwc" in extra:
            meta["dwc"] = extra["dwc"]
        fields.append(
            pa.field(_column_name(name, info), _arrow_type(info.annotation),
                     nullable=not extra.get("required"), metadata=meta)
        )
    return pa.schema(fields, metadata={"biocorpus.schema_version": SCHEMA_VERSION})


RECORD_SCHEMA: pa.Schema = _derive_schema()
REQUIRED: tuple[str, ...] = tuple(f.name for f in RECORD_SCHEMA if not f.nullable)


def _bounds() -> dict[str, tuple[float | None, float | None]]:
    out = {}
    for name, info in Record.model_fields.items():
        lo = hi = None
        for m in info.metadata:
            lo = getattr(m, "ge", lo)
            hi = getattr(m, "le", hi)
        if lo is not None or hi is not None:
            out[_column_name(name, info)] = (lo, hi)
    return out


BOUNDS = _bounds()
# columns whose values are one record's own (ids, URLs, the extra JSON): nothing repeats, so
# Parquet writers neither dictionary-encode them nor keep their min/max
UNIQUE_COLUMNS = ("record_id", "occurrence_id", "media_id", "photo_key", "identifier", "references", "extra")
ENUMS = {"match_type": MATCH_TYPES}


def make_record_id(source: str, media_id: str) -> str:
    """A stable, dot-free id (webdataset splits keys on dots): ``<source>-<16 hex>``, the hex of
    :func:`schemas.hashing.hash_string` of ``str(media_id)`` seeded with the source's name."""
    return f"{source}-{hash_string(str(media_id), source):016x}"


def make_record_ids(source: str, media_ids: Iterable[str]) -> list[str]:
    return record_id_column(source, pa.array([str(m) for m in media_ids], pa.string())).to_pylist()


def record_id_column(source: str, media_ids: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """:func:`make_record_id` of every value, column-wise (a null is ``str(None)``, as there)."""
    if isinstance(media_ids, pa.ChunkedArray):
        media_ids = media_ids.combine_chunks() if media_ids.num_chunks else pa.array([], pa.string())
    media_ids = media_ids.cast(pa.string())
    if media_ids.null_count:
        media_ids = pc.fill_null(media_ids, "None")
    return hex_strings(hash_strings(media_ids, source), f"{source}-")


def empty_records() -> pa.Table:
    return RECORD_SCHEMA.empty_table()


def extra_json(values: dict) -> str | None:
    """Serialise source leftovers for the ``extra`` column (drops empty values)."""
    kept = {k: v for k, v in values.items() if v not in (None, "")}
    return json.dumps(kept, sort_keys=True, ensure_ascii=False, default=str) if kept else None


def from_rows(rows: Sequence[dict]) -> pa.Table:
    """Build a record table from plain dicts keyed by column name; unknown keys are an error."""
    unknown = {k for r in rows for k in r} - set(RECORD_SCHEMA.names)
    if unknown:
        raise KeyError(f"not record columns: {sorted(unknown)}")
    cols = {f.name: [r.get(f.name) for r in rows] for f in RECORD_SCHEMA}
    return pa.table(cols, schema=_nullable_schema())


def _python_kinds() -> dict[str, tuple[type, ...]]:
    """Per record column, the Python types :func:`from_rows` takes as its values (``bool`` is no number)."""
    kinds: dict[str, tuple[type, ...]] = {}
    for f in RECORD_SCHEMA:
        if pa.types.is_string(f.type):
            kinds[f.name] = (str,)
        elif pa.types.is_floating(f.type):
            kinds[f.name] = (int, float)
        elif pa.types.is_integer(f.type):
            kinds[f.name] = (int,)
        elif pa.types.is_boolean(f.type):
            kinds[f.name] = (bool,)
    return kinds


_KINDS = _python_kinds()


def row_problem(row: dict) -> str | None:
    """Why :func:`from_rows` could not take ``row`` (a value of the wrong kind: a list or an object
    where a source's JSON should have had text or a number), or ``None``. Adapters of JSON sources
    check each row, so one malformed item becomes its own reject instead of failing the batch."""
    for name, value in row.items():
        kinds = _KINDS.get(name)
        if value is None or kinds is None:
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"{name} is {type(value).__name__} {_short(value)}, not {kinds[-1].__name__}"
        if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 63):
            return f"{name} {value} does not fit in 64 bits"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def from_columns(columns: dict[str, pa.Array], n: int) -> pa.Table:
    """:func:`from_rows` for values given as columns of ``n`` rows: each cast to its record type,
    absent columns null; unknown names are an error."""
    unknown = set(columns) - set(RECORD_SCHEMA.names)
    if unknown:
        raise KeyError(f"not record columns: {sorted(unknown)}")
    schema = _nullable_schema()
    return pa.Table.from_arrays([columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type)
                                 for f in schema], schema=schema)


def _nullable_schema() -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in RECORD_SCHEMA], metadata=RECORD_SCHEMA.metadata)


def conform(table: pa.Table, stage: str) -> tuple[pa.Table, pa.Table]:
    """Cast ``table`` to the record schema; rows that break it become reject rows.

    Missing columns are added as nulls, extra columns are an error (they belong in ``extra``).
    Returns ``(records, rejects)`` with ``len(records) + len(rejects) == len(table)``.
    """
    from schemas.rejects import Reason, make_rejects

    unknown = set(table.column_names) - set(RECORD_SCHEMA.names)
    if unknown:
        raise KeyError(f"not record columns (put source leftovers in 'extra'): {sorted(unknown)}")
    n = table.num_rows
    bad = np.zeros(n, bool)
    details: dict[int, str] = {}  # row -> the first problem found in it
    cols = []

    def flag(mask: pa.Array, what: str) -> None:
        hit = pc.fill_null(mask, False)
        if not pc.any(hit).as_py():
            return
        hit = hit.to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(hit & ~bad).tolist():  # a row keeps the first problem found in it
            details[i] = what
        bad[hit] = True

    for field in RECORD_SCHEMA:
        if field.name not in table.column_names:
            cols.append(pa.nulls(n, field.type))
            continue
        col = table.column(field.name).combine_chunks() if n else pa.array([], field.type)
        if col.type != field.type:
            try:
                col = pc.cast(col, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                casted = []
                for v in col.to_pylist():
                    try:
                        casted.append(pa.scalar(v).cast(field.type).as_py() if v is not None else None)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                        casted.append("\x00bad")
                mask = pa.array([v == "\x00bad" for v in casted], pa.bool_())
                flag(mask, f"{field.name}: not a {field.type}")
                col = pa.array([None if v == "\x00bad" else v for v in casted], field.type)
        if field.type == pa.float64() and col.null_count < len(col):
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, pa.float64()), col)
        cols.append(col)
        if not field.nullable:
            # null or empty (an empty string has no bytes: its length is in the offsets, no need to
            # count characters); the null length of a null value counts as missing
            empty = pc.fill_null(pc.equal(pc.binary_length(col), 0), True) if field.type == pa.string() \
                else pc.is_null(col)
            flag(empty, f"{field.name}: required")
        if field.name in BOUNDS and col.null_count < len(col):
            lo, hi = BOUNDS[field.name]
            out = pa.array(np.zeros(n, bool))
            if lo is not None:
                out = pc.or_(out, pc.less(col, lo))
            if hi is not None:
                out = pc.or_(out, pc.greater(col, hi))
            flag(out, f"{field.name}: out of range [{lo}, {hi}]")
        if field.name in ENUMS:
            flag(pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, pa.array(ENUMS[field.name])))), f"{field.name}: not one of {ENUMS[field.name]}")
        if field.name == "record_id" and _any_byte(col, b"."):
            flag(pc.match_substring(col, "."), "record_id: contains a dot")
    full = pa.Table.from_arrays(cols, schema=_nullable_schema())
    if not bad.any():
        return full.cast(RECORD_SCHEMA), make_rejects([], stage=stage, reason=Reason.INVALID_RECORD, detail=[])
    mask = pa.array(bad)
    good = full.filter(pc.invert(mask)).cast(RECORD_SCHEMA)
    at = np.flatnonzero(bad)
    rid = full.column("record_id").take(pa.array(at)).to_pylist()
    rejects = make_rejects(
        [r if r else f"row-{i}" for r, i in zip(rid, at.tolist(), strict=True)],
        stage=stage,
        reason=Reason.INVALID_RECORD,
        detail=[details[i] for i in at.tolist()],
    )
    return good, rejects


def value_bytes(a: pa.Array) -> np.ndarray:
    """The bytes a string array's values span in its data buffer (a view, nothing copied)."""
    _, offsets, data = a.buffers()
    if data is None or not len(a):
        return np.zeros(0, np.uint8)
    ends = np.frombuffer(offsets, np.int32)
    return np.frombuffer(data, np.uint8)[ends[a.offset]:ends[a.offset + len(a)]]


def _any_byte(col: pa.Array, byte: bytes) -> bool:
    """Whether any value of a string column holds ``byte`` (a look at its data buffer, no kernel per value)."""
    return bool((value_bytes(col) == byte[0]).any())
