"""Record filters of the curate stage: each names its reject reason and returns the rows it refuses.

A filter is ``fn(table, options) -> (refused mask, detail)``; ``apply_filters`` runs them in order
and every refused row is rejected by the first filter that refuses it, so the counts per reason
add up to the rows rejected.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import RANKS, Reason, empty_rejects, make_rejects

if TYPE_CHECKING:
    from pipeline.stages.curate import Options

# basis-of-record values that never show the organism as it looked alive, whatever the options
ALWAYS_EXCLUDED_BASIS = ("FOSSIL_SPECIMEN", "MATERIAL_CITATION")
SPECIMEN_BASIS = ("PRESERVED_SPECIMEN",)
# media that are not images even when the source gives no format (GBIF multimedia mixes sound/video)
NON_IMAGE_EXTENSIONS = (
    "mp3", "mp4", "m4a", "wav", "ogg", "oga", "flac", "aac", "mov", "avi", "webm", "mkv", "mpg",
    "mpeg", "pdf", "txt", "html", "htm", "xml", "json", "zip", "gz",
)
FORMAT_ALIASES = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg",
    "png": "image/png", "gif": "image/gif", "tif": "image/tiff", "tiff": "image/tiff",
    "image/tif": "image/tiff", "webp": "image/webp", "bmp": "image/bmp", "image/x-ms-bmp": "image/bmp",
}
# the vocabulary of sources/licenses.py: cc0-1.0, cc-by[-nc][-sa|-nd][-<version>], public-domain, ...
_FAMILIES = r"cc0|public-domain|all-rights-reserved|cc-by(?:-nc)?(?:-sa|-nd)?"
_LICENSE_FAMILY = rf"^(?P<family>{_FAMILIES})(?:-[0-9].*)?$"


def unknown_license_families(names) -> list[str]:
    """The names in ``names`` that are not a licence family (a code without its version)."""
    return [n for n in names if not re.fullmatch(_FAMILIES, str(n).strip().lower())]


Detail = Callable[[np.ndarray], list]  # refused row positions -> their detail strings


@dataclass(frozen=True)
class Filter:
    """One named filter: the reason it writes and the function that finds the rows it refuses.

    ``fn(table, options) -> (refused mask, detail)`` where ``detail(positions)`` describes only
    the refused rows (building strings for millions of kept rows would dominate the stage).
    """

    name: str
    reason: Reason
    fn: Callable[[pa.Table, Options], tuple[np.ndarray, Detail]]


def _col(table: pa.Table, name: str, type_: pa.DataType = pa.string(), dictionary: bool = False) -> pa.Array:
    """Column ``name`` as one array of ``type_``; with ``dictionary``, a dictionary column of
    ``type_`` values is returned as it is (the vocabulary filters work on its values)."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, type_)
    col = table.column(name)
    col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    if dictionary and pa.types.is_dictionary(col.type) and col.type.value_type == type_:
        return col
    return col if col.type == type_ else pc.cast(col, type_)


