"""Benchmark: IFCB ROIs extracted per second, biocorpus vs a plain per-ROI Python loop, on the real sample bins.

Both sides start from the same bins on disk and end with every ROI as PNG bytes:

- **naive** (what a one-off script does): ADC read with the ``csv`` module, for each ROI
  ``f.seek``/``f.read`` on the ``.roi``, ``PIL.Image.frombytes`` and a default PNG save;
- **biocorpus**: ``sources.ifcb.iter_roi_arrays`` (ADC parsed once, geometry checked with numpy,
  the ``.roi`` memory-mapped, each ROI a zero-copy view) and ``encode_png`` (compress level 1);
  also shown without the PNG step, and the ingest rate (records/s; ingest reads no pixels,
  the download stage cuts each ROI from its ``ifcb://`` URI).

The real bins are small (19 and 7 ROIs), so they are repeated two ways: as many small bins (copies
under new bin names: per-bin overhead dominates) and as a few bins of realistic size (each real
bin's ADC rows and ROI bytes concatenated 100 times into one bin, ~1,300 ROIs, like a field bin).
Usage: ``.venv/bin/python bench/ifcb_rois.py [--small]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from sources.ifcb import CONNECTOR, IfcbOptions, encode_png, iter_roi_arrays, parse_bin_name  # noqa: E402

SAMPLES = [ROOT / "tests/data/plankton/ifcb/D2013/D201305/D20130526/D20130526T095207_IFCB013",
           ROOT / "tests/data/plankton/ifcb_labeled/D20220522T000439_IFCB134"]
RESULTS = ROOT / "bench" / "results" / "ifcb_rois.md"


def make_bins(dest: Path, copies: int) -> list[Path]:
    """``copies`` of each real bin, renamed to distinct v2 lids one second apart, in day folders."""
    out = []
    for src in SAMPLES:
        name = parse_bin_name(src.name)
        start = datetime.strptime(name.sample_time, "%Y-%m-%dT%H:%M:%SZ")
        for i in range(copies):
            t = start + timedelta(seconds=i)
            lid = f"D{t:%Y%m%dT%H%M%S}_{name.instrument}"
            day = dest / f"D{t:%Y%m%d}"
            day.mkdir(parents=True, exist_ok=True)
            for ext in (".hdr", ".adc", ".roi"):
                shutil.copy(src.with_suffix(ext), day / f"{lid}{ext}")
            out.append(day / lid)
    return out


def make_big_bins(dest: Path, bins_per_sample: int, factor: int = 100) -> list[Path]:
    """Bins of realistic size: each real bin's rows and ROI bytes repeated ``factor`` times in one bin."""
    out = []
    for src in SAMPLES:
        name = parse_bin_name(src.name)
        start = datetime.strptime(name.sample_time, "%Y-%m-%dT%H:%M:%SZ")
        roi = src.with_suffix(".roi").read_bytes()
        rows = [r for r in csv.reader(src.with_suffix(".adc").read_text().splitlines()) if r]
        adc = []
        for k in range(factor):
            for r in rows:
                r = list(r)
                r[17] = str(int(r[17]) + k * len(roi))
                adc.append(",".join(r))
        for i in range(bins_per_sample):
            t = start + timedelta(hours=1, seconds=i)
            lid = f"D{t:%Y%m%dT%H%M%S}_{name.instrument}"
            day = dest / "big" / f"D{t:%Y%m%d}"
            day.mkdir(parents=True, exist_ok=True)
            shutil.copy(src.with_suffix(".hdr"), day / f"{lid}.hdr")
            (day / f"{lid}.adc").write_text("\n".join(adc) + "\n")
            (day / f"{lid}.roi").write_bytes(roi * factor)
            out.append(day / lid)
    return out


