"""The Beam runner: the same stage functions as DoFns; global stages through GroupByKey.

Runs on the FnApiRunner here (never the DirectRunner, which downloads Prism on every run) and on
Dataflow, Flink or Spark through pipeline options, e.g.
``--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.io import StagedOutput
from pipeline.runners import tasks
from pipeline.stage import GlobalStage, MapStage, StageContext

DEFAULT_ARGS = ("--runner=FnApiRunner",)


class _DropBeamNoise(logging.Filter):
    """Beam's import warns about the GCP client libraries (not needed by the local runner, and
    installed with apache-beam[gcp] where Dataflow needs them), and a Ctrl-C inside a transform is
    logged with its whole traceback before it is raised; the CLI says "interrupted" instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "apitools not found" not in message and "KeyboardInterrupt" not in message


def quiet_beam_logging() -> None:
    """Install :class:`_DropBeamNoise` (once) on the loggers Beam writes those lines to."""
    for name in ("", "apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBeamNoise) for f in logger.filters):
            logger.addFilter(_DropBeamNoise())



def _options(args: tuple[str, ...] | list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(args) or list(DEFAULT_ARGS)
    if not any(a.startswith("--runner") for a in args):
        args = [*DEFAULT_ARGS, *args]
    return PipelineOptions(args)


def _counter(stage: str, name: str):
    from apache_beam.metrics import Metrics

    return Metrics.counter(f"biocorpus.{stage}", name)


def _count(stage: str, counts: dict) -> dict:
    for key in ("in", "out", "rejected"):
        _counter(stage, f"records_{key}").inc(counts.get(key, 0))
    for reason, n in counts.get("rejected_by_reason", {}).items():
        _counter(stage, f"rejected_{reason}").inc(n)
    return counts


class BeamRunner:
    name = "beam"

    def __init__(self, beam_args: tuple[str, ...] | list[str] = DEFAULT_ARGS):
        self.beam_args = tuple(beam_args)
        quiet_beam_logging()

    def run_map(self, stage: MapStage, ctx: StageContext, inputs: list[Path], staged: StagedOutput) -> list[dict]:
        import apache_beam as beam

        todo = [(f"{i:05d}", str(f)) for i, f in enumerate(inputs) if staged.task_done(f"{i:05d}") is None]
        if todo:
            with beam.Pipeline(options=_options(self.beam_args)) as p:
                (
                    p
                    | "Tasks" >> beam.Create(todo)
                    | "Spread" >> beam.Reshuffle()
                    | f"Apply {stage.name}" >> beam.Map(
                        lambda t: _count(stage.name, tasks.map_task(stage, ctx, t[0], t[1], staged)))
                )
        return staged.task_counts()

    def run_global(self, stage: GlobalStage, ctx: StageContext, inputs: list[Path], staged: StagedOutput) -> list[dict]:
        import apache_beam as beam
        import pyarrow.parquet as pq

        def route(path: str):
            for bucket, part in tasks.route_table(stage, ctx, pq.read_table(path)).items():
                yield bucket, tasks.table_to_ipc(part)

        def decide(item):
            bucket, blobs = item
            import pyarrow as pa

            group = pa.concat_tables([tasks.ipc_to_table(b) for b in blobs], promote_options="default")
            return _count(stage.name, tasks.decide_task(stage, ctx, bucket, group, staged))

        if any(staged.task_done(f"b{b:05d}") is None for b in range(stage.buckets)):
            with beam.Pipeline(options=_options(self.beam_args)) as p:
                (
                    p
                    | "Inputs" >> beam.Create([str(f) for f in inputs])
                    | "Key rows" >> beam.FlatMap(route)
                    | "Group by key bucket" >> beam.GroupByKey()
                    | "Skip decided" >> beam.Filter(lambda kv: staged.task_done(f"b{kv[0]:05d}") is None)
                    | f"Decide {stage.name}" >> beam.Map(decide)
                )
        return staged.task_counts()

    def run_ingest(self, connector, options, task_list: list[str], staged: StagedOutput) -> list[dict]:
        import apache_beam as beam

        todo = [(i, t) for i, t in enumerate(task_list) if staged.task_done(f"{i:05d}") is None]
        if todo:
            with beam.Pipeline(options=_options(self.beam_args)) as p:
                (
                    p
                    | "Tasks" >> beam.Create(todo)
                    | "Spread" >> beam.Reshuffle()
                    | f"Read {connector.name}" >> beam.Map(
                        lambda t: _count("ingest", tasks.ingest_task(connector, options, t[0], t[1], staged)))
                )
        return staged.task_counts()
