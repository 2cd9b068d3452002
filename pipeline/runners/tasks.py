"""Units of work shared by both runners: each reads its input, applies a stage function, commits.

The local runner calls these from a process pool, the Beam runner from DoFns; because both call
the same functions with the same task ids, their outputs are the same files.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io import StagedOutput, atomic_write_parquet, count_rows
from pipeline.stage import GlobalStage, MapStage, StageContext, check_accounting
from schemas import REJECT_SCHEMA, conform, empty_rejects

_RESOURCES: dict[tuple[str, str], Any] = {}


def resources_for(stage: MapStage | GlobalStage, ctx: StageContext) -> StageContext:
    """``ctx`` with the stage's resources loaded, once per process (a backbone, a model)."""
    if stage.setup is None or ctx.resources:
        return ctx
    # every option, not the fingerprint's hash: that leaves out where inputs are found (a data root)
    key = (stage.name, ctx.options.model_dump_json() if hasattr(ctx.options, "model_dump_json") else repr(ctx.options))
    if key not in _RESOURCES:
        _RESOURCES[key] = stage.setup(ctx)
    return StageContext(stage=ctx.stage, options=ctx.options, resources=_RESOURCES[key])


def _rejects(table: pa.Table) -> pa.Table:
    return table.select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA) if table.num_rows else empty_rejects()


def map_task(stage: MapStage, ctx: StageContext, task_id: str, input_file: str, staged: StagedOutput) -> dict:
    """Apply a map stage to one input file and commit its output and rejects."""
    ctx = resources_for(stage, ctx)
    batch = pq.read_table(input_file)
    result = stage.fn(batch, ctx)
    rejects = _rejects(result.rejects)
    check_accounting(f"{stage.name}[{task_id}]", batch.num_rows, result.out.num_rows, rejects.num_rows)
    counts = _counts(task_id, batch.num_rows, result.out.num_rows, rejects)
    staged.commit_task(task_id, [result.out], rejects, counts)
    for name, side in result.side.items():
        atomic_write_parquet(side, staged.staging / "side" / name / f"part-{task_id}.parquet")
    return counts


def bucket_of(keys: pa.Array | pa.ChunkedArray, buckets: int):
    """Stable bucket per key: ``zlib.crc32`` of its UTF-8 bytes modulo ``buckets`` (identical in every
    process, on every worker and across versions), computed column-wise; a null key goes to bucket 0.
    Returns an ``int64`` numpy array."""
    import numpy as np

    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks else pa.array([], pa.string())
    # the CRC-32 (IEEE, reflected) byte table that zlib uses
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    text = pc.fill_null(keys.cast(pa.large_string()), "")
    n = len(text)
    crc = np.full(n, 0xFFFFFFFF, np.uint32)
    if n:
        buffers = text.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=text.offset * 8)
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
        starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
        active = np.nonzero(lengths > 0)[0]
        pos = 0
        # one pass per byte position over the keys still that long: total work = total bytes
        while active.size:
            c = crc[active]
            crc[active] = table[(c ^ data[starts[active] + pos]) & 0xFF] ^ (c >> 8)
            pos += 1
            active = active[lengths[active] > pos]
    out = ((crc ^ np.uint32(0xFFFFFFFF)) % np.uint32(buckets)).astype(np.int64)
    if keys.null_count:
        out[np.asarray(keys.is_null().to_numpy(zero_copy_only=False), bool)] = 0
    return out


def route_table(stage: GlobalStage, ctx: StageContext, table: pa.Table) -> dict[int, pa.Table]:
    """Split a table by the bucket of each row's key (input order kept inside each bucket)."""
    import numpy as np

    ctx = resources_for(stage, ctx)
    keys = stage.key_fn(table, ctx)
    if len(keys) != table.num_rows:
        raise ValueError(f"{stage.name}: key_fn returned {len(keys)} keys for {table.num_rows} rows")
    buckets = bucket_of(keys, stage.buckets)
    present = np.nonzero(np.bincount(buckets, minlength=stage.buckets))[0]
    if len(present) == 1:
        return {int(present[0]): table}
    # a filter per bucket reads the columns sequentially: several times cheaper than one gather
    # (take) of the whole table in bucket order, whose random access misses the cache per value
    return {int(b): table.filter(pa.array(buckets == b)) for b in present}


