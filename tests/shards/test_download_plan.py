"""The download plan built column-wise equals the former row-by-row plan on any input.

``reference_plan`` is the former code (a dict per input row, ``sorted`` on (split, key, url), a
Counter for repeated keys), kept here as the reference; ``DownloadPlan`` must give the same
shards with the same items, in the same order, for keys, URLs and splits of any text (odd
characters, blanks, nulls, whitespace that only ``str.strip`` knows), repeated keys across splits,
and typed (non-text) key columns.
"""

from __future__ import annotations

import collections
import json
import re

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stages.download import TEXT_MEMBERS, DownloadPlan, Options, _jsonable, keys_digest
from schemas.record import make_record_id
from shards.writer import shard_name


def _safe_key(raw) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(raw)) or "_"


def reference_plan(table: pa.Table, options: Options) -> list[tuple[str, list[dict]]]:
    names = set(table.column_names)
    url_col, key_col = ("identifier", "record_id") if "identifier" in names else (options.url_column, options.key_column)
    text_columns = {c: t for c, t in TEXT_MEMBERS.items() if c in names} if options.text_members else {}
    rows = []
    for row in table.to_pylist():
        url = row.get(url_col)
        url = str(url).strip() if url is not None else ""
        raw_key = row.get(key_col)
        key = _safe_key(raw_key) if raw_key not in (None, "") else make_record_id("url", url)
        split = row.get("split")
        split = _safe_key(split) if split not in (None, "") else options.default_split
        caption, cls = row.get(options.caption_column), row.get(options.cls_column)
        record = {k: _jsonable(v) for k, v in row.items() if v is not None and k != "split"}
        rows.append({"key": key, "url": url, "split": split, "caption": None if caption is None else str(caption),
                     "cls": None if cls is None else int(cls),
                     "texts": {t: str(row[c]) for c, t in text_columns.items() if row.get(c) is not None},
                     "record": json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)})
    ordered = sorted(rows, key=lambda r: (r["split"], r["key"], r["url"]))
    seen: collections.Counter[str] = collections.Counter()
    by_split: dict[str, list[dict]] = collections.defaultdict(list)
    for row in ordered:
        base = row["key"]
        seen[base] += 1
        item = dict(row, dup=seen[base] > 1)
        if item["dup"]:
            item["key"] = f"{base}-dup{seen[base] - 1}"
        by_split[row["split"]].append(item)
    shards = []
    for split in sorted(by_split):
        items = by_split[split]
        for n, start in enumerate(range(0, len(items), options.shard_size)):
            name = shard_name(split, n)
            shards.append((name, [dict(item, shard=name) for item in items[start:start + options.shard_size]]))
    return shards


def _ours(table: pa.Table, options: Options) -> list[tuple[str, list[dict]]]:
    return [(s.name, s.items) for s in DownloadPlan(table, "input", options).shards]


# text with what a key, URL or split can hold: dot-free words, dots and slashes, unicode, the
# whitespace str.strip() removes (\x1c, \x85, \u3000 ...), blanks
_CHARS = st.sampled_from(list("ab_-.:/ \t") + ["\x1c", "\x85", "\xa0", "\u3000", "é", "🦉", "\u2028"])
TEXT = st.one_of(st.none(), st.just(""), st.text(_CHARS, max_size=6))
SPLITS = st.one_of(st.none(), st.just(""), st.sampled_from(["train", "val", "te st", "x.y"]))


@st.composite
def url_lists(draw):
    n = draw(st.integers(0, 14))
    keys = draw(st.lists(st.one_of(TEXT, st.sampled_from(["a", "b", "a-dup1"])), min_size=n, max_size=n))
    urls = draw(st.lists(st.one_of(TEXT, st.sampled_from(["http://h/1", " http://h/1 "])), min_size=n, max_size=n))
    columns = {"url": pa.array(urls, pa.string()), "key": pa.array(keys, pa.string())}
    if draw(st.booleans()):
        columns["split"] = pa.array(draw(st.lists(SPLITS, min_size=n, max_size=n)), pa.string())
    if draw(st.booleans()):
        columns["caption"] = pa.array(draw(st.lists(TEXT, min_size=n, max_size=n)), pa.string())
    table = pa.table(columns)
    if draw(st.booleans()) and n:  # curate's chunks: dictionary columns, several record batches
        table = pa.concat_tables([table.slice(0, n // 2), table.slice(n // 2)])
        i = table.column_names.index("url")
        table = table.set_column(i, "url", pa.chunked_array([c.dictionary_encode() for c in table.column("url").chunks],
                                                            pa.dictionary(pa.int32(), pa.string())))
    return table


@settings(max_examples=150, deadline=None)
@given(url_lists(), st.integers(1, 4), st.booleans())
def test_plan_equals_the_row_by_row_reference(table, shard_size, text_members):
    options = Options(shard_size=shard_size, text_members=text_members)
    assert _ours(table, options) == reference_plan(table, options)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-5, 5)), max_size=10), st.lists(TEXT, min_size=10, max_size=10))
