"""Small stages used to test the runners (importable by spawned workers and Beam)."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stage import GlobalStage, MapStage, StageContext, StageOutput
from schemas import Reason, make_rejects


def tag_and_reject(batch: pa.Table, ctx: StageContext) -> StageOutput:
    """Reject rows whose identifier contains 'bad'; upper-case the source of the rest."""
    slow = os.environ.get("TOY_STAGE_SLEEP")
    if slow:
        time.sleep(float(slow))
    bad = pc.match_substring(batch.column("identifier"), "bad")
    good = batch.filter(pc.invert(bad))
    good = good.set_column(good.schema.get_field_index("source"), "source", pc.utf8_upper(good.column("source")))
    rej = batch.filter(bad)
    return StageOutput(good, make_rejects(rej.column("record_id").to_pylist(), ctx.stage, Reason.IMAGE_TYPE, "toy"))


def photo_key(batch: pa.Table, ctx: StageContext) -> pa.Array:
    return pc.coalesce(batch.column("photo_key"), batch.column("record_id")).combine_chunks()


def keep_smallest(group: pa.Table, ctx: StageContext) -> StageOutput:
    group = group.sort_by([("record_id", "ascending")])
    keys = photo_key(group, ctx).to_pylist()
    seen, keep = set(), []
    for k in keys:
        keep.append(k not in seen)
        seen.add(k)
    mask = pa.array(keep)
    dup = group.filter(pc.invert(mask))
    return StageOutput(group.filter(mask),
                       make_rejects(dup.column("record_id").to_pylist(), ctx.stage, Reason.DUPLICATE_PHOTO))


TOY_MAP = MapStage("toymap", tag_and_reject)
TOY_GLOBAL = GlobalStage("toyglobal", photo_key, keep_smallest, buckets=4)
