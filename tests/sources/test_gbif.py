"""GBIF connector on the real DwC-A downloads, broken variants, and loopback search/download APIs."""

import base64
import collections
import json
import logging
import zipfile

import pyarrow as pa
import pytest

from schemas import conform, make_record_id
from sources.gbif import CONNECTOR, GBIFConnector, Options, build_predicate
from sources.http import HttpError
from tests.sources.conftest import DATA, Reply
from tests.sources.test_dwca import _edit_lines, rewrite

SAMPLE = DATA / "gbif/dwca/0000066-140928181241064.zip"
SEARCH = DATA / "gbif/api/occurrence_search_taxonKey3329049_limit300.json"
CORE_LAT, CORE_BASIS = 77, 62  # column indexes in the sample's meta.xml
MEDIA_TYPE, MEDIA_LICENSE = 1, 13


def ingest(connector, task, options):
    recs, rejs, skipped = [], [], collections.Counter()
    for b in connector.read(task, options):
        if b.records.num_rows:
            recs.append(b.records)
        rejs.append(b.rejects)
        skipped.update(b.skipped)
    records = pa.concat_tables(recs, promote_options="default") if recs else pa.table({})
    rejects = pa.concat_tables(rejs)
    return records, rejects, collections.Counter(rejects.column("reason").to_pylist())


def test_real_archive_joins_media_and_accounts_for_every_row():
    opts = Options()
    records, rejects, reasons = ingest(CONNECTOR, CONNECTOR.tasks(str(SAMPLE), opts)[0], opts)
    # 470 occurrences: 214 have 215 media rows, 256 have none; 5 media rows carry no image URL
    assert records.num_rows == 210
    assert reasons == {"no_image": 261}
    assert records.num_rows + rejects.num_rows == 256 + 215
    good, bad = conform(records, "ingest")
    assert bad.num_rows == 0 and good.num_rows == 210
    assert len(set(records.column("record_id").to_pylist())) == 210
    row = records.slice(0, 1).to_pylist()[0]
    assert row["source"] == "gbif" and row["identifier"].startswith("http")
    assert row["verbatim_lineage"].startswith("Animalia|Arthropoda")
    # media rows give no licence here: it falls back to the occurrence's dc:rights URL
    assert row["license"] == "cc-by-4.0" and "creativecommons.org/licenses/by/4.0" in row["license_raw"]
    licences = collections.Counter(records.column("license").to_pylist())
    # 2 media rows say "All Rights Reserved", 5 carry only a "(c) Kew" statement
    assert licences == {"cc-by-4.0": 203, "all-rights-reserved": 7}


def test_archive_without_multimedia_rejects_every_occurrence():
    opts = Options()
    records, rejects, reasons = ingest(CONNECTOR, str(DATA / "gbif/dwca/gbif-results.zip"), opts)
    assert records.num_rows == 0 and reasons == {"no_image": 158}


def _first_media_ids():
    import zipfile
    media = zipfile.ZipFile(SAMPLE).read("multimedia.txt").decode().split("\n")[1:]
    return [m.split("\t")[0] for m in media if m and m.split("\t")[3]]


