"""Benchmark: biocorpus download vs img2dataset, same loopback server and URL list, both to webdataset.

Photo-sized JPEGs (500x375 to 2048x1536) made from the real camera-trap images are served with
50-200 ms latency; a few percent of URLs hit each failure kind (404, 500, reset, body cut short,
HTML, truncated JPEG, slow response, X-Robots-Tag noai) and one is a 200-megapixel bomb. Both
tools resize to 256 (shortest side, never upscaled) at JPEG quality 90 on the same cores, each in
a subprocess whose process tree's peak memory (PSS) is sampled from /proc. The server runs in its
own process (its images made before either tool starts), and the tools run alternately
``--repeat`` times (ours, peer, ours, peer); each side's best run is reported with the load
average seen during it, since the 2 cores here are often shared with other jobs.

Settings, as a user would pick them for 2 cores: biocorpus in one process, its event loop plus 2
decode threads (``processes=0``; Pillow releases the GIL while decoding), 128 connections;
img2dataset ``processes_count=2, thread_count=64`` (also 128 downloads at once).

    .venv/bin/python bench/download.py [--small] [--urls N] [--repeat R]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402
from results_file import write_section  # noqa: E402  (bench/, beside this script)

PEER_VENV = REPO / "bench" / ".venv-img2dataset"
OUT = REPO / "bench" / "out" / "download"
RESULTS = REPO / "bench" / "results" / "download.md"
IMAGES = REPO / "tests" / "data" / "images" / "camera_traps"
FAILURES = [  # (path template, share of URLs)
    ("/img/missing.jpg?i={i}", 0.010),
    ("/status/500?i={i}", 0.005),
    ("/reset?i={i}", 0.004),
    ("/cut/v0.jpg?i={i}", 0.004),
    ("/html?i={i}", 0.004),
    ("/img/truncated.jpg?i={i}", 0.005),
    ("/slow/v1.jpg?i={i}", 0.002),
    ("/noai/v2.jpg?i={i}", 0.003),
]


def make_images(n_variants: int = 24) -> dict[str, bytes]:
    rng = random.Random(0)
    sources = [Image.open(p).convert("RGB") for p in sorted(IMAGES.glob("*.jpg"))]
    images = {}
    for v in range(n_variants):
        src = sources[v % len(sources)]
        width = rng.randint(500, 2048)
        height = int(width * 3 / 4)
        im = src.resize((width, height), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=rng.randint(85, 92))
        images[f"v{v}.jpg"] = buf.getvalue()
    cattle = (IMAGES / "domestic_cattle.jpg").read_bytes()
    images["truncated.jpg"] = cattle[: len(cattle) // 2]
    from tests.shards.conftest import bomb_header

    images["bomb.jpg"] = bomb_header(cattle)
    return images


def make_urls(base: str, n: int, variants: int) -> list[str]:
    rng = random.Random(1)
    urls = [f"{base}/img/v{i % variants}.jpg?i={i}" for i in range(n)]
    slots = list(range(n))
    rng.shuffle(slots)
    pos = 0
    for template, share in FAILURES:
        for _ in range(max(1, int(n * share))):
            urls[slots[pos]] = base + template.format(i=slots[pos])
            pos += 1
    urls[slots[pos]] = f"{base}/img/bomb.jpg?i=bomb"
    return urls


def serve(images, port_queue, stop):
    from tests.shards.loopback import LoopbackServer

    with LoopbackServer(images, latency_ms=(50, 200), slow_seconds=4.0) as srv:
        port_queue.put(srv.port)
        stop.wait()


def pss_of_tree(root: int) -> int:
    """Sum of PSS (kB) over ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, int, str, float]:
    """Run ``cmd``; return (seconds, peak PSS in MiB of its process tree, output tail, mean
    1-minute load average while it ran)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    peak = 0
    loads: list[float] = []
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, pss_of_tree(proc.pid))
        loads.append(os.getloadavg()[0])
        time.sleep(0.2)
    reader.join(5)
    seconds = time.monotonic() - started
    tail = b"".join(output).decode(errors="replace")[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{tail}")
    return seconds, peak // 1024, tail, sum(loads) / max(1, len(loads))


OURS = textwrap.dedent("""
    import sys
    from pipeline.stages.download import HostOptions, Options, run_download
    if __name__ == "__main__":
        opts = Options(size=256, resize_mode="shortest", quality=90, shard_size=1000, allow_loopback=True,
                       timeout=2.0, retries=1, processes=0,
                       hosts={"127.0.0.1": HostOptions(concurrency=128, rate=0)})
        stats = run_download(sys.argv[1], sys.argv[2], opts, progress=False)
        print(stats)
""")

PEER = textwrap.dedent("""
    import sys
    from img2dataset import download
    if __name__ == "__main__":
        download(url_list=sys.argv[1], output_folder=sys.argv[2], input_format="parquet", url_col="url",
                 output_format="webdataset", image_size=256, resize_mode="keep_ratio",
                 resize_only_if_bigger=True, encode_quality=90, processes_count=2, thread_count=64,
                 number_sample_per_shard=1000, timeout=2, retries=1, distributor="multiprocessing",
                 enable_wandb=False, compute_hash=None)
