"""Pulls an iNaturalist API v1 query into a data root as a separate process, so a test can kill it mid-pull.

``python -m tests.sources.killable_pull ROOT API_URL``: 5 observations a page, at most 50 pages.
"""

import sys
from pathlib import Path

from pipeline.execute import run_ingest
from pipeline.jobs import dataset_slug
from pipeline.runners import make_runner
from sources.inaturalist import CONNECTOR, Options

if __name__ == "__main__":
    root, url = Path(sys.argv[1]), sys.argv[2]
    options = Options(api_base_url=url, per_page=5, rate=100, cache_dir=str(root / "cache"))
    run_ingest(CONNECTOR, options, None, root, make_runner("local", 1, progress=False), dataset_slug(None, options))
