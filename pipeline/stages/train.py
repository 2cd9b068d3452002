"""The training stage entry: validated options and ``run_train`` over a folder of webdataset shards.

torch is an optional extra (``[train]``); it is imported only inside ``run_train`` so that the
config loader, the CLI and every other stage import without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TORCH_PIN = "torch==2.13.0"


class TorchMissingError(ImportError):
    """Raised when the training stage runs without torch installed."""


class Options(BaseModel):
    """Options of the training stage (the ``[train]`` table of the config, ``biocorpus train`` flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(
        10,
        ge=1,
        description="passes over the train split (an epoch is ceil(train samples / batch size) batches)",
    )
    batch_size: int = Field(64, ge=1, description="images per optimiser step")
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate (cosine decay to 0 over all steps)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")
    image_size: int = Field(128, ge=16, description="side of the square model input in pixels")
    width: int = Field(32, ge=4, description="channels of the first CNN stage; stage i has width * 2**i")
    stages: int = Field(4, ge=1, le=6, description="CNN stages, each halving the resolution")
    shuffle_buffer: int = Field(
        1000, ge=1, description="samples held by the streaming shuffle buffer per worker"
    )
    workers: int = Field(
        2, ge=0, description="DataLoader worker processes (0 decodes in the training process)"
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads for the training process (None: torch's default)"
    )
    augment: bool = Field(
        True, description="random resized crop, horizontal flip and light colour jitter on the train split"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks cuda when torch sees a GPU, else cpu"
    )
    amp: bool = Field(
        True, description="mixed precision (torch.autocast, GradScaler for float16) on cuda; ignored on cpu"
    )
    channels_last: bool = Field(True, description="channels-last memory format on cuda; ignored on cpu")
    seed: int = Field(
        0,
        description="seeds shard resampling, shuffling, augmentation and weights; cpu runs are deterministic",
    )
    resume: str = Field(
        "auto",
        description=(
            "auto: continue from <out>/checkpoints/last.pt when it exists; never: start afresh; or a checkpoint "
            "path. The checkpoint's class maps are kept; raising epochs stretches the cosine schedule"
        ),
    )
    max_steps: int | None = Field(
        None, ge=1, description="stop (with a checkpoint) once the global step reaches this"
    )
    checkpoint_every: int = Field(
        0, ge=0, description="also checkpoint every N steps (0: only at the end of each epoch)"
    )
    train_split: str = Field("train", description="split whose shards ({split}-*.tar) are trained on")
    eval_splits: tuple[str, ...] = Field(
        ("val",), description="splits evaluated (per-rank top-1/top-5) after each epoch"
    )
    taxa: str | None = Field(
        None,
        description="Parquet/CSV table with the 7 rank columns defining the classes; default: the taxa found in the shards",
    )

    @field_validator("resume")
    @classmethod
    def _resume_value(cls, value: str) -> str:
        if not value:
            raise ValueError("resume must be 'auto', 'never' or a checkpoint path")
        return value


def _require_torch():
    try:
        import torch
    except ImportError as exc:
        raise TorchMissingError(
            f"the training stage needs torch, which is not installed: run `make train` or "
            f"`pip install -e .[train]` (installs {TORCH_PIN}, a CPU wheel is enough)"
        ) from exc
    return torch


def run_train(shards_dir: str | Path, out_dir: str | Path, options: Options | None = None) -> dict:
    """Train the hierarchical classifier on ``shards_dir`` and return the metrics dict.

    ``out_dir`` receives ``checkpoints/last.pt``, ``metrics.json`` and, when samples could not be
    used, ``rejects.parquet`` (this run's: a run without rejects removes an earlier one). A rerun
    resumes from the last checkpoint (``resume="auto"``); one of a finished run says so and trains
    nothing. A shard that is cut short or damaged, or shards that carry no labels, stop the run
    with ShardFormatError before any step; unlabelled samples among labelled ones are rejects.
    """
    _require_torch()
    from pipeline.train.loop import train

    return train(Path(shards_dir), Path(out_dir), options or Options())
