"""EOL connector: the real page export, pages API JSON (file and loopback), and media manifests."""

import collections
import csv
import json

import pytest

from schemas import conform
from sources.eol import CONNECTOR, EOLConnector, Options
from tests.sources.conftest import DATA, Reply
from tests.sources.test_gbif import ingest

STORE = DATA / "eol/publishing_store/store-328598.json"
PAGES = DATA / "eol/api_v1/pages_46578889_taxonomy.json"


def test_page_export_media_become_records():
    records, rejects, reasons = ingest(CONNECTOR, str(STORE), Options())
    assert records.num_rows == 100 and rejects.num_rows == 0
    assert conform(records, "ingest")[1].num_rows == 0
    licences = collections.Counter(records.column("license").to_pylist())
    assert licences == {"cc-by-nc-sa-3.0": 43, "cc-by-nc-sa-2.0": 27, "cc-by-sa-3.0": 11, "cc-by-nc-3.0": 9,
                        "cc-by-2.0": 7, "public-domain": 2, "cc-by-nc-2.0": 1}
    row = records.to_pylist()[1]
    assert row["identifier"] == "http://media.eol.org/content/2011/08/04/15/94034_orig.jpg"
    assert row["rights_holder"] == "© 1999 California Academy of Sciences"
    assert row["references"].startswith("http://calphotos.berkeley.edu/")
    assert row["verbatim_name"] == "Procyon lotor" and row["verbatim_family"] == "Procyonidae"
    assert row["verbatim_lineage"] == "Animalia|Chordata|Mammalia|Carnivora|Procyonidae|Procyon|Procyon lotor"
    assert row["source_taxon_id"] == "328598"


def test_image_size_option():
    records, _, _ = ingest(CONNECTOR, str(STORE), Options(image_size="large"))
    assert all(u.endswith("_580_360.jpg") for u in records.column("identifier").to_pylist())


def test_pages_api_json_without_media_is_counted_not_lost():
    b = next(CONNECTOR.read(str(PAGES), Options()))
    assert b.records.num_rows == 0 and b.skipped == {"page_without_media": 1}


def _api_doc_with_media():
    """The real pages API response with dataObjects built from the real page export's media rows."""
    doc = json.loads(PAGES.read_text())
    store = json.loads(STORE.read_text())
    doc["taxonConcept"]["dataObjects"] = [
        {"identifier": m["guid"], "dataObjectVersionID": i, "dataType": "http://purl.org/dc/dcmitype/StillImage",
         "mimeType": "image/jpeg", "license": m["license"]["source_url"], "rightsHolder": m["owner"],
         "source": m["source_url"], "mediaURL": m["base_url"] + "_orig.jpg",
         "eolMediaURL": m["base_url"] + "_orig.jpg"} for i, m in enumerate(store["media"][:5])]
    doc["taxonConcept"]["dataObjects"].append({"identifier": "snd", "dataType": "http://purl.org/dc/dcmitype/Sound",
                                               "license": "cc-by 3.0", "mediaURL": "http://x/y.mp3"})
    return doc


def test_pages_api_from_loopback(loopback, clock):
    body = json.dumps(_api_doc_with_media()).encode()
    replies = [Reply(503, b"{}"), Reply(200, body)]
    server = loopback(lambda req: replies.pop(0))
    conn = EOLConnector(sleep=clock.sleep, clock=clock)
    opts = Options(page_ids=[46578889], api_base_url=server.url, rate=100)
    assert conn.tasks(None, opts) == ["page:46578889"]
    records, rejects, reasons = ingest(conn, "page:46578889", opts)
    assert server.seen[-1].path == "/pages/1.0/46578889.json"
    assert records.num_rows == 5 and reasons == {"not_still_image": 1}
    row = records.to_pylist()[0]
    assert row["verbatim_name"] == "Pomatomus" and row["verbatim_rank"] == "genus"
    assert row["verbatim_lineage"] == "Animalia|Chordata|Perciformes|Pomatomidae|Pomatomus"
    assert row["license"] == "public-domain" and row["source_taxon_id"] == "46578889"


@pytest.mark.parametrize("columns, delim", [
    (["EOL content ID", "EOL page ID", "Medium Source URL", "EOL Full-Size Copy URL", "License Name",
      "Copyright Owner"], ","),
    (["eol_content_id", "eol_page_id", "medium_source_url", "eol_full_size_copy_url", "license_name",
      "copyright_owner"], "\t"),
], ids=["documented-names", "snake-case-tsv"])
def test_media_manifest_written_from_real_media_rows(tmp_path, columns, delim):
    store = json.loads(STORE.read_text())
    path = tmp_path / ("media_manifest.csv" if delim == "," else "media_manifest.tsv")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=delim)
        w.writerow(columns)
        for m in store["media"]:
            w.writerow([m["guid"], store["id"], m["source_url"], m["base_url"] + "_orig.jpg",
                        m["license"]["name"], m["owner"]])
        fh.write("broken,row\n" if delim == "," else "broken\trow\n")
    records, rejects, reasons = ingest(CONNECTOR, str(path), Options())
    assert records.num_rows == 100 and reasons == {"malformed_row": 1}
    export, _, _ = ingest(CONNECTOR, str(STORE), Options())
    assert sorted(records.column("record_id").to_pylist()) == sorted(export.column("record_id").to_pylist())
    assert collections.Counter(records.column("license").to_pylist()) == \
        collections.Counter(export.column("license").to_pylist())
    assert set(records.column("source_taxon_id").to_pylist()) == {"328598"}


def test_manifest_without_the_needed_columns_is_a_clear_error(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="EOL content ID"):
        list(CONNECTOR.read(str(path), Options()))


def test_unknown_licence_and_folder_tasks(tmp_path):
    store = json.loads(STORE.read_text())
    store["media"][0]["license"] = {"name": "some licence", "source_url": "http://example.org/terms"}
    (tmp_path / "store-328598.json").write_text(json.dumps(store))
    (tmp_path / "notes.txt").write_text("ignored")
    assert CONNECTOR.tasks(str(tmp_path), Options()) == [str(tmp_path / "store-328598.json")]
    records, rejects, reasons = ingest(CONNECTOR, str(tmp_path / "store-328598.json"), Options())
    assert records.num_rows == 99 and reasons == {"unknown_license": 1}
