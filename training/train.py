"""Train a classifier on labelled images, score it on a held-out split, register it.

``imageiq train --data DIR_OR_MANIFEST --arch ARCH --epochs N --image-size S``: the parser
below builds the arguments, :func:`main` does the work (the shape of torchvision's reference
``train.py``). Data: an ImageFolder tree, or a CSV/JSONL manifest of local paths or S3 URIs
with a label and attribute columns (extra heads). Every run writes a run directory (see
:mod:`training.run`) with a checkpoint per epoch that ``--resume`` continues from.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, WeightedRandomSampler

from imageiq.architectures import MAIN_HEAD, ImageIQNet, WeightsSource, build_model, get_spec
from imageiq.errors import ConfigurationError
from imageiq.inference import resolve_device, resolve_precision
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import EVALUATION_FILE, ModelCard, RegisteredModel, register_model
from training.augment import Augmentation, TrainTransform
from training.options import add_arguments

__all__ = ["TrainResult", "TrainingDiverged", "add_arguments", "main"]
from training.calibration import expected_calibration_error, fit_temperature, temper
from training.data import LabelledDataset, held_out_dataset, stratified_split
from training.loop import IGNORE, Chance, FitConfig, Trainer, TrainingDiverged, divergence
from training.recipe import Recipe, auto_lr, fallback_lr, resolve_recipe
from training.report import held_out_evaluation
from training.run import RunDir
from training.sources import (
    SNAPSHOT_FILE,
    LabelledData,
    S3Options,
    load_data,
    snapshot_entry,
    snapshot_rows,
    write_snapshot,
)

# Training images BatchNorm's statistics are measured on before each held-out evaluation:
# enough for a per-channel mean and variance, a small share of an epoch's work past a few
# thousand images (8 forward batches against the digits' 22 training steps).
BATCHNORM_IMAGES = 512
MAX_RESTARTS = 2  # restarts from the initial weights after a divergence, before giving up


@dataclass(frozen=True)
class TrainResult:
    model: RegisteredModel
    metrics: dict[str, float]
    run_dir: Path


@dataclass
class _Data:
    """The loaded data, its split, the preprocessing saved with the model, and the loaders."""

    data: LabelledData
    train_idx: list[int]
    val_idx: list[int]
    preprocessing: PreprocessConfig
    train_set: LabelledDataset
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]
    generator: torch.Generator  # the training order's: checkpointed with the run
    chance: Chance  # what guessing scores on the held-out split


def main(
    args: argparse.Namespace,
    *,
    max_image_pixels: int,
    console: Console | None = None,
    s3: S3Options | None = None,
    data: LabelledData | None = None,
) -> TrainResult:
    """Load, build, fit, calibrate, register: each a function below. ``data``: already
    loaded labelled data (``--data db`` and ``snapshot:`` are loaded by the caller, which
    has the settings), used in place of ``args.data``."""
    console = console or Console()
    run, args, resumed = _open_run(args)
    _seed_everything(args.seed)
    device = resolve_device(args.device)
    if data is None:
        data = _load(args.data, max_pixels=max_image_pixels, s3=s3, console=console)
    if resumed is not None and resumed.get("dataset_fingerprint") != data.fingerprint:
        raise ConfigurationError(
            f"The data at {args.data} changed since the run in {run.path} started "
            "(its fingerprint differs): start a new run instead of resuming."
        )
    run.write_skipped(data.skipped)
    train_idx, val_idx = stratified_split(
        data.targets, val_fraction=args.val_fraction, seed=args.seed
    )
    recipe = resolve_recipe(
        len(train_idx),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        pretrained=_weights(args) != "none",
    )
    args = _with_recipe(args, recipe)
    prepared = _prepare_data(args, data, train_idx, val_idx, max_pixels=max_image_pixels)
    console.print(
        f"[bold]{args.arch}[/] on {data.source}: {len(data.classes)} classes"
        + (f", heads {', '.join(data.heads)}" if data.heads else "")
        + f", {len(prepared.train_idx)} train / {len(prepared.val_idx)} held-out images, "
        f"{args.image_size}px, {device}; {recipe.describe()}"
    )
    net = _network(args, prepared, device=device)
    initial = copy.deepcopy(net.state_dict())  # what a restart after a divergence starts from
    trainer = _trainer(args, net, prepared, device=device)
    if resumed is not None:
        trainer.load(run.checkpoint)
        console.print(f"resuming {run.path} after epoch {trainer.state.epoch}")
    divergences: list[str] = list(resumed.get("divergences", [])) if resumed else []
    run.write_config(_run_config(args, prepared, divergences=divergences, device=device))
    final, trainer, args = _fit_or_restart(
        args,
        trainer,
        prepared,
        initial=initial,
        divergences=divergences,
        run=run,
        console=console,
        device=device,
    )
    if prepared.chance.no_better(final["val_top1"]):
        raise TrainingDiverged(_chance_message(args, prepared, final))
    held_out = trainer.evaluate(prepared.val_loader)["arrays"]
    temperature = _calibrate(held_out, final)
    targets, probs = held_out[MAIN_HEAD]
    evaluation = held_out_evaluation(
        data.classes,
        targets,
        temper(probs, temperature[MAIN_HEAD]),
        temperature=temperature[MAIN_HEAD],
    )
    model = _register(
        args,
        net,
        prepared,
        final,
        temperature,
        evaluation=evaluation,
        history=trainer.state.history,
        device=device,
        run=run,
    )
    _report(console, model, final, heads=list(data.heads), held_out=len(prepared.val_idx))
    console.print(f"registered [bold]{model.tag}[/]; run directory {run.path}")
    return TrainResult(model, final, run.path)


def _with_recipe(args: argparse.Namespace, recipe: Recipe) -> argparse.Namespace:
    """The arguments with the recipe's values in place of "auto": what the run records, so
    ``--resume`` and the model card see the values used."""
    return argparse.Namespace(
        **{
            **vars(args),
            "batch_size": recipe.batch_size,
            "lr": recipe.lr,
            "warmup_epochs": recipe.warmup_epochs,
            "restarts": getattr(args, "restarts", 0),
        }
    )


def _prepare_data(
    args: argparse.Namespace,
    data: LabelledData,
    train_idx: list[int],
    val_idx: list[int],
    *,
    max_pixels: int,
) -> _Data:
    """The preprocessing config (saved with the model) and the loaders: augmented training
    images, and held-out images read exactly as the server reads them."""
    spec = get_spec(args.arch)
    if _weights(args) == "none" or spec.imagenet_weights is None:  # no crop margin unless asked
        preprocessing = PreprocessConfig(
            resize_size=args.resize_size or args.image_size, crop_size=args.image_size
        )
    else:  # a pretrained backbone keeps its weights' eval preset, scaled to --image-size
        preprocessing = PreprocessConfig.for_weights(
            spec.imagenet_weights, crop_size=args.image_size, resize_size=args.resize_size
        )
    augmentation = Augmentation(
        crop_scale=args.crop_scale, hflip=args.hflip, color_jitter=args.color_jitter
    )
    train_set = LabelledDataset(
        data, train_idx, TrainTransform(preprocessing, augmentation), max_pixels=max_pixels
    )
    val_set = held_out_dataset(data, val_idx, preprocessing, max_pixels=max_pixels)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        drop_last=len(train_idx) > args.batch_size,  # no 1-image batch for BatchNorm
        num_workers=args.workers,
        generator=generator,
        **_order(args.balance, train_set.targets[MAIN_HEAD], len(data.classes), generator),
    )
    val_loader = DataLoader(val_set, batch_size=args.batch_size * 2, num_workers=args.workers)
    val_targets = [data.targets[i] for i in val_idx]
    chance = Chance(
        loss=math.log(len(data.classes)) + sum(math.log(len(v)) for v in data.heads.values()),
        top1=max(np.bincount(val_targets)) / len(val_targets) if val_targets else 0.0,
        held_out=len(val_targets),
    )
    return _Data(
        data,
        train_idx,
        val_idx,
        preprocessing,
        train_set,
        train_loader,
        val_loader,
        generator,
        chance,
    )


def _weights(args: argparse.Namespace) -> WeightsSource:
    """Where the backbone's weights come from: a local file when one is given."""
    return "file" if args.weights_file else args.weights


