"""Image fetch, decode and resize; webdataset shard writer with sidecar manifests; reader for trainers."""

import schemas.memory  # noqa: F401  (before pyarrow loads: see schemas/memory.py)
