"""Benchmark: reading a GBIF Darwin Core Archive scaled from the real sample, ours vs python-dwca-reader.

The real download (0000066-140928181241064.zip, 470 occurrences, 215 media rows) is repeated
with fresh gbifIDs into archives of two sizes, written streaming. Each reader runs in its own
subprocess (peak RSS from that process's ``ru_maxrss``) over the same archive:

* ``ours-reader``: sources.dwca streaming the core's columns the ingest reads (32 terms and the core id) to Parquet;
* ``ours-connector``: the whole GBIF ingest (core + multimedia join, records + rejects);
* ``python-dwca-reader``: iterating every core row of ``DwCAReader`` (in bench/.venv-dwca), the
  peer the goal names, without opening the multimedia extension;
* ``python-dwca-reader+ext``: the same, also reading each core row's multimedia rows
  (``row.extensions``, the library's way to an occurrence's images): the whole archive, as the
  connector reads it;
* ``csv-module``: a plain ``csv.reader`` loop over the zip member keeping the same columns, a
  stronger peer (no extraction to disk, no per-row objects).

Each tool runs ``--repeat`` times (default 2; the best run counts, the machine is shared), and the
load average is recorded. ``--connector-only`` adds sizes where only our connector runs, to show
its memory staying flat. Run: ``.venv/bin/python bench/ingest_gbif.py [--small]``; results go to
bench/results/ingest_gbif.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from results_file import write_section  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CANDIDATES = [ROOT / "tests/data/gbif/dwca/0000066-140928181241064.zip",
                     ROOT.parent / "shared/data/gbif/dwca/0000066-140928181241064.zip"]
PEER_VENV = ROOT / "bench/.venv-dwca"
PEER_VERSION = "0.17.1"
RESULTS = ROOT / "bench/results/ingest_gbif.md"


def sample_path() -> Path:
    for p in SAMPLE_CANDIDATES:
        if p.exists():
            return p
    sys.exit("the GBIF sample archive is missing (tests/data/gbif/dwca/)")


def scale_archive(src: Path, dest: Path, occurrences: int) -> Path:
    """Write ``dest`` with ``occurrences`` core rows (and their media), repeating the sample with new ids."""
    if dest.exists():
        return dest
    with zipfile.ZipFile(src) as z:
        meta = z.read("meta.xml").decode()
        core = z.read("occurrence.txt").decode().rstrip("\n").split("\n")
        media = z.read("multimedia.txt").decode().rstrip("\n").split("\n")
        small = {n: z.read(n) for n in z.namelist()
                 if n not in ("meta.xml", "occurrence.txt", "multimedia.txt", "verbatim.txt")}
    # drop the verbatim.txt extension: neither reader uses it and it would double the archive
    start = meta.index("<extension", meta.index("</core>"))
    end = meta.index("</extension>", start) + len("</extension>")
    if "verbatim.txt" in meta[start:end]:
        meta = meta[:start] + meta[end:]
    head, rows = core[0], [r.split("\t", 1) for r in core[1:]]
    mhead, mrows = media[0], [m.split("\t", 1) for m in media[1:]]
    by_occ: dict[str, list[str]] = {}
    for gid, rest in mrows:
        by_occ.setdefault(gid, []).append(rest)
    tmp = dest.with_suffix(".tmp")
    media_tmp = dest.with_suffix(".media.txt")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        out.writestr("meta.xml", meta)
        for name, data in small.items():  # metadata.xml, rights, dataset EML: python-dwca-reader wants them
            out.writestr(name, data)
        # a zip takes one member at a time: media lines go to a side file, copied in after the core
        with out.open("occurrence.txt", "w", force_zip64=True) as occ_f, open(media_tmp, "wb") as med_f:
            occ_f.write((head + "\n").encode())
            med_f.write((mhead + "\n").encode())
            n, copy = 0, 0
            while n < occurrences:
                occ_buf, med_buf = [], []
                for gid, rest in rows:
                    if n >= occurrences:
                        break
                    new_id = f"{copy}{int(gid):012d}"
                    occ_buf.append(f"{new_id}\t{rest}\n")
                    for m in by_occ.get(gid, ()):
                        med_buf.append(f"{new_id}\t{m}\n")
                    n += 1
                occ_f.write("".join(occ_buf).encode())
                med_f.write("".join(med_buf).encode())
                copy += 1
        with out.open("multimedia.txt", "w", force_zip64=True) as med_out, open(media_tmp, "rb") as med_in:
            while chunk := med_in.read(1 << 22):
                med_out.write(chunk)
    media_tmp.unlink()
    tmp.replace(dest)
    return dest


OURS_READER = r"""
import json, resource, sys, time
import schemas  # first, as in the CLI: Arrow's allocator settings (schemas/memory.py) before pyarrow loads
import pyarrow.parquet as pq
from sources.dwca import open_archive, read_file
from sources.gbif import OCCURRENCE_COLUMNS
t0 = time.perf_counter()
a = open_archive(sys.argv[1])
rows, writer = 0, None
for b in read_file(a, a.core, OCCURRENCE_COLUMNS):
    if writer is None:
        writer = pq.ParquetWriter(sys.argv[2], b.table.schema, compression="zstd")
    writer.write_table(b.table)
    rows += b.table.num_rows
