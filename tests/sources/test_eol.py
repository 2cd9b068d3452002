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


def test_media_of_the_wrong_shape_are_rejects_of_their_own(tmp_path):
    """Found by a fuzz of the real export: one odd medium (its URL a number, its licence a list)
    failed the whole page with an AttributeError / ArrowTypeError."""
    doc = json.loads(STORE.read_text())
    doc["media"][3]["eol_full_size_copy_url"] = 12.5
    doc["media"][5]["license"] = ["cc-by"]
    doc["media"].append("not a medium")
    (tmp_path / "store-328598.json").write_text(json.dumps(doc))
    records, rejects, reasons = ingest(CONNECTOR, str(tmp_path / "store-328598.json"), Options())
    assert records.num_rows == 98 and reasons == {"malformed_row": 3}
    details = rejects.column("detail").to_pylist()
    assert details[0].startswith(f"page 328598 medium {doc['media'][3]['guid']}: malformed JSON (TypeError")
    assert details[1].startswith(f"page 328598 medium {doc['media'][5]['guid']}: malformed JSON")
    assert details[2].startswith("page 328598 medium #100: malformed JSON (AttributeError")


def test_a_page_whose_hierarchy_has_the_wrong_shape_is_a_clear_error(tmp_path):
    doc = json.loads(STORE.read_text())
    doc["native_node"]["parent"] = ["not", "a", "node"]
    (tmp_path / "store-328598.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="eol: page 328598: the page: malformed JSON .* cannot be placed in a taxon"):
        ingest(CONNECTOR, str(tmp_path / "store-328598.json"), Options())

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


def _latin1_manifest(tmp_path, quoted: bool):
    """Real media rows as a manifest in which two owners are written in Latin-1 (rows 3 and 6)."""
    store = json.loads(STORE.read_text())
    path = tmp_path / "media_manifest.tsv"
    head = "eol_content_id\teol_page_id\tmedium_source_url\teol_full_size_copy_url\tlicense_name\tcopyright_owner"
    lines = [head.encode()]
    for i, m in enumerate(store["media"][:8]):
        owner = ("Jos\u00e9 Pe\u00f1a".encode("latin-1") if i in (1, 4) else m["owner"].encode())
        if quoted:
            owner = b'"' + owner + b'"'
        lines.append("\t".join([m["guid"], str(store["id"]), m["source_url"], m["base_url"] + "_orig.jpg",
                                m["license"]["name"]]).encode() + b"\t" + owner)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, store


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_manifest_rows_that_are_not_utf8_are_rejects(tmp_path, quoted):
    """Real media rows, two owners written in Latin-1: those rows are ``undecodable_text`` rejects
    that name the line, the byte and how to re-encode the file; every other row is a record."""
    path, store = _latin1_manifest(tmp_path, quoted)
    records, rejects, reasons = ingest(CONNECTOR, str(path), Options(keep_unknown_license=True))
    assert reasons == {"undecodable_text": 2}
    assert records.num_rows == 6 and records.num_rows + rejects.num_rows == 8
    assert rejects.column("record_id").to_pylist() == [make_record_id(SOURCE, store["media"][i]["guid"]) for i in (1, 4)]
    details = rejects.column("detail").to_pylist()
    assert details[0].startswith("media_manifest.tsv line 3: not UTF-8 text (byte 0xe9)") and "iconv" in details[0]
    assert details[1].startswith("media_manifest.tsv line 6:")
    assert set(records.column("media_id").to_pylist()) == {m["guid"] for i, m in enumerate(store["media"][:8])
                                                           if i not in (1, 4)}


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_manifest_header_that_is_not_utf8_is_a_clear_error(tmp_path, quoted):
    """Without a readable header the columns cannot be found: the ingest stops with the file's name
    and how to fix it (the CLI prints the message, no traceback)."""
    path = tmp_path / "media_manifest.tsv"
    name = b'"Copyright Owner \xe9"' if quoted else b"Copyright Owner \xe9"
    path.write_bytes(b"EOL content ID\tEOL Full-Size Copy URL\t" + name + b"\n1\thttp://x/1.jpg\tme\n")
    with pytest.raises(ValueError, match=r"media_manifest.tsv is not UTF-8 text .*byte 0xe9.*iconv"):
        list(CONNECTOR.read(str(path), Options()))


def test_unknown_licence_and_folder_tasks(tmp_path):
    store = json.loads(STORE.read_text())
    store["media"][0]["license"] = {"name": "some licence", "source_url": "http://example.org/terms"}
    (tmp_path / "store-328598.json").write_text(json.dumps(store))
    (tmp_path / "notes.txt").write_text("ignored")
    assert CONNECTOR.tasks(str(tmp_path), Options()) == [str(tmp_path / "store-328598.json")]
    records, rejects, reasons = ingest(CONNECTOR, str(tmp_path / "store-328598.json"), Options())
    assert records.num_rows == 99 and reasons == {"unknown_license": 1}


def _without_english(vs):
    return [v for v in vs if v["language"] != "eng"]


@pytest.mark.parametrize("edit, want", [
    (lambda vs: vs, "raccoon"),                                            # preferred English
    (lambda vs: [v for v in vs if v["string"] != "raccoon"], "common raccoon"),  # English, not preferred
    (lambda vs: [{**v, "string": "<b>raccoon</b> &amp; co"} if v["string"] == "raccoon" else v for v in vs],
     "raccoon & co"),
    (lambda vs: ["a string", None, {"string": 5, "language": "eng", "preferred": True}, *vs], "raccoon"),
    (_without_english, None),
    (lambda vs: {"eng": "raccoon"}, None),                                 # another shape: passed over
    (lambda vs: None, None),
], ids=["preferred", "not-preferred", "html", "odd-items", "no-english", "not-a-list", "none"])
def test_the_page_exports_own_vernacular_is_kept(tmp_path, edit, want):
    """QA: the page's preferred English name (raccoon) was dropped at ingest."""
    doc = json.loads(STORE.read_text())
    doc["vernaculars"] = edit(doc["vernaculars"])
    (tmp_path / "store-328598.json").write_text(json.dumps(doc))
    records, rejects, _ = ingest(CONNECTOR, str(tmp_path / "store-328598.json"), Options())
    assert records.num_rows == 100 and rejects.num_rows == 0
    names = set(records.column("vernacular_name").to_pylist()) if "vernacular_name" in records.column_names else {None}
    assert names == {want}
    assert {json.loads(e).get("vernacular_name") for e in records.column("extra").to_pylist()} == {want}
    if want is not None:
        assert set(records.column("vernacular_rank").to_pylist()) == {"species"}
        assert conform(records, "ingest")[1].num_rows == 0


@pytest.mark.parametrize("licence", [None, {}, {"name": "", "source_url": None}, {"name": "  "}, ""],
                         ids=["null", "empty-object", "empty-name", "blank-name", "empty-text"])
def test_a_medium_without_a_licence_says_so(tmp_path, licence):
    """QA: the detail read "licence None not recognised"."""
    store = json.loads(STORE.read_text())
    store["media"][0]["license"] = licence
    (tmp_path / "store-328598.json").write_text(json.dumps(store))
    records, rejects, reasons = ingest(CONNECTOR, str(tmp_path / "store-328598.json"), Options())
    assert records.num_rows == 99 and reasons == {"unknown_license": 1}
    assert rejects.column("detail").to_pylist() == ["no licence given"]
    manifest = tmp_path / "media_manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["EOL content ID", "EOL page ID", "EOL Full-Size Copy URL", "License Name"])
        for i, m in enumerate(store["media"][:3]):
            w.writerow([m["guid"], store["id"], m["base_url"] + "_orig.jpg",
                        "" if i == 0 else "some licence" if i == 1 else m["license"]["name"]])
    records, rejects, reasons = ingest(CONNECTOR, str(manifest), Options())
    assert records.num_rows == 1 and rejects.column("detail").to_pylist() == [
        "no licence given", "licence 'some licence' not recognised"]


# ---------------------------------------------------------------- the column-wise manifest reader
# The per-row manifest reader as it was before it went column-wise, kept here word for word (its
# helpers _open, _manifest_fields, clean_name and _build are the connector's) as the reference the
# column-wise reader must equal, batch for batch and table for table.


import gzip  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402

import pyarrow as pa  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sources.eol as eol  # noqa: E402
from schemas import Reason, make_record_id, make_rejects  # noqa: E402
from schemas.rejects import REJECT_SCHEMA  # noqa: E402
from sources.base import IngestBatch  # noqa: E402
from sources.eol import SOURCE, STAGE, _build, _manifest_fields, _open, clean_name, read_manifest  # noqa: E402

_BAD_BYTE = re.compile("[\udc80-\udcff]")


def read_manifest_reference(path, options):
    """An EOL media manifest (CSV or TSV, plain or gzip), in batches; unreadable rows are rejects."""
    with _open(path, "replace") as fh:
        sample = fh.read(1 << 16)
        delim = "\t" if sample.count("\t") > sample.count(",") else ","
    with _open(path, "surrogateescape") as fh:
        reader = csv.reader(fh, delimiter=delim)
        try:
            header = next(reader)
        except StopIteration:
            return
        if any(_BAD_BYTE.search(h) for h in header):
            raise ValueError(f"eol: {path} is not UTF-8 text (in the header); re-encode it (iconv)")
        fields = _manifest_fields(header)
        missing = {"content_id", "copy_url"} - fields.keys()
        if missing:
            raise ValueError(f"eol: {path} lacks manifest columns {sorted(missing)} "
                             f"(found {header}); expected EOL's names, e.g. 'EOL content ID'")
        media: list[dict] = []
        bad_ids, bad_details, bad_reasons = [], [], []
        page_of: list[str | None] = []
        content = fields["content_id"]
        for lineno, row in enumerate(reader, start=2):
            escaped = [_BAD_BYTE.search(v) for v in row]
            first = next((m for m in escaped if m), None)
            if first is not None:
                readable = len(row) > content and not escaped[content]
                bad_ids.append(make_record_id(SOURCE, row[content] if readable else f"{path.name}:{lineno}"))
                bad_details.append(f"{path.name} line {lineno}: not UTF-8 text (byte 0x{ord(first.group()) - 0xDC00:02x}); "
                                   f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) and ingest it again")
                bad_reasons.append(Reason.UNDECODABLE_TEXT)
                continue
            if len(row) != len(header):
                bad_ids.append(make_record_id(SOURCE, row[content] if len(row) > content
                                              else f"{path.name}:{lineno}"))
                bad_details.append(f"{path.name} line {lineno}: expected {len(header)} fields, got {len(row)}")
                bad_reasons.append(Reason.MALFORMED_ROW)
                continue
            get = lambda k, row=row: (row[fields[k]].strip() or None) if k in fields else None  # noqa: E731
            media.append({"media_id": get("content_id"), "url": get("copy_url"), "source_url": get("source_url"),
                          "license_raw": get("license"), "license_name": None, "owner": clean_name(get("owner")),
                          "dataset": None, "type": None, "extra": {}})
            page_of.append(get("page_id"))
            if len(media) >= options.batch_rows:
                yield _manifest_batch_reference(media, page_of, bad_ids, bad_details, bad_reasons, options)
                media, page_of, bad_ids, bad_details, bad_reasons = [], [], [], [], []
        yield _manifest_batch_reference(media, page_of, bad_ids, bad_details, bad_reasons, options)


def _manifest_batch_reference(media, page_of, bad_ids, bad_details, bad_reasons, options) -> IngestBatch:
    tables, rejects = [], []
    # a manifest mixes pages: build per page so each record carries its own page id
    by_page: dict[str | None, list[dict]] = {}
    for m, p in zip(media, page_of, strict=False):
        by_page.setdefault(p, []).append(m)
    for page, items in by_page.items():
        b = _build(items, lambda m: m, page, {}, None, options, {})
        if b.records.num_rows:
            tables.append(b.records)
        rejects.append(b.rejects)
    if bad_ids:
        rejects.append(make_rejects(bad_ids, STAGE, [str(r) for r in bad_reasons], bad_details))
    records = pa.concat_tables(tables) if tables else pa.table({})
    rej = pa.concat_tables(rejects) if rejects else REJECT_SCHEMA.empty_table()
    return IngestBatch(records=records, rejects=rej)


def _outcome(reader, path, options):
    """The batches a reader yields, and the error it ends with (None if none)."""
    out = []
    try:
        for b in reader(path, options):
            out.append(b)
    except ValueError as exc:  # UnicodeDecodeError included
        return out, exc
    return out, None


def assert_same_batches(path, options):
    ref, ref_err = _outcome(read_manifest_reference, path, options)
    got, got_err = _outcome(read_manifest, path, options)
    assert type(got_err) is type(ref_err), (got_err, ref_err)
    if ref_err is not None and "is not UTF-8 text" in str(ref_err):  # only a header stops the file
        assert "is not UTF-8 text" in str(got_err) and "iconv" in str(got_err)
        return
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.records.schema.equals(r.records.schema, check_metadata=True)
        assert g.records.equals(r.records), (g.records.to_pylist(), r.records.to_pylist())
        assert g.rejects.schema.equals(r.rejects.schema, check_metadata=True)
        assert g.rejects.equals(r.rejects), (g.rejects.to_pylist(), r.rejects.to_pylist())
        assert g.skipped == r.skipped


_COLUMN_SETS = [
    ["EOL content ID", "EOL page ID", "Medium Source URL", "EOL Full-Size Copy URL", "License Name",
     "Copyright Owner"],
    ["eol_content_id", "eol_page_id", "medium_source_url", "eol_full_size_copy_url", "license_name",
     "copyright_owner"],
    ["medium_id", "full_size_copy_url", "license"],
    ["Title", " content_id ", "page_id", "source_url", "copy_url", "owner", "Notes"],
]
_WS = st.sampled_from(["", "", "", " ", "  ", "\t", "\xa0", "\x1c", "\u3000", "\u2028", "\x0b"])
_LICENCES = st.sampled_from([
    "cc-by-nc-sa-3.0", "CC BY-NC 4.0", "http://creativecommons.org/licenses/by/2.0/", "Public Domain",
    "cc0", "© 2010 someone", "some licence", "", "http://example.org/terms", "Attribution-ShareAlike 3.0",
    "CC-BY-SA-ND", "&copy; all rights reserved", "cc-by 3.0", "no known copyright restrictions", "WTFPL"])
_URLS = st.sampled_from([
    "http://media.eol.org/content/2011/08/04/15/94034_orig.jpg", "https://static.inaturalist.org/photos/123/original.jpg",
    "http://calphotos.berkeley.edu/cgi/img_query?seq_num=1&one=T", "HTTP://Example.ORG:80/a b#frag",
    "https://inaturalist-open-data.s3.amazonaws.com/photos/00042/medium.png", "ftp://x/y.jpg", "//www.inaturalist.org/photos/7",
    "http://example.org/ü.jpg", "", "not a url", "http://example.org/?", "http://h:bad/x"])
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=12)
_OWNERS = st.one_of(_TEXT, st.sampled_from(["<i>Procyon lotor</i>", "&copy; 1999 California Academy",
                                            "<b></b>", "Ann &amp; Bob", "José Ñ", "a,b", 'say "hi"']))
