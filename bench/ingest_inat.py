"""Benchmark: the iNaturalist dump adapter (joined rows to records + rejects), column-wise vs the row loop.

The real open-data sample (tests/data/inaturalist/open_data, 50 photos) is joined by the
connector's own DuckDB query (``read_joined``), and the joined rows are repeated to ``--rows``
with distinct photo ids and photo uuids (the sample's mix stays: 39 records, 9 not research
grade, 2 orphans per 50). The same batches (``Options().batch_rows`` rows each) go, in one
process and one run, through:

* ``column-wise``: ``sources.inaturalist.adapt_dump`` (arrow compute / numpy);
* ``row-loop``: the former per-row loop, kept in tests/sources/test_inaturalist.py as the
  reference the column-wise adapter must equal (its outputs are compared here too);
* ``csv-module``: a plain ``csv.reader`` loop over the same joined rows written as TSV, only
  splitting the fields (no records): a floor for any per-row Python.

The best of ``--repeat`` runs counts (the machine is shared; the row loop runs once unless
``--loop-repeat``), and the load average is recorded. Run: ``.venv/bin/python bench/ingest_inat.py
[--rows N]``; results go to bench/results/ingest_inat.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sources.inaturalist import Options, adapt_dump, locate_dump, read_joined  # noqa: E402
from tests.sources.test_inaturalist import adapt_dump_reference  # noqa: E402

DUMP = ROOT / "tests/data/inaturalist/open_data"
RESULTS = ROOT / "bench/results/ingest_inat.md"


def joined_sample(options: Options) -> pa.Table:
    tables = [t for t in read_joined(locate_dump(str(DUMP), options, None), options) if isinstance(t, pa.Table)]
    return pa.concat_tables(tables).combine_chunks()


def scaled(sample: pa.Table, rows: int) -> pa.Table:
    """The sample's rows repeated to ``rows``, each with a new photo id and photo uuid."""
    t = sample.take(pa.array(np.arange(rows) % sample.num_rows))
    ids = pc.cast(pa.array(np.arange(rows, dtype=np.int64) + 100_000_000), pa.string())
    uuids = pc.binary_join_element_wise(pc.utf8_slice_codeunits(t.column("photo_uuid"), 0, 24),
                                        pc.utf8_lpad(pc.cast(pa.array(np.arange(rows)), pa.string()), 12, "0"), "")
    t = t.set_column(t.column_names.index("photo_id"), "photo_id", ids)
    return t.set_column(t.column_names.index("photo_uuid"), "photo_uuid", uuids).combine_chunks()


def batches(t: pa.Table, size: int) -> list[pa.Table]:
    return [t.slice(i, size) for i in range(0, t.num_rows, size)]


def timed(fn, parts: list[pa.Table]) -> tuple[float, float, list]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = [fn(p) for p in parts]
    return time.perf_counter() - wall, time.process_time() - cpu, out


def csv_loop(path: Path) -> int:
    n = 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for _row in reader:
            n += 1
    return n


def write_tsv(t: pa.Table, path: Path) -> None:
    cols = [c.to_pylist() for c in t.columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(t.column_names)
        w.writerows(zip(*[["" if v is None else v for v in c] for c in cols], strict=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the column-wise adapter and csv loop")
    ap.add_argument("--loop-repeat", type=int, default=1, help="runs of the row loop")
    args = ap.parse_args()
    options = Options()
    loads = [os.getloadavg()]
    t = scaled(joined_sample(options), args.rows)
    parts = batches(t, options.batch_rows)
    results: dict[str, tuple[float, float, int]] = {}

    best = None
    for _ in range(args.repeat):
        wall, cpu, new = timed(lambda p: adapt_dump(p, options), parts)
        best = (wall, cpu) if best is None or wall < best[0] else best
    n_out = sum(b.records.num_rows + b.rejects.num_rows for b in new)
    assert n_out == args.rows, (n_out, args.rows)
    results["column-wise"] = (*best, n_out)
    loads.append(os.getloadavg())

    best = None
    for _ in range(args.loop_repeat):
        wall, cpu, old = timed(lambda p: adapt_dump_reference(p, options), parts)
        best = (wall, cpu) if best is None or wall < best[0] else best
    results["row-loop"] = (*best, sum(r.num_rows + j.num_rows for r, j in old))
    loads.append(os.getloadavg())
    for b, (records, rejects) in zip(new, old, strict=True):  # the same tables, or the figures mean nothing
        assert b.records.equals(records, check_metadata=True) and b.rejects.equals(rejects, check_metadata=True)
    kept = sum(b.records.num_rows for b in new)
    del old, new

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "joined.tsv"
        write_tsv(t, path)
        best = None
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            n = csv_loop(path)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best = (wall, cpu) if best is None or wall < best[0] else best
        results["csv-module"] = (*best, n)
    loads.append(os.getloadavg())

    lines = ["# ingest_inat benchmark", "",
             f"Joined rows of the real iNaturalist open-data sample ({DUMP.relative_to(ROOT)}, 50 photos) "
             f"repeated to {args.rows:,} with distinct photo ids and uuids, in batches of {options.batch_rows:,} "
             f"(records {kept:,}, rejects {args.rows - kept:,}). Machine: {platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, shared with other jobs: load average "
             f"(1, 5, 15 min) " + " -> ".join(" ".join(f"{x:.1f}" for x in la) for la in loads) + " over the run. "
             f"Best of {args.repeat} runs (column-wise, csv-module) and of {args.loop_repeat} (row-loop), one "
             "process, the same batches. row-loop is the former per-row adapter (the tests' reference; its "
             "tables were checked equal to column-wise's here); csv-module only splits the same rows written "
             "as TSV with csv.reader, no records.", "",
             "| tool | rows | seconds | CPU seconds | rows/s |", "|---|---|---|---|---|"]
    for name, (wall, cpu, n) in results.items():
        lines.append(f"| {name} | {n:,} | {wall:.2f} | {cpu:.2f} | {n / wall:,.0f} |")
    rate = {k: v[2] / v[0] for k, v in results.items()}
    lines += ["", f"column-wise ÷ row-loop: {rate['column-wise'] / rate['row-loop']:.1f}x; "
              f"column-wise ÷ csv-module: {rate['column-wise'] / rate['csv-module']:.1f}x", ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
