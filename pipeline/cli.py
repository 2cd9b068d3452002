"""The ``biocorpus`` command line: one subcommand per stage, each a thin call into pipeline/."""

from __future__ import annotations

import errno
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from pipeline.config import ConfigError, default_config_toml, load_config

app = typer.Typer(
    help="Build unified biodiversity image corpora: ingest → resolve → curate → download → train → report.\n\n"
    "Every stage reads and writes Parquet under the data root (--data, default data/) that DuckDB can query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file (see `biocorpus config`)")]
DataOpt = Annotated[str | None, typer.Option("--data", help="data root (overrides the config's `data`)")]
RunnerOpt = Annotated[str | None, typer.Option("--runner", help="local (default) or beam")]
ForceOpt = Annotated[bool, typer.Option("--force", help="redo the stage even if it is already complete")]
BEAM_HELP = "Arguments after `--` go to Beam, e.g. `-- --runner=DataflowRunner --project=P --region=R`."


class StageCommand(TyperCommand):
    """A stage's command: what follows ``--`` goes to Beam (``ctx.meta["beam_args"]``); an unknown
    option before it is an error, as in every other command (a mistyped ``--forse`` must not pass
    silently as a Beam argument)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        beam: list[str] = []
        if "--" in args:
            cut = args.index("--")
            args, beam = args[:cut], args[cut + 1:]
        ctx.meta["beam_args"] = beam
        return super().parse_args(ctx, args)


def _http_failure(source: str, exc: Exception) -> str:
    """The one line for an API request that failed for good: what happened and what to do."""
    advice = exc.advice if getattr(exc, "advice", None) is not None else _http_advice(getattr(exc, "status", None))
    return f"{source}: {exc}" + (f"; {advice}" if advice else "")


def _http_advice(status: int | None) -> str:
    """What to do after an API request failed for good, by its HTTP status."""
    if status in (401, 403):
        return "check the credentials (for GBIF: GBIF_USER, GBIF_PWD, GBIF_EMAIL) and that the account may do this"
    if status == 404:
        return "the API has no such resource: check the query options and api_base_url"
    return ("check the network (or api_base_url), or ingest a downloaded file with --input PATH; run the same "
            "command again to go on from what was already committed")


def _beam_args(ctx: typer.Context) -> list[str]:
    return list(ctx.meta.get("beam_args", ()))


def _config(config: Path | None, data: str | None, runner: str | None, extra_args: list[str] | None = None,
            overrides: dict | None = None):
    ov = {"data": data, "runner.name": runner, **(overrides or {})}
    if extra_args:
        ov["runner.beam_args"] = list(extra_args)
    try:
        cfg = load_config(config, ov)
    except ConfigError as exc:
        _fail(str(exc))
    if extra_args and cfg.runner.name != "beam":
        typer.secho(f"warning: the {cfg.runner.name} runner ignores the Beam arguments after `--` "
                    f"({' '.join(extra_args)}); add --runner beam to use them", fg=typer.colors.YELLOW, err=True)
    return cfg


def _fail(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors(*more: type[Exception], api: str | None = None):
    """Errors caused by the input or the data root end the command with their message, not a
    traceback; with ``api`` (the source, or the command, that called an API) so does an API
    request that failed for good, with what to do."""
    api_errors: tuple[type[Exception], ...] = ()
    if api is not None:
        from sources.http import HttpError

        api_errors = (HttpError,)
    try:
        yield
    except api_errors as exc:
        _fail(_http_failure(api, exc))
    except (FileNotFoundError, ValueError, *more) as exc:
        _fail(str(exc))
    except OSError as exc:  # a data root that cannot be written, a full disk...
        _fail(_os_error(exc))


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {where}{what}; choose a writable data root with --data (or fix its permissions)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}{what}; free some space and run the same command again (it resumes)"
    return f"{where}{what}"


def _runner(cfg):
    from pipeline.runners import make_runner

    return make_runner(cfg.runner.name, cfg.runner.workers, tuple(cfg.runner.beam_args))


def _print_stats(result) -> None:
    typer.echo(json.dumps(result.stats, indent=2, sort_keys=True))


@app.command(cls=StageCommand, epilog=BEAM_HELP)
def ingest(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="gbif, inaturalist, eol, ecotaxa, ifcb, ifcb_dashboard, folders")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="file, folder or URL to read; "
                                                  "omit for the source's API query from the config")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="name of the dataset folder (default: the "
                                                   "input's base name, or a hash of the API query)")] = None,
    config: ConfigOpt = None, data: DataOpt = None, runner: RunnerOpt = None, force: ForceOpt = False,
):
    """Read a source into records: raw/source=<name>/dataset=<input>/."""
    from pipeline import jobs
    from sources import checked_input

    cfg = _config(config, data, runner, _beam_args(ctx))
    try:
        input = checked_input(source, input)
    except ValueError as exc:
        _fail(str(exc))
    options = getattr(cfg.sources, source)
    with _user_errors(api=source):
        slug = jobs.dataset_slug(dataset, options) if dataset else jobs.dataset_slug(input, options)
        result = jobs.ingest(cfg, _runner(cfg), source, input, slug, force)
    if not result.skipped and result.stats.get("in", 0) == 0:
        what = (f"{input} gave no records and no rejects; check that {source} is the source for it (`biocorpus "
                "ingest --help` lists what each source reads)" if input else
                f"the {source} query gave no records; check its options ([sources.{source}] in the config, "
                "`biocorpus config` lists them)")
        typer.secho(f"warning: {what}", fg=typer.colors.YELLOW, err=True)
    _print_stats(result)


@app.command(cls=StageCommand, epilog=BEAM_HELP)
def resolve(ctx: typer.Context, config: ConfigOpt = None, data: DataOpt = None, runner: RunnerOpt = None,
            force: ForceOpt = False):
    """Resolve every record's name to a 7-rank lineage: raw/ → resolved/."""
    from pipeline import jobs

    cfg = _config(config, data, runner, _beam_args(ctx))
    with _user_errors():
        result = jobs.resolve(cfg, _runner(cfg), force)
    _print_stats(result)


