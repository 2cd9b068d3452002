"""Stage jobs: where each stage reads and writes under the data root, called by the CLI and the demo."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from pipeline.execute import StageResult, run_ingest, run_table_stage
from pipeline.io import atomic_write_json


def _root(cfg) -> Path:
    return Path(cfg.data)


def dataset_slug(input: str | None, options) -> str:
    """The ``dataset=`` folder of an ingest: the input's base name, or a hash of the API query.

    The query's hash is the source's ``query_fingerprint()`` (the options that choose its records:
    taxon, filters, page ids...), not of how they are fetched, so a rerun with a politer rate or
    another timeout is the same dataset, not a second copy of its records; a source without one
    falls back to the hash of all its options.
    """
    if input:
        name = Path(input.rstrip("/")).name or "input"
        name = re.sub(r"\.(zip|tsv|csv|gz|json|txt)$", "", name, flags=re.I)
        return re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:60] or "input"
    name = options.query_fingerprint() if options is not None else None
    if name is None:
        from pipeline.config import config_hash

        name = config_hash(options)[:10]
    return f"query-{name}"


def ingest(cfg, runner, source: str, input: str | None, dataset: str, force: bool = False) -> StageResult:
    from sources import get_connector

    connector = get_connector(source)
    options = getattr(cfg.sources, source)
    default_cache = f"data/cache/{source}"
    if getattr(options, "cache_dir", None) == default_cache:
        # the connector's cache follows the data root unless the config sets it
        options = options.model_copy(update={"cache_dir": str(_root(cfg) / "cache" / source)})
    return run_ingest(connector, options, input, _root(cfg), runner, dataset, cfg, force)


def resolve(cfg, runner, force: bool = False) -> StageResult:
    """raw/ → resolved/: every record gets its lineage and evidence (unresolved ones keep match_type none)."""
    from pipeline.stages.resolve import STAGE, unresolved_report

    root = _root(cfg)
    options = cfg.resolve
    if options.data_root == "data":  # a backbone given by name is looked up under this data root
        options = options.model_copy(update={"data_root": str(root)})
    from taxonomy.backbone import backbone_manifest, find_backbone

    folder = find_backbone(options.backbone, Path(options.data_root))
    manifest = backbone_manifest(folder)
    # (the folder relative to the data root when it is in it: a moved root still holds a finished resolve)
    where = folder.relative_to(root) if folder.is_relative_to(root) else folder
    backbone = {"backbone": {"folder": str(where), "name": manifest.get("name"),
                             "version": manifest.get("version"), "source_sha256": manifest.get("source_sha256"),
                             "rows": manifest.get("rows")}}
    result = run_table_stage(STAGE, options, root, root / "raw", root / "resolved", runner, cfg, force=force,
                             depends_on=backbone)
    if not result.skipped:
        import pyarrow as pa
        import pyarrow.dataset as pads
        import pyarrow.parquet as pq

        from pipeline.io import atomic_write_parquet, parquet_files

        # only what the report groups by, and only the unresolved rows, a file at a time: the
        # resolved table itself can be far larger than memory
        unresolved = pads.field("match_type").is_null() | (pads.field("match_type") == "none")
        parts = [pq.read_table(f, columns=["verbatim_name", "match_type", "match_note"], filters=unresolved)
                 for f in parquet_files(root / "resolved")]
        report = unresolved_report(pa.concat_tables(parts, promote_options="default") if parts else pa.table({}))
        atomic_write_parquet(report, root / "reports" / "unresolved.parquet")
        result.stats["unresolved_names"] = report.num_rows
    return result


def curate(cfg, runner, force: bool = False) -> dict:
    """resolved/ → curated/split=<s>/chunk-<n>.parquet through filter, dedup and balance stages.

    The local runner takes the fused plan (decision columns first, one pass over the survivors),
    whose chunks and rejects equal the staged chain's (tests/curate/test_fused.py), unless
    ``[curate] local_plan`` says otherwise or (``auto``) its decisions would not fit in memory;
    other runners run the chain of table stages.
    """
    if runner.name == "local":
        from pipeline.curate import fused
        from pipeline.io import count_rows

        root = _root(cfg)
        plan = cfg.curate.local_plan
        if plan == "auto":
            rows = count_rows(root / "resolved")
            plan = "fused" if fused.fits(rows) else "staged"
            if plan == "staged":
                need, memory = fused.memory_needed(rows)
                print(f"curate: {rows:,} records would need about {need / 2**30:.0f} GiB for the fused plan, this "
                      f"machine has {memory / 2**30:.0f} GiB: running the staged plan (bounded memory, slower; "
                      "`[curate] local_plan` chooses)", file=sys.stderr)
        if plan == "fused":
            return fused.curate_fused(root / "resolved", root, cfg.curate, force=force, config=cfg,
                                      progress=runner.progress)
    return curate_staged(cfg, runner, force)


def curate_staged(cfg, runner, force: bool = False) -> dict:
    """The chain of table stages (filter, two dedup layers, balance) and the split step, on any
    runner: what ``curate`` runs on Beam, and what the fused plan is tested against."""
    from pipeline.curate.hashing import HASH_VERSION
    from pipeline.stages import curate as c

    root = _root(cfg)
    work = root / "work" / "curate"
    steps = [("curate-filter", c.FILTER_STAGE, root / "resolved", work / "filtered"),
             ("curate-dedup-record", c.DEDUP_RECORD_STAGE, work / "filtered", work / "dedup-record"),
             ("curate-dedup-photo", c.DEDUP_PHOTO_STAGE, work / "dedup-record", work / "dedup-photo"),
             ("curate-balance", c.BALANCE_STAGE, work / "dedup-photo", work / "balanced")]
    stats: dict[str, Any] = {}
    for key, stage, src, dst in steps:
        res = run_table_stage(stage, cfg.curate, root, src, dst, runner, cfg, key=key, force=force,
                              depends_on={"hash_version": HASH_VERSION})
        stats[key] = res.stats
        force = force or not res.skipped  # a redone step invalidates the ones after it
    from pipeline.curate.balance import balance_report_of
    from pipeline.io import parquet_files

    stats["balance"] = balance_report_of(parquet_files(root / "rejects" / "stage=curate-balance"))
    stats["curate-split"] = c.write_splits(work / "balanced", root / "curated", cfg.curate, force=force,
                                           progress=getattr(runner, "progress", False))
    atomic_write_json(root / "curated" / "_curate_stats.json", stats)
    return stats


def download(cfg, urls: Path | None = None, output: Path | None = None, retry_failed: bool = False) -> dict:
    """curated/ (or a URL list) → shards/{split}-{n:06d}.tar + sidecar Parquet per shard."""
    from pipeline.stages.download import run_download

    root = _root(cfg)
    options = cfg.download.model_copy(update={"retry_failed": retry_failed}) if retry_failed else cfg.download
    source = urls if urls is not None else root / "curated"
    if urls is not None and not Path(urls).exists():
        raise FileNotFoundError(f"download: --urls {urls} does not exist; check the path")
    if not Path(source).exists():
        raise FileNotFoundError(f"download: {source} does not exist; run `biocorpus curate` first or pass --urls")
    if urls is None:
        _check_curated_rows(source)
    out = output or root / "shards"
    if cfg.runner.name == "beam":
        from pipeline.runners.beam import quiet_beam_logging
        from pipeline.stages.download import download_beam

        quiet_beam_logging()
        stats = download_beam(source, out, options, list(cfg.runner.beam_args))
    else:
        stats = run_download(source, out, options, progress=sys.stderr.isatty())
    from pipeline.stages.download import failed_rejects

    # failed images are the download stage's rejects, beside every other stage's
    _write_shard_rejects(failed_rejects(out), root / "rejects" / "stage=download", Path(out))
    stats["dedup_bytes"] = dedup_downloaded_images(cfg, Path(out))
    return stats


def _check_curated_rows(curated: Path) -> None:
    """Stop with what to do when curate kept no record (download would find no column to read)."""
    import json

    from pipeline.io import count_rows

    if count_rows(curated):
        return
    stats = curated / "_curate_stats.json"
    seen = json.loads(stats.read_text()).get("curate-filter", {}).get("in") if stats.exists() else None
    kept = f" (curate kept 0 of {seen:,} records)" if isinstance(seen, int) else ""
    raise ValueError(f"download: {curated} holds no rows{kept}: nothing to download. `biocorpus query \"SELECT "
                     "stage, reason, count(*) FROM rejects GROUP BY ALL\"` says why they were rejected; change the "
                     "[curate] options and run `biocorpus curate` again")


def _write_shard_rejects(rejects, folder: Path, shards_dir: Path) -> None:
    """Write the rejects of one shards folder to its own part file in ``folder``
    (:func:`pipeline.stages.download.rejects_part_name`: unique per shards folder, the same on a
    rerun, so a rerun replaces it). The part of an earlier version, named by the folder's base name
    alone, is removed when its rows are all keys of this folder (it was this folder's, or held the
    same rows): kept, it would count them twice; one of another folder of that name stays."""
    import pyarrow.parquet as pq

    from pipeline.io import atomic_write_parquet, read_dataset
    from pipeline.stages.download import rejects_part_name

    atomic_write_parquet(rejects, folder / rejects_part_name(shards_dir))
    legacy = folder / f"part-{shards_dir.name}.parquet"
    if legacy.exists():
        keys = set(read_dataset(shards_dir, columns=["key"]).column("key").to_pylist()) \
            if any(shards_dir.glob("*.parquet")) else set()
        if set(pq.read_table(legacy, columns=["record_id"]).column("record_id").to_pylist()) <= keys:
            legacy.unlink()


def dedup_downloaded_images(cfg, shards_dir: Path) -> dict:
    """Curate's layer 3, once the bytes are known: identical sha256, near-identical perceptual hash,
    and images of the evaluation sets. The shards stay as written; the duplicates are listed in
    ``shards/_duplicates.json`` (the trainer skips them) and rejected with a reason."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.io import read_dataset
    from pipeline.stages.curate import dedup_downloaded

    status = read_dataset(shards_dir, columns=["key", "status", "sha256", "phash"])  # not every sidecar column
    if not status.num_rows:
        return {"in": 0, "out": 0, "rejected": 0}
    ok = status.filter(pc.equal(status.column("status"), "ok"))
    table = ok.select(["key", "sha256", "phash"]).rename_columns(["record_id", "sha256", "phash"])
    result = dedup_downloaded(table, cfg.curate)
    rejects = result.rejects.set_column(
        result.rejects.schema.get_field_index("stage"), "stage",
        pa.array(["curate_dedup_bytes"] * result.rejects.num_rows, pa.string()))
    _write_shard_rejects(rejects, _root(cfg) / "rejects" / "stage=curate-dedup-bytes", shards_dir)
    atomic_write_json(shards_dir / "_duplicates.json", {
        "keys": sorted(rejects.column("record_id").to_pylist()),
        "why": "curate layer 3: same bytes, near-duplicate or evaluation-set image; see rejects/stage=curate-dedup-bytes"})
    reasons = pc.value_counts(rejects.column("reason")).to_pylist() if rejects.num_rows else []
    return {"in": table.num_rows, "out": result.out.num_rows, "rejected": rejects.num_rows,
            "rejected_by_reason": {r["values"]: r["counts"] for r in reasons}}