_IDS = st.one_of(st.integers(0, 40).map(str), _TEXT, st.sampled_from(["", "  7 ", "x.y", "ü"]))
_PAGES = st.one_of(st.sampled_from(["328598", "1", "", " 2 ", "46578889"]), _TEXT)


def _value(kind):
    base = {"content": _IDS, "page": _PAGES, "url": _URLS, "licence": _LICENCES, "owner": _OWNERS}[kind]
    return st.tuples(_WS, base, _WS).map(lambda t: t[0] + t[1] + t[2])


_KIND = {"content": "content", "medium": "content", "page": "page", "source": "url", "copy": "url",
         "license": "licence", "owner": "owner"}


def _kind_of(column):
    low = column.strip().lower()
    for word, kind in _KIND.items():
        if word in low:
            return kind
    return "owner"  # any other text


@st.composite
def manifests(draw):
    header = list(draw(st.sampled_from(_COLUMN_SETS)))
    if draw(st.booleans()):
        header = draw(st.permutations(header))
    delim = draw(st.sampled_from([",", "\t"]))
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        row = [draw(_value(_kind_of(c))) for c in header]
        shape = draw(st.integers(0, 20))
        if shape == 0:
            row = row[:draw(st.integers(0, len(row) - 1))]  # ragged: too few
        elif shape == 1:
            row = row + [draw(_TEXT)]  # ragged: too many
        rows.append(row)
    style = draw(st.sampled_from(["plain", "plain", "csv", "csv-lf", "minimal"]))
    if style == "plain":  # fields joined as they are: a delimiter or newline in a value makes it ragged
        text = "".join(delim.join(r) + "\n" for r in [header] + rows)
    else:
        buf = io.StringIO()
        quoting = csv.QUOTE_ALL if style == "csv" and draw(st.booleans()) else csv.QUOTE_MINIMAL
        w = csv.writer(buf, delimiter=delim, quoting=quoting, lineterminator="\r\n" if style == "csv" else "\n")
        w.writerow(header)
        w.writerows(rows)
        text = buf.getvalue()
    data = text.encode()
    for _ in range(draw(st.integers(0, 2))):  # damage: stray bytes, quotes, blank lines, no final newline
        at = draw(st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"\n", b"\n\n", b'"', b'"x"', b"\xff", b"\xc3", b"\r", b",", b"\t", b"\x00"]))
        data = data[:at] + junk + data[at:]
    if draw(st.booleans()):
        data = data.rstrip(b"\n")
    return data




