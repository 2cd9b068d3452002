"""iNaturalist connector: the real open-data sample (plain, gzip, URL), bad rows, and API v1 pulls."""

import gzip
import json
import shutil

import pyarrow as pa
import pytest

from schemas import conform
from sources.inaturalist import CONNECTOR, INaturalistConnector, Options
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



@pytest.mark.parametrize("name, damage, message", [
    # found by a mutation fuzz of the sample: each ended in DuckDB's bare BinderException
    ("observers", lambda b: b.replace(b"\t", b",", 2), r"observers.csv lacks the column\(s\) observer_id, login"),
    ("taxa", lambda b: b.replace(b"taxon_id", b"taxon_i\xff", 1), r"taxa.csv lacks the column\(s\) taxon_id"),
    ("observations", lambda b: b.split(b"\n", 1)[1], r"observations.csv lacks the column\(s\) observation_uuid"),
    ("photos", lambda b: b"", r"photos.csv lacks the column\(s\) photo_uuid"),
])
def test_a_dump_file_that_cannot_be_one_is_a_clear_error(tmp_path, name, damage, message):
    d = tmp_path / "it's here"  # a quote in the folder name must not break the SQL either
    shutil.copytree(DUMP, d)
    (d / f"{name}.csv").write_bytes(damage((d / f"{name}.csv").read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        ingest(CONNECTOR, str(d), Options())
    assert "tab-separated with a header line" in str(err.value)


def test_a_quote_in_the_folder_name(tmp_path):
    d = tmp_path / "o'brien"
    shutil.copytree(DUMP, d)
    records, _, _ = ingest(CONNECTOR, str(d), Options())
    assert records.num_rows == 39

def test_api_pull_pages_by_the_id_cursor_its_task_names(loopback, tmp_path, clock):
    page = (API / "get_observations_page1.json").read_bytes()
    detail = (API / "get_observation.json").read_bytes()
    replies = {"0": [Reply(429, b"{}", {"Retry-After": "3"}), Reply(200, page)],
               "57754375": [Reply(500, b"{}"), Reply(200, json.dumps({"results": []}).encode())]}

    def route(req):
        return replies[req.query["id_above"][0]].pop(0)

    server = loopback(route)
    conn = INaturalistConnector(sleep=clock.sleep, clock=clock)
    opts = Options(api_base_url=server.url, cache_dir=str(tmp_path))
    assert conn.continues(None, opts) and not conn.continues(str(DUMP), opts)
    task = conn.tasks(None, opts)[0]
    batches = list(conn.read(task, opts))
    records = batches[0].records
    assert records.num_rows == 1 and records.column("photo_key").to_pylist() == ["inat-photo-92152429"]
    assert records.column("verbatim_genus").to_pylist() == ["Danaus"]
    assert [b.cursor for b in batches] == [57754375]  # committed by the runner with the page's records
    assert not list(tmp_path.iterdir())  # and saved nowhere else: a killed pull must not move it
    q = server.seen[0].query
    assert q["order_by"] == ["id"] and q["quality_grade"] == ["research"] and q["per_page"] == ["200"]
    assert 3.0 in clock.sleeps
    assert all(s >= 0 for s in clock.sleeps) and len(clock.sleeps) >= 2  # 1 req/s spacing plus backoff
    # the next pull's task starts after the committed cursor and gets the next (recorded) page
    replies["57754375"] = [Reply(200, detail)]
    replies["16227955"] = [Reply(200, json.dumps({"results": []}).encode())]
    task2 = conn.tasks(None, opts, after=57754375)[0]
    assert task2 != task
    records2, _, _ = ingest(conn, task2, opts)
    assert server.seen[-2].query["id_above"] == ["57754375"]
    assert records2.num_rows == 2


def test_api_non_research_observations_are_rejected():
    from sources.inaturalist import adapt_api
    doc = json.loads((API / "get_observation_with_ofvs.json").read_text())
    b = adapt_api(doc["results"], Options())
    assert b.records.num_rows == 0
    assert set(b.rejects.column("reason").to_pylist()) == {"not_research_grade"} and b.rejects.num_rows == 4
    kept = adapt_api(doc["results"], Options(research_only=False))
    assert kept.records.num_rows == 4 and kept.records.column("coordinate_uncertainty_m")[0].as_py() == 27754



def test_api_observations_of_the_wrong_shape_are_rejects_of_their_own():
    """Found by a fuzz of the recorded responses: one odd observation failed the whole page."""
    from sources.inaturalist import adapt_api
    doc = json.loads((API / "get_observation_with_ofvs.json").read_text())
    good = adapt_api(doc["results"], Options(research_only=False))
    results = doc["results"] + [dict(doc["results"][0], id=11, user="someone"),         # user: text
                                dict(doc["results"][0], id=12, taxon={"name": ["a", "b"]}),  # name: a list
                                dict(doc["results"][0], id=13, observation_photos=4.5),
                                ["not", "an", "observation"]]
    b = adapt_api(results, Options(research_only=False))
    assert b.records.equals(good.records)
    bad = b.rejects.to_pylist()
    assert [r["reason"] for r in bad] == ["malformed_row"] * 4
    assert bad[0]["detail"].startswith("observation 11: malformed JSON (AttributeError: 'str'")
    assert bad[1]["detail"] == ("observation 12: malformed JSON (verbatim_name is list ['a', 'b'], not str)")
    assert bad[2]["detail"].startswith("observation 13: malformed JSON (TypeError")
    assert bad[3]["detail"].startswith("observation #4 of the page: malformed JSON")
    assert len({r["record_id"] for r in bad}) == 4


def test_photos_without_an_id_are_rejected_each_with_its_own_id(tmp_path):
    """They used to become records keyed 'None' (one record id for all of them, a URL without an id)."""
    from sources.inaturalist import adapt_api
    shutil.copytree(DUMP, tmp_path / "d")
    photos = (tmp_path / "d/photos.csv").read_text().split("\n")
    header = photos[0].split("\t")
    at = header.index("photo_id")
    uuids = []
    for i in (1, 2):
        f = photos[i].split("\t")
        f[at] = ""
        uuids.append(f[header.index("photo_uuid")])
        photos[i] = "\t".join(f)
    (tmp_path / "d/photos.csv").write_text("\n".join(photos))
    records, rejects, reasons = ingest(CONNECTOR, str(tmp_path / "d"), Options())
    assert records.num_rows + rejects.num_rows == 50 and reasons["malformed_row"] == 2
    bad = rejects.filter(pa.compute.equal(rejects.column("reason"), "malformed_row")).to_pylist()
    assert sorted(r["detail"] for r in bad) == sorted(f"photo {u} has no photo_id" for u in uuids)
    assert len({r["record_id"] for r in bad}) == 2
    assert None not in records.column("media_id").to_pylist()

    doc = json.loads((API / "get_observation_with_ofvs.json").read_text())
    obs = doc["results"][0]
    for p in obs["observation_photos"]:
        p["photo"].pop("id")
    b = adapt_api([obs], Options(research_only=False))
    n = len(obs["observation_photos"])
    assert b.records.num_rows == 0 and b.rejects.column("reason").to_pylist() == ["malformed_row"] * n
    assert len(set(b.rejects.column("record_id").to_pylist())) == n

def test_an_api_answer_that_is_no_page_is_a_clear_error(loopback, tmp_path, clock):
    """A JSON list instead of the page object used to end the pull as if nothing were new."""
    server = loopback(lambda req: Reply(200, b"[1, 2]"))
    conn = INaturalistConnector(sleep=clock.sleep, clock=clock)
    opts = Options(api_base_url=server.url, cache_dir=str(tmp_path))
    with pytest.raises(Exception, match="answered list, not a list of results; is api_base_url"):
        ingest(conn, conn.tasks(None, opts)[0], opts)


def test_api_page_without_integer_ids_is_a_clear_error(loopback, tmp_path, clock):
    server = loopback(lambda req: Reply(200, json.dumps({"results": [{"id": "x"}]}).encode()))
    conn = INaturalistConnector(sleep=clock.sleep, clock=clock)
    opts = Options(api_base_url=server.url, cache_dir=str(tmp_path))
    with pytest.raises(Exception, match="no integer observation ids, so the cursor cannot move on"):
        ingest(conn, conn.tasks(None, opts)[0], opts)


def _orphans(rejects: pa.Table) -> list[str]:
    return rejects.filter(pa.compute.equal(rejects.column("reason"), "orphan_media")).column("detail").to_pylist()


def test_photos_of_a_malformed_observation_row_say_so(tmp_path):
    """QA: the sample's observations lines 27-28 have a 9th field; their photos were rejected
    'observation ... not in the dump', although it is there."""
    lines = (DUMP / "observations.csv").read_text().split("\n")
    malformed = [lines[i].split("\t")[0] for i in (26, 27)]  # file lines 27 and 28
    assert all(lines[i].count("\t") == 8 for i in (26, 27))
    records, rejects, reasons = ingest(CONNECTOR, str(DUMP), Options())
    assert reasons["orphan_media"] == 2
    assert sorted(_orphans(rejects)) == sorted(
        f"observation {u}: its row in observations is malformed (line {n}: Expected Number of Columns: 8 Found: 9)"
        for u, n in zip(malformed, (27, 28), strict=True))
    # an observation that is really missing still says so
    shutil.copytree(DUMP, tmp_path / "d")
    (tmp_path / "d/observations.csv").write_text("\n".join(lines[:26] + lines[28:]))
    records, rejects, _ = ingest(CONNECTOR, str(tmp_path / "d"), Options())
    assert sorted(_orphans(rejects)) == sorted(f"observation {u} not in the dump" for u in malformed)
    # a malformed row whose uuid is also read well elsewhere does not repeat its photos
    (tmp_path / "d/observations.csv").write_text("\n".join(lines + [lines[1] + "\textra"]))
    records, rejects, _ = ingest(CONNECTOR, str(tmp_path / "d"), Options())
    assert records.num_rows == 39 and records.num_rows + rejects.num_rows == 50


@pytest.mark.parametrize("observed_on, want", [
    ("2011-13-45", None), ("06/02/2011", None), ("2011-02-30", None), ("", None),
    ("2011-05-31", "2011-05-31"), ("2012-02-29", "2012-02-29"), ("2011-06", "2011-06"),
])
def test_observed_on_that_is_no_date_is_null_with_its_text_in_extra(tmp_path, observed_on, want):
    """QA: invalid dates were stored verbatim in event_date."""
    shutil.copytree(DUMP, tmp_path / "d")
    lines = (tmp_path / "d/observations.csv").read_text().split("\n")
    f = lines[1].split("\t")
    assert f[7] == "2011-05-30" and f[6] == "research"
    f[7] = observed_on
    lines[1] = "\t".join(f)
    (tmp_path / "d/observations.csv").write_text("\n".join(lines))
    records, rejects, reasons = ingest(CONNECTOR, str(tmp_path / "d"), Options())
    assert records.num_rows == 39 and reasons == {"not_research_grade": 9, "orphan_media": 2}  # the photo is kept
    rows = [r for r in records.to_pylist() if r["occurrence_id"] == f[0]]
    assert rows and all(r["event_date"] == want for r in rows)
    raw = {json.loads(r["extra"]).get("observed_on") for r in rows}
    assert raw == {None if want is not None or not observed_on else observed_on}
    others, _, _ = ingest(CONNECTOR, str(DUMP), Options())
    same = [r["event_date"] for r in others.to_pylist() if r["occurrence_id"] != f[0]]
    assert same == [r["event_date"] for r in records.to_pylist() if r["occurrence_id"] != f[0]]
    assert None not in same


@pytest.mark.parametrize("sample", ["get_observation.json", "get_observation_with_ofvs.json",
                                    "get_observations_page1.json"])
def test_api_dates_that_are_none_are_null_with_their_text_in_extra(sample):
    from sources.inaturalist import adapt_api
    doc = json.loads((API / sample).read_text())
    good = adapt_api(doc["results"], Options(research_only=False)).records.to_pylist()
    assert good and all(r["event_date"] for r in good)
    for obs in doc["results"]:
        obs["time_observed_at"], obs["observed_on"] = "2011-13-45T10:00:00", "06/02/2011"
    bad = adapt_api(doc["results"], Options(research_only=False)).records.to_pylist()
    assert [r.get("event_date") for r in bad] == [None] * len(good)  # (a column without values is left out)
    assert all(json.loads(r["extra"])["observed_on"] == "06/02/2011" for r in bad)
    assert all(json.loads(r["extra"])["time_observed_at"] == "2011-13-45T10:00:00" for r in bad)
    for obs in doc["results"]:  # a time that is none, a day that is one: the day
        obs["observed_on"] = "2011-06-02"
    days = adapt_api(doc["results"], Options(research_only=False)).records.to_pylist()
    assert [r["event_date"] for r in days] == ["2011-06-02"] * len(good)


@pytest.mark.parametrize("name, mode", [("inaturalist-open-data-20240101.tar.gz", "w:gz"),
                                        ("inaturalist-open-data.tgz", "w:gz"), ("metadata.tar", "w"),
                                        ("metadata.bin", "w:gz")])
def test_a_tarball_of_the_dump_says_to_extract_it_first(tmp_path, name, mode):
    import tarfile

    with tarfile.open(tmp_path / name, mode) as tar:
        tar.add(DUMP, arcname="inaturalist-open-data-20240101")
    with pytest.raises(ValueError, match=f"{name} is a tar archive; extract it first .* photos.csv"):
        ingest(CONNECTOR, str(tmp_path / name), Options())
    (tmp_path / "notes.txt").write_text("not a dump")
    with pytest.raises(FileNotFoundError, match="is not a folder with the open-data files"):
        ingest(CONNECTOR, str(tmp_path / "notes.txt"), Options())

# ---------------------------------------------------------------- the column-wise dump adapter
# The per-row loop adapt_dump was before it went column-wise, kept here word for word (its row
# helpers are the connector's) as the reference the column-wise adapter must equal, table for table.


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from schemas import Reason, make_record_id, make_rejects  # noqa: E402
from schemas.record import extra_json  # noqa: E402
from schemas.rejects import REJECT_SCHEMA  # noqa: E402
from sources.dates import iso_date  # noqa: E402
from sources.inaturalist import (  # noqa: E402
    RANK_COLUMNS,
    SOURCE,
    STAGE,
    _coords,
    _float,
    _int,
    _records,
    _scaled,
    adapt_dump,
    locate_dump,
    read_joined,
)
from sources.licenses import normalise_license_column, unknown_license_detail  # noqa: E402
from sources.photokey import photo_key  # noqa: E402


def adapt_dump_reference(t: pa.Table, options: Options) -> tuple[pa.Table, pa.Table]:
    """The former row loop: (records, rejects). Its row helpers (``_coords``, ``_float``, ``_int``,
    ``_scaled``, ``_records``: Python's own ``float``/``int`` rules) are the connector's, which the
    API adapter still uses row by row."""
    codes = normalise_license_column(t.column("license")).to_pylist()
    cols = {name: t.column(name).to_pylist() for name in t.column_names}
    rows, rej_ids, rej_reasons, rej_details = [], [], [], []
    for i in range(t.num_rows):
        photo_id = cols["photo_id"][i]
        rid = make_record_id(SOURCE, photo_id)
        lat, lon, bad = _coords(cols["latitude"][i], cols["longitude"][i])
        reason = detail = None
        if photo_id in (None, ""):  # added with the column-wise adapter: such rows shared one record id
            rid = make_record_id(SOURCE, f"photo-uuid/{cols['photo_uuid'][i]}")
            reason, detail = Reason.MALFORMED_ROW, f"photo {cols['photo_uuid'][i]} has no photo_id"
        elif not cols["has_observation"][i]:
            problem = cols["observation_problem"][i] if "observation_problem" in cols else None
            reason, detail = Reason.ORPHAN_MEDIA, f"observation {cols['observation_uuid'][i]} not in the dump" \
                if problem is None else \
                f"observation {cols['observation_uuid'][i]}: its row in observations is malformed ({problem})"
        elif bad:
            reason, detail = Reason.BAD_COORDINATES, bad
        elif options.research_only and cols["quality_grade"][i] != "research":
            reason, detail = Reason.NOT_RESEARCH_GRADE, f"quality_grade {cols['quality_grade'][i]!r}"
        elif codes[i] == "unknown" and not options.keep_unknown_license:
            reason, detail = Reason.UNKNOWN_LICENSE, unknown_license_detail(cols["license"][i])
        if reason:
            rej_ids.append(rid)
            rej_reasons.append(reason)
            rej_details.append(detail)
            continue
        ext = cols["extension"][i] or "jpg"
        url = f"{options.photo_base_url.rstrip('/')}/{photo_id}/{options.photo_size}.{ext}"
        w, h = _scaled(_int(cols["width"][i]), _int(cols["height"][i]), options.photo_size)
        holder = cols["observer_name"][i] or cols["login"][i]
        unc, _ = _float(cols["positional_accuracy"][i])
        rows.append({
            "record_id": rid, "source": SOURCE, "source_dataset": "inaturalist-open-data",
            "occurrence_id": cols["observation_uuid"][i], "media_id": photo_id, "photo_key": photo_key(url),
            "identifier": url, "format": f"image/{'jpeg' if ext.lower() in ('jpg', 'jpeg') else ext.lower()}",
            "license": codes[i], "license_raw": cols["license"][i], "rights_holder": holder, "creator": holder,
            "references": f"https://www.inaturalist.org/observations/{cols['observation_uuid'][i]}",
            "verbatim_name": cols["taxon_name"][i], "verbatim_rank": cols["taxon_rank"][i],
            **{f"verbatim_{r}": cols[f"rank_{r}"][i] for r in RANK_COLUMNS},
            "verbatim_lineage": cols["lineage"][i], "source_taxon_id": cols["taxon_id"][i],
            "decimal_latitude": lat, "decimal_longitude": lon,
            "coordinate_uncertainty_m": unc if unc is None or unc >= 0 else None,
            "event_date": iso_date(cols["observed_on"][i]), "quality_grade": cols["quality_grade"][i],
            "width": w, "height": h,
            "extra": extra_json({"photo_uuid": cols["photo_uuid"][i], "position": _int(cols["position"][i]),
                                 "observer_id": cols["observer_id"][i], "observer_login": cols["login"][i],
                                 "ancestry": cols["ancestry"][i],
                                 "observed_on": None if iso_date(cols["observed_on"][i]) else cols["observed_on"][i],
                                 "taxon_in_dump": cols["taxon_name"][i] is not None}),
        })
    rejects = make_rejects(rej_ids, STAGE, rej_reasons, rej_details) if rej_ids else REJECT_SCHEMA.empty_table()
    return _records(rows), rejects


def _joined_sample(options: Options | None = None) -> pa.Table:
    options = options or Options()
    tables = [t for t in read_joined(locate_dump(str(DUMP), options, None), options) if isinstance(t, pa.Table)]
    return pa.concat_tables(tables)


def assert_same_tables(got: pa.Table, want: pa.Table) -> None:
    assert got.schema.equals(want.schema, check_metadata=True), (got.schema, want.schema)
    for name in want.column_names:  # column by column: a failure names the column and the rows
        a, b = got.column(name).to_pylist(), want.column(name).to_pylist()
        same = _same_floats(a, b) if pa.types.is_floating(want.column(name).type) else a == b
        assert same, (name, [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y][:5])
    assert got.equals(want, check_metadata=True)


def _same_floats(a: list, b: list) -> bool:  # NaN == NaN, and -0.0 told from 0.0
    import math
    return len(a) == len(b) and all(
        (x is None and y is None) or (isinstance(x, float) and isinstance(y, float)
                                      and (x == y or math.isnan(x) and math.isnan(y))
                                      and math.copysign(1, x) == math.copysign(1, y))
        for x, y in zip(a, b, strict=True))


def assert_same_as_reference(t: pa.Table, options: Options) -> None:
    got = adapt_dump(t, options)
    records, rejects = adapt_dump_reference(t, options)
    assert_same_tables(got.records, records)
    assert_same_tables(got.rejects, rejects)
    assert got.records.num_rows + got.rejects.num_rows == t.num_rows  # nothing lost


@pytest.mark.parametrize("opts", [{}, {"research_only": False}, {"keep_unknown_license": True, "photo_size": "small"},
                                  {"research_only": False, "photo_size": "original",
                                   "photo_base_url": "http://example.org/p///"}])
def test_dump_adapter_equals_the_row_loop_on_the_sample(opts):
    options = Options(**opts)
    t = _joined_sample(options)
    assert t.num_rows == 50
    assert_same_as_reference(t, options)
    for start, size in ((0, 1), (3, 7), (49, 1)):  # slices: offsets into the arrays' buffers
        assert_same_as_reference(t.slice(start, size), options)


def test_dump_adapter_empty_and_all_rejected():
    t = _joined_sample()
    assert_same_as_reference(t.slice(0, 0), Options())
    orphans = t.set_column(t.column_names.index("has_observation"), "has_observation",
                           pa.array([False] * t.num_rows))
    b = adapt_dump(orphans, Options())
    assert b.records.num_rows == 0 and b.records.num_columns == 0
    assert_same_as_reference(orphans, Options())


def _sometimes(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), st.just(""), values)


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
_WEIRD = st.sampled_from([" ", "\t", "\n", "\x00", "\x1f", "\x7f", '"', "'", "\\", "'\"", "é", "İ", "ß", "ǅ",
                          "\u2028", "\u00a0", "𝔸", "١٢", "٣"])
_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-200, 200).map(lambda f: f"{f:.{abs(hash(f)) % 12}f}"),
    st.integers(-300, 300).map(str),
    st.sampled_from(["90", "-90", "90.0000001", "-180", "180", "180.0", "1e2", "1E+01", "+.5", "5.", ".5", "-0",
                     "0.0", "nan", "NaN", "inf", "-Infinity", "1_0", " 5", "5 ", "\t5\n", "5\n", "abc", "-",
                     "1e400", "0x10", "１２", "٣", "1.2.3", "--1", "+-1", "e5", "00012.50", "9" * 30]),
    _TEXT, _WEIRD)