def _network(args: argparse.Namespace, prepared: _Data, *, device: torch.device) -> ImageIQNet:
    """The network, its backbone's weights as asked."""
    data = prepared.data
    return build_model(
        arch=args.arch,
        num_classes=len(data.classes),
        heads={h: len(v) for h, v in data.heads.items()},
        weights=_weights(args),
        weights_file=args.weights_file,
    ).to(device)


def _trainer(
    args: argparse.Namespace, net: ImageIQNet, prepared: _Data, *, device: torch.device
) -> Trainer:
    """A trainer for ``net`` with a fresh optimiser, schedule and history."""
    data = prepared.data
    targets = prepared.train_set.targets[MAIN_HEAD]
    return Trainer(
        net,
        config=FitConfig(
            epochs=args.epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            warmup_epochs=args.warmup_epochs,
            freeze_epochs=args.freeze_epochs,
            patience=args.patience,
            precision=_precision(args.precision, device),
            class_weights=_class_weights(targets, len(data.classes))
            if args.balance == "weights"
            else None,
        ),
        heads=list(data.heads),
        steps_per_epoch=len(prepared.train_loader),
        device=device,
        generator=prepared.generator,
    )


def _run_config(
    args: argparse.Namespace, prepared: _Data, *, divergences: list[str], device: torch.device
) -> dict[str, Any]:
    """config.json: the resolved arguments (what ``--resume`` reads back), the data, and
    the attempts that diverged."""
    data = prepared.data
    return {
        "args": _resolved_config(args),
        "dataset_fingerprint": data.fingerprint,
        "data": {
            "source": data.source,
            "classes": data.classes,
            "heads": data.heads,
            "images": len(data.samples),
            "skipped": len(data.skipped),
            "train": len(prepared.train_idx),
            "held_out": len(prepared.val_idx),
        },
        "device": str(device),
        "divergences": divergences,
    }


