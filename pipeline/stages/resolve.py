"""The resolve stage: fill every record's resolved-taxon columns from the backbone, keeping the evidence.

No record is rejected here: an unresolved name keeps ``match_type = "none"`` and a reason in
``match_note``, and the curate stage decides what to drop. :func:`unresolved_report` summarises
what did not resolve and why.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline.stage import MapStage, StageContext, StageOutput
from schemas import RECORD_SCHEMA, empty_rejects
from taxonomy.backbone import load_backbone
from taxonomy.resolver import RESULT_COLUMNS, ResolveSettings, resolve_table

STAGE_NAME = "resolve"


class Options(BaseModel):
    """``[resolve]`` table of the config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone: str = Field("gbif", description="backbone folder, backbone.parquet, or a name under <data>/backbones/")
    # (not in the fingerprint: the backbone found there is, by name, version and checksum)
    data_root: str = Field("data", description="data root used to find a backbone given by name",
                           json_schema_extra={"fingerprint": False})
    fuzzy: bool = Field(True, description="try fuzzy matching for names without an exact match")
    fuzzy_threshold: float = Field(0.85, ge=0.0, le=1.0,
                                   description="minimum similarity 1 - edits/length for a fuzzy match")
    max_edit_distance: int = Field(2, ge=0, le=4, description="most edits allowed in a fuzzy match (per name)")
    aff_to_genus: bool = Field(True, description="'Genus aff. species' resolves to the genus, not the species")
    workers: int = Field(2, ge=1, description="threads for the fuzzy distance computation")

    def settings(self) -> ResolveSettings:
        return ResolveSettings(fuzzy=self.fuzzy, fuzzy_threshold=self.fuzzy_threshold,
                               max_edit_distance=self.max_edit_distance, aff_to_genus=self.aff_to_genus,
                               workers=self.workers)


def _options(ctx: StageContext) -> Options:
    opts = ctx.options
    if opts is None:
        return Options()
    if isinstance(opts, Options):
        return opts
    return Options.model_validate(opts if isinstance(opts, dict) else dict(opts))


def setup(ctx: StageContext) -> dict:
    """Load the backbone once per worker."""
    opts = _options(ctx)
    return {"backbone": load_backbone(opts.backbone, Path(opts.data_root))}


def resolve_batch(batch: pa.Table, ctx: StageContext) -> StageOutput:
    """Records in, the same records out with the resolved columns filled; rejects stay empty."""
    opts = _options(ctx)
    backbone = ctx.resources.get("backbone") if ctx.resources else None
    if backbone is None:
        backbone = setup(ctx)["backbone"]
    if batch.num_rows == 0:
        return StageOutput(out=batch, rejects=empty_rejects())
    resolved = resolve_table(batch, backbone, opts.settings())
    # keep the input's columns and order; resolved columns replace what was there
    cols = []
    for name in batch.column_names:
        if name in RESULT_COLUMNS:
            field = RECORD_SCHEMA.field(name) if name in RECORD_SCHEMA.names else None
            arr = resolved[name].to_arrow()
            cols.append(arr.cast(field.type) if field is not None else arr)
        else:
            cols.append(batch.column(name))
    names = list(batch.column_names)
    for name in RESULT_COLUMNS:
        if name not in names:
            field = RECORD_SCHEMA.field(name)
            cols.append(resolved[name].to_arrow().cast(field.type))
            names.append(name)
    out = pa.Table.from_arrays([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cols],
                               names=names)
    return StageOutput(out=out, rejects=empty_rejects())


STAGE = MapStage(STAGE_NAME, resolve_batch, setup)


def unresolved_report(resolved: pa.Table | pl.DataFrame) -> pa.Table:
    """Unresolved names by reason: reason, verbatim_name, canonical-ish note, records (count),
    sorted by count. ``reason`` is the first word of ``match_note`` (see ``resolver.REASONS``)."""
    df = resolved if isinstance(resolved, pl.DataFrame) else pl.from_arrow(resolved)
    if df.height == 0 or "match_type" not in df.columns:
        return pa.table({"reason": pa.array([], pa.string()), "verbatim_name": pa.array([], pa.string()),
                         "match_note": pa.array([], pa.string()), "records": pa.array([], pa.int64())})
    un = df.filter(pl.col("match_type").is_null() | (pl.col("match_type") == "none"))
    rep = un.with_columns(
        pl.col("match_note").str.extract(r"^([a-z_]+)").fill_null("not_resolved").alias("reason")
    ).group_by("reason", "verbatim_name").agg(
        pl.col("match_note").first(), pl.len().cast(pl.Int64).alias("records")
    ).sort(["records", "reason", "verbatim_name"], descending=[True, False, False], nulls_last=True)
    return rep.select("reason", "verbatim_name", "match_note", "records").to_arrow()