def test_typed_key_columns_become_text_as_str_gives_them(keys, urls):
    table = pa.table({"url": pa.array(urls[:len(keys)], pa.string()), "key": pa.array(keys, pa.int64())})
    assert _ours(table, Options(shard_size=3)) == reference_plan(table, Options(shard_size=3))


def test_curated_records_keep_their_text_types_and_record(tmp_path):
    table = pa.table({
        "record_id": ["r2", "r1", "r1"], "identifier": ["http://h/2", " http://h/1", "http://h/1b"],
        "split": ["val", "train", "train"], "caption": ["c2", "c1", "c1b"], "cls": [1, 0, 0],
        "caption_sci": ["a photo of B b.", "a photo of A a.", None], "common_name": ["bee", None, "ant"],
        "nothing": pa.nulls(3, pa.string())})
    options = Options(shard_size=2)
    ours = _ours(table, options)
    assert ours == reference_plan(table, options)
    assert [(name, [i["key"] for i in items]) for name, items in ours] == [
        ("train-000000", ["r1", "r1-dup1"]), ("val-000000", ["r2"])]
    assert ours[0][1][0]["texts"] == {"sci": "a photo of A a."} and ours[0][1][0]["url"] == "http://h/1"


@pytest.mark.parametrize("shard_size", [1, 2, 1000])
def test_an_empty_input_plans_no_shard(shard_size):
    table = pa.table({"url": pa.array([], pa.string())})
    assert _ours(table, Options(shard_size=shard_size)) == reference_plan(table, Options(shard_size=shard_size)) == []


@pytest.mark.parametrize("hosts", [1, 3])
def test_the_scheduler_reads_items_as_work_finishes_not_all_at_once(hosts):
    """One busy host must not pull the whole input into the deferred queues: items are read
    only while fewer than _DEFERRED_PER_SLOT * max_in_flight wait, and every item still runs."""
    import asyncio
    from types import SimpleNamespace

    from pipeline.stages.download import _DEFERRED_PER_SLOT, _schedule
    from shards.fetch import HostLimit

    options = Options(max_in_flight=4)
    fetcher = SimpleNamespace(opts=SimpleNamespace(hosts={}, default_host=HostLimit(concurrency=1)))
    n, pulled, done, ahead = 2_000, [0], [], [0]

    async def items():
        for i in range(n):
            pulled[0] += 1
            ahead[0] = max(ahead[0], pulled[0] - len(done))
            yield {"url": f"http://h{i % hosts}.example/{i}", "i": i}

    async def handle(item):
        await asyncio.sleep(0)
        done.append(item["i"])

    asyncio.run(_schedule(items(), handle, options, fetcher))
    assert sorted(done) == list(range(n))
    # waiting deferred + running (2 per host) + the one being read
    assert ahead[0] <= _DEFERRED_PER_SLOT * options.max_in_flight + 2 * hosts + 1


def test_the_plan_file_gives_every_shard_the_items_of_the_local_plan(tmp_path):
    """Beam's workers build their shard's items from the plan file: the same items as the local
    runner's, for curated chunks with dictionary columns, text types, splits and repeated keys."""
    from pipeline.stages.download import read_plan_items

    n = 23
    captions = pa.array([f"a photo of Genus{i % 4} epithet." for i in range(n)]).dictionary_encode()
    table = pa.table({
        "record_id": [f"r{i % 19}" for i in range(n)], "identifier": [f"http://h{i % 3}/{i}.jpg" for i in range(n)],
        "split": pa.array(["train", "val", "test"] * 7 + ["train", "train"]).dictionary_encode(),
        "caption": captions, "caption_sci": captions, "cls": [i % 4 for i in range(n)],
        "common_name": [None if i % 5 else "oak" for i in range(n)], "decimal_latitude": [i / 7 for i in range(n)]})
    plan = DownloadPlan(table, "chunks", Options(shard_size=4))
    layout = plan.write(str(tmp_path / "_plan"))
    assert list(layout) == [s.name for s in plan.shards]
    assert {path for path, _ in layout.values()} == {str(tmp_path / "_plan" / "plan.parquet")}
    for shard in plan.shards:
        items = read_plan_items(layout[shard.name][0], shard.name, layout[shard.name][1],
                                plan.caption_col, plan.cls_col, plan.text_columns)
        assert items == shard.items
        only = frozenset(i["key"] for i in items[::2])
        assert [i["key"] for i in read_plan_items(layout[shard.name][0], shard.name, layout[shard.name][1],
                                                   plan.caption_col, plan.cls_col, plan.text_columns,
                                                   only)] == [i["key"] for i in items[::2]]
    assert sum(i["dup"] for s in plan.shards for i in s.items) == 4