def _mask(expr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(expr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _distinct(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``(distinct values, index per row)``; a null row gets index ``len(values)``.

    Vocabulary columns (licence, basis, status) hold a handful of values over millions of rows:
    string kernels run on the distinct values and the answers are gathered back by index.
    """
    enc = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
    idx = np.asarray(pc.fill_null(enc.indices, len(enc.dictionary)).to_numpy(zero_copy_only=False), np.int64)
    return enc.dictionary, idx


def _gather(values_mask: np.ndarray, null_value: bool, idx: np.ndarray) -> np.ndarray:
    return np.append(values_mask, null_value)[idx]


def _describe(values: list, idx: np.ndarray, template: str, null_text: str) -> Detail:
    texts = [template.format(v) for v in values] + [null_text]
    return lambda pos: [texts[i] for i in idx[pos].tolist()]


def _none(n: int) -> tuple[np.ndarray, Detail]:
    return np.zeros(n, bool), lambda pos: [None] * len(pos)


def license_families(options: Options) -> set[str]:
    """The licence families (code without version) the options allow."""
    allowed = {f.lower() for f in options.licenses}
    if options.allow_nc:
        allowed |= {f.replace("cc-by", "cc-by-nc", 1) for f in allowed if f.startswith("cc-by")}
    if options.allow_nd:
        allowed |= {f.replace("-sa", "") + "-nd" for f in allowed if f.startswith("cc-by") and "-nd" not in f}
    return allowed


def license_family(codes: pa.Array) -> pa.Array:
    """``cc-by-nc-4.0`` -> ``cc-by-nc``; anything that is not a known family -> null."""
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(codes))
    return pc.struct_field(pc.extract_regex(lowered, _LICENSE_FAMILY), [0])


def refuse_license(table: pa.Table, options: Options):
    values, idx = _distinct(_col(table, "license", dictionary=True))
    ok = _mask(pc.is_in(license_family(values), pa.array(sorted(license_families(options)), pa.string())))
    bad = ~_gather(ok, False, idx)
    return bad, _describe(values.to_pylist(), idx, "license {} not allowed", "license missing")


def normalise_basis(values: pa.Array) -> pa.Array:
    """``HumanObservation`` / ``human observation`` / ``HUMAN_OBSERVATION`` -> ``HUMAN_OBSERVATION``."""
    snake = pc.replace_substring_regex(pc.utf8_trim_whitespace(values), r"([a-z])([A-Z])", r"\1_\2")
    return pc.utf8_upper(pc.replace_substring_regex(snake, r"[^A-Za-z0-9]+", "_"))


def excluded_basis(options: Options) -> set[str]:
    out = set(ALWAYS_EXCLUDED_BASIS) | {b.upper() for b in options.exclude_basis}
    if not options.keep_specimens:
        out |= set(SPECIMEN_BASIS)
    return out


def refuse_basis(table: pa.Table, options: Options):
    values, idx = _distinct(_col(table, "basis_of_record", dictionary=True))
    basis = normalise_basis(values)
    bad = _gather(_mask(pc.is_in(basis, pa.array(sorted(excluded_basis(options)), pa.string()))), False, idx)
    return bad, _describe(basis.to_pylist(), idx, "basis of record {}", "")


def _non_living(table: pa.Table) -> np.ndarray:
    return _mask(pc.equal(_col(table, "living", pa.bool_()), False))


def refuse_non_living(table: pa.Table, options: Options):
    if options.keep_non_living:
        return _none(table.num_rows)
    cls = _col(table, "non_living_class")
    return _non_living(table), lambda pos: [f"non-living class {c or 'unspecified'}"
                                             for c in pc.take(cls, pa.array(pos)).to_pylist()]


def refuse_lineage(table: pa.Table, options: Options):
    depth = RANKS.index(options.min_rank) + 1
    needed = RANKS[:depth] if options.require_all_ranks else ("kingdom", options.min_rank)
    missing = {r: _blank(_col(table, r, dictionary=True)) for r in dict.fromkeys(needed)}
    bad = np.zeros(table.num_rows, bool)
    for m in missing.values():
        bad |= m
    # kept non-living classes carry no lineage by design; the non-living filter decides them
    bad &= ~_non_living(table)

    def detail(pos):
        return [f"missing {', '.join(r for r, m in missing.items() if m[i])} (needs {options.min_rank})"
                for i in pos.tolist()]

    return bad, detail


def _blank(col: pa.Array) -> np.ndarray:
    """Rows that are null or whitespace only (a dictionary column is tested on its values)."""
    if pa.types.is_dictionary(col.type):
        values, idx = _distinct(col)
        return _gather(_mask(pc.is_null(_empty_to_null(values))), True, idx)
    return _mask(pc.is_null(_empty_to_null(col)))


def _empty_to_null(col: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(col), ""), pa.scalar(None, pa.string()), col)


def refuse_coordinates(table: pa.Table, options: Options):
    lat = _col(table, "decimal_latitude", pa.float64())
    lon = _col(table, "decimal_longitude", pa.float64())
    latv = np.asarray(pc.fill_null(lat, np.nan).to_numpy(zero_copy_only=False), float)
    lonv = np.asarray(pc.fill_null(lon, np.nan).to_numpy(zero_copy_only=False), float)
    lat_n, lon_n = np.isnan(latv), np.isnan(lonv)
    both = ~lat_n & ~lon_n
    half = lat_n ^ lon_n
    with np.errstate(invalid="ignore"):
        out_of_range = both & ((np.abs(latv) > 90) | (np.abs(lonv) > 180))
    zero = both & (latv == 0) & (lonv == 0) if options.drop_zero_coordinates else np.zeros_like(both)
    absent = (lat_n & lon_n) if options.require_coordinates else np.zeros_like(both)

    def detail(pos):
        return ["coordinates out of range" if out_of_range[i] else "coordinates 0,0" if zero[i]
                else "only one of latitude/longitude" if half[i] else "coordinates missing" for i in pos.tolist()]

    return half | out_of_range | zero | absent, detail


def _refuse_vocabulary(column: str, option: str, label: str):
    """A filter refusing non-null values of ``column`` outside the option's list (``None`` = off)."""

    def refuse(table: pa.Table, options: Options):
        allowed = getattr(options, option)
        if allowed is None:
            return _none(table.num_rows)
        values, idx = _distinct(_col(table, column, dictionary=True))
        norm = pc.utf8_lower(pc.utf8_trim_whitespace(values))
        ok = _mask(pc.is_in(norm, pa.array(sorted(v.lower() for v in allowed), pa.string())))
        return ~_gather(ok, True, idx), _describe(values.to_pylist(), idx, f"{label} {{}}", "")

    return refuse


def normalise_format(values: pa.Array) -> pa.Array:
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    keys = pa.array(list(FORMAT_ALIASES), pa.string())
    idx = pc.index_in(lowered, keys)
    mapped = pc.take(pa.array(list(FORMAT_ALIASES.values()), pa.string()), idx)
    return pc.coalesce(mapped, lowered)


def refuse_image_type(table: pa.Table, options: Options):
    values, idx = _distinct(_col(table, "format", dictionary=True))
    fmt = normalise_format(values)
    allowed = pa.array(sorted(f.lower() for f in options.image_formats), pa.string())
    bad_fmt = _gather(~_mask(pc.is_in(fmt, allowed)), False, idx)
    # without a format, the URL path's extension (query string and fragment ignored) decides
    unknown = np.nonzero(idx == len(values))[0]
    ext = pa.nulls(0, pa.string())
    bad_ext = np.zeros(table.num_rows, bool)
    if unknown.size:
        ident = pc.utf8_lower(pc.take(_col(table, "identifier"), pa.array(unknown)))
        ext = pc.struct_field(pc.extract_regex(ident, r"\.(?P<ext>[a-z0-9]{1,5})(?:[?#].*)?$"), [0])
        bad_ext[unknown] = _mask(pc.is_in(ext, pa.array(NON_IMAGE_EXTENSIONS)))
    raw = values.to_pylist()
    ext_of = dict(zip(unknown.tolist(), ext.to_pylist(), strict=True))

    def detail(pos):
        return [f"format {raw[idx[i]]}" if bad_fmt[i] else f"file type .{ext_of[i]}" for i in pos.tolist()]

    return bad_fmt | bad_ext, detail


def refuse_size(table: pa.Table, options: Options):
    w = np.asarray(pc.fill_null(_col(table, "width", pa.int64()), -1).to_numpy(zero_copy_only=False))
    h = np.asarray(pc.fill_null(_col(table, "height", pa.int64()), -1).to_numpy(zero_copy_only=False))
    small = ((w >= 0) & (w < options.min_width)) | ((h >= 0) & (h < options.min_height))

    def detail(pos):
        side = lambda v: "?" if v < 0 else str(v)  # noqa: E731
        return [f"{side(w[i])}x{side(h[i])} < {options.min_width}x{options.min_height}" for i in pos.tolist()]

    return small, detail


FILTERS: tuple[Filter, ...] = (
    Filter("license", Reason.LICENSE_POLICY, refuse_license),
    Filter("basis_of_record", Reason.BASIS_OF_RECORD, refuse_basis),
    Filter("non_living", Reason.NON_LIVING, refuse_non_living),
    Filter("lineage", Reason.LINEAGE_DEPTH, refuse_lineage),
    Filter("coordinates", Reason.BAD_COORDINATES, refuse_coordinates),
    Filter("annotation_status", Reason.ANNOTATION_STATUS,
           _refuse_vocabulary("annotation_status", "annotation_statuses", "annotation status")),
    Filter("quality_grade", Reason.NOT_RESEARCH_GRADE,
           _refuse_vocabulary("quality_grade", "quality_grades", "quality grade")),
    Filter("image_type", Reason.IMAGE_TYPE, refuse_image_type),
    Filter("image_size", Reason.IMAGE_TOO_SMALL, refuse_size),
)


def apply_filters(table: pa.Table, options: Options, stage: str = "curate") -> tuple[pa.Table, pa.Table]:
    """Run every filter; returns ``(kept, rejects)``, each refused row rejected once (first filter wins)."""
    n = table.num_rows
    if n == 0:
        return table, empty_rejects()
    taken = np.zeros(n, bool)
    ids = _col(table, "record_id")
    parts = []
    for f in FILTERS:
        if f.name in options.disabled_filters:
            continue
        bad, detail = f.fn(table, options)
        new = bad & ~taken
        if new.any():
            pos = np.nonzero(new)[0]
            rid = pc.fill_null(pc.take(ids, pa.array(pos)), "").to_pylist()
            parts.append(make_rejects(rid, stage, f.reason, detail(pos)))
            taken |= new
    kept = table.filter(pa.array(~taken)) if taken.any() else table
    return kept, (pa.concat_tables(parts) if parts else empty_rejects())


def filter_names() -> list[str]:
    return [f.name for f in FILTERS]

