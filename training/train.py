"""Train a classifier on an ImageFolder tree, score it on a held-out split, register it.

``imageiq train --data DIR --arch ARCH --epochs N --image-size S``: the parser below builds
the arguments, :func:`main` does the work (the shape of torchvision's reference ``train.py``).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, Subset

from imageiq.architectures import ARCHITECTURES, MAIN_HEAD, WeightsSource, build_model, get_spec
from imageiq.inference import resolve_device
from imageiq.preprocessing import EvalTransform, PreprocessConfig
from imageiq.registry import DEFAULT_MODEL_NAME, ModelCard, RegisteredModel, register_model
from training.data import ImageDataset, fingerprint, scan_image_folder, stratified_split
from training.evaluate import classification_metrics, predict_loader


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", required=True, help="ImageFolder root: one directory per class")
    parser.add_argument("--arch", default="resnet18", help=f"one of {', '.join(ARCHITECTURES)}")
    parser.add_argument("--epochs", type=_at_least(1), default=10)
    parser.add_argument(
        "--image-size", type=_at_least(8), default=224, help="side of the model input"
    )
    parser.add_argument(
        "--resize-size",
        type=_at_least(8),
        default=None,
        help="shorter side before the centre crop (default: --image-size without pretrained "
        "weights, else the weights' own resize/crop ratio)",
    )
    parser.add_argument("--batch-size", type=_at_least(2), default=64)
    parser.add_argument(
        "--lr", type=_fraction(0, 10), default=2e-3, help="peak learning rate (AdamW)"
    )
    parser.add_argument("--weight-decay", type=_fraction(0, 10, closed=True), default=0.05)
    parser.add_argument("--label-smoothing", type=_fraction(0, 1, closed=True), default=0.1)
    parser.add_argument(
        "--weights",
        choices=["none", "imagenet"],
        default="none",
        help="initial backbone weights (imagenet downloads unless cached)",
    )
    parser.add_argument(
        "--weights-file",
        default=None,
        help="local state dict for the backbone (overrides --weights)",
    )
    parser.add_argument("--val-fraction", type=_fraction(0, 1), default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", type=_at_least(0), default=0, help="DataLoader worker processes"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    return parser


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid integer value: 'x'"
    return parse


def _fraction(low: float, high: float, *, closed: bool = False) -> Callable[[str], float]:
    """A float in (low, high), or [low, high] when ``closed``."""

    def parse(text: str) -> float:
        value = float(text)
        ok = low <= value <= high if closed else low < value < high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be within {low}..{high}, got {value}")
        return value

    parse.__name__ = "number"
    return parse


@dataclass(frozen=True)
class TrainResult:
    model: RegisteredModel
    metrics: dict[str, float]


def main(
    args: argparse.Namespace, *, max_image_pixels: int, console: Console | None = None
) -> TrainResult:
    console = console or Console()
    _seed_everything(args.seed)
    device = resolve_device(args.device)
    spec = get_spec(args.arch)
    weights: WeightsSource = "file" if args.weights_file else args.weights

    index = scan_image_folder(args.data)
    data_fingerprint = fingerprint(index)
    train_idx, val_idx = stratified_split(
        index.targets, val_fraction=args.val_fraction, seed=args.seed
    )
    if weights == "none":  # no crop margin unless asked: the whole image is seen
        preprocessing = PreprocessConfig(
            resize_size=args.resize_size or args.image_size, crop_size=args.image_size
        )
    else:  # a pretrained backbone keeps its weights' eval preset, scaled to --image-size
        preprocessing = PreprocessConfig.for_weights(
            spec.imagenet_weights, crop_size=args.image_size, resize_size=args.resize_size
        )
    transform = EvalTransform(preprocessing)
    dataset = ImageDataset(index.paths, index.targets, transform, max_pixels=max_image_pixels)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        Subset(dataset, train_idx),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(train_idx) > args.batch_size,  # no 1-image batch for BatchNorm
        num_workers=args.workers,
        generator=generator,
    )
    val_loader = DataLoader(
        Subset(dataset, val_idx), batch_size=args.batch_size * 2, num_workers=args.workers
    )
    console.print(
        f"[bold]{args.arch}[/] on {index.root}: {len(index.classes)} classes, "
        f"{len(train_idx)} train / {len(val_idx)} held-out images, {args.image_size}px, {device}"
    )

    net = build_model(
        arch=args.arch,
        num_classes=len(index.classes),
        weights=weights,
        weights_file=args.weights_file,
    ).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=args.lr,
        total_steps=max(1, args.epochs * len(train_loader)),
        pct_start=0.15,
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    started = time.perf_counter()
    history: list[dict[str, float]] = []
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    ) as progress:
        task = progress.add_task("train", total=args.epochs * len(train_loader), status="")
        for epoch in range(1, args.epochs + 1):
            net.train()
            running, seen = 0.0, 0
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                loss = loss_fn(net(x)[MAIN_HEAD], y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += loss.item() * len(y)
                seen += len(y)
                progress.update(
                    task,
                    advance=1,
                    description=f"epoch {epoch}/{args.epochs}",
                    status=f"loss {running / seen:.4f}",
                )
            targets, probs = predict_loader(net, val_loader, device=device)
            epoch_metrics = classification_metrics(targets, probs)
            history.append({"epoch": epoch, "train_loss": running / max(seen, 1), **epoch_metrics})
            progress.console.print(
                f"epoch {epoch}/{args.epochs}  train loss {running / max(seen, 1):.4f}  "
                f"held-out top-1 {epoch_metrics['top1']:.2%}"
            )

    final = {f"val_{k}": v for k, v in history[-1].items() if k != "epoch"}
    final["train_seconds"] = round(time.perf_counter() - started, 1)
    card = ModelCard(
        architecture=args.arch,
        labels=index.classes,
        preprocessing=preprocessing,
        metrics=final,
        dataset_fingerprint=data_fingerprint,
        training_config=_resolved_config(
            args, device=str(device), n_train=len(train_idx), n_val=len(val_idx), history=history
        ),
    )
    model = register_model(net.cpu(), card, name=args.model_name)
    console.print(
        f"held-out top-1 accuracy: [bold]{final['val_top1']:.2%}[/] on {len(val_idx)} images"
    )
    console.print(f"registered [bold]{model.tag}[/]")
    return TrainResult(model, final)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resolved_config(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    config = {k: v for k, v in vars(args).items() if not callable(v) and k != "command"}
    return {**config, **extra}