def test_an_input_column_named_like_the_plans_own_is_a_clear_error():
    table = pa.table({"url": ["http://h/1"], "__key": ["x"]})
    with pytest.raises(ValueError, match="reserved for the download plan"):
        DownloadPlan(table, "urls.parquet", Options())


# ---------------------------------------------------------------- inputs planned in buckets


def _write_parts(table: pa.Table, folder, parts: int) -> str:
    """``table`` as a Parquet dataset of ``parts`` files (the input the bucketed plan streams)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // parts) if table.num_rows else 1
    for i in range(parts):
        pq.write_table(table.slice(i * step, step), folder / f"part-{i:03d}.parquet")
    return str(folder)


def _plan_of(path: str, options: Options, plan_dir) -> tuple[str, list[tuple[str, list[dict]]]]:
    from pipeline.stages.download import make_plan

    plan = make_plan(path, options, str(plan_dir))
    try:
        shards = [(s.name, s.items) for s in plan.shards]
        # every test of a plan also checks its layout record: each shard's digest is its keys'
        assert plan.digests() == {name: keys_digest([i["key"] for i in items]) for name, items in shards}
        return type(plan).__name__, shards
    finally:
        plan.close()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(_CHARS, max_size=6), min_size=1, max_size=30, unique=True),
       st.randoms(use_true_random=False), st.text(_CHARS, max_size=6))
def test_a_keys_digest_is_that_of_the_set_of_keys(keys, rng, other):
    shuffled = list(keys)
    rng.shuffle(shuffled)
    assert keys_digest(shuffled) == keys_digest(keys)
    assert keys_digest(keys).startswith(f"{len(keys)}-")
    if other not in keys:  # as many keys, one of them another: the sums tell
        assert keys_digest([*shuffled[1:], other]) != keys_digest(keys)


def _by_key(shards) -> dict[str, dict]:
    return {i["key"]: {k: v for k, v in i.items() if k != "shard"} for _, items in shards for i in items}


@settings(max_examples=60, deadline=None)
@given(url_lists(), st.integers(1, 4), st.integers(1, 5), st.integers(1, 3))
def test_a_bucketed_plan_gives_every_row_the_item_of_the_in_memory_plan(tmp_path_factory, table, shard_size,
                                                                        bucket_rows, parts):
    """Planned in buckets, every row still gets exactly the item (key, dup mark, record, texts)
    the in-memory plan gives it; shards are numbered on per split and hold at most shard_size."""
    tmp = tmp_path_factory.mktemp("bucketed")
    path = _write_parts(table, tmp / "in", parts)
    whole_kind, whole = _plan_of(path, Options(shard_size=shard_size), tmp / "_plan")
    kind, bucketed = _plan_of(path, Options(shard_size=shard_size, plan_bucket_rows=bucket_rows), tmp / "_plan")
    assert whole_kind == "DownloadPlan"
    assert kind == ("BucketedPlan" if table.num_rows > bucket_rows else "DownloadPlan")
    assert sum(len(items) for _, items in bucketed) == table.num_rows
    assert _by_key(bucketed) == _by_key(whole)
    assert all(0 < len(items) <= shard_size and {i["shard"] for i in items} == {name} for name, items in bucketed)
    names = collections.defaultdict(list)
    for name, items in bucketed:
        names[items[0]["split"]].append(name)
    assert {split: sorted(n) for split, n in names.items()} == {
        split: [shard_name(split, i) for i in range(len(n))] for split, n in names.items()}
    assert not (tmp / "_plan").exists()  # close() removes the plan files


def test_a_bucketed_plan_does_not_depend_on_the_input_order(tmp_path):
    n = 57
    rows = pa.table({"record_id": [f"r{i % 50}" for i in range(n)],
                     "identifier": [f"http://h{i % 4}.example/{i}.jpg" for i in range(n)],
                     "split": pa.array(["train", "val"] * 28 + ["test"]).dictionary_encode(),
                     "caption": pa.array([f"a photo of Genus{i % 6} sp." for i in range(n)]).dictionary_encode(),
                     "cls": [i % 6 for i in range(n)]})
    options = Options(shard_size=4, plan_bucket_rows=10)
    kind, first = _plan_of(_write_parts(rows, tmp_path / "a", 3), options, tmp_path / "_plan")
    shuffled = rows.take(pa.array([(i * 23) % n for i in range(n)]))
    _, second = _plan_of(_write_parts(shuffled, tmp_path / "b", 5), options, tmp_path / "_plan")
    assert kind == "BucketedPlan"
    assert first == second
    assert sum(i["dup"] for _, items in first for i in items) == n - 50
    assert max(len(items) for _, items in first) == 4


def test_a_bucketed_plan_needs_a_folder_for_its_files(tmp_path):
    from pipeline.stages.download import make_plan

    path = _write_parts(pa.table({"url": [f"http://h/{i}" for i in range(5)]}), tmp_path / "in", 2)
    with pytest.raises(ValueError, match="plan_dir"):
        make_plan(path, Options(plan_bucket_rows=2))
    assert len(make_plan(path, Options(plan_bucket_rows=5)).shards) == 1  # small enough: in memory


def test_a_bucketed_plan_frees_each_bucket_once_it_is_planned(tmp_path):
    """A bucket's plan and its shards referred to each other: without the cyclic GC (which runs
    on counts of Python objects, not on bytes), every bucket's Arrow columns stayed held."""
    import gc

    from pipeline.stages.download import make_plan

    path = _write_parts(pa.table({"url": [f"http://h/{i}" for i in range(40)]}), tmp_path / "in", 2)
    gc.collect()
    gc.disable()
    try:
        plan = make_plan(path, Options(shard_size=3, plan_bucket_rows=10), str(tmp_path / "_plan"))
        assert type(plan).__name__ == "BucketedPlan"
        assert not [o for o in gc.get_objects() if type(o) is DownloadPlan]
    finally:
        gc.enable()
        plan.close()


