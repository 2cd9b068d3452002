"""Benchmark: the EOL media manifest reader, column-wise vs the former row loop, same run.

The real page export's media (tests/data/eol/publishing_store/store-328598.json, 100 images) are
written as manifest rows (content id, page id, source URL, full-size copy URL, licence name,
owner, as in tests/sources/test_eol.py) repeated to ``--rows`` with distinct content ids, one
page id per 1,000 rows. Two files are read:

* ``csv``: written by ``csv.writer`` (``\\r\\n`` line ends, and one source URL of the sample holds a
  comma, so it is quoted): the column-wise reader splits it with ``csv.reader``;
* ``tsv``: tab-separated, ``\\n`` line ends, no quotes: split by pyarrow's CSV reader.

Each goes, in one process and one run, through ``sources.eol.read_manifest`` (column-wise) and
``read_manifest_reference`` (the former row loop, kept in tests/sources/test_eol.py as the
reference; its batches are checked equal here). Best of ``--repeat`` runs for the column-wise
reader, one for the row loop; the load average is recorded. Run: ``.venv/bin/python
bench/ingest_eol.py [--rows N]``; results go to bench/results/ingest_eol.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sources.eol import Options, read_manifest  # noqa: E402
from tests.sources.test_eol import read_manifest_reference  # noqa: E402

STORE = ROOT / "tests/data/eol/publishing_store/store-328598.json"
RESULTS = ROOT / "bench/results/ingest_eol.md"
HEADER = ["EOL content ID", "EOL page ID", "Medium Source URL", "EOL Full-Size Copy URL", "License Name",
          "Copyright Owner"]


def rows(n: int):
    store = json.loads(STORE.read_text())
    media = store["media"]
    for i in range(n):
        m = media[i % len(media)]
        yield [f"{m['guid']}-{i}", str(store["id"] + i // 1000), m["source_url"], m["base_url"] + "_orig.jpg",
               m["license"]["name"], m["owner"]]


def write(path: Path, n: int, delim: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        if delim == ",":
            w = csv.writer(fh)
            w.writerow(HEADER)
            w.writerows(rows(n))
        else:
            fh.write("\t".join(HEADER) + "\n")
            for r in rows(n):
                assert not any("\t" in v or '"' in v or "\n" in v or "\r" in v for v in r)
                fh.write("\t".join(r) + "\n")


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = list(fn())
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    options = Options()
    loads = [os.getloadavg()]
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, delim in (("csv", ","), ("tsv", "\t")):
            path = Path(tmp) / f"media_manifest.{kind}"
            write(path, args.rows, delim)
            best = None
            for _ in range(args.repeat):
                wall, cpu, new = timed(lambda path=path: read_manifest(path, options))
                best = (wall, cpu) if best is None or wall < best[0] else best
            loads.append(os.getloadavg())
            owall, ocpu, old = timed(lambda path=path: read_manifest_reference(path, options))
            loads.append(os.getloadavg())
            assert len(new) == len(old)
            for a, b in zip(new, old, strict=True):  # the same tables, or the figures mean nothing
                assert a.records.equals(b.records, check_metadata=True) and a.rejects.equals(b.rejects)
            n = sum(b.records.num_rows + b.rejects.num_rows for b in new)
            kept = sum(b.records.num_rows for b in new)
            assert n == args.rows, (n, args.rows)
            table.append((kind, n, kept, best, (owall, ocpu), path.stat().st_size))
            del new, old
    lines = ["# ingest_eol benchmark", "",
             f"EOL media manifest rows from the real page export ({STORE.relative_to(ROOT)}, 100 images) "
             f"repeated to {args.rows:,} with distinct content ids (one page id per 1,000 rows), read in batches "
             f"of {options.batch_rows:,}. csv: written by csv.writer (CRLF, one quoted field per 100 rows: "
             "the column-wise reader splits it with csv.reader); tsv: tabs, LF, no quotes (split by pyarrow). "
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, shared "
             "with other jobs: load average (1, 5, 15 min) "
             + " -> ".join(" ".join(f"{x:.1f}" for x in la) for la in loads) + " over the run. "
             f"Best of {args.repeat} runs (column-wise), one (row-loop), one process; the row loop is the former "
             "reader (the tests' reference) and its batches were checked equal to the column-wise ones here.", "",
             "| file | rows (records) | MB | column-wise s | CPU s | rows/s | row-loop s | CPU s | rows/s | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, n, kept, (w, c), (ow, oc), size in table:
        lines.append(f"| {kind} | {n:,} ({kept:,}) | {size / 1e6:.0f} | {w:.2f} | {c:.2f} | {n / w:,.0f} | "
                     f"{ow:.2f} | {oc:.2f} | {n / ow:,.0f} | {ow / w:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
