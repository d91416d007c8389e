"""The arguments of ``imageiq train``, each checked where it is parsed (exit 2 with the reason)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from imageiq.architectures import ARCHITECTURES
from imageiq.registry import DEFAULT_MODEL_NAME


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--data",
        default=None,
        help="ImageFolder root (one directory per class), or a CSV/JSONL manifest "
        "(path_or_s3_uri,label[,attribute...]); local or s3://",
    )
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
    parser.add_argument(
        "--batch-size",
        type=_at_least(2),
        default=None,
        help="images a step (default: auto, the largest power of two from 8 to 64 that "
        "leaves an epoch 20 steps)",
    )
    parser.add_argument(
        "--lr",
        type=_fraction(0, 10),
        default=None,
        help="peak learning rate, AdamW (default: auto, 2e-3 at batch 64 from scratch, 5e-4 "
        "with a pretrained backbone, scaled by the square root of batch / 64); a run that "
        "diverges restarts at a tenth of it",
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
    parser.add_argument(
        "--warmup-epochs",
        type=_fraction(0, 1000, closed=True),
        default=None,
        help="linear learning-rate warm-up, then cosine decay (default: auto, 20 steps or "
        "10%% of all steps, whichever is more, at most 30%%)",
    )
    parser.add_argument(
        "--freeze-epochs",
        type=_at_least(0),
        default=0,
        help="train only the heads (backbone frozen) for this many epochs, then fine-tune all",
    )
    parser.add_argument(
        "--patience",
        type=_at_least(0),
        default=5,
        help="stop after this many epochs without a better validation loss (0: never); "
        "the best epoch's weights are registered",
    )
    parser.add_argument(
        "--crop-scale",
        type=_fraction(0, 1, closed=True),
        default=0.35,
        help="smallest area of the random resized crop (1: no random crop)",
    )
    parser.add_argument(
        "--hflip", action=argparse.BooleanOptionalAction, default=True, help="random flips"
    )
    parser.add_argument(
        "--color-jitter",
        type=_fraction(0, 1, closed=True),
        default=0.2,
        help="brightness/contrast/saturation jitter strength (0: none)",
    )
    parser.add_argument(
        "--balance",
        choices=["none", "weights", "sampler"],
        default="none",
        help="for imbalanced classes: class-weighted loss, or a balanced sampler",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="mixed precision: auto is bf16 (or fp16) on a GPU, fp32 on the CPU",
    )
    parser.add_argument(
        "--run-dir", default="runs", help="where run directories go: RUN_DIR/<model-name>/<time>"
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="continue the run in this run directory from its last checkpoint "
        "(its own arguments apply; the others given are ignored)",
    )
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
