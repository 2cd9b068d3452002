"""Source connectors: one module per source, registered by name for ``biocorpus ingest``."""

from __future__ import annotations

import importlib

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


def get_connector(name: str):
    """Return the connector registered under ``name`` or raise with the list of known ones."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "(none yet)"
        raise KeyError(f"unknown source {name!r}; known sources: {known}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)
