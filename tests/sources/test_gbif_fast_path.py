"""The DwC-A fast path: chunked inflate + parse, the sorted-key join, its spill mode, column-wise records."""

import collections
import json
import zipfile

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sources.gbif as gbif
from schemas.record import extra_json
from sources import dwca
from sources.dwca import DwcaError, open_archive, parse_line, read_file
from sources.gbif import CONNECTOR, Options
from tests.sources.conftest import DATA
from tests.sources.test_dwca import _edit_lines, rewrite
from tests.sources.test_gbif import ingest

SAMPLE = DATA / "gbif/dwca/0000066-140928181241064.zip"
COLUMNS = ["gbifID", "scientificName", "decimalLatitude", "license", "rights", "genus"]


def _oracle(member: str, columns: list[str]) -> list[list[str]]:
    """The wanted fields of every data line, cut with str.split: what the fast path must return."""
    a = open_archive(SAMPLE)
    spec = a.core if a.core.location == member else next(e for e in a.extensions if e.location == member)
    idx = [spec.id_index, *[spec.column(c).index for c in columns]]
    lines = zipfile.ZipFile(SAMPLE).read(member).decode().split("\n")[spec.ignore_header_lines:]
    return [[parse_line(line)[i] for i in idx] for line in lines if line]


@pytest.mark.parametrize("block_bytes", [1 << 12, 1 << 16, 16 << 20])
def test_chunked_reader_matches_a_plain_split(block_bytes):
    a = open_archive(SAMPLE)
    got = [list(r.values()) for b in read_file(a, a.core, COLUMNS, batch_rows=97, block_bytes=block_bytes)
           for r in b.table.to_pylist()]
    assert got == _oracle("occurrence.txt", COLUMNS)


def test_line_chunks_are_whole_lines_and_add_up_to_the_member():
    src = dwca._Source(SAMPLE)
    try:
        chunks = list(dwca._line_chunks(src, "occurrence.txt", 1 << 12))
    finally:
        src.close()
    assert len(chunks) > 50 and all(bytes(c).endswith(b"\n") for c in chunks)
    assert b"".join(chunks) == zipfile.ZipFile(SAMPLE).read("occurrence.txt")


