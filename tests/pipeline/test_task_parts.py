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


class _Watched:
    """The GBIF connector, noting before each batch how many part files the task has written."""

    name = "gbif"

    def __init__(self, staged: StagedOutput):
        self.staged, self.seen = staged, []

    def read(self, task, options):
        for batch in CONNECTOR.read(task, options):
            self.seen.append(len(parquet_files(self.staged.staged_out)) + len(parquet_files(self.staged.staged_rejects)))
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
    for kind in ("staged_out", "staged_rejects"):
        rows, rows_whole = _rows(getattr(staged, kind)), _rows(getattr(whole, kind))
        expected = counts["out" if kind == "staged_out" else "rejected"]
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
    assert [p.name for p in parquet_files(staged.staged_out)] == ["part-00003.parquet"]
    assert pq.read_table(staged.staged_out / "part-00003.parquet").column("a").to_pylist() == [1, 2, 3]
    assert parts.rows == 3 and parts.rejected == 0


def test_a_redone_task_removes_what_a_killed_attempt_wrote(tmp_path):
    staged = _staged(tmp_path)
    with staged.task_parts("00001", part_rows=1) as parts:
        for v in range(5):
            parts.add(pa.table({"a": [v]}), None)
    neighbour = staged.staged_out / "part-00010.parquet"
    pq.write_table(pa.table({"a": [99]}), neighbour)
    assert len(parquet_files(staged.staged_out)) == 6
    with staged.task_parts("00001", part_rows=2) as parts:  # the rerun makes fewer, larger parts
        for v in range(5):
            parts.add(pa.table({"a": [v]}), None)
    names = sorted(p.name for p in parquet_files(staged.staged_out))
    assert names == ["part-00001-0000.parquet", "part-00001-0001.parquet", "part-00001-0002.parquet",
                     "part-00010.parquet"]
    got = [pq.read_table(staged.staged_out / n).column("a").to_pylist() for n in names[:3]]
    assert got == [[0, 1], [2, 3], [4]]


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