@app.command(cls=StageCommand, epilog=BEAM_HELP)
def curate(ctx: typer.Context, config: ConfigOpt = None, data: DataOpt = None, runner: RunnerOpt = None,
           force: ForceOpt = False):
    """Filter, deduplicate, balance, split, caption and chunk: resolved/ → curated/."""
    from pipeline import jobs

    cfg = _config(config, data, runner, _beam_args(ctx))
    with _user_errors():
        stats = jobs.curate(cfg, _runner(cfg), force)
    typer.echo(json.dumps(stats, indent=2, sort_keys=True))


@app.command(cls=StageCommand, epilog=BEAM_HELP)
def download(
    ctx: typer.Context,
    urls: Annotated[Path | None, typer.Option("--urls", help="plain URL list (Parquet or CSV with `url`, "
                                                 "optional `caption`, `key`) instead of curated/")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="shards folder (default <data>/shards)")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="retry only images that failed")] = False,
    size: Annotated[int | None, typer.Option("--size", help="target side in pixels")] = None,
    resize_mode: Annotated[str | None, typer.Option("--resize-mode", help="longest, shortest, center_crop, none")] = None,
    shard_size: Annotated[int | None, typer.Option("--shard-size", help="images per shard")] = None,
    processes: Annotated[int | None, typer.Option("--processes", help="decode processes")] = None,
    host_rate: Annotated[float | None, typer.Option("--host-rate", help="requests/s per host")] = None,
    host_concurrency: Annotated[int | None, typer.Option("--host-concurrency", help="requests at once per host")] = None,
    allow_loopback: Annotated[bool | None, typer.Option("--allow-loopback", help="allow 127.0.0.1 (local mirrors)")] = None,
    reuse_from: Annotated[str | None, typer.Option("--reuse-from", help="shards folder of an earlier download: copy "
                                                   "the images it holds (same key and URL) instead of fetching them "
                                                   "again")] = None,
    config: ConfigOpt = None, data: DataOpt = None, runner: RunnerOpt = None,
):
    """Fetch images politely into webdataset shards: curated/ → shards/."""
    from pipeline import jobs

    overrides = {"download.size": size, "download.resize_mode": resize_mode, "download.shard_size": shard_size,
                 "download.processes": processes, "download.host_rate": host_rate,
                 "download.host_concurrency": host_concurrency, "download.allow_loopback": allow_loopback,
                 "download.reuse_from": reuse_from}
    cfg = _config(config, data, runner, _beam_args(ctx), overrides)
    with _user_errors():
        stats = jobs.download(cfg, urls, output, retry_failed)
    typer.echo(json.dumps(stats, indent=2, sort_keys=True, default=str))


@app.command()
def train(
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="passes over the train split")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="model input side in pixels")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="stop (with a checkpoint) at this step")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="DataLoader worker processes")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="auto (continue from the last checkpoint), "
                                                  "never, or a checkpoint path")] = None,
    config: ConfigOpt = None, data: DataOpt = None,
):
    """Train the hierarchical taxonomic classifier on the shards: shards/ → train/."""
    from pipeline import jobs

    overrides = {"train.device": device, "train.epochs": epochs, "train.resume": resume,
                 "train.batch_size": batch_size, "train.image_size": image_size, "train.max_steps": max_steps,
                 "train.workers": workers}
    cfg = _config(config, data, None, None, overrides)
    with _user_errors(ImportError, RuntimeError):
        metrics = jobs.train(cfg)
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True, default=str))


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the views raw, resolved, records, curated, taxa, rejects, "
                                       "downloads, shards, runs")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv, json or parquet:PATH")] = "table",
    config: ConfigOpt = None, data: DataOpt = None,
):
    """Query the data root with DuckDB, e.g. `SELECT family, count(*) FROM records GROUP BY 1`."""
    from pipeline.query import run_query

    cfg = _config(config, data, None)
    try:
        run_query(Path(cfg.data), sql, fmt)
    except Exception as exc:  # duckdb raises many error types; all are the user's SQL or data root
        _fail(f"{exc}")


