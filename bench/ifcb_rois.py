"""Benchmark: IFCB ROIs extracted per second, biocorpus vs a plain per-ROI Python loop, on the real sample bins.

Both sides start from the same bins on disk and end with every ROI as PNG bytes:

- **naive** (what a one-off script does): ADC read with the ``csv`` module, for each ROI
  ``f.seek``/``f.read`` on the ``.roi``, ``PIL.Image.frombytes`` and a default PNG save;
- **biocorpus**: ``sources.ifcb.iter_roi_arrays`` (ADC parsed once, geometry checked with numpy,
  the ``.roi`` memory-mapped, each ROI a zero-copy view) and ``encode_png`` (compress level 1);
  also shown without the PNG step, and the ingest rate (records/s; ingest reads no pixels,
  the download stage cuts each ROI from its ``ifcb://`` URI).

The real bins are small (26 ROIs), so they are repeated (copied under new bin names) to reach a
measurable size. Usage: ``.venv/bin/python bench/ifcb_rois.py [--small]``.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="200 copies of each bin instead of 2000")
    args = ap.parse_args()
    copies = 200 if args.small else 2000
    repeats = 3
    with tempfile.TemporaryDirectory() as tmp:
        bins = make_bins(Path(tmp), copies)
        ours(bins[:4])  # warm imports and the page cache
        naive(bins[:4])
        n_naive, t_naive = best_of(repeats, naive, bins)
        n_naive_raw, t_naive_raw = best_of(repeats, naive, bins, False)
        n_ours, t_ours = best_of(repeats, ours, bins)
        n_arrays, t_arrays = best_of(repeats, ours, bins, False)
        n_ingest, t_ingest = best_of(repeats, ingest, bins)
    assert n_naive == n_naive_raw == n_ours == n_arrays == n_ingest, (n_naive, n_ours, n_arrays, n_ingest)
    rows = [
        ("naive loop: csv + seek/read + PIL PNG (default level)", n_naive, t_naive),
        ("biocorpus: iter_roi_arrays + encode_png (level 1)", n_ours, t_ours),
        ("naive loop without PNG: csv + seek/read + PIL image", n_naive_raw, t_naive_raw),
        ("biocorpus: iter_roi_arrays only (no PNG)", n_arrays, t_arrays),
        ("biocorpus: ingest records (ifcb:// URIs, no pixels)", n_ingest, t_ingest),
    ]
    ratio = t_naive / t_ours
    size = f"{len(bins)} bins ({copies} copies of each of the 2 real sample bins), {n_naive} ROIs"
    lines = [
        "## IFCB ROI extraction",
        "",
        f"Run {datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; {size}; best of {repeats}, one process.",
        "",
        "| path | ROIs | seconds | ROIs/s | vs naive |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, n, t in rows:
        lines.append(f"| {label} | {n} | {t:.3f} | {n / t:,.0f} | {t_naive / t:.2f}x |")
    lines += ["", f"Ratio biocorpus/naive, ROIs to PNG bytes: **{ratio:.2f}x**; ROIs to pixel arrays: "
              f"**{t_naive_raw / t_arrays:.2f}x**. PNG encoding is most of the cost of either loop.", ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