def test_stored_member_with_a_wrong_crc_is_an_error(tmp_path):
    data = zipfile.ZipFile(SAMPLE).read("occurrence.txt")
    with zipfile.ZipFile(SAMPLE) as zin, zipfile.ZipFile(tmp_path / "x.zip", "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    raw = bytearray((tmp_path / "x.zip").read_bytes())
    at = raw.index(data[5000:5100])
    raw[at + 10] = ord("Q") if raw[at + 10] != ord("Q") else ord("R")  # same length, different bytes
    (tmp_path / "x.zip").write_bytes(bytes(raw))
    a = open_archive(tmp_path / "x.zip")
    with pytest.raises(DwcaError, match="occurrence.txt: corrupt"):
        list(read_file(a, a.core, ["gbifID"]))


def test_ragged_and_undecodable_rows_in_one_chunk_are_each_reported_once(tmp_path):
    def damage(lines):
        lines[5] = lines[5] + b"\textra"
        f = lines[7].split(b"\t")
        f[99] = b"\xffbad"
        lines[7] = b"\t".join(f)

    a = open_archive(rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": _edit_lines(damage)}))
    tables, bad = [], []
    for b in read_file(a, a.core, ["gbifID", "genus"]):
        tables.append(b.table)
        bad.extend(b.bad)
    assert sum(t.num_rows for t in tables) == 468
    assert sorted(b.reason for b in bad) == ["malformed_row", "undecodable_text"]
    ragged = next(b for b in bad if b.reason == "malformed_row")
    assert "(line 6)" in ragged.detail  # line 6 of the file: the header is line 1


def _naive_join(occ_ids, media_ids):
    """LEFT JOIN on equal ids; a blank id (empty or whitespace) names nothing and joins nothing."""
    by = collections.defaultdict(list)
    for j, m in enumerate(media_ids):
        if m.strip():
            by[m].append(j)
    return [(i, j) for i, o in enumerate(occ_ids) for j in (by.get(o) or [None])]


def _tables(occ_ids, media_ids):
    occ = pa.table({"o__id": pa.array(occ_ids, pa.string()), "o_row": pa.array(range(len(occ_ids)), pa.int64())})
    media = pa.table({"m__id": pa.array(media_ids, pa.string()), "m_row": pa.array(range(len(media_ids)), pa.int64())})
    return occ, media


IDS = st.one_of(st.integers(0, 30).map(str), st.sampled_from(["a", "b", "x-1", "", " ", "\t"]))


@settings(max_examples=60)
@given(st.lists(IDS, max_size=30), st.lists(IDS, max_size=30), st.booleans())
def test_join_is_a_left_join_in_file_order(occ_ids, media_ids, collide):
    occ, media = _tables(occ_ids, media_ids)
    original = gbif.join_keys, gbif._canonical_integers
    if collide:  # every id hashed onto one key: only the id comparison can tell them apart
        gbif.join_keys = lambda ids: np.zeros(len(ids), np.uint64)
        gbif._canonical_integers = lambda ids: False
    try:
        index = gbif._MediaIndex(media)
        out = index.join(occ)
    finally:
        gbif.join_keys, gbif._canonical_integers = original
    got = list(zip(out.column("o_row").to_pylist(), out.column("m_row").to_pylist(), strict=True))
    assert got == _naive_join(occ_ids, media_ids)
    claimed = {j for _, j in got if j is not None}
    assert [bool(x) for x in index.seen] == [j in claimed for j in range(len(media_ids))]


def test_keys_depend_on_the_id_alone():
    mixed = gbif.join_keys(pa.array(["12", "0012", "abc", "7"]))
    ints = gbif.join_keys(pa.array(["7", "12"]))
    assert len(set(mixed.tolist())) == 4  # "0012" is not "12": it is hashed, apart from the integers
    assert mixed[0] == ints[1] and mixed[3] == ints[0]  # the same id, the same key, whatever its company


_IDS = st.one_of(st.integers(0, 10**20).map(str), st.text("0123456789", max_size=20),
                 st.text(st.sampled_from(list("0123456789 -+x\u0663\uff11\t")), max_size=6), st.text(max_size=5))


@given(st.lists(st.one_of(st.none(), _IDS), max_size=40))
def test_canonical_ids_are_what_the_regex_says(ids):
    import re

    arr = pa.array(ids, pa.string())
    expected = [v is not None and re.fullmatch(r"(0|[1-9][0-9]{0,17})", v, re.ASCII) is not None for v in ids]
    assert gbif._canonical(arr).to_pylist() == expected
    assert gbif._canonical_integers(arr) == all(expected)


def _summary(records, rejects):
    return (sorted(records.column("record_id").to_pylist()),
            sorted(zip(rejects.column("record_id").to_pylist(), rejects.column("reason").to_pylist(), strict=True)))


# budgets (MiB) for the sample's ~38 KB of media in 4 partitions of 8-12 KB, less the key filter
# (an eighth of the budget, 1 KiB at least): none of them held (all spilled), then one, two and
# three held and joined while the core is read (a hybrid join)
@pytest.mark.parametrize(("budget_mb", "held"), [(0.001, 0), (0.01, 1), (0.02, 2), (0.035, 3)])
def test_spilled_join_gives_the_same_records_and_rejects(tmp_path, monkeypatch, budget_mb, held):
    def media(lines):  # an orphan and a second image for an occurrence, so both sides matter
        lines.insert(-1, b"999999999\tStillImage\timage/jpeg\thttp://example.org/orphan.jpg" + b"\t" * 11)
        lines.insert(-1, lines[1].replace(b".jpg", b"-2.jpg"))

    z = rewrite(SAMPLE, tmp_path / "x.zip", {"multimedia.txt": _edit_lines(media)})
    r1, j1, reasons1 = ingest(CONNECTOR, str(z), Options())
    chosen = []
    fitting = gbif._Spill.fitting
    monkeypatch.setattr(gbif._Spill, "fitting", lambda self, side, budget: chosen.append(
        fitting(self, side, budget)) or chosen[-1])
    r2, j2, reasons2 = ingest(CONNECTOR, str(z), Options(join_memory_mb=budget_mb, join_partitions=4, batch_rows=50))
    assert [len(c) for c in chosen] == [held]
    assert reasons1 == reasons2 and reasons1["orphan_media"] == 1
    assert _summary(r1, j1) == _summary(r2, j2)
    assert r1.num_rows == 211
    key = "record_id"
    assert sorted(r1.to_pylist(), key=lambda r: r[key]) == sorted(r2.to_pylist(), key=lambda r: r[key])


def test_core_rows_without_media_are_not_spilled(tmp_path, monkeypatch):
    """Past the budget, the media's key filter keeps the core rows that have no media out of the
    spill: they are joined (to nothing) as the core is read. Every row with media is spilled."""
    spilled: list[str] = []
    add = gbif._Spill.add

    def counting(self, side, t, keep=frozenset()):
        kept = add(self, side, t, keep)
        if side == "o":
            back = set() if kept is None else set(kept.column("o__id").to_pylist())
            spilled.extend(i for i in t.column("o__id").to_pylist() if i not in back)
        return kept

    monkeypatch.setattr(gbif._Spill, "add", counting)
    r1, j1, reasons1 = ingest(CONNECTOR, str(SAMPLE), Options())
    r2, j2, reasons2 = ingest(CONNECTOR, str(SAMPLE), Options(join_memory_mb=0.001, join_partitions=4, batch_rows=50))
    assert _summary(r1, j1) == _summary(r2, j2)
    archive = dwca.open_archive(SAMPLE)
    with zipfile.ZipFile(SAMPLE) as z:
        lines = z.read("multimedia.txt").decode().splitlines()[archive.extension("Multimedia").ignore_header_lines:]
        core = z.read("occurrence.txt").decode().splitlines()[archive.core.ignore_header_lines:]
    with_media = {line.split("\t")[0] for line in lines}
    assert with_media <= set(spilled)  # none missed (that would lose its images)
    assert len(spilled) < len(with_media) + (len(core) - len(with_media)) // 2  # most without media kept out


@settings(max_examples=50)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=300), st.lists(st.integers(0, 2**64 - 1), max_size=300),
       st.integers(0, 1 << 16))
