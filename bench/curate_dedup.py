"""Benchmark: curate's record and photo dedup where sources share photos, against the former code.

A multi-source corpus holds the same photo several times (an iNaturalist photo is in GBIF too), so
layer 2 works on every row of a shared photo. Input: ``bench/curate.py``'s generated records (real
names) plus a fraction of them again as another source's copy of the same photo (carrying its own
EOL page in ``extra``, distinct per row: the richer row, which wins and absorbs the other) and a fraction again under the
same record id (re-ingested rows: half with a rights holder added, half identical). Both sides run the fused curate's decisions
(``pipeline.curate.fused.decide``) in the same process and run; the former side has the row-by-row
functions this code replaced put back (the references in ``tests/curate/test_dedup_column_wise.py``
and the former whole-file read of duplicate rows). Their outputs are checked equal.

Run: ``make bench-curate-dedup`` (``BENCH_ARGS=--small``: 200k rows); results go to
bench/results/curate_dedup.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import curate as gen_bench  # noqa: E402

from pipeline.curate import dedup, fused  # noqa: E402
from pipeline.stages.curate import Options  # noqa: E402
from tests.curate.test_dedup_column_wise import (  # noqa: E402
    merge_provenance_reference,
    rank_reference,
)

OUT = ROOT / "bench" / "out" / "curate_dedup"
RESULTS = ROOT / "bench" / "results" / "curate_dedup.md"


def make_input(rows: int, shared: float, again: float) -> Path:
    """``rows`` generated records, ``shared`` of them copied as an EOL photo, ``again`` ingested twice."""
    gen = gen_bench.generate(rows, max(4, rows // 100_000), OUT / "gen")
    src = sorted(Path(gen["records"]).glob("*.parquet"))
    out = OUT / "resolved"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    n = 0
    for f in src:
        t = pq.read_table(f)
        pq.write_table(t, out / f"part-{n:05d}.parquet")
        n += 1
        copy = t.take(pa.array(np.sort(rng.choice(t.num_rows, int(t.num_rows * shared), replace=False))))
        copy = copy.set_column(copy.column_names.index("record_id"), "record_id",
                               pc.binary_join_element_wise("eol-", copy.column("record_id"), ""))
        copy = copy.set_column(copy.column_names.index("source"), "source", pa.repeat(pa.scalar("eol"), copy.num_rows))
        # each copy's own extra (a distinct page per photo: no text is shared between rows)
        copy = copy.set_column(copy.column_names.index("extra"), "extra", pc.binary_join_element_wise(
            '{"eol_page_id": "', copy.column("media_id"), '", "title": "photo"}', ""))
        re_ingested = t.take(pa.array(np.sort(rng.choice(t.num_rows, int(t.num_rows * again), replace=False))))
        half = re_ingested.num_rows // 2
        j = re_ingested.column_names.index("rights_holder")
        richer = re_ingested.slice(0, half)
        richer = richer.set_column(j, richer.schema.field(j), pa.repeat(pa.scalar("someone"), half))
        for part in (copy, pa.concat_tables([richer, re_ingested.slice(half)])):
            pq.write_table(part, out / f"part-{n:05d}.parquet")
            n += 1
    return out


def _former_rows_of(self, rows, columns=None):
    file_of = np.searchsorted(self.offsets, rows, side="right") - 1
    parts = []
    for i in np.unique(file_of).tolist():
        pos = rows[file_of == i] - self.offsets[i]
        parts.append(pq.read_table(self.files[i], columns=columns).take(pa.array(pos)))
    return pa.concat_tables(parts, promote_options="default")


@contextlib.contextmanager
def former_code():
    saved = (dedup.rank_duplicates, dedup._merge_provenance, fused._Records.rows_of)
    dedup.rank_duplicates = rank_reference
    dedup._merge_provenance = lambda table, out, *rest: merge_provenance_reference(table, out, *rest)
    fused._Records.rows_of = _former_rows_of
    try:
        yield
    finally:
        dedup.rank_duplicates, dedup._merge_provenance, fused._Records.rows_of = saved


def run(folder: Path, options: Options) -> tuple[dict, tuple]:
    records = fused._Records(fused.parquet_files(folder))
    t, c = time.perf_counter(), time.process_time()
    decided, rejects, extras, stats = fused.decide(records, options)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    steps = {k: stats[k]["seconds"] for k in ("curate-dedup-record", "curate-dedup-photo")}
    out = (decided.column("record_id").to_pylist(), {k: v.to_pydict() for k, v in rejects.items()}, extras)
    return {"wall": wall, "cpu": cpu, **steps, "rows": int(records.offsets[-1]),
            "rejected": {k: v.num_rows for k, v in rejects.items()}}, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="200,000 generated records instead of 1,000,000")
    ap.add_argument("--rows", type=int, default=None, help="generated records before the copies")
    ap.add_argument("--shared", type=float, default=0.3, help="fraction copied as another source's photo")
    ap.add_argument("--again", type=float, default=0.05, help="fraction ingested twice (same record id)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per side; the best is kept")
    args = ap.parse_args()
    args.rows = args.rows or (200_000 if args.small else 1_000_000)
    folder = make_input(args.rows, args.shared, args.again)
    options = Options(min_per_taxon=1)
    best: dict[str, dict] = {}
    outputs = {}
    for _ in range(args.repeat):
        for side in ("column-wise", "former"):
            with former_code() if side == "former" else contextlib.nullcontext():
                res, out = run(folder, options)
            outputs[side] = out
            if side not in best or res["wall"] < best[side]["wall"]:
                best[side] = res
    same = outputs["column-wise"] == outputs["former"]
    ours, peer = best["column-wise"], best["former"]
    ratio = peer["curate-dedup-photo"] / ours["curate-dedup-photo"]
    lines = [
        "# curate_dedup benchmark", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; load "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} after the run. Input: {args.rows:,} generated records "
        f"(bench/curate.py, real names) + {args.shared:.0%} again as another source's copy of the photo + "
        f"{args.again:.0%} again under the same record id (half with a field added): {ours['rows']:,} rows. "
        f"Both sides: `pipeline.curate.fused.decide` in one process, best of {args.repeat}; the former side "
        "with the row-by-row ranking, provenance merge and whole-file reads put back.", "",
        "| side | dedup by record (s) | dedup by photo (s) | all decisions (s) | CPU (s) |",
        "|---|---|---|---|---|",
        *[f"| {name} | {r['curate-dedup-record']:.2f} | {r['curate-dedup-photo']:.2f} | {r['wall']:.2f} | "
          f"{r['cpu']:.2f} |" for name, r in (("column-wise (now)", ours), ("former", peer))],
        "",
        f"**Dedup by photo: {ratio:.1f}x the former code**; all decisions {peer['wall'] / ours['wall']:.1f}x. "
        f"Outputs (survivors, every reject row, merged extra): {'identical' if same else 'DIFFERENT'}. "
        f"Rejected: {ours['rejected']}. Peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB "
        "(both sides in one process).",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[6:]))
    if not same:
        sys.exit("outputs differ")


if __name__ == "__main__":
    main()
