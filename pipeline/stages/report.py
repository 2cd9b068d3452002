"""The report stage: a static HTML page of the corpus, its dataset card and its Croissant metadata.

``run_report(cfg, output)`` reads the data root through DuckDB (``report_data``), draws inline
SVG plots (``report_svg``) and writes ``index.html``, ``card.md`` and ``croissant.json`` into
``output`` (default ``<data>/report/``). Nothing on the page loads from the network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from html import escape
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.io import atomic_write_bytes
from pipeline.query import VIEWS
from pipeline.stages import report_svg as svg
from pipeline.stages.report_data import CORPUS_SHARDS, collect, sample_images
from schemas import RANKS, SCHEMA_VERSION

CROISSANT_CONFORMS_TO = "http://mlcommons.org/croissant/1.0"


class Options(BaseModel):
    """Options of the report (the ``[report]`` table of the config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("biocorpus", description="dataset name used in the card and the Croissant metadata")
    description: str = Field(
        "Biodiversity images with a 7-rank lineage, built by biocorpus from GBIF, iNaturalist, EOL and plankton sources.",
        description="one-paragraph description for the card and the Croissant metadata",
    )
    samples_per_taxon: int = Field(4, ge=1, description="sample thumbnails shown per taxon")
    max_taxa: int = Field(24, ge=1, description="taxa in the sample grid (largest first)")
    max_bars: int = Field(40, ge=1, description="bars per chart (largest first; the rest are counted in a note)")
    max_points: int = Field(5000, ge=1, description="map dots at most (one per 0.1-degree cell with records)")
    thumb_size: int = Field(128, ge=16, description="longest side of a sample thumbnail in pixels")
    max_attribution: int = Field(500, ge=1, description="rights holders listed in the card (largest first)")
    croissant_hash_bytes: int = Field(
        4 << 30, ge=0,
        description="shards totalling at most this many bytes are listed one by one with sha256 in croissant.json "
                    "(what mlcroissant needs to open them); larger corpora get only the FileSet of tars",
    )
    version: str = Field(
        "1.0.0", pattern=r"^\d+\.\d+\.\d+$",
        description="the dataset's version in croissant.json and the card (MAJOR.MINOR.PATCH, as Croissant "
                    "recommends); raise it when a changed corpus is published",
    )
    url: str | None = Field(
        None, min_length=1,
        description="the web page where the dataset is published, for croissant.json's url and the card; unset, "
                    "croissant.json's url is ./ (the data root, where its copy of croissant.json lies)",
    )


def run_report(cfg, output: Path | None = None) -> Path:
    """Write ``index.html``, ``card.md`` and ``croissant.json`` for the data root ``cfg.data``;
    returns the folder written. Sections whose stage has not run say so instead of failing."""
    root = Path(cfg.data)
    options = getattr(cfg, "report", None) or Options()
    out = Path(output) if output is not None else root / "report"
    generated = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    data = collect(root, options)
    samples = sample_images(root, options)
    config = cfg.model_dump(mode="json", by_alias=True) if hasattr(cfg, "model_dump") else {}
    atomic_write_bytes(out / "index.html", render_html(data, samples, options, root, generated).encode())
    atomic_write_bytes(out / "card.md", render_card(data, config, options, root, generated).encode())
    croissant = build_croissant(root, data, options, generated)
    croissant_bytes = (json.dumps(croissant, indent=2, ensure_ascii=False) + "\n").encode()
    atomic_write_bytes(out / "croissant.json", croissant_bytes)
    # its paths are relative to the data root, so a copy there opens directly in mlcroissant
    atomic_write_bytes(root / "croissant.json", croissant_bytes)
    return out


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 48px;color:#222}
h1{margin:24px 0 4px}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
nav a{margin-right:12px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.not-run{color:#a60;font-style:italic}
.note{color:#555;font-size:90%}
figure{margin:8px 0}
.taxa{display:flex;flex-wrap:wrap;gap:8px 20px}
.taxon{margin-top:14px}
.taxon h3{margin:6px 0;font-size:105%;font-style:italic}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.grid figure{margin:0;border:1px solid #e3e3e3;padding:4px;background:#fafafa;width:140px}
.grid img{display:block;max-width:100%;height:auto;margin:0 auto}
.grid figcaption{font-size:11px;color:#444;word-break:break-word}
"""
# Sets data-images-loaded on <body> once every <img> has decoded, for headless checks.
IMAGES_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-loaded", String(ok));
});
"""
SECTIONS = (
    ("overview", "Overview"), ("taxa", "Images per taxon"), ("ranks", "Taxa per rank"), ("sources", "Sources"),
    ("licenses", "Licences"), ("instruments", "Instruments"), ("map", "Coordinates"), ("rejects", "Rejects"),
    ("downloads", "Downloads"), ("splits", "Splits"), ("samples", "Sample images"), ("runs", "Runs"),
)


def _not_run(what: str, command: str) -> str:
    return f"<p class='not-run'>{escape(what)}: not run yet (run <code>{escape(command)}</code>).</p>"


def _table(headers: list[str], rows: list[list], numeric: set[int] | None = None, cls: str = "") -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            if i in numeric and v is not None:
                cells.append(f"<td class='n' data-count='{escape(str(v))}'>{v:,}</td>")
            else:
                cells.append(f"<td>{escape('' if v is None else str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(fig_id: str, chart: str, caption: str = "") -> str:
    cap = f"<figcaption class='note'>{escape(caption)}</figcaption>" if caption else ""
    return f"<figure id='{fig_id}'>{chart}{cap}</figure>"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def overview_labels(data: dict) -> dict[str, str]:
    """What each overview count counts, for the page and the card: the download counts are of
    ``shards/`` alone (the folder the query views, the trainer and croissant.json read), the
    rejects of every stage and every shards folder."""
    rej = data.get("rejects") or {}
    rejected = "rejected records (every stage and shards folder" + (", training included)" if rej.get("train_included")
                                                                    else ")")
    return {
        "raw": "raw records (ingested)", "resolved": "resolved records", "curated": "curated records",
        "rejected": rejected, "taxa": "resolved taxa (with a taxon id)",
        "download_attempts": f"download attempts ({CORPUS_SHARDS}/)", "images_ok": f"images in {CORPUS_SHARDS}/",
        "images_failed": f"failed downloads ({CORPUS_SHARDS}/)", "shards": f"shards in {CORPUS_SHARDS}/",
        "runs": "stage runs",
    }


def _other_folders(data: dict) -> list[dict]:
    return [f for f in data["shards_folders"]["folders"] if not f["in_counts"]]


def other_folders_note(data: dict) -> str:
    """One sentence naming the shards folders that the download counts leave out; empty when none."""
    others = _other_folders(data)
    if not others:
        return ""
    named = "; ".join(
        f"{f['folder']}/ ({_plural(f['ok'], 'image')} in {_plural(f['shards'], 'shard')}"
        + (f", whose {_plural(sum(r[2] for r in f['rejects']), 'reject')} are among the rejected records"
           if f["rejects"] else "")
        + ")" for f in others)
    return (f"The download counts are of {CORPUS_SHARDS}/, the folder that the query views, the trainer and "
            f"croissant.json read. Other shards folders of this data root, not in those counts: {named}.")


def _overview_html(data: dict) -> str:
    rows = []
    for key, label in overview_labels(data).items():
        v = data["overview"][key]
        cell = f"<td class='n' data-count='{v}'>{v:,}</td>" if v is not None else "<td class='not-run'>not run yet</td>"
        rows.append(f"<tr data-key='{key}'><td>{escape(label)}</td>{cell}</tr>")
    note = other_folders_note(data)
    note = f"<p class='note' id='other-shards'>{escape(note)} See Downloads.</p>" if note else ""
    return "<table id='overview-table'><tbody>" + "".join(rows) + "</tbody></table>" + note


def _bars(fig_id: str, pairs: list[list], title: str, log: bool = False, caption: str = "", color: str = svg.PALETTE[0]) -> str:
    return _figure(fig_id, svg.bar_chart([(p[0], p[1]) for p in pairs], title, log=log, color=color), caption)


def _records_sections(rec: dict | None) -> dict[str, str]:
    if rec is None:
        msg = _not_run("ingest", "biocorpus ingest SOURCE")
        return {k: msg for k in ("taxa", "ranks", "sources", "licenses", "instruments", "map")}
    out = {}
    shown = len(rec["per_taxon"])
    note = f"{shown} largest of {rec['taxa_total']:,} taxa (log scale)"
    if rec["without_taxon"]:
        n = rec["without_taxon"]
        note += f"; {n:,} record{'s' if n != 1 else ''} without a resolved taxon {'are' if n != 1 else 'is'} not shown"
    out["taxa"] = (_bars("fig-per-taxon", rec["per_taxon"], "Images per taxon (log scale)", log=True, caption=note)
                   if shown else "<p class='note'>No record has a resolved taxon yet (run <code>biocorpus resolve</code>).</p>")
    with_rank = dict((r, n) for r, n in rec["records_with_rank"])
    out["ranks"] = (
        _bars("fig-per-rank", rec["per_rank"], "Distinct taxa per rank", color=svg.PALETTE[3])
        + _table(["rank", "distinct taxa", "records with this rank"],
                 [[r, d, with_rank[r]] for r, d in rec["per_rank"]], {1, 2}, "ranks-table")
    )
    out["sources"] = _bars("fig-per-source", rec["per_source"], "Records per source")
    out["licenses"] = _bars("fig-per-license", rec["per_license"], "Records per licence", color=svg.PALETTE[4])
    out["instruments"] = (
        _bars("fig-per-instrument", rec["per_instrument"], "Records per instrument", color=svg.PALETTE[2])
        if rec["per_instrument"] else "<p class='note'>No record names an instrument (only plankton sources do).</p>"
    )
    points = [(a, b) for a, b in rec["points"]]
    caption = (f"{rec['with_coordinates']:,} of {rec['total']:,} records have coordinates, in "
               f"{rec['coordinate_cells']:,} cells of 0.1°; {len(points):,} drawn. Equirectangular, graticule every 30°.")
    out["map"] = _figure("fig-map", svg.world_map(points, "Record coordinates", total=rec["with_coordinates"]), caption)
    return out


def folder_reject_rows(data: dict) -> list[list]:
    """[shards folder, stage, reason, records] of the per-folder rejects stages (download,
    curate_dedup_bytes), when some of them are not of ``shards/``; else []."""
    sf = data["shards_folders"]
    rows = [[f"{f['folder']}/", *r] for f in sf["folders"] for r in f["rejects"]]
    rows += [[f"elsewhere ({part})", stage, reason, n] for part, stage, reason, n in sf["rejects_elsewhere"]]
    return rows if any(r[0] != f"{CORPUS_SHARDS}/" for r in rows) else []


def _rejects_html(data: dict) -> str:
    rej = data["rejects"]
    if rej is None:
        return "<p class='note'>No rejects dataset yet (no stage has rejected a record, or none has run).</p>"
    labelled = [[f"{s}: {r}", n] for s, r, n in rej["by_stage_reason"]]
    parts = [
        _bars("fig-rejects-stage", rej["by_stage"], "Rejected records per stage", color=svg.PALETTE[1]),
        _bars("fig-rejects-reason", labelled, "Rejected records per stage and reason", color=svg.PALETTE[1]),
        _table(["stage", "reason", "records"], rej["by_stage_reason"], {2}, "rejects-table"),
    ]
    notes = []
    if rej.get("train_included"):
        notes.append("The train rows are the trainer's rejects (train/rejects.parquet), which the rejects query view "
                     "does not read.")
    if data.get("train_rejects_note"):
        notes.append(data["train_rejects_note"] + ".")
    parts += [f"<p class='note'>{escape(n)}</p>" for n in notes]
    by_folder = folder_reject_rows(data)
    if by_folder:
        parts.append(f"<p class='note'>The download and byte-level dedup rejects by the shards folder they are of "
                     f"(the Downloads counts are of {CORPUS_SHARDS}/ only):</p>")
        parts.append(_table(["shards folder", "stage", "reason", "records"], by_folder, {3}, "rejects-folders-table"))
    return "".join(parts)


FOLDER_HEADERS = ["shards folder", "shards", "attempted", "ok", "failed", "stored as", "ok with no curated record",
                  "rejects", "in the download counts"]


def folder_rows(data: dict) -> list[list]:
    """One row per shards folder of the data root (``FOLDER_HEADERS``)."""
    return [[f"{f['folder']}/", f["shards"], f["attempted"], f["ok"], f["failed"],
             ", ".join(f"{n:,} {ext}" for ext, n in f["formats"]) or "-", f["without_curated"],
             sum(r[2] for r in f["rejects"]), "yes" if f["in_counts"] else "no"]
            for f in data["shards_folders"]["folders"]]


def _folders_html(data: dict) -> str:
    if not _other_folders(data):
        return ""
    return (f"<p class='note'>{escape(other_folders_note(data))}</p>"
            + _table(FOLDER_HEADERS, folder_rows(data), {1, 2, 3, 4, 6, 7}, "shards-folders-table"))


def _downloads_html(data: dict) -> str:
    dl = data["downloads"]
    if dl is None:
        return _not_run("download", "biocorpus download") + _folders_html(data)
    hosts = [(h, {"ok": ok, "failed": failed}) for h, ok, failed in dl["by_host"]]
    parts = [
        f"<p>In {CORPUS_SHARDS}/: {dl['attempted']:,} attempted, {dl['ok']:,} stored "
        f"({dl['stored_bytes'] / 1e6:,.1f} MB) from {_plural(dl['hosts'], 'host')}.</p>",
        _figure("fig-downloads-host", svg.stacked_bar_chart(hosts, ["ok", "failed"], "Download outcomes per host",
                                                            colors=(svg.PALETTE[3], svg.PALETTE[1]))),
    ]
    if dl["by_reason"]:
        parts.append(_bars("fig-downloads-reason", dl["by_reason"], "Failed downloads per reason", color=svg.PALETTE[1]))
        parts.append(_table(["host", "reason", "images"], dl["by_host_reason"], {2}, "downloads-reason-table"))
    else:
        parts.append("<p class='note'>No download failed.</p>")
    parts.append(_table(["shard", "attempted", "ok", "failed"], dl["shards"], {1, 2, 3}, "shards-table"))
    parts.append(_folders_html(data))
    return "".join(parts)


def _samples_html(samples: dict) -> str:
    if not samples["taxa"]:
        return _not_run("download (no images in shards)", "biocorpus download")
    blocks = []
    for group in samples["taxa"]:
        figs = []
        for im in group["images"]:
            caption = f"{group['taxon']} · {im['license']}" + (f" · {im['attribution']}" if im["attribution"] else "")
            figs.append(
                f"<figure data-key='{escape(im['key'], quote=True)}'><img src='{im['src']}' width='{im['width']}' "
                f"height='{im['height']}' alt='{escape(group['taxon'], quote=True)}' loading='eager' decoding='sync'>"
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
        blocks.append(f"<div class='taxon' data-taxon='{escape(group['taxon'], quote=True)}'>"
                      f"<h3>{escape(group['taxon'])}</h3><div class='grid'>{''.join(figs)}</div></div>")
    notes = []
    if samples["undecodable"]:
        notes.append(f"{samples['undecodable']} sample images did not decode")
    if samples["missing"]:
        notes.append(f"{samples['missing']} listed images were not found in their shard")
    note = f"<p class='note'>{escape('; '.join(notes))}.</p>" if notes else ""
    return f"<div class='taxa'>{''.join(blocks)}</div>" + note


def _runs_html(runs: list[dict] | None) -> str:
    if not runs:
        return _not_run("any stage", "biocorpus run")
    rows = [[r["run_id"], r["stage"], r["runner"], r["in"], r["out"], r["rejected"], r["seconds"]] for r in runs]
    return _table(["run id", "stage", "runner", "in", "out", "rejected", "seconds"], rows, {3, 4, 5}, "runs-table")


def _page_data(data: dict, samples: dict) -> str:
    blob = {**data, "samples": [{"taxon": g["taxon"], "keys": [im["key"] for im in g["images"]]} for g in samples["taxa"]]}
    for run in blob.get("runs") or []:
        run.pop("config", None)  # the full config is in the card; the page keeps the numbers
    # "</" would close the script element early
    return json.dumps(blob, ensure_ascii=False, default=str).replace("</", "<\\/")


def render_html(data: dict, samples: dict, options: Options, root: Path, generated: str) -> str:
    """The whole page as one string: inline CSS, inline SVG, base64 thumbnails, a JSON blob of the numbers."""
    bodies = {"overview": _overview_html(data)}
    bodies.update(_records_sections(data["records"]))
    bodies["rejects"] = _rejects_html(data)
    bodies["downloads"] = _downloads_html(data)
    bodies["splits"] = (_bars("fig-splits", data["splits"], "Curated records per split", color=svg.PALETTE[3])
                        if data["splits"] else _not_run("curate", "biocorpus curate"))
    bodies["samples"] = _samples_html(samples)
    bodies["runs"] = _runs_html(data["runs"])
    nav = "".join(f"<a href='#{sid}'>{escape(title)}</a>" for sid, title in SECTIONS)
    sections = "".join(f"<section id='{sid}'><h2>{escape(title)}</h2>{bodies[sid]}</section>" for sid, title in SECTIONS)
    scope = data["records_view"] or "none"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(options.name)} report</title><meta name='viewport' content='width=device-width'>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>{escape(options.name)} report</h1>"
        f"<p class='note'>Data root <code>{escape(str(root))}</code>; dataset version {escape(options.version)}, "
        f"generated {escape(generated)} by biocorpus (record schema {SCHEMA_VERSION}). Record plots count the "
        f"<code>records</code> view (here: {escape(scope)}).</p>"
        f"<nav>{nav}</nav>{sections}"
        f"<script type='application/json' id='report-data'>{_page_data(data, samples)}</script>"
        f"<script>{IMAGES_SCRIPT}</script></body></html>"
    )


# ---------------------------------------------------------------- dataset card


def _md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v: Any) -> str:
        text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else ("" if v is None else str(v))
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return name
    return "n>100M"


def corpus_folder(data: dict) -> dict | None:
    """The counts of ``shards/`` (see ``report_data.shards_folders``), or None when it holds no shards."""
    return next((f for f in data["shards_folders"]["folders"] if f["in_counts"]), None)


def image_exts(data: dict) -> list[str]:
    """The extensions of the images stored in ``shards/``, most frequent first."""
    folder = corpus_folder(data)
    return [ext for ext, _ in folder["formats"]] if folder else []


def json_members_sentence(data: dict) -> str:
    """What a sample's ``.json`` member holds: the curated record for an image downloaded from
    curated/, only a URL list's columns for one downloaded from a list (``download --urls``)."""
    text = ("An image downloaded from the curated records has that record as its `.json` member, with its licence "
            "and rights holder.")
    folder = corpus_folder(data)
    if folder and folder["without_curated"]:
        n, ok = folder["without_curated"], folder["ok"]
        text += (f" {n:,} of the {_plural(ok, 'image')} in `{CORPUS_SHARDS}/` have no curated record (downloaded "
                 "from a URL list, `biocorpus download --urls`, or curated again since): a URL list's `.json` holds "
                 "only the list's columns (key, URL, caption), with a licence or rights holder only where the list "
                 "gives one.")
    return text


def render_card(data: dict, config: dict, options: Options, root: Path, generated: str) -> str:
    """The dataset card (Markdown with a YAML header): counts, sources, licences, attribution,
    provenance (stages, versions, run ids) and the config."""
    ov, corpus, rec = data["overview"], data["corpus"], data["records"]
    licenses = [lic for lic, _ in corpus.get("per_license", [])]
    yaml_license = licenses[0] if len(licenses) == 1 else "other"
    lines = [
        "---",
        f"pretty_name: {json.dumps(options.name)}",
        f"license: {yaml_license}",
        "task_categories: [image-classification]",
        "tags: [biology, biodiversity, taxonomy, webdataset]",
        f"size_categories: [{_size_category(corpus.get('total', 0))}]",
        "---",
        "",
        f"# {options.name}",
        "",
        options.description,
        "",
        f"Version {options.version}, generated {generated} by biocorpus (record schema {SCHEMA_VERSION})."
        + (f" Published at <{options.url}>." if options.url else "")
        + " Paths are relative to the data root, the folder holding `shards/` and `croissant.json`.",
        "",
        "## Counts",
        "",
        _md_table(["what", "count"], [[label, "not run yet" if ov[k] is None else ov[k]]
                                      for k, label in overview_labels(data).items()]),
        "",
    ]
    if _other_folders(data):
        lines += [other_folders_note(data), "", _md_table(FOLDER_HEADERS, folder_rows(data)), ""]
    if data["splits"]:
        lines += ["Curated records per split:", "", _md_table(["split", "records"], data["splits"]), ""]
    if rec is not None:
        with_rank = dict(rec["records_with_rank"])
        lines += [f"Taxa per rank (from the `{data['records_view']}` records):", "",
                  _md_table(["rank", "distinct taxa", "records with this rank"],
                            [[r, d, with_rank[r]] for r, d in rec["per_rank"]]), ""]
    scope = corpus["scope"]
    lines += ["## Sources", ""]
    if corpus.get("per_source"):
        lines += [f"Counted over the {scope}.", "", _md_table(["source", "images"], corpus["per_source"]), ""]
    else:
        lines += ["No records yet.", ""]
    lines += ["## Licences", ""]
    if corpus.get("per_license"):
        lines += [
            f"Each image keeps its own licence (normalised code; the raw value is in `license_raw`). Counted over the {scope}.",
            "Check the licence of every image before redistribution; `nc` licences forbid commercial use.",
            "", _md_table(["licence", "images"], corpus["per_license"]), "",
        ]
    else:
        lines += ["No records yet.", ""]
    lines += ["## Attribution", ""]
    if corpus.get("attribution"):
        rows = [[a["holder"] or f"not stated: see {a['dataset']}", a["licenses"], a["count"]] for a in corpus["attribution"]]
        lines += [
            f"Rights holder (or creator) of the {scope}, as the sources state it; where none is stated the "
            f"source dataset is named. {json_members_sentence(data)}",
            "", _md_table(["rights holder", "licences", "images"], rows), "",
        ]
        if corpus["attribution_groups"] > len(rows):
            lines += [f"... and {corpus['attribution_groups'] - len(rows):,} more (query `records` for all).", ""]
    elif (corpus_folder(data) or {}).get("ok"):
        lines += [f"No image in `{CORPUS_SHARDS}/` is a record of this data root. {json_members_sentence(data)}", ""]
    else:
        lines += ["No records yet.", ""]
    lines += ["## How it was built", "",
              "Stages: ingest (sources → one record) → resolve (7-rank lineage against a backbone) → curate "
              "(filters, dedup, balance, splits, captions) → download (webdataset shards) → train → report.", ""]
    runs = data["runs"] or []
    if runs:
        lines += [_md_table(["run id", "stage", "runner", "in", "out", "rejected", "seconds"],
                            [[r["run_id"], r["stage"], r["runner"], r["in"], r["out"], r["rejected"], r["seconds"]]
                             for r in runs]), ""]
        versions: dict[str, str] = {}
        for r in runs:
            versions.update({k: str(v) for k, v in (r["versions"] or {}).items() if v is not None})
        if versions:
            lines += ["Software versions (latest run of each):", "",
                      _md_table(["package", "version"], sorted(versions.items())), ""]
    else:
        lines += ["No run records (`runs/*/run.json`) yet.", ""]
    if data["rejects"]:
        train = " (train: the trainer's rejects, `train/rejects.parquet`)" if data["rejects"].get("train_included") else ""
        lines += [f"Rejected records per stage and reason{train}:", "",
                  _md_table(["stage", "reason", "records"], data["rejects"]["by_stage_reason"]), ""]
        if data.get("train_rejects_note"):
            lines += [data["train_rejects_note"] + ".", ""]
        by_folder = folder_reject_rows(data)
        if by_folder:
            lines += ["Download and byte-level dedup rejects by shards folder:", "",
                      _md_table(["shards folder", "stage", "reason", "records"], by_folder), ""]
    dl = data["downloads"]
    if dl:
        lines += [f"Downloads into `{CORPUS_SHARDS}/`: {dl['attempted']:,} attempted, {dl['ok']:,} stored, "
                  f"{dl['attempted'] - dl['ok']:,} failed, from {_plural(dl['hosts'], 'host')}.", ""]
        if dl["by_reason"]:
            lines += [_md_table(["failure reason", "images"], dl["by_reason"]), ""]
    exts = " or ".join(f"`{{key}}.{ext}`" for ext in image_exts(data)) or "`{key}.jpg` or `{key}.png`"
    lines += [
        "## Files", "",
        f"- `shards/{{split}}-{{n:06d}}.tar`: webdataset shards, per sample {exts} (image), `{{key}}.json` (the "
        "curated record with licence and attribution, or a URL list's columns), `{key}.txt` (caption), `{key}.cls` "
        "(class index when given), and for curated records BioCLIP's text types `{key}.sci.txt`, "
        "`{key}.taxonTag_com.txt`, `{key}.common_name.txt`... (`download.text_members`).",
        "- `shards/{split}-{n:06d}.parquet`: one row per attempted image (status, reason, host, sha256, sizes).",
        "- `raw/`, `resolved/`, `curated/`, `rejects/`: Parquet tables; query them with `biocorpus query \"SQL\"`.",
        "- `croissant.json` (also in `report/`): MLCommons Croissant 1.0 metadata; its paths are relative to the data root.",
        "",
        "## Run config", "",
        "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```", "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- Croissant

_CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
PARQUET = "application/x-parquet"
# Croissant matches ``includes`` with fnmatch over paths relative to the data root, where ``*``
# also crosses folders; these cover the layouts that pipeline.query's views read.
# a text member's name: {key}.txt or {key}.<type>.txt (keys are dot-free, types are words)
TEXT_KEY_REGEX = {"regex": "^(?:.*/)?([A-Za-z0-9_-]+)\\.(?:[A-Za-z0-9_]+\\.)?txt$"}
TEXT_MEMBER_REGEX = {"regex": "^(?:.*/)?[A-Za-z0-9_-]+\\.((?:[A-Za-z0-9_]+\\.)?txt)$"}
INCLUDES = {"raw": "raw/*.parquet", "resolved": "resolved/*.parquet", "curated": "curated/*.parquet",
            "downloads": "shards/*.parquet", "shards": "shards/*.tar"}
RECORD_FIELDS = (
    "record_id", "source", "source_dataset", "occurrence_id", "identifier", "license", "rights_holder", "creator",
    *RANKS, "taxon_id", "taxon_rank", "vernacular_name", "living", "decimal_latitude", "decimal_longitude",
    "event_date", "country_code", "basis_of_record", "instrument",
)
DOWNLOAD_FIELDS = ("key", "url", "split", "shard", "status", "reason", "http_status", "host", "sha256",
                   "width", "height", "stored_width", "stored_height")
# the licence documents of the codes of sources.licenses that are not a versioned cc-by* code
_LICENSE_URLS = {
    "cc0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    # what the sources mean by it (a Public Domain Mark, "no known copyright restrictions")
    "public-domain": "https://creativecommons.org/publicdomain/mark/1.0/",
}
_LICENSE_NOTES = {
    "public-domain": "no known copyright restrictions (Public Domain Mark 1.0)",
    "all-rights-reserved": "all rights reserved by the rights holder: no licence to reuse",
    "unknown": "no licence stated, or one not recognised: see each record's license_raw",
}
# the extension of a stored image -> its MIME type (only JPEG and PNG are stored, see shards.image)
IMAGE_MIME = {"jpg": "image/jpeg", "png": "image/png"}


def _license_url(code: str) -> str | None:
    """The licence document of a licence code (``sources.licenses``), or None when it has none:
    all rights reserved, unknown, or a Creative Commons code whose version the source did not give."""
    if code in _LICENSE_URLS:
        return _LICENSE_URLS[code]
    parts = code.split("-")
    if code.startswith("cc-by") and parts[-1].replace(".", "").isdigit():
        return f"https://creativecommons.org/licenses/{'-'.join(parts[1:-1])}/{parts[-1]}/"
    return None


def license_entry(code: str) -> dict:
    """One entry of croissant.json's ``license``: a schema.org CreativeWork named by the records'
    licence code, with the licence's URL where it has one (schema.org's license is a URL or a
    CreativeWork; a bare code like ``public-domain`` is neither, and some codes have no URL)."""
    entry: dict[str, str] = {"@type": "sc:CreativeWork", "name": code}
    url = _license_url(code)
    if url:
        entry["url"] = url
    note = _LICENSE_NOTES.get(code) or (None if url else "a Creative Commons licence whose version the source "
                                                               "does not state")
    if note:
        entry["description"] = note
    return entry


def _data_type(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return "sc:Boolean"
    if pa.types.is_integer(arrow_type):
        return "sc:Integer"
    if pa.types.is_floating(arrow_type):
        return "sc:Float"
    return "sc:Text"


def _file_schema(root: Path, pattern: str):
    import pyarrow.parquet as pq

    first = next(iter(sorted(root.glob(pattern))), None)
    return pq.read_schema(first) if first is not None else None


def _table_record_set(rs_id: str, fileset_id: str, schema, wanted: tuple[str, ...], description: str,
                      key: str | None = None, hive: tuple[str, ...] = (), references: dict | None = None,
                      descriptions: dict | None = None) -> dict:
    fields = []
    for name in wanted:
        if schema is not None and name in schema.names:
            source = {"fileSet": {"@id": fileset_id}, "extract": {"column": name}}
            dtype = _data_type(schema.field(name).type)
        elif name in hive:
            # a hive partition column lives in the path (split=train/), not in the file
            source = {"fileSet": {"@id": fileset_id}, "extract": {"fileProperty": "fullpath"},
                      "transform": {"regex": f"^.*{name}=([^/]+)/.*$"}}
            dtype = "sc:Text"
        else:
            continue
        field = {"@type": "cr:Field", "@id": f"{rs_id}/{name}", "name": name, "dataType": dtype, "source": source}
        if descriptions and name in descriptions:
            field["description"] = descriptions[name]
        if references and name in references:
            field["references"] = {"field": {"@id": references[name]}}
        fields.append(field)
    rs = {"@type": "cr:RecordSet", "@id": rs_id, "name": rs_id, "description": description, "field": fields}
    if key:
        rs["key"] = {"@id": f"{rs_id}/{key}"}
    return rs


def _tar_object(root: Path, tar: Path) -> dict:
    digest = hashlib.sha256()
    with open(tar, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    rel = tar.relative_to(root).as_posix()
    return {"@type": "cr:FileObject", "@id": f"shard-{tar.stem}", "name": tar.name, "contentUrl": rel,
            "encodingFormat": "application/x-tar", "contentSize": f"{tar.stat().st_size} B", "sha256": digest.hexdigest()}


def build_croissant(root: Path, data: dict, options: Options, generated: str) -> dict:
    """Croissant 1.0 JSON-LD: FileSets for the shards of ``shards/`` (tar, and the images, records
    and captions inside them: one FileSet and RecordSet of images per format they are stored in)
    and the Parquet tables, with a RecordSet of the main columns of each. Paths are relative to the
    data root."""
    root = Path(root)
    views = set(data["views"])
    licenses = [lic for lic, _ in data["corpus"].get("per_license", [])]
    distribution: list[dict] = []
    record_sets: list[dict] = []
    base = data["records_view"]
    if base:
        fs_id = f"{base}-parquet"
        distribution.append({"@type": "cr:FileSet", "@id": fs_id, "name": fs_id, "encodingFormat": PARQUET,
                             "includes": INCLUDES[base], "description": f"the {base} records (one row per image)"})
        record_sets.append(_table_record_set("records", fs_id, _file_schema(root, VIEWS[base]), RECORD_FIELDS,
                                             "one row per image: identity, media, licence, lineage, context",
                                             key="record_id"))
    if "curated" in views:
        schema = _file_schema(root, VIEWS["curated"])
        extra = tuple(n for n in (schema.names if schema is not None else []) if n.startswith("caption"))
        distribution.append({"@type": "cr:FileSet", "@id": "curated-parquet", "name": "curated-parquet",
                             "encodingFormat": PARQUET, "includes": INCLUDES["curated"],
                             "description": "the curated training tables, partitioned by split"})
        record_sets.append(_table_record_set(
            "curated", "curated-parquet", schema, (*RECORD_FIELDS, "split", "cls", *extra),
            "curated records with split, class index and captions", key="record_id", hive=("split",),
            descriptions={"cls": "class index: the position of taxon_id in curated/_classes.json "
                                 "(the {key}.cls member of the shards)"}))
    if "downloads" in views:
        distribution.append({"@type": "cr:FileSet", "@id": "downloads-parquet", "name": "downloads-parquet",
                             "encodingFormat": PARQUET, "includes": INCLUDES["downloads"],
                             "description": "the shards' sidecar tables: one row per attempted image"})
        refs = {"key": "records/record_id"} if base else None
        record_sets.append(_table_record_set("downloads", "downloads-parquet", _file_schema(root, "shards/*.parquet"),
                                             DOWNLOAD_FIELDS, "one row per attempted download, with its outcome",
                                             key="key", references=refs))
    tars = sorted(root.glob("shards/*.tar"))
    if tars:
        distribution.append({"@type": "cr:FileSet", "@id": "shards", "name": "shards", "encodingFormat": "application/x-tar",
                             "includes": INCLUDES["shards"], "description": "webdataset shards {split}-{n:06d}.tar"})
        containers: list[dict] = [{"@id": "shards"}]
        if sum(t.stat().st_size for t in tars) <= options.croissant_hash_bytes:
            # loaders (mlcroissant) open archives listed one by one with a checksum, not a FileSet of them
            objects = [_tar_object(root, t) for t in tars]
            distribution += objects
            containers = [{"@id": o["@id"]} for o in objects]
        # a FileSet has one encodingFormat and a Field one source: one of each per stored format
        exts = image_exts(data)
        image_sets = [("shard-images", "images", exts[0])] if len(exts) == 1 else \
            [(f"shard-images-{ext}", f"images-{ext}", ext) for ext in sorted(exts)]
        distribution += [
            {"@type": "cr:FileSet", "@id": fs_id, "name": fs_id, "containedIn": containers,
             "encodingFormat": IMAGE_MIME[ext], "includes": f"*.{ext}", "description": f"the images, {{key}}.{ext}"}
            for fs_id, _, ext in image_sets
        ]
        distribution += [
            {"@type": "cr:FileSet", "@id": "shard-records", "name": "shard-records", "containedIn": containers,
             "encodingFormat": "application/json", "includes": "*.json",
             "description": "each image's {key}.json: its curated record (licence, rights holder, lineage) and "
                            "download details, or for an image of a URL list the list's columns"},
            {"@type": "cr:FileSet", "@id": "shard-captions", "name": "shard-captions", "containedIn": containers,
             "encodingFormat": "text/plain", "includes": "*.txt",
             "description": "each image's caption, {key}.txt, and BioCLIP's text types, {key}.<type>.txt"},
        ]
        key_regex = {"regex": "^(?:.*/)?([A-Za-z0-9_-]+)\\.[a-z]+$"}
        for fs_id, rs_id, ext in image_sets:
            image_fields = [
                {"@type": "cr:Field", "@id": f"{rs_id}/key", "name": "key", "dataType": "sc:Text",
                 "source": {"fileSet": {"@id": fs_id}, "extract": {"fileProperty": "filename"},
                            "transform": key_regex}},
                {"@type": "cr:Field", "@id": f"{rs_id}/image", "name": "image", "dataType": "sc:ImageObject",
                 "source": {"fileSet": {"@id": fs_id}, "extract": {"fileProperty": "content"}}},
            ]
            which = "the images" if len(image_sets) == 1 else f"the {ext} images"
            record_sets.append({"@type": "cr:RecordSet", "@id": rs_id, "name": rs_id, "key": {"@id": f"{rs_id}/key"},
                                "description": f"{which} in the shards; key = records/record_id = downloads/key",
                                "field": image_fields})
        record_sets.append({
            "@type": "cr:RecordSet", "@id": "captions", "name": "captions",
            "key": [{"@id": "captions/key"}, {"@id": "captions/member"}],
            "description": "the texts of each image: member 'txt' is the configured caption, "
                           "'sci.txt', 'taxonTag_com.txt', 'common_name.txt'... BioCLIP's text types",
            "field": [
                {"@type": "cr:Field", "@id": "captions/key", "name": "key", "dataType": "sc:Text",
                 "source": {"fileSet": {"@id": "shard-captions"}, "extract": {"fileProperty": "filename"},
                            "transform": TEXT_KEY_REGEX}},
                {"@type": "cr:Field", "@id": "captions/member", "name": "member", "dataType": "sc:Text",
                 "source": {"fileSet": {"@id": "shard-captions"}, "extract": {"fileProperty": "filename"},
                            "transform": TEXT_MEMBER_REGEX}},
                {"@type": "cr:Field", "@id": "captions/text", "name": "text", "dataType": "sc:Text",
                 "source": {"fileSet": {"@id": "shard-captions"}, "extract": {"fileProperty": "content"}}},
            ],
        })
    others = ", ".join(f"{f['folder']}/" for f in data["shards_folders"]["folders"] if not f["in_counts"])
    description = (options.description + f" Records follow the biocorpus record schema {SCHEMA_VERSION}. Its paths "
                   f"are relative to the data root, the folder holding {CORPUS_SHARDS}/ and the root copy of this file"
                   + ("" if options.url else " (its url, ./, names that folder)") + f"; it describes the shards of "
                   f"{CORPUS_SHARDS}/" + (f" (not those of {others})" if others else "") + ".")
    return {
        "@context": _CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CROISSANT_CONFORMS_TO,
        "name": options.name,
        "description": description,
        # where it is published when the config says; else the data root, which a relative URL
        # names wherever the folder is copied or served (an absolute file:// path would not)
        "url": options.url or "./",
        "version": options.version,
        "datePublished": generated[:10],
        "creator": {"@type": "sc:Organization", "name": "biocorpus"},
        "license": [license_entry(code) for code in licenses] or [license_entry("unknown")],
        "keywords": ["biodiversity", "taxonomy", "images", "webdataset"],
        "citeAs": f"{options.name}, built with biocorpus on {generated[:10]}.",
        "distribution": distribution,
        "recordSet": record_sets,
    }