def test_a_bucketed_plan_shows_its_progress_when_asked(tmp_path, capsys):
    from pipeline.stages.download import make_plan

    path = _write_parts(pa.table({"url": [f"http://h/{i}" for i in range(25)]}), tmp_path / "in", 3)
    make_plan(path, Options(plan_bucket_rows=10), str(tmp_path / "_plan"), progress=True).close()
    shown = capsys.readouterr().err
    assert "plan: 3 buckets" in shown and re.search(r"25(\.0)?/25", shown)  # pass 1: the rows spilled
    assert "plan: shards" in shown and "3/3" in shown  # pass 2: the buckets planned
    make_plan(path, Options(plan_bucket_rows=10), str(tmp_path / "_plan")).close()
    assert capsys.readouterr().err == ""


def test_the_downloads_view_reads_the_sidecars_not_a_plan_in_progress(tmp_path):
    """A download in progress keeps its plan files in shards/_plan/: DuckDB's downloads and
    shards views must not read them as sidecar rows."""
    import pyarrow.parquet as pq

    from pipeline.query import connect
    from shards.status import STATUS_SCHEMA

    (tmp_path / "shards" / "_plan").mkdir(parents=True)
    rows = [{f.name: None for f in STATUS_SCHEMA} | {"key": k, "url": f"http://h/{k}", "split": "train",
                                                    "shard": "train-000000", "status": "ok"} for k in "ab"]
    pq.write_table(pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), tmp_path / "shards" / "train-000000.parquet")
    pq.write_table(pa.table({"__key": ["x", "y", "z"], "identifier": ["u"] * 3}),
                   tmp_path / "shards" / "_plan" / "plan-00000.parquet")
    con = connect(tmp_path)
    try:
        assert con.execute("SELECT count(*) FROM downloads").fetchone() == (2,)
        assert con.execute("SELECT shard, attempted FROM shards").fetchall() == [("train-000000", 2)]
    finally:
        con.close()


# ---------------------------------------------------------------- text URL lists read as a stream

_LINES = st.sampled_from(["http://h/1", " http://h/2 ", "", "  ", "http://h/é", "http://h/🦉", "\u3000http://h/3",
                          "http://h/4\x85http://h/5", "http://h/6\u2028", "a" * 9])
_ENDS = st.sampled_from(["\n", "\r\n", "\r", ""])


