"""iNaturalist connector: the real open-data sample (plain, gzip, URL), bad rows, and API v1 pulls."""

import gzip
import json
import shutil

import pyarrow as pa
import pytest

from schemas import conform
from sources.inaturalist import CONNECTOR, INaturalistConnector, Options, load_cursor
from tests.sources.conftest import DATA, Reply
from tests.sources.test_gbif import ingest

DUMP = DATA / "inaturalist/open_data"
API = DATA / "inaturalist/api_v1"


def test_dump_one_record_per_photo():
    records, rejects, reasons = ingest(CONNECTOR, str(DUMP), Options())
    # 50 photos: 9 on non-research observations, 2 whose observation is not in the sample
    assert records.num_rows == 39 and reasons == {"not_research_grade": 9, "orphan_media": 2}
    assert conform(records, "ingest")[1].num_rows == 0
    row = records.filter(pa.compute.equal(records.column("media_id"), "35927")).to_pylist()[0]
    assert row["identifier"] == "https://inaturalist-open-data.s3.amazonaws.com/photos/35927/medium.jpg"
    assert row["photo_key"] == "inat-photo-35927"
    assert row["license"] == "cc-by" and row["license_raw"] == "CC-BY"
    assert row["rights_holder"] == "Don Loarie" and row["quality_grade"] == "research"
    assert row["decimal_latitude"] == pytest.approx(38.60974)
    assert (row["width"], row["height"]) == (500, round(1356 * 500 / 2048))


def test_dump_resolves_ancestry_from_the_taxa_file(tmp_path):
    # the sample's observations point at taxa outside its taxa file: point one at a taxon in it
    shutil.copytree(DUMP, tmp_path / "d")
    obs = (tmp_path / "d/observations.csv").read_text().split("\n")
    f = obs[1].split("\t")
    f[5] = "28799"  # Rhadinella pilonaorum; its ancestors 26036 (Reptilia?) etc. are partly in the file
    taxa = (tmp_path / "d/taxa.csv").read_text().rstrip("\n").split("\n")
    taxa.append("26504\t48460/1/2/355675/26036/26172/85553\t20\tgenus\tRhadinella\ttrue")
    (tmp_path / "d/taxa.csv").write_text("\n".join(taxa) + "\n")
    obs[1] = "\t".join(f)
    (tmp_path / "d/observations.csv").write_text("\n".join(obs))
    records, _, _ = ingest(CONNECTOR, str(tmp_path / "d"), Options())
    row = [r for r in records.to_pylist() if r["occurrence_id"] == f[0]][0]
    assert row["verbatim_name"] == "Rhadinella pilonaorum" and row["verbatim_rank"] == "species"
    assert row["verbatim_genus"] == "Rhadinella"
    assert row["verbatim_lineage"] == "Rhadinella|Rhadinella pilonaorum"


def test_gzip_dump_and_options(tmp_path):
    for name in ("photos", "observations", "taxa", "observers"):
        with open(DUMP / f"{name}.csv", "rb") as src, gzip.open(tmp_path / f"{name}.csv.gz", "wb") as dst:
            dst.write(src.read())
    records, _, reasons = ingest(CONNECTOR, str(tmp_path), Options(research_only=False, photo_size="original"))
    assert records.num_rows == 48 and reasons == {"orphan_media": 2}
    assert all("/original." in u for u in records.column("identifier").to_pylist())


def test_dump_from_a_url(loopback, tmp_path, clock):
    def route(req):
        name = req.path.rsplit("/", 1)[-1]
        return Reply(200, gzip.compress((DUMP / name.removesuffix(".gz")).read_bytes()),
                     {"Content-Type": "application/gzip"})

    server = loopback(route)
    conn = INaturalistConnector(sleep=clock.sleep, clock=clock)
    opts = Options(cache_dir=str(tmp_path), rate=100)
    records, _, _ = ingest(conn, conn.tasks(server.url + "open-data", opts)[0], opts)
    assert records.num_rows == 39
    assert sorted(r.path for r in server.seen) == sorted(
        f"/open-data/{n}.csv.gz" for n in ("photos", "observations", "taxa", "observers"))


