"""The training loop on CPU with a tiny model: overfitting real shards, metrics, checkpoints, resume."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from pipeline.stages.train import Options, run_train  # noqa: E402
from pipeline.train.loader import ShardFormatError  # noqa: E402
from pipeline.train.loop import learning_rate, load_checkpoint, resolve_device  # noqa: E402
from schemas import RANKS  # noqa: E402

pytestmark = pytest.mark.train

# one torch thread: the 2 cores here are shared, and spinning OpenMP threads slow tiny models a lot
TINY = dict(
    image_size=32,
    width=32,
    stages=2,
    batch_size=6,
    lr=0.002,
    weight_decay=0.0,
    workers=0,
    shuffle_buffer=16,
    augment=False,
    threads=1,
)


def _known(samples, rank):
    return sum(1 for s in samples if s["record"][rank] is not None)


def test_overfits_real_shards_to_full_training_accuracy(shards_dir, tmp_path):
    metrics = run_train(shards_dir, tmp_path, Options(epochs=50, eval_splits=("train",), **TINY))
    ranks = metrics["eval"]["train"]["ranks"]
    assert {rank: ranks[rank]["top1"] for rank in RANKS if ranks[rank]["n"]} == {
        rank: 1.0 for rank in RANKS if ranks[rank]["n"]
    }
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"] / 2
    assert metrics["completed"] and metrics["device"] == "cpu" and metrics["amp"] is None


def test_metrics_file_has_per_rank_top1_top5_on_val(shards_dir, tmp_path, samples):
    metrics = run_train(shards_dir, tmp_path, Options(epochs=2, **TINY))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    val = on_disk["eval"]["val"]
    assert val["samples"] == len(samples)
    for rank in RANKS:
        entry = val["ranks"][rank]
        assert entry["n"] == _known(samples, rank)
        assert 0.0 <= entry["top1"] <= entry["top5"] <= 1.0
    assert [h["epoch"] for h in on_disk["history"]] == [0, 1]
    assert on_disk["step"] == 2 * on_disk["steps_per_epoch"]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert {"model", "optimiser", "epoch", "step", "class_maps", "config"} <= set(state)
    assert state["epoch"] == 2 and state["step"] == on_disk["step"]
    assert state["config"]["width"] == TINY["width"]
    assert not list((tmp_path / "checkpoints").glob(".*tmp*")), "temp checkpoint left behind"


def test_resumed_run_continues_from_its_checkpoint(shards_dir, tmp_path):
    whole = run_train(shards_dir, tmp_path / "whole", Options(epochs=3, **TINY))
    stopped = run_train(shards_dir, tmp_path / "split", Options(epochs=3, max_steps=3, **TINY))
    assert stopped["step"] == 3 and stopped["stopped"] == "max_steps" and not stopped["completed"]
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["step"] == 3

    resumed = run_train(shards_dir, tmp_path / "split", Options(epochs=3, **TINY))
    assert resumed["resumed_from"].endswith("last.pt")
    assert resumed["step"] == whole["step"] == 3 * whole["steps_per_epoch"]
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in whole["history"]]
    # CPU runs are deterministic: the resumed run ends with exactly the uninterrupted weights
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_rerun_of_a_finished_run_trains_nothing(shards_dir, tmp_path):
    first = run_train(shards_dir, tmp_path, Options(epochs=1, **TINY))
    checkpoint = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    again = run_train(shards_dir, tmp_path, Options(epochs=1, **TINY))
    assert again["step"] == first["step"] and again["history"] == first["history"]
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == checkpoint
    with pytest.raises(ValueError, match="width=32"):
        run_train(shards_dir, tmp_path, Options(epochs=2, **{**TINY, "width": 16}))


def test_a_checkpoint_does_not_resume_on_other_shards(shards_dir, tmp_path):
    """Resuming takes the class maps and the epoch length from the checkpoint: on shards made
    again (another curate, more images), new taxa would be ignored without a word."""
    shards = tmp_path / "shards"
    shutil.copytree(shards_dir, shards)
    run_train(shards, tmp_path / "out", Options(epochs=2, max_steps=1, **TINY))
    (shards / "_duplicates.json").write_text('{"keys": ["cameratrap_x"]}')  # a dedup set one aside
    with pytest.raises(ValueError, match=r"was trained on other shards than .*--resume never"):
        run_train(shards, tmp_path / "out", Options(epochs=2, **TINY))
    (shards / "_duplicates.json").unlink()
    shutil.copy(shards / "val-000000.tar", shards / "val-000001.tar")  # a shard more
    with pytest.raises(ValueError, match=r"was trained on other shards"):
        run_train(shards, tmp_path / "out", Options(epochs=2, **TINY))
    (shards / "val-000001.tar").unlink()
    assert run_train(shards, tmp_path / "out", Options(epochs=2, **TINY))["resumed_from"].endswith("last.pt")
    assert run_train(shards, tmp_path / "fresh", Options(epochs=1, resume="never", **TINY))["resumed_from"] is None


def test_bad_samples_become_reject_rows(shards_dir, tmp_path, samples, shard_writer):
    import pyarrow.parquet as pq

    bad_dir = tmp_path / "shards"
    bad_dir.mkdir()
    shutil.copy(shards_dir / "train-000000.tar", bad_dir)
    good = samples[0]
    truncated = {**good, "key": "truncated_jpeg", "jpg": good["jpg"][: len(good["jpg"]) // 3]}
    shard_writer(bad_dir / "train-000001.tar", [truncated], extra_members={"no_json.jpg": good["jpg"]})
    metrics = run_train(bad_dir, tmp_path / "out", Options(epochs=2, eval_splits=("train",), **TINY))
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert {(r["record_id"], r["stage"], r["reason"]) for r in rejects} == {
        ("truncated_jpeg", "train", "corrupt_image"),
        ("no_json", "train", "malformed_row"),
    }
    assert metrics["rejected_samples"] == 2
    assert metrics["eval"]["train"]["samples"] == 4


def test_missing_train_split_is_a_clear_error(tmp_path):
    with pytest.raises(ShardFormatError, match="no train-NNNNNN.tar shards"):
        run_train(tmp_path, tmp_path / "out", Options(**TINY))


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_uses_amp_and_channels_last(shards_dir, tmp_path):
    options = Options(epochs=2, max_steps=None, **{**TINY, "device": "cuda", "threads": None, "workers": 2})
    metrics = run_train(shards_dir, tmp_path, options)
    assert metrics["device"].startswith("cuda")
    assert metrics["amp"] in ("bfloat16", "float16") and metrics["channels_last"]
    assert all(
        0.0 <= metrics["eval"]["val"]["ranks"][r]["top1"] <= 1.0
        for r in RANKS
        if metrics["eval"]["val"]["ranks"][r]["n"]
    )
    resumed = run_train(shards_dir, tmp_path, options.model_copy(update={"epochs": 3}))
    assert resumed["step"] == 3 * resumed["steps_per_epoch"]


def test_learning_rate_warms_up_then_decays():
    options = Options(lr=0.1, warmup_steps=4)
    rates = [learning_rate(step, 20, options) for step in range(21)]
    assert rates[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert all(a >= b for a, b in zip(rates[3:], rates[4:], strict=False))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
