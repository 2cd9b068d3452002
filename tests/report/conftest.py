"""A data root built from real samples for the report tests: GBIF DwC-A records, camera-trap shards, rejects, runs.

Records come from the real GBIF download ``0000066-140928181241064.zip`` (occurrence.txt joined to
multimedia.txt, its own lineage columns taken as the resolved lineage); the shards hold the real
camera-trap photos of tests/data (CDLA-Permissive-1.0), resized small. Every expected number is
computed here in Python, independently of DuckDB, so the tests can compare both.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from pipeline.io import atomic_write_json, atomic_write_parquet, write_run_record
from schemas import RANKS, Reason, make_rejects
from schemas.record import conform, from_rows, make_record_id
from shards.writer import write_shard
from sources.licenses import license_family, normalise_license

TESTS = Path(__file__).resolve().parents[1]
DATA = TESTS / "data"
SHARED = TESTS.parents[0] / ".." / "shared" / "data"
GBIF_ZIP = Path("gbif") / "dwca" / "0000066-140928181241064.zip"
CAMERAS = DATA / "images" / "camera_traps"
ALLOWED_FAMILIES = {"cc0-1.0", "cc-by", "cc-by-sa"}
SHARD_SIDE = 96
RUN_IDS = {
    "ingest": "20240101T000000Z-ingest-aaaaaa",
    "resolve": "20240101T000100Z-resolve-bbbbbb",
    "curate": "20240101T000200Z-curate-cccccc",
    "download": "20240101T000300Z-download-dddddd",
}
# label -> (lineage kingdom..species, rights holder per tests/data/images/camera_traps/README.md)
CAMERA_TRAPS = {
    "ocelot": (("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Leopardus", "Leopardus pardalis"),
               "WCS Camera Traps (LILA BC)"),
    "american_black_bear": (("Animalia", "Chordata", "Mammalia", "Carnivora", "Ursidae", "Ursus", "Ursus americanus"),
                            "North American Camera Trap Images (LILA BC)"),
    "domestic_cattle": (("Animalia", "Chordata", "Mammalia", "Artiodactyla", "Bovidae", "Bos", "Bos taurus"),
                        "North American Camera Trap Images (LILA BC)"),
    # a non-organism negative: no lineage
    "vehicle": ((None,) * 7, "North American Camera Trap Images (LILA BC)"),
}
# made-up download outcomes for GBIF records (the tests are offline), one per reason and host mix
FAILURES = ("http_404", "http_404", "timeout", "connection_error", "http_5xx", "http_404")


def gbif_zip() -> Path | None:
    for base in (DATA, SHARED):
        if (base / GBIF_ZIP).is_file():
            return (base / GBIF_ZIP).resolve()
    return None


def _read_tsv(zf: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    with zf.open(name) as raw:
        return list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))


def _float(v: str) -> float | None:
    return float(v) if v.strip() else None


def _blank(v: str | None) -> str | None:
    return v if v and v.strip() else None


def gbif_rows(path: Path) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Record dicts, one per StillImage media row, and (record_id, reason, detail) for media that is no image."""
    with zipfile.ZipFile(path) as zf:
        occurrences = {o["gbifID"]: o for o in _read_tsv(zf, "occurrence.txt")}
        media = _read_tsv(zf, "multimedia.txt")
    rows, bad = [], []
    for m in media:
        o = occurrences[m["gbifID"]]
        url = _blank(m["identifier"])
        # one photo can illustrate several occurrences: the media id is occurrence + URL
        rid = make_record_id("gbif", f"{m['gbifID']}/{url or m['references']}")
        if url is None or m["type"] != "StillImage":
            bad.append((rid, str(Reason.NO_IMAGE), f"type={m['type']!r} identifier={m['identifier']!r}"))
            continue
        license_raw = _blank(m["license"]) or _blank(o["license"]) or _blank(o["rights"])
        rank = _blank(o["taxonRank"])
        rows.append({
            "record_id": rid, "source": "gbif", "source_dataset": o["datasetKey"],
            "occurrence_id": _blank(o["occurrenceID"]) or o["gbifID"], "media_id": url, "identifier": url,
            "format": _blank(m["format"]), "license": normalise_license(license_raw), "license_raw": license_raw,
            "rights_holder": _blank(m["rightsHolder"]) or _blank(o["rightsHolder"]), "creator": _blank(m["creator"]),
            "references": _blank(m["references"]), "verbatim_name": _blank(o["scientificName"]),
            "verbatim_rank": rank, "source_taxon_id": _blank(o["taxonKey"]), "taxon_id": _blank(o["taxonKey"]),
            **{f"verbatim_{r}": _blank(o[r]) for r in RANKS[:-1]},
            **{r: _blank(o[r]) for r in RANKS[:-1]}, "species": _blank(o["species"]),
            "taxon_rank": rank.lower() if rank else None, "accepted_name": _blank(o["scientificName"]),
            "match_type": "exact" if rank else "none", "backbone": "gbif-backbone",
            "decimal_latitude": _float(o["decimalLatitude"]), "decimal_longitude": _float(o["decimalLongitude"]),
            "event_date": _blank(o["eventDate"]), "country_code": _blank(o["countryCode"]),
            "basis_of_record": _blank(o["basisOfRecord"]), "life_stage": _blank(o["lifeStage"]),
            "sex": _blank(o["sex"]),
        })
    return rows, bad