_INT = st.one_of(
    st.integers(-5, 5000).map(str), st.integers(-10**20, 10**20).map(str),
    st.sampled_from(["+12", "-0", "007", " 12 ", "1_000", "12.5", "0", "-5", "٣", "１２", "abc", "2048", "2049",
                     "4095", "1023", "3", "9223372036854775807", "9007199254740993", "000000000000000000001"]),
    _TEXT)
_FREE = st.one_of(_TEXT, _WEIRD, st.lists(st.one_of(_TEXT, _WEIRD), max_size=3).map("".join))
_DATES = st.one_of(st.dates().map(str), st.sampled_from([
    "2011-05-30", " 2011-05-30\t", "2011-13-45", "06/02/2011", "2011-02-30", "2012-02-29", "2011", "2011-05",
    "2011-5-3", "20110530", "2020-08-27T20:08:39-05:00", "2011-05-30T25:00", "٢٠١١-٠٥-٣٠"]))


@st.composite
def joined_batches(draw) -> pa.Table:
    n = draw(st.integers(0, 25))

    def column(values: st.SearchStrategy, nulls: bool = True) -> list:
        return draw(st.lists(_sometimes(values) if nulls else values, min_size=n, max_size=n))

    photo_ids = column(st.one_of(st.integers(0, 10**9).map(str), st.just("00042"), _FREE))
    cols = {
        "photo_id": photo_ids,
        "photo_uuid": column(_FREE),
        "extension": column(st.one_of(st.sampled_from(["jpg", "JPG", "jpeg", "JPEG", "png", "PNG", "gif", "tiff",
                                                       "İ", "ß", "Jpg", "ǅ"]), _FREE)),
        "license": column(st.one_of(st.sampled_from(["CC-BY", "CC-BY-NC", "CC-BY-SA", "CC0", "cc-by-nc-nd",
                                                     "WTFPL", "PD", "all rights reserved", "CC-B\ufffd"]), _FREE)),
        "width": column(_INT), "height": column(_INT), "position": column(_INT),
        "observation_uuid": column(_FREE),
        "has_observation": column(st.booleans(), nulls=False),
        "latitude": column(_NUMBER), "longitude": column(_NUMBER), "positional_accuracy": column(_NUMBER),
        "taxon_id": column(_FREE),
        "quality_grade": column(st.one_of(st.sampled_from(["research", "needs_id", "casual", "Research"]), _FREE)),
        "observed_on": column(st.one_of(_FREE, _DATES)), "observer_id": column(_FREE), "login": column(_FREE),
        "observation_problem": column(st.one_of(_FREE, st.just("line 27: Expected Number of Columns: 8 Found: 9"))),
        "observer_name": column(_FREE), "taxon_name": column(_FREE), "taxon_rank": column(_FREE),
        "ancestry": column(_FREE), "lineage": column(_FREE),
        **{f"rank_{r}": column(_FREE) for r in RANK_COLUMNS},
    }
    if draw(st.booleans()):  # mostly valid rows, so the records side gets exercised too
        ok = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        for i in range(n):
            if ok[i]:
                cols["has_observation"][i] = True
                cols["quality_grade"][i] = "research"
                cols["license"][i] = "CC-BY-NC"
                cols["latitude"][i] = draw(st.floats(-90, 90).map(repr))
                cols["longitude"][i] = draw(st.floats(-180, 180).map(repr))
    types = {"has_observation": pa.bool_()}
    t = pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})
    if n > 2 and draw(st.booleans()):  # several chunks, and a slice
        t = pa.concat_tables([t.slice(0, n // 2), t.slice(n // 2)]).slice(1)
    return t


_OPTIONS = st.builds(
    Options, research_only=st.booleans(), keep_unknown_license=st.booleans(),
    photo_size=st.sampled_from(["original", "large", "medium", "small"]),
    photo_base_url=st.sampled_from(["https://inaturalist-open-data.s3.amazonaws.com/photos/",
                                    "https://static.inaturalist.org/photos", "http://Example.ORG:8080/x//",
                                    "https://example.org/p/", "", "weird base/",
                                    "https://static.inaturalist.org/photos/5", " https://www.iNaturalist.org/photos/",
                                    "https://static.inaturalist.org/photos/5/photos/", "//inaturalist.org/photos"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(joined_batches(), _OPTIONS)
def test_dump_adapter_equals_the_row_loop(t, options):
    assert_same_as_reference(t, options)


def test_an_api_answer_that_is_not_json_is_retried_then_a_clear_error(loopback, tmp_path, clock):
    """QA: 'error: Expecting property name enclosed in double quotes: line 1 column 23 (char 22)'."""
    from sources.http import HttpError

    page = (API / "get_observations_page1.json").read_bytes()
    empty = json.dumps({"results": []}).encode()
    replies = [Reply(200, b'{"results": [{"id": 1,'), Reply(200, page), Reply(200, empty)]
    server = loopback(lambda req: replies.pop(0) if replies else
                      Reply(200, b"<html><body>maintenance</body></html>", {"Content-Type": "text/html"}))
    conn = INaturalistConnector(sleep=clock.sleep, clock=clock)
    opts = Options(api_base_url=server.url, cache_dir=str(tmp_path))
    records, _, _ = ingest(conn, conn.tasks(None, opts)[0], opts)
    assert records.num_rows == 1
    with pytest.raises(HttpError, match=rf"GET {server.url}observations: the answer is not JSON \(text/html, "
                                        r"37 bytes: '<html><body>maintenance</body></html>'"):
        ingest(conn, conn.tasks(None, opts)[0], opts)
