"""Benchmark: the training loader's images/s from webdataset shards against a plain PIL loop.

Shards are built from the real camera-trap photos and IFCB ROIs (tests/data, else ../shared/data),
stored as the downloader would (JPEG, longest side 512), cycled to N samples in shards of 128.
Both sides read the same tar files and produce batches of 64 normalised 224x224 float arrays:

* biocorpus: ``make_train_loader`` (webdataset, resampled shards, shuffle buffer, JPEG draft
  decode, random resized crop + flip + colour jitter, uint8 torch batches) with 2 workers and
  with 0, then ``normalise_batch`` on the CPU (the training loop does it on its device);
* plain PIL: ``tarfile`` loop, ``Image.open().convert("RGB").resize((224, 224))``, normalise,
  ``np.stack``, in one process.

    .venv/bin/python bench/loader.py [--small] [--samples N]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_file import write_section  # noqa: E402  (bench/, beside this script)

from pipeline.train.loader import (  # noqa: E402
    MEAN,
    STD,
    ClassMaps,
    LoaderSettings,
    discover_shards,
    make_train_loader,
    normalise_batch,
    scan_shards,
)
from schemas import RANKS  # noqa: E402

OUT = REPO / "bench" / "out" / "loader"
RESULTS = REPO / "bench" / "results" / "loader.md"
DATA = REPO / "tests" / "data"
SHARED = REPO / ".." / "shared" / "data"
SHARD_SIZE, STORED_SIDE, INPUT, BATCH = 128, 512, 224, 64
# the labels' lineages, shared with the training tests
LINEAGES = json.loads((DATA / "images" / "lineages.json").read_text())
CAMERA_TRAPS = {k: tuple(v) for k, v in LINEAGES["camera_traps"].items()}
IFCB = {k: tuple(v) for k, v in LINEAGES["ifcb"].items()}


def real_images() -> list[tuple[bytes, tuple]]:
    """(JPEG bytes at the stored size, lineage) for every real image found."""
    out = []
    for name, lineage in CAMERA_TRAPS.items():
        out.append((_stored(DATA / "images" / "camera_traps" / f"{name}.jpg"), lineage))
    for root in (DATA / "plankton" / "ifcb_labeled", SHARED / "plankton" / "ifcb_labeled"):
        labels = root / "D20220522T000439_IFCB134_classes.csv"
        if labels.exists() and (root / "png").is_dir():
            with open(labels, newline="") as fh:
                for row in csv.DictReader(fh):
                    out.append((_stored(root / "png" / row["file_name"]), IFCB[row["class_name"]]))
            break
    return out


def _stored(path: Path) -> bytes:
    img = Image.open(path).convert("RGB")
    img.thumbnail((STORED_SIDE, STORED_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_shards(n: int) -> Path:
    root = OUT / f"shards-{n}"
    if root.exists() and len(list(root.glob("train-*.tar"))) == math.ceil(n / SHARD_SIZE):
        return root
    root.mkdir(parents=True, exist_ok=True)
    images = real_images()
    for shard in range(math.ceil(n / SHARD_SIZE)):
        with tarfile.open(root / f"train-{shard:06d}.tar", "w") as tar:
            for i in range(shard * SHARD_SIZE, min(n, (shard + 1) * SHARD_SIZE)):
                data, lineage = images[i % len(images)]
                key = f"sample{i:07d}"
                record = {"record_id": key, **dict(zip(RANKS, lineage, strict=True))}
                for suffix, payload in (("jpg", data), ("json", json.dumps(record).encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))
    return root


def plain_pil(urls: list[str]) -> int:
    """Decode, resize, normalise and batch every JPEG of the tars in one process; returns images."""
    count, batch = 0, []
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar:
                if not member.name.endswith(".jpg"):
                    continue
                img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                pixels = np.asarray(img.resize((INPUT, INPUT), Image.Resampling.BILINEAR), dtype=np.float32)
                batch.append(((pixels / 255.0 - MEAN) / STD).transpose(2, 0, 1))
                if len(batch) == BATCH:
                    np.stack(batch)
                    count += len(batch)
                    batch = []
    if batch:
        np.stack(batch)
        count += len(batch)
    return count


def ours(urls: list[str], class_maps: ClassMaps, n: int, workers: int) -> int:
    settings = LoaderSettings(batch_size=BATCH, image_size=INPUT, shuffle_buffer=256, workers=workers, seed=0)
    import torch

    count = 0
    for batch in make_train_loader(urls, class_maps, settings, 0, math.ceil(n / BATCH)):
        # the training loop normalises on its device; on CPU that is part of the cost measured here
        normalise_batch(batch["images"], torch.device("cpu"))
        count += len(batch["keys"])
    return count


def timed(fn, *args) -> tuple[int, float]:
    fn(*args)  # warm the page cache and imports
    start = time.perf_counter()
    count = fn(*args)
    return count, time.perf_counter() - start


def write_results(n: int, shards: int, rows: list[tuple[str, int, float]], ratio: float) -> None:
    load = os.getloadavg()
    header = f"## {n:,} samples"
    lines = [
        header,
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load[0]:.1f} while running (other jobs shared the cores). Input: {n:,} samples in "
        f"{shards} shards of {SHARD_SIZE}, cycled from the real camera-trap and IFCB images stored as JPEG "
        f"(longest side {STORED_SIDE}); output: batches of {BATCH} normalised {INPUT}x{INPUT} float32.",
        "",
        "| loader | images | seconds | images/s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {count:,} | {seconds:.2f} | {count / seconds:,.0f} |" for name, count, seconds in rows
    ]
    lines += [
        "",
        f"**Ratio: the biocorpus loader (2 workers) delivers {ratio:.2f}x the images/s of the plain PIL loop**, "
        "while also doing the random resized crop, flip and colour jitter the plain loop skips.",
        "",
    ]
    section = "\n".join(lines)
    write_section(RESULTS, "# training loader vs a plain PIL loop", section, "bench/loader.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="256 samples instead of 2048")
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args()
    n = args.samples or (256 if args.small else 2048)

    import torch

    torch.set_num_threads(1)
    root = build_shards(n)
    urls = discover_shards(root)["train"]
    class_maps = ClassMaps.from_lineages(scan_shards({"train": urls}).lineages)

    rows = []
    for name, fn, fn_args in (
        ("plain PIL loop (1 process)", plain_pil, (urls,)),
        ("biocorpus loader, 0 workers", ours, (urls, class_maps, n, 0)),
        ("biocorpus loader, 2 workers", ours, (urls, class_maps, n, 2)),
    ):
        count, seconds = timed(fn, *fn_args)
        rows.append((name, count, seconds))
        print(f"{name}: {count} images in {seconds:.2f} s = {count / seconds:,.0f} images/s", flush=True)
    ratio = (rows[2][1] / rows[2][2]) / (rows[0][1] / rows[0][2])
    print(f"ratio (biocorpus 2 workers / plain PIL): {ratio:.2f}x")
    write_results(n, len(urls), rows, ratio)
    print(f"results -> {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
