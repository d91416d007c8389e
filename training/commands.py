"""The CLI commands that score registered models: ``evaluate`` (reports and ensembles),
``models compare``, ``export`` and ``predict``. :mod:`imageiq.cli` builds their parsers.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from imageiq.console import console
from imageiq.errors import ConfigurationError
from imageiq.settings import Settings


def _evaluation_set(
    args: argparse.Namespace, settings: Settings, card: Any, tag: str
) -> tuple[Any, list[int]]:
    """The labelled data and the indices to score: all, or ``tag``'s held-out split."""
    from training.data import stratified_split
    from training.sources import S3Options, load_data

    if args.batch_size < 1:
        raise ConfigurationError("--batch-size must be at least 1.")
    data = load_data(
        args.data,
        max_pixels=settings.max_image_pixels,
        s3=S3Options(endpoint_url=settings.s3_endpoint_url),
    )
    if args.split != "val":
        return data, list(range(len(data.samples)))
    config = card.training_config
    if "seed" not in config or "val_fraction" not in config:
        raise ConfigurationError(f"{tag} records no held-out split.")
    if card.dataset_fingerprint != data.fingerprint:
        console.print(
            f"[yellow]note[/]: {args.data} is not the data {tag} was trained on "
            "(fingerprints differ): its split is not the model's held-out one"
        )
    _, indices = stratified_split(
        data.targets, val_fraction=config["val_fraction"], seed=config["seed"]
    )
    return data, indices


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    import csv

    from rich.progress import Progress

    from imageiq.inference import Classifier
    from training.report import Ensemble, build_report, predict_data, predict_ensemble

    tags = args.models or [settings.model_tag]
    members = [Classifier.load(tag, device=settings.device) for tag in tags]
    first = members[0]
    data, indices = _evaluation_set(args, settings, first.model.card, first.model.tag)
    scorer: Classifier | Ensemble = first if len(members) == 1 else Ensemble(members)
    name = scorer.name if isinstance(scorer, Ensemble) else first.model.tag
    with Progress(console=console) as progress:
        task = progress.add_task(f"evaluating {name}", total=len(indices) * len(members))
        options = {
            "batch_size": args.batch_size,
            "max_pixels": settings.max_image_pixels,
            "progress": lambda n: progress.advance(task, n),
        }
        if isinstance(scorer, Ensemble):
            arrays = predict_ensemble(scorer, data, indices, **options)
        else:
            arrays = predict_data(scorer, data, indices, **options)
    report = build_report(scorer, arrays, out_dir=args.report_dir)
    console.print(
        f"[bold]{name}[/] on {args.data} ({args.split}: {len(indices)} images"
        f", {len(data.skipped)} skipped)"
    )
    table = Table("head", "images", "top-1", "top-5", "macro-F1", "ECE (T=1)", "ECE", "T", box=None)
    for head, section in report["heads"].items():
        m, cal = section["metrics"], section["calibration"]
        table.add_row(
            head,
            str(section["images"]),
            f"{m['top1']:.4f}",
            f"{m['top5']:.4f}" if "top5" in m else "-",
            f"{m['macro_f1']:.4f}",
            f"{cal['ece_uncalibrated']:.4f}",
            f"{cal['ece']:.4f}",
            f"{cal['temperature']:.3f}",
        )
    console.print(table)
    if args.report_dir:
        console.print(f"report and plots in {args.report_dir}")
    if args.predictions_out:
        targets, probs, _ = arrays["label"]
        with args.predictions_out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "predicted", "score"])
            for i, target, row in zip(indices, targets, probs, strict=True):
                best = int(row.argmax())
                writer.writerow(
                    [
                        data.samples[i].uri,
                        scorer.labels[target],
                        scorer.labels[best],
                        f"{row[best]:.6f}",
                    ]
                )
        console.print(f"predictions written to {args.predictions_out}")
    return 0