def _read_in_blocks(path, block: int) -> list[str]:
    """The URLs of a text list read in blocks of ``block`` bytes."""
    import pipeline.stages.download as dl

    saved, dl._LIST_BLOCK = dl._LIST_BLOCK, block  # (hypothesis: no function-scoped monkeypatch)
    try:
        return pa.concat_tables(list(dl._list_tables(str(path), Options()))).column("url").to_pylist()
    finally:
        dl._LIST_BLOCK = saved


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_LINES, _ENDS), max_size=12), st.integers(1, 9))
def test_a_txt_list_read_in_blocks_is_the_list_read_whole(tmp_path_factory, lines, block):
    """Cut into blocks at line ends (blocks of 1-9 bytes here, so lines longer than a block too),
    a .txt list gives the URLs ``str.splitlines`` gives of the whole text, stripped, blanks out."""
    text = "".join(a + b for a, b in lines)
    path = tmp_path_factory.mktemp("txt") / "urls.txt"
    path.write_text(text, encoding="utf-8", newline="")
    assert _read_in_blocks(path, block) == [u.strip() for u in text.splitlines() if u.strip()]


_PIECES = st.sampled_from([b"\n", b"\r\n", b"http://h/1", b"\xff", b"\xe2\x82", "é🦉".encode(), b" "])


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.lists(_PIECES, max_size=12).map(b"".join)), st.integers(1, 9))
def test_a_txt_list_that_is_not_utf8_names_the_first_bad_byte_as_a_whole_read_would(tmp_path_factory, data, block):
    path = tmp_path_factory.mktemp("txt") / "urls.txt"
    path.write_bytes(data)
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        with pytest.raises(ValueError, match=re.escape(f"(byte 0x{data[exc.start]:02x} at offset {exc.start})")):
            _read_in_blocks(path, block)
    else:
        assert _read_in_blocks(path, block) == [u.strip() for u in text.splitlines() if u.strip()]


@pytest.mark.parametrize("bucket_rows", [100, 3])
@pytest.mark.parametrize("name", ["urls.csv", "urls.tsv", "urls.txt"])
def test_a_large_text_list_is_planned_from_a_parquet_copy_as_it_is_in_memory(tmp_path, monkeypatch, name, bucket_rows):
    """Past ``_LIST_IN_MEMORY_BYTES`` (0 here) a text list is copied to Parquet as it is read, then
    planned in memory (few rows) or in buckets: every row gets the item of the in-memory plan, and
    neither the copy nor the plan folder is left behind."""
    import pipeline.stages.download as dl

    keys = ["000123", "b", "", "000123", "d.e", "f", "g"]
    path = tmp_path / name
    if name == "urls.txt":
        path.write_text("".join(f" http://h{i % 2}/{k or i}.jpg\n\n" for i, k in enumerate(keys)))
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        path.write_text(f"url{sep}key{sep}caption{sep}cls\n" + "".join(
            f"http://h{i % 2}/{i}.jpg{sep}{k}{sep}a photo {i}{sep}{i % 3}\n" for i, k in enumerate(keys)))
    whole = [(s.name, s.items) for s in dl.make_plan(str(path), Options(shard_size=2)).shards]
    monkeypatch.setattr(dl, "_LIST_IN_MEMORY_BYTES", 0)
    plan = dl.make_plan(str(path), Options(shard_size=2, plan_bucket_rows=bucket_rows), str(tmp_path / "_plan"))
    try:
        assert type(plan).__name__ == ("BucketedPlan" if bucket_rows < len(keys) else "DownloadPlan")
        copied = [(s.name, s.items) for s in plan.shards]
        assert _by_key(copied) == _by_key(whole) and len(_by_key(whole)) == len(keys)
        assert not list((tmp_path / "_plan").glob("biocorpus-list-*"))  # the copy is gone once planned
    finally:
        plan.close()
    assert not (tmp_path / "_plan").exists()


@pytest.mark.parametrize("name, data, message", [
    ("urls.csv", b"url,key\nhttp://127.0.0.1:9/a.jpg,1\nhttp://127.0.0.1:9/b.jpg,2,extra\n",
     r"urls.csv: CSV parse error: Expected 2 columns, got 3.*fix that line"),
    ("urls.txt", b"http://127.0.0.1:9/a.jpg\nhttp://127.0.0.1:9/caf\xe9.jpg\n",
     r"urls.txt is not UTF-8 text \(byte 0xe9 at offset 47\); re-encode it"),
])
def test_a_large_unreadable_text_list_is_the_same_clear_error(tmp_path, monkeypatch, name, data, message):
    import pipeline.stages.download as dl

    (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(dl, "_LIST_IN_MEMORY_BYTES", 0)
    with pytest.raises(ValueError, match=message):
        dl.make_plan(str(tmp_path / name), Options(), str(tmp_path / "_plan"))
    assert not (tmp_path / "_plan").exists()
