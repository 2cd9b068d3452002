"""Taxonomy: backbone loaders, name normalisation, the resolver, vernacular names, non-living classes."""

import schemas.memory  # noqa: F401  (before pyarrow loads: see schemas/memory.py)