def camera_rows() -> list[dict]:
    rows = []
    for name, (lineage, holder) in CAMERA_TRAPS.items():
        path = (CAMERAS / f"{name}.jpg").resolve()
        species = lineage[-1]
        rank = "species" if species else None
        rows.append({
            "record_id": make_record_id("folders", path.name), "source": "folders", "source_dataset": "camera_traps",
            "media_id": path.name, "identifier": path.as_uri(), "format": "image/jpeg",
            "license": normalise_license("CDLA-Permissive-1.0"), "license_raw": "CDLA-Permissive-1.0",
            "rights_holder": holder, "verbatim_name": name.replace("_", " "), **dict(zip(RANKS, lineage, strict=True)),
            "taxon_rank": rank, "match_type": "exact" if rank else "none", "backbone": "gbif-backbone",
        })
    return rows


def _jpeg(path: Path) -> bytes:
    img = Image.open(path).convert("RGB")
    img.thumbnail((SHARD_SIDE, SHARD_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _curate(rows: list[dict]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """The curate decisions on the real rows: licence policy, then same photo twice, then no species."""
    kept, rejected, seen = [], [], set()
    for r in rows:
        if r["source"] == "folders":
            kept.append(r)  # the camera traps are the shard images: kept whatever their licence code
        elif license_family(r["license"]) not in ALLOWED_FAMILIES:
            rejected.append((r["record_id"], str(Reason.LICENSE_POLICY), r["license"]))
        elif r["identifier"] in seen:
            rejected.append((r["record_id"], str(Reason.DUPLICATE_PHOTO), r["identifier"]))
        elif not r["species"]:
            seen.add(r["identifier"])
            rejected.append((r["record_id"], str(Reason.LINEAGE_DEPTH), f"rank {r['taxon_rank']}"))
        else:
            seen.add(r["identifier"])
            kept.append(r)
    return kept, rejected


def _rejects_table(rows: list[tuple[str, str, str]], stage: str) -> pa.Table:
    return make_rejects([r[0] for r in rows], stage, [r[1] for r in rows], [r[2] for r in rows])


def build_root(root: Path, stages: tuple[str, ...] = ("ingest", "resolve", "curate", "download")) -> dict:
    """Write a data root up to the last of ``stages``; returns the expected numbers."""
    zpath = gbif_zip()
    if zpath is None:
        pytest.skip(f"{GBIF_ZIP} not found in tests/data or ../shared/data")
    gbif, no_image = gbif_rows(zpath)
    cameras = camera_rows()
    records, invalid = conform(from_rows(gbif + cameras), stage="ingest")
    assert invalid.num_rows == 0, invalid.to_pylist()
    rows = records.to_pylist()
    expected: dict = {"root": root, "records": rows}

    raw = [{**r, **{k: None for k in (*RANKS, "taxon_id", "taxon_rank", "accepted_name", "match_type", "backbone")}}
           for r in rows]
    raw_t = conform(from_rows(raw), "ingest")[0]
    atomic_write_parquet(raw_t.filter(pc.equal(raw_t["source"], "gbif")),
                         root / "raw" / "source=gbif" / "dataset=x" / "part-00000.parquet")
    atomic_write_parquet(raw_t.filter(pc.equal(raw_t["source"], "folders")),
                         root / "raw" / "source=folders" / "dataset=camera_traps" / "part-00000.parquet")
    atomic_write_parquet(_rejects_table(no_image, "ingest"), root / "rejects" / "stage=ingest" / "part-00000.parquet")
    rejected = [("ingest", reason) for _, reason, _ in no_image]
    write_run_record(root, RUN_IDS["ingest"], {"stage": "ingest", "runner": "local", "config": {"source": "gbif"},
                                               "counts": {"in": len(rows) + len(no_image), "out": len(rows),
                                                          "rejected": len(no_image)}})
    if "resolve" in stages:
        atomic_write_parquet(records, root / "resolved" / "part-00000.parquet")
        write_run_record(root, RUN_IDS["resolve"], {"stage": "resolve", "runner": "local",
                                                    "counts": {"in": len(rows), "out": len(rows), "rejected": 0}})
    if "curate" in stages:
        kept, curate_rejects = _curate(rows)
        atomic_write_parquet(_rejects_table(curate_rejects, "curate"), root / "rejects" / "stage=curate" / "part-00000.parquet")
        rejected += [("curate", reason) for _, reason, _ in curate_rejects]
        splits = {"train": [], "val": []}
        for i, r in enumerate(kept):
            splits["val" if i % 5 == 4 else "train"].append(r)
        # cls as curate writes it: the index of the record's taxon_id in curated/_classes.json
        classes = sorted({r["taxon_id"] for r in kept if r["taxon_id"]})
        atomic_write_json(root / "curated" / "_classes.json", {"classes": classes})
        for split, part in splits.items():
            table = conform(from_rows(part), "curate")[0]
            cls = [classes.index(r["taxon_id"]) if r["taxon_id"] else None for r in part]
            atomic_write_parquet(table.append_column("cls", pa.array(cls, pa.int64())),
                                 root / "curated" / f"split={split}" / "part-00000.parquet")
        expected["splits"] = {k: len(v) for k, v in splits.items()}
        write_run_record(root, RUN_IDS["curate"], {"stage": "curate", "runner": "local",
                                                   "counts": {"in": len(rows), "out": len(kept),
                                                              "rejected": len(curate_rejects)}})
        if "download" in stages:
            expected.update(_download(root, kept))
            write_run_record(root, RUN_IDS["download"], {"stage": "download", "runner": "local",
                                                         "counts": {"in": len(kept), "out": expected["images_ok"],
                                                                    "rejected": len(FAILURES)}})
    expected["rejects"] = Counter(rejected)
    expected["run_ids"] = [RUN_IDS[s] for s in stages]
    return expected


def _download(root: Path, kept: list[dict]) -> dict:
    """Two shards of camera-trap images (keys = record ids) and failures for some GBIF records."""
    cams = [r for r in kept if r["source"] == "folders"]
    gbif = [r for r in kept if r["source"] == "gbif"][: len(FAILURES)]
    shards = {"train-000000": cams[:3], "val-000000": cams[3:]}
    status: dict[str, list[dict]] = {name: [] for name in shards}
    for name, recs in shards.items():
        samples = {}
        for r in recs:
            data = _jpeg(Path(r["identifier"].removeprefix("file://")))
            name_for_caption = r["species"] or r["verbatim_name"]
            record = {k: r[k] for k in ("record_id", "source", "license", "license_raw", "rights_holder", *RANKS)}
            samples[r["record_id"]] = {"jpg": data, "json": _json(record), "txt": f"a photo of {name_for_caption}.".encode()}
            status[name].append({"key": r["record_id"], "url": r["identifier"], "split": name.split("-")[0],
                                 "shard": name, "status": "ok", "host": None, "attempts": 1, "bytes": len(data),
                                 "stored_bytes": len(data), "format": "jpeg", "width": SHARD_SIDE, "height": SHARD_SIDE})
        if name == "train-000000":
            for r, reason in zip(gbif, FAILURES, strict=True):
                status[name].append({"key": r["record_id"], "url": r["identifier"], "split": "train", "shard": name,
                                     "status": "failed", "reason": reason, "host": urlsplit(r["identifier"]).hostname,
                                     "attempts": 3})
        write_shard(str(root / "shards" / f"{name}.tar"), samples, status[name])
    all_rows = [row for rows in status.values() for row in rows]
    hosts: Counter = Counter()
    for row in all_rows:
        hosts[(row["host"] or "(no host)", row["status"])] += 1
    return {
        "images_ok": sum(row["status"] == "ok" for row in all_rows),
        "images_failed": sum(row["status"] != "ok" for row in all_rows),
        "hosts": hosts,
        "failure_reasons": Counter(row["reason"] for row in all_rows if row["status"] != "ok"),
        "shard_members": {name: [r["record_id"] for r in recs] for name, recs in shards.items()},
    }


def _json(obj: dict) -> bytes:
    import json

    return json.dumps(obj, sort_keys=True).encode()


def make_config(root: Path):
    from pipeline.config import load_config

    return load_config(overrides={"data": str(root)})


@pytest.fixture(scope="session")
def full_root(tmp_path_factory) -> dict:
    """Every stage up to download; ``expected`` numbers plus the written report folder."""
    from pipeline.stages.report import run_report

    root = tmp_path_factory.mktemp("corpus")
    expected = build_root(root)
    expected["report"] = run_report(make_config(root), None)
    return expected


@pytest.fixture(scope="session")
def raw_only_root(tmp_path_factory) -> dict:
    """Only ingest has run: raw records, ingest rejects and one run record."""
    from pipeline.stages.report import run_report

    root = tmp_path_factory.mktemp("raw_only")
    expected = build_root(root, stages=("ingest",))
    expected["report"] = run_report(make_config(root), root / "out")
    return expected


@pytest.fixture()
def empty_root(tmp_path) -> Path:
    return tmp_path / "nothing"


IFCB_PNGS = DATA / "plankton" / "ifcb_labeled" / "png"


def write_url_list_shard(tar: Path, reencoded: int = 0, host: str | None = "ifcb.example.org") -> list[str]:
    """A shard of the real IFCB ROI PNGs as a URL-list download writes it: keys that are no record,
    a ``.json`` of the list's columns only (caption, key, url, download) and originals kept as PNG,
    except the first ``reencoded`` images, stored as JPEG as a PNG too large to keep would be.
    Returns the image member names."""
    import json

    samples, rows, members = {}, [], []
    for i, path in enumerate(sorted(IFCB_PNGS.glob("*.png"))):
        key = f"urls-{i:016x}"
        data = path.read_bytes()
        width, height = Image.open(path).size
        if i < reencoded:
            stored, ext = _jpeg(path), "jpg"
            stored_w, stored_h = Image.open(io.BytesIO(stored)).size
        else:
            stored, ext = data, "png"
            stored_w, stored_h = width, height
        url = f"https://{host}/{path.name}" if host else path.resolve().as_uri()
        caption = path.stem.rsplit("_", 1)[-1]
        record = {"caption": caption, "key": key, "url": url, "download": {"width": stored_w, "height": stored_h}}
        samples[key] = {ext: stored, "json": json.dumps(record, sort_keys=True).encode(), "txt": caption.encode()}
        rows.append({"key": key, "url": url, "split": "train", "shard": tar.stem, "status": "ok", "host": host,
                     "attempts": 1, "width": width, "height": height, "stored_width": stored_w,
                     "stored_height": stored_h, "bytes": len(data), "stored_bytes": len(stored), "format": "png"})
        members.append(f"{key}.{ext}")
    write_shard(str(tar), samples, rows)
    return members