def _fit(
    args: argparse.Namespace, trainer: Trainer, prepared: _Data, *, run: RunDir, console: Console
) -> dict[str, float]:
    """The epochs (a checkpoint after each, early stopping with ``--patience``); the metrics
    of the epoch whose weights the network now holds (the best held-out one with early
    stopping, else the last). Raises TrainingDiverged (with the reason only) at an epoch
    :func:`training.loop.divergence` calls diverged, before it is checkpointed."""
    heads = list(prepared.data.heads)
    steps = len(prepared.train_loader)
    started = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("train", total=args.epochs * steps, status="")
        progress.update(task, completed=trainer.state.epoch * steps)
        while trainer.state.epoch < args.epochs:
            epoch = trainer.state.epoch + 1

            def on_step(loss: float, top1: float, epoch: int = epoch) -> None:
                progress.update(
                    task,
                    advance=1,
                    description=f"epoch {epoch}/{args.epochs}",
                    status=f"loss {loss:.4f}  top-1 {top1:.2%}",
                )

            record = trainer.train_epoch(prepared.train_loader, on_step=on_step)
            trainer.recalibrate_batchnorm(
                prepared.train_loader, max_batches=math.ceil(BATCHNORM_IMAGES / args.batch_size)
            )
            record.update(trainer.evaluate(prepared.val_loader)["metrics"])
            why = divergence(
                [*trainer.state.history, {"epoch": epoch, **record}],
                chance=prepared.chance,
                warmup_epochs=args.warmup_epochs,
            )
            if why:
                trainer.state.history.append({"epoch": epoch, **record})  # for the message
                raise TrainingDiverged(why)
            stop = trainer.end_epoch(record)
            trainer.save(run.checkpoint)
            run.write_history(trainer.state.history)
            progress.console.print(
                f"epoch {epoch}/{args.epochs}  train loss {record['train_loss']:.4f}  "
                f"held-out loss {record['val_loss']:.4f}  top-1 {record['val_top1']:.2%}"
                + "".join(
                    f"  {h} {record[f'val_{h}_top1']:.2%}"
                    for h in heads
                    if f"val_{h}_top1" in record
                )
            )
            if stop and trainer.state.epoch < args.epochs:
                progress.console.print(
                    f"early stop: no better held-out loss for {args.patience} epochs"
                )
                break
    state = trainer.state
    chosen = state.best_epoch if args.patience > 0 else state.epoch
    if args.patience > 0 and state.best_weights is not None:
        trainer.net.load_state_dict(state.best_weights)
    best = state.history[chosen - 1]
    final = {k: v for k, v in best.items() if k.startswith(("val_", "train_"))}
    final["epoch"] = chosen
    final["train_seconds"] = round(time.perf_counter() - started, 1)
    return final


