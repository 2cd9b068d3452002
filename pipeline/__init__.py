"""Stages, runners, config and the command line: the pipeline that moves records through the corpus."""

import schemas.memory  # noqa: F401  (before pyarrow loads: see schemas/memory.py)