writer.close()
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))
"""

OURS_CONNECTOR = r"""
import json, resource, sys, time
import schemas  # first, as in the CLI: Arrow's allocator settings (schemas/memory.py) before pyarrow loads
import pyarrow as pa, pyarrow.parquet as pq
from pipeline.io import parquet_options
from sources.gbif import CONNECTOR, Options
t0 = time.perf_counter()
opts = Options(keep_unknown_license=True)
records = rejects = 0
writer = None
for b in CONNECTOR.read(sys.argv[1], opts):
    rejects += b.rejects.num_rows
    if b.records.num_rows:
        if writer is None:  # the records written as the ingest stage writes them
            options = {k: v for k, v in parquet_options(b.records).items() if k != "row_group_size"}
            writer = pq.ParquetWriter(sys.argv[2], b.records.schema, **options)
        writer.write_table(b.records.cast(writer.schema))
        records += b.records.num_rows
writer.close()
print(json.dumps({"rows": records + rejects, "records": records, "rejects": rejects,
                  "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))
"""

OURS_STAGE = r"""
import json, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path
# what a user runs: the CLI's ingest stage (local runner, conform, records and rejects to Parquet);
# its time includes starting the CLI (one task: the runner runs it in the CLI's process)
cli = str(Path(sys.executable).parent / "biocorpus")
data = Path(tempfile.mkdtemp(prefix="biocorpus-bench-stage-"))
try:
    t0 = time.perf_counter()
    subprocess.run([cli, "ingest", "gbif", "--input", sys.argv[1], "--data", str(data)], check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    stats = json.loads(next((data / "raw").rglob("_stats.json")).read_text())
finally:
    shutil.rmtree(data, ignore_errors=True)
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rows": stats["in"], "records": stats["out"], "rejects": stats["rejected"], "seconds": seconds,
                  "peak_rss_mb": use.ru_maxrss / 1024, "cpu_s": use.ru_utime + use.ru_stime}))
"""

CSV_PEER = r"""
import csv, io, json, resource, sys, time, zipfile
sys.path.insert(0, ".")
from sources.dwca import open_archive
from sources.gbif import OCCURRENCE_COLUMNS
t0 = time.perf_counter()
a = open_archive(sys.argv[1])
idx = sorted({a.core.column(c).index for c in OCCURRENCE_COLUMNS if a.core.column(c) is not None} | {a.core.id_index})
rows, kept = 0, []
with zipfile.ZipFile(sys.argv[1]) as z, z.open(a.core.location) as raw:
    reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""), delimiter="\t",
                        quoting=csv.QUOTE_NONE)
    next(reader)
    for row in reader:
        kept.append(tuple(row[i] for i in idx))
        rows += 1
        if len(kept) >= 100_000:
            kept = []
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))
"""

PEER = r"""
import json, resource, sys, time
from dwca.read import DwCAReader
extensions = sys.argv[3] == "ext"
t0 = time.perf_counter()
rows = media = 0
with DwCAReader(sys.argv[1]) as dwca:
    for row in dwca:
        row.data
        rows += 1
        if extensions:
            for ext in row.extensions:
                ext.data
                media += 1
