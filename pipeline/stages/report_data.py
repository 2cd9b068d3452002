"""The report's numbers: every count comes from DuckDB over the data root's views (``pipeline.query``)
and over what they do not read: the sidecars of every shards folder (the views read ``shards/``),
which folder each per-folder rejects part is of, and the trainer's ``train/rejects.parquet``.

``collect`` returns one JSON-serialisable dict; a section whose view is absent is ``None`` so the
page and the card can say "not run yet" instead of failing. ``sample_images`` picks a few
downloaded images per taxon and reads them back out of the shards as small JPEG thumbnails.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from schemas import RANKS

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
NO_TAXON = "(no resolved taxon)"
# the shards folder the views (pipeline.query), the trainer and croissant.json read: the corpus
CORPUS_SHARDS = "shards"
# rejects stages written one part per shards folder (pipeline.jobs._write_shard_rejects)
SHARD_REJECT_STAGES = ("download", "curate-dedup-bytes")
# a part of such a stage: part-<folder name>-<hash of its path>.parquet, or part-<folder name>.parquet
# as earlier versions named it
_SHARD_PART = re.compile(r"part-(.+?)(?:-[0-9a-f]{10})?\.parquet")
# The extension of a stored image, from its sidecar row: only JPEG and PNG originals are kept as
# they came (shards.image), and a kept original's stored bytes and size are its downloaded ones;
# every other image is stored re-encoded as JPEG.
STORED_EXT_SQL = ("CASE WHEN format = 'png' AND stored_bytes = bytes AND stored_width = width "
                  "AND stored_height = height THEN 'png' ELSE 'jpg' END")


def _taxon_label_sql() -> str:
    """SQL naming each record's taxon by its most specific resolved rank (above species the rank is
    shown with the name, e.g. ``Colletes (genus)``); NULL when no rank is resolved."""
    whens = [f'WHEN "{rank}" IS NOT NULL THEN "{rank}" || \' ({rank})\'' for rank in reversed(RANKS[:-1])]
    return "CASE WHEN species IS NOT NULL THEN species " + " ".join(whens) + " END"


TAXON_LABEL = _taxon_label_sql()
_RANK_COLS = ", ".join(f'"{r}"' for r in RANKS)


def _fetch(con, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _scalar(con, sql: str) -> Any:
    return con.execute(sql).fetchone()[0]


def view_names(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


def columns(con, view: str) -> set[str]:
    return {r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()}


def _pairs(rows: list[dict], key: str = "label", value: str = "count") -> list[list]:
    return [[r[key], int(r[value])] for r in rows]


def corpus_scope(views: set[str]) -> tuple[str | None, str]:
    """SQL for the produced corpus and what it is: the downloaded images when shards exist, else the
    curated records, else all records (each later stage narrows the earlier one)."""
    if "downloads" in views and "records" in views:
        return (
            # IN, not JOIN: an image retried into a later shard must not count twice
            "SELECT * FROM records WHERE record_id IN (SELECT key FROM downloads WHERE status = 'ok')",
            "images in the shards",
        )
    if "curated" in views:
        return "SELECT * FROM curated", "curated records (images not downloaded yet)"
    if "records" in views:
        return "SELECT * FROM records", "records (not curated yet)"
    return None, "nothing yet"


def _overview(con, views: set[str], rejected: int | None) -> dict[str, int | None]:
    def count(view: str, where: str = "") -> int | None:
        return int(_scalar(con, f"SELECT count(*) FROM {view} {where}")) if view in views else None

    return {
        "raw": count("raw"),
        "resolved": count("resolved"),
        "curated": count("curated"),
        "rejected": rejected,
        "taxa": count("taxa"),
        "download_attempts": count("downloads"),
        "images_ok": count("downloads", "WHERE status = 'ok'"),
        "images_failed": count("downloads", "WHERE status <> 'ok'"),
        "shards": count("shards"),
        "runs": count("runs"),
    }


def _records(con, options) -> dict[str, Any]:
    cols = columns(con, "records")
    total = int(_scalar(con, "SELECT count(*) FROM records"))
    out: dict[str, Any] = {"total": total}
    taxa = _fetch(
        con,
        f"SELECT {TAXON_LABEL} AS label, count(*) AS count FROM records WHERE {TAXON_LABEL} IS NOT NULL "
        f"GROUP BY {_RANK_COLS} ORDER BY count DESC, label LIMIT ?",
        [options.max_bars],
    )
    out["per_taxon"] = _pairs(taxa)
    out["taxa_total"] = int(_scalar(con, f"SELECT count(*) FROM (SELECT DISTINCT {_RANK_COLS} FROM records "
                                         f"WHERE {TAXON_LABEL} IS NOT NULL)"))
    out["without_taxon"] = int(_scalar(con, f"SELECT count(*) FROM records WHERE {TAXON_LABEL} IS NULL"))
    rank_sql = ", ".join(f'count(DISTINCT "{r}") AS "d_{r}", count("{r}") AS "n_{r}"' for r in RANKS)
    ranks = _fetch(con, f"SELECT {rank_sql} FROM records")[0]
    out["per_rank"] = [[r, int(ranks[f"d_{r}"])] for r in RANKS]
    out["records_with_rank"] = [[r, int(ranks[f"n_{r}"])] for r in RANKS]
    out["per_source"] = _pairs(_fetch(con, "SELECT source AS label, count(*) AS count FROM records GROUP BY 1 ORDER BY 2 DESC, 1"))
    out["per_license"] = _pairs(_fetch(
        con, "SELECT coalesce(license, 'unknown') AS label, count(*) AS count FROM records GROUP BY 1 ORDER BY 2 DESC, 1"))
    out["per_instrument"] = _pairs(_fetch(
        con, "SELECT instrument AS label, count(*) AS count FROM records WHERE instrument IS NOT NULL "
             "GROUP BY 1 ORDER BY 2 DESC, 1")) if "instrument" in cols else []
    geo = "decimal_latitude IS NOT NULL AND decimal_longitude IS NOT NULL"
    out["with_coordinates"] = int(_scalar(con, f"SELECT count(*) FROM records WHERE {geo}"))
    # one dot per 0.1° cell keeps a million-record page as light as a small one
    points = con.execute(
        "SELECT DISTINCT round(decimal_latitude, 1) AS lat, round(decimal_longitude, 1) AS lon FROM records "
        f"WHERE {geo} ORDER BY hash(lat, lon) LIMIT ?",
        [options.max_points],
    ).fetchall()
    out["points"] = [[float(a), float(b)] for a, b in points]
    out["coordinate_cells"] = int(_scalar(
        con, f"SELECT count(*) FROM (SELECT DISTINCT round(decimal_latitude, 1), round(decimal_longitude, 1) "
             f"FROM records WHERE {geo})"))
    return out


def _rejects(con, has_view: bool, train: Path | None) -> dict[str, Any]:
    """Rejected records per stage and reason: the ``rejects`` view, plus the trainer's rejects
    (``train/rejects.parquet``, which the view does not read) when ``train`` names them."""
    counts: dict[tuple[str, str], int] = {}
    parts = ["SELECT stage, reason FROM rejects"] if has_view else []
    params = []
    if train is not None:
        parts.append("SELECT stage, reason FROM read_parquet(?, hive_partitioning = false)")
        params.append(str(train))
    rows = _fetch(con, f"SELECT stage, reason, count(*) AS count FROM ({' UNION ALL '.join(parts)}) GROUP BY 1, 2",
                  params)
    for r in rows:
        counts[(r["stage"], r["reason"])] = int(r["count"])
    by_stage_reason = sorted(([s, r, n] for (s, r), n in counts.items()), key=lambda x: (-x[2], x[0], x[1]))
    by_stage: dict[str, int] = {}
    for stage, _, n in by_stage_reason:
        by_stage[stage] = by_stage.get(stage, 0) + n
    return {
        "total": sum(counts.values()),
        "by_stage": sorted(([s, n] for s, n in by_stage.items()), key=lambda x: (-x[1], x[0])),
        "by_stage_reason": by_stage_reason,
        "train_included": train is not None,
    }


def train_rejects(root: Path) -> tuple[Path | None, str | None]:
    """``train/rejects.parquet`` when it belongs to the last training (its rows are the
    ``rejected_samples`` of ``train/metrics.json``), else None and, for a file left over from an
    earlier run, a note saying why it is not counted."""
    import pyarrow.parquet as pq

    path = Path(root) / "train" / "rejects.parquet"
    if not path.is_file():
        return None, None
    rows = pq.read_metadata(path).num_rows
    claimed = None
    metrics = path.with_name("metrics.json")
    if metrics.is_file():
        try:
            claimed = json.loads(metrics.read_text()).get("rejected_samples")
        except (ValueError, AttributeError):
            claimed = None
    if isinstance(claimed, int) and claimed != rows:
        return None, (f"train/rejects.parquet holds {rows:,} rows but train/metrics.json reports {claimed:,} rejected "
                      "samples, so it is left from an earlier training and not counted")
    return path, None


def shards_folders(root: Path) -> list[Path]:
    """The data root's shards folders (its subfolders holding webdataset tars with their sidecar
    Parquet), ``shards/`` first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and any(d.glob("*.tar")) and any(d.glob("*.parquet"))]
    return sorted(found, key=lambda d: (d.name != CORPUS_SHARDS, d.name))


