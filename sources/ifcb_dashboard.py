"""IFCB dashboard (WHOIGit/ifcbdb) API client: a dataset's bins read into one record per region of interest.

Endpoints used (ifcbdb ``dashboard/urls.py``):

- ``/api/export_metadata/{dataset}``: CSV, one row per bin (``pid``, ``sample_time``, ``ifcb``,
  ``latitude``, ``longitude``, ``depth``, ``skip``, ...). It is how bins are listed:
  ``/api/list_bins`` no longer exists (it now needs a login);
- ``/api/bin/{pid}``: JSON bin details (``lat``, ``lng``, ``depth``, ``timestamp_iso``,
  ``instrument``, ``skip``, ``cruise``, ``cast``, ``niskin``, ``sample_type``, ``tags``...);
- ``/data/{pid}.adc``: the raw ADC, for the ROI geometry (which rows hold an image, their sizes);
- ``/data/{pid}_{roi:05d}.png`` per image (default), or ``/data/{pid}.zip`` (every PNG of the bin)
  fetched once into a cache folder and addressed with ``zip://`` URIs.

Records use the raw-bin connector's record ids (``make_record_id("ifcb", pid_roi)``), so the same
ROI read from a dashboard and from its raw bin is recognised as one record by dedup.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pyarrow as pa
from pydantic import Field

from schemas import Reason, empty_rejects, make_record_id, make_rejects
from schemas.record import extra_json
from sources.base import SHAPE_ERRORS, IngestBatch, SourceOptions, query_hash, shape_detail
from sources.http import USER_AGENT, HttpClient, HttpError
from sources.ifcb import parse_adc, parse_bin_name
from sources.localuri import zip_uri

SOURCE = "ifcb_dashboard"
ID_NAMESPACE = "ifcb"
STAGE = "ingest"
_BIN_KEYS = ("cruise", "cast", "niskin", "sample_type", "tags", "datasets", "ml_analyzed", "num_triggers",
             "num_images", "concentration")


class IfcbDashboardOptions(SourceOptions):
    """``[sources.ifcb_dashboard]``: reading a dataset from an IFCB dashboard."""

    base_url: str = Field("", description="dashboard root, e.g. https://ifcb-data.whoi.edu (INPUT may give it)")
    dataset: str = Field("", description="dataset name, e.g. mvco (INPUT may give it)")
    images: Literal["png", "zip"] = Field("png", description="png: one URL per ROI; zip: fetch each bin's zip once")
    cache_dir: str = Field("data/cache/ifcb_dashboard", description="where zip mode keeps the bins' zips")
    start_date: str | None = Field(None, description="only bins sampled on or after this date (YYYY-MM-DD)")
    end_date: str | None = Field(None, description="only bins sampled on or before this date (YYYY-MM-DD)")
    include_skipped: bool = Field(False, description="also read bins the dashboard marks skip")
    license: str = Field("unknown", description="licence code for every record (the dataset's licence)")
    rate: float = Field(2.0, gt=0, description="requests per second to the dashboard")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(5, ge=0, description="retries of a transient failure (429, 5xx, timeout)")
    user_agent: str = Field(USER_AGENT, description="User-Agent sent with every request to the dashboard")

    def query_fingerprint(self) -> str | None:
        """A short stable hash of the bins the options choose (dashboard, dataset, dates, skipped
        bins), none of how they are fetched: names the dataset of an ingest without INPUT."""
        if not (self.base_url and self.dataset):
            return None
        q = {"base_url": self.base_url.rstrip("/"), "dataset": self.dataset, "start_date": self.start_date,
             "end_date": self.end_date, "include_skipped": self.include_skipped}
        return query_hash(q)


def split_dashboard_input(input: str | None, options: IfcbDashboardOptions) -> tuple[str, str]:
    """``(base_url, dataset)`` from INPUT (a URL or a dataset name) falling back to the options.

    Accepted URLs: ``https://host/api/export_metadata/mvco``, ``https://host/timeline?dataset=mvco``,
    ``https://host/mvco``; a bare name is the dataset on ``options.base_url``.
    """
    base, dataset = options.base_url.rstrip("/"), options.dataset
    if input and "://" in input:
        parts = urlsplit(input)
        base = f"{parts.scheme}://{parts.netloc}"
        path = [p for p in parts.path.split("/") if p]
        query = parse_qs(parts.query)
        if len(path) >= 3 and path[-3:-1] == ["api", "export_metadata"]:
            dataset = path[-1]
            base += "/" + "/".join(path[:-3]) if path[:-3] else ""
        elif "dataset" in query:
            dataset = query["dataset"][0]
        elif path:
            dataset = path[-1]
    elif input:
        dataset = input
    if not base or not dataset:
        raise ValueError("ifcb_dashboard needs a dashboard URL and a dataset: INPUT=https://host/api/export_metadata/"
                         "<dataset>, or base_url and dataset in [sources.ifcb_dashboard]")
    return base, dataset


def parse_export_metadata(text: str) -> list[dict[str, str]]:
    """Rows of an ``/api/export_metadata`` CSV as dicts (the dashboard's column names)."""
    return list(csv.DictReader(io.StringIO(text)))


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "t", "yes")


