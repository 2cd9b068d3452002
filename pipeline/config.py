"""Configuration: one TOML file → one validated, frozen ``Config``; secrets only from the environment.

Each stage and source module defines its own ``Options`` model; this module composes them into
one config, so a wrong key or type fails at load time with a message naming the key.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import textwrap
import tomllib
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

# config table -> "module:Options"; imported lazily so e.g. torch never loads for `ingest`
STAGE_OPTIONS: dict[str, str] = {
    "resolve": "pipeline.stages.resolve:Options",
    "curate": "pipeline.stages.curate:Options",
    "download": "pipeline.stages.download:Options",
    "train": "pipeline.stages.train:Options",
    "report": "pipeline.stages.report:Options",
}
# sources are listed in sources.REGISTRY; their Options live beside the connector
SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and says what to do."""


class RunnerOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: Literal["local", "beam"] = Field("local", description="local (DuckDB/Polars) or beam")
    workers: int = Field(0, ge=0, description="local worker processes; 0 = all cores")
    beam_args: tuple[str, ...] = Field(
        ("--runner=FnApiRunner",),
        description="Beam pipeline options, e.g. ['--runner=DataflowRunner', '--project=...']",
    )


def _import(spec: str):
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


@cache
def _config_model() -> type[BaseModel]:
    from sources import REGISTRY

    source_fields: dict[str, Any] = {}
    for name, spec in REGISTRY.items():
        opts = _import(spec).Options
        source_fields[name] = (opts, Field(default_factory=opts))
    Sources = create_model(
        "Sources", __config__=ConfigDict(frozen=True, extra="forbid"), **source_fields
    )
    stage_fields: dict[str, Any] = {}
    for name, spec in STAGE_OPTIONS.items():
        try:
            opts = _import(spec)
        except ModuleNotFoundError as exc:
            if exc.name != spec.split(":")[0]:
                raise
            continue  # that stage is not built yet; its table is then an unknown key
        stage_fields[name] = (opts, Field(default_factory=opts))
    return create_model(
        "Config",
        __config__=ConfigDict(frozen=True, extra="forbid"),
        data=(str, Field("data", description="data root: where every stage reads and writes")),
        runner=(RunnerOptions, Field(default_factory=RunnerOptions)),
        sources=(Sources, Field(default_factory=Sources)),
        **stage_fields,
    )


def _check_no_secrets(table: dict, prefix: str = "") -> None:
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if any(w in key.lower() for w in SECRET_WORDS):
            raise ConfigError(
                f"config key `{dotted}` looks like a secret; secrets are read from the environment "
                f"only (e.g. GBIF_USER / GBIF_PWD / GBIF_EMAIL); remove it from the file"
            )
        if isinstance(value, dict):
            _check_no_secrets(value, dotted + ".")


def _explain(err: ValidationError, origin: str, given: set[str] = frozenset()) -> ConfigError:
    """One line per error; a key set by a command-line option (``given``) says so."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key `{key}` (check the spelling; `biocorpus config` prints every key)")
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):  # a check of a whole section
            lines.append(f"config `[{key}]`: {e['msg'].removeprefix('Value error, ')}")
        else:
            got = e.get("input")
            where = ", given on the command line" if key in given else ""
            lines.append(f"config key `{key}`{where}: {e['msg']} (got {got!r})")
    return ConfigError(f"invalid config {origin}:\n  " + "\n  ".join(lines))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Read ``path`` (TOML; optional), apply ``overrides`` (dotted keys), validate, freeze."""
    raw: dict[str, Any] = {}
    origin = "(defaults)"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found; pass --config PATH or omit it for defaults")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        origin = f"in {p}"
    _check_no_secrets(raw)
    given = {k for k, v in (overrides or {}).items() if v is not None}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return _config_model().model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, origin, given) from None


def config_hash(section: BaseModel | None) -> str:
    """Stable short hash of an options section (part of a stage's fingerprint), without the fields
    marked ``json_schema_extra={"fingerprint": False}`` (where to find an input that the
    fingerprint pins otherwise, such as resolve's ``data_root``)."""
    data = section.model_dump(mode="json") if section is not None else None
    if data is not None:
        for name, field in type(section).model_fields.items():
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("fingerprint") is False:
                data.pop(name, None)
    payload = json.dumps(data, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def env_secret(name: str, required_for: str) -> str:
    """A secret from the environment; the error says which variable to set and why."""
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{required_for} needs the environment variable {name}; export it and rerun")
    return value


def default_config_toml() -> str:
    """Every key with its default and, above it, its description as a comment, as TOML (printed by
    ``biocorpus config``)."""
    model = _config_model()
    return _to_toml(model().model_dump(mode="json", by_alias=True), model)


def config_toml(cfg: BaseModel) -> str:
    """A loaded config's every value as TOML, with the descriptions (``biocorpus config -c FILE``)."""
    return _to_toml(cfg.model_dump(mode="json", by_alias=True), type(cfg))


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _fields(model: type[BaseModel] | None) -> dict[str, tuple[str | None, type[BaseModel] | None]]:
    """Per key (its alias where it has one): the field's description and, for a nested section, its model."""
    out: dict[str, tuple[str | None, type[BaseModel] | None]] = {}
    for name, field in (model.model_fields.items() if model is not None else ()):
        kind = field.annotation
        out[field.alias or name] = (field.description,
                                    kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None)
    return out


def _comment(text: str | None, width: int = 98) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, width)] if text else []


def _to_toml(d: dict, model: type[BaseModel] | None = None, prefix: str = "") -> str:
    fields = _fields(model)
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    out = []
    if prefix and scalars:
        out.append(f"[{prefix}]")
    for k, v in scalars.items():
        out += _comment(fields.get(k, (None, None))[0])
        out.append(f"# {_key(k)} = (unset)" if v is None else f"{_key(k)} = {json.dumps(v)}")
    if scalars:
        out.append("")
    for k, v in tables.items():
        description, sub = fields.get(k, (None, None))
        path = f"{prefix}.{_key(k)}" if prefix else _key(k)
        if sub is None:  # a table of the user's keys (splits, hosts): its description goes above it
            out += _comment(description)
            if not v:  # empty by default: name the table, so the user knows where such keys go
                out += [f"# [{path}]", ""]
                continue
        out.append(_to_toml(v, sub, path))
    return "\n".join(out)
