"""The recipe's size-dependent defaults (batch size, peak learning rate, warm-up), resolved
from the number of training images.

Why: the fixed defaults (batch 64, one warm-up epoch, peak LR 2e-3) came from the digits
demo, 1,437 training images, 22 optimiser steps an epoch. On 160 images the same recipe
makes 2 steps an epoch: the warm-up is over after 2 updates, the network then moves at the
full rate from random weights, and the BatchNorm running statistics the held-out split is
scored with never catch up. A user's run diverged that way (held-out loss 0.73 -> 9.6 -> 398,
50% on 2 classes) where batch 16 reached 97.5%. So the recipe counts optimiser steps, not
epochs: an epoch has at least :data:`MIN_STEPS_PER_EPOCH` steps where the data allows, the
warm-up lasts at least :data:`MIN_WARMUP_STEPS`, and the learning rate follows the batch
size. On the digits demo (1,437 images) the resolved recipe is the old one: batch 64,
LR 2e-3, a warm-up of one epoch.

Every value given on the command line wins; only the ones left at "auto" (None) are
resolved, and the resolved ones are what the run records, so ``--resume`` reuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_STEPS_PER_EPOCH = 20  # the batch size shrinks (to MIN_BATCH) until an epoch has this many
MIN_BATCH, MAX_BATCH = 8, 64  # powers of two; below 8 BatchNorm's batch statistics get noisy
REFERENCE_BATCH = 64  # the batch size the reference learning rates below were measured at
SCRATCH_LR = 2e-3  # AdamW from random weights at REFERENCE_BATCH: the digits demo's
PRETRAINED_LR = 5e-4  # a pretrained backbone: a quarter, so fine-tuning keeps its features
MIN_WARMUP_STEPS = 20  # updates before the learning rate peaks, however small the data
WARMUP_SHARE = 0.1  # ... or this share of all steps, whichever is more
MAX_WARMUP_SHARE = 0.3  # ... but never more than this share: the decay needs steps too
FALLBACK_LR_FACTOR = 0.1  # a restart after a divergence: at most this share of the lr before


@dataclass(frozen=True)
class Recipe:
    """The resolved values, and which of them were resolved rather than given."""

    batch_size: int
    lr: float
    warmup_epochs: float  # warmup_steps / steps_per_epoch: what --warmup-epochs would say
    steps_per_epoch: int
    warmup_steps: int
    total_steps: int
    resolved: tuple[str, ...] = ()  # "batch_size", "lr", "warmup_epochs": the automatic ones

    def describe(self) -> str:
        """One console line: each value, "auto" after the resolved ones."""

        def mark(name: str) -> str:
            return " (auto)" if name in self.resolved else ""

        return (
            f"batch {self.batch_size}{mark('batch_size')}, peak lr {self.lr:.3g}{mark('lr')}, "
            f"warm-up {self.warmup_steps} steps = {self.warmup_epochs:.3g} epochs"
            f"{mark('warmup_epochs')}, {self.steps_per_epoch} steps an epoch, "
            f"{self.total_steps} in all"
        )


def resolve_recipe(
    n_train: int,
    *,
    epochs: int,
    batch_size: int | None = None,
    lr: float | None = None,
    warmup_epochs: float | None = None,
    pretrained: bool = False,
) -> Recipe:
    """The recipe for ``n_train`` training images: each None resolved, the rest kept."""
    if n_train < 1 or epochs < 1:
        raise ValueError(f"need at least one image and one epoch, got {n_train} and {epochs}")
    given = {"batch_size": batch_size, "lr": lr, "warmup_epochs": warmup_epochs}
    resolved = tuple(name for name, value in given.items() if value is None)
    batch = batch_size if batch_size is not None else auto_batch_size(n_train)
    per_epoch = steps_per_epoch(n_train, batch)
    total = epochs * per_epoch
    if warmup_epochs is None:
        warmup = auto_warmup_steps(total)
        warmup_epochs = warmup / per_epoch
    else:
        warmup = round(warmup_epochs * per_epoch)  # as the schedule counts it
    return Recipe(
        batch_size=batch,
        lr=lr if lr is not None else auto_lr(batch, pretrained=pretrained),
        warmup_epochs=warmup_epochs,
        steps_per_epoch=per_epoch,
        warmup_steps=warmup,
        total_steps=total,
        resolved=resolved,
    )


def auto_batch_size(n_train: int) -> int:
    """The largest power of two from MIN_BATCH to MAX_BATCH that leaves an epoch at least
    MIN_STEPS_PER_EPOCH steps (MIN_BATCH when even that cannot)."""
    fits = max(1, n_train // MIN_STEPS_PER_EPOCH)
    return min(MAX_BATCH, max(MIN_BATCH, 1 << (fits.bit_length() - 1)))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps an epoch makes: the training loader drops a last partial batch (no
    1-image batch for BatchNorm) unless the whole set fits in one."""
    return n_train // batch_size if n_train > batch_size else 1


def auto_lr(batch_size: int, *, pretrained: bool) -> float:
    """The reference peak LR scaled by the square root of the batch size's ratio to
    REFERENCE_BATCH: the scaling rule for Adam-type optimisers (Malladi et al., 2022, "On
    the SDEs and Scaling Rules for Adaptive Gradient Algorithms"); a linear one would
    starve the small batches."""
    reference = PRETRAINED_LR if pretrained else SCRATCH_LR
    return reference * math.sqrt(batch_size / REFERENCE_BATCH)


def auto_warmup_steps(total_steps: int) -> int:
    """MIN_WARMUP_STEPS or WARMUP_SHARE of all steps, whichever is more, but at most
    MAX_WARMUP_SHARE of them."""
    wanted = max(MIN_WARMUP_STEPS, round(WARMUP_SHARE * total_steps))
    return min(wanted, round(MAX_WARMUP_SHARE * total_steps))


def fallback_lr(lr: float, *, automatic: float) -> float:
    """The peak LR of a restart after a run at ``lr`` diverged: a tenth of it, and never
    more than the automatic one (``automatic``), so a hand-set rate far off the scale (say
    ``--lr 5``) falls back to the recipe's own in one restart rather than in four."""
    return min(lr * FALLBACK_LR_FACTOR, automatic)
