"""Benchmark: curate vs BioTrove's arbor-process (metadata distribution, rare/cap filter, shuffled chunks).

Both tools get the same rows: BioTrove's chunk format for arbor-process (``species`` = epithet
only, as BioTrove ships it) and the same rows as biocorpus records for curate. Names come from
real GBIF samples (tests/data); to reach millions of rows, extra genera are generated from the
real ones and given the real epithets on purpose, so many genera share an epithet. curate is
timed as ``biocorpus curate`` runs it (``pipeline.jobs.curate``, local runner, one process per
core) on a data root whose ``resolved/`` holds the records in several parts; arbor-process runs in
its own venv (``bench/.venv-arbor``) in a subprocess. Each side runs ``--runs`` times (the machine
is shared, the best is kept). Prints the time ratio and how many distinct species each tool
counted (arbor-process groups by epithet). The measured curate is the fused path of the local
runner (``pipeline.curate.fused.curate_fused``: one plan over the decision columns, one pass over
the survivors' full records), each run in a fresh process as a user's run is; the staged path
(four table stages through the runner, then the split step) is run too (``--staged-runs``) and
reported as a second row, and the two are checked to give the same chunks and rejects.

    .venv/bin/python bench/curate.py [--small] [--rows N] [--runs 2] [--staged-runs 1] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PEER_ENV = dict(os.environ, MPLBACKEND="Agg")  # arbor-process's: without the variables schemas sets for biocorpus

# schemas first, as in the CLI: its allocator and BLAS settings must be made before pyarrow and numpy load
from schemas import RECORD_SCHEMA, make_record_id  # noqa: E402, I001

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from tests.curate.conftest import dwca_rows, quercus_row, search_rows  # noqa: E402

from results_file import write_section  # noqa: E402  (bench/, beside this script)

VENV = REPO / "bench" / ".venv-arbor"
OUT = REPO / "bench" / "out" / "curate"
RESULTS = REPO / "bench" / "results" / "curate.md"
RARE, CAP, PART, FILES_PER_CHUNK, SEED = 30, 1000, 2000, 5, 42
SUFFIXES = ("", "ella", "opsis", "oides", "ina", "ia", "ites", "ula", "astrum", "iella")
CATEGORIES = ["Aves", "Arachnida", "Insecta", "Plantae", "Fungi", "Mollusca", "Reptilia"]
RANK_COLS = ("kingdom", "phylum", "class", "order", "family", "genus")


def real_species() -> list[dict]:
    """Distinct real species (full binomial with a full lineage) from the GBIF samples."""
    seen = {}
    for r in dwca_rows() + search_rows() + [quercus_row()]:
        if r["species"] and all(r.get(c) for c in RANK_COLS) and len(r["species"].split()) == 2:
            seen.setdefault(r["species"], {c: r[c] for c in RANK_COLS} | {"species": r["species"]})
    return [seen[k] for k in sorted(seen)]


def make_species(n_species: int) -> list[dict]:
    """``n_species`` distinct binomials: the real ones, then generated genera with real epithets."""
    real = real_species()
    epithets = sorted({s["species"].split()[1] for s in real})
    out = []
    for s in range(n_species):
        t, v = real[s % len(real)], s // len(real)
        if v == 0:
            genus, epithet = t["genus"], t["species"].split()[1]
        else:
            digits, suffix = v, ""
            while digits:
                suffix += SUFFIXES[digits % 10] or "a"
                digits //= 10
            genus, epithet = t["genus"] + suffix, epithets[(s * 7 + v) % len(epithets)]
        out.append({**{c: t[c] for c in RANK_COLS[:-1]}, "genus": genus, "epithet": epithet,
                    "binomial": f"{genus} {epithet}", "taxon_id": f"bench-{s}"})
    return out


def generate(rows: int, files: int, root: Path) -> dict:
    """Write the BioTrove chunks and the equivalent record files; returns what was generated."""
    rng = np.random.default_rng(SEED)
    n_species = max(200, rows // 100)
    species = make_species(n_species)
    weights = 1.0 / np.arange(1, n_species + 1) ** 0.9
    counts = rng.multinomial(rows, weights / weights.sum())
    sp_of_row = rng.permutation(np.repeat(np.arange(n_species), counts))
    cols = {k: np.asarray([s[k] for s in species], dtype=object) for k in species[0]}
    # the curate side reads a data root's resolved/ parts, as `biocorpus curate` does
    biotrove, records = root / "biotrove", root / "data" / "resolved"
    for d in (biotrove, records):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    per_file = -(-rows // files)
    for f in range(files):
        idx = sp_of_row[f * per_file:(f + 1) * per_file]
        photo = np.arange(f * per_file, f * per_file + len(idx))
        url = [f"https://inaturalist-open-data.s3.amazonaws.com/photos/{p}/medium.jpg" for p in photo.tolist()]
        bt = pa.table({
            "photo_id": photo, "scientificName": cols["binomial"][idx].tolist(),
            **{c: cols[c][idx].tolist() for c in RANK_COLS}, "species": cols["epithet"][idx].tolist(),
            "common_name": pa.nulls(len(idx), pa.string()), "photo_url": url,
        })
        pq.write_table(bt, biotrove / f"chunk_{f:04d}.parquet")
        n = len(idx)
        rec = {
            "record_id": [make_record_id("inaturalist", str(p)) for p in photo.tolist()],
            "source": ["inaturalist"] * n,
            "occurrence_id": [str(p // 3) for p in photo.tolist()],
            "media_id": [str(p) for p in photo.tolist()],
            "photo_key": [f"inat-photo-{p}" for p in photo.tolist()],
            "identifier": url, "format": ["image/jpeg"] * n, "license": ["cc-by-4.0"] * n,
            "taxon_id": cols["taxon_id"][idx].tolist(),
            **{c: cols[c][idx].tolist() for c in RANK_COLS}, "species": cols["binomial"][idx].tolist(),
            "taxon_rank": ["species"] * n, "match_type": ["exact"] * n,
            "basis_of_record": ["HUMAN_OBSERVATION"] * n, "quality_grade": ["research"] * n,
        }
        table = pa.table({f.name: pa.array(rec[f.name], f.type) if f.name in rec else pa.nulls(n, f.type)
                          for f in RECORD_SCHEMA}, schema=RECORD_SCHEMA)
        pq.write_table(table, records / f"part-{f:04d}.parquet")
    gen = {"rows": rows, "files": files, "species": n_species,
           "epithets": len(set(cols["epithet"].tolist())), "biotrove": str(biotrove), "records": str(records)}
    (root / "generated.json").write_text(json.dumps(gen))
    return gen


ARBOR_DRIVER = textwrap.dedent('''
    import json, sys, time, glob, os
    if sys.platform == "linux":  # huge pages as a fresh process has them: mimalloc's MIMALLOC_ALLOW_THP=0
        import ctypes            # turned them off for the bench with prctl, which its children inherit
        ctypes.CDLL(None).prctl(41, 0, 0, 0, 0)  # PR_SET_THP_DISABLE, 0
    import pandas as pd
    from arbor_process import MetadataProcessor, GenShuffledChunks
    src, work, categories = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rare, cap, part, fpc, seed = map(int, sys.argv[4:9])
    t0 = time.perf_counter()
    mp = MetadataProcessor(source_folder=src, destination_folder=work + "/dist", categories=categories)
    mp.process_all_files()
    t1 = time.perf_counter()
    counts = work + "/dist/combined_sample_counts_per_species.csv"
    g = GenShuffledChunks(species_count_data=counts, directory=src, rare_threshold=rare, cap_threshold=cap,
                          part_size=part, rare_dir=work + "/rare", cap_filtered_dir_train=work + "/train",
                          capped_dir=work + "/capped", merged_dir=work + "/merged", files_per_chunk=fpc,
                          random_seed=seed)
    g.process_files()
    t2 = time.perf_counter()
    dist = pd.read_csv(counts)
    merged = sum(len(pd.read_parquet(f, columns=["photo_id"])) for f in glob.glob(work + "/merged/*.parquet"))
    print("ARBOR" + json.dumps({"metadata_s": t1 - t0, "filter_chunk_s": t2 - t1, "total_s": t2 - t0,
                                "species_counted": int(dist["species"].nunique()),
                                "per_file_csvs": len(glob.glob(work + "/dist/*_sample_counts_per_species.csv")) - 1,
                                "rows_out": int(merged),
                                "chunks": len(glob.glob(work + "/merged/*.parquet"))}))
''')


def ensure_arbor() -> str | None:
    """Create bench/.venv-arbor with arbor-process; returns why not, or None when ready."""
    py = VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import arbor_process"], capture_output=True).returncode == 0:
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "arbor-process"], capture_output=True, text=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"venv creation failed: {exc}"
    if r.returncode != 0:
        return f"pip install arbor-process failed: {r.stderr.strip()[-400:]}"
    return None


def run_arbor(gen: dict) -> dict:
    why = ensure_arbor()
    if why:
        return {"error": why}
    work = OUT / "arbor"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = [str(VENV / "bin" / "python"), "-c", ARBOR_DRIVER, str(gen["biotrove"]), str(work),
           json.dumps(CATEGORIES), str(RARE), str(CAP), str(PART), str(FILES_PER_CHUNK), str(SEED)]
    load = os.getloadavg()[0]
    r = subprocess.run(cmd, capture_output=True, text=True, env=PEER_ENV)
    line = next((x for x in r.stdout.splitlines() if x.startswith("ARBOR")), None)
    if r.returncode != 0 or line is None:
        return {"error": f"arbor-process failed (rc {r.returncode}): {r.stderr.strip()[-600:]}"}
    return {**json.loads(line[5:]), "load_before": load}


def _config(root: Path, peer_ops_only: bool = False):
    """The bench's curate options; ``peer_ops_only`` also switches off what arbor-process does not do
    (every filter and both dedup layers), leaving the distribution, rare/cap balance, labels and chunks."""
    from pipeline.config import load_config
    from pipeline.curate.filters import filter_names

    overrides = {"data": str(root), "curate.min_per_taxon": RARE, "curate.max_per_taxon": CAP,
                 "curate.chunk_size": PART * FILES_PER_CHUNK, "curate.splits": {"train": 1.0}, "curate.seed": SEED}
    if peer_ops_only:
        overrides.update({"curate.disabled_filters": list(filter_names()), "curate.dedup_records": False,
                          "curate.dedup_photos": False})
    return load_config(overrides=overrides)


def _clean(root: Path) -> None:
    for d in ("work", "curated", "rejects", ".staging", "runs"):
        shutil.rmtree(root / d, ignore_errors=True)


def _outcome(root: Path, stats: dict, steps: dict, total: float, load: float) -> dict:
    chunks = sorted((root / "curated").rglob("chunk-*.parquet"))
    species = pa.concat_arrays([pc.unique(pq.read_table(f, columns=["species"]).column("species").combine_chunks())
                                for f in chunks])
    rejected: dict[str, int] = {}
    for k in ("curate-filter", "curate-dedup-record", "curate-dedup-photo", "curate-balance"):
        for reason, n in stats[k].get("rejected_by_reason", {}).items():
            rejected[reason] = rejected.get(reason, 0) + n
    return {"steps_s": steps, "total_s": total, "load_before": load,
            "species_counted": stats["curate-split"]["classes"] + len(stats["balance"]["rare_taxon"]),
            "binomials_out": len(pc.unique(species)), "rows_out": stats["curate-split"]["in"],
            "chunks": len(chunks), "rejected": rejected, "root": str(root)}


def run_curate(gen: dict) -> dict:
    """The staged chain (``jobs.curate_staged``: table stages on the local runner) on the generated data root."""
    from pipeline.jobs import curate_staged
    from pipeline.runners import make_runner

    root = Path(gen["records"]).parent
    _clean(root)
    cfg = _config(root)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    stats = curate_staged(cfg, make_runner("local", progress=False))
    total = time.perf_counter() - t0
    steps = {k: stats[k]["seconds"] for k in ("curate-filter", "curate-dedup-record", "curate-dedup-photo",
                                               "curate-balance")}
    steps["curate-split"] = total - sum(steps.values())
    return _outcome(root, stats, steps, total, load)


def run_fused(gen: dict, peer_ops_only: bool = False) -> dict:
    """The fused local path (``curate_fused``), reading the same ``resolved/`` into a data root of its own."""
    from pipeline.curate.fused import curate_fused

    root = OUT / ("fused-peer-ops" if peer_ops_only else "fused")
    _clean(root)
    cfg = _config(root, peer_ops_only)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    stats = curate_fused(Path(gen["records"]), root, cfg.curate, force=True)
    total = time.perf_counter() - t0
    steps = {k: stats[k]["seconds"] for k in ("curate-filter", "curate-dedup-record", "curate-dedup-photo",
                                               "curate-balance")}
    steps["curate-split (labels, chunks, rejects)"] = total - sum(steps.values())
    return _outcome(root, stats, steps, total, load)


def run_fused_cold(gen: dict, peer_ops_only: bool = False) -> dict:
    """:func:`run_fused` in a process of its own, as ``biocorpus curate`` runs: a second run in one
    process would find its memory already faulted in, which a user's run never does."""
    cmd = [sys.executable, __file__, "--child", "lean" if peer_ops_only else "full"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    line = next((x for x in r.stdout.splitlines() if x.startswith("FUSED")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"fused curate failed (rc {r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(line[5:])


def same_output(staged_root: Path, fused_root: Path) -> str:
    """Whether both paths wrote the same chunks (captions decoded) and the same rejects."""
    def plain(t: pa.Table) -> pa.Table:
        return pa.table([pc.cast(c, c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in t.columns],
                        names=t.column_names)

    a = sorted(p.relative_to(staged_root) for p in (staged_root / "curated").rglob("chunk-*.parquet"))
    b = sorted(p.relative_to(fused_root) for p in (fused_root / "curated").rglob("chunk-*.parquet"))
    if a != b:
        return f"different chunk files ({len(a)} staged, {len(b)} fused)"
    for p in a:
        if not plain(pq.read_table(staged_root / p)).equals(plain(pq.read_table(fused_root / p))):
            return f"{p} differs"
    key = [("record_id", "ascending"), ("stage", "ascending"), ("reason", "ascending"), ("detail", "ascending")]
    from pipeline.io import read_dataset
    from schemas import REJECT_SCHEMA

    names = {d.name for r in (staged_root, fused_root) for d in (r / "rejects").glob("stage=curate-*")}
    for name in sorted(names):
        sa, fb = (read_dataset(r / "rejects" / name, REJECT_SCHEMA).sort_by(key) for r in (staged_root, fused_root))
        if not sa.equals(fb):
            return f"rejects {name} differ"
    return f"identical: {len(a)} chunks (captions decoded) and every reject row"


def run_floor(gen: dict, rows_out: int) -> dict:
    """The physical floor of curate's output on this machine: DuckDB (every core) reading the same
    ``resolved/`` parts, sampling as many rows as curate keeps, shuffling them by a hash and writing
    them as zstd Parquet in 10,000-row groups. No filters, dedup, balance, captions or labels, and the
    59 record columns only (curate's chunks carry 71)."""
    import duckdb

    out = OUT / "floor.parquet"
    out.unlink(missing_ok=True)
    percent = 100.0 * rows_out / gen["rows"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT * FROM read_parquet('{gen['records']}/*.parquet') "
                    f"USING SAMPLE {percent:.4f} PERCENT (bernoulli, {SEED}) ORDER BY hash(record_id)) "
                    f"TO '{out}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {PART * FILES_PER_CHUNK})")
        written = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
    total = time.perf_counter() - t0
    out.unlink()
    return {"total_s": total, "rows_out": written, "load_before": load}


def best_of(fn, gen: dict, runs: int) -> tuple[dict, list[float]]:
    """The fastest of ``runs`` runs (the machine is shared: the minimum is the least disturbed)."""
    results = [fn(gen) for _ in range(runs)]
    ok = [r for r in results if "error" not in r] or results
    return min(ok, key=lambda r: r.get("total_s", float("inf"))), [round(r.get("total_s", -1), 1) for r in results]


def write_results(gen: dict, arbor: dict, ours: dict, staged: dict | None, ratio: float | None, runs: dict,
                  parity: str, lean: dict | None = None, floor: dict | None = None) -> None:
    header = f"## {gen['rows']:,} rows"
    staged_runs = f", staged curate {runs['staged']} s" if staged else ""
    lines = [
        header, "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, shared with "
        f"other jobs: load average {arbor.get('load_before', 0):.1f} before the best arbor-process run, "
        f"{ours['load_before']:.1f} before the best fused curate run. "
        f"Input: {gen['rows']:,} rows in {gen['files']} files, {gen['species']:,} true species "
        f"(binomials) sharing {gen['epithets']} real epithets; rare < {RARE}, cap {CAP}, "
        f"chunks of {PART * FILES_PER_CHUNK:,} rows. Runs (best taken): fused curate {runs['curate']} s, "
        f"arbor-process {runs['arbor']} s{staged_runs}. The measured curate is the local runner's fused path "
        "(`pipeline.curate.fused.curate_fused`: filters, both dedup layers and the balance decided over the "
        "decision columns only, then one read of the survivors' other columns, labels and the shuffled chunks; "
        "each run in a fresh process); "
        "the staged path is `pipeline.jobs.curate_staged` through the runner's four table stages and the split step "
        "(a process per core). Both read the data root's `resolved/` parts; arbor-process runs in its own venv "
        f"in a subprocess. Fused vs staged output: {parity}.", "",
        "| tool | phase | seconds |",
        "|---|---|---|",
    ]
    if "error" in arbor:
        lines.append(f"| arbor-process | not run | {arbor['error']} |")
    else:
        lines += [f"| arbor-process | metadata distribution (MetadataProcessor) | {arbor['metadata_s']:.1f} |",
                  f"| arbor-process | rare/cap filter + shuffled chunks (GenShuffledChunks) | {arbor['filter_chunk_s']:.1f} |",
                  f"| arbor-process | **total** | **{arbor['total_s']:.1f}** |"]
    lines += [f"| biocorpus curate (fused) | {k} | {v:.1f} |" for k, v in ours["steps_s"].items()]
    lines += [f"| biocorpus curate (fused) | **total** | **{ours['total_s']:.1f}** |"]
    if lean:
        lines += [f"| biocorpus curate (fused, arbor's operations only: no filters, no dedup) | **total** | "
                  f"**{lean['total_s']:.1f}** (runs {runs['lean']}) |"]
    if floor:
        lines += [f"| floor: DuckDB reads the same parts, samples {floor['rows_out']:,} rows, shuffles and writes "
                  f"them (59 columns, no curate work) | **total** | **{floor['total_s']:.1f}** (runs {runs['floor']}) |"]
    if staged:
        lines += [f"| biocorpus curate (staged) | {k} | {v:.1f} |" for k, v in staged["steps_s"].items()]
        lines += [f"| biocorpus curate (staged) | **total** | **{staged['total_s']:.1f}** |"]
    lines += ["", "| tool | rows out | chunks | distinct species counted |", "|---|---|---|---|"]
    if "error" not in arbor:
        lines.append(f"| arbor-process | {arbor['rows_out']:,} | {arbor['chunks']} | {arbor['species_counted']:,} (by epithet) |")
    lines.append(f"| biocorpus curate (fused) | {ours['rows_out']:,} | {ours['chunks']} | "
                 f"{ours['species_counted']:,} (by taxon id) |")
    if staged:
        lines.append(f"| biocorpus curate (staged) | {staged['rows_out']:,} | {staged['chunks']} | "
                     f"{staged['species_counted']:,} (by taxon id) |")
    lines.append("")
    if ratio is not None:
        merged = gen["species"] - arbor["species_counted"]
        speed = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
        staged_note = (f" (staged path: {arbor['total_s'] / staged['total_s']:.2f}, fused is "
                       f"{staged['total_s'] / ours['total_s']:.1f}x faster than staged)" if staged else "")
        lines.append(f"**Ratio arbor/curate (fused) = {ratio:.2f}: curate is {speed}** end to end (goal 10x)"
                     f"{staged_note}. arbor-process merged "
                     f"{merged:,} species into others by epithet ({gen['species']:,} true species counted as "
                     f"{arbor['species_counted']:,}); curate merged 0 ({ours['species_counted']:,} taxa in, "
                     f"{ours['binomials_out']:,} distinct binomials out).")
        if lean and "error" not in arbor:
            lines.append(f"With only the operations arbor-process runs (filters and dedup off; the distribution, "
                         f"rare/cap balance, labels, captions and chunks stay), curate takes {lean['total_s']:.1f} s: "
                         f"**{arbor['total_s'] / lean['total_s']:.2f}x** arbor-process.")
        if floor and "error" not in arbor:
            lines.append(f"The floor (DuckDB on every core only reading, shuffling and writing as many rows as curate "
                         f"keeps) takes {floor['total_s']:.1f} s, {arbor['total_s'] / floor['total_s']:.2f}x arbor-process; "
                         f"curate takes {ours['total_s'] / floor['total_s']:.2f}x the floor. 10x arbor-process would "
                         f"be {arbor['total_s'] / 10:.1f} s.")
    lines += ["", "Notes: curate also runs its filters, both dedup layers, captions and class indices; "
              "arbor-process's metadata step also draws "
              "its distribution plots (matplotlib), and its cap drops a capped species from the chunks (written "
              f"aside) where curate keeps a seeded sample of {CAP}. Rejected by curate: {json.dumps(ours['rejected'])}.", ""]
    section = "\n".join(lines)
    write_section(RESULTS, "# curate vs arbor-process (BioTrove)", section, "bench/curate.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="200,000 rows instead of 5,000,000")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--files", type=int, default=None, help="input files (default rows / 100,000, at least 4)")
    ap.add_argument("--runs", type=int, default=2, help="runs of fused curate and arbor-process; the best is reported")
    ap.add_argument("--staged-runs", type=int, default=1, help="runs of the staged curate (0: skip it)")
    ap.add_argument("--reuse", action="store_true", help="reuse the generated input of a previous run of this size")
    ap.add_argument("--child", choices=["full", "lean"], help=argparse.SUPPRESS)  # one fused run, in its own process
    args = ap.parse_args()
    if args.child:
        gen = json.loads((OUT / "generated.json").read_text())
        print("FUSED" + json.dumps(run_fused(gen, peer_ops_only=args.child == "lean")))
        return
    rows = args.rows or (200_000 if args.small else 5_000_000)
    # several input parts so that the local runner's process pool has work for every core
    files = args.files or max(4, rows // 100_000)
    t = time.perf_counter()
    previous = OUT / "generated.json"
    if args.reuse and previous.exists() and json.loads(previous.read_text())["rows"] == rows:
        gen = json.loads(previous.read_text())
    else:
        gen = generate(rows, files, OUT)
    print(f"generated {rows:,} rows, {gen['species']:,} species, {gen['epithets']} epithets "
          f"in {time.perf_counter() - t:.0f} s")
    ours, ours_runs = best_of(run_fused_cold, gen, args.runs)
    print("curate (fused):", json.dumps(ours), "runs", ours_runs)
    lean, lean_runs = best_of(lambda g: run_fused_cold(g, peer_ops_only=True), gen, args.runs)
    print("curate (fused, arbor's operations only):", json.dumps(lean), "runs", lean_runs)
    floor, floor_runs = best_of(lambda g: run_floor(g, ours["rows_out"]), gen, args.runs)
    print("floor (DuckDB read + sample + shuffle + write):", json.dumps(floor), "runs", floor_runs)
    staged, staged_runs, parity = None, [], "not compared (staged path not run)"
    if args.staged_runs:
        staged, staged_runs = best_of(run_curate, gen, args.staged_runs)
        print("curate (staged):", json.dumps(staged), "runs", staged_runs)
        parity = same_output(Path(staged["root"]), Path(ours["root"]))
        print("fused vs staged:", parity)
    arbor, arbor_runs = best_of(run_arbor, gen, args.runs)
    print("arbor-process:", json.dumps(arbor), "runs", arbor_runs)
    ratio = arbor["total_s"] / ours["total_s"] if "error" not in arbor else None
    if ratio is not None:
        print(f"ratio arbor/curate (fused) = {ratio:.2f}x; species counted: arbor {arbor['species_counted']:,} "
              f"(by epithet), curate {ours['species_counted']:,} (true {gen['species']:,})")
    write_results(gen, arbor, ours, staged, ratio,
                  {"curate": ours_runs, "arbor": arbor_runs, "staged": staged_runs, "lean": lean_runs,
                   "floor": floor_runs}, parity, lean, floor)
    print(f"results -> {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
