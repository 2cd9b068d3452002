"""Runs one stage end to end: skip if done, stage, run tasks, check counts, move into place, record."""

from __future__ import annotations

import glob
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import config_hash
from pipeline.io import (
    SUCCESS,
    StagedOutput,
    files_identity,
    fingerprint,
    new_run_id,
    parquet_files,
    write_run_record,
)
from pipeline.runners import tasks
from pipeline.stage import GlobalStage, MapStage, StageContext
from schemas import SCHEMA_VERSION


@dataclass
class StageResult:
    stage: str
    stats: dict
    skipped: bool
    out_dir: Path
    run_id: str | None = None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def _already_done(staged: StagedOutput, what: str, force: bool) -> StageResult | None:
    """The stored result when this exact stage (same fingerprint) has finished, unless forced."""
    done = staged.finished()
    if not done or force:
        return None
    _say(f"{what} (run {done.get('run_id')}); nothing to do")
    return StageResult(staged.key, done, True, staged.out_dir, done.get("run_id"))


def _finish(staged: StagedOutput, runner, stage_name: str, counts: list[dict], expected_in: int | None,
            started: float, config: Any, inputs: list[str], extra: dict | None = None) -> StageResult:
    stats = tasks.summarise(stage_name, counts, expected_in)
    stats.update(extra or {})
    stats["runner"] = runner.name
    stats["seconds"] = round(time.time() - started, 3)
    run_id = new_run_id(stage_name.replace(" ", "-"))
    stats["run_id"] = run_id
    staged.finalise(stats)
    write_run_record(staged.root, run_id, {
        "stage": stage_name, "runner": runner.name, "inputs": inputs,
        "output": str(staged.out_dir), "rejects": str(staged.rejects_dir),
        "config": config.model_dump(mode="json") if config is not None else None,
        "counts": stats,
    })
    _say(f"{stage_name}: {stats['in']} in -> {stats['out']} out + {stats['rejected']} rejected"
         f" ({stats['seconds']} s, run {run_id})")
    return StageResult(stage_name, stats, False, staged.out_dir, run_id)


# rows of full records per bucket of a global stage, about: a decide task holds its bucket whole
# (~1 KB a record in memory), so the bucket count grows with the input past 8 buckets of this many
GLOBAL_BUCKET_ROWS = 500_000