def shard_reject_parts(root: Path, folders: list[Path]) -> dict[Path, str | None]:
    """Each part file of the per-folder rejects stages -> the name of the shards folder of this
    data root it holds the rejects of, or None for a folder elsewhere. A part named for a folder's
    own path is that folder's; one named by a folder's base name alone (earlier versions) or with
    the path hash of another place (a data root moved or copied) is that folder's too, unless the
    folder's own part is beside it."""
    exact: dict[str, str] = {}
    if folders:
        from pipeline.stages.download import rejects_part_name  # the name the download stage gives a part

        exact = {rejects_part_name(f): f.name for f in folders}
    names = {f.name for f in folders}
    out: dict[Path, str | None] = {}
    for stage in SHARD_REJECT_STAGES:
        parts = sorted((Path(root) / "rejects" / f"stage={stage}").glob("part-*.parquet"))
        claimed = {exact[p.name] for p in parts if p.name in exact}
        for part in parts:
            if part.name in exact:
                out[part] = exact[part.name]
                continue
            m = _SHARD_PART.fullmatch(part.name)
            base = m.group(1) if m else None
            out[part] = base if base in names and base not in claimed else None
    return out


def _shards_folder(con, folder: Path, curated: bool) -> dict[str, Any]:
    """Counts of one shards folder from its sidecars: shards, attempted, ok, failed, the stored
    image formats and the images that are no curated record (a URL list's)."""
    sides = [str(p) for p in sorted(folder.glob("*.parquet"))]
    src = "read_parquet(?, filename = true, union_by_name = true, hive_partitioning = false)"
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}", [sides]).fetchall()}
    ok = "status = 'ok'"
    listed = f"count(*) FILTER (WHERE {ok} AND key NOT IN (SELECT record_id FROM curated))" if curated \
        else f"count(*) FILTER (WHERE {ok})"
    totals = _fetch(con, f"SELECT count(DISTINCT filename) AS shards, count(*) AS attempted, "
                         f"count(*) FILTER (WHERE {ok}) AS ok, count(*) FILTER (WHERE NOT {ok}) AS failed, "
                         f"{listed} AS without_curated FROM {src}", [sides])[0]
    ext = STORED_EXT_SQL if {"format", "bytes", "stored_bytes", "stored_width", "stored_height"} <= cols else "'jpg'"
    formats = _fetch(con, f"SELECT {ext} AS label, count(*) AS count FROM {src} WHERE {ok} GROUP BY 1 ORDER BY 2 DESC, 1",
                     [sides])
    return {"folder": folder.name, "in_counts": folder.name == CORPUS_SHARDS,
            **{k: int(v) for k, v in totals.items()}, "formats": _pairs(formats), "rejects": []}