def test_bad_rows_become_rejects_with_reasons(tmp_path):
    ids = _first_media_ids()
    targets = {ids[0]: "basis", ids[1]: "lat", ids[2]: "latjunk", ids[40]: "license", ids[60]: "sound"}

    def occ(lines):
        for i, line in enumerate(lines):
            f = line.split(b"\t")
            what = targets.get(f[0].decode())
            if what == "basis":
                f[CORE_BASIS] = b"MATERIAL_CITATION"
            elif what == "lat":
                f[CORE_LAT], f[CORE_LAT + 1] = b"200", b"10"
            elif what == "latjunk":
                f[CORE_LAT], f[CORE_LAT + 1] = b"12,5N", b"3"
            lines[i] = b"\t".join(f)

    def media(lines):
        seen = set()
        for i, line in enumerate(lines):
            f = line.split(b"\t")
            what = targets.get(f[0].decode())
            if what in ("license", "sound") and f[0] not in seen:
                seen.add(f[0])
                if what == "license":
                    f[MEDIA_LICENSE] = b"free for everyone"
                else:
                    f[MEDIA_TYPE] = b"Sound"
                lines[i] = b"\t".join(f)
        lines.insert(-1, b"999999999\tStillImage\timage/jpeg\thttp://example.org/orphan.jpg" + b"\t" * 11)

    z = rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": _edit_lines(occ), "multimedia.txt": _edit_lines(media)})
    records, rejects, reasons = ingest(CONNECTOR, str(z), Options())
    assert reasons["material_citation"] >= 1 and reasons["bad_coordinates"] >= 2
    assert reasons["unknown_license"] == 1 and reasons["not_still_image"] == 1 and reasons["orphan_media"] == 1
    assert records.num_rows + rejects.num_rows == 256 + 216
    details = rejects.filter(pa.compute.equal(rejects.column("reason"), "bad_coordinates")).column("detail")
    assert any("'200'" in d for d in details.to_pylist())
    kept, _, reasons2 = ingest(CONNECTOR, str(z), Options(keep_unknown_license=True))
    assert "unknown_license" not in reasons2
    assert "unknown" in kept.column("license").to_pylist()


def test_occurrences_without_a_gbif_id_keep_reject_ids_of_their_own(tmp_path):
    """Two real occurrences with their gbifID blanked: rejects (they cannot join their media), each
    with its own id, named by its row in the core file; nothing is lost."""
    blanked = []

    def occ(lines):
        for i in (3, 7):
            f = lines[i].split(b"\t")
            blanked.append(f[0].decode())
            f[0] = b""
            lines[i] = b"\t".join(f)

    z = rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": _edit_lines(occ)})
    records, rejects, reasons = ingest(CONNECTOR, str(z), Options())
    ids = rejects.column("record_id").to_pylist()
    assert len(set(ids)) == len(ids)
    for row in (2, 6):  # lines 3 and 7 after the header: rows 2 and 6 of the core
        assert make_record_id("gbif", f"occurrence/row-{row}") in ids
    media = [r.split("\t")[0] for r in zipfile.ZipFile(SAMPLE).read("multimedia.txt").decode().split("\n")[1:] if r]
    k = [media.count(g) for g in blanked]
    base_records, base_rejects, base_reasons = ingest(CONNECTOR, str(SAMPLE), Options())
    # each blanked occurrence: one no-image reject instead of its joined rows, its media orphans
    assert records.num_rows + rejects.num_rows == (base_records.num_rows + base_rejects.num_rows
                                                   - sum(max(n, 1) for n in k) + 2 + sum(k))
    assert reasons.get("orphan_media", 0) == base_reasons.get("orphan_media", 0) + sum(k)


def test_blank_core_ids_on_both_sides_join_nothing(tmp_path):
    """Three real occurrences and their media rows with the gbifID blanked on both sides: blank ids
    are equal text, not one occurrence, so nothing joins (before, each such occurrence took every
    blank media row); the occurrences are no-image rejects, their media orphans; nothing is lost."""
    media = [r.split("\t")[0] for r in zipfile.ZipFile(SAMPLE).read("multimedia.txt").decode().split("\n")[1:] if r]
    targets = list(dict.fromkeys(media))[:3]

    def blank(lines):
        for i, line in enumerate(lines):
            f = line.split(b"\t")
            if f[0].decode() in targets:
                f[0] = b" " if i % 2 else b""
                lines[i] = b"\t".join(f)

    z = rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": _edit_lines(blank), "multimedia.txt": _edit_lines(blank)})
    records, rejects, reasons = ingest(CONNECTOR, str(z), Options())
    base_records, base_rejects, base_reasons = ingest(CONNECTOR, str(SAMPLE), Options())
    k = [media.count(g) for g in targets]
    assert records.num_rows + rejects.num_rows == base_records.num_rows + base_rejects.num_rows - sum(k) + 3 + sum(k)
    assert reasons["orphan_media"] == base_reasons.get("orphan_media", 0) + sum(k)
    theirs = sum(m.split("/", 1)[0] in targets for m in base_records.column("media_id").to_pylist())
    assert theirs and records.num_rows == base_records.num_rows - theirs  # their images went to no one
    details = rejects.filter(pa.compute.equal(rejects.column("reason"), "orphan_media")).column("detail").to_pylist()
    assert details.count("multimedia row without a core id (gbifID)") == sum(k)


