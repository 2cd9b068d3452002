"""Record filters of the curate stage: each names its reject reason and returns the rows it refuses.

A filter is ``fn(table, options) -> (refused mask, detail)``; ``apply_filters`` runs them in order
and every refused row is rejected by the first filter that refuses it, so the counts per reason
add up to the rows rejected.
"""

from __future__ import annotations

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
_LICENSE_FAMILY = r"^(cc0|public-domain|all-rights-reserved|cc-by(?:-nc)?(?:-sa|-nd)?)(?:-[0-9].*)?$"


@dataclass(frozen=True)
class Filter:
    """One named filter: the reason it writes and the function that finds the rows it refuses."""

    name: str
    reason: Reason
    fn: Callable[[pa.Table, Options], tuple[np.ndarray, pa.Array]]


def _col(table: pa.Table, name: str, type_: pa.DataType = pa.string()) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, type_)
    col = table.column(name)
    col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    return col if col.type == type_ else pc.cast(col, type_)


def _mask(expr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(expr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _say(*parts) -> pa.Array:
    """Concatenate literal strings and string arrays element-wise (a null part gives a null detail)."""
    return pc.binary_join_element_wise(*parts, "")


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
    lic = _col(table, "license")
    family = license_family(lic)
    ok = pc.is_in(family, pa.array(sorted(license_families(options)), pa.string()))
    bad = ~_mask(ok)
    detail = pc.if_else(pc.is_null(lic), pa.scalar("license missing"), _say("license ", lic, " not allowed"))
    return bad, detail


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
    basis = normalise_basis(_col(table, "basis_of_record"))
    bad = _mask(pc.is_in(basis, pa.array(sorted(excluded_basis(options)), pa.string())))
    return bad, _say("basis of record ", basis)


def _non_living(table: pa.Table) -> np.ndarray:
    return _mask(pc.equal(_col(table, "living", pa.bool_()), False))


def refuse_non_living(table: pa.Table, options: Options):
    if options.keep_non_living:
        return np.zeros(table.num_rows, bool), pa.nulls(table.num_rows, pa.string())
    cls = pc.fill_null(_col(table, "non_living_class"), "unspecified")
    return _non_living(table), _say("non-living class ", cls)


def refuse_lineage(table: pa.Table, options: Options):
    depth = RANKS.index(options.min_rank) + 1
    needed = RANKS[:depth] if options.require_all_ranks else ("kingdom", options.min_rank)
    missing = {r: _mask(pc.is_null(_empty_to_null(_col(table, r)))) for r in dict.fromkeys(needed)}
    bad = np.zeros(table.num_rows, bool)
    for m in missing.values():
        bad |= m
    # kept non-living classes carry no lineage by design; the non-living filter decides them
    bad &= ~_non_living(table)
    detail = [None] * table.num_rows
    for i in np.nonzero(bad)[0]:
        gaps = ", ".join(r for r, m in missing.items() if m[i])
        detail[i] = f"missing {gaps} (needs {options.min_rank})"
    return bad, pa.array(detail, pa.string())


def _empty_to_null(col: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(col), ""), pa.scalar(None, pa.string()), col)


def refuse_coordinates(table: pa.Table, options: Options):
    lat = _col(table, "decimal_latitude", pa.float64())
    lon = _col(table, "decimal_longitude", pa.float64())
    lat_n = _mask(pc.or_kleene(pc.is_null(lat), pc.is_nan(lat)))
    lon_n = _mask(pc.or_kleene(pc.is_null(lon), pc.is_nan(lon)))
    latv = np.nan_to_num(np.asarray(lat.to_numpy(zero_copy_only=False), float), nan=0.0)
    lonv = np.nan_to_num(np.asarray(lon.to_numpy(zero_copy_only=False), float), nan=0.0)
    both = ~lat_n & ~lon_n
    half = lat_n ^ lon_n
    out_of_range = both & ((np.abs(latv) > 90) | (np.abs(lonv) > 180))
    zero = both & (latv == 0) & (lonv == 0) if options.drop_zero_coordinates else np.zeros_like(both)
    absent = (lat_n & lon_n) if options.require_coordinates else np.zeros_like(both)
    reasons = np.full(table.num_rows, None, dtype=object)
    reasons[absent] = "coordinates missing"
    reasons[half] = "only one of latitude/longitude"
    reasons[zero] = "coordinates 0,0"
    reasons[out_of_range] = "coordinates out of range"
    bad = half | out_of_range | zero | absent
    return bad, pa.array(reasons.tolist(), pa.string())


def _refuse_vocabulary(column: str, option: str, label: str):
    """A filter refusing non-null values of ``column`` outside the option's list (``None`` = off)."""

    def refuse(table: pa.Table, options: Options):
        values = getattr(options, option)
        col = _col(table, column)
        if values is None:
            return np.zeros(table.num_rows, bool), pa.nulls(table.num_rows, pa.string())
        norm = pc.utf8_lower(pc.utf8_trim_whitespace(col))
        ok = pc.is_in(norm, pa.array(sorted(v.lower() for v in values), pa.string()))
        bad = _mask(pc.and_kleene(pc.is_valid(col), pc.invert(ok)))
        return bad, _say(f"{label} ", col)

    return refuse


def normalise_format(values: pa.Array) -> pa.Array:
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    keys = pa.array(list(FORMAT_ALIASES), pa.string())
    idx = pc.index_in(lowered, keys)
    mapped = pc.take(pa.array(list(FORMAT_ALIASES.values()), pa.string()), idx)
    return pc.coalesce(mapped, lowered)


def refuse_image_type(table: pa.Table, options: Options):
    raw = _col(table, "format")
    fmt = normalise_format(raw)
    allowed = pa.array(sorted(f.lower() for f in options.image_formats), pa.string())
    bad_fmt = _mask(pc.and_kleene(pc.is_valid(fmt), pc.invert(pc.is_in(fmt, allowed))))
    ident = pc.utf8_lower(_col(table, "identifier"))
    # the URL path's extension, ignoring a query string or fragment
    ext = pc.struct_field(pc.extract_regex(ident, r"\.(?P<ext>[a-z0-9]{1,5})(?:[?#].*)?$"), [0])
    bad_ext = _mask(pc.and_kleene(pc.is_null(fmt), pc.is_in(ext, pa.array(NON_IMAGE_EXTENSIONS))))
    detail = pc.if_else(pa.array(bad_fmt), _say("format ", raw), _say("file type .", ext))
    return bad_fmt | bad_ext, detail


def refuse_size(table: pa.Table, options: Options):
    w = _col(table, "width", pa.int64())
    h = _col(table, "height", pa.int64())
    small = pc.or_kleene(pc.less(w, options.min_width), pc.less(h, options.min_height))
    detail = _say(pc.cast(pc.fill_null(w, -1), pa.string()), "x", pc.cast(pc.fill_null(h, -1), pa.string()),
                  f" < {options.min_width}x{options.min_height}")
    return _mask(small), pc.replace_substring(detail, "-1", "?")


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
            idx = pa.array(np.nonzero(new)[0])
            rid = pc.fill_null(pc.take(ids, idx), "").to_pylist()
            parts.append(make_rejects(rid, stage, f.reason, pc.take(detail, idx).to_pylist()))
            taken |= new
    kept = table.filter(pa.array(~taken))
    return kept, (pa.concat_tables(parts) if parts else empty_rejects())


def filter_names() -> list[str]:
    return [f.name for f in FILTERS]