def _shards_folders(con, root: Path, views: set[str]) -> dict[str, Any]:
    """Every shards folder of the data root with its counts and the rejects of its part files, and
    the rejects of shards folders elsewhere (parts that name no folder here)."""
    folders = shards_folders(root)
    stats = {f.name: _shards_folder(con, f, "curated" in views) for f in folders}
    parts = shard_reject_parts(root, folders)
    elsewhere: list[list] = []
    if parts:
        rows = _fetch(con, "SELECT filename, stage, reason, count(*) AS count FROM read_parquet(?, filename = true, "
                           "union_by_name = true, hive_partitioning = false) GROUP BY ALL ORDER BY 4 DESC, 2, 3, 1",
                      [[str(p) for p in parts]])
        by_file = {str(p): name for p, name in parts.items()}
        for r in rows:
            name = by_file.get(r["filename"])
            if name is None:
                elsewhere.append([Path(r["filename"]).name, r["stage"], r["reason"], int(r["count"])])
            else:
                stats[name]["rejects"].append([r["stage"], r["reason"], int(r["count"])])
    return {"folders": list(stats.values()), "rejects_elsewhere": elsewhere}


def _downloads(con, options) -> dict[str, Any]:
    hosts = _fetch(
        con,
        "SELECT coalesce(host, '(no host)') AS host, count(*) FILTER (WHERE status = 'ok') AS ok, "
        "count(*) FILTER (WHERE status <> 'ok') AS failed FROM downloads GROUP BY 1 "
        "ORDER BY ok + failed DESC, 1 LIMIT ?",
        [options.max_bars],
    )
    reasons = _fetch(
        con,
        "SELECT coalesce(reason, status) AS label, count(*) AS count FROM downloads WHERE status <> 'ok' "
        "GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    host_reason = _fetch(
        con,
        "SELECT coalesce(host, '(no host)') AS host, coalesce(reason, status) AS reason, count(*) AS count "
        "FROM downloads WHERE status <> 'ok' GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT ?",
        [options.max_bars],
    )
    totals = _fetch(
        con,
        "SELECT count(*) AS attempted, count(*) FILTER (WHERE status = 'ok') AS ok, "
        "coalesce(sum(stored_bytes) FILTER (WHERE status = 'ok'), 0) AS stored_bytes, "
        "count(DISTINCT host) AS hosts FROM downloads",
    )[0]
    shards = _fetch(con, "SELECT shard, attempted, ok, failed FROM shards ORDER BY shard")
    return {
        **{k: int(v) for k, v in totals.items()},
        "by_host": [[r["host"], int(r["ok"]), int(r["failed"])] for r in hosts],
        "by_reason": _pairs(reasons),
        "by_host_reason": [[r["host"], r["reason"], int(r["count"])] for r in host_reason],
        "shards": [[r["shard"], int(r["attempted"]), int(r["ok"]), int(r["failed"])] for r in shards],
    }