def cmd_models_compare(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import Progress

    from imageiq.inference import Classifier
    from training.report import build_report, predict_data

    if len(args.models) < 2:
        raise ConfigurationError("models compare needs at least two tags.")
    members = [Classifier.load(tag, device=settings.device) for tag in args.models]
    first = members[0]
    data, indices = _evaluation_set(args, settings, first.model.card, first.model.tag)
    reports = []
    with Progress(console=console) as progress:
        task = progress.add_task("scoring", total=len(indices) * len(members))
        for classifier in members:
            arrays = predict_data(
                classifier,
                data,
                indices,
                batch_size=args.batch_size,
                max_pixels=settings.max_image_pixels,
                progress=lambda n: progress.advance(task, n),
            )
            reports.append(build_report(classifier, arrays))
    console.print(f"on {args.data} ({args.split}: {len(indices)} images)")
    names = [chr(ord("A") + i) if i < 26 else f"M{i}" for i in range(len(members))]
    for short, m in zip(names, members, strict=True):
        console.print(f"  {short} = {m.model.tag}", soft_wrap=True)
    table = Table("metric", *names, f"change ({names[-1]} - A)", box=None)
    rows: list[tuple[str, list[float | None]]] = []
    for head in reports[0]["heads"]:
        for key in ("top1", "top5", "macro_f1", "log_loss"):
            values = [r["heads"].get(head, {}).get("metrics", {}).get(key) for r in reports]
            if any(v is not None for v in values):
                rows.append((f"{head} {key}", values))
        ece = [r["heads"].get(head, {}).get("calibration", {}).get("ece") for r in reports]
        rows.append((f"{head} ECE", ece))
    for label, values in rows:
        change = (
            f"{values[-1] - values[0]:+.4f}"
            if values[0] is not None and values[-1] is not None
            else "-"
        )
        table.add_row(label, *("-" if v is None else f"{v:.4f}" for v in values), change)
    console.print(table)
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from imageiq.export import export_model
    from imageiq.inference import Classifier

    if args.images < 1:
        raise ConfigurationError("--images must be at least 1.")
    classifier = Classifier.load(args.model or settings.model_tag)
    if args.data:
        from training.sources import S3Options, load_data

        data = load_data(
            args.data,
            max_pixels=settings.max_image_pixels,
            s3=S3Options(endpoint_url=settings.s3_endpoint_url),
        )
        batch = torch.stack(
            [
                classifier.prepare(
                    classifier.decode(data.read(i), max_pixels=settings.max_image_pixels).image
                )
                for i in range(min(args.images, len(data.samples)))
            ]
        )
    else:
        generator = torch.Generator().manual_seed(0)
        shape = (args.images, *classifier.input_shape)
        batch = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    inputs = classifier.transform.normalize(batch)
    exports = export_model(
        classifier.model.tag, formats=args.formats, inputs=inputs, tolerance=args.tolerance
    )
    for fmt, info in exports.items():
        console.print(
            f"{fmt}: {classifier.model.path}/{info['file']}, max |logit difference| from "
            f"PyTorch {info['max_abs_diff']:.2e} on {info['images']} images"
        )
    return 0


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import Progress

    from imageiq.inference import Classifier
    from training.predict import list_inputs, predict_to_csv
    from training.sources import BlobReader, S3Options

    if args.batch_size < 1 or not 1 <= args.top_k <= 100:
        raise ConfigurationError("--batch-size must be at least 1 and --top-k within 1..100.")
    s3 = S3Options(endpoint_url=settings.s3_endpoint_url)
    classifier = Classifier.load(args.model or settings.model_tag, device=settings.device)
    inputs = list_inputs(args.source, max_pixels=settings.max_image_pixels, s3=s3)
    with Progress(console=console) as progress:
        task = progress.add_task(f"predicting with {classifier.model.tag}", total=len(inputs))
        summary = predict_to_csv(
            classifier,
            inputs,
            args.out,
            batch_size=args.batch_size,
            top_k=args.top_k,
            max_pixels=settings.max_image_pixels,
            reader=BlobReader(s3=s3),
            progress=lambda n: progress.advance(task, n),
        )
    console.print(
        f"{summary.images} images, {summary.failed} could not be read: predictions in {summary.out}"
    )
    return 0
