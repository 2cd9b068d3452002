"""`make demo`: every stage, in order, on the real samples bundled in tests/data, offline.

Web sources (GBIF, iNaturalist, EOL) name images on hosts this machine cannot reach, so the demo
starts a loopback image host and points those URLs at it: the metadata is real, the pixels served
for web records are real camera-trap photos standing in for the named ones. Plankton images (IFCB
regions of interest, EcoTaxa, class folders) are the real images of those records.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data"
DEMO_CONFIG = Path(__file__).with_name("demo.toml")
# (source, input under tests/data): every connector on its real sample
PLAN: tuple[tuple[str, str], ...] = (
    ("gbif", "gbif/dwca/0000066-140928181241064.zip"),
    ("inaturalist", "inaturalist/open_data"),
    ("eol", "eol/publishing_store/store-328598.json"),
    ("ecotaxa", "plankton/ecotaxa/ecotaxa_table_with_classification.tsv"),
    ("ecotaxa", "plankton/ecotaxa/example_table_ifcb.tsv"),
    ("ifcb", "plankton/ifcb"),
    ("ifcb", "plankton/ifcb_labeled"),
)
BACKBONES: tuple[tuple[str, str], ...] = (
    ("inat", "taxonomy/inat_taxonomy_tree/taxonomy.csv"),
)
STAND_INS = sorted((SAMPLES / "images" / "camera_traps").glob("*.jpg"))


class ImageHost:
    """A loopback HTTP server answering any path with a view of one of the real sample photos.

    Each path gets its own crop of a photo (chosen, placed and sized by a hash of the path), so the
    stand-ins are distinct images: the byte and perceptual dedup after download sees them as such.
    """

    def __init__(self, images: list[Path], longest: int = 1024, port: int = 0):
        """``port``: the one to listen on if it is free (else any free one; 0: any)."""
        from PIL import Image

        self.photos = []
        for p in images:
            with Image.open(p) as im:
                im = im.convert("RGB")
                im.thumbnail((longest, longest))
                self.photos.append(im.copy())
        self.requests = 0
        self.lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                with host.lock:
                    host.requests += 1
                body = host.view(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError:  # taken
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def view(self, path: str) -> bytes:
        from PIL import ImageOps

        h = hashlib.sha256(path.encode()).digest()
        photo = self.photos[h[0] % len(self.photos)]
        w, ht = photo.size
        frac = 0.35 + 0.4 * h[1] / 255
        cw, ch = int(w * frac), int(ht * frac)
        x, y = int((w - cw) * h[2] / 255), int((ht - ch) * h[3] / 255)
        crop = photo.crop((x, y, x + cw, y + ch))
        if h[4] & 1:
            crop = ImageOps.mirror(crop)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _mirror_port(mirrored: Path) -> int:
    """The image host's port in the download input of the last demo run (0: none). A rerun listens
    there again, so its stand-in URLs are the same and its download has nothing to do: download
    keeps a shard only for the URLs it was made from."""
    import pyarrow.parquet as pq

    from pipeline.io import parquet_files

    for f in parquet_files(mirrored):
        for url in pq.read_table(f, columns=["identifier"]).column("identifier").to_pylist():
            if url and url.startswith("http://127.0.0.1:"):
                return urlsplit(url).port or 0
    return 0


def mirror_urls(table: pa.Table, base: str) -> pa.Table:
    """Point http(s) identifiers at the loopback host (``<base>/<host>/<path>``); local URIs stay."""
    urls = table.column("identifier").to_pylist()
    mirrored = []
    for u in urls:
        if u and u.startswith(("http://", "https://")):
            parts = urlsplit(u)
            mirrored.append(f"{base}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else ""))
        else:
            mirrored.append(u)
    i = table.schema.get_field_index("identifier")
    return table.set_column(i, "identifier", pa.array(mirrored, pa.string()))


def arrange_class_folders(dest: Path) -> Path:
    """A WHOI-Plankton-style class-per-folder tree of the real labelled IFCB PNGs, by their class CSV.

    No class-folder sample may be bundled (the UVP6 one is GPL-3.0), so the demo arranges the
    IFCB134 PNGs the way such datasets are laid out, to run the ``folders`` connector on real images.
    """
    import csv
    import shutil

    labelled = SAMPLES / "plankton" / "ifcb_labeled"
    with open(next(labelled.glob("*_classes.csv")), newline="") as f:
        for row in csv.DictReader(f):
            src = labelled / "png" / row["file_name"]
            if src.is_file() and row["class_name"]:
                target = dest / row["class_name"] / src.name
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    shutil.copyfile(src, target)
    return dest


def _step(name: str) -> float:
    print(f"\n== {name}", file=sys.stderr, flush=True)
    return time.time()


def run_demo(data: Path, runner_name: str = "local") -> dict:
    from pipeline import jobs
    from pipeline.config import load_config
    from pipeline.io import atomic_write_parquet, parquet_files, read_dataset
    from pipeline.runners import make_runner
    from taxonomy.cli import build_backbone_cli

    data = Path(data).absolute()
    missing = [p for _, p in PLAN + BACKBONES if not (SAMPLES / p).exists()]
    if missing:
        raise FileNotFoundError(f"bundled samples missing under {SAMPLES}: {missing}")
    cfg = load_config(DEMO_CONFIG, {"data": str(data), "runner.name": runner_name,
                                    "resolve.data_root": str(data)})
    runner = make_runner(cfg.runner.name, cfg.runner.workers, tuple(cfg.runner.beam_args))
    summary: dict = {"ingest": {}}

    _step("backbone")
    for kind, path in BACKBONES:
        out = build_backbone_cli(kind, SAMPLES / path, data, "demo")
        summary["backbone"] = str(out)

    folders = arrange_class_folders(data / "work" / "demo" / "whoi_style_folders")
    for source, path in [*PLAN, ("folders", str(folders))]:
        _step(f"ingest {source} {path}")
        res = jobs.ingest(cfg, runner, source, str(SAMPLES / path), jobs.dataset_slug(path, None))
        summary["ingest"][f"{source}:{path}"] = {k: res.stats[k] for k in ("in", "out", "rejected")}

    _step("resolve")
    summary["resolve"] = jobs.resolve(cfg, runner).stats
    _step("curate")
    summary["curate"] = jobs.curate(cfg, runner)

    _step("download (web images from the loopback host)")
    mirrored = data / "work" / "demo" / "download-input"
    previous = _mirror_port(mirrored)
    with ImageHost(STAND_INS, port=previous) as host:
        if previous and host.port != previous and (data / "shards").exists():
            aside = data / "work" / "demo" / "shards-before"
            shutil.rmtree(aside, ignore_errors=True)
            (data / "shards").rename(aside)
            print(f"demo: port {previous} of the last run's image host is taken, so the stand-in URLs change; "
                  f"the shards made from the old ones are moved to {aside}", file=sys.stderr)
        for f in parquet_files(data / "curated"):
            rel = f.relative_to(data / "curated")
            atomic_write_parquet(mirror_urls(read_dataset(f), host.base), mirrored / rel)
        summary["download"] = jobs.download(cfg, urls=mirrored)
        summary["download"]["loopback_requests"] = host.requests

    _step("download plankton ROIs as a URL list (local images, same fetch path)")
    # the bundled backbone slices do not cover these ciliates and diatoms, so their records stop
    # at curate (lineage_depth); their images still go through the downloader as an unlabelled list
    raw = read_dataset(data / "raw")
    local = raw.filter(pc.is_in(raw.column("source"), pa.array(["ifcb", "folders"])))
    url_list = pa.table({"url": local.column("identifier"), "key": local.column("record_id"),
                         "caption": pc.fill_null(local.column("verbatim_name"), "unlabelled")})
    atomic_write_parquet(url_list, data / "work" / "demo" / "plankton-urls.parquet")
    summary["download_plankton"] = jobs.download(cfg, urls=data / "work" / "demo" / "plankton-urls.parquet",
                                                 output=data / "shards-plankton")

    _step("train")
    summary["train"] = jobs.train(cfg)
    _step("report")
    summary["report"] = str(jobs.report(cfg))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data", help="data root to write (default data/)")
    ap.add_argument("--runner", default="local", choices=["local", "beam"])
    args = ap.parse_args(argv)
    started = time.time()
    summary = run_demo(Path(args.data), args.runner)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    print(f"\ndemo finished in {time.time() - started:.0f} s; open {summary['report']}/index.html "
          f"or try: .venv/bin/biocorpus query --data {args.data} "
          "\"SELECT family, count(*) FROM records GROUP BY 1 ORDER BY 2 DESC\"", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
