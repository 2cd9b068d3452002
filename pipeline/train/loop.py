"""The train/eval loop: device choice, AMP and channels-last on CUDA, atomic resumable checkpoints,
per-rank top-1/top-5 evaluation and the metrics JSON."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline.stages.train import Options
from pipeline.train.loader import (
    ClassMaps,
    LoaderSettings,
    ShardFormatError,
    ShardScan,
    check_shards,
    class_maps_from_taxa,
    discover_shards,
    load_exclusions,
    make_eval_loader,
    make_train_loader,
    normalise_batch,
    scan_shards,
)
from pipeline.train.model import TaxonomicClassifier, TopKCounter, taxonomic_loss
from schemas import Reason, make_rejects

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
# a checkpoint made with other values of these cannot be loaded into the model these options build
ARCHITECTURE_FIELDS = ("width", "stages", "image_size")


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"--device cuda was requested but torch {torch.__version__} sees no CUDA GPU; "
            "use --device cpu (or auto), or install a CUDA build of torch on a GPU machine"
        )
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    return torch.device(requested)


def learning_rate(step: int, total_steps: int, options: Options) -> float:
    """Linear warm-up then cosine decay to 0, a pure function of the step (nothing to checkpoint)."""
    if options.warmup_steps and step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    span = max(1, total_steps - options.warmup_steps)
    progress = min(1.0, (step - options.warmup_steps) / span)
    return options.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _fsync_replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` with torch.save to a temp file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_replace(tmp, path)


def _not_a_checkpoint(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path} is not a biocorpus training checkpoint ({why}): point --resume at a checkpoints/last.pt "
        "written by `biocorpus train`, or train from the start with --resume never"
    )


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain containers only); a file
    that is not one raises ValueError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, which would run whatever code the file holds:
        # only its diagnosis is repeated
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
        why = f"not a torch.save file: {found.group(1).strip()}" if found else "not a torch.save file"
        raise _not_a_checkpoint(path, why) from None
    except EOFError:
        raise _not_a_checkpoint(path, "the file is empty or cut short") from None
    except RuntimeError as exc:  # not a zip archive, or one cut short: "PytorchStreamReader failed ..."
        raise _not_a_checkpoint(path, str(exc).splitlines()[0] if str(exc) else "unreadable") from None
    if not isinstance(state, dict) or "version" not in state:
        raise _not_a_checkpoint(path, "it holds no biocorpus checkpoint version")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
    return state


def write_json(obj: dict, path: Path) -> None:
    """Atomically write ``obj`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    _fsync_replace(tmp, path)


def _write_rejects(rejects: dict[str, tuple[str, str]], path: Path) -> None:
    import pyarrow.parquet as pq

    keys = sorted(rejects)
    table = make_rejects(keys, "train", [rejects[k][0] for k in keys], [rejects[k][1] for k in keys])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    _fsync_replace(tmp, path)


def _say(message: str) -> None:
    print(f"train: {message}", file=sys.stderr)


def _saved_metrics(path: Path, step: int) -> dict | None:
    """The metrics.json of the run that reached ``step``, or None when it is missing or of another step."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("step") == step else None


def _checkpoint_to_resume(out_dir: Path, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        path = out_dir / "checkpoints" / "last.pt"
        return path if path.exists() else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    return path


@contextmanager
def _torch_settings(device: torch.device, options: Options):
    """Deterministic algorithms and thread count for the run, restored afterwards (they are process-global)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    benchmark = torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        else:
            # cudnn autotuning: fastest kernels for fixed input shapes; gives up bitwise reproducibility on GPU
            torch.backends.cudnn.benchmark = True
        if options.threads:
            torch.set_num_threads(options.threads)
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


def evaluate(
    model,
    urls,
    class_maps: ClassMaps,
    settings: LoaderSettings,
    device,
    autocast,
    channels_last: bool = False,
) -> tuple[dict, list]:
    """Per-rank top-1/top-5 over every sample of ``urls``; returns (metrics, skipped samples)."""
    counter = TopKCounter(class_maps.num_classes())
    skipped = []
    samples = 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in make_eval_loader(urls, class_maps, settings):
            skipped += batch["skipped"]
            if not batch["keys"]:
                continue
            images = normalise_batch(batch["images"], device, channels_last)
            with autocast():
                logits = model(images)
            counter.update(logits, batch["targets"].to(device))
            samples += len(batch["keys"])
    model.train(was_training)
    return {"samples": samples, "ranks": counter.result()}, skipped


def train(shards_dir: Path, out_dir: Path, options: Options) -> dict:
    """Train (or resume training) on the shards in ``shards_dir``; write checkpoints and metrics to ``out_dir``."""
    device = resolve_device(options.device)
    with _torch_settings(device, options):
        return _train(shards_dir, out_dir, options, device)


def shards_fingerprint(urls: list[str], exclude: frozenset[str]) -> str:
    """What a run trains and evaluates on: each shard's name and size, and the keys the
    post-download dedup set aside. A new download, a retry that added images or another curate
    changes it."""
    h = hashlib.sha256()
    for url in sorted(urls):
        h.update(f"{Path(url).name}\t{os.path.getsize(url)}\n".encode())
    for key in sorted(exclude):
        h.update(f"-{key}\n".encode())
    return h.hexdigest()


def _check_usable(scan: ShardScan, split: str, shards_dir: Path, out_dir: Path) -> None:
    """Stop before training when the ``split`` shards give nothing to learn from, saying why; warn
    about unlabelled samples among labelled ones (they become rejects)."""
    samples, used = scan.samples[split], scan.used[split]
    rejected = scan.rejected[split]
    if samples == 0:
        raise ShardFormatError(f"the {split} shards in {shards_dir} hold no samples")
    unlabelled = rejected.get(Reason.LINEAGE_DEPTH, 0)
    if used == 0 and unlabelled:
        raise ShardFormatError(
            f"the {split} shards in {shards_dir} carry no labels: their samples' .json members name no taxon at any "
            f"rank (kingdom to species; {unlabelled:,} samples), as shards downloaded from a URL list (`biocorpus "
            "download --urls`) are. The trainer needs shards downloaded from curated/ (`biocorpus curate`, then "
            "`biocorpus download`), whose .json members carry each record's lineage"
        )
    if used == 0:
        raise ShardFormatError(
            f"none of the {samples:,} samples of the {split} shards in {shards_dir} can be trained on "
            f"(excluded as duplicates: {scan.excluded[split]:,}; rejected: {dict(rejected) or 'none'})"
        )
    for name, counts in scan.rejected.items():
        if counts.get(Reason.LINEAGE_DEPTH):
            log.warning(
                "%d of the %d %s samples in %s name no taxon at any rank (unlabelled, as from a URL-list "
                "download): not used, listed in %s as lineage_depth",
                counts[Reason.LINEAGE_DEPTH], scan.samples[name], name, shards_dir, out_dir / "rejects.parquet",
            )