def decide_task(stage: GlobalStage, ctx: StageContext, bucket: int, group: pa.Table, staged: StagedOutput) -> dict:
    """Decide one bucket of a global stage and commit it as ``part-b<bucket>``."""
    ctx = resources_for(stage, ctx)
    task_id = f"b{bucket:05d}"
    result = stage.decide_fn(group, ctx)
    rejects = _rejects(result.rejects)
    check_accounting(f"{stage.name}[{task_id}]", group.num_rows, result.out.num_rows, rejects.num_rows)
    counts = _counts(task_id, group.num_rows, result.out.num_rows, rejects)
    staged.commit_task(task_id, [result.out], rejects, counts)
    return counts


def ingest_task(connector, options, task_index: int, task: str, staged: StagedOutput,
                progress: bool = False) -> dict:
    """Read one connector task, conform its records to the schema and commit them.

    Records and rejects go to part files while the connector reads (``StagedOutput.task_parts``),
    so a task's memory does not grow with its input: a GBIF archive larger than memory works.
    ``progress``: a bar of the rows read so far (for a task run in the CLI's own process).
    The ``cursor`` of the last batch that has one (a pull that continues) is committed in the
    task's counts, with its records.
    """
    from tqdm import tqdm

    task_id = f"{task_index:05d}"
    skipped: Counter = Counter()
    n_in = 0
    cursor = None
    with staged.task_parts(task_id) as parts, \
            tqdm(desc=f"ingest {connector.name}", unit=" rows", unit_scale=True, disable=not progress) as bar:
        for batch in connector.read(task, options):
            rows = batch.records.num_rows + batch.rejects.num_rows
            n_in += rows
            good, bad = conform(batch.records, stage="ingest")
            parts.add(good, _rejects(batch.rejects))
            parts.add(None, bad)
            skipped.update(batch.skipped)
            cursor = batch.cursor if batch.cursor is not None else cursor
            bar.update(rows)
    check_accounting(f"ingest[{connector.name}:{task}]", n_in, parts.rows, parts.rejected)
    counts = {"task_id": task_id, "in": n_in, "out": parts.rows, "rejected": parts.rejected,
              "rejected_by_reason": dict(sorted(parts.reasons.items())), "task": task, "skipped": dict(skipped)}
    if cursor is not None:
        counts["cursor"] = cursor
    staged.commit_counts(task_id, counts, parts)
    return counts


def _counts(task_id: str, n_in: int, n_out: int, rejects: pa.Table) -> dict:
    reasons = Counter(rejects.column("reason").to_pylist()) if rejects.num_rows else Counter()
    return {"task_id": task_id, "in": n_in, "out": n_out, "rejected": rejects.num_rows,
            "rejected_by_reason": dict(sorted(reasons.items()))}


def summarise(stage_name: str, task_counts: list[dict], expected_in: int | None = None) -> dict:
    """Merge per-task counts into stage stats and check nothing was lost overall."""
    total_in = sum(c["in"] for c in task_counts)
    total_out = sum(c["out"] for c in task_counts)
    total_rej = sum(c["rejected"] for c in task_counts)
    if expected_in is not None and expected_in != total_in:
        check_accounting(stage_name, expected_in, total_out, total_rej)
    check_accounting(stage_name, total_in, total_out, total_rej)
    reasons: Counter = Counter()
    skipped: Counter = Counter()
    for c in task_counts:
        reasons.update(c["rejected_by_reason"])
        skipped.update(c.get("skipped", {}))
    stats = {"stage": stage_name, "in": total_in, "out": total_out, "rejected": total_rej,
             "rejected_by_reason": dict(sorted(reasons.items())), "tasks": len(task_counts)}
    if skipped:
        stats["skipped"] = dict(sorted(skipped.items()))
    return stats


def table_to_ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def ipc_to_table(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def expected_rows(inputs: list[Path]) -> int:
    return sum(count_rows(f) for f in inputs)
