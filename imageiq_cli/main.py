"""The ``imageiq`` command: demo data, training, evaluation, the model registry, parity.

Each sub-command is a parser plus a plain function; :func:`main` builds the settings once
and dispatches. Domain errors print their message and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.table import Column, Table

from imageiq.console import console, err_console
from imageiq.errors import ImageIQError
from imageiq.settings import Settings, load_settings
from imageiq_cli.classify import add_commands as add_classify_commands
from imageiq_cli.jobs import add_commands as add_jobs_commands
from imageiq_cli.loop import add_commands as add_loop_commands
from imageiq_cli.ops import add_commands as add_ops_commands
from training.commands import cmd_evaluate, cmd_export, cmd_models_compare, cmd_predict


def build_parser() -> argparse.ArgumentParser:
    from training.train import add_arguments as add_train_arguments

    parser = argparse.ArgumentParser(prog="imageiq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write scikit-learn's digits as an ImageFolder of PNGs")
    p.add_argument("dest", type=Path)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser(
        "demo-model",
        help="train and register the digits demo model, unless the store already has a model",
    )
    p.add_argument("--data", type=Path, default=Path(".data/digits"))
    p.add_argument("--force", action="store_true", help="train even if a model exists")
    p.set_defaults(func=cmd_demo_model)

    from training.db_source import add_db_arguments

    p = add_train_arguments(sub.add_parser("train", help="train and register a model"))
    add_db_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="evaluation report of a registered model on labelled images"
    )
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        help="name:version (default: the active model); repeat to evaluate the ensemble "
        "(average probabilities) of several",
    )
    p.add_argument("--data", required=True, help="ImageFolder tree or CSV/JSONL manifest")
    p.add_argument(
        "--split",
        choices=["all", "val"],
        default="all",
        help="every image, or the model's own held-out split (its seed and fraction)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--report-dir", type=Path, default=None, help="write report.json and the plots here"
    )
    p.add_argument("--predictions-out", type=Path, default=None, help="write a CSV per image")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict", help="predict an unlabelled folder (or a manifest) to CSV, streaming"
    )
    p.add_argument("source", help="a folder of images (searched recursively) or a manifest")
    p.add_argument("--model", default=None, help="name:version (default: the active model)")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--top-k", type=int, default=1)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export", help="export a registered model to ONNX / TorchScript, checked against PyTorch"
    )
    p.add_argument("--model", default=None, help="name:version (default: the active model)")
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=["onnx", "torchscript"],
        required=True,
        help="repeat for several",
    )
    p.add_argument(
        "--data", default=None, help="images to check the export on (default: random images)"
    )
    p.add_argument("--images", type=int, default=100, help="how many images to check on")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest logit difference")
    p.set_defaults(func=cmd_export)

    models = sub.add_parser("models", help="the model registry").add_subparsers(
        dest="models_command", required=True
    )
    p = models.add_parser("compare", help="several versions' metrics side by side on the same data")
    p.add_argument("models", nargs="+", help="two or more name:version tags, champion first")
    p.add_argument("--data", required=True, help="ImageFolder tree or CSV/JSONL manifest")
    p.add_argument(
        "--split",
        choices=["all", "val"],
        default="all",
        help="every image, or the first model's held-out split",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_models_compare)

    p = models.add_parser("list", help="registered models, newest first")
    p.add_argument("--name", default=None, help="model name (default: the served setting)")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser(
        "publish",
        help="copy a registered version to the model repository every replica imports from",
    )
    p.add_argument("tag", help="name:version")
    p.set_defaults(func=cmd_models_publish)

    p = sub.add_parser(
        "quantize", help="register a static int8 ONNX Runtime version of a registered model"
    )
    p.add_argument("--model", required=True, help="name:version of the fp32 model")
    p.add_argument(
        "--data", required=True, help="the data the model was trained on (folder or manifest)"
    )
    p.add_argument(
        "--max-calibration", type=int, default=256, help="held-out images to calibrate on"
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="refuse when int8 top-1 is this much below fp32 (absolute; 0.01 = 1 point)",
    )
    p.add_argument(
        "--name", default=None, help="model name of the new version (default: the parent's)"
    )
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("parity", help="compare a running server with offline predictions")
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", default=None, help="name:version (default: what the server serves)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--min-agreement", type=float, default=0.995)
    p.set_defaults(func=cmd_parity)

    add_ops_commands(sub)
    add_loop_commands(sub)
    add_jobs_commands(sub)
    add_classify_commands(sub)
    return parser


def cmd_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.demo import write_digits

    counts = write_digits(args.dest)
    console.print(
        f"wrote {sum(counts.values())} digit images in {len(counts)} classes to {args.dest}"
    )
    return 0


def cmd_demo_model(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.demo import DEMO_RECIPE, write_digits
    from imageiq.registry import list_models

    existing = list_models(settings.model_name)
    if existing and not args.force:
        console.print(
            f"model store has {len(existing)} {settings.model_name} model(s); "
            f"newest {existing[0].tag}: nothing to do"
        )
        return 0
    write_digits(args.data)
    train_args = build_parser().parse_args(
        [
            "train",
            "--data",
            str(args.data),
            "--model-name",
            settings.model_name,
            *[_flag(k, v) for k, v in DEMO_RECIPE.items()],
        ]
    )
    return cmd_train(train_args, settings)


def _flag(key: str, value: object) -> str:
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name}={value}"


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """``--data db`` (what the service collected) and ``--data snapshot:<name:version>`` (the
    exact data set a registered model was trained on) are read with the service's settings;
    folders and manifests by the trainer itself."""
    from training.db_source import load_db_data, load_snapshot, query_from_args
    from training.sources import S3Options
    from training.train import main as train_main

    data = None
    source = str(args.data or "")
    if source == "db":
        data = load_db_data(settings, query_from_args(args), max_pixels=settings.max_image_pixels)
    elif source.startswith("snapshot:"):
        tag = source.removeprefix("snapshot:")
        data = load_snapshot(settings, tag, max_pixels=settings.max_image_pixels)
    train_main(
        args,
        max_image_pixels=settings.max_image_pixels,
        console=console,
        s3=S3Options(endpoint_url=settings.s3_endpoint_url),
        data=data,
    )
    return 0


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.registry import list_models

    name = args.name or settings.model_name
    models = list_models(name)
    if not models:
        console.print(f"no {name} models registered")
        return 0
    table = Table("arch", "classes", "heads", "input", "top-1", "created (UTC)", box=None)
    # The tag is what users copy: never truncated.
    table.columns.insert(0, Column("tag", min_width=max(len(m.tag) for m in models)))
    for m in models:
        card = m.card
        top1 = card.metrics.get("val_top1")
        table.add_row(
            m.tag,
            card.architecture,
            str(len(card.labels)),
            ",".join(card.heads) or "-",
            f"{card.preprocessing.crop_size}px",
            f"{top1:.2%}" if top1 is not None else "-",
            card.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    # Piped output has no terminal width to respect: keep whole rows for grep and friends.
    (console if console.is_terminal else Console(width=200)).print(table)
    return 0


def cmd_models_publish(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.model_repo import ModelRepository

    console.print(f"published {args.tag} to {ModelRepository(settings).publish(args.tag)}")
    return 0


def cmd_quantize(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.onnx_int8 import RUNTIME
    from training.quantize import quantize_model
    from training.sources import S3Options

    with console.status(f"quantizing {args.model}"):
        model = quantize_model(
            tag=args.model,
            data=args.data,
            max_calibration=args.max_calibration,
            max_accuracy_drop=args.max_accuracy_drop,
            name=args.name,
            max_pixels=settings.max_image_pixels,
            s3=S3Options(endpoint_url=settings.s3_endpoint_url),
        )
    metrics, split = model.card.metrics, model.card.training_config["evaluation_split"]
    console.print(
        f"registered [bold]{model.tag}[/] ({RUNTIME}): held-out top-1 fp32 "
        f"{metrics['fp32_top1']:.2%}, int8 {metrics['int8_top1']:.2%} on {split['images']} "
        f"images; calibrated on {model.card.training_config['calibration_images']}"
    )
    if not split["same_dataset"]:
        console.print(
            f"[yellow]note[/]: {args.data} is not known to be the data {args.model} was trained "
            "on (no or another dataset fingerprint): the images scored may include training images"
        )
    return 0


def cmd_parity(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq_cli.parity import check_parity

    report = check_parity(
        url=args.url,
        data=args.data,
        model=args.model,
        limit=args.limit,
        concurrency=args.concurrency,
        max_pixels=settings.max_image_pixels,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
    )
    console.print(
        f"{report.model}: served and offline top-1 agree on {report.agreed}/{report.images} "
        f"images ({report.agreement:.2%}); max score difference where they agree "
        f"{report.max_score_diff:.2e}"
    )
    for path, served, offline in report.disagreements[:10]:
        console.print(f"  {path}: served {served}, offline {offline}")
    return 0 if report.agreement >= args.min_agreement else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()  # an invalid value: a ConfigurationError naming it
    except ImageIQError as e:
        err_console.print(f"[red]error[/] ({e.code}): {e.message}")
        return 2
    try:
        return int(args.func(args, settings))
    except ImageIQError as e:
        err_console.print(f"[red]error[/] ({e.code}): {e.message}")
        return 2
    except ValidationError as e:  # e.g. a preprocessing config the arguments make invalid
        err_console.print(f"[red]error[/] (invalid_argument): {e}")
        return 2


def run() -> None:
    sys.exit(main())
