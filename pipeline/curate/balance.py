"""Per-taxon balance: drop taxa with too few images, cap taxa with too many by seeded sampling.

The key is the resolved taxon (``taxon_id``), never the epithet, so *Osmia texana* and *Megachile
texana* stay two taxa. Which rows a cap keeps depends only on ``hash(seed, record_id)``, so the
result is the same whatever the file or row order and whichever runner groups the rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.curate.hashing import hash_strings
from pipeline.stage import StageContext, StageOutput
from schemas import RANKS, Reason, empty_rejects, make_rejects


def _column(table: pa.Table, name: str, type_=pa.string()) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, type_)
    col = table.column(name)
    return col.combine_chunks() if col.num_chunks else pa.array([], col.type)


def taxon_keys(batch: pa.Table, ctx: StageContext | None = None) -> pa.Array:
    """The taxon of each row: ``taxon_id``; for kept non-living rows ``non_living:<class>``; else
    the full 7-rank lineage (an unresolved id never falls back to a bare epithet)."""
    taxon = pc.if_else(pc.equal(_column(batch, "taxon_id"), ""), pa.scalar(None, pa.string()),
                       _column(batch, "taxon_id"))
    non_living = pc.if_else(
        pc.fill_null(pc.equal(_column(batch, "living", pa.bool_()), False), False),
        pc.binary_join_element_wise("non_living:", pc.fill_null(_column(batch, "non_living_class"), "unspecified"), ""),
        pa.scalar(None, pa.string()),
    )
    lineage = pc.binary_join_element_wise(
        "lineage:", pc.binary_join_element_wise(*[pc.fill_null(_column(batch, r), "") for r in RANKS], "|"), "")
    return pc.coalesce(taxon, non_living, lineage)


def balance(table: pa.Table, keys: pa.Array, min_per_taxon: int, max_per_taxon: int | None,
            seed: int, stage: str) -> StageOutput:
    """Apply the minimum and the cap to every key present in ``table`` (one or many groups)."""
    n = table.num_rows
    if n == 0:
        return StageOutput(table, empty_rejects())
    codes = pc.dictionary_encode(keys).combine_chunks() if isinstance(keys, pa.ChunkedArray) \
        else pc.dictionary_encode(keys)
    group = np.asarray(codes.indices.to_numpy(zero_copy_only=False), np.int64)
    sizes = np.bincount(group)
    rid = pc.fill_null(_column(table, "record_id"), "")
    h = hash_strings(rid, seed=f"cap:{seed}")
    # rank inside each taxon by (hash, record id): the record id settles the (rare) hash ties
    rid_rank = np.asarray(pc.rank(rid, sort_keys="ascending", tiebreaker="dense").to_numpy(), np.int64)
    order = np.lexsort((rid_rank, h, group))
    rank = np.empty(n, np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank[order] = np.arange(n) - starts[group[order]]
    size = sizes[group]
    rare = size < min_per_taxon
    capped = ~rare & (rank >= max_per_taxon) if max_per_taxon is not None else np.zeros(n, bool)
    ids = np.asarray(rid.to_numpy(zero_copy_only=False), object)
    key_text = np.asarray(codes.dictionary.to_numpy(zero_copy_only=False), object)[group]
    parts = []
    if rare.any():
        parts.append(make_rejects(ids[rare].tolist(), stage, Reason.RARE_TAXON,
                                  [f"{k}: {s} < {min_per_taxon}" for k, s in zip(key_text[rare], size[rare], strict=True)]))
    if capped.any():
        parts.append(make_rejects(ids[capped].tolist(), stage, Reason.TAXON_CAP,
                                  [f"{k}: kept {max_per_taxon} of {s}" for k, s in zip(key_text[capped], size[capped], strict=True)]))
    keep = ~(rare | capped)
    return StageOutput(table.filter(pa.array(keep)), pa.concat_tables(parts) if parts else empty_rejects())


def decide_balance(group: pa.Table, ctx: StageContext) -> StageOutput:
    """``GlobalStage.decide_fn``: works on one taxon's rows or on a bucket of many taxa."""
    o = ctx.options
    return balance(group, taxon_keys(group), o.min_per_taxon, o.max_per_taxon, o.seed, ctx.stage)


def balance_report(rejects: pa.Table) -> dict[str, dict[str, int]]:
    """Taxa dropped as rare and taxa capped, with the rows each lost: ``{reason: {taxon: rows}}``."""
    out: dict[str, dict[str, int]] = {}
    for reason in (Reason.RARE_TAXON, Reason.TAXON_CAP):
        rows = rejects.filter(pc.equal(rejects.column("reason"), str(reason)))
        taxa = pc.replace_substring_regex(rows.column("detail"), r": [^:]*$", "")
        counts = pc.value_counts(taxa)
        out[str(reason)] = {c["values"].as_py(): c["counts"].as_py() for c in counts}
    return out
