"""The epoch loop on tiny synthetic batches: frozen phase, multi-head loss, schedule,
early stopping and an exact checkpoint round trip."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from imageiq.architectures import build_model
from training.loop import IGNORE, FitConfig, Trainer, cosine_with_warmup
from training.train import _class_weights


def batches(n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 3, 16, 16, generator=g)
        shiny = torch.randint(0, 2, (8,), generator=g)
        shiny[0] = IGNORE  # an unknown attribute value
        out.append((x, {"label": torch.randint(0, 3, (8,), generator=g), "shiny": shiny}))
    return out


def trainer(**config: object) -> Trainer:
    torch.manual_seed(0)
    net = build_model(arch="resnet18", num_classes=3, heads={"shiny": 2})
    fit = FitConfig(
        **{"epochs": 3, "lr": 1e-3, "weight_decay": 0.0, "label_smoothing": 0.1, **config}
    )
    return Trainer(
        net,
        config=fit,
        heads=["shiny"],
        steps_per_epoch=4,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
    )


def test_schedule_warms_up_then_decays_to_zero() -> None:
    f = cosine_with_warmup(total_steps=100, warmup_steps=10)
    assert f(0) == 0.01 and math.isclose(f(10), 1.0)
    assert f(55) < f(10) and math.isclose(f(100), 0.0, abs_tol=1e-12)


def test_frozen_epochs_train_only_the_heads() -> None:
    t = trainer(freeze_epochs=1)
    backbone = {k: v.clone() for k, v in t.net.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in t.net.heads.state_dict().items()}
    record = t.train_epoch(batches(), on_step=lambda loss, acc: None)
    assert record["frozen_backbone"] == 1.0
    for k, v in t.net.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k  # weights and BatchNorm statistics
    assert any(not torch.equal(v, heads[k]) for k, v in t.net.heads.state_dict().items())
    t.end_epoch({**record, "val_loss": 1.0})
    assert t.train_epoch(batches(), on_step=lambda loss, acc: None)["frozen_backbone"] == 0.0
    changed = [k for k, v in t.net.backbone.state_dict().items() if not torch.equal(v, backbone[k])]
    assert changed


def test_unknown_attribute_values_are_ignored_not_nan() -> None:
    t = trainer()
    x, y = batches(1)[0]
    y["shiny"][:] = IGNORE  # a batch where no image has a known `shiny`
    assert torch.isfinite(t.loss(t.net(x), y))
    result = t.evaluate(batches(2))
    assert set(result["metrics"]) >= {"val_loss", "val_top1", "val_shiny_top1"}


def test_early_stopping_keeps_the_best_epoch() -> None:
    t = trainer(patience=2)
    for loss in (1.0, 0.5, 0.7, 0.8):
        stop = t.end_epoch({"val_loss": loss})
    assert stop and t.state.best_epoch == 2 and t.state.best_weights is not None
    assert not trainer(patience=0).end_epoch({"val_loss": 1.0})


def test_checkpoint_round_trip_continues_identically(tmp_path: Path) -> None:
    data = batches()
    a = trainer()
    a.train_epoch(data, on_step=lambda loss, acc: None)
    a.end_epoch({"val_loss": 1.0})
    a.save(tmp_path / "last.pt")
    expected = a.train_epoch(data, on_step=lambda loss, acc: None)

    b = trainer()
    b.load(tmp_path / "last.pt")
    assert b.state.epoch == 1 and b.state.history == a.state.history[:1]
    assert b.train_epoch(data, on_step=lambda loss, acc: None) == expected
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k


def test_class_weights_average_one_and_favour_rare_classes() -> None:
    weights = _class_weights([0, 0, 0, 1], 2)
    assert weights[1] > weights[0]
    assert math.isclose((3 * weights[0] + weights[1]) / 4, 1.0)
