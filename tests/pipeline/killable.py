"""Runs the toy map stage as a separate process so a test can SIGKILL it mid-stage."""

import sys
from pathlib import Path

from pipeline.execute import run_table_stage
from pipeline.runners import make_runner
from tests.pipeline.toystages import TOY_MAP

if __name__ == "__main__":
    root, runner = Path(sys.argv[1]), sys.argv[2]
    run_table_stage(TOY_MAP, None, root, root / "in", root / "out", make_runner(runner, workers=1), key="toymap")