def _coordinate(value, bound: float) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if not math.isnan(f) and -bound <= f <= bound else None


def make_client(options: IfcbDashboardOptions) -> HttpClient:
    """The polite client of a dashboard (full URLs: the dashboard root comes from INPUT or the options)."""
    return HttpClient(rate=options.rate, burst=max(1.0, options.rate), max_retries=options.max_retries,
                      timeout_s=options.timeout_s, user_agent=options.user_agent)


class IfcbDashboardConnector:
    """Connector for one dashboard dataset; one task per bin (its ``/api/bin`` URL)."""

    name = SOURCE
    Options = IfcbDashboardOptions

    def __init__(self, client_factory=make_client):
        self.client_factory = client_factory
        self._clients: dict[str, HttpClient] = {}

    def client(self, options: IfcbDashboardOptions) -> HttpClient:
        """One client per options in this process: the rate holds across the bins a worker reads,
        instead of every bin starting with a full burst."""
        key = options.model_dump_json()
        if key not in self._clients:
            self._clients[key] = self.client_factory(options)
        return self._clients[key]

    def tasks(self, input: str | None, options: IfcbDashboardOptions) -> list[str]:
        """Every bin of the dataset as ``{base}/api/bin/{pid}?dataset={dataset}``, in pid order."""
        base, dataset = split_dashboard_input(input, options)
        params = {k: v for k, v in (("start_date", options.start_date), ("end_date", options.end_date)) if v}
        client = self.client(options)
        resp = client.get(f"{base}/api/export_metadata/{quote(dataset)}", params=params)
        rows = parse_export_metadata(resp.text)
        pids = sorted({(r.get("pid") or "").strip().rsplit("/", 1)[-1] for r in rows})
        return [f"{base}/api/bin/{quote(pid)}?dataset={quote(dataset)}" for pid in pids]

    def read(self, task: str, options: IfcbDashboardOptions) -> Iterator[IngestBatch]:
        """Records for one bin; skipped bins and empty triggers are counted, missing images rejected."""
        parts = urlsplit(task)
        base = task.split("/api/bin/", 1)[0]
        pid = parts.path.rsplit("/", 1)[-1]
        dataset = parse_qs(parts.query).get("dataset", [options.dataset])[0]
        if not pid:
            yield IngestBatch(records=_empty_records(), skipped={"ifcb_dashboard_row_without_pid": 1})
            return
        name = parse_bin_name(pid)
        if name is None:
            yield _bin_reject(pid, Reason.MALFORMED_ROW, f"{pid!r} is not an IFCB bin pid")
            return
        client = self.client(options)
        try:
            details = client.get(f"{base}/api/bin/{quote(pid)}", params={"include_coordinates": "false"}).json()
        except HttpError as e:
            if e.status == 404:
                yield _bin_reject(pid, Reason.NO_IMAGE, f"dashboard has no bin {pid}: {e}")
                return
            raise
        except ValueError as e:
            yield _bin_reject(pid, Reason.MALFORMED_ROW, f"/api/bin/{pid} is not JSON: {e}")
            return
        if not isinstance(details, dict):
            yield _bin_reject(pid, Reason.MALFORMED_ROW, shape_detail(
                f"/api/bin/{pid}", f"a JSON {type(details).__name__}, not an object"))
            return
        if _truthy(details.get("skip")) and not options.include_skipped:
            yield IngestBatch(records=_empty_records(), skipped={"ifcb_dashboard_bin_skipped": 1})
            return
        try:
            adc_text = client.get(f"{base}/data/{quote(pid)}.adc").text
        except HttpError as e:
            if e.status == 404:
                yield _bin_reject(pid, Reason.NO_IMAGE, f"dashboard has no ADC for bin {pid}: {e}")
                return
            raise
        rows = parse_adc(adc_text, name.layout)
        members: set[str] | None = None
        zip_path: Path | None = None
        if options.images == "zip":
            zip_path = Path(options.cache_dir) / (dataset or "_") / f"{pid}.zip"
            try:
                client.fetch(f"{base}/data/{quote(pid)}.zip", zip_path)
            except HttpError as e:
                if e.status == 404:
                    yield _bin_reject(pid, Reason.NO_IMAGE, f"dashboard has no zip for bin {pid}: {e}")
                    return
                raise
            try:
                with zipfile.ZipFile(zip_path) as zf:
                    members = set(zf.namelist())
            except zipfile.BadZipFile as e:
                zip_path.unlink(missing_ok=True)
                raise HttpError(f"GET {base}/data/{pid}.zip: not a zip archive ({e})") from e
        try:
            batch = _bin_batch(base, dataset, pid, name.instrument, details, rows, members, zip_path, options)
        except SHAPE_ERRORS as e:  # Arrow's conversion errors are ValueError / TypeError too
            # a bin field of the wrong kind (a list where the instrument or time should be)
            yield _bin_reject(pid, Reason.MALFORMED_ROW, shape_detail(f"/api/bin/{pid}", e))
            return
        yield batch