def test_key_filter_never_misses_a_key_it_was_given(added, others, nbytes):
    f = gbif._KeyFilter(nbytes)
    assert len(f.slots) <= max(nbytes, 1024)
    f.add(np.array(added, np.uint64))
    assert f.may_contain(np.array(added, np.uint64)).all()
    hits = f.may_contain(np.array(others, np.uint64))
    assert hits.dtype == bool and len(hits) == len(others)


def test_key_filter_tells_most_absent_keys_apart():
    f = gbif._KeyFilter(1 << 20)
    f.add(np.arange(1, 100_001, dtype=np.uint64) | np.uint64(1 << 63))  # gbifIDs as join keys
    absent = np.arange(200_001, 300_001, dtype=np.uint64) | np.uint64(1 << 63)
    assert f.may_contain(absent).mean() < 0.05  # two probes, ~10 slots a key: ~3% false positives


def test_spill_partitions_grow_with_the_multimedia():
    mib = 2**20
    assert gbif.spill_partitions(0, 256 * mib) == gbif.MIN_PARTITIONS
    assert gbif.spill_partitions(263 * mib, 256 * mib) == gbif.MIN_PARTITIONS  # 4M occurrences' media
    assert gbif.spill_partitions(527 * mib, 256 * mib) == 17  # 8M occurrences' media: ~31 MiB of text each
    assert gbif.spill_partitions(1054 * mib, 256 * mib) == 33  # 16M: as much each
    assert gbif.spill_partitions(10 * 1024 * mib, 256 * mib) == 320  # each 32 MiB of text
    assert gbif.spill_partitions(10**15, 256 * mib) == gbif.MAX_PARTITIONS
    assert gbif.spill_partitions(10 * 1024 * mib, 256 * mib, configured=4) == 4


def test_automatic_spill_partitions_follow_the_media_size(tmp_path, monkeypatch):
    """Without ``join_partitions``, the spill cuts the sample's media into as many partitions as
    its size over an eighth of the budget asks for, and the records are the in-memory join's."""
    r1, j1, reasons1 = ingest(CONNECTOR, str(SAMPLE), Options())
    made = []
    init = gbif._Spill.__init__
    monkeypatch.setattr(gbif._Spill, "__init__", lambda self, folder, parts, **kw: made.append(parts) or init(self, folder, parts, **kw))
    budget_mb = 0.001
    r2, j2, reasons2 = ingest(CONNECTOR, str(SAMPLE), Options(join_memory_mb=budget_mb, batch_rows=50))
    archive = dwca.open_archive(SAMPLE)
    media_bytes = archive.file_bytes(archive.extension("Multimedia"))
    assert media_bytes == 29_723  # the sample's multimedia.txt, as the zip's directory gives it
    assert made == [gbif.spill_partitions(media_bytes, int(budget_mb * 2**20))] and made[0] > gbif.MIN_PARTITIONS
    assert reasons1 == reasons2
    assert _summary(r1, j1) == _summary(r2, j2)


