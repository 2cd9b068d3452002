"""The face every source connector shows the ingest stage: plan tasks, read a task into batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from schemas import empty_rejects


class SourceOptions(BaseModel):
    """Base of every source's options (the ``[sources.<name>]`` table of the config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class IngestBatch:
    """What reading part of a source yields.

    ``records`` holds record columns only (a subset of ``schemas.RECORD_SCHEMA``; the runner
    conforms it). ``rejects`` follows ``schemas.REJECT_SCHEMA``. Every candidate record read is in
    exactly one of the two. ``skipped`` counts units that are not records at all (an IFCB trigger
    with no image, a __MACOSX member), by reason, so nothing disappears without a count.
    """

    records: pa.Table
    rejects: pa.Table = field(default_factory=empty_rejects)
    skipped: dict[str, int] = field(default_factory=dict)


class Connector(Protocol):
    """One source. ``tasks`` must be deterministic; each task is read independently (resume unit)."""

    name: str
    Options: type[SourceOptions]

    def tasks(self, input: str | None, options: SourceOptions) -> list[str]:
        """Independent units of work (files, bins, API pages), in a stable order."""
        ...

    def read(self, task: str, options: SourceOptions) -> Iterator[IngestBatch]:
        """Read one task; transient network errors are retried inside, bad rows become rejects."""
        ...
