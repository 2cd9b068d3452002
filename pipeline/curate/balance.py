"""Per-taxon balance: drop taxa with too few images, cap taxa with too many by seeded sampling.

The key is the resolved taxon (``taxon_id``), never the epithet, so *Osmia texana* and *Megachile
texana* stay two taxa. Which rows a cap keeps depends only on ``hash(seed, record_id)``, so the
result is the same whatever the file or row order and whichever runner groups the rows.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.curate.hashing import hash_strings, order_by_hash
from pipeline.stage import StageContext, StageOutput
from schemas import RANKS, REJECT_SCHEMA, Reason, empty_rejects


def _column(table: pa.Table, name: str, type_=pa.string()) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, type_)
    col = table.column(name)
    col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


# the columns :func:`taxon_keys` reads
TAXON_KEY_COLUMNS = ("taxon_id", "living", "non_living_class", *RANKS)


def taxon_keys(batch: pa.Table, ctx: StageContext | None = None) -> pa.Array:
    """The taxon of each row: ``taxon_id``; for kept non-living rows ``non_living:<class>``; else
    the full 7-rank lineage (an unresolved id never falls back to a bare epithet)."""
    taxon = _column(batch, "taxon_id")
    taxon = pc.if_else(pc.equal(taxon, ""), pa.scalar(None, pa.string()), taxon)
    missing = np.nonzero(np.asarray(pc.is_null(taxon).to_numpy(zero_copy_only=False), bool))[0]
    if not missing.size:
        return taxon
    # only rows without a taxon id pay for building the fallback keys
    rest = batch.take(pa.array(missing))
    non_living = pc.if_else(
        pc.fill_null(pc.equal(_column(rest, "living", pa.bool_()), False), False),
        pc.binary_join_element_wise("non_living:", pc.fill_null(_column(rest, "non_living_class"), "unspecified"), ""),
        pa.scalar(None, pa.string()),
    )
    lineage = pc.binary_join_element_wise(
        "lineage:", pc.binary_join_element_wise(*[pc.fill_null(_column(rest, r), "") for r in RANKS], "|"), "")
    fallback = pc.coalesce(non_living, lineage).to_pylist()
    values = taxon.to_pylist()
    for i, k in zip(missing.tolist(), fallback, strict=True):
        values[i] = k
    return pa.array(values, pa.string())


def taxon_key_codes(batch: pa.Table) -> pa.DictionaryArray:
    """:func:`taxon_keys` as a dictionary array (distinct values); a dictionary ``taxon_id``
    column (the fused curate reads it so) without blanks is those keys already."""
    if "taxon_id" in batch.column_names and pa.types.is_dictionary(batch.schema.field("taxon_id").type):
        col = batch.column("taxon_id")
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
        if not col.null_count and not pc.any(pc.equal(col.dictionary, "")).as_py():
            return col
    return pc.dictionary_encode(taxon_keys(batch))


def balance(table: pa.Table, keys: pa.Array, min_per_taxon: int, max_per_taxon: int | None,
            seed: int, stage: str, ordered: bool = True) -> StageOutput:
    """Apply the minimum and the cap to every key present in ``table`` (one or many groups).

    Rows come out in ``hash(seed, record_id)`` order, or in input order with ``ordered=False``.
    """
    if table.num_rows == 0:
        return StageOutput(table, empty_rejects())
    keep, order, rejects = balance_rows(table, keys, min_per_taxon, max_per_taxon, seed, stage)
    if ordered:
        out = table.take(pa.array(order[keep[order]]))
    else:
        out = table if keep.all() else table.filter(pa.array(keep))
    return StageOutput(out, rejects)


def balance_rows(table: pa.Table, keys: pa.Array, min_per_taxon: int, max_per_taxon: int | None,
                 seed: int, stage: str) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """The decision of :func:`balance` without moving any row: ``(keep mask in input order,
    the hash order of the rows, rejects)``. Only ``record_id`` of ``table`` is read."""
    n = table.num_rows
    if n == 0:
        return np.ones(0, bool), np.zeros(0, np.int64), empty_rejects()
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    codes = keys if pa.types.is_dictionary(keys.type) else pc.dictionary_encode(keys)
    group = np.asarray(codes.indices.to_numpy(zero_copy_only=False), np.int64)
    sizes = np.bincount(group, minlength=len(codes.dictionary))
    rid = pc.fill_null(_column(table, "record_id"), "")
    # one global order by hash(seed, record_id); a row's rank inside its taxon follows it
    order = order_by_hash(hash_strings(rid, seed=f"cap:{seed}"), rid)
    group_o = group[order]  # everything below is in hash order
    size_o = sizes[group_o]
    rare = size_o < min_per_taxon
    capped = np.zeros(n, bool)
    if max_per_taxon is not None:
        over = ~rare & (size_o > max_per_taxon)  # only taxa over the cap need ranks
        if over.any():
            capped[over] = _ranks_within(group_o[over]) >= max_per_taxon
    parts = []
    counts = pc.cast(pa.array(sizes), pa.string())
    for mask, reason, detail in ((rare, Reason.RARE_TAXON, f" < {min_per_taxon}"),
                                 (capped, Reason.TAXON_CAP, None)):
        if not mask.any():
            continue
        # one detail text per taxon, gathered to its rows: a cap can reject millions of rows
        texts = (pc.binary_join_element_wise(codes.dictionary, ": ", counts, detail, "") if detail else
                 pc.binary_join_element_wise(codes.dictionary, f": kept {max_per_taxon} of ", counts, ""))
        n_rej = int(mask.sum())
        parts.append(pa.table({
            "record_id": pc.take(rid, pa.array(order[mask])), "stage": pa.repeat(pa.scalar(stage, pa.string()), n_rej),
            "reason": pa.repeat(pa.scalar(str(reason), pa.string()), n_rej),
            "detail": pc.take(texts, pa.array(group_o[mask])),
        }, schema=REJECT_SCHEMA))
    keep = np.ones(n, bool)
    keep[order[rare | capped]] = False
    return keep, order, pa.concat_tables(parts) if parts else empty_rejects()


def _ranks_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... per group code, in the order the rows come (a cumulative count per group)."""
    return pl.DataFrame({"g": groups}).select(
        pl.int_range(pl.len(), dtype=pl.Int64).over("g")).to_series().to_numpy()


