"""``biocorpus train`` as a user meets it: one-line errors, and what a rerun says."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from pipeline.cli import app  # noqa: E402

pytestmark = pytest.mark.train

cli = CliRunner()
TINY = "[train]\nwidth = 8\nstages = 2\nthreads = 1\naugment = false\nshuffle_buffer = 16\n"
FLAGS = ["--epochs", "1", "--image-size", "32", "--batch-size", "6", "--workers", "0"]


@pytest.fixture()
def root(tmp_path, shards_dir):
    shutil.copytree(shards_dir, tmp_path / "data" / "shards")
    (tmp_path / "tiny.toml").write_text(TINY)
    return tmp_path


def _train(root, *args):
    return cli.invoke(app, ["train", "--data", str(root / "data"), "--config", str(root / "tiny.toml"), *FLAGS, *args])


@pytest.mark.parametrize("content", [b"garbage\n", b""], ids=["garbage", "empty"])
def test_resume_from_a_file_that_is_not_a_checkpoint_is_a_one_line_error(root, content):
    """A garbage file gave a traceback ending in torch's advice to set weights_only=False, an empty
    one only `Aborted.` (click's answer to an EOFError)."""
    path = root / "not-a-checkpoint.pt"
    path.write_bytes(content)
    res = _train(root, "--resume", str(path))
    assert res.exit_code == 2
    assert res.stderr.startswith(f"error: {path} is not a biocorpus training checkpoint")
    assert "Traceback" not in res.output and "Aborted" not in res.output and "weights_only" not in res.output


def test_rerun_of_a_complete_training_says_so_and_keeps_the_json_on_stdout(root):
    first = _train(root)
    assert first.exit_code == 0, first.output
    again = _train(root)
    assert again.exit_code == 0
    assert "train:" in again.stderr and "already complete (epoch 1/1" in again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