print(json.dumps({"rows": rows, "media_rows": media, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))
"""


def ensure_peer() -> Path:
    py = PEER_VENV / "bin/python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"python-dwca-reader=={PEER_VERSION}"], check=True)
    return py


def run(python: Path | str, code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


TOOLS = ["ours-reader", "ours-connector", "ours-ingest-stage", "python-dwca-reader", "python-dwca-reader+ext", "csv-module"]


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def best_of(repeat: int, python, code: str, *args: str) -> dict:
    runs = [run(python, code, *args) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    best["all_seconds"] = [round(r["seconds"], 1) for r in runs]
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="100k and 200k occurrences instead of 1M and 2M")
    ap.add_argument("--work", default=None, help="folder for the scaled archives (default: a temp folder)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool and size; the best counts")
    ap.add_argument("--connector-only", default="", help="comma-separated extra sizes run by ours-connector only")
    args = ap.parse_args()
    sizes = [100_000, 200_000] if args.small else [1_000_000, 2_000_000]
    extra = [int(x) for x in args.connector_only.split(",") if x]
    work = Path(args.work or tempfile.mkdtemp(prefix="biocorpus-bench-gbif-"))
    work.mkdir(parents=True, exist_ok=True)
    peer = ensure_peer()
    src = sample_path()
    results = []
    loads = [load()]
    for n in [*sizes, *extra]:
        t0 = time.perf_counter()
        archive = scale_archive(src, work / f"gbif-{n}.zip", n)
        print(f"archive {archive.name}: {archive.stat().st_size / 2**20:.0f} MiB zipped, "
              f"written in {time.perf_counter() - t0:.0f}s; load {load()}", flush=True)
        tools = [("ours-reader", sys.executable, OURS_READER, ()),
                 ("ours-connector", sys.executable, OURS_CONNECTOR, ()),
                 ("ours-ingest-stage", sys.executable, OURS_STAGE, ()),
                 ("python-dwca-reader", peer, PEER, ("core",)), ("python-dwca-reader+ext", peer, PEER, ("ext",)),
                 ("csv-module", sys.executable, CSV_PEER, ())]
        for tool, python, code, more in tools:
            if n in extra and tool not in ("ours-connector", "ours-ingest-stage"):
                continue
            r = best_of(args.repeat, python, code, str(archive), str(work / f"{tool}-{n}.parquet"), *more)
            r.update(tool=tool, occurrences=n, rows_per_s=r["rows"] / r["seconds"])
            results.append(r)
            print(f"  {tool:24s} {r['rows']:>9,} rows {r['seconds']:7.1f}s (runs {r['all_seconds']}) "
                  f"CPU {r['cpu_s']:6.1f}s "
                  f"{r['rows_per_s']:>10,.0f} rows/s peak RSS {r['peak_rss_mb']:6.0f} MiB; load {load()}", flush=True)
        loads.append(load())
    by = {(r["tool"], r["occurrences"]): r for r in results}
    lines = []
    for n in sizes:
        peer_rate = by[("python-dwca-reader", n)]["rows_per_s"]
        ext_rate = by[("python-dwca-reader+ext", n)]["rows_per_s"]
        csv_rate = by[("csv-module", n)]["rows_per_s"]
        ours = [by[(t, n)]["rows_per_s"] for t in ("ours-reader", "ours-connector")]
        cells = ([f"{x / peer_rate:.1f}x" for x in ours] + [f"{ours[1] / ext_rate:.1f}x"]
                 + [f"{x / csv_rate:.1f}x" for x in ours])
        per_cpu = lambda t, n=n: by[(t, n)]["rows"] / by[(t, n)]["cpu_s"]  # noqa: E731
        cells.append(f"{per_cpu('ours-connector') / per_cpu('python-dwca-reader'):.1f}x")
        cells.append(f"{per_cpu('ours-connector') / per_cpu('python-dwca-reader+ext'):.1f}x")
        stage_rate = by[("ours-ingest-stage", n)]["rows_per_s"]
        cells += [f"{stage_rate / ext_rate:.1f}x", f"{stage_rate / peer_rate:.1f}x"]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
        print(f"{n:,} occurrences: connector {ours[1] / ext_rate:.1f}x python-dwca-reader reading the whole "
              f"archive (core + multimedia), {ours[1] / peer_rate:.1f}x it reading the core alone (goal 10x); "
              f"reader {ours[0] / peer_rate:.1f}x; vs csv-module: reader {ours[0] / csv_rate:.1f}x, connector "
              f"{ours[1] / csv_rate:.1f}x; the CLI's ingest stage {stage_rate / ext_rate:.1f}x / {stage_rate / peer_rate:.1f}x")
    write_results(results, sizes + extra, lines, args.small, loads, args.repeat)


def write_results(results, sizes, ratio_lines, small: bool, loads: list[str], repeat: int) -> None:
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    rows = [f"| {r['tool']} | {r['occurrences']:,} | {r['rows']:,} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['rows_per_s']:,.0f} | {r['rows'] / r['cpu_s']:,.0f} | {r['peak_rss_mb']:.0f} |" for r in results]
    section = "\n".join([
        f"## ingest_gbif{' (--small)' if small else ''}",
        "",
        f"Scaled real GBIF DwC-A (0000066-140928181241064.zip repeated with new gbifIDs) at "
        f"{', '.join(f'{s:,}' for s in sizes)} occurrences (225 columns, multimedia extension). "
        f"Machine: {machine}, shared with other jobs: load average (1, 5, 15 min) "
        f"{' -> '.join(loads)} over the run. Best of {repeat} runs per tool, each in its own subprocess "
        f"(peak RSS: the larger of the runs). Peers: python-dwca-reader {PEER_VERSION} in bench/.venv-dwca "
        f"iterating every core row, without (python-dwca-reader) and with (python-dwca-reader+ext) reading each "
        f"row's multimedia rows (`row.extensions`; rows = core rows); csv-module, a plain csv.reader loop over the zip member keeping the "
        f"ingest columns. ours-reader streams those columns of the core; ours-connector is the full GBIF "
        f"ingest (core + multimedia join to records and rejects; rows = records + rejects), records written "
        f"to one Parquet file; ours-ingest-stage is `biocorpus ingest gbif --input <archive>` as a user runs it "
        f"(local runner, schema check, records and rejects to the data root; its time includes starting the CLI, "
        f"CPU and peak RSS are the CLI process's).",
        "",
        "| tool | occurrences | rows | seconds | CPU seconds | rows/s | rows per CPU second | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| occurrences | reader ÷ python-dwca-reader | connector ÷ python-dwca-reader | "
        "connector ÷ python-dwca-reader+ext | reader ÷ csv-module | connector ÷ csv-module | "
        "connector ÷ python-dwca-reader, rows per CPU second | connector ÷ python-dwca-reader+ext, rows per CPU second | "
        "ingest stage ÷ python-dwca-reader+ext | ingest stage ÷ python-dwca-reader |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *ratio_lines,
        "",
    ])
    write_section(RESULTS, "# ingest_gbif benchmark", section, "bench/ingest_gbif.py")



if __name__ == "__main__":
    main()