""")


def ensure_peer() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "img2dataset"], check=True)
    return python


def count_ours(out: Path, urls: list[str]) -> dict:
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    by_url = {r["url"]: r for r in rows}
    bomb = next(u for u in urls if "bomb" in u)
    failed: dict[str, int] = {}
    for r in rows:
        if r["status"] != "ok":
            failed[r["reason"]] = failed.get(r["reason"], 0) + 1
    return {"rows": len(rows), "distinct_urls": len(by_url), "ok": sum(r["status"] == "ok" for r in rows),
            "failed": failed, "bomb": by_url[bomb]["reason"]}


def count_peer(out: Path, urls: list[str]) -> dict:
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    by_url = {r["url"]: r for r in rows}
    bomb = next(u for u in urls if "bomb" in u)
    failed: dict[str, int] = {}
    for r in rows:
        if r["status"] != "success":
            reason = (r.get("error_message") or "?")[:40]
            failed[reason] = failed.get(reason, 0) + 1
    bomb_row = by_url.get(bomb)
    return {"rows": len(rows), "distinct_urls": len(by_url), "ok": sum(r["status"] == "success" for r in rows),
            "failed": failed, "bomb": None if bomb_row is None else
            (bomb_row["status"] + ": " + str(bomb_row.get("error_message"))[:60])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="1,000 URLs instead of 5,000")
    ap.add_argument("--urls", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each tool, alternating; best reported")
    args = ap.parse_args()
    n = args.urls or (1000 if args.small else 5000)
    peer_python = ensure_peer()
    images = make_images()
    ctx = multiprocessing.get_context("spawn")
    port_queue, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=serve, args=(images, port_queue, stop), daemon=True)
    server.start()
    port = port_queue.get(timeout=30)
    try:
        base = f"http://127.0.0.1:{port}"
        urls = make_urls(base, n, 24)
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)
        pq.write_table(pa.table({"url": urls}), OUT / "urls.parquet")
        (OUT / "ours.py").write_text(OURS)
        (OUT / "peer.py").write_text(PEER)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        peer_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        runs: dict[str, list[dict]] = {"biocorpus": [], "img2dataset": []}
        for _ in range(args.repeat):
            for name, python, script, run_env, count in (
                ("biocorpus", sys.executable, "ours.py", env, count_ours),
                ("img2dataset", str(peer_python), "peer.py", peer_env, count_peer),
            ):
                target = OUT / name
                shutil.rmtree(target, ignore_errors=True)
                seconds, peak, _, load = run_measured([python, str(OUT / script), str(OUT / "urls.parquet"),
                                                       str(target)], run_env)
                run = {"seconds": seconds, "peak_mib": peak, "load": load, **count(target, urls)}
                run["images_per_s"] = run["ok"] / seconds
                runs[name].append(run)
                print(f"{name}: {seconds:.1f} s, {run['images_per_s']:.1f} img/s, {peak} MiB, load {load:.1f}",
                      flush=True)
    finally:
        stop.set()
        server.join(10)
    results = {}
    for name, tries in runs.items():
        best = dict(max(tries, key=lambda r: r["images_per_s"]))
        best["all_images_per_s"] = [round(r["images_per_s"], 1) for r in tries]
        best["peak_mib"] = max(r["peak_mib"] for r in tries)  # memory: the worst run, not the best
        results[name] = best
    ratio = results["biocorpus"]["images_per_s"] / results["img2dataset"]["images_per_s"]
    peer_version = subprocess.run([str(peer_python), "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
                                  capture_output=True, text=True).stdout.strip()
    print(json.dumps(results, indent=2, default=str))
    print(f"images/s ratio biocorpus/img2dataset: {ratio:.2f}x")
    write_results(n, results, ratio, peer_version, args.repeat)


def write_results(n: int, results: dict, ratio: float, peer_version: str, repeat: int) -> None:
    ours, peer = results["biocorpus"], results["img2dataset"]
    lines = [
        f"## download: biocorpus vs img2dataset, {n:,} URLs",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"img2dataset {peer_version} in its own venv. {n:,} URLs on one loopback server (50-200 ms latency per "
        "request), photo-sized JPEGs 500x375-2048x1536 made from the camera-trap samples, ~4% failures "
        "(404, 500, reset, cut body, HTML, truncated JPEG, slow, noai) + one 200 MP bomb. Both: shortest side "
        "to 256, never upscaled, JPEG q90, webdataset shards of 1,000, timeout 2 s, 1 retry; 128 downloads "
        "at once. biocorpus: one process, event loop + 2 decode threads (`processes=0`); img2dataset: "
        f"`processes_count=2, thread_count=64`. Each tool run {repeat}x, alternating; best run shown, "
        "peak memory is the worst run's.",
        "",
        "| tool | wall s | ok images | images/s (best) | images/s (each run) | load avg during best | "
        "URLs in status files | peak memory (PSS, MiB) | bomb |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("biocorpus", ours), ("img2dataset", peer)):
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['ok']:,} | {r['images_per_s']:.1f} | "
                     f"{', '.join(map(str, r['all_images_per_s']))} | {r['load']:.1f} | "
                     f"{r['distinct_urls']:,} / {n:,} | {r['peak_mib']:,} | {r['bomb']} |")
    lines += [
        "",
        f"**images/s ratio: {ratio:.2f}x** (goal ≥ 1.8x). Failures, biocorpus: {ours['failed']}; "
        f"img2dataset: {peer['failed']}.",
        "",
        "Run: `.venv/bin/python bench/download.py` (5,000 URLs; `--small` for 1,000; `--repeat 2`).",
        "",
    ]
    write_section(RESULTS, "# Download benchmark", "\n".join(lines), "bench/download.py")


if __name__ == "__main__":
    main()