def _train(shards_dir: Path, out_dir: Path, options: Options, device: torch.device) -> dict:
    shards = discover_shards(shards_dir)
    train_urls = shards.get(options.train_split)
    if not train_urls:
        raise ShardFormatError(
            f"no {options.train_split}-NNNNNN.tar shards in {shards_dir} (splits found: {sorted(shards) or 'none'})"
        )
    eval_urls = {split: shards[split] for split in options.eval_splits if shards.get(split)}
    missing = [split for split in options.eval_splits if split not in eval_urls]
    if missing:
        log.warning("no shards for eval split(s) %s in %s: not evaluated", missing, shards_dir)

    on_cuda = device.type == "cuda"
    use_amp = on_cuda and options.amp
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    channels_last = on_cuda and options.channels_last
    settings = LoaderSettings(
        batch_size=options.batch_size,
        image_size=options.image_size,
        shuffle_buffer=options.shuffle_buffer,
        workers=options.workers,
        augment=options.augment,
        seed=options.seed,
        pin_memory=on_cuda,
        exclude=load_exclusions(shards_dir),
    )

    checkpoint_path = out_dir / "checkpoints" / "last.pt"
    resume_from = _checkpoint_to_resume(out_dir, options.resume)
    state = load_checkpoint(resume_from) if resume_from else None
    all_urls = [*train_urls, *(u for urls in eval_urls.values() for u in urls)]
    trained_on = shards_fingerprint(all_urls, settings.exclude)
    initial_rejects: dict[str, tuple[str, str]] = {}

    if state is not None:
        # a shard cut short since would otherwise be reported as "other shards" below
        check_shards(all_urls)
        # the class maps and the epoch's sample count come from the checkpoint: on other shards,
        # new taxa would be ignored and epochs cut at the old length, with nothing said
        if state.get("shards", trained_on) != trained_on:
            raise ValueError(
                f"checkpoint {resume_from} was trained on other shards than {shards_dir} holds now (downloaded "
                f"or curated again since): train from the start with --resume never (it replaces {out_dir}; "
                f"move that folder aside first to keep the old run), or point --resume at a checkpoint of "
                "these shards")
        for name in ARCHITECTURE_FIELDS:
            if state["config"][name] != getattr(options, name):
                raise ValueError(
                    f"checkpoint {resume_from} was trained with {name}={state['config'][name]}, not "
                    f"{getattr(options, name)}: use the same value, or train from the start with --resume never"
                )
        class_maps = ClassMaps.from_dict(state["class_maps"])
        train_samples = state["train_samples"]
        sample_counts = state.get("samples", {})
    else:
        # classes come from every split read, so a val-only taxon is a class the model must get wrong
        # rather than a silently ignored label
        scan = scan_shards({options.train_split: train_urls, **eval_urls}, settings.exclude)
        _check_usable(scan, options.train_split, shards_dir, out_dir)
        class_maps = (
            class_maps_from_taxa(options.taxa) if options.taxa else ClassMaps.from_lineages(scan.lineages)
        )
        train_samples = scan.used[options.train_split]
        sample_counts = {split: scan.counts(split) for split in scan.samples}
        initial_rejects = dict(scan.rejects)

    steps_per_epoch = math.ceil(train_samples / options.batch_size)
    total_steps = options.epochs * steps_per_epoch

    torch.manual_seed(options.seed)
    model = TaxonomicClassifier(class_maps.num_classes(), width=options.width, stages=options.stages)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimiser = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)

    epoch, batch_in_epoch, step = 0, 0, 0
    running = {"loss": 0.0, "batches": 0, "images": 0, "seconds": 0.0}
    history: list[dict] = []
    rejects: dict[str, tuple[str, str]] = initial_rejects
    last_eval: dict = {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        # a disabled scaler (cpu, bfloat16) saves {}; an enabled one refuses to load that
        if state["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        running = dict(state["running"])
        history = list(state["history"])
        rejects = {r["key"]: (r["reason"], r["detail"]) for r in state["rejects"]}
        last_eval = history[-1]["eval"] if history else {}
        log.info("resuming from %s at epoch %d, step %d", resume_from, epoch, step)

    def autocast():
        return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp)

    def metrics(stopped: str | None) -> dict:
        return {
            "device": str(device),
            "amp": str(amp_dtype).removeprefix("torch.") if use_amp else None,
            "channels_last": channels_last,
            "epoch": epoch,
            "step": step,
            "steps_per_epoch": steps_per_epoch,
            "epochs": options.epochs,
            "train_samples": train_samples,
            "samples": sample_counts,
            "num_classes": class_maps.num_classes(),
            "completed": epoch >= options.epochs,
            "stopped": stopped,
            "resumed_from": str(resume_from) if resume_from else None,
            "rejected_samples": len(rejects),
            "eval": last_eval,
            "history": history,
            "checkpoint": str(checkpoint_path),
            "options": options.model_dump(mode="json"),
        }

    def checkpoint() -> None:
        save_checkpoint(
            {
                "version": CHECKPOINT_VERSION,
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scaler": scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "step": step,
                "running": running,
                "history": history,
                "rejects": [
                    {"key": k, "reason": str(r), "detail": d} for k, (r, d) in sorted(rejects.items())
                ],
                "class_maps": class_maps.to_dict(),
                "train_samples": train_samples,
                "samples": sample_counts,
                "config": options.model_dump(mode="json"),
                "shards": trained_on,
            },
            checkpoint_path,
        )

    def finish(stopped: str | None) -> dict:
        """Write metrics.json and the rejects of this run (an earlier run's file goes when it has none)."""
        result = metrics(stopped)
        write_json(result, out_dir / "metrics.json")
        if rejects:
            _write_rejects(rejects, out_dir / "rejects.parquet")
        else:
            (out_dir / "rejects.parquet").unlink(missing_ok=True)
        return result

    def note_skipped(skipped) -> None:
        for item in skipped:
            rejects.setdefault(item.key, (str(item.reason), item.detail))

    if state is not None and (epoch >= options.epochs or (options.max_steps and step >= options.max_steps)):
        if epoch >= options.epochs:
            _say(f"{out_dir} already complete (epoch {epoch}/{options.epochs}, step {step}); nothing to do "
                 "(a higher --epochs continues it, --resume never trains again from the start)")
        else:
            _say(f"{out_dir} already at step {step} of --max-steps {options.max_steps}; nothing to do (raise "
                 "--max-steps or leave it out to continue)")
        stopped = None if epoch >= options.epochs else "max_steps"
        return _saved_metrics(out_dir / "metrics.json", step) or finish(stopped)
    model.train()
    while epoch < options.epochs:
        loader = make_train_loader(train_urls, class_maps, settings, epoch, steps_per_epoch)
        started = time.perf_counter()
        for index, batch in enumerate(loader):
            # a resumed epoch replays the same seeded stream and drops the batches already trained on
            if index < batch_in_epoch:
                continue
            note_skipped(batch["skipped"])
            batch_in_epoch = index + 1
            if batch["keys"]:
                lr = learning_rate(step, total_steps, options)
                for group in optimiser.param_groups:
                    group["lr"] = lr
                images = normalise_batch(batch["images"], device, channels_last)
                targets = batch["targets"].to(device, non_blocking=True)
                with autocast():
                    logits = model(images)
                loss, _ = taxonomic_loss(logits, targets)
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                step += 1
                running["loss"] += float(loss.detach())
                running["batches"] += 1
                running["images"] += len(batch["keys"])
            stop = bool(options.max_steps and step >= options.max_steps)
            if stop or (options.checkpoint_every and step % options.checkpoint_every == 0 and batch["keys"]):
                running["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                checkpoint()
            if stop:
                log.info("stopped at step %d (max_steps)", step)
                return finish("max_steps")
        running["seconds"] += time.perf_counter() - started
        last_eval = {}
        for split, urls in eval_urls.items():
            result, skipped = evaluate(model, urls, class_maps, settings, device, autocast, channels_last)
            note_skipped(skipped)
            last_eval[split] = result
        seconds = running["seconds"]
        history.append(
            {
                "epoch": epoch,
                "step": step,
                "train_loss": running["loss"] / max(1, running["batches"]),
                "lr": learning_rate(max(0, step - 1), total_steps, options),
                "images": running["images"],
                "seconds": seconds,
                "images_per_s": running["images"] / seconds if seconds > 0 else None,
                "eval": last_eval,
            }
        )
        log.info(
            "epoch %d step %d loss %.4f %s",
            epoch,
            step,
            history[-1]["train_loss"],
            {s: {r: v["top1"] for r, v in e["ranks"].items()} for s, e in last_eval.items()},
        )
        epoch += 1
        batch_in_epoch = 0
        running = {"loss": 0.0, "batches": 0, "images": 0, "seconds": 0.0}
        checkpoint()
        if epoch < options.epochs:
            finish(None)  # the metrics and rejects so far, should the run stop before the next epoch ends
    return finish(None)