def train(cfg) -> dict:
    """shards/ → train/: checkpoints and metrics.json of the hierarchical classifier."""
    from pipeline.stages.train import run_train

    root = _root(cfg)
    if not (root / "shards").exists():
        raise FileNotFoundError(f"train: {root / 'shards'} does not exist; run `biocorpus download` first")
    return run_train(root / "shards", root / "train", cfg.train)


def report(cfg, output: Path | None = None) -> Path:
    from pipeline.stages.report import run_report

    return run_report(cfg, output)


def load_plan(path: Path) -> list[dict]:
    """A plan file lists the inputs to ingest: ``[[ingest]] source = "gbif"  input = "..."``."""
    try:
        plan = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"plan {path}: {exc}") from exc
    from sources import checked_input

    items = plan.get("ingest", [])
    if not items:
        raise ValueError(f"plan {path}: no [[ingest]] entry; list the inputs as [[ingest]] tables with "
                         "`source` and `input`")
    checked = []
    for i, item in enumerate(items):  # every entry checked before the first one is ingested
        if "source" not in item:
            raise ValueError(f"plan {path}: [[ingest]] entry {i + 1} has no `source`")
        unknown = set(item) - {"source", "input", "dataset"}
        if unknown:
            raise ValueError(f"plan {path}: [[ingest]] entry {i + 1} has unknown keys {sorted(unknown)}")
        try:
            checked.append({**item, "input": checked_input(item["source"], item.get("input"))})
        except ValueError as exc:
            raise ValueError(f"plan {path}: [[ingest]] entry {i + 1}: {exc}") from None
    return checked


def everything(cfg, runner, plan: list[dict], skip_train: bool = False) -> dict:
    """Every stage in order; each skips itself when already complete."""
    summary: dict[str, Any] = {"ingest": {}}
    for item in plan:
        src, inp = item["source"], item.get("input")
        options = getattr(cfg.sources, src)
        res = ingest(cfg, runner, src, inp, item.get("dataset") or dataset_slug(inp, options))
        summary["ingest"][res.stage] = res.stats
    summary["resolve"] = resolve(cfg, runner).stats
    summary["curate"] = curate(cfg, runner)
    summary["download"] = download(cfg)
    if not skip_train:
        summary["train"] = train(cfg)
    summary["report"] = str(report(cfg))
    return summary