def test_records_match_the_row_by_row_definitions():
    records, _, _ = ingest(CONNECTOR, str(SAMPLE), Options())
    from schemas import make_record_id
    from sources.photokey import photo_key

    for r in records.to_pylist():
        assert r["record_id"] == make_record_id("gbif", r["media_id"])
        assert r["photo_key"] == photo_key(r["identifier"])
        assert r["extra"] is None or json.loads(r["extra"])


VALUE = st.one_of(st.none(), st.just(""), st.text(max_size=8),
                  st.sampled_from(['a"b', "c\\d", "tab\there", "nl\nx", "\x01", "é ü", "\u2028"]))


@given(st.lists(st.tuples(VALUE, VALUE, VALUE), min_size=1, max_size=6))
def test_extras_are_extra_json_of_each_row(rows):
    names = ["zeta", "alpha", "media_title"]
    cols = {n: pa.array([r[i] or None for r in rows], pa.string()) for i, n in enumerate(names)}
    want = [extra_json({n: r[i] for i, n in enumerate(names)}) for r in rows]
    assert gbif._extras(cols).to_pylist() == want
    # sliced columns (the adapter's are): offsets not at 0, other bytes around the values
    sliced = {n: pa.array(['"\x02\\', *[r[i] or None for r in rows], "\x03"], pa.string()).slice(1, len(rows))
              for i, n in enumerate(names)}
    assert gbif._extras(sliced).to_pylist() == want


@given(st.lists(st.tuples(VALUE, VALUE, VALUE), min_size=1, max_size=6))
def test_join_present_skips_nulls_and_keeps_all_null_rows(rows):
    parts = [pa.array([r[i] for r in rows], pa.string()) for i in range(3)]
    want = ["|".join(v for v in r if v is not None) if any(v is not None for v in r) else None for r in rows]
    assert gbif._join_present(parts, "|").to_pylist() == want