def _splits(con) -> list[list] | None:
    if "split" not in columns(con, "curated"):
        return None
    return _pairs(_fetch(con, "SELECT split AS label, count(*) AS count FROM curated GROUP BY 1 ORDER BY 2 DESC, 1"))


def _licenses_and_attribution(con, scope_sql: str, limit: int) -> dict[str, Any]:
    licenses = _pairs(_fetch(
        con, f"SELECT coalesce(license, 'unknown') AS label, count(*) AS count FROM ({scope_sql}) "
             "GROUP BY 1 ORDER BY 2 DESC, 1"))
    sources = _pairs(_fetch(con, f"SELECT source AS label, count(*) AS count FROM ({scope_sql}) GROUP BY 1 ORDER BY 2 DESC, 1"))
    holder = "coalesce(nullif(trim(rights_holder), ''), nullif(trim(creator), ''))"
    rows = _fetch(
        con,
        f"SELECT {holder} AS holder, CASE WHEN {holder} IS NULL THEN source || ' dataset ' || "
        "coalesce(source_dataset, '(unnamed)') END AS dataset, "
        "string_agg(DISTINCT coalesce(license, 'unknown'), ', ' ORDER BY coalesce(license, 'unknown')) AS licenses, "
        f"count(*) AS count FROM ({scope_sql}) GROUP BY 1, 2 ORDER BY count DESC, 1, 2",
    )
    attribution = [
        {"holder": r["holder"], "dataset": r["dataset"], "licenses": r["licenses"], "count": int(r["count"])}
        for r in rows
    ]
    return {
        "total": int(_scalar(con, f"SELECT count(*) FROM ({scope_sql})")),
        "per_license": licenses,
        "per_source": sources,
        "attribution": attribution[:limit],
        "attribution_groups": len(attribution),
        "holders_stated": sum(1 for a in attribution if a["holder"]),
    }


