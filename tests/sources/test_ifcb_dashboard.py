"""IFCB dashboard client against a loopback server shaped like ifcbdb, serving the real sample bins."""

from __future__ import annotations

import csv
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pytest
import requests
from PIL import Image

from schemas import Reason, conform, make_record_id
from sources.http import HttpClient
from sources.ifcb import encode_png, iter_roi_arrays, parse_adc, parse_bin_name
from sources.ifcb_dashboard import IfcbDashboardConnector, IfcbDashboardOptions, split_dashboard_input
from sources.localuri import read_local

DATA = Path(__file__).resolve().parents[1] / "data" / "plankton"
BINS = {
    "D20220522T000439_IFCB134": DATA / "ifcb_labeled" / "D20220522T000439_IFCB134",
    "D20130526T095207_IFCB013": DATA / "ifcb" / "D2013" / "D201305" / "D20130526" / "D20130526T095207_IFCB013",
}
MISSING = "D20990101T000000_IFCB999"  # listed by export_metadata, unknown to /api/bin (404)
# Position and depth of IFCB134 on RV Svea, from the real EcoTaxa sample of that instrument
# (example_table_ifcb.tsv); the raw bin itself carries none.
SVEA = {"lat": 57.7281986, "lng": 11.46815443, "depth": 4.0}
EXPORT_COLUMNS = ["pid", "sample_time", "ifcb", "ml_analyzed", "latitude", "longitude", "depth", "cruise", "cast",
                  "niskin", "sample_type", "n_images", "tag1", "comment_summary", "trigger_selection", "skip"]


def n_images(path: Path) -> int:
    rows = parse_adc(path.with_suffix(".adc").read_text())
    return int(((rows.width > 0) & (rows.height > 0)).sum())


def export_csv(pids: list[str], skip: set[str]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, EXPORT_COLUMNS)
    w.writeheader()
    for pid in pids:
        name = parse_bin_name(pid)
        loc = SVEA if pid.endswith("IFCB134") else {"lat": "", "lng": "", "depth": ""}
        w.writerow({"pid": pid, "sample_time": name.sample_time.replace("T", " ").replace("Z", "+00:00"),
                    "ifcb": int(name.instrument[4:]), "ml_analyzed": "", "latitude": loc["lat"],
                    "longitude": loc["lng"], "depth": loc["depth"], "cruise": "", "cast": "", "niskin": "",
                    "sample_type": "underway", "n_images": n_images(BINS[pid]) if pid in BINS else 0, "tag1": "",
                    "comment_summary": "", "trigger_selection": "", "skip": int(pid in skip)})
    return out.getvalue()


def bin_json(pid: str, skip: bool) -> dict:
    """The keys ifcbdb's _bin_details returns (include_coordinates=false)."""
    name = parse_bin_name(pid)
    loc = SVEA if pid.endswith("IFCB134") else {"lat": 0.0, "lng": 0.0, "depth": 0.0}
    return {"scale": 0.33, "shape": [600, 800], "previous_bin_id": "", "next_bin_id": "", "lat": loc["lat"],
            "lng": loc["lng"], "lat_rounded": str(round(loc["lat"], 5)), "lng_rounded": str(round(loc["lng"], 5)),
            "depth": loc["depth"], "pages": [0, 1], "num_pages": 1, "tags": ["svea"], "coordinates": [],
            "has_blobs": False, "has_features": False, "has_class_scores": False,
            "timestamp_iso": name.sample_time.replace("Z", "+00:00"), "instrument": name.instrument,
            "num_triggers": len(parse_adc(BINS[pid].with_suffix(".adc").read_text()).trigger),
            "num_images": n_images(BINS[pid]), "trigger_freq": 0.1, "ml_analyzed": "4.321 ml", "size": 1234,
            "datasets": ["testds"], "primary_dataset": "testds", "comments": [], "concentration": 1.0,
            "skip": skip, "sample_type": "underway", "cruise": "", "cast": "", "niskin": ""}