def test_tasks_need_an_input_or_a_query():
    with pytest.raises(ValueError, match="taxon_key"):
        CONNECTOR.tasks(None, Options())
    assert CONNECTOR.tasks(None, Options(taxon_key=3329049)) == CONNECTOR.tasks(None, Options(taxon_key=3329049))
    assert CONNECTOR.tasks(None, Options(taxon_key=1))[0].startswith("search:")


def test_search_api_pages_with_retries(loopback, clock):
    body = SEARCH.read_bytes()
    replies = iter([Reply(429, b"{}", {"Retry-After": "2"}), Reply(500, b"{}")])

    def route(req):
        return next(replies, None) or Reply(200, body)

    server = loopback(route)
    opts = Options(taxon_key=3329049, api_base_url=server.url, max_records=450, rate=50)
    conn = GBIFConnector(sleep=clock.sleep, clock=clock)
    records, rejects, reasons = ingest(conn, conn.tasks(None, opts)[0], opts)
    pages = [r for r in server.seen if r.path.endswith("/occurrence/search")]
    assert [(r.query["offset"], r.query["limit"]) for r in pages if "offset" in r.query][-2:] == \
        [(["0"], ["300"]), (["300"], ["150"])]
    assert pages[0].query["taxonKey"] == ["3329049"] and pages[0].query["mediaType"] == ["StillImage"]
    assert 2.0 in clock.sleeps
    # each page: 487 media rows + 13 occurrences without media
    assert records.num_rows + rejects.num_rows == 2 * 500
    assert reasons["no_image"] == 2 * 13
    assert collections.Counter(records.column("license").to_pylist())["all-rights-reserved"] == 2 * 15
    assert conform(records, "ingest")[1].num_rows == 0


def test_predicate_from_the_query():
    p = build_predicate(Options(taxon_key=5, filters={"country": ["DK", "SE"], "hasCoordinate": True}))
    assert {"type": "in", "key": "COUNTRY", "values": ["DK", "SE"]} in p["predicates"]
    assert {"type": "equals", "key": "HAS_COORDINATE", "value": "True"} in p["predicates"]
    assert {"type": "equals", "key": "TAXON_KEY", "value": "5"} in p["predicates"]