def global_buckets(stage: GlobalStage, rows: int) -> int:
    """Buckets for ``rows`` input rows: the stage's own count, or as many as keep a bucket near
    :data:`GLOBAL_BUCKET_ROWS` rows. Every key's rows still meet in one bucket, so the decisions
    do not depend on the count; only the output's part files do."""
    return max(stage.buckets, -(-rows // GLOBAL_BUCKET_ROWS))


_MADE_BY = {"raw": "biocorpus ingest SOURCE --input PATH", "resolved": "biocorpus resolve",
            "curated": "biocorpus curate"}  # the stage whose output a data root's folder is


def run_table_stage(stage: MapStage | GlobalStage, options: Any, root: Path, input_dir: Path,
                    out_dir: Path, runner, config: Any = None, key: str | None = None,
                    force: bool = False, depends_on: dict | None = None) -> StageResult:
    """Apply a map or global stage to the Parquet dataset ``input_dir``, writing ``out_dir``.

    ``depends_on`` names inputs besides the dataset (a backbone version): they are part of the
    fingerprint, so a new one reruns the stage, and they are recorded in the stats and run.json.
    """
    inputs = parquet_files(input_dir)
    if not inputs and not input_dir.exists():
        before = _MADE_BY.get(input_dir.name)
        raise FileNotFoundError(f"{stage.name}: input {input_dir} does not exist; run "
                                + (f"`{before}` first" if before else "the previous stage first"))
    key = key or stage.name
    identity = [key, config_hash(options), files_identity(inputs, input_dir), type(stage).__name__, depends_on]
    rows = tasks.expected_rows(inputs)
    if isinstance(stage, GlobalStage) and global_buckets(stage, rows) != stage.buckets:
        stage = replace(stage, buckets=global_buckets(stage, rows))
        identity.append({"buckets": stage.buckets})  # a resumed run finds its buckets as they were cut
    fp = fingerprint(*identity)
    staged = StagedOutput(root, key, out_dir, root / "rejects" / f"stage={key}", fp)
    if (done := _already_done(staged, f"{key}: already complete for these inputs and options", force)):
        return done
    started = time.time()
    staged.open()
    ctx = StageContext(stage=stage.name, options=options)
    if isinstance(stage, MapStage):
        counts = runner.run_map(stage, ctx, inputs, staged)
    else:
        counts = runner.run_global(stage, ctx, inputs, staged)
    return _finish(staged, runner, key, counts, rows, started, config,
                   [str(f) for f in inputs], {"depends_on": depends_on} if depends_on else None)


def _task_identity(task: str) -> object:
    """What a task reads, for the fingerprint: the file, the files of a stem (an IFCB bin), or the text."""
    path = Path(re.split(r"::|!", task)[0])
    if path.is_file():
        return files_identity([path])
    siblings = sorted(path.parent.glob(f"{glob.escape(path.name)}.*")) if path.parent.is_dir() else []
    if siblings:
        return files_identity([s for s in siblings if s.is_file()])
    if path.is_dir():
        return files_identity(sorted(p for p in path.rglob("*") if p.is_file()))
    return task


def run_ingest(connector, options: Any, input: str | None, root: Path, runner, dataset: str,
               config: Any = None, force: bool = False) -> StageResult:
    """Ingest one source input into ``raw/source=<name>/dataset=<dataset>/``.

    A query whose pull continues (``connector.continues``, see ``sources.base.Connector``) is kept
    there as pulls, ``pull-<n>/``: each the output of one run of its own (one task, whose cursor is
    committed in the pull's ``_SUCCESS`` with its records). A rerun pulls after the last committed
    pull's cursor and adds a pull; a killed one leaves no pull and is pulled again whole; one that
    finds nothing new keeps nothing and says so; ``--force`` pulls the last one again in its place.
    """
    dataset_dir = root / "raw" / f"source={connector.name}" / f"dataset={dataset}"
    rejects_dir = root / "rejects" / "stage=ingest" / f"source={connector.name}" / f"dataset={dataset}"
    continues = getattr(connector, "continues", None)
    pull = _next_pull(dataset_dir, connector.name, force) if continues and continues(input, options) else None
    task_list = connector.tasks(input, options, after=pull.after) if pull else connector.tasks(input, options)
    if pull and len(task_list) != 1:  # (one cursor to commit: the task's)
        raise RuntimeError(f"ingest {connector.name}: a pull that continues is one task, not {len(task_list)}; "
                           "this is a bug in the connector, please report it")
    if not task_list and input and "://" not in input:
        # a folder without a single file of the source's kind is a wrong INPUT, not an empty dataset
        # (a query or a dashboard whose window holds nothing new is: it runs to 0 records)
        raise FileNotFoundError(f"ingest {connector.name}: nothing to read in {input} (no file of the kind the "
                                f"{connector.name} source reads); check INPUT")
    ident = [_task_identity(t) for t in task_list]
    # the record schema's version: records made under another one (other record ids) are redone
    fp = fingerprint("ingest", connector.name, config_hash(options), ident, SCHEMA_VERSION)
    key = f"ingest-{connector.name}-{dataset}" + (f"-{pull.name}" if pull else "")
    out_dir = dataset_dir / pull.name if pull else dataset_dir
    staged = StagedOutput(root, key, out_dir, rejects_dir / pull.name if pull else rejects_dir, fp)
    where = _input_identity(input)
    if not force:
        _check_same_input(out_dir, where, connector.name, dataset)
    what = input or f"the query (dataset {dataset})"
    if (done := _already_done(staged, f"ingest {connector.name}: already complete for {what}", force)):
        return done
    started = time.time()
    if pull:
        _say(f"ingest {connector.name}: dataset {dataset}, {pull.name}: "
             + (f"the pages after {pull.after}" if pull.after is not None else "from the start of the query"))
    staged.open()
    counts = runner.run_ingest(connector, options, task_list, staged)
    if len(counts) != len(task_list):
        raise RuntimeError(f"ingest {connector.name}: {len(counts)} of {len(task_list)} tasks finished")
    extra = {"source": connector.name, "dataset": dataset, "input": where}
    if pull:
        if not sum(c["in"] for c in counts):
            return _nothing_pulled(staged, pull, connector.name, dataset, counts)
        cursor = next((c["cursor"] for c in reversed(counts) if c.get("cursor") is not None), None)
        if cursor is None:  # the next pull would start over and ingest these records again
            raise RuntimeError(f"ingest {connector.name}: {pull.name} read records but gave no cursor to continue "
                               "from; this is a bug in the connector, please report it")
        extra.update({"pull": pull.name, "after": pull.after, "cursor": cursor})
    return _finish(staged, runner, f"ingest-{connector.name}", counts, None, started, config, task_list, extra)


PULL = "pull-"  # the folders of a dataset whose pull continues: pull-00000, pull-00001...


@dataclass(frozen=True)
class _Pull:
    """The pull an ingest run makes: its folder's name, the cursor it starts after (None: the start
    of the query), and the last pull committed before it (None: none)."""

    name: str
    after: Any
    last: str | None


def _next_pull(dataset_dir: Path, source: str, force: bool) -> _Pull:
    """The pull after the last committed one (whose ``_SUCCESS`` holds the cursor it ended at), or
    with ``force`` the last one again, from where it started."""
    if (dataset_dir / SUCCESS).is_file():
        raise ValueError(f"ingest {source}: {dataset_dir} holds the records of one whole earlier ingest, not the "
                         "pulls of a query that continues; move it aside, or give this query a dataset of its own "
                         "with --dataset NAME")
    done = sorted((int(m.parent.name.removeprefix(PULL)), m) for m in dataset_dir.glob(f"{PULL}*/{SUCCESS}")
                  if m.parent.name.removeprefix(PULL).isdigit())
    if not done:
        return _Pull(f"{PULL}00000", None, None)
    n, marker = done[-1]
    last = json.loads(marker.read_text())
    if force:
        before = done[-2][1].parent.name if len(done) > 1 else None
        return _Pull(marker.parent.name, last.get("after"), before)
    return _Pull(f"{PULL}{n + 1:05d}", last.get("cursor"), marker.parent.name)


def _nothing_pulled(staged: StagedOutput, pull: _Pull, source: str, dataset: str, counts: list[dict]) -> StageResult:
    """A pull that read nothing keeps nothing (no empty pull, so the next run asks again from the
    same cursor); after earlier pulls that is nothing new, and the run is skipped."""
    shutil.rmtree(staged.staging, ignore_errors=True)
    stats = {"stage": f"ingest-{source}", "in": 0, "out": 0, "rejected": 0, "rejected_by_reason": {},
             "tasks": len(counts), "source": source, "dataset": dataset, "after": pull.after, "last_pull": pull.last}
    if (staged.out_dir / SUCCESS).is_file():  # --force of a pull whose pages are gone now
        _say(f"ingest {source}: {pull.name} of dataset {dataset} gave nothing this time; it is kept as it was")
        return StageResult(stats["stage"], stats, True, staged.out_dir)
    if pull.last is None:
        _say(f"ingest {source}: the query gave nothing; no pull kept in dataset {dataset}")
        return StageResult(stats["stage"], stats, False, staged.out_dir)
    _say(f"ingest {source}: nothing new after {pull.after} (the end of {pull.last} of dataset {dataset}); "
         "nothing added, run it again later for what is new by then")
    return StageResult(stats["stage"], stats, True, staged.out_dir.parent)


def _input_identity(input: str | None) -> str | None:
    """What an ingest read, as recorded with its dataset: a local input's absolute path, a URL as
    given, None for an API query (whose dataset name is already the query's hash)."""
    if not input:
        return None
    return input if "://" in input else str(Path(input).resolve())


def _check_same_input(out_dir: Path, where: str | None, source: str, dataset: str) -> None:
    """A dataset folder is named after its input's base name, so two inputs of one name (two
    projects' ``export.tsv``) would meet in one folder, and the second would replace the first's
    records. Refuse that while the earlier input is still there (one that was moved or renamed,
    a clone of the project moved with its samples, is taken to be this one: its records are
    redone as before); datasets made before the input was recorded are not checked."""
    marker = out_dir / SUCCESS
    if where is None or not marker.is_file():
        return
    before = json.loads(marker.read_text()).get("input")
    if before is not None and before != where and ("://" in before or Path(before).exists()):
        raise ValueError(
            f"ingest {source}: {out_dir} holds the records of {before}, not of {where}; give this input a "
            f"dataset name of its own with --dataset NAME (make: DATASET=NAME; e.g. {dataset}-2) to keep both, or pass "
            "--force to replace the earlier records")
