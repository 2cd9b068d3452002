"""Parquet datasets on disk: atomic part files, staged stage outputs, fingerprints and run records."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import REJECT_SCHEMA, SCHEMA_VERSION
from schemas.record import UNIQUE_COLUMNS

SUCCESS = "_SUCCESS"
STATS = "_stats.json"
# Parquet settings that make a rerun byte-identical (no timestamps, fixed row groups)
_PARQUET = dict(compression="zstd", compression_level=1, row_group_size=128 * 1024, write_statistics=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    if "\\ud" in text:  # lone surrogates (a file name that was not UTF-8) or a pair (an emoji): check
        text = json.dumps(_valid_text(obj), indent=2, sort_keys=True, default=str)
    atomic_write_bytes(path, (text + "\n").encode())


def _valid_text(obj: Any) -> Any:
    """``obj`` with every string that holds lone surrogates (undecodable bytes of a file name)
    written with those bytes as ``\\xNN``, so the JSON is valid for strict readers (DuckDB)."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {_valid_text(k): _valid_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_valid_text(v) for v in obj]
    return obj


def parquet_options(table: pa.Table) -> dict:
    """:data:`_PARQUET`, and for a table of record columns no dictionary nor min/max for the
    per-record ones (:data:`schemas.record.UNIQUE_COLUMNS`): ~30% less time to write records."""
    if not set(UNIQUE_COLUMNS) & set(table.column_names) or any(pa.types.is_nested(f.type) for f in table.schema):
        return _PARQUET  # (names in these options are leaf paths: a nested column would lose both)
    repeating = [c for c in table.column_names if c not in UNIQUE_COLUMNS]
    return {**_PARQUET, "use_dictionary": repeating, "write_statistics": repeating}


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, **parquet_options(table))
    os.replace(tmp, path)


def parquet_files(path: Path) -> list[Path]:
    """The data files of a dataset folder (recursive, sorted; hidden and ``_`` files skipped)."""
    if path.is_file():
        return [path]
    if not path.exists():
        return []
    return sorted(
        p for p in path.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )


