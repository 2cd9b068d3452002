"""The report's numbers, read back out of index.html, card.md and croissant.json, against DuckDB and the fixture."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from pipeline.query import connect
from pipeline.stages.report import SECTIONS, Options, run_report
from schemas import RANKS
from tests.report.croissantcheck import validate_croissant
from tests.report.pagecheck import bars, page_data, parse_page


def _label(r: dict) -> str | None:
    if r["species"]:
        return r["species"]
    return next((f"{r[k]} ({k})" for k in reversed(RANKS[:-1]) if r[k]), None)


def _duck(root: Path, sql: str) -> dict:
    con = connect(root)
    try:
        return {k: v for k, v in con.execute(sql).fetchall()}
    finally:
        con.close()


@pytest.fixture(scope="module")
def page(full_root):
    return parse_page(full_root["report"] / "index.html")


def test_every_section_and_file_is_written(full_root, page):
    out = full_root["report"]
    assert out == full_root["root"] / "report"
    assert {p.name for p in out.iterdir()} >= {"index.html", "card.md", "croissant.json"}
    assert page.sections == [sid for sid, _ in SECTIONS]
    assert page.not_run == 0  # every stage ran in this root
    text = (out / "index.html").read_text()
    # nothing is fetched: no external script, stylesheet or image
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"](https?:)?//", text)


def test_overview_matches_duckdb_and_the_fixture(full_root, page):
    root, rows = full_root["root"], full_root["records"]
    duck = _duck(root, "SELECT 'raw', count(*) FROM raw UNION ALL SELECT 'resolved', count(*) FROM resolved "
                       "UNION ALL SELECT 'curated', count(*) FROM curated UNION ALL SELECT 'rejected', count(*) FROM rejects "
                       "UNION ALL SELECT 'download_attempts', count(*) FROM downloads UNION ALL SELECT 'shards', count(*) FROM shards "
                       "UNION ALL SELECT 'runs', count(*) FROM runs UNION ALL SELECT 'taxa', count(*) FROM taxa")
    expected = {
        "raw": len(rows), "resolved": len(rows), "curated": sum(full_root["splits"].values()),
        "rejected": sum(full_root["rejects"].values()), "images_ok": full_root["images_ok"],
        "images_failed": full_root["images_failed"], "shards": 2, "runs": 4,
        "download_attempts": full_root["images_ok"] + full_root["images_failed"],
    }
    for key, value in expected.items():
        assert page.overview[key] == value, key
        if key in duck:
            assert duck[key] == value, key
    assert page.overview["taxa"] == duck["taxa"] > 0


def test_sources_and_licences(full_root, page):
    rows = full_root["records"]
    assert bars(page, "fig-per-source") == Counter(r["source"] for r in rows)
    assert bars(page, "fig-per-license") == Counter(r["license"] or "unknown" for r in rows)
    assert bars(page, "fig-per-license") == _duck(full_root["root"], "SELECT coalesce(license, 'unknown'), count(*) FROM records GROUP BY 1")
    assert "cc-by-4.0" in bars(page, "fig-per-license")  # the GBIF records' real licence


def test_distinct_taxa_per_rank(full_root, page):
    rows = full_root["records"]
    got = bars(page, "fig-per-rank")
    assert list(got) == list(RANKS)
    assert got == {rank: len({r[rank] for r in rows if r[rank]}) for rank in RANKS}
    assert got["species"] > got["genus"] > got["kingdom"] >= 1


def test_images_per_taxon_on_a_log_axis(full_root, page):
    rows = full_root["records"]
    lineages = Counter(tuple(r[k] for k in RANKS) for r in rows if _label(r))
    expected = Counter()
    for lineage, n in lineages.items():
        expected[_label(dict(zip(RANKS, lineage, strict=True)))] += n
    shown = page.figures["fig-per-taxon"]
    assert len(shown) == min(Options().max_bars, len(expected))
    for bar in shown:
        assert float(bar["data-count"]) == expected[bar["data-label"]]
    counts = [float(b["data-count"]) for b in shown]
    widths = [float(b["width"]) for b in shown]
    assert counts == sorted(counts, reverse=True)
    assert widths == sorted(widths, reverse=True) and widths[-1] > 0
    # log scale: widths go as log(count) (a count of 1 keeps a thin sliver)
    (a, wa), (b, wb) = (counts[0], widths[0]), next((c, w) for c, w in zip(counts, widths, strict=True) if 1 < c < counts[0])
    assert wa / wb == pytest.approx(math.log(a) / math.log(b), rel=0.01)
    text = (full_root["report"] / "index.html").read_text()
    assert "data-kind='log-bar'" in text


def test_map_draws_every_coordinate_cell(full_root):
    rows = full_root["records"]
    with_xy = [r for r in rows if r["decimal_latitude"] is not None and r["decimal_longitude"] is not None]
    cells = {(round(r["decimal_latitude"], 1), round(r["decimal_longitude"], 1)) for r in with_xy}
    text = (full_root["report"] / "index.html").read_text()
    svg = text[text.index("<figure id='fig-map'>"):]
    svg = svg[: svg.index("</figure>")]
    assert f"data-total='{len(with_xy)}'" in svg and f"data-count='{len(cells)}'" in svg
    assert svg.count("<circle") == len(cells) > 0
    assert svg.count("class='graticule'") == 11 + 5


def test_rejects_by_stage_and_reason(full_root, page):
    rej = full_root["rejects"]
    assert bars(page, "fig-rejects-reason") == {f"{s}: {r}": n for (s, r), n in rej.items()}
    by_stage = Counter()
    for (stage, _), n in rej.items():
        by_stage[stage] += n
    assert bars(page, "fig-rejects-stage") == by_stage
    assert bars(page, "fig-rejects-stage") == _duck(full_root["root"], "SELECT stage, count(*) FROM rejects GROUP BY 1")


def test_download_outcomes_by_host_and_reason(full_root, page):
    stacks = page.figures["fig-downloads-host"]
    got = {s["data-label"]: (int(s["data-ok"]), int(s["data-failed"])) for s in stacks}
    hosts = full_root["hosts"]
    assert got == {h: (hosts[(h, "ok")], hosts[(h, "failed")]) for h in {h for h, _ in hosts}}
    assert bars(page, "fig-downloads-reason") == full_root["failure_reasons"]
    data = page_data(full_root["report"] / "index.html")
    assert data["downloads"]["shards"] == [["train-000000", 9, 3, 6], ["val-000000", 1, 1, 0]]


def test_splits(full_root, page):
    assert bars(page, "fig-splits") == full_root["splits"]


def test_json_blob_agrees_with_the_bars(full_root, page):
    data = page_data(full_root["report"] / "index.html")
    assert dict(data["records"]["per_source"]) == bars(page, "fig-per-source")
    assert dict(data["records"]["per_rank"]) == bars(page, "fig-per-rank")
    assert data["overview"] == page.overview


def test_sample_grid_holds_the_shard_images(full_root, page):
    members = {k for keys in full_root["shard_members"].values() for k in keys}
    text = (full_root["report"] / "index.html").read_text()
    keys = set(re.findall(r"<figure data-key='([^']+)'>", text))
    assert keys == members
    assert len(page.images) == len(members)
    for img in page.images:
        assert img["src"].startswith("data:image/jpeg;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert decoded.size == (int(img["width"]), int(img["height"])) and max(decoded.size) <= Options().thumb_size
    for species in ("Leopardus pardalis", "Ursus americanus", "Bos taurus"):
        assert f"data-taxon='{species}'" in text
    assert "WCS Camera Traps (LILA BC)" in text  # attribution in the caption


def test_card_has_counts_attribution_provenance_and_config(full_root):
    from pipeline.config import load_config

    card = (full_root["report"] / "card.md").read_text()
    assert card.startswith("---\n") and "\n# biocorpus\n" in card
    assert f"| raw records (ingested) | {len(full_root['records'])} |" in card
    assert f"| images in shards/ | {full_root['images_ok']} |" in card
    assert len(full_root["run_ids"]) == 4
    for run_id in full_root["run_ids"]:
        assert run_id in card
    assert "| North American Camera Trap Images (LILA BC) | unknown | 3 |" in card
    assert "| WCS Camera Traps (LILA BC) | unknown | 1 |" in card
    for (stage, reason), n in full_root["rejects"].items():
        assert f"| {stage} | {reason} | {n} |" in card
    config = json.loads(card.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert config == load_config(overrides={"data": str(full_root["root"])}).model_dump(mode="json", by_alias=True)


def test_croissant_describes_shards_and_tables(full_root):
    doc = json.loads((full_root["report"] / "croissant.json").read_text())
    validate_croissant(doc, full_root["root"])
    dist = {d["@id"]: d for d in doc["distribution"]}
    assert dist["shards"]["encodingFormat"] == "application/x-tar" and dist["shards"]["includes"] == "shards/*.tar"
    tars = {d["contentUrl"] for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    assert tars == {f"shards/{name}.tar" for name in full_root["shard_members"]}
    assert dist["shard-images"]["containedIn"] == [{"@id": f"shard-{name}"} for name in sorted(full_root["shard_members"])]
    assert {"resolved-parquet", "curated-parquet", "downloads-parquet"} <= set(dist)
    assert all(dist[k]["encodingFormat"] == "application/x-parquet"
               for k in ("resolved-parquet", "curated-parquet", "downloads-parquet"))
    sets = {rs["@id"]: {f["name"]: f for f in rs["field"]} for rs in doc["recordSet"]}
    assert set(RANKS) <= set(sets["records"]) and sets["records"]["decimal_latitude"]["dataType"] == "sc:Float"
    assert sets["curated"]["split"]["source"]["extract"] == {"fileProperty": "fullpath"}
    assert sets["downloads"]["http_status"]["dataType"] == "sc:Integer"
    assert sets["images"]["image"]["dataType"] == "sc:ImageObject"
    # no cc-by image is in the shards: the camera traps' CDLA-Permissive is no code of the vocabulary
    assert [lic["name"] for lic in doc["license"]] == ["unknown"] and "url" not in doc["license"][0]


@pytest.mark.parametrize(("member", "key", "text"), [
    ("shards/train-000000.tar/k0.txt", "k0", "txt"), ("k0.sci.txt", "k0", "sci.txt"),
    ("a-b_c.taxonTag_com.txt", "a-b_c", "taxonTag_com.txt"), ("x1.common_name.txt", "x1", "common_name.txt")])
def test_croissant_captions_name_each_text_member_by_key_and_type(full_root, member, key, text):
    doc = json.loads((full_root["report"] / "croissant.json").read_text())
    fields = {f["name"]: f for rs in doc["recordSet"] if rs["@id"] == "captions" for f in rs["field"]}
    assert re.match(fields["key"]["source"]["transform"]["regex"], member).group(1) == key
    assert re.match(fields["member"]["source"]["transform"]["regex"], member).group(1) == text


def test_croissant_of_a_large_corpus_names_the_tars_by_pattern_only(full_root, tmp_path):
    cfg = SimpleNamespace(data=str(full_root["root"]), report=Options(croissant_hash_bytes=0))
    doc = json.loads((run_report(cfg, tmp_path / "big") / "croissant.json").read_text())
    validate_croissant(doc, full_root["root"])
    assert not [d for d in doc["distribution"] if d["@type"] == "cr:FileObject"]
    assert {d["@id"]: d.get("containedIn") for d in doc["distribution"]}["shard-images"] == [{"@id": "shards"}]


def test_only_ingest_run_says_what_is_missing(raw_only_root):
    out = raw_only_root["report"]
    page = parse_page(out / "index.html")
    assert page.overview["raw"] == len(raw_only_root["records"])
    for key in ("resolved", "curated", "download_attempts", "images_ok", "shards"):
        assert page.overview[key] is None, key
    text = (out / "index.html").read_text()
    for section in ("downloads", "splits", "samples"):
        body = text.split(f"<section id='{section}'>", 1)[1].split("</section>", 1)[0]
        assert "not run yet" in body, section
    # the raw records still get their plots, with no lineage yet
    assert bars(page, "fig-per-source") == Counter(r["source"] for r in raw_only_root["records"])
    assert bars(page, "fig-per-rank") == {r: 0 for r in RANKS}
    assert bars(page, "fig-rejects-reason") == {"ingest: no_image": raw_only_root["rejects"][("ingest", "no_image")]}
    doc = json.loads((out / "croissant.json").read_text())
    validate_croissant(doc, raw_only_root["root"])
    assert [d["@id"] for d in doc["distribution"]] == ["raw-parquet"]
    assert "not run yet" in (out / "card.md").read_text()


def test_an_empty_data_root_gives_a_page_of_notes(empty_root):
    from pipeline.config import load_config

    out = run_report(load_config(overrides={"data": str(empty_root)}), None)
    page = parse_page(out / "index.html")
    assert all(v is None for v in page.overview.values()) and page.not_run >= 5 and not page.images
    doc = json.loads((out / "croissant.json").read_text())
    assert doc["distribution"] == [] and doc["recordSet"] == []


def test_report_options_from_the_config(full_root, tmp_path):
    cfg = SimpleNamespace(data=str(full_root["root"]), report=Options(max_bars=3, samples_per_taxon=1, max_taxa=2))
    out = run_report(cfg, tmp_path / "small")
    page = parse_page(out / "index.html")
    assert len(page.figures["fig-per-taxon"]) == 3
    assert len(page.images) == 2
    assert (out / "card.md").read_text().rstrip().endswith("{}\n```")



def test_run_records_are_read_from_the_files_when_duckdb_cannot(tmp_path):
    import duckdb

    from pipeline.io import write_run_record
    from pipeline.stages.report_data import _runs

    write_run_record(tmp_path, "20240101T000000Z-ingest-aaaaaa", {"stage": "ingest", "counts": {"in": 3, "out": 2}})
    (tmp_path / "runs" / "20240102T000000Z-curate-bbbbbb").mkdir()
    (tmp_path / "runs" / "20240102T000000Z-curate-bbbbbb" / "run.json").write_text('{"run_id": "trunc')
    runs = _runs(duckdb.connect(), tmp_path, has_view=True)  # no such view on this connection
    assert [(r["run_id"], r["stage"], r["in"], r["out"]) for r in runs] == [
        ("20240101T000000Z-ingest-aaaaaa", "ingest", 3, 2),
        ("20240102T000000Z-curate-bbbbbb", "(unreadable run.json)", None, None),
    ]