_OPTIONS = st.builds(Options, batch_rows=st.sampled_from([1, 2, 3, 7, 100_000]), keep_unknown_license=st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(manifests(), _OPTIONS, st.sampled_from([16, 64, 1 << 24]), st.booleans())
def test_column_wise_manifest_equals_the_row_loop(tmp_path_factory, data, options, block, gz):
    path = tmp_path_factory.mktemp("m") / ("media.csv.gz" if gz else "media.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    saved = eol._BLOCK
    eol._BLOCK = block  # small blocks: lines cross block ends, blocks hold only bad rows
    try:
        assert_same_batches(path, options)
    finally:
        eol._BLOCK = saved


@pytest.mark.parametrize("delim", [",", "\t"])
@pytest.mark.parametrize("batch_rows", [1, 7, 100_000])
def test_column_wise_manifest_on_the_real_media_rows(tmp_path, delim, batch_rows):
    """The real page export's media as a manifest without quotes (the pyarrow path), with bad rows."""
    store = json.loads(STORE.read_text())
    lines = [delim.join(_COLUMN_SETS[0])]
    for i, m in enumerate(store["media"]):
        lines.append(delim.join([m["guid"], str(store["id"] + i % 3), m["source_url"], m["base_url"] + "_orig.jpg",
                                 m["license"]["name"] if i % 11 else "odd", m["owner"].replace(delim, " ")]))
        if i % 17 == 0:
            lines.append(f"broken{delim}row")
        if i % 23 == 0:
            lines.append("")
    path = tmp_path / "media.csv"
    path.write_text("\n".join(lines) + "\n")
    assert '"' not in path.read_text() and "\r" not in path.read_text()
    assert_same_batches(path, Options(batch_rows=batch_rows))
    records, rejects, reasons = ingest(CONNECTOR, str(path), Options())
    # 6 'broken' rows, 5 blank lines, and the row whose source URL has a comma (CSV only)
    assert reasons["malformed_row"] == 6 + 5 + (delim == ",") and reasons["unknown_license"] >= 1
    assert records.num_rows + rejects.num_rows == len(lines) - 1


def test_a_page_id_eol_does_not_know_is_a_reject_and_the_others_are_read(loopback, clock, tmp_path):
    """QA: one unknown page id (404) failed the whole ingest, on every rerun, saying 'check the network'."""
    from pipeline.execute import run_ingest
    from pipeline.io import read_dataset
    from pipeline.runners import make_runner

    body = json.dumps(_api_doc_with_media()).encode()
    server = loopback(lambda req: Reply(200, body) if req.path == "/pages/1.0/46578889.json"
                      else Reply(404, b'{"error": "Page not found"}'))
    conn = EOLConnector(sleep=clock.sleep, clock=clock)
    opts = Options(page_ids=[46578889, 999999999], api_base_url=server.url, rate=100)
    result = run_ingest(conn, opts, None, tmp_path, make_runner("local", 1, progress=False), "pages")
    assert result.stats["in"] == 7 and result.stats["out"] == 5
    assert result.stats["rejected_by_reason"] == {"no_image": 1, "not_still_image": 1}
    missing = [r for r in read_dataset(tmp_path / "rejects").to_pylist() if r["reason"] == "no_image"]
    assert len(missing) == 1 and missing[0]["detail"].startswith(
        f"EOL has no page 999999999 (GET {server.url}pages/1.0/999999999.json: HTTP 404); check the id in "
        "[sources.eol] page_ids")
    assert sum(r.path.endswith("999999999.json") for r in server.seen) == 1  # a 404 is not retried


def test_a_pages_answer_that_is_not_json_is_retried_then_a_clear_error(loopback, clock):
    from sources.http import HttpError

    body = json.dumps(_api_doc_with_media()).encode()
    replies = [Reply(200, b'{"taxonConcept": {"identifier": 46578889,'), Reply(200, body)]
    server = loopback(lambda req: replies.pop(0) if replies else Reply(200, b"<html>Bad Gateway</html>",
                                                                         {"Content-Type": "text/html"}))
    conn = EOLConnector(sleep=clock.sleep, clock=clock)
    opts = Options(page_ids=[46578889], api_base_url=server.url, rate=100)
    records, _, _ = ingest(conn, "page:46578889", opts)
    assert records.num_rows == 5
    with pytest.raises(HttpError, match=rf"GET {server.url}pages/1.0/46578889.json: the answer is not JSON "
                                        r"\(text/html, 24 bytes: '<html>Bad Gateway</html>'"):
        ingest(conn, "page:46578889", opts)