def read_dataset(path: Path, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
    """Every data file of a dataset as one table (only ``columns`` when given)."""
    files = parquet_files(path)
    if not files:
        return schema.empty_table() if schema is not None else pa.table({})
    tables = [pq.read_table(f, columns=columns) for f in files]
    if schema is not None:
        tables = [t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables, promote_options="default")


def count_rows(path: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


def fingerprint(*parts: Any) -> str:
    """A short stable hash of the stage name, its options hash and its input files' identities."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:20]


def files_identity(files: list[Path], base: Path | None = None) -> list[tuple[str, int, int]]:
    """Each file's name, size and modification time, for a fingerprint. ``base``: names relative
    to that folder (a stage's input dataset), so a data root moved or copied with its times kept
    (``mv``, ``cp -a``, ``rsync -a``) still holds finished stages."""
    out = []
    for f in files:
        st = f.stat()
        name = str(f.relative_to(base)) if base is not None and f.is_relative_to(base) else str(f)
        out.append((name, st.st_size, st.st_mtime_ns))
    return out


PART_ROWS = 250_000  # a task's rows per part file, about: bounds the memory of the task and of the stages reading it


class _PartSeries:
    """Tables appended to one folder as ``part-<task>.parquet``, or ``part-<task>-<j>.parquet``
    when there are several: a part is written once ``part_rows`` rows are pending."""

    def __init__(self, folder: Path, task_id: str, part_rows: int, writer: _Writer, schema: pa.Schema | None = None):
        self.folder, self.task_id, self.part_rows, self.writer, self.schema = folder, task_id, part_rows, writer, schema
        self.pending: list[pa.Table] = []
        self.pending_rows = self.written = self.rows = 0
        self.names: list[str] = []  # the parts written, in order

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.pending.append(table.select(self.schema.names).cast(self.schema) if self.schema is not None else table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= self.part_rows:
            self._write(f"part-{self.task_id}-{self.written:04d}.parquet")

    def close(self) -> None:
        if self.pending_rows:
            self._write(f"part-{self.task_id}.parquet" if not self.written else
                        f"part-{self.task_id}-{self.written:04d}.parquet")

    def _write(self, name: str) -> None:
        table = self.pending[0] if len(self.pending) == 1 else pa.concat_tables(self.pending)
        self.pending, self.pending_rows = [], 0
        self.writer.write(table, self.folder / name)
        self.names.append(name)
        self.written += 1


class _Writer:
    """Writes parts in a background thread, one at a time: the task goes on making the next part
    while the last one is encoded (Parquet encoding releases the GIL). An error surfaces at the
    next write or at :meth:`wait`."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future | None = None

    def write(self, table: pa.Table, path: Path) -> None:
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="part-writer")
        self._last = self._pool.submit(atomic_write_parquet, table, path)

    def wait(self) -> None:
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def shutdown(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None


class TaskParts:
    """One task's output and rejects written while the task runs, so its memory holds about a
    part (``part_rows`` rows) of each, however many rows the task makes. Use it as a context
    manager; ``rows`` / ``rejected`` / ``reasons`` count what was written; ``attempt`` names the
    attempt's folder (see :meth:`StagedOutput.task_parts`)."""

    def __init__(self, out_dir: Path, rejects_dir: Path, task_id: str, part_rows: int, attempt: str):
        self.attempt = attempt
        self._writer = _Writer()
        self._out = _PartSeries(out_dir, task_id, part_rows, self._writer)
        self._rejects = _PartSeries(rejects_dir, task_id, part_rows, self._writer, REJECT_SCHEMA)
        self.reasons: Counter = Counter()

    def add(self, out: pa.Table | None, rejects: pa.Table | None) -> None:
        if out is not None:
            self._out.add(out)
        if rejects is not None and rejects.num_rows:
            for item in pc.value_counts(rejects.column("reason")).to_pylist():
                self.reasons[item["values"]] += item["counts"]
            self._rejects.add(rejects)

    @property
    def rows(self) -> int:
        return self._out.rows

    @property
    def files(self) -> dict[str, list[str]]:
        """The part files written so far: ``{"out": [...], "rejects": [...]}``."""
        return {"out": list(self._out.names), "rejects": list(self._rejects.names)}

    @property
    def rejected(self) -> int:
        return self._rejects.rows

    def close(self) -> None:
        """Write what is pending and wait until every part is on disk."""
        try:
            self._out.close()
            self._rejects.close()
        finally:
            self._writer.shutdown()

    def __enter__(self) -> TaskParts:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:  # the task failed: let a write in flight finish, commit nothing
            try:
                self._writer.shutdown()
            except Exception:  # noqa: BLE001 - the task's own error is the one to raise
                pass


@dataclass
class StagedOutput:
    """A stage's output being built in ``<root>/.staging/<key>/`` and moved into place when done.

    Each attempt of a task writes its parts into a folder of its own, then commits the task by
    its manifest, which names that attempt; :meth:`finalise` moves the committed attempts'
    parts into the output. A kill at any point leaves committed tasks and debris that never
    reaches the output, and two attempts of one task at once (speculative execution) never
    touch each other's files: the last to commit is the one kept.
    """

    root: Path
    key: str
    out_dir: Path
    rejects_dir: Path
    fp: str

    @property
    def staging(self) -> Path:
        return self.root / ".staging" / self.key

    @property
    def staged_out(self) -> Path:
        return self.staging / "out"

    @property
    def staged_rejects(self) -> Path:
        return self.staging / "rejects"

    @property
    def tasks_dir(self) -> Path:
        return self.staging / "_tasks"

    @property
    def attempts_dir(self) -> Path:
        return self.staging / "_attempts"

    def finished(self) -> dict | None:
        """The stats of a previous complete run with the same fingerprint, else None."""
        marker = self.out_dir / SUCCESS
        if marker.is_file():
            info = json.loads(marker.read_text())
            if info.get("fingerprint") == self.fp:
                return info
        return None

    def open(self) -> None:
        """Create the staging folder, or keep it if it belongs to this fingerprint (resume)."""
        fp_file = self.staging / "_fingerprint"
        if self.staging.exists() and (not fp_file.is_file() or fp_file.read_text() != self.fp):
            shutil.rmtree(self.staging)
        if (self.staging / "_moving").exists():
            return  # killed while moving into place: finalise() completes the move
        for d in (self.staged_out, self.staged_rejects, self.tasks_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not fp_file.is_file():
            atomic_write_bytes(fp_file, self.fp.encode())

    def task_done(self, task_id: str) -> dict | None:
        f = self.tasks_dir / f"{task_id}.json"
        return _counts_of(f) if f.is_file() else None

    def task_parts(self, task_id: str, part_rows: int | None = None) -> TaskParts:
        """A writer of one task's output and rejects, part file by part file as rows come.

        The parts go to this attempt's own folder, ``_attempts/<task>-<token>/{out,rejects}/``,
        named as they will be in the output. Once it is closed, :meth:`commit_counts` with the
        task's counts and ``parts`` commits the task.
        """
        attempt = f"{task_id}-{uuid.uuid4().hex[:12]}"
        folder = self.attempts_dir / attempt
        return TaskParts(folder / "out", folder / "rejects", task_id, part_rows or PART_ROWS, attempt)

    def commit_task(self, task_id: str, outs: list[pa.Table], rejects: pa.Table, counts: dict) -> None:
        """Write a task's parts, then its manifest: the manifest is the task's commit point."""
        with self.task_parts(task_id) as parts:
            for out in outs:
                parts.add(out, None)
            parts.add(None, rejects)
        self.commit_counts(task_id, counts, parts)

    def commit_counts(self, task_id: str, counts: dict, parts: TaskParts) -> None:
        """Write the manifest of a task whose ``parts`` are closed: its counts, the attempt and
        the attempt's part files. From now on the task is done."""
        atomic_write_json(self.tasks_dir / f"{task_id}.json",
                          {**counts, _ATTEMPT: parts.attempt, _PARTS: parts.files})

    def task_counts(self) -> list[dict]:
        return [_counts_of(f) for f in sorted(self.tasks_dir.glob("*.json"))]

    def _gather_attempts(self) -> None:
        """Move each committed attempt's parts into the staged output; drop every other attempt.

        Idempotent, so a finalise killed half-way is completed by the next one: a part already
        moved is in place, and its attempt's folder no longer holds it.
        """
        for manifest in sorted(self.tasks_dir.glob("*.json")):
            committed = json.loads(manifest.read_text())
            attempt = committed.get(_ATTEMPT)
            if attempt is None:  # staged before attempts had folders: its parts are in place already
                continue
            dests = {"out": self.staged_out, "rejects": self.staged_rejects}
            for kind, dest in dests.items():
                dest.mkdir(parents=True, exist_ok=True)
                for name in committed[_PARTS][kind]:
                    part = self.attempts_dir / attempt / kind / name
                    if part.is_file():
                        os.replace(part, dest / name)
                    elif not (dest / name).is_file():  # neither still there nor already moved
                        self._uncommit(manifest, committed, dests)
                        raise RuntimeError(
                            f"{self.key}: task {manifest.stem} committed {kind} part {name}, which is in "
                            f"neither {part.parent} nor {dest}; the task is no longer committed: run the "
                            "stage again to redo it")
        shutil.rmtree(self.attempts_dir, ignore_errors=True)

    def _uncommit(self, manifest: Path, committed: dict, dests: dict[str, Path]) -> None:
        """Take back a task whose committed parts are not all there: its parts already moved
        and its manifest are removed, so that the next run redoes the task from its start."""
        for kind, dest in dests.items():
            for name in committed[_PARTS][kind]:
                (dest / name).unlink(missing_ok=True)
        manifest.unlink()

    def finalise(self, stats: dict) -> None:
        """Move the staged output into place, then write the success marker (the commit point).

        A ``_moving`` marker makes the move resumable: a folder already moved is not staged any
        more and is left where it is.
        """
        if not (self.staging / "_moving").exists():  # (once moving, the attempts are gathered)
            self._gather_attempts()
        atomic_write_bytes(self.staging / "_moving", b"")
        for staged, final in ((self.staged_rejects, self.rejects_dir), (self.staged_out, self.out_dir)):
            if not staged.exists():
                continue
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        atomic_write_json(self.out_dir / STATS, stats)
        atomic_write_json(self.out_dir / SUCCESS, {"fingerprint": self.fp, **stats})
        shutil.rmtree(self.staging, ignore_errors=True)


_ATTEMPT, _PARTS = "_attempt", "_parts"  # the manifest's keys naming the committed attempt and its files


def _counts_of(manifest: Path) -> dict:
    """A task's counts from its manifest (without the attempt's name and files)."""
    counts = json.loads(manifest.read_text())
    counts.pop(_ATTEMPT, None)
    counts.pop(_PARTS, None)
    return counts


def new_run_id(stage: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{stage}-{uuid.uuid4().hex[:6]}"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "schema": SCHEMA_VERSION}
    for pkg in ("biocorpus", "pyarrow", "polars", "duckdb", "apache-beam", "pillow", "webdataset", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_run_record(root: Path, run_id: str, record: dict) -> Path:
    path = root / "runs" / run_id / "run.json"
    atomic_write_json(path, {"run_id": run_id, "versions": versions(), "host": platform.node(), **record})
    return path