def bin_zip(pid: str, drop: set[int]) -> bytes:
    """Like ifcbdb's Bin.zip(): the bin's PNGs named {pid}_{roi:05d}.png plus its header."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(f"{pid}.hdr", BINS[pid].with_suffix(".hdr").read_bytes())
        for n, arr in iter_roi_arrays(BINS[pid]):
            if n not in drop:
                zf.writestr(f"{pid}_{n:05d}.png", encode_png(arr))
    return out.getvalue()


class Dashboard:
    """Loopback ifcbdb: routes of dashboard/urls.py; records every request path."""

    def __init__(self, skip: set[str] = frozenset(), fail_once: set[str] = frozenset(), drop: set[int] = frozenset(),
                 bin_json=None):
        self.skip, self.fail_once, self.drop = set(skip), set(fail_once), set(drop)
        self.bin_json = bin_json or {}  # pid -> fn(the bin's JSON) -> what /api/bin answers instead
        self.paths: list[str] = []
        self.agents: set[str] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self):
        dash = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = urlsplit(self.path).path
                dash.paths.append(path)
                dash.agents.add(self.headers.get("User-Agent", ""))
                if path in dash.fail_once:
                    dash.fail_once.discard(path)
                    return self.send(503, b"busy", "text/plain")
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "export_metadata"] and len(parts) == 3:
                    body = export_csv(sorted([*BINS, MISSING]), dash.skip)
                    return self.send(200, body.encode(), "text/csv")
                if parts[:2] == ["api", "bin"] and parts[2] in BINS:
                    doc = bin_json(parts[2], parts[2] in dash.skip)
                    doc = dash.bin_json.get(parts[2], lambda d: d)(doc)
                    return self.send(200, json.dumps(doc).encode(), "application/json")
                if parts[0] == "data" and len(parts) == 2:
                    stem, _, ext = parts[1].rpartition(".")
                    if ext == "adc" and stem in BINS:
                        return self.send(200, BINS[stem].with_suffix(".adc").read_bytes(), "text/csv")
                    if ext == "zip" and stem in BINS:
                        return self.send(200, bin_zip(stem, dash.drop), "application/zip")
                    pid, _, roi = stem.rpartition("_")
                    if ext == "png" and pid in BINS and roi.isdigit():
                        arrays = dict(iter_roi_arrays(BINS[pid]))
                        if int(roi) in arrays:
                            return self.send(200, encode_png(arrays[int(roi)]), "image/png")
                # /api/list_bins needs a login on current dashboards; anything else is unknown
                return self.send(404, b"not found", "text/html")

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def no_wait_client(options: IfcbDashboardOptions) -> HttpClient:
    return HttpClient(rate=1000, burst=1000, max_retries=options.max_retries, timeout_s=5, sleep=lambda s: None)


CONNECTOR = IfcbDashboardConnector(client_factory=no_wait_client)


def read_dataset(url: str, **opts):
    options = IfcbDashboardOptions(**opts)
    tasks = CONNECTOR.tasks(url, options)
    batches = [b for t in tasks for b in CONNECTOR.read(t, options)]
    skipped: dict[str, int] = {}
    for b in batches:
        for k, v in b.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    records = pa.concat_tables([b.records for b in batches if b.records.num_rows])
    return tasks, records, pa.concat_tables([b.rejects for b in batches]), skipped


@pytest.fixture
def dashboard():
    with Dashboard(fail_once={"/api/bin/D20220522T000439_IFCB134"}) as d:
        yield d


def test_bins_listed_by_export_metadata_and_read_as_png_urls(dashboard):
    tasks, records, rejects, skipped = read_dataset(f"{dashboard.url}/api/export_metadata/testds", license="cc-by-4.0")
    assert tasks == [f"{dashboard.url}/api/bin/{pid}?dataset=testds" for pid in sorted([*BINS, MISSING])]
    assert "/api/list_bins" not in dashboard.paths
    assert records.num_rows == 7 + 19 and skipped == {"ifcb_empty_trigger": 1 + 99}
    assert rejects.column("reason").to_pylist() == [Reason.NO_IMAGE]
    assert rejects.column("record_id").to_pylist() == [make_record_id("ifcb", MISSING)]
    # every ADC row of the two real bins is a record or a counted empty trigger
    total_rows = sum(len(parse_adc(p.with_suffix(".adc").read_text()).trigger) for p in BINS.values())
    assert records.num_rows + skipped["ifcb_empty_trigger"] == total_rows
    good, bad = conform(records, "ingest")
    assert good.num_rows == records.num_rows and bad.num_rows == 0

    rows = {r["media_id"]: r for r in records.to_pylist()}
    r = rows["D20220522T000439_IFCB134_00002"]
    assert r["identifier"] == f"{dashboard.url}/data/D20220522T000439_IFCB134_00002.png"
    assert r["record_id"] == make_record_id("ifcb", "D20220522T000439_IFCB134_00002")  # same id as the raw bin
    assert (r["decimal_latitude"], r["decimal_longitude"], r["depth_min_m"]) == (57.7281986, 11.46815443, 4.0)
    assert (r["instrument"], r["event_date"], r["source_dataset"]) == ("IFCB134", "2022-05-22T00:04:39+00:00",
                                                                      "testds")
    assert (r["width"], r["height"], r["license"]) == (160, 74, "cc-by-4.0")
    assert json.loads(r["extra"])["ml_analyzed"] == "4.321 ml"
    # the dashboard's "no position" 0, 0 is not a position
    assert rows["D20130526T095207_IFCB013_00007"]["decimal_latitude"] is None
    # the PNG at the identifier is the ROI cut from the raw bin
    png = requests.get(r["identifier"], timeout=5).content
    raw = dict(iter_roi_arrays(BINS["D20220522T000439_IFCB134"]))[2]
    assert np.array_equal(np.array(Image.open(io.BytesIO(png))), raw)
    # the 503 on the first /api/bin call was retried
    assert dashboard.paths.count("/api/bin/D20220522T000439_IFCB134") == 2


def test_the_real_client_names_itself_and_keeps_its_rate():
    """``make_client`` (what ``make ingest SOURCE=ifcb_dashboard`` uses) sends the configured
    User-Agent on every request and spaces requests at the configured rate."""
    import time

    with Dashboard() as d:
        options = IfcbDashboardOptions(rate=4.0, user_agent="biocorpus-test/1 (+mailto:lab@example.org)")
        connector = IfcbDashboardConnector()
        started = time.monotonic()
        tasks = connector.tasks(f"{d.url}/api/export_metadata/mvco", options)
        for task in tasks:
            for _ in connector.read(task, options):
                pass
        elapsed = time.monotonic() - started
    assert d.agents == {"biocorpus-test/1 (+mailto:lab@example.org)"}
    assert len(d.paths) >= 3
    # one token bucket (burst = rate) for every bin this process reads: past the burst, 1 / rate each
    assert elapsed >= (len(d.paths) - 4) / 4.0 * 0.9


def test_zip_mode_caches_each_bin_zip_and_rejects_missing_pngs(tmp_path):
    with Dashboard(drop={5, 7}) as dash:  # ROI 5 of IFCB013 is an empty trigger
        _, records, rejects, skipped = read_dataset(f"{dash.url}/testds", images="zip", cache_dir=str(tmp_path))
        zips_fetched = sum(p.endswith(".zip") for p in dash.paths)
    assert zips_fetched == 2
    assert records.num_rows == 5 + 18 and skipped == {"ifcb_empty_trigger": 100}
    missing = [d for d, r in zip(rejects.column("detail").to_pylist(), rejects.column("reason").to_pylist(),
                                 strict=True) if r == Reason.NO_IMAGE and "has no" in d and ".png" in d]
    assert len(missing) == 3
    uri = records.column("identifier")[0].as_py()
    assert uri.startswith("zip://") and (tmp_path / "testds").is_dir()
    assert Image.open(io.BytesIO(read_local(uri))).format == "PNG"


def test_skipped_bins_are_counted_not_read(tmp_path):
    with Dashboard(skip={"D20130526T095207_IFCB013"}) as dash:
        _, records, _, skipped = read_dataset(f"{dash.url}/api/export_metadata/testds")
        assert not any(p.startswith("/data/D20130526T095207_IFCB013") for p in dash.paths)
    assert skipped == {"ifcb_dashboard_bin_skipped": 1, "ifcb_empty_trigger": 1}
    assert records.num_rows == 7
    with Dashboard(skip={"D20130526T095207_IFCB013"}) as dash:
        _, records, _, _ = read_dataset(f"{dash.url}/api/export_metadata/testds", include_skipped=True)
    assert records.num_rows == 26


def test_bin_json_of_the_wrong_shape_rejects_that_bin():
    """Found by a fuzz of the API adapters: a bin's JSON as a list, or its instrument as a list,
    stopped the ingest with AttributeError / ArrowTypeError."""
    first, second = sorted(BINS)
    with Dashboard(bin_json={first: lambda d: [d], second: lambda d: {**d, "instrument": ["a", "b"]}}) as dash:
        options = IfcbDashboardOptions()
        tasks = CONNECTOR.tasks(f"{dash.url}/api/export_metadata/testds", options)
        batches = [b for t in tasks for b in CONNECTOR.read(t, options)]
    rejects = pa.concat_tables([b.rejects for b in batches]).to_pylist()
    bad = {r["detail"].split(":")[0]: r for r in rejects if r["reason"] == Reason.MALFORMED_ROW}
    assert set(bad) == {f"/api/bin/{first}", f"/api/bin/{second}"}
    assert "a JSON list, not an object" in bad[f"/api/bin/{first}"]["detail"]
    assert "malformed JSON" in bad[f"/api/bin/{second}"]["detail"]


def test_a_bad_pid_in_the_export_is_rejected():
    options = IfcbDashboardOptions()
    [batch] = CONNECTOR.read("http://127.0.0.1:9/api/bin/not_a_bin?dataset=x", options)
    assert batch.rejects.column("reason").to_pylist() == [Reason.MALFORMED_ROW]


@pytest.mark.parametrize("input, base, dataset", [
    ("https://ifcb-data.whoi.edu/api/export_metadata/mvco", "https://ifcb-data.whoi.edu", "mvco"),
    ("https://ifcb-data.whoi.edu/timeline?dataset=EXPORTS", "https://ifcb-data.whoi.edu", "EXPORTS"),
    ("https://ifcb.example.org/sub/api/export_metadata/svea", "https://ifcb.example.org/sub", "svea"),
    ("https://ifcb-data.whoi.edu/mvco", "https://ifcb-data.whoi.edu", "mvco"),
    ("NESLTER_broadscale", "https://ifcb-data.whoi.edu", "NESLTER_broadscale"),
], ids=["export-url", "timeline-url", "subpath", "dataset-url", "bare-name"])
def test_dashboard_input_forms(input, base, dataset):
    options = IfcbDashboardOptions(base_url="https://ifcb-data.whoi.edu/")
    assert split_dashboard_input(input, options) == (base, dataset)


def test_missing_dashboard_or_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="dashboard URL and a dataset"):
        split_dashboard_input(None, IfcbDashboardOptions())