def _run_files(root: Path) -> list[dict]:
    out = []
    for path in sorted(root.glob("runs/*/run.json")):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            out.append({"run_id": path.parent.name, "stage": "(unreadable run.json)"})
    return out


def _runs(con, root: Path, has_view: bool) -> list[dict]:
    """One summary per run.json (run id, stage, counts, versions), oldest first."""
    import duckdb

    raw = None
    if has_view:
        try:
            raw = [json.loads(json.dumps(r, default=str)) for r in _fetch(con, "SELECT * FROM runs")]
        except duckdb.Error:
            raw = None  # run.json shapes DuckDB cannot unify are still provenance worth showing
    if raw is None:
        raw = _run_files(root)
    out = []
    for r in raw:
        counts = r.get("counts") or {}
        out.append({
            "run_id": r.get("run_id"),
            "stage": r.get("stage") or counts.get("stage"),
            "runner": r.get("runner") or counts.get("runner"),
            "in": counts.get("in"),
            "out": counts.get("out"),
            "rejected": counts.get("rejected"),
            "seconds": counts.get("seconds"),
            "versions": r.get("versions") or {},
            "config": r.get("config"),
        })
    return sorted(out, key=lambda r: str(r["run_id"]))


def collect(root: Path, options) -> dict[str, Any]:
    """Every number of the report and the card, from the views that exist under ``root``."""
    from pipeline.query import connect

    root = Path(root)
    con = connect(root)
    try:
        views = view_names(con)
        scope_sql, scope_name = corpus_scope(views)
        train, train_note = train_rejects(root)
        rejects = _rejects(con, "rejects" in views, train) if "rejects" in views or train is not None else None
        return {
            "views": sorted(views),
            "overview": _overview(con, views, rejects["total"] if rejects else None),
            "records": _records(con, options) if "records" in views else None,
            "records_view": "resolved" if "resolved" in views else "raw" if "raw" in views else None,
            "rejects": rejects,
            "train_rejects_note": train_note,
            "shards_folders": _shards_folders(con, root, views),
            "downloads": _downloads(con, options) if "downloads" in views else None,
            "splits": _splits(con) if "curated" in views else None,
            "corpus": {"scope": scope_name,
                       **(_licenses_and_attribution(con, scope_sql, options.max_attribution) if scope_sql else {})},
            "runs": _runs(con, root, "runs" in views) if any(root.glob("runs/*/run.json")) else None,
        }
    finally:
        con.close()


def _label_from_record(record: dict) -> str | None:
    if record.get("species"):
        return record["species"]
    for rank in reversed(RANKS[:-1]):
        if record.get(rank):
            return f"{record[rank]} ({rank})"
    return None


