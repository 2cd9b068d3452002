"""The training stage's options and its behaviour without torch (this file needs no torch)."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from pipeline.stages.train import Options, TorchMissingError, run_train


def test_options_defaults_and_validation():
    options = Options()
    assert options.device == "auto" and options.resume == "auto" and options.eval_splits == ("val",)
    with pytest.raises(ValidationError):
        Options(device="tpu")
    with pytest.raises(ValidationError):
        Options(batchsize=3)
    with pytest.raises(ValidationError):
        Options(epochs=0)


def test_every_option_is_documented():
    assert all(field.description for field in Options.model_fields.values())


def test_missing_torch_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(TorchMissingError, match=r"make train.*pip install -e \.\[train\]"):
        run_train(tmp_path, tmp_path / "out")


def test_stage_module_imports_without_torch():
    import subprocess

    code = (
        "import sys; sys.modules['torch'] = None\nimport pipeline.stages.train, pipeline.train\nprint('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
