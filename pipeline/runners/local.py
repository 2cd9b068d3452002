"""The local runner (default): stage functions over Parquet files in a process pool on all cores."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.io import StagedOutput, atomic_write_json, atomic_write_parquet
from pipeline.runners import tasks
from pipeline.stage import GlobalStage, MapStage, StageContext


class LocalRunner:
    """Runs tasks in-process for one task, else in a spawn-based pool (forked pools hang gnparser)."""

    name = "local"

    def __init__(self, workers: int = 0, progress: bool = True):
        self.workers = workers or os.cpu_count() or 1
        self.progress = progress and sys.stderr.isatty()

    def _execute(self, label: str, fn: Callable, jobs: list[tuple]) -> list[dict]:
        results: list[dict] = []
        bar = tqdm(total=len(jobs), desc=label, unit="task", disable=not self.progress)
        if len(jobs) <= 1 or self.workers == 1:
            for job in jobs:
                results.append(fn(*job))
                bar.update()
        else:
            with ProcessPoolExecutor(min(self.workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                     initializer=quiet_interrupt) as pool, _Interruptible(pool) as interrupt:
                futures = [pool.submit(fn, *job) for job in jobs]  # (the workers start here)
                interrupt.arm()
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.update()
        bar.close()
        return results

    def run_map(self, stage: MapStage, ctx: StageContext, inputs: list[Path], staged: StagedOutput) -> list[dict]:
        jobs = [(stage, ctx, f"{i:05d}", str(f), staged) for i, f in enumerate(inputs)
                if staged.task_done(f"{i:05d}") is None]
        self._execute(stage.name, tasks.map_task, jobs)
        return staged.task_counts()

    def run_global(self, stage: GlobalStage, ctx: StageContext, inputs: list[Path], staged: StagedOutput) -> list[dict]:
        """Route every input file's rows to buckets on disk, then decide each bucket."""
        route_dir = staged.staging / "_route"
        route_jobs = [(stage, ctx, str(f), f"{i:05d}", route_dir) for i, f in enumerate(inputs)
                      if not (route_dir / f"_done-{i:05d}").exists()]
        self._execute(f"{stage.name}:route", _route_file, route_jobs)
        decide_jobs = [(stage, ctx, b, route_dir, staged) for b in range(stage.buckets)
                       if staged.task_done(f"b{b:05d}") is None]
        self._execute(f"{stage.name}:decide", _decide_bucket, decide_jobs)
        return staged.task_counts()

    def run_ingest(self, connector, options, task_list: list[str], staged: StagedOutput) -> list[dict]:
        jobs = [(connector, options, i, t, staged) for i, t in enumerate(task_list)
                if staged.task_done(f"{i:05d}") is None]
        if len(jobs) == 1 and self.progress:  # one task runs here: show its rows instead of 0/1 tasks
            tasks.ingest_task(*jobs[0], progress=True)
            return staged.task_counts()
        self._execute(f"ingest {connector.name}", tasks.ingest_task, jobs)
        return staged.task_counts()


def quiet_interrupt() -> None:
    """A worker's initializer: Ctrl-C (sent to the whole process group) ends the worker at once,
    without a traceback of its own; the main process says it was interrupted. Every task writes
    its parts atomically, so a rerun resumes from the tasks that had finished."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Interruptible:
    """Ctrl-C around a process pool, in the main thread: one ``KeyboardInterrupt`` in the main
    process and no traceback from any worker.

    Until :meth:`arm`, SIGINT is ignored, so the workers start with it ignored (an ignored signal
    stays ignored across spawn) and a Ctrl-C while one is still importing prints nothing; their
    initializer then lets it end them. Armed, a Ctrl-C raises ``KeyboardInterrupt`` here, ends the
    workers that did not get it themselves, and a pool broken by the workers' own deaths counts as
    the interrupt it was. Elsewhere than in the main thread it does nothing."""

    def __init__(self, pool: ProcessPoolExecutor):
        self.pool = pool
        self.active = threading.current_thread() is threading.main_thread()
        self.interrupted = False

    def __enter__(self) -> _Interruptible:
        if self.active:
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def arm(self) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum, frame) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def __exit__(self, kind, exc, tb) -> bool:  # (runs before the pool's own exit, which waits for its workers)
        if self.active:
            signal.signal(signal.SIGINT, self.previous)
        if kind is not None and (self.interrupted or issubclass(kind, KeyboardInterrupt)):
            workers = list((getattr(self.pool, "_processes", None) or {}).values())  # (shutdown forgets them)
            self.pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:
                proc.terminate()  # (those that Ctrl-C did not reach: a signal to this process alone)
            if not issubclass(kind, KeyboardInterrupt):  # a BrokenProcessPool from the workers' deaths
                raise KeyboardInterrupt from None
        return False


def _route_file(stage: GlobalStage, ctx: StageContext, input_file: str, task_id: str, route_dir: Path) -> dict:
    table = pq.read_table(input_file)
    for bucket, part in tasks.route_table(stage, ctx, table).items():
        atomic_write_parquet(part, route_dir / f"b{bucket:05d}" / f"from-{task_id}.parquet")
    atomic_write_json(route_dir / f"_done-{task_id}", {"rows": table.num_rows})
    return {"rows": table.num_rows}


def _decide_bucket(stage: GlobalStage, ctx: StageContext, bucket: int, route_dir: Path, staged: StagedOutput) -> dict:
    # an empty bucket has no task at all, as with Beam's GroupByKey, so both runners agree
    files = sorted((route_dir / f"b{bucket:05d}").glob("from-*.parquet"))
    if not files:
        return {}
    group = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    return tasks.decide_task(stage, ctx, bucket, group, staged)