def _thumbnail(data: bytes, side: int) -> tuple[str, int, int] | None:
    """A base64 JPEG of at most ``side`` pixels, or None when the bytes do not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (side, side))  # JPEG: decode at reduced scale, much faster than full size
        img = img.convert("RGB")
        img.thumbnail((side, side))
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii"), img.width, img.height


def _candidates(con, views: set[str], per_taxon: int, max_taxa: int) -> list[dict]:
    if "records" in views:
        return _fetch(
            con,
            f"WITH ok AS (SELECT d.key, d.shard, {TAXON_LABEL} AS taxon, r.license, r.rights_holder, r.creator, "
            "r.source FROM downloads d LEFT JOIN records r ON r.record_id = d.key WHERE d.status = 'ok'), "
            "ranked AS (SELECT *, row_number() OVER (PARTITION BY taxon ORDER BY key) AS i, "
            "count(*) OVER (PARTITION BY taxon) AS n FROM ok) "
            "SELECT * FROM ranked WHERE i <= ? ORDER BY n DESC, taxon NULLS LAST, i LIMIT ?",
            [per_taxon, per_taxon * max_taxa],
        )
    # without records the taxon is read from each sample's json member
    return _fetch(con, "SELECT key, shard FROM downloads WHERE status = 'ok' ORDER BY key LIMIT ?",
                  [per_taxon * max_taxa * 4])


def _read_members(tar_path: Path, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """The image and json members of ``keys`` in one shard, in a single pass over the tar."""
    found: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
            if key in keys and (ext in IMAGE_EXTS or ext == "json"):
                found.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return found


def sample_images(root: Path, options) -> dict[str, Any]:
    """Up to ``samples_per_taxon`` thumbnails for each of the ``max_taxa`` largest taxa in the shards:
    ``{"taxa": [{"taxon", "images": [{key, src, width, height, license, attribution}]}], "undecodable": n}``."""
    from pipeline.query import connect

    root = Path(root)
    con = connect(root)
    try:
        views = view_names(con)
        if "downloads" not in views:
            return {"taxa": [], "undecodable": 0, "missing": 0}
        rows = _candidates(con, views, options.samples_per_taxon, options.max_taxa)
    finally:
        con.close()
    tars = {p.stem: p for p in sorted(root.glob("shards/**/*.tar"))}
    by_shard: dict[str, set[str]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], set()).add(r["key"])
    members: dict[str, dict[str, bytes]] = {}
    for shard, keys in by_shard.items():
        if shard in tars:
            members.update(_read_members(tars[shard], keys))
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    undecodable = missing = 0
    for r in rows:
        got = members.get(r["key"], {})
        image = next((got[e] for e in IMAGE_EXTS if e in got), None)
        if image is None:
            missing += 1
            continue
        record = {}
        if "json" in got:
            try:
                record = json.loads(got["json"])
            except ValueError:
                record = {}
        taxon = _label_from_record(record) or r.get("taxon") or NO_TAXON
        if taxon not in groups and len(groups) >= options.max_taxa:
            continue
        images = groups.setdefault(taxon, [])
        if len(images) >= options.samples_per_taxon:
            continue
        thumb = _thumbnail(image, options.thumb_size)
        if thumb is None:
            undecodable += 1
            continue
        src, w, h = thumb
        holder = record.get("rights_holder") or r.get("rights_holder") or record.get("creator") or r.get("creator")
        images.append({
            "key": r["key"],
            "src": "data:image/jpeg;base64," + src,
            "width": w,
            "height": h,
            "license": record.get("license") or r.get("license") or "unknown",
            "attribution": holder or (record.get("source") or r.get("source") or ""),
        })
    taxa = [{"taxon": t, "images": imgs} for t, imgs in groups.items() if imgs][: options.max_taxa]
    return {"taxa": taxa, "undecodable": undecodable, "missing": missing}
