"""What the report counts and what croissant.json says of it: the image formats the shards hold,
shards folders besides shards/ and their rejects, the trainer's rejects, a URL list's `.json`
members, licences, url, version and the curated class index."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.io import atomic_write_json, atomic_write_parquet
from pipeline.query import connect
from pipeline.stages.download import rejects_part_name
from pipeline.stages.report import Options, run_report
from schemas import SCHEMA_VERSION, Reason, make_rejects
from tests.report.conftest import build_root, make_config, write_url_list_shard
from tests.report.croissantcheck import assert_images_covered, image_filesets, validate_croissant
from tests.report.pagecheck import bars, page_data, parse_page


def _croissant(out: Path) -> dict:
    return json.loads((out / "croissant.json").read_text())


def _count(root: Path, sql: str) -> int:
    con = connect(root)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def _section(html: str, sid: str) -> str:
    return html.split(f"<section id='{sid}'>", 1)[1].split("</section>", 1)[0]


def _table_rows(html: str, cls: str) -> list[list[str]]:
    table = html.split(f"<table class='{cls}'>", 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


@pytest.fixture(scope="module")
def url_list_root(tmp_path_factory) -> dict:
    """Curate has run and shards/ holds a URL list's shard of real IFCB ROI PNGs (the QA's plankton case)."""
    root = tmp_path_factory.mktemp("url_list")
    expected = build_root(root, stages=("ingest", "resolve", "curate"))
    expected["members"] = write_url_list_shard(root / "shards" / "train-000000.tar")
    expected["report"] = run_report(make_config(root), None)
    return expected


@pytest.fixture(scope="module")
def two_folders_root(tmp_path_factory) -> dict:
    """Every stage, plus a second shards folder (shards-plankton/) with rejects of its own: a part named
    for its path (byte dedup), one named as earlier versions did (download), and one of a folder elsewhere."""
    root = tmp_path_factory.mktemp("two_folders")
    expected = build_root(root)
    other = root / "shards-plankton"
    members = write_url_list_shard(other / "train-000000.tar")
    keys = [m.split(".")[0] for m in members]
    rejects = root / "rejects"
    atomic_write_parquet(make_rejects(keys[:2], "curate_dedup_bytes", Reason.NEAR_DUPLICATE, "phash distance 2"),
                         rejects / "stage=curate-dedup-bytes" / rejects_part_name(other))
    atomic_write_parquet(make_rejects(keys[2:3], "download", Reason.DOWNLOAD_FAILED, "timeout"),
                         rejects / "stage=download" / "part-shards-plankton.parquet")
    atomic_write_parquet(make_rejects(["gbif-elsewhere"], "download", Reason.DOWNLOAD_FAILED, "http_404"),
                         rejects / "stage=download" / "part-shards-0123456789.parquet")
    atomic_write_parquet(make_rejects([], "download", Reason.DOWNLOAD_FAILED),
                         rejects / "stage=download" / rejects_part_name(root / "shards"))
    expected["other_members"] = members
    expected["report"] = run_report(make_config(root), None)
    return expected


# ---------------------------------------------------------------- image formats (QA item 5)


def test_png_shards_are_described_as_png(url_list_root):
    root = url_list_root["root"]
    doc = _croissant(root)
    sets = image_filesets(doc)
    assert {k: (d["includes"], d["encodingFormat"]) for k, d in sets.items()} == {"shard-images": ("*.png", "image/png")}
    assert_images_covered(doc, root)
    images = next(rs for rs in doc["recordSet"] if rs["@id"] == "images")
    assert {f["source"]["fileSet"]["@id"] for f in images["field"]} == {"shard-images"}
    validate_croissant(doc, root)


def test_mixed_formats_get_a_fileset_and_record_set_each(tmp_path):
    root = tmp_path / "mixed"
    expected = build_root(root)
    # two PNGs too large to keep are stored as JPEG: the sidecar says png, the member is .jpg
    write_url_list_shard(root / "shards" / "train-000001.tar", reencoded=2)
    out = run_report(make_config(root), None)
    doc = _croissant(out)
    sets = image_filesets(doc)
    assert {k: (d["includes"], d["encodingFormat"]) for k, d in sets.items()} == {
        "shard-images-jpg": ("*.jpg", "image/jpeg"), "shard-images-png": ("*.png", "image/png")}
    assert_images_covered(doc, root)
    record_sets = {rs["@id"]: rs for rs in doc["recordSet"]}
    for ext in ("jpg", "png"):
        fields = record_sets[f"images-{ext}"]["field"]
        assert {f["source"]["fileSet"]["@id"] for f in fields} == {f"shard-images-{ext}"}
        assert record_sets[f"images-{ext}"]["key"] == {"@id": f"images-{ext}/key"}
    assert "images" not in record_sets
    validate_croissant(doc, root)
    folders = page_data(out / "index.html")["shards_folders"]["folders"]
    assert folders[0]["formats"] == [["jpg", expected["images_ok"] + 2], ["png", 5]]


# ---------------------------------------------------------------- other shards folders (QA item 10)


def test_counts_say_which_shards_folder_they_cover(two_folders_root):
    root, out = two_folders_root["root"], two_folders_root["report"]
    page = parse_page(out / "index.html")
    html = (out / "index.html").read_text()
    # shards/ alone in the download counts, as in the views; every folder's rejects in the rejects
    assert page.overview["images_ok"] == two_folders_root["images_ok"] == _count(
        root, "SELECT count(*) FROM downloads WHERE status = 'ok'")
    assert page.overview["rejected"] == _count(root, "SELECT count(*) FROM rejects") \
        == sum(two_folders_root["rejects"].values()) + 4
    overview = _section(html, "overview")
    assert "images in shards/" in overview and "every stage and shards folder" in overview
    note = re.sub(r"<[^>]+>", "", overview.split("id='other-shards'>", 1)[1])
    assert "shards-plankton/ (7 images in 1 shard, whose 3 rejects are among the rejected records)" in note
    assert _table_rows(html, "shards-folders-table") == [
        ["shards/", "2", "10", "4", "6", "4 jpg", "0", "0", "yes"],
        ["shards-plankton/", "1", "7", "7", "0", "7 png", "7", "3", "no"],
    ]
    assert _table_rows(html, "rejects-folders-table") == [
        ["shards-plankton/", "curate_dedup_bytes", "near_duplicate", "2"],
        ["shards-plankton/", "download", "download_failed", "1"],
        ["elsewhere (part-shards-0123456789.parquet)", "download", "download_failed", "1"],
    ]
    card = (out / "card.md").read_text()
    assert "| shards-plankton/ | 1 | 7 | 7 | 0 | 7 png | 7 | 3 | no |" in card
    assert "| shards-plankton/ | curate_dedup_bytes | near_duplicate | 2 |" in card
    assert "Other shards folders of this data root, not in those counts: shards-plankton/" in card
    doc = _croissant(out)
    validate_croissant(doc, root)
    assert "not those of shards-plankton/" in doc["description"]
    assert all(d.get("contentUrl", "shards/").startswith("shards/") for d in doc["distribution"])


def test_a_rejects_part_is_given_to_the_folder_it_names(tmp_path):
    from pipeline.stages.report_data import shard_reject_parts

    shards, old, plankton = (tmp_path / n for n in ("shards", "shards-old", "shards-plankton"))
    stage = tmp_path / "rejects" / "stage=download"
    stage.mkdir(parents=True)
    names = [rejects_part_name(shards), "part-shards-0123456789.parquet",  # shards/ of another place
             "part-shards-old.parquet",  # an earlier version's name
             "part-shards-plankton-abcdef0123.parquet",  # a moved data root: the hash of its old path
             "part-other-0123456789.parquet"]
    for name in names:
        (stage / name).touch()
    got = {p.name: folder for p, folder in shard_reject_parts(tmp_path, [shards, old, plankton]).items()}
    assert got == {names[0]: "shards", names[1]: None, names[2]: "shards-old", names[3]: "shards-plankton",
                   names[4]: None}


# ---------------------------------------------------------------- a URL list's .json, hosts (QA item 10)


def test_card_says_what_a_url_lists_json_holds(url_list_root, full_root):
    card = (url_list_root["report"] / "card.md").read_text()
    assert "Each sample's `.json` member carries its own licence" not in card
    assert "7 of the 7 images in `shards/` have no curated record" in card
    assert "per sample `{key}.png` (image)" in card
    assert "or a URL list's columns" in card
    full = (full_root["report"] / "card.md").read_text()
    assert "has that record as its `.json` member, with its licence and rights holder" in full
    assert "have no curated record" not in full


def test_one_host_is_one_host(url_list_root, full_root):
    for out in (url_list_root["report"], full_root["report"]):
        assert page_data(out / "index.html")["downloads"]["hosts"] == 1
        html = (out / "index.html").read_text()
        assert "from 1 host.</p>" in html and "1 hosts" not in html
        assert "from 1 host." in (out / "card.md").read_text()
    from pipeline.stages.report import _plural

    assert [_plural(n, "host") for n in (0, 1, 2, 1000)] == ["0 hosts", "1 host", "2 hosts", "1,000 hosts"]


# ---------------------------------------------------------------- croissant.json fields (QA item 10)


@pytest.mark.parametrize(("code", "url"), [
    ("cc-by-4.0", "https://creativecommons.org/licenses/by/4.0/"),
    ("cc-by-nc-sa-3.0", "https://creativecommons.org/licenses/by-nc-sa/3.0/"),
    ("cc0-1.0", "https://creativecommons.org/publicdomain/zero/1.0/"),
    ("public-domain", "https://creativecommons.org/publicdomain/mark/1.0/"),
    ("cc-by-nc", None),  # iNaturalist gives no version
    ("all-rights-reserved", None),
    ("unknown", None),
])
def test_every_licence_entry_is_a_creative_work(code, url):
    from pipeline.stages.report import license_entry

    entry = license_entry(code)
    assert entry["@type"] == "sc:CreativeWork" and entry["name"] == code
    assert entry.get("url") == url
    assert url or entry["description"]  # one without a licence document says why


def test_croissant_licences_of_the_shards_are_one_form(full_root, tmp_path):
    from pipeline.stages.report import build_croissant
    from pipeline.stages.report_data import collect

    data = collect(full_root["root"], Options())
    data["corpus"]["per_license"] = [["cc-by-4.0", 3], ["public-domain", 2], ["cc-by-nc", 1]]
    doc = build_croissant(full_root["root"], data, Options(), "2024-01-01T00:00:00+00:00")
    validate_croissant(doc, full_root["root"])
    assert [(e["name"], e.get("url")) for e in doc["license"]] == [
        ("cc-by-4.0", "https://creativecommons.org/licenses/by/4.0/"),
        ("public-domain", "https://creativecommons.org/publicdomain/mark/1.0/"), ("cc-by-nc", None)]


def test_croissant_url_and_version_are_the_datasets(full_root, tmp_path):
    doc = _croissant(full_root["report"])
    assert doc["url"] == "./" and doc["version"] == Options().version
    assert f"record schema {SCHEMA_VERSION}" in doc["description"]
    assert str(full_root["root"]) not in json.dumps(doc)  # nothing names the machine that built it
    cfg = SimpleNamespace(data=str(full_root["root"]),
                          report=Options(url="https://example.org/biocorpus", version="2.1.0"))
    out = run_report(cfg, tmp_path / "published")
    doc = _croissant(out)
    assert doc["url"] == "https://example.org/biocorpus" and doc["version"] == "2.1.0"
    card = (out / "card.md").read_text()
    assert "Version 2.1.0" in card and "<https://example.org/biocorpus>" in card
    assert str(full_root["root"]) not in card.split("## Run config", 1)[0]
    with pytest.raises(ValidationError):
        Options(version="v1")


def test_curated_record_set_has_the_class_index(full_root):
    doc = _croissant(full_root["report"])
    curated = {f["name"]: f for rs in doc["recordSet"] if rs["@id"] == "curated" for f in rs["field"]}
    assert curated["cls"]["dataType"] == "sc:Integer"
    assert curated["cls"]["source"] == {"fileSet": {"@id": "curated-parquet"}, "extract": {"column": "cls"}}
    assert "_classes.json" in curated["cls"]["description"]


# ---------------------------------------------------------------- the trainer's rejects (QA item 7)


def _train(root: Path, rejected: int | None, claimed: int | None) -> None:
    train = root / "train"
    if rejected is not None:
        keys = [f"folders-{i:016x}" for i in range(rejected)]
        atomic_write_parquet(make_rejects(keys, "train", Reason.NO_IMAGE, "no image member"), train / "rejects.parquet")
    if claimed is not None:
        atomic_write_json(train / "metrics.json", {"completed": True, "rejected_samples": claimed})


def test_training_rejects_are_counted(tmp_path):
    root = tmp_path / "trained"
    expected = build_root(root)
    _train(root, rejected=2, claimed=2)
    out = run_report(make_config(root), None)
    page = parse_page(out / "index.html")
    in_view = _count(root, "SELECT count(*) FROM rejects")
    assert in_view == sum(expected["rejects"].values())  # the view does not read train/ (pipeline/query.py)
    assert page.overview["rejected"] == in_view + 2
    assert bars(page, "fig-rejects-stage")["train"] == 2
    assert bars(page, "fig-rejects-reason")["train: no_image"] == 2
    html = (out / "index.html").read_text()
    assert "training included" in _section(html, "overview")
    assert "train/rejects.parquet" in _section(html, "rejects")
    card = (out / "card.md").read_text()
    assert "| train | no_image | 2 |" in card and f"| {in_view + 2} |" in card


def test_stale_training_rejects_are_not_counted(tmp_path):
    root = tmp_path / "retrained"
    expected = build_root(root)
    _train(root, rejected=1, claimed=0)  # a clean run after one that rejected a sample (QA item 6)
    out = run_report(make_config(root), None)
    page = parse_page(out / "index.html")
    assert page.overview["rejected"] == sum(expected["rejects"].values())
    assert "train" not in bars(page, "fig-rejects-stage")
    assert "left from an earlier training and not counted" in _section((out / "index.html").read_text(), "rejects")
    assert pq.read_metadata(root / "train" / "rejects.parquet").num_rows == 1  # the report reads, never removes