@app.command()
def report(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder (default <data>/report)")] = None,
    config: ConfigOpt = None, data: DataOpt = None,
):
    """Write the corpus report (HTML with plots), dataset card and Croissant metadata."""
    from pipeline import jobs

    cfg = _config(config, data, None)
    if not Path(cfg.data).is_dir():
        _fail(f"no data root at {cfg.data}: run a stage first, or pass --data PATH")
    with _user_errors():
        out = jobs.report(cfg, output)
    typer.echo(f"report written to {out}")


@app.command(name="run", cls=StageCommand, epilog=BEAM_HELP)
def run_all(
    ctx: typer.Context,
    plan: Annotated[Path | None, typer.Option("--plan", help="TOML file: a list of \\[\\[ingest]] tables, each "
                                               "with `source` and `input`")] = None,
    skip_train: Annotated[bool, typer.Option("--skip-train", help="stop after the shards")] = False,
    config: ConfigOpt = None, data: DataOpt = None, runner: RunnerOpt = None,
):
    """Run every stage in order (ingest each input, resolve, curate, download, train, report)."""
    from pipeline import jobs

    cfg = _config(config, data, runner, _beam_args(ctx))
    if plan is None:
        _fail("--plan PATH is required: a TOML file of [[ingest]] entries with `source` and `input`")
    with _user_errors(api="run"):
        summary = jobs.everything(cfg, _runner(cfg), jobs.load_plan(plan), skip_train=skip_train)
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@app.command(name="config")
def show_config(config: ConfigOpt = None):
    """Print every config key with its default (or the values of --config), as TOML."""
    if config is not None:
        from pipeline.config import config_toml

        typer.echo(config_toml(_config(config, None, None)))
    else:
        typer.echo(default_config_toml())


@app.command()
def backbone(
    kind: Annotated[str, typer.Argument(help="gbif (Backbone DwC-A), coldp (Catalogue of Life), inat (taxa "
                                         "table), inat-dwca (iNaturalist taxonomy DwC-A)")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="backbone archive or folder; omitted for "
                                                  "gbif: download the current GBIF Backbone release")] = None,
    url: Annotated[str | None, typer.Option("--url", help="where to download from when --input is omitted")] = None,
    version: Annotated[str | None, typer.Option("--version", help="version label stored with it")] = None,
    config: ConfigOpt = None, data: DataOpt = None,
):
    """Load a taxonomic backbone (GBIF, Catalogue of Life, iNaturalist) into versioned Parquet."""
    from taxonomy.cli import build_backbone_cli

    cfg = _config(config, data, None)
    if input is None and kind != "gbif" and url is None:
        _fail(f"backbone {kind}: pass --input PATH (or --url to download it)")
    with _user_errors():
        if input is None:
            from taxonomy.backbone import DEFAULT_GBIF_URL, fetch_backbone

            input = str(fetch_backbone(url or DEFAULT_GBIF_URL, Path(cfg.data) / "downloads" / f"backbone-{kind}.zip"))
        build_backbone_cli(kind, Path(input), Path(cfg.data), version)  # (it says where it wrote the backbone)


def _mount_names() -> None:
    try:
        from taxonomy.cli import names_app
    except ImportError:
        return
    app.add_typer(names_app, name="names", help="Parse or resolve name lists (one a line) to TSV.")


_mount_names()


def main() -> None:
    """Console entry: a stage whose module is not built yet says so instead of a traceback."""
    try:
        app()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(("pipeline.", "sources.", "taxonomy.", "shards.")):
            typer.secho(f"error: {exc.name} is not built yet in this version of biocorpus", fg="red", err=True)
            sys.exit(3)
        raise
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as exc:  # typer ends a Ctrl-C with exit code 130 and says nothing
        if exc.code == 130:
            _interrupted()
        raise
    except RuntimeError as exc:  # Beam wraps a Ctrl-C inside a transform in a RuntimeError
        if "KeyboardInterrupt" not in str(exc):
            raise
        _interrupted()


def _interrupted() -> None:
    typer.secho("interrupted; run the same command again to resume where it stopped", fg="yellow", err=True)
    sys.exit(130)