def _empty_records() -> pa.Table:
    return pa.table({"record_id": pa.array([], pa.string())})


def _bin_reject(pid: str, reason: Reason, detail: str) -> IngestBatch:
    return IngestBatch(records=_empty_records(),
                       rejects=make_rejects([make_record_id(ID_NAMESPACE, pid)], STAGE, reason, detail))


def _bin_batch(base, dataset, pid, instrument, details, rows, members, zip_path, options) -> IngestBatch:
    skipped: Counter[str] = Counter()
    rej_ids: list[str] = []
    rej_reasons: list[str] = []
    rej_details: list[str] = []
    for n, d in rows.malformed:
        rej_ids.append(make_record_id(ID_NAMESPACE, f"{pid}_{n:05d}"))
        rej_reasons.append(str(Reason.MALFORMED_ROW))
        rej_details.append(f"{pid} ADC row {n}: {d}")
    w, h, s = rows.width, rows.height, rows.start_byte
    negative = (w < 0) | (h < 0) | (s < 0)
    empty = ~negative & ((w == 0) | (h == 0))
    skipped["ifcb_empty_trigger"] += int(empty.sum())
    for n in rows.roi_number[negative].tolist():
        rej_ids.append(make_record_id(ID_NAMESPACE, f"{pid}_{n:05d}"))
        rej_reasons.append(str(Reason.MALFORMED_ROW))
        rej_details.append(f"{pid} ADC row {n}: negative ROI geometry")

    lat, lon = _coordinate(details.get("lat"), 90), _coordinate(details.get("lng"), 180)
    if lat == 0 and lon == 0:
        # the dashboard stores "no position" as 0, 0
        lat = lon = None
    depth = _coordinate(details.get("depth"), 12_000)
    bin_extra = {k: details.get(k) for k in _BIN_KEYS if details.get(k) not in (None, "", [])}
    bin_extra["bin"] = pid
    records: dict[str, list] = {k: [] for k in ("record_id", "media_id", "identifier", "width", "height", "extra")}
    for i in np.flatnonzero(~negative & ~empty).tolist():
        n = int(rows.roi_number[i])
        media_id = f"{pid}_{n:05d}"
        rid = make_record_id(ID_NAMESPACE, media_id)
        if members is not None:
            member = f"{media_id}.png"
            if member not in members:
                rej_ids.append(rid)
                rej_reasons.append(str(Reason.NO_IMAGE))
                rej_details.append(f"{pid}.zip has no {member}")
                continue
            identifier = zip_uri(zip_path, member)
        else:
            identifier = f"{base}/data/{quote(media_id)}.png"
        records["record_id"].append(rid)
        records["media_id"].append(media_id)
        records["identifier"].append(identifier)
        records["width"].append(int(w[i]))
        records["height"].append(int(h[i]))
        records["extra"].append(extra_json({**bin_extra, "adc_trigger": int(rows.trigger[i]),
                                            "roi_x": int(rows.roi_x[i]), "roi_y": int(rows.roi_y[i])}))
    k = len(records["record_id"])
    table = pa.table({
        "record_id": pa.array(records["record_id"], pa.string()),
        "source": pa.array([SOURCE] * k, pa.string()),
        "source_dataset": pa.array([dataset or None] * k, pa.string()),
        "occurrence_id": pa.array(records["media_id"], pa.string()),
        "media_id": pa.array(records["media_id"], pa.string()),
        "identifier": pa.array(records["identifier"], pa.string()),
        "format": pa.array(["image/png"] * k, pa.string()),
        "license": pa.array([options.license] * k, pa.string()),
        "references": pa.array([f"{base}/bin?dataset={quote(dataset)}&bin={quote(pid)}"] * k, pa.string()),
        "instrument": pa.array([details.get("instrument") or instrument] * k, pa.string()),
        "event_date": pa.array([details.get("timestamp_iso") or parse_bin_name(pid).sample_time] * k, pa.string()),
        "decimal_latitude": pa.array([lat] * k, pa.float64()),
        "decimal_longitude": pa.array([lon] * k, pa.float64()),
        "depth_min_m": pa.array([depth] * k, pa.float64()),
        "depth_max_m": pa.array([depth] * k, pa.float64()),
        "width": pa.array(records["width"], pa.int64()),
        "height": pa.array(records["height"], pa.int64()),
        "extra": pa.array(records["extra"], pa.string()),
    })
    rejects = make_rejects(rej_ids, STAGE, rej_reasons, rej_details) if rej_ids else empty_rejects()
    return IngestBatch(records=table, rejects=rejects, skipped={k: v for k, v in skipped.items() if v})


CONNECTOR = IfcbDashboardConnector()