def test_download_api_requests_polls_and_resumes(loopback, clock, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GBIF_USER", "tester")
    monkeypatch.setenv("GBIF_PWD", "s3cret-pw")
    monkeypatch.setenv("GBIF_EMAIL", "t@example.org")
    key = "0000066-140928181241064"
    archive = SAMPLE.read_bytes()
    status = iter(["PREPARING", "RUNNING", "SUCCEEDED"])
    zip_calls = []

    def route(req):
        if req.method == "POST":
            return Reply(201, key.encode(), {"Content-Type": "text/plain"})
        if req.path.endswith(f"/occurrence/download/{key}"):
            return Reply(200, json.dumps({"key": key, "status": next(status),
                                          "downloadLink": server.url + f"occurrence/download/request/{key}.zip"}
                                         ).encode())
        if req.path.endswith(".zip"):
            zip_calls.append(req.headers.get("Range"))
            if len(zip_calls) == 1:
                return Reply(200, archive, {"Content-Type": "application/zip"}, cut_after=len(archive) // 2)
            start = int(req.headers["Range"].split("=")[1].rstrip("-"))
            return Reply(206, archive[start:], {"Content-Type": "application/zip"})
        return Reply(404, b"{}")

    server = loopback(route)
    opts = Options(mode="download", taxon_key=1, api_base_url=server.url, cache_dir=str(tmp_path),
                   poll_interval_s=30, rate=50)
    conn = GBIFConnector(sleep=clock.sleep, clock=clock)
    with caplog.at_level(logging.DEBUG):
        records, rejects, _ = ingest(conn, conn.tasks(None, opts)[0], opts)
    assert records.num_rows == 210 and rejects.num_rows == 261
    post = [r for r in server.seen if r.method == "POST"][0]
    assert post.headers["Authorization"] == "Basic " + base64.b64encode(b"tester:s3cret-pw").decode()
    body = json.loads(post.body)
    assert body["creator"] == "tester" and body["predicate"]["type"] == "and"
    assert clock.sleeps.count(30) == 2  # polled until SUCCEEDED
    assert zip_calls[0] is None and zip_calls[1].startswith("bytes=")
    assert "s3cret-pw" not in caplog.text
    # a rerun reuses the recorded request and the fetched archive: no second POST
    ingest(conn, conn.tasks(None, opts)[0], opts)
    assert sum(r.method == "POST" for r in server.seen) == 1


def test_download_api_needs_credentials(monkeypatch, tmp_path):
    for k in ("GBIF_USER", "GBIF_PWD", "GBIF_EMAIL"):
        monkeypatch.delenv(k, raising=False)
    opts = Options(mode="download", taxon_key=1, cache_dir=str(tmp_path))
    # QA: a RuntimeError, which the CLI shows as a traceback; a ValueError is its one-line error,
    # and it comes before anything runs
    with pytest.raises(ValueError, match="gbif download API: set GBIF_USER, GBIF_PWD, GBIF_EMAIL in the environment"):
        CONNECTOR.tasks(None, opts)
    with pytest.raises(ValueError, match="set GBIF_USER, GBIF_PWD, GBIF_EMAIL"):
        list(CONNECTOR.read("download:x", opts))


def test_search_results_of_the_wrong_shape_are_rejects_of_their_own(loopback, clock):
    """Found by a fuzz of the recorded page: one odd occurrence (media an object, issues a number,
    a bare string in the results) failed the whole pull with an AttributeError / TypeError."""
    page = json.loads(SEARCH.read_text())
    results = page["results"]
    with_media = [i for i, o in enumerate(results) if o.get("media")]
    first, second = results[with_media[0]], results[with_media[1]]
    lost = len(first["media"]) + len(second["media"])  # rows the two would have given
    first["media"] = 3.5
    second["issues"] = 7
    results.append("not an occurrence")
    page["endOfRecords"] = True
    server = loopback(lambda req: Reply(200, json.dumps(page).encode()))
    opts = Options(taxon_key=3329049, api_base_url=server.url, max_records=300, rate=50)
    conn = GBIFConnector(sleep=clock.sleep, clock=clock)
    records, rejects, reasons = ingest(conn, conn.tasks(None, opts)[0], opts)
    bad = rejects.filter(pa.compute.equal(rejects.column("reason"), "malformed_row")).to_pylist()
    assert len(bad) == 3
    assert f"occurrence {first['key']}: malformed JSON (TypeError" in bad[0]["detail"]
    assert f"occurrence {second['key']}: malformed JSON (TypeError" in bad[1]["detail"]
    assert "occurrence #300 of the search: malformed JSON (AttributeError" in bad[2]["detail"]
    # the other occurrences as in the recorded page: 487 media rows + 13 without media, less the two
    assert records.num_rows + rejects.num_rows == 500 - lost + 3
    assert conform(records, "ingest")[1].num_rows == 0


def test_a_search_answer_without_results_is_a_clear_error(loopback, clock):
    server = loopback(lambda req: Reply(200, b'{"results": "none"}'))
    opts = Options(taxon_key=1, api_base_url=server.url, rate=50)
    conn = GBIFConnector(sleep=clock.sleep, clock=clock)
    with pytest.raises(Exception, match="answered results of type str, not a list of results; is api_base_url"):
        ingest(conn, conn.tasks(None, opts)[0], opts)


@pytest.mark.parametrize("opts", [{}, {"join_memory_mb": 0.01}, {"join_memory_mb": 0.01, "join_partitions": 3}],
                         ids=["in-memory", "spilled", "spilled-3-parts"])
def test_media_of_a_malformed_core_row_say_their_parent_was_malformed(tmp_path, opts):
    """QA: the media of an occurrence row with the wrong field count were rejected 'which is not in
    the core', although the row is there."""
    media = [r.split("\t")[0] for r in zipfile.ZipFile(SAMPLE).read("multimedia.txt").decode().split("\n")[1:] if r]
    targets = list(dict.fromkeys(media))[:2]
    width = {}

    def damage(lines):
        for i, line in enumerate(lines):
            f = line.split(b"\t")
            if f[0].decode() == targets[0]:
                lines[i] = b"\t".join(f[:-1])          # a field short
                width[targets[0]] = (i + 1, len(f) - 1)
            elif f[0].decode() == targets[1]:
                lines[i] = line + b"\tstray"           # a field too many
                width[targets[1]] = (i + 1, len(f) + 1)

    def orphan(lines):
        lines.insert(-1, b"999999999\tStillImage\timage/jpeg\thttp://example.org/orphan.jpg" + b"\t" * 11)

    z = rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": _edit_lines(damage), "multimedia.txt": _edit_lines(orphan)})
    records, rejects, reasons = ingest(CONNECTOR, str(z), Options(**opts))
    k = sum(media.count(g) for g in targets)
    assert reasons["malformed_row"] == 2 and reasons["orphan_media"] == k + 1
    # every unit of the sample, the added media row, and the two occurrence rows (now rejects of their own)
    assert records.num_rows + rejects.num_rows == 256 + 215 + 1 + 2
    details = rejects.filter(pa.compute.equal(rejects.column("reason"), "orphan_media")).column("detail").to_pylist()
    for g in targets:
        line, got = width[g]
        want = (f"multimedia row for gbifID {g}, whose core row is malformed (occurrence.txt: expected 225 fields, "
                f"got {got} (line {line}))")
        assert details.count(want) == media.count(g)
    assert details.count("multimedia row for gbifID 999999999 which is not in the core") == 1


@pytest.mark.parametrize("sample", ["0000066-140928181241064.zip", "gbif-results.zip"])
def test_a_zip_without_meta_xml_says_to_request_a_dwca_download(tmp_path, sample):
    """QA: a SIMPLE_CSV download (no meta.xml) only listed its members."""
    z = rewrite(DATA / "gbif/dwca" / sample, tmp_path / sample, drop={"meta.xml"})
    with pytest.raises(ValueError, match="no meta.xml in the archive, so it is not a Darwin Core Archive .*"
                                         "request the download in DWCA format .*SIMPLE_CSV"):
        ingest(CONNECTOR, str(z), Options())


# ---- the search and download APIs answering what they should not -------------------------------


@pytest.mark.parametrize("bad", [
    Reply(200, b"<html><body>maintenance</body></html>", {"Content-Type": "text/html"}),
    Reply(200, b'{"offset": 0, "results": [{"key": 1,', {"Content-Type": "application/json"}),
], ids=["html-page", "cut-json"])
def test_a_search_answer_that_is_not_json_is_retried_then_a_clear_error(loopback, clock, bad):
    """QA: an HTML page ended in pygbif's NoResultException traceback, a cut body in a bare
    'Expecting property name'; neither was retried nor named the URL."""
    body = SEARCH.read_bytes()
    replies = [bad]
    server = loopback(lambda req: replies.pop(0) if replies else Reply(200, body))
    opts = Options(taxon_key=3329049, api_base_url=server.url, max_records=300, rate=50)
    conn = GBIFConnector(sleep=clock.sleep, clock=clock)
    records, rejects, _ = ingest(conn, conn.tasks(None, opts)[0], opts)  # once: transient
    assert records.num_rows + rejects.num_rows == 500 and len(server.seen) == 2
    server = loopback(lambda req: bad)
    opts = Options(taxon_key=3329049, api_base_url=server.url, rate=50)
    # (pygbif reads the answer, so the message says what it found: the content type, or the parser's error)
    with pytest.raises(HttpError, match=rf"GET {server.url}occurrence/search: the answer is not JSON "
                                        r"\((content-type did not equal application/json|the body does not parse: "
                                        r"Expecting .*); 3 attempts\).*api_base_url") as err:
        ingest(conn, conn.tasks(None, opts)[0], opts)
    assert len(server.seen) == 3 and err.value.status == 200


def test_the_search_sends_the_configured_user_agent(loopback, clock):
    """QA: pygbif sent its own User-Agent (python-requests/...,pygbif/...) whatever the config said;
    the search still goes through pygbif (the issue asks for it), with the configured one."""
    body = json.loads(SEARCH.read_text())
    body["endOfRecords"] = True
    server = loopback(lambda req: Reply(200, json.dumps(body).encode()))
    opts = Options(taxon_key=3329049, filters={"hasCoordinate": True, "country": ["DK", "SE"]},
                   api_base_url=server.url, rate=50, user_agent="my-corpus/1.0 (me@example.org)")
    conn = GBIFConnector(sleep=clock.sleep, clock=clock)
    records, _, _ = ingest(conn, conn.tasks(None, opts)[0], opts)
    assert records.num_rows == 487
    (req,) = server.seen
    assert req.headers["User-Agent"] == "my-corpus/1.0 (me@example.org)"
    assert req.query["hasCoordinate"] == ["true"] and req.query["country"] == ["DK", "SE"]  # as pygbif sent them
    assert req.query["taxonKey"] == ["3329049"] and req.query["limit"] == ["300"]


def test_a_download_that_ended_failed_says_a_rerun_requests_a_new_one(loopback, clock, tmp_path, monkeypatch):
    """QA: 'ended FAILED; ... (a rerun resumes where this one stopped)', but a rerun makes a new request."""
    for k, v in (("GBIF_USER", "tester"), ("GBIF_PWD", "pw"), ("GBIF_EMAIL", "t@example.org")):
        monkeypatch.setenv(k, v)
    key = "0000066-140928181241064"

    def route(req):
        if req.method == "POST":
            return Reply(201, key.encode(), {"Content-Type": "text/plain"})
        return Reply(200, json.dumps({"key": key, "status": "FAILED"}).encode())

    server = loopback(route)
    opts = Options(mode="download", taxon_key=1, api_base_url=server.url, cache_dir=str(tmp_path), rate=50)
    conn = GBIFConnector(sleep=clock.sleep, clock=clock)
    with pytest.raises(HttpError, match=f"gbif download {key} ended FAILED; GBIF made no archive of it") as err:
        ingest(conn, conn.tasks(None, opts)[0], opts)
    assert err.value.advice == "run the same command again to request a new download of the query"
    assert not list(tmp_path.glob("download-*.json"))  # so the rerun does request a new one


def test_an_unauthorised_download_request_keeps_its_status(loopback, clock, tmp_path, monkeypatch):
    """The CLI words its advice by the status (401/403: the credentials), so the error must keep it."""
    for k, v in (("GBIF_USER", "tester"), ("GBIF_PWD", "wrong"), ("GBIF_EMAIL", "t@example.org")):
        monkeypatch.setenv(k, v)
    server = loopback(lambda req: Reply(401, b"Unauthorized", {"Content-Type": "text/plain"}))
    opts = Options(mode="download", taxon_key=1, api_base_url=server.url, cache_dir=str(tmp_path), rate=50)
    conn = GBIFConnector(sleep=clock.sleep, clock=clock)
    with pytest.raises(HttpError, match="POST .*/occurrence/download/request: HTTP 401") as err:
        ingest(conn, conn.tasks(None, opts)[0], opts)
    assert err.value.status == 401 and "wrong" not in str(err.value)
