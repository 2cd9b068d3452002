"""The stage contract: what a stage function takes and returns, shared by both runners.

A stage is plain code over Arrow tables that imports neither Beam nor DuckDB. Two shapes:

* ``MapStage``: ``fn(batch, ctx) -> StageOutput`` applied to independent batches of the input.
* ``GlobalStage``: rows are routed by ``key_fn(batch, ctx) -> array of str`` and every group of
  rows sharing a key is decided together by ``decide_fn(group, ctx) -> StageOutput`` (dedup,
  balance). ``decide_fn`` must not depend on row order (sort inside) so that the local runner and
  Beam's GroupByKey give the same answer.

Each input row ends in exactly one of ``out`` or ``rejects`` (unless the stage declares
``expands``, e.g. ingest); the runner checks the counts and fails the stage if they do not add up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from schemas import empty_rejects


@dataclass
class StageOutput:
    out: pa.Table
    rejects: pa.Table = field(default_factory=empty_rejects)
    # extra named outputs (e.g. curate's per-split chunks or a report table) -> table
    side: dict[str, pa.Table] = field(default_factory=dict)


@dataclass(frozen=True)
class StageContext:
    """What a stage function may read besides its batch: its options and loaded resources."""

    stage: str
    options: Any = None
    resources: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MapStage:
    name: str
    fn: Callable[[pa.Table, StageContext], StageOutput]
    # load heavy resources (a backbone) once per worker: ctx -> resources dict
    setup: Callable[[StageContext], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class GlobalStage:
    name: str
    key_fn: Callable[[pa.Table, StageContext], pa.Array]
    decide_fn: Callable[[pa.Table, StageContext], StageOutput]
    setup: Callable[[StageContext], Mapping[str, Any]] | None = None
    # number of hash buckets the keys are spread over (the unit of parallel work and output files)
    buckets: int = 8


class AccountingError(RuntimeError):
    """A stage's counts do not add up: records in != records out + records rejected."""


def check_accounting(stage: str, n_in: int, n_out: int, n_rejected: int) -> None:
    if n_in != n_out + n_rejected:
        raise AccountingError(
            f"stage {stage!r} lost records: {n_in} in != {n_out} out + {n_rejected} rejected "
            f"({n_in - n_out - n_rejected:+d}); this is a bug in the stage, please report it"
        )
