"""A training run's directory: what was asked, what happened, and where to resume from.

runs/<model name>/<UTC time>/
  config.json      the resolved arguments, the data summary (incl. skipped files), seed
  metrics.json     one record per epoch (also metrics.csv)
  curves.png       loss and top-1 per epoch, train and validation
  skipped.txt      bad files left out of the data, with the reason
  checkpoints/last.pt   after every epoch (what --resume reads)
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from imageiq.errors import ConfigurationError


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoint = path / "checkpoints" / "last.pt"

    @classmethod
    def create(cls, root: Path, name: str) -> RunDir:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = root / name / stamp
        (path / "checkpoints").mkdir(parents=True)
        return cls(path)

    @classmethod
    def existing(cls, path: Path) -> RunDir:
        run = cls(path)
        if not (path / "config.json").is_file() or not run.checkpoint.is_file():
            raise ConfigurationError(
                f"{path} is not a resumable run directory (it needs config.json and "
                "checkpoints/last.pt, written after the first epoch)."
            )
        return run

    def write_config(self, config: dict[str, Any]) -> None:
        self._write_json("config.json", config)

    def read_config(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "config.json").read_text()))

    def write_skipped(self, skipped: list[tuple[str, str]]) -> None:
        lines = [f"{uri}\t{reason}\n" for uri, reason in skipped]
        (self.path / "skipped.txt").write_text("".join(lines))

    def write_history(self, history: list[dict[str, float]]) -> None:
        self._write_json("metrics.json", history)
        columns = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
        with (self.path / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
        self._plot(history)

    def _plot(self, history: list[dict[str, float]]) -> None:
        epochs = [row["epoch"] for row in history]
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            loss_ax.plot(epochs, [row.get(key) for row in history], marker="o", label=label)
        for key, label in (("train_top1", "train"), ("val_top1", "validation")):
            acc_ax.plot(epochs, [row.get(key) for row in history], marker="o", label=label)
        loss_ax.set(title="loss", xlabel="epoch")
        acc_ax.set(title="top-1 accuracy", xlabel="epoch", ylim=(0, 1))
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(self.path / "curves.png", dpi=100)
        plt.close(fig)

    def _write_json(self, name: str, value: Any) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
        tmp.replace(self.path / name)