def test_bad_rows_in_the_dump(tmp_path):
    shutil.copytree(DUMP, tmp_path / "d")
    photos = (tmp_path / "d/photos.csv").read_bytes().split(b"\n")
    photos[5] = photos[5] + b"\tstray"          # ragged
    photos[6] = photos[6].replace(b"CC-BY", b"CC-B\xff")  # not UTF-8
    photos[2] = photos[2].replace(b"CC-BY", b"WTFPL")    # unknown licence (a research-grade photo)
    (tmp_path / "d/photos.csv").write_bytes(b"\n".join(photos))
    target = photos[10].split(b"\t")[2].decode()
    assert target != photos[2].split(b"\t")[2].decode()
    obs = (tmp_path / "d/observations.csv").read_text().split("\n")
    for i, line in enumerate(obs):
        f = line.split("\t")
        if f[0] == target:
            f[2] = "200"
            obs[i] = "\t".join(f)
    (tmp_path / "d/observations.csv").write_text("\n".join(obs))
    records, rejects, reasons = ingest(CONNECTOR, str(tmp_path / "d"), Options())
    assert reasons["malformed_row"] == 1 and reasons["undecodable_text"] == 1
    assert reasons["unknown_license"] == 1 and reasons["bad_coordinates"] >= 1
    assert records.num_rows + rejects.num_rows == 50


def test_api_pull_continues_from_the_saved_cursor(loopback, tmp_path, clock):
    page = (API / "get_observations_page1.json").read_bytes()
    detail = (API / "get_observation.json").read_bytes()
    replies = {"0": [Reply(429, b"{}", {"Retry-After": "3"}), Reply(200, page)],
               "57754375": [Reply(500, b"{}"), Reply(200, json.dumps({"results": []}).encode())]}

    def route(req):
        return replies[req.query["id_above"][0]].pop(0)

    server = loopback(route)
    conn = INaturalistConnector(sleep=clock.sleep, clock=clock)
    opts = Options(api_base_url=server.url, cache_dir=str(tmp_path))
    task = conn.tasks(None, opts)[0]
    records, _, _ = ingest(conn, task, opts)
    assert records.num_rows == 1 and records.column("photo_key").to_pylist() == ["inat-photo-92152429"]
    assert records.column("verbatim_genus").to_pylist() == ["Danaus"]
    assert load_cursor(opts) == 57754375
    q = server.seen[0].query
    assert q["order_by"] == ["id"] and q["quality_grade"] == ["research"] and q["per_page"] == ["200"]
    assert 3.0 in clock.sleeps
    assert all(s >= 0 for s in clock.sleeps) and len(clock.sleeps) >= 2  # 1 req/s spacing plus backoff
    # a rerun starts after the cursor and gets the next (here: the second recorded) page
    replies["57754375"] = [Reply(200, detail)]
    replies["16227955"] = [Reply(200, json.dumps({"results": []}).encode())]
    records2, _, _ = ingest(conn, task, opts)
    assert server.seen[-2].query["id_above"] == ["57754375"]
    assert records2.num_rows == 2 and load_cursor(opts) == 16227955


def test_api_non_research_observations_are_rejected():
    from sources.inaturalist import adapt_api
    doc = json.loads((API / "get_observation_with_ofvs.json").read_text())
    b = adapt_api(doc["results"], Options())
    assert b.records.num_rows == 0
    assert set(b.rejects.column("reason").to_pylist()) == {"not_research_grade"} and b.rejects.num_rows == 4
    kept = adapt_api(doc["results"], Options(research_only=False))
    assert kept.records.num_rows == 4 and kept.records.column("coordinate_uncertainty_m")[0].as_py() == 27754