def _fit_or_restart(
    args: argparse.Namespace,
    trainer: Trainer,
    prepared: _Data,
    *,
    initial: dict[str, torch.Tensor],
    divergences: list[str],
    run: RunDir,
    console: Console,
    device: torch.device,
) -> tuple[dict[str, float], Trainer, argparse.Namespace]:
    """:func:`_fit`; after a divergence, again from the initial weights at a lower learning
    rate (:func:`training.recipe.fallback_lr`), up to MAX_RESTARTS times, then
    TrainingDiverged. The run's config
    follows each restart (its lr, ``restarts``, the reasons), so ``--resume`` continues the
    attempt under way. Returns the metrics, the trainer that made them and its arguments."""
    while True:
        try:
            return _fit(args, trainer, prepared, run=run, console=console), trainer, args
        except TrainingDiverged as e:
            divergences.append(f"lr {args.lr:.3g}: {e.message}")
            if args.restarts >= MAX_RESTARTS:
                raise TrainingDiverged(_diverged_message(args, trainer, divergences)) from e
            lr = fallback_lr(
                args.lr, automatic=auto_lr(args.batch_size, pretrained=_weights(args) != "none")
            )
            console.print(
                f"[yellow]diverged[/]: {e.message}; restarting from the initial weights "
                f"with peak lr {lr:.3g} (restart {args.restarts + 1} of {MAX_RESTARTS})"
            )
            args = argparse.Namespace(**{**vars(args), "lr": lr, "restarts": args.restarts + 1})
            trainer.net.load_state_dict(initial)
            trainer = _trainer(args, trainer.net, prepared, device=device)
            run.checkpoint.unlink(missing_ok=True)  # --resume must not mix the two attempts
            run.write_config(_run_config(args, prepared, divergences=divergences, device=device))


def _register(
    args: argparse.Namespace,
    net: ImageIQNet,
    prepared: _Data,
    final: dict[str, float],
    temperature: dict[str, float],
    *,
    evaluation: dict[str, Any],
    history: list[dict[str, float]],
    device: torch.device,
    run: RunDir,
) -> RegisteredModel:
    """The weights and their card (labels, heads, preprocessing, metrics, temperature,
    dataset fingerprint, resolved config) as a new version in the model store, with the
    data set's snapshot and the held-out evaluation (:func:`held_out_evaluation`) as files
    of the model."""
    data = prepared.data
    # The data set as trained on (ids, sha256, labels, split), so it can be rebuilt exactly.
    snapshot = write_snapshot(snapshot_rows(data, prepared.train_idx, prepared.val_idx))
    card = ModelCard(
        architecture=args.arch,
        labels=data.classes,
        heads=data.heads,
        preprocessing=prepared.preprocessing,
        metrics=final,
        temperature=temperature,
        dataset_fingerprint=data.fingerprint,
        dataset_snapshot=snapshot_entry(snapshot, images=len(data.samples)),
        training_config={
            **_resolved_config(args),
            "device": str(device),
            "n_train": len(prepared.train_idx),
            "n_val": len(prepared.val_idx),
            "skipped": len(data.skipped),
            "run_dir": str(run.path),
            "history": history,
        },
    )
    files = {
        SNAPSHOT_FILE: snapshot,
        EVALUATION_FILE: (json.dumps(evaluation, indent=1) + "\n").encode(),
    }
    return register_model(net.cpu(), card, name=args.model_name, files=files)


def _report(
    console: Console,
    model: RegisteredModel,
    final: dict[str, float],
    *,
    heads: list[str],
    held_out: int,
) -> None:
    console.print(
        f"held-out top-1 accuracy: [bold]{final['val_top1']:.2%}[/] on {held_out} images"
        f" (epoch {int(final['epoch'])})"
    )
    for head in heads:
        if f"val_{head}_top1" in final:
            console.print(f"held-out {head} accuracy: [bold]{final[f'val_{head}_top1']:.2%}[/]")
    temperature = model.card.temperature[MAIN_HEAD]
    console.print(
        f"calibration: temperature {temperature:.3f}, held-out ECE "
        f"{final['val_ece']:.4f} -> {final['val_ece_calibrated']:.4f}"
    )


