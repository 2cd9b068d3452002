"""The stage contract as run by both runners: parity, idempotence, resume after SIGKILL, accounting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.execute import run_table_stage
from pipeline.io import atomic_write_parquet, parquet_files, read_dataset
from pipeline.runners import make_runner
from pipeline.stage import AccountingError, MapStage, StageOutput
from schemas.record import from_rows, make_record_id
from tests.pipeline.toystages import TOY_GLOBAL, TOY_MAP

REPO = Path(__file__).resolve().parents[2]


def _inputs(root: Path, files: int = 4, rows: int = 25) -> None:
    for i in range(files):
        recs = [dict(record_id=make_record_id("t", f"{i}-{j}"), source="t",
                     identifier=("bad" if j % 7 == 0 else "http://x/") + str(j), photo_key=f"p{(i * rows + j) % 9}")
                for j in range(rows)]
        atomic_write_parquet(from_rows(recs), root / "in" / f"part-{i}.parquet")


def _parts(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in parquet_files(path)}


def _run_both(root: Path, stage, src: str, runner: str, **kw):
    return run_table_stage(stage, None, root, root / src, root / f"{stage.name}-{runner}",
                           make_runner(runner, workers=2), key=f"{stage.name}-{runner}", **kw)


@pytest.mark.beam
def test_local_and_beam_give_identical_output(tmp_path):
    _inputs(tmp_path)
    for runner in ("local", "beam"):
        m = _run_both(tmp_path, TOY_MAP, "in", runner)
        assert m.stats["in"] == 100 and m.stats["out"] + m.stats["rejected"] == 100
        g = run_table_stage(TOY_GLOBAL, None, tmp_path, tmp_path / f"toymap-{runner}",
                            tmp_path / f"toyglobal-{runner}", make_runner(runner), key=f"toyglobal-{runner}")
        assert g.stats["out"] == 9  # one survivor per photo key
    assert _parts(tmp_path / "toymap-local") == _parts(tmp_path / "toymap-beam")
    assert _parts(tmp_path / "toyglobal-local") == _parts(tmp_path / "toyglobal-beam")
    assert _parts(tmp_path / "rejects" / "stage=toyglobal-local") == _parts(tmp_path / "rejects" / "stage=toyglobal-beam")


def test_rerun_does_nothing_and_output_is_identical(tmp_path, capsys):
    _inputs(tmp_path)
    first = _run_both(tmp_path, TOY_MAP, "in", "local")
    before = _parts(first.out_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in parquet_files(first.out_dir)}
    second = _run_both(tmp_path, TOY_MAP, "in", "local")
    assert second.skipped and "nothing to do" in capsys.readouterr().err
    assert _parts(second.out_dir) == before
    assert {p: p.stat().st_mtime_ns for p in parquet_files(first.out_dir)} == mtimes
    forced = _run_both(tmp_path, TOY_MAP, "in", "local", force=True)
    assert not forced.skipped and _parts(forced.out_dir) == before


def test_changed_input_reruns(tmp_path):
    _inputs(tmp_path)
    _run_both(tmp_path, TOY_MAP, "in", "local")
    _inputs(tmp_path, files=5)
    again = _run_both(tmp_path, TOY_MAP, "in", "local")
    assert not again.skipped and again.stats["in"] == 125


def test_rejects_and_stats_are_written(tmp_path):
    _inputs(tmp_path)
    res = _run_both(tmp_path, TOY_MAP, "in", "local")
    rejects = read_dataset(tmp_path / "rejects" / "stage=toymap-local")
    assert rejects.num_rows == res.stats["rejected"] == 16
    assert set(rejects.column("reason").to_pylist()) == {"image_type"}
    assert res.stats["rejected_by_reason"] == {"image_type": 16}
    run_json = tmp_path / "runs" / res.run_id / "run.json"
    assert run_json.is_file() and '"counts"' in run_json.read_text()
    assert read_dataset(res.out_dir).column("source").unique().to_pylist() == ["T"]


def _lossy(batch: pa.Table, ctx) -> StageOutput:
    return StageOutput(batch.slice(1))


LOSSY = MapStage("lossy", _lossy)


def test_a_stage_that_loses_records_fails(tmp_path):
    _inputs(tmp_path, files=1)
    with pytest.raises(AccountingError, match="lost records"):
        run_table_stage(LOSSY, None, tmp_path, tmp_path / "in", tmp_path / "out", make_runner("local", 1))
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize("runner", ["local", pytest.param("beam", marks=pytest.mark.beam)])
def test_sigkill_mid_stage_then_rerun_equals_uninterrupted(tmp_path, runner):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for root in (clean, killed):
        _inputs(root, files=8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "tests.pipeline.killable", str(clean), runner], env=env, check=True,
                   cwd=REPO, capture_output=True, timeout=120)
    proc = subprocess.Popen([sys.executable, "-m", "tests.pipeline.killable", str(killed), runner], cwd=REPO,
                            env={**env, "TOY_STAGE_SLEEP": "0.4"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    tasks_dir = killed / ".staging" / "toymap" / "_tasks"
    while time.time() < deadline and len(list(tasks_dir.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    committed = len(list(tasks_dir.glob("*.json")))
    assert 0 < committed < 8, "the kill should land mid-stage"
    assert not (killed / "out" / "_SUCCESS").exists()
    subprocess.run([sys.executable, "-m", "tests.pipeline.killable", str(killed), runner], env=env, check=True,
                   cwd=REPO, capture_output=True, timeout=120)
    assert _parts(killed / "out") == _parts(clean / "out")
    assert _parts(killed / "rejects" / "stage=toymap") == _parts(clean / "rejects" / "stage=toymap")
    out = read_dataset(killed / "out")
    assert out.num_rows == len(set(out.column("record_id").to_pylist())) == 8 * 25 - 8 * 4


@pytest.mark.parametrize("whole_group", [True, False], ids=["ctrl-c", "sigint-to-main-process"])
def test_interrupted_local_pool_ends_quietly_then_resumes(tmp_path, whole_group):
    """Ctrl-C reaches every process of the group; ``kill -INT`` the main one alone. Either way the
    run ends at once with one line (no worker's traceback, no waiting for the other tasks), and a
    rerun gives the uninterrupted output."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for root in (clean, killed):
        _inputs(root, files=8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.pipeline.killable"]
    subprocess.run([*cmd, str(clean), "local", "2"], env=env, check=True, cwd=REPO, capture_output=True, timeout=120)
    proc = subprocess.Popen([*cmd, str(killed), "local", "2"], cwd=REPO, env={**env, "TOY_STAGE_SLEEP": "1.5"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    tasks_dir = killed / ".staging" / "toymap" / "_tasks"
    deadline = time.time() + 60
    while time.time() < deadline and not list(tasks_dir.glob("*.json")):
        time.sleep(0.05)
    assert list(tasks_dir.glob("*.json")), "no task finished in time"
    (os.killpg if whole_group else os.kill)(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "interrupted"
    assert len(list(tasks_dir.glob("*.json"))) < 8, "the pool should not have run the remaining tasks"
    assert not (killed / "out" / "_SUCCESS").exists()
    subprocess.run([*cmd, str(killed), "local", "2"], env=env, check=True, cwd=REPO, capture_output=True, timeout=120)
    assert _parts(killed / "out") == _parts(clean / "out")


def test_parquet_output_is_queryable_by_duckdb(tmp_path):
    import duckdb

    _inputs(tmp_path)
    res = _run_both(tmp_path, TOY_MAP, "in", "local")
    con = duckdb.connect()
    n = con.execute(f"SELECT count(*) FROM read_parquet('{res.out_dir}/*.parquet')").fetchone()[0]
    assert n == res.stats["out"] == sum(pq.read_metadata(f).num_rows for f in parquet_files(res.out_dir))


def test_a_moved_data_root_still_holds_its_finished_stages(tmp_path):
    """A fingerprint names its input files relative to the input dataset: ``mv`` or ``cp -a`` of a
    data root (times kept) does not redo its stages; a changed file still does."""
    import shutil

    first = tmp_path / "first"
    _inputs(first)
    run = lambda root: run_table_stage(TOY_MAP, None, root, root / "in", root / "out",  # noqa: E731
                                       make_runner("local", workers=1), key="toymap")
    assert not run(first).skipped
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert run(moved).skipped
    copied = tmp_path / "copied"
    shutil.copytree(moved, copied, copy_function=shutil.copy2)  # as cp -a: times kept
    assert run(copied).skipped
    part = sorted((copied / "in").glob("*.parquet"))[0]
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 1_000_000_000))
    assert not run(copied).skipped


def test_fields_marked_out_of_the_fingerprint_do_not_change_it():
    from pipeline.config import config_hash
    from pipeline.stages.resolve import Options as ResolveOptions

    base = ResolveOptions()
    assert config_hash(base.model_copy(update={"data_root": "/somewhere/else"})) == config_hash(base)
    assert config_hash(base.model_copy(update={"backbone": "col"})) != config_hash(base)
    from pipeline.stages.curate import Options as CurateOptions

    curate = CurateOptions()  # the plan and the spill's buckets give the same chunks
    assert config_hash(curate.model_copy(update={"local_plan": "staged", "chunk_bucket_rows": 30})) == \
        config_hash(curate)
    assert config_hash(curate.model_copy(update={"chunk_size": 30})) != config_hash(curate)


def test_stage_resources_are_not_shared_across_options_the_fingerprint_leaves_out():
    """Two data roots with otherwise equal options have a backbone each, in one process."""
    from pipeline.runners.tasks import resources_for
    from pipeline.stage import StageContext
    from pipeline.stages.resolve import Options as ResolveOptions

    loaded = []
    stage = MapStage("toy-resources", lambda batch, ctx: StageOutput(batch, None),
                     setup=lambda ctx: loaded.append(ctx.options.data_root) or {"root": ctx.options.data_root})
    for root in ("/a", "/b", "/a"):
        ctx = resources_for(stage, StageContext("toy-resources", ResolveOptions(data_root=root)))
        assert ctx.resources["root"] == root
    assert loaded == ["/a", "/b"]
