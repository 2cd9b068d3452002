"""Runners apply stage functions: local (DuckDB/Polars, all cores) and beam (any Beam runner)."""

from __future__ import annotations


def make_runner(name: str, workers: int = 0, beam_args: tuple[str, ...] = ("--runner=FnApiRunner",),
                progress: bool = True):
    """The runner called ``name`` ("local" or "beam"); Beam is imported only when chosen."""
    if name == "local":
        from pipeline.runners.local import LocalRunner

        return LocalRunner(workers=workers, progress=progress)
    if name == "beam":
        from pipeline.runners.beam import BeamRunner

        return BeamRunner(beam_args)
    raise ValueError(f"unknown runner {name!r}; use --runner local or --runner beam")