def naive(bins: list[Path], encode: bool = True) -> int:
    n = 0
    for b in bins:
        with open(b.with_suffix(".adc"), newline="") as fa, open(b.with_suffix(".roi"), "rb") as fr:
            for row in csv.reader(fa):
                w, h, s = int(row[15]), int(row[16]), int(row[17])
                if w == 0 or h == 0:
                    continue
                fr.seek(s)
                im = Image.frombytes("L", (w, h), fr.read(w * h))
                if not encode:
                    n += im.size[0] > 0
                    continue
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                n += len(buf.getvalue()) > 0
    return n


def ours(bins: list[Path], encode: bool = True) -> int:
    n = 0
    for b in bins:
        for _, arr in iter_roi_arrays(b):
            if encode:
                n += len(encode_png(arr)) > 0
            else:
                n += arr.size > 0
    return n


def ingest(bins: list[Path]) -> int:
    options = IfcbOptions()
    return sum(batch.records.num_rows for b in bins for batch in CONNECTOR.read(str(b), options))


def timed(fn, *args) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn(*args)
    return n, time.perf_counter() - t0


def best_of(repeats: int, fn, *args) -> tuple[int, float]:
    runs = [timed(fn, *args) for _ in range(repeats)]
    return runs[0][0], min(t for _, t in runs)


def measure(bins: list[Path], repeats: int) -> list[tuple[str, int, float]]:
    ours(bins[:2])  # warm imports and the page cache
    naive(bins[:2])
    runs = [
        ("naive loop: csv + seek/read + PIL PNG (default level)", best_of(repeats, naive, bins)),
        ("biocorpus: iter_roi_arrays + encode_png (level 1)", best_of(repeats, ours, bins)),
        ("naive loop without PNG: csv + seek/read + PIL image", best_of(repeats, naive, bins, False)),
        ("biocorpus: iter_roi_arrays only (no PNG)", best_of(repeats, ours, bins, False)),
        ("biocorpus: ingest records (ifcb:// URIs, no pixels)", best_of(repeats, ingest, bins)),
    ]
    counts = {n for _, (n, _) in runs}
    assert len(counts) == 1, runs
    return [(label, n, t) for label, (n, t) in runs]


def table(title: str, rows: list[tuple[str, int, float]]) -> list[str]:
    t_naive, t_naive_raw = rows[0][2], rows[2][2]
    lines = [f"### {title}", "", "| path | ROIs | seconds | ROIs/s | vs naive (same output) |", "|---|---:|---:|---:|---:|"]
    for i, (label, n, t) in enumerate(rows):
        base = t_naive if i in (0, 1) else t_naive_raw if i in (2, 3) else t_naive
        lines.append(f"| {label} | {n} | {t:.3f} | {n / t:,.0f} | {base / t:.2f}x |")
    lines += ["", f"Ratio biocorpus/naive, ROIs to PNG bytes: **{t_naive / rows[1][2]:.2f}x**; ROIs to pixel "
              f"arrays: **{t_naive_raw / rows[3][2]:.2f}x**.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a quarter of the default size")
    args = ap.parse_args()
    copies, big = (100, 2) if args.small else (400, 8)
    repeats = 3
    with tempfile.TemporaryDirectory() as tmp:
        small_bins = make_bins(Path(tmp), copies)
        big_bins = make_big_bins(Path(tmp), big)
        small_rows = measure(small_bins, repeats)
        big_rows = measure(big_bins, repeats)
    lines = [
        "## IFCB ROI extraction",
        "",
        f"Run {datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other jobs: load average {os.getloadavg()[0]:.1f}), "
        f"Python {platform.python_version()}; best of {repeats}, one process. The ingest row has no pixel "
        "work and is compared with the naive PNG loop (what a hand-written ingest does).",
        "",
    ]
    lines += table(f"Many small bins: {len(small_bins)} bins ({copies} copies of each real bin), "
                   f"{small_rows[0][1]} ROIs", small_rows)
    lines += table(f"Bins of field size: {len(big_bins)} bins (each real bin repeated 100x inside one bin), "
                   f"{big_rows[0][1]} ROIs", big_rows)
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
