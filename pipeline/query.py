"""DuckDB over the data root: one view per table every stage writes, for `biocorpus query` and the report."""

from __future__ import annotations

import sys
from pathlib import Path

# view -> (glob under the data root, extra SQL select list applied on top)
VIEWS: dict[str, str] = {
    "raw": "raw/**/part-*.parquet",
    "resolved": "resolved/**/part-*.parquet",
    "curated": "curated/**/*.parquet",
    "rejects": "rejects/**/part-*.parquet",
    "downloads": "shards/*.parquet",  # the sidecars (not the plan files of a run in progress)
}
VIEW_HELP = {
    "raw": "every ingested record (hive columns: source, dataset)",
    "resolved": "records with the resolved lineage and evidence",
    "records": "the resolved records (falls back to raw before `resolve` has run)",
    "curated": "the training tables (hive column: split)",
    "taxa": "one row per resolved taxon with its lineage and record count",
    "rejects": "every rejected record of every stage: record_id, stage, reason, detail, source (ingest)",
    "downloads": "one row per attempted image (sidecar Parquet of each shard)",
    "shards": "one row per shard: images ok / failed",
    "runs": "one row per stage run (run.json)",
}


FORMATS = ("table", "csv", "json")  # and parquet:PATH


def _has(root: Path, pattern: str) -> bool:
    return any(root.glob(pattern))


def _literal(path: Path | str) -> str:
    """``path`` as a SQL string literal's contents: a quote in a folder name must not end it."""
    return Path(path).as_posix().replace("'", "''")


def connect(root: Path):
    """A DuckDB connection with the views that exist under ``root`` (empty views are left out)."""
    import duckdb

    con = duckdb.connect()
    root = Path(root)
    for name, pattern in VIEWS.items():
        if _has(root, pattern):
            path = _literal(root / pattern)
            if name == "rejects":
                # reject rows carry their own stage; their folders nest to different depths, so the
                # source of an ingest reject is read from its path instead of hive partitioning
                con.execute(
                    f"CREATE VIEW rejects AS SELECT record_id, stage, reason, detail, "
                    f"nullif(regexp_extract(filename, 'source=([^/]+)', 1), '') AS source "
                    f"FROM read_parquet('{path}', hive_partitioning = false, union_by_name = true, filename = true)"
                )
                continue
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}', hive_partitioning = true, "
                f"union_by_name = true)"
            )
    have = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if have and "rejects" not in have:  # a stage ran and rejected nothing: an empty view, not a missing table
        con.execute("CREATE VIEW rejects AS SELECT * FROM (VALUES (NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, "
                    "NULL::VARCHAR, NULL::VARCHAR)) AS t(record_id, stage, reason, detail, source) WHERE false")
    base = "resolved" if "resolved" in have else "raw" if "raw" in have else None
    if base:
        con.execute(f"CREATE VIEW records AS SELECT * FROM {base}")
    if "resolved" in have:
        con.execute(
            'CREATE VIEW taxa AS SELECT taxon_id, taxon_rank, kingdom, phylum, "class", "order", family, genus, '
            "species, any_value(accepted_name) AS accepted_name, any_value(vernacular_name) AS vernacular_name, "
            "count(*) AS records FROM resolved WHERE taxon_id IS NOT NULL GROUP BY ALL"
        )
    if "downloads" in have:
        con.execute(
            "CREATE VIEW shards AS SELECT regexp_extract(filename, '([^/]+)\\.parquet$', 1) AS shard, count(*) AS "
            "attempted, count(*) FILTER (WHERE status = 'ok') AS ok, count(*) FILTER (WHERE status <> 'ok') AS failed "
            f"FROM read_parquet('{_literal(root / VIEWS['downloads'])}', filename = true, union_by_name = true) "
            "GROUP BY 1 ORDER BY 1"
        )
    if _has(root, "runs/*/run.json"):
        try:
            con.execute(
                f"CREATE VIEW runs AS SELECT * FROM read_json_auto('{_literal(root / 'runs/*/run.json')}', "
                "union_by_name = true, maximum_object_size = 67108864)"
            )
        except duckdb.Error as exc:  # one malformed run.json must not take every other view down
            print(f"warning: runs view left out: {exc}", file=sys.stderr)
    return con


def run_query(root: Path, sql: str, fmt: str = "table", out=None) -> None:
    """Run ``sql`` and print the result (to ``out``, default the current ``sys.stdout``) as a table,
    CSV or JSON, or write it to Parquet."""
    out = out if out is not None else sys.stdout
    if fmt not in FORMATS and not fmt.startswith("parquet:"):
        raise ValueError(f"unknown --format {fmt!r}: use table, csv, json or parquet:PATH")
    con = connect(root)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if not views:
        raise FileNotFoundError(f"no tables under {root}: run a stage first (e.g. `make demo`)")
    try:
        rel = con.sql(sql)
    except Exception as exc:
        known = ", ".join(sorted(views))
        raise type(exc)(f"{exc}\nviews here: {known}") from None
    if rel is None:
        return
    if fmt.startswith("parquet:"):
        rel.write_parquet(fmt.split(":", 1)[1])
        return
    table = rel.to_arrow_table()
    if fmt == "csv":
        import io

        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(table, buf)
        out.write(buf.getvalue().decode())
    elif fmt == "json":
        import json

        for row in table.to_pylist():
            out.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
    else:
        out.write(_format_table(table) + "\n")


def _format_table(table, max_rows: int = 100) -> str:
    cols = table.column_names
    rows = [[("" if v is None else str(v)) for v in r.values()] for r in table.slice(0, max_rows).to_pylist()]
    widths = [min(60, max([len(c)] + [len(r[i]) for r in rows])) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v[:60].ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if table.num_rows > max_rows:
        out.append(f"... {table.num_rows - max_rows} more rows (use --format csv for all)")
    return "\n".join(out)
