"""Runs the toy map stage as a separate process so a test can kill or interrupt it mid-stage.

``python -m tests.pipeline.killable ROOT RUNNER [WORKERS]``: a Ctrl-C ends it with code 130 and
one line, as the CLI does.
"""

import sys
from pathlib import Path

from pipeline.execute import run_table_stage
from pipeline.runners import make_runner
from tests.pipeline.toystages import TOY_MAP

if __name__ == "__main__":
    root, runner = Path(sys.argv[1]), sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    try:
        run_table_stage(TOY_MAP, None, root, root / "in", root / "out", make_runner(runner, workers=workers),
                        key="toymap")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
