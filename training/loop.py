"""The epoch loop: multi-head loss, warm-up + cosine schedule, a frozen-backbone phase,
mixed precision, early stopping, divergence detection, and a checkpoint after every epoch
that ``--resume`` picks up exactly where the run stopped (weights, optimiser, schedule, RNG
states, history).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest
from torch import nn
from torch.utils.data import DataLoader

from imageiq.architectures import MAIN_HEAD, ImageIQNet
from imageiq.errors import ImageIQError
from training.evaluate import classification_metrics

IGNORE = -100  # an attribute value unknown for an image: no loss, not scored
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EXPLODED = 4.0  # a training loss this many times a uniform guess's has blown up
CHANCE_P_VALUE = 0.05  # held-out accuracy this likely under guessing is "at chance"


class TrainingDiverged(ImageIQError):
    """The loss blew up, or the held-out accuracy is no better than chance: the run's model
    is not registered. 422: the data and the arguments were understood, training on them
    did not work."""

    status, code = 422, "training_diverged"


@dataclass(frozen=True)
class Chance:
    """What guessing scores on the held-out split: its loss (a uniform guess's cross-entropy,
    ``log(classes)`` summed over the heads) and its top-1 (always the most frequent held-out
    class)."""

    loss: float
    top1: float
    held_out: int  # images

    def no_better(self, top1: float) -> bool:
        """True when ``top1`` is as likely as not to come from guessing: the one-sided
        binomial test against ``self.top1`` cannot reject it at CHANCE_P_VALUE. On 40 images
        of 2 classes that is up to 62.5%; on 15 of 3, up to 53.3%."""
        if self.held_out < 1:
            return False
        hits = round(top1 * self.held_out)
        test = binomtest(hits, self.held_out, min(self.top1, 1.0), alternative="greater")
        return bool(test.pvalue > CHANCE_P_VALUE)


def divergence(history: list[dict[str, float]], *, chance: Chance, warmup_epochs: float) -> str:
    """Why the run whose epochs are ``history`` diverged, or "" when it has not: a loss that
    is not a number, a training loss EXPLODED times a guess's, or a held-out accuracy at
    chance in two epochs after the warm-up with the held-out loss rising between them. One
    such epoch is not enough: a healthy run from scratch on 160 images dipped to 50% for an
    epoch (its BatchNorm statistics lag the weights) and recovered."""
    last = history[-1]
    epoch = int(last["epoch"])
    for key, name in (("train_loss", "training"), ("val_loss", "held-out")):
        if key in last and not math.isfinite(last[key]):
            return f"the {name} loss became {last[key]} in epoch {epoch}"
    if last["train_loss"] > EXPLODED * chance.loss:
        return (
            f"the training loss reached {last['train_loss']:.4g} in epoch {epoch}, over "
            f"{EXPLODED:g}x a uniform guess's {chance.loss:.3g}"
        )
    after = [r for r in history if r["epoch"] >= warmup_epochs and "val_top1" in r]
    if (
        len(after) >= 2
        and after[-1]["epoch"] == epoch
        and all(chance.no_better(r["val_top1"]) for r in after[-2:])
        and after[-1]["val_loss"] > after[-2]["val_loss"]
    ):
        return (
            f"the held-out top-1 stayed at chance level ({after[-2]['val_top1']:.1%}, "
            f"{after[-1]['val_top1']:.1%}; always answering the most frequent class scores "
            f"{chance.top1:.1%}) after the "
            f"warm-up while the held-out loss grew ({after[-2]['val_loss']:.4g} -> "
            f"{after[-1]['val_loss']:.4g}) in epoch {epoch}"
        )
    return ""


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    lr: float
    weight_decay: float
    label_smoothing: float
    warmup_epochs: float = 1.0
    freeze_epochs: int = 0
    patience: int = 0  # epochs without a better validation loss before stopping; 0: never
    precision: str = "fp32"  # fp32, bf16 or fp16 (fp16 on CUDA, with a gradient scaler)
    class_weights: list[float] | None = None


@dataclass
class FitState:
    """Everything an interrupted run needs to continue as if it had not been."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    stale_epochs: int = 0


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 1% to 100%, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    def __init__(
        self,
        net: ImageIQNet,
        *,
        config: FitConfig,
        heads: list[str],
        steps_per_epoch: int,
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        self.net, self.config, self.heads, self.device = net, config, heads, device
        self.generator = generator
        self.optimizer = torch.optim.AdamW(
            net.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        total = max(1, config.epochs * steps_per_epoch)
        warmup = round(config.warmup_epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(total, warmup)
        )
        weight = torch.tensor(config.class_weights, device=device) if config.class_weights else None
        self.main_loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
        self.head_loss = nn.CrossEntropyLoss(
            ignore_index=IGNORE, label_smoothing=config.label_smoothing
        )
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=config.precision == "fp16" and device.type == "cuda"
        )
        self.state = FitState()

    # --- one epoch ------------------------------------------------------------------------
    def train_epoch(
        self, loader: DataLoader[Any], *, on_step: Callable[[float, float], None]
    ) -> dict[str, float]:
        epoch = self.state.epoch + 1
        frozen = epoch <= self.config.freeze_epochs
        self.net.train()
        for p in self.net.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:  # a frozen backbone keeps its BatchNorm statistics too
            self.net.backbone.eval()
        total_loss, correct, seen = 0.0, 0, 0
        for x, targets in loader:
            x = x.to(self.device, non_blocking=True)
            targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
            with self._autocast():
                outputs = self.net(x)
                loss = self.loss(outputs, targets)
            value = loss.item()
            if not math.isfinite(value):  # diverged: stepping would only spread the NaN
                total_loss, seen = value, max(seen, 1)
                break
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n = len(x)
            total_loss += value * n
            correct += int((outputs[MAIN_HEAD].argmax(1) == targets[MAIN_HEAD]).sum())
            seen += n
            on_step(total_loss / seen, correct / seen)
        return {
            "train_loss": total_loss / max(seen, 1),
            "train_top1": correct / max(seen, 1),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "frozen_backbone": float(frozen),
        }

    @torch.no_grad()
    def recalibrate_batchnorm(self, loader: Iterable[Any], *, max_batches: int) -> None:
        """BatchNorm's running statistics measured afresh on up to ``max_batches`` training
        batches with the current weights (a plain average, not the running one), so the
        held-out split is scored with the statistics of the network it scores.

        Why: the running averages lag the weights. From scratch on 160 images (20 steps an
        epoch) the held-out loss jumped while the training loss fell; MobileNetV3's
        momentum of 0.01 leaves them mostly at their initial values for hundreds of steps,
        so a short run scored at chance whatever it had learnt. The data order and the
        augmentations' random draws are put back afterwards: the training run is the same
        with or without this. A frozen backbone keeps its pretrained statistics."""
        if self.state.epoch < self.config.freeze_epochs:
            return
        norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        rng, order = torch.get_rng_state(), self.generator.get_state()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        self.net.train()
        try:
            for i, (x, _) in enumerate(loader):
                if i >= max_batches:
                    break
                with self._autocast():
                    self.net(x.to(self.device, non_blocking=True))
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            torch.set_rng_state(rng)
            self.generator.set_state(order)

    def loss(
        self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        loss = self.main_loss(outputs[MAIN_HEAD].float(), targets[MAIN_HEAD])
        for head in self.heads:
            known = targets[head] != IGNORE
            if known.any():  # a batch with no known value would give NaN
                loss = loss + self.head_loss(outputs[head].float(), targets[head])
        return loss

    @torch.inference_mode()
    def evaluate(
        self, loader: Iterable[tuple[torch.Tensor, dict[str, torch.Tensor]]]
    ) -> dict[str, Any]:
        """Validation loss and metrics per head; also the raw (targets, probs) per head."""
        self.net.eval()
        total, seen = 0.0, 0
        targets: dict[str, list[np.ndarray]] = {h: [] for h in [MAIN_HEAD, *self.heads]}
        probs: dict[str, list[np.ndarray]] = {h: [] for h in targets}
        for x, y in loader:
            x = x.to(self.device)
            y = {k: v.to(self.device) for k, v in y.items()}
            with self._autocast():
                outputs = self.net(x)
            total += self.loss(outputs, y).item() * len(x)
            seen += len(x)
            for head in targets:
                targets[head].append(y[head].cpu().numpy())
                probs[head].append(torch.softmax(outputs[head].float(), 1).cpu().numpy())
        metrics: dict[str, float] = {"val_loss": total / max(seen, 1)}
        arrays = {h: (np.concatenate(targets[h]), np.concatenate(probs[h])) for h in targets}
        for head, (t, p) in arrays.items():
            known = t != IGNORE
            if not known.any():
                continue
            scores = classification_metrics(t[known], p[known])
            prefix = "val_" if head == MAIN_HEAD else f"val_{head}_"
            metrics.update({f"{prefix}{k}": v for k, v in scores.items()})
        return {"metrics": metrics, "arrays": arrays}

    # --- early stopping and the best weights ----------------------------------------------
    def end_epoch(self, record: dict[str, float]) -> bool:
        """Record the epoch; True when training should stop early."""
        state = self.state
        state.epoch += 1
        state.history.append({"epoch": state.epoch, **record})
        if record["val_loss"] < state.best_loss - 1e-6:
            state.best_loss, state.best_epoch, state.stale_epochs = (
                record["val_loss"],
                state.epoch,
                0,
            )
            state.best_weights = copy.deepcopy(
                {k: v.cpu() for k, v in self.net.state_dict().items()}
            )
        else:
            state.stale_epochs += 1
        return self.config.patience > 0 and state.stale_epochs >= self.config.patience

    # --- checkpoints ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "state": self.state.__dict__,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                    "loader": self.generator.get_state(),
                },
            },
            tmp,
        )
        tmp.replace(path)  # a kill while saving leaves the previous checkpoint intact

    def load(self, path: Path) -> None:
        saved = torch.load(path, map_location=self.device, weights_only=False)
        self.net.load_state_dict(saved["net"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = FitState(**saved["state"])
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["loader"].cpu())

    def _autocast(self) -> Any:
        dtype = _DTYPES.get(self.config.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)
