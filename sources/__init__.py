"""Source connectors: one module per source, registered by name for ``biocorpus ingest``."""

from __future__ import annotations

import importlib
from pathlib import Path

import schemas.memory  # noqa: F401  (before pyarrow loads: see schemas/memory.py)

# name -> "module:attribute" of the connector object; imported lazily so a source's
# dependencies (pygbif, aiohttp) load only when that source is used.
REGISTRY: dict[str, str] = {
    "gbif": "sources.gbif:CONNECTOR",
    "inaturalist": "sources.inaturalist:CONNECTOR",
    "eol": "sources.eol:CONNECTOR",
    "ecotaxa": "sources.ecotaxa:CONNECTOR",
    "ifcb": "sources.ifcb:CONNECTOR",
    "ifcb_dashboard": "sources.ifcb_dashboard:CONNECTOR",
    "folders": "sources.folders:CONNECTOR",
}


URL_SOURCES = {"gbif", "inaturalist", "ifcb_dashboard"}  # the sources whose input may be a URL


def checked_input(source: str, input: str | None) -> str | None:
    """``input`` as the ``source`` connector takes it (a ``file://`` URL as its path), or a
    ``ValueError`` saying what is wrong: an unknown source, a URL for a source that reads local
    files only, a local path that does not exist."""
    if source not in REGISTRY:
        raise ValueError(f"unknown source {source!r}; known sources: {', '.join(sorted(REGISTRY))}")
    if not input:
        return input
    if input.startswith("file://"):
        from urllib.parse import unquote, urlparse

        input = unquote(urlparse(input).path)
    if "://" in input:
        if source not in URL_SOURCES:
            hint = "; for an IFCB dashboard use the ifcb_dashboard source" if source == "ifcb" else ""
            raise ValueError(f"the {source} source reads local files only: download {input} and pass its path "
                             f"with --input{hint}")
    elif not Path(input).exists():
        raise ValueError(f"input {input} does not exist")
    return input


def get_connector(name: str):
    """Return the connector registered under ``name`` or raise with the list of known ones."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "(none yet)"
        raise KeyError(f"unknown source {name!r}; known sources: {known}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)
