"""The face every source connector shows the ingest stage: plan tasks, read a task into batches."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from schemas import empty_rejects


class SourceOptions(BaseModel):
    """Base of every source's options (the ``[sources.<name>]`` table of the config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def query_fingerprint(self) -> str | None:
        """A short stable hash (:func:`query_hash`) of the options that choose a query's records,
        none of those that say how they are fetched (base URL, rate, retries, timeout, user agent,
        cache, page size): it names the query's dataset, so a politer rerun is the same dataset.
        None when these options make no query of their own (an input is read)."""
        return None


def query_hash(query: dict) -> str:
    """A short stable hash of a query's options (it names the query's task, request or dataset)."""
    return hashlib.blake2b(json.dumps(query, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


@dataclass
class IngestBatch:
    """What reading part of a source yields.

    ``records`` holds record columns only (a subset of ``schemas.RECORD_SCHEMA``; the runner
    conforms it). ``rejects`` follows ``schemas.REJECT_SCHEMA``. Every candidate record read is in
    exactly one of the two. ``skipped`` counts units that are not records at all (an IFCB trigger
    with no image, a __MACOSX member), by reason, so nothing disappears without a count.

    ``cursor`` (a connector whose pull continues, see :class:`Connector`): where the next pull
    starts once this batch is in, JSON-serialisable (iNaturalist: the last observation id). The
    runner commits the last one with the task's records, and with nothing else.
    """

    records: pa.Table
    rejects: pa.Table = field(default_factory=empty_rejects)
    skipped: dict[str, int] = field(default_factory=dict)
    cursor: Any = None


class SourceConfigError(ValueError):
    """A source that cannot run as configured (a query without its credentials in the
    environment); the message says what to set."""


class Connector(Protocol):
    """One source. ``tasks`` must be deterministic; each task is read independently (resume unit).

    A connector whose pull continues (an API paged by a cursor, pulled a few pages a run) also has
    ``continues(input, options) -> bool``; when it answers True, ingest keeps each run as a pull of
    its own in the dataset, calls ``tasks(input, options, after=cursor)`` with the cursor committed
    with the last pull (None for the first) for one task that reads from there, and commits the
    ``cursor`` of the task's last batch with its records (``pipeline.execute.run_ingest``).
    """

    name: str
    Options: type[SourceOptions]

    def tasks(self, input: str | None, options: SourceOptions) -> list[str]:
        """Independent units of work (files, bins, API pages), in a stable order."""
        ...

    def read(self, task: str, options: SourceOptions) -> Iterator[IngestBatch]:
        """Read one task; transient network errors are retried inside, bad rows become rejects."""
        ...


# What reading a JSON item of the wrong shape raises (a string where an object should be, an
# object where a list should be...): an adapter catches these per item and rejects that item.
SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def item_key(item: object, *names: str) -> str | None:
    """The first of ``names`` that ``item`` (a JSON object, or not) has as a plain scalar, as text."""
    if not isinstance(item, dict):
        return None
    for name in names:
        value = item.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def shape_detail(what: str, exc: BaseException | str) -> str:
    """The reject detail of a malformed JSON item: which item, and what was wrong with it."""
    problem = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return f"{what}: malformed JSON ({problem})"


def text_codec(name: str) -> str:
    """The canonical name of a text codec Python knows (``"latin1"`` → ``"iso8859-1"``); a
    ``ValueError`` that says what to give for an unknown name or a codec that is not a text
    encoding (``base64``, ``rot13``)."""
    try:
        canonical = codecs.lookup(name).name
        io.TextIOWrapper(io.BytesIO(), encoding=canonical)  # base64, zlib, rot13: not text encodings
    except LookupError:
        raise ValueError(f"{name!r} is not a text encoding Python knows; give a codec name such as "
                         "'utf-8', 'latin-1' or 'cp1252'") from None
    return canonical
