"""A task's output is written part by part while it runs: an ingest's memory does not grow with its input."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.io
from pipeline.io import StagedOutput, parquet_files
from pipeline.runners.tasks import ingest_task
from sources.gbif import CONNECTOR, Options

DATA = Path(__file__).resolve().parents[1] / "data" / "gbif" / "dwca"
ARCHIVES = sorted(DATA.glob("*.zip"))


def _staged(root: Path) -> StagedOutput:
    staged = StagedOutput(root, "ingest-gbif", root / "raw", root / "rejects", "fp")
    staged.open()
    return staged


def _rows(folder: Path) -> pa.Table | None:
    parts = [pq.read_table(p) for p in parquet_files(folder)]
    return pa.concat_tables(parts) if parts else None


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in parquet_files(folder))


class _Watched:
    """The GBIF connector, noting before each batch how many part files the task has written."""

    name = "gbif"

    def __init__(self, staged: StagedOutput):
        self.staged, self.seen = staged, []

    def read(self, task, options):
        for batch in CONNECTOR.read(task, options):
            self.seen.append(len(list(self.staged.attempts_dir.rglob("part-*.parquet"))))
            yield batch


@pytest.mark.parametrize("archive", ARCHIVES, ids=lambda p: p.name)
def test_ingest_writes_parts_while_the_connector_reads(tmp_path, monkeypatch, archive):
    whole = _staged(tmp_path / "whole")
    counts_whole = ingest_task(CONNECTOR, Options(batch_rows=10), 0, str(archive), whole)

    monkeypatch.setattr(pipeline.io, "PART_ROWS", 7)
    staged = _staged(tmp_path / "parts")
    watched = _Watched(staged)
    counts = ingest_task(watched, Options(batch_rows=10), 0, str(archive), staged)

    assert len(watched.seen) > 2
    assert watched.seen[-1] > 0, "nothing was written before the connector's last batch"
    assert counts["in"] == counts["out"] + counts["rejected"] == counts_whole["in"]
    assert {k: v for k, v in counts.items()} == counts_whole
    assert staged.task_done("00000") == counts  # the manifest's counts, without the attempt's name
    for s in (whole, staged):
        s.finalise({})
    for kind in ("out_dir", "rejects_dir"):
        rows, rows_whole = _rows(getattr(staged, kind)), _rows(getattr(whole, kind))
        expected = counts["out" if kind == "out_dir" else "rejected"]
        assert (rows.num_rows if rows is not None else 0) == expected
        if expected:  # the same rows in the same order as when written at the task's end
            assert rows.equals(rows_whole)
            parts = parquet_files(getattr(staged, kind))
            assert parts[0].name == "part-00000-0000.parquet" and len(parts) > 2
            sizes = [pq.ParquetFile(p).metadata.num_rows for p in parts]
            assert min(sizes[:-1]) >= 7  # a part is written once 7 rows are pending


def test_a_small_task_is_one_part_named_by_the_task(tmp_path):
    staged = _staged(tmp_path)
    with staged.task_parts("00003") as parts:
        parts.add(pa.table({"a": [1, 2]}), None)
        parts.add(pa.table({"a": [3]}), None)
    assert _names(staged.attempts_dir / parts.attempt / "out") == ["part-00003.parquet"]
    assert parts.rows == 3 and parts.rejected == 0
    staged.commit_counts("00003", {"task_id": "00003", "out": 3}, parts)
    staged.finalise({})
    assert _names(staged.out_dir) == ["part-00003.parquet"]
    assert pq.read_table(staged.out_dir / "part-00003.parquet").column("a").to_pylist() == [1, 2, 3]
    assert not staged.staging.exists()


def _attempt(staged: StagedOutput, task: str, values: list[int], part_rows: int, commit: bool = True) -> str:
    with staged.task_parts(task, part_rows=part_rows) as parts:
        for v in values:
            parts.add(pa.table({"a": [v]}), None)
    if commit:
        staged.commit_counts(task, {"task_id": task, "out": len(values)}, parts)
    return parts.attempt


def test_a_killed_attempts_parts_never_reach_the_output(tmp_path):
    staged = _staged(tmp_path)
    _attempt(staged, "00001", list(range(5)), part_rows=1, commit=False)  # killed before its commit
    _attempt(staged, "00010", [99], part_rows=1)
    assert staged.task_done("00001") is None
    _attempt(staged, "00001", list(range(5)), part_rows=2)  # the rerun makes fewer, larger parts
    staged.finalise({})
    names = _names(staged.out_dir)
    assert names == ["part-00001-0000.parquet", "part-00001-0001.parquet", "part-00001-0002.parquet",
                     "part-00010-0000.parquet"]
    got = [pq.read_table(staged.out_dir / n).column("a").to_pylist() for n in names]
    assert got == [[0, 1], [2, 3], [4], [99]]


def test_two_attempts_of_one_task_at_once_do_not_touch_each_others_parts(tmp_path):
    """Speculative execution (Spark's speculation, a zombie worker): a second attempt starts while
    the first is writing, the first commits, the second is killed half-way. The first's parts
    are all in the output; a second attempt that commits later is kept instead, whole."""
    staged = _staged(tmp_path)
    first = staged.task_parts("00002", part_rows=1)
    with first:
        first.add(pa.table({"a": [0]}), None)
        first.add(pa.table({"a": [1]}), None)
        with staged.task_parts("00002", part_rows=1) as second:  # starts while the first writes
            second.add(pa.table({"a": [0]}), None)
        first.add(pa.table({"a": [2]}), None)
    staged.commit_counts("00002", {"task_id": "00002", "out": 3}, first)  # the second never commits
    staged.finalise({})
    assert [pq.read_table(p).column("a").to_pylist() for p in parquet_files(staged.out_dir)] == [[0], [1], [2]]

    later = _staged(tmp_path / "later")  # both commit: the last commit is the one kept
    a = _attempt(later, "00002", [0, 1, 2], part_rows=1)
    b = _attempt(later, "00002", [5, 6], part_rows=2)
    assert a != b
    later.finalise({})
    assert [pq.read_table(p).column("a").to_pylist() for p in parquet_files(later.out_dir)] == [[5, 6]]


def test_a_finalise_killed_while_gathering_is_completed_by_the_next(tmp_path, monkeypatch):
    staged = _staged(tmp_path)
    for task in ("00000", "00001"):
        _attempt(staged, task, [int(task), 10 + int(task)], part_rows=1)
    real, moved = pipeline.io.os.replace, []

    def dies_after_one(src, dst):
        if str(src).endswith(".parquet") and moved:
            raise KeyboardInterrupt("killed")
        moved.append(dst)
        real(src, dst)

    monkeypatch.setattr(pipeline.io.os, "replace", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        staged.finalise({})
    monkeypatch.setattr(pipeline.io.os, "replace", real)
    assert len(moved) == 1 and staged.finished() is None
    staged.finalise({})
    assert [pq.read_table(p).column("a").to_pylist() for p in parquet_files(staged.out_dir)] == [[0], [10], [1], [11]]


def test_a_committed_part_that_is_gone_fails_the_finalise_and_the_task_is_redone(tmp_path):
    staged = _staged(tmp_path)
    _attempt(staged, "00003", [7], part_rows=1)
    attempt = _attempt(staged, "00004", [1, 2, 3], part_rows=1)
    (staged.attempts_dir / attempt / "out" / "part-00004-0001.parquet").unlink()
    with pytest.raises(RuntimeError, match="task 00004 committed out part part-00004-0001.parquet.*run the stage again"):
        staged.finalise({})
    assert staged.finished() is None and not staged.out_dir.exists()
    assert staged.task_done("00004") is None and staged.task_done("00003") is not None
    assert _names(staged.staged_out) == ["part-00003-0000.parquet"]  # the taken-back task's moved part is gone
    _attempt(staged, "00004", [1, 2, 3], part_rows=1)  # the next run redoes only that task
    staged.finalise({})
    assert [pq.read_table(p).column("a").to_pylist() for p in parquet_files(staged.out_dir)] == [[7], [1], [2], [3]]


def test_an_error_inside_the_task_leaves_it_uncommitted(tmp_path):
    staged = _staged(tmp_path)
    with pytest.raises(RuntimeError), staged.task_parts("00000", part_rows=1) as parts:
        parts.add(pa.table({"a": [1]}), None)
        raise RuntimeError("the source broke")
    assert staged.task_done("00000") is None


def test_record_parts_keep_no_dictionary_nor_min_max_for_per_record_columns(tmp_path):
    from pipeline.io import atomic_write_parquet
    from schemas.record import UNIQUE_COLUMNS, from_rows

    rows = [{"record_id": f"t-{i}", "source": "t", "identifier": f"http://x/{i}.jpg", "license": "cc0-1.0"}
            for i in range(50)]
    atomic_write_parquet(from_rows(rows), tmp_path / "r.parquet")
    meta = pq.ParquetFile(tmp_path / "r.parquet").metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    for name in UNIQUE_COLUMNS:
        assert "RLE_DICTIONARY" not in columns[name].encodings and not columns[name].is_stats_set
    assert "RLE_DICTIONARY" in columns["license"].encodings and columns["license"].statistics.has_min_max
    # a table with a nested column keeps arrow's defaults (the options name leaf paths)
    atomic_write_parquet(pa.table({"record_id": ["a", "b"], "tags": [["x"], ["y"]]}), tmp_path / "n.parquet")
    nested = pq.ParquetFile(tmp_path / "n.parquet").metadata.row_group(0)
    assert all("RLE_DICTIONARY" in nested.column(i).encodings for i in range(nested.num_columns))


def test_a_failed_part_write_fails_the_task(tmp_path, monkeypatch):
    staged = _staged(tmp_path)

    def broken(table, path):
        raise OSError(f"disk full writing {path.name}")

    monkeypatch.setattr(pipeline.io, "atomic_write_parquet", broken)
    with pytest.raises(OSError, match="disk full writing part-00000-0000"):  # noqa: PT012
        with staged.task_parts("00000", part_rows=1) as parts:
            parts.add(pa.table({"a": [1]}), None)  # written in the background
            parts.add(pa.table({"a": [2]}), None)  # waits for the first write: its error comes here
    assert staged.task_done("00000") is None


def test_a_task_run_in_the_cli_shows_the_rows_it_read(tmp_path, capsys):
    counts = ingest_task(CONNECTOR, Options(batch_rows=50), 0, str(ARCHIVES[0]), _staged(tmp_path), progress=True)
    err = capsys.readouterr().err
    assert "ingest gbif" in err and f"{counts['in']} rows" in err
    ingest_task(CONNECTOR, Options(batch_rows=50), 0, str(ARCHIVES[0]), _staged(tmp_path / "quiet"))
    assert "ingest gbif" not in capsys.readouterr().err