def test_read_ahead_keeps_order_and_raises_where_the_producer_failed():
    def items():
        yield from range(5)
        raise ValueError("broken at 5")

    got = []
    with pytest.raises(ValueError, match="broken at 5"):
        for x in dwca.read_ahead(items(), 2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_closing_read_ahead_early_stops_and_closes_the_producer():
    import threading

    closed = threading.Event()

    def items():
        try:
            yield from range(10**9)
        finally:
            closed.set()

    ahead = dwca.read_ahead(items(), 1, name="test-read-ahead")
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert closed.is_set()
    assert not any(t.name == "test-read-ahead" for t in threading.enumerate())


@given(st.lists(st.text(max_size=40), min_size=1, max_size=20), st.integers(0, 5), st.sampled_from(["gbif", "x"]))
def test_record_ids_are_make_record_id_of_each_key(keys, skip, source):
    from schemas import make_record_id
    from schemas.record import record_id_column

    arr = pa.array(["skipped"] * skip + keys, pa.string()).slice(skip)  # a sliced array: offsets not at 0
    assert record_id_column(source, arr).to_pylist() == [make_record_id(source, k) for k in keys]
    chunked = pa.chunked_array([arr.slice(0, len(keys) // 2), arr.slice(len(keys) // 2)])
    assert record_id_column(source, chunked).to_pylist() == [make_record_id(source, k) for k in keys]


@settings(max_examples=30)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=40), st.sampled_from([16, 64, 200]))
def test_recycled_line_chunks_add_up_to_the_member(tmp_path_factory, lengths, chunk_bytes):
    import queue

    folder = tmp_path_factory.mktemp("member")
    data = b"".join(bytes([97 + i % 26]) * n + b"\n" for i, n in enumerate(lengths))
    (folder / "m.txt").write_bytes(data)
    src = dwca._Source(folder)
    free: queue.SimpleQueue = queue.SimpleQueue()
    got = []
    for chunk in dwca._line_chunks(src, "m.txt", chunk_bytes, free):
        text = bytes(chunk)
        longest = max(len(line) + 1 for line in text.split(b"\n")[:-1])
        assert text.endswith(b"\n") and len(text) <= max(chunk_bytes, longest + chunk_bytes)
        got.append(text)
        free.put(chunk.obj)  # what the chunked reader does once a chunk is parsed
    assert b"".join(got) == data


def test_map_ahead_keeps_the_order_and_raises():
    import time

    def slow_first(x):
        time.sleep(0.02 if x % 3 == 0 else 0)
        if x == 7:
            raise ValueError("seven")
        return x * 10

    assert list(gbif.map_ahead(slow_first, iter(range(7)), 2)) == [x * 10 for x in range(7)]
    got = []
    with pytest.raises(ValueError, match="seven"):
        for y in gbif.map_ahead(slow_first, iter(range(10)), 3):
            got.append(y)
    assert got == [x * 10 for x in range(7)]


BLANKISH = st.one_of(st.none(), st.just(""), st.text(max_size=6),
                     st.sampled_from([" ", " a", "b ", "\t", "x\ny", "\u00a0z", "é", "a b", "\x7f", "\u3000"]))


@given(st.lists(BLANKISH, min_size=1, max_size=12), st.integers(0, 3))
def test_blank_to_null_is_trim_then_empty_to_null(values, skip):
    import pyarrow.compute as pc

    arr = pa.array(["  skipped "] * skip + values, pa.string()).slice(skip)  # offsets not at 0
    trimmed = pc.utf8_trim_whitespace(arr)
    want = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    got = gbif._blank_to_null(arr)
    assert got.to_pylist() == want.to_pylist()
    assert got.null_count == want.null_count
    assert pc.equal(got, want).to_pylist() == pc.equal(want, want).to_pylist()


def test_extras_of_all_null_columns_are_null():
    cols = {"a": pa.nulls(3, pa.string()), "b": pa.array([None, "x", None], pa.string())}
    assert gbif._extras(cols).to_pylist() == [None, '{"b": "x"}', None]
    assert gbif._extras({"a": pa.nulls(2, pa.string())}).to_pylist() == [None, None]


RANK = st.one_of(st.none(), st.sampled_from(["Animalia", "Plantae", "Apis", "Bombus", "x|y", "é"]))


@settings(max_examples=40)
@given(st.lists(st.tuples(RANK, RANK, RANK), min_size=1, max_size=300))
def test_lineage_per_distinct_combination_is_join_present_of_each_row(rows):
    ranks = ("kingdom", "phylum", "class", "order", "family", "genus")
    cols = {f"o_{r}": pa.array([row[i % 3] for row in rows], pa.string()) for i, r in enumerate(ranks)}
    t = pa.table(cols)
    want = gbif._join_present([cols[f"o_{r}"] for r in ranks], "|")
    assert gbif._lineage(t).to_pylist() == want.to_pylist()


def test_distinct_rows_renumbers_before_the_key_overflows():
    n = 5000
    parts = [pa.array([f"v{(i // 2) % 2500}-{j}" for i in range(n)], pa.string()) for j in range(6)]
    first, inverse = gbif._distinct_rows(parts)
    assert len(first) == 2500
    joined = [gbif._join_present([p.take(first) for p in parts], "|").take(inverse).to_pylist()]
    assert joined[0] == gbif._join_present(parts, "|").to_pylist()


MEDIA_TYPE = st.one_of(st.none(), st.sampled_from(["", " ", "StillImage", "image", "Sound", "MovingImage", " stillimage "]))
MEDIA_FORMAT = st.one_of(st.none(), st.sampled_from(["", "image/jpeg", "IMAGE/png", "audio/mp3", "text/html"]))
MEDIA_URL = st.one_of(st.none(), st.sampled_from(["", " ", "http://x.org/a.jpg", "http://x.org/a.JPEG?s=1",
                                                   "http://x.org/page", "http://x.org/a.png.html", "x.tif"]))


@settings(max_examples=60)
@given(st.lists(st.tuples(MEDIA_TYPE, MEDIA_FORMAT, MEDIA_URL), min_size=1, max_size=20))
def test_still_image_test_is_type_else_format_or_url(rows):
    import re

    def blank(v):
        return v.strip() or None if v is not None else None

    def still(mtype, mformat, url):
        mtype, mformat, url = blank(mtype), blank(mformat), blank(url)
        if mtype is not None:
            return mtype.lower() in ("stillimage", "image")
        return mformat is not None and url is not None and (
            mformat.lower().startswith("image/") or bool(re.search(r"\.(jpe?g|png|gif|tiff?|webp|bmp)(\?|$)", url.lower())))

    n = len(rows)
    t = pa.table({"o__id": pa.array([str(i) for i in range(n)]), "o_license": pa.array(["CC0"] * n),
                  "m_type": pa.array([r[0] for r in rows], pa.string()),
                  "m_format": pa.array([r[1] for r in rows], pa.string()),
                  "m_identifier": pa.array([r[2] for r in rows], pa.string()),
                  "m_row": pa.array(range(n), pa.int64())})
    out = gbif.adapt(t, Options(keep_unknown_license=True))
    reasons = dict(zip(out.rejects.column("record_id").to_pylist(), out.rejects.column("reason").to_pylist(), strict=True))
    ids = gbif.record_id_column(gbif.SOURCE, pa.array([f"{i}/{r[2].strip() if r[2] and r[2].strip() else None}" for i, r in enumerate(rows)]))
    for i, (rid, r) in enumerate(zip(ids.to_pylist(), rows, strict=True)):
        if blank(r[2]) is None:
            continue  # no image: rejected before the still-image test
        assert (reasons.get(rid) == "not_still_image") == (not still(*r)), (i, r)


def test_a_line_longer_than_a_parse_block_is_read(tmp_path):
    long_value = b"y" * (3 * dwca.PARSE_BLOCK_BYTES)

    def damage(lines):
        f = lines[3].split(b"\t")
        f[173] = long_value  # scientificName
        lines[3] = b"\t".join(f)
        lines[9] = lines[9] + b"\textra"  # a ragged row too: reported once, not once per parse

    a = open_archive(rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": _edit_lines(damage)}))
    rows, bad = [], []
    for b in read_file(a, a.core, ["gbifID", "scientificName"]):
        rows.extend(b.table.column("scientificName").to_pylist())
        bad.extend(b.bad)
    assert len(rows) == 469 and rows.count(long_value.decode()) == 1
    assert [b.reason for b in bad] == ["malformed_row"] and "(line 10)" in bad[0].detail


JOINED_ROW = st.fixed_dictionaries({
    "o__id": st.sampled_from(["1", "22", " 3 ", "", None]),
    "o_basisOfRecord": st.sampled_from(["HUMAN_OBSERVATION", "MATERIAL_CITATION", " ", None]),
    "o_decimalLatitude": st.sampled_from(["12.5", "-91", "abc", "", None]),
    "o_decimalLongitude": st.sampled_from(["12.5", "181", "", None]),
    "o_license": st.sampled_from(["CC_BY_4_0", "", None, "weird"]),
    "m_type": st.sampled_from(["StillImage", "Sound", "", None]),
    "m_format": st.sampled_from(["image/jpeg", "audio/mp3", None]),
    "m_identifier": st.sampled_from(["http://x.org/a.jpg", "http://x.org/page", "", " ", None]),
    "o_recordedBy": st.sampled_from(['a "q"', "\x01ctl", None]),
    "m_row": st.sampled_from([1, None]),
})


@settings(max_examples=60)
@given(st.lists(JOINED_ROW, min_size=1, max_size=25), st.booleans())
def test_rows_without_a_url_are_rejected_as_every_test_would(rows, keep_unknown):
    t = pa.Table.from_pylist(rows, schema=pa.schema(
        [(k, pa.int64() if k == "m_row" else pa.string()) for k in rows[0]]))
    options = Options(keep_unknown_license=keep_unknown)
    got = gbif.adapt(t, options)
    want, _ = gbif._adapt_rows(gbif._Rows.of(t), options)
    assert got.rejects.equals(want.rejects)
    assert got.records.num_rows == want.records.num_rows
    if want.records.num_rows:
        assert got.records.equals(want.records)
    assert got.records.num_rows + got.rejects.num_rows == len(rows)


def test_prefetch_starts_at_once_and_close_stops_the_producer():
    import threading

    started, closed = threading.Event(), threading.Event()

    def items():
        started.set()
        try:
            yield from range(10**9)
        finally:
            closed.set()

    ahead = dwca.Prefetch(items(), 1, name="test-prefetch")
    assert started.wait(5)  # before any item is asked for
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert closed.is_set() and not any(t.name == "test-prefetch" for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(ahead)


def test_prefetch_raises_the_producers_error_after_its_items():
    def items():
        yield 1
        raise DwcaError("broken core")

    ahead = dwca.Prefetch(items(), 1)
    assert next(ahead) == 1
    with pytest.raises(DwcaError, match="broken core"):
        next(ahead)
