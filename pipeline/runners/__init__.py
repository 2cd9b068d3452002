"""Runners apply stage functions: local (DuckDB/Polars, all cores) and beam (any Beam runner)."""
