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
from tests.train.conftest import url_list_samples  # noqa: E402

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


def _labelled(samples):
    return [s for s in samples if any(s["record"].get(rank) for rank in RANKS)]


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
    assert val["samples"] == len(_labelled(samples))  # the vehicle knows no rank: a reject
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


def test_rerun_of_a_finished_run_trains_nothing_and_says_so(shards_dir, tmp_path, capsys):
    first = run_train(shards_dir, tmp_path, Options(epochs=1, **TINY))
    checkpoint = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    metrics = (tmp_path / "metrics.json").read_bytes()
    capsys.readouterr()
    again = run_train(shards_dir, tmp_path, Options(epochs=1, **TINY))
    assert again["step"] == first["step"] and again["history"] == first["history"]
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == checkpoint
    assert (tmp_path / "metrics.json").read_bytes() == metrics
    said = capsys.readouterr()
    assert f"train: {tmp_path} already complete (epoch 1/1, step {first['step']}); nothing to do" in said.err
    assert said.out == ""
    with pytest.raises(ValueError, match="width=32"):
        run_train(shards_dir, tmp_path, Options(epochs=2, **{**TINY, "width": 16}))


def test_a_checkpoint_does_not_resume_on_other_shards(shards_dir, tmp_path):
    """Resuming takes the class maps and the epoch length from the checkpoint: on shards made
    again (another curate, more images), new taxa would be ignored without a word."""
    shards = tmp_path / "shards"
    shutil.copytree(shards_dir, shards)
    run_train(shards, tmp_path / "out", Options(epochs=2, max_steps=1, **TINY))
    (shards / "_duplicates.json").write_text('{"keys": ["cameratrap_x"]}')  # a dedup set one aside
    with pytest.raises(ValueError, match=r"was trained on other shards than .*--resume never") as refused:
        run_train(shards, tmp_path / "out", Options(epochs=2, **TINY))
    # the command line has no option for the train folder: the advice is what a user can do
    assert "another folder" not in str(refused.value)
    assert "move that folder aside first" in str(refused.value) and str(tmp_path / "out") in str(refused.value)
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
        ("cameratrap_vehicle", "train", "lineage_depth"),
    }
    assert metrics["rejected_samples"] == 3
    assert metrics["eval"]["train"]["samples"] == 3


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


def _cameras(samples):
    return [s for s in samples if s["key"].startswith("cameratrap_")]


def test_a_truncated_shard_stops_training_naming_it(shards_dir, tmp_path):
    """A shard cut short trained on its first half, completed, with nothing said."""
    shards = tmp_path / "shards"
    shutil.copytree(shards_dir, shards)
    run_train(shards, tmp_path / "out", Options(epochs=2, max_steps=1, **TINY))
    shard = shards / "train-000000.tar"
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    message = r"shard .*train-000000\.tar is truncated or damaged: .*move train-000000\.tar and its sidecar"
    with pytest.raises(ShardFormatError, match=message):  # resumed: not reported as "other shards"
        run_train(shards, tmp_path / "out", Options(epochs=2, **TINY))
    with pytest.raises(ShardFormatError, match=message):
        run_train(shards, tmp_path / "fresh", Options(epochs=1, **TINY))
    assert not (tmp_path / "fresh" / "metrics.json").exists()


def test_unlabelled_shards_say_they_carry_no_labels(tmp_path, samples, shard_writer):
    shard_writer(tmp_path / "train-000000.tar", url_list_samples(_cameras(samples)))
    with pytest.raises(ShardFormatError, match=r"carry no labels: .*URL list .*--urls.*curated/"):
        run_train(tmp_path, tmp_path / "out", Options(epochs=1, **TINY))


def test_unlabelled_samples_among_labelled_ones_are_rejects(tmp_path, samples, shard_writer, caplog):
    """They filled batches and counted in train_samples and steps, teaching nothing."""
    import pyarrow.parquet as pq

    cameras = _cameras(samples)
    shards = tmp_path / "shards"
    shards.mkdir()
    shard_writer(shards / "train-000000.tar", cameras)  # three animals and the vehicle
    unlabelled = url_list_samples(cameras)
    shard_writer(shards / "train-000001.tar", unlabelled)
    with caplog.at_level("WARNING", logger="pipeline.train.loop"):
        metrics = run_train(shards, tmp_path / "out", Options(epochs=1, eval_splits=("train",), **TINY))
    labelled = len(_labelled(cameras))
    assert metrics["train_samples"] == labelled == metrics["eval"]["train"]["samples"]
    assert metrics["steps_per_epoch"] == -(-labelled // TINY["batch_size"])
    assert metrics["samples"]["train"] == {"samples": 2 * len(cameras), "used": labelled, "excluded_duplicates": 0,
                                           "rejected": {"lineage_depth": 2 * len(cameras) - labelled}}
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert {r["record_id"] for r in rejects if r["reason"] == "lineage_depth"} == {
        "cameratrap_vehicle", *(s["key"] for s in unlabelled)}
    assert metrics["rejected_samples"] == len(rejects) == 2 * len(cameras) - labelled
    assert "name no taxon at any rank" in caplog.text


@pytest.mark.parametrize("content", ["garbage", "empty", "tensor", "other-dict"])
def test_resume_from_a_file_that_is_not_a_checkpoint_names_it(shards_dir, tmp_path, content):
    path = tmp_path / f"{content}.pt"
    if content == "garbage":
        path.write_text("garbage\n")
    elif content == "empty":
        path.write_bytes(b"")
    else:
        torch.save(torch.ones(2) if content == "tensor" else {"weights": torch.ones(2)}, path)
    with pytest.raises(ValueError, match=rf"{path} is not a biocorpus training checkpoint") as refused:
        run_train(shards_dir, tmp_path / "out", Options(epochs=1, resume=str(path), **TINY))
    assert "weights_only" not in str(refused.value)  # torch's advice to unpickle anything is not passed on


def test_each_run_writes_its_own_rejects_file(tmp_path, samples, shard_writer):
    """A clean run after one with rejects left the old rejects file beside its own metrics."""
    animals = _labelled(_cameras(samples))
    shards = tmp_path / "shards"
    shards.mkdir()
    shard_writer(shards / "train-000000.tar", animals)
    broken = {**animals[0], "key": "truncated_jpeg", "jpg": animals[0]["jpg"][:200]}
    shard_writer(shards / "train-000001.tar", [broken])
    out = tmp_path / "out"
    first = run_train(shards, out, Options(epochs=1, eval_splits=("train",), **TINY))
    assert first["rejected_samples"] == 1 and (out / "rejects.parquet").exists()
    (shards / "train-000001.tar").unlink()
    again = run_train(shards, out, Options(epochs=1, resume="never", eval_splits=("train",), **TINY))
    assert again["rejected_samples"] == 0
    assert not (out / "rejects.parquet").exists()


def test_rerun_at_max_steps_says_so(shards_dir, tmp_path, capsys):
    run_train(shards_dir, tmp_path, Options(epochs=2, max_steps=1, **TINY))
    metrics = (tmp_path / "metrics.json").read_bytes()
    capsys.readouterr()
    again = run_train(shards_dir, tmp_path, Options(epochs=2, max_steps=1, **TINY))
    assert again["step"] == 1 and again["stopped"] == "max_steps"
    assert "already at step 1 of --max-steps 1; nothing to do" in capsys.readouterr().err
    assert (tmp_path / "metrics.json").read_bytes() == metrics