def decide_balance(group: pa.Table, ctx: StageContext) -> StageOutput:
    """``GlobalStage.decide_fn``: works on one taxon's rows or on a bucket of many taxa."""
    o = ctx.options
    return balance(group, taxon_keys(group), o.min_per_taxon, o.max_per_taxon, o.seed, ctx.stage,
                   ordered=ctx.resources.get("ordered", True))


def balance_report_of(files: list) -> dict[str, dict[str, int]]:
    """:func:`balance_report` of reject files read one at a time, only their reason and detail:
    a staged run's balance rejects can be most of a corpus, too many to hold at once."""
    import pyarrow.parquet as pq

    out: dict[str, dict[str, int]] = {str(Reason.RARE_TAXON): {}, str(Reason.TAXON_CAP): {}}
    for f in files:
        for reason, per_taxon in balance_report(pq.read_table(f, columns=["reason", "detail"])).items():
            for taxon, n in per_taxon.items():
                out[reason][taxon] = out[reason].get(taxon, 0) + n
    return out


def balance_report(rejects: pa.Table) -> dict[str, dict[str, int]]:
    """Taxa dropped as rare and taxa capped, with the rows each lost: ``{reason: {taxon: rows}}``."""
    out: dict[str, dict[str, int]] = {}
    for reason in (Reason.RARE_TAXON, Reason.TAXON_CAP):
        rows = rejects.filter(pc.equal(rejects.column("reason"), str(reason)))
        # a taxon's rows share one detail text: count the texts, then cut the taxon from each
        counts = pc.value_counts(rows.column("detail"))
        taxa = pc.replace_substring_regex(counts.field("values"), r": [^:]*$", "").to_pylist()
        per_taxon: dict[str, int] = {}
        for taxon, n in zip(taxa, counts.field("counts").to_pylist(), strict=True):
            per_taxon[taxon] = per_taxon.get(taxon, 0) + n
        out[str(reason)] = per_taxon
    return out