def _calibrate(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]], final: dict[str, float]
) -> dict[str, float]:
    """A temperature per head fitted on the held-out split's (targets, probabilities) with
    the registered weights, and the main head's ECE before and after it (into ``final``)."""
    temperature = {}
    for head, (targets, probs) in arrays.items():
        known = targets != IGNORE
        temperature[head] = round(fit_temperature(probs[known], targets[known]), 4)
    targets, probs = arrays[MAIN_HEAD]
    final["val_ece"] = expected_calibration_error(probs, targets)
    final["val_ece_calibrated"] = expected_calibration_error(
        temper(probs, temperature[MAIN_HEAD]), targets
    )
    final["temperature"] = temperature[MAIN_HEAD]
    return temperature


def _open_run(
    args: argparse.Namespace,
) -> tuple[RunDir, argparse.Namespace, dict[str, Any] | None]:
    if args.resume:
        run = RunDir.existing(Path(args.resume))
        config = run.read_config()
        return run, argparse.Namespace(**{**config["args"], "resume": args.resume}), config
    if not args.data:
        raise ConfigurationError("--data is required (unless --resume names a run directory).")
    return RunDir.create(Path(args.run_dir), args.model_name), args, None


def _load(source: str, *, max_pixels: int, s3: S3Options | None, console: Console) -> LabelledData:
    with _progress(console) as progress:
        task = progress.add_task("checking images", total=None, status="")

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        data = load_data(source, max_pixels=max_pixels, s3=s3, progress=on_progress)
    if data.skipped:
        shown = "; ".join(f"{uri} ({reason})" for uri, reason in data.skipped[:5])
        more = f" and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else ""
        console.print(
            f"[yellow]skipped {len(data.skipped)} bad entries[/]: {shown}{more} "
            "(all listed in the run directory's skipped.txt)"
        )
    return data


def _order(
    balance: str, targets: list[int], n_classes: int, generator: torch.Generator
) -> dict[str, Any]:
    """DataLoader ordering: shuffled, or sampled with equal weight per class."""
    if balance != "sampler":
        return {"shuffle": True}
    weights = torch.tensor(_class_weights(targets, n_classes))[torch.tensor(targets)]
    sampler = WeightedRandomSampler(
        weights.tolist(), num_samples=len(targets), replacement=True, generator=generator
    )
    return {"sampler": sampler}


def _class_weights(targets: list[int], n_classes: int) -> list[float]:
    """Inverse class frequency, averaging 1 over the images."""
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    weights = len(targets) / (n_classes * np.maximum(counts, 1))
    return [float(w) for w in weights]


def _precision(choice: str, device: torch.device) -> str:
    """As serving resolves it (:func:`resolve_precision`), except that "auto" trains in fp32
    on a CPU (bf16 there is an explicit ``--precision bf16``): on the digits recipe bf16
    gained nothing measurable (docs/training.md)."""
    if choice == "auto" and device.type != "cuda":
        return "fp32"
    return resolve_precision(choice, device)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _diverged_message(args: argparse.Namespace, trainer: Trainer, divergences: list[str]) -> str:
    """The final error: every attempt's reason, the last one's losses, what to try."""
    losses = "; ".join(
        f"epoch {int(r['epoch'])}: train {r['train_loss']:.4g}, held-out {r['val_loss']:.4g}"
        for r in trainer.state.history[-6:]
    )
    return (
        f"Training diverged {len(divergences)} times: "
        + " | ".join(divergences)
        + f". Losses of the last attempt: {losses}. Nothing was registered. Try a lower "
        "--lr (or leave it unset: it follows the batch size), a smaller --batch-size, a "
        "longer --warmup-epochs, --weights imagenet, or check the labels and images."
    )


def _chance_message(args: argparse.Namespace, prepared: _Data, final: dict[str, float]) -> str:
    """The refusal of a model no better than guessing: its numbers and what to try."""
    chance = prepared.chance
    return (
        f"The best model (epoch {int(final['epoch'])}) scores {final['val_top1']:.1%} held-out "
        f"top-1 on {chance.held_out} images: chance level (always answering the most "
        f"frequent class scores {chance.top1:.1%}); held-out loss {final['val_loss']:.4g}, "
        f"train loss {final['train_loss']:.4g}"
        + (f", after {args.restarts} restarts" if args.restarts else "")
        + ". Nothing was registered. Check that the images show what the labels say; then "
        f"try more --epochs, a lower --lr (this run's: {args.lr:.3g}), more images or a "
        "larger --val-fraction, or --weights imagenet."
    )


def _resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if not callable(v) and k != "command"}
