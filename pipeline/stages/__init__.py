"""One module per stage: plain functions over Arrow tables, no Beam or DuckDB imports."""
