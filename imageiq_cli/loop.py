"""The closed loop's commands: ``imageiq retrain``, ``imageiq golden`` and ``imageiq rollout``
(docs/rollout.md walks through them)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any, Literal

from rich.table import Table

from imageiq.console import console
from imageiq.errors import ConfigurationError
from imageiq.settings import Settings


def add_commands(sub: Any) -> None:
    from training.retrain import add_arguments as add_retrain_arguments

    p = add_retrain_arguments(
        sub.add_parser(
            "retrain",
            help="train a challenger on the collected labels, compare it with the champion, "
            "promote it (activate or canary) or not",
        )
    )
    p.set_defaults(func=cmd_retrain)

    golden = sub.add_parser("golden", help="pinned golden evaluation sets").add_subparsers(
        dest="golden_command", required=True
    )
    p = golden.add_parser(
        "freeze",
        help="pin labelled stored images (with their labels now) as a golden set; they never "
        "train a model",
    )
    p.add_argument("--name", default="default", help="the set's name (default: default)")
    p.add_argument("--per-class", type=int, default=20, help="images per class taken (at most)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ids", default=None, help="a file of image ids (one per line) instead of sampling"
    )
    p.add_argument(
        "--replace", action="store_true", help="replace the set's images instead of adding"
    )
    p.set_defaults(func=cmd_golden_freeze)
    p = golden.add_parser("show", help="a golden set's images per class")
    p.add_argument("--name", default="default")
    p.set_defaults(func=cmd_golden_show)

    rollouts = sub.add_parser("rollout", help="canary rollouts").add_subparsers(
        dest="rollout_command", required=True
    )
    p = rollouts.add_parser("status", help="the running canary and the latest ones, with figures")
    p.add_argument("--model-name", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rollout_status)
    p = rollouts.add_parser("start", help="start a canary of a registered version by hand")
    p.add_argument("challenger", help="name:version")
    p.add_argument("--share", type=float, default=0.1)
    p.add_argument("--promote-after", type=int, default=0)
    p.add_argument("--min-requests", type=int, default=50)
    p.add_argument(
        "--min-feedback",
        type=int,
        default=20,
        help="labelled predictions per version before agreement with feedback counts",
    )
    p.set_defaults(func=cmd_rollout_start)
    for verb, what in (
        ("promote", "make the canary's challenger the active version on every replica"),
        ("rollback", "end the canary: every request goes to the champion again"),
    ):
        p = rollouts.add_parser(verb, help=what)
        p.add_argument("--model-name", default=None)
        p.add_argument("--reason", default=f"{verb} by hand")
        p.set_defaults(func=cmd_rollout_end, verb=verb)


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.rollout import RolloutConflict
    from training.retrain import RetrainLocked, run

    try:
        result = run(args, settings, console=console)
    except (RetrainLocked, RolloutConflict) as e:
        if not args.skip_if_busy:
            raise
        console.print(f"[yellow]skipped[/]: {e.message}")
        return 0
    console.print(
        f"[bold]{result.outcome}[/]: challenger {result.challenger} vs champion "
        f"{result.champion or 'none'} (evaluation {result.evaluation_id}"
        + (f", rollout {result.rollout_id}" if result.rollout_id else "")
        + ")"
    )
    for reason in result.reasons:
        console.print(f"  - {reason}")
    console.print(f"report: {result.report_dir / 'comparison.md'}")
    return 0


def cmd_golden_freeze(args: argparse.Namespace, settings: Settings) -> int:
    from training.golden import freeze

    counts = freeze(
        settings,
        name=args.name,
        per_class=args.per_class,
        seed=args.seed,
        ids_file=args.ids,
        replace=args.replace,
        actor=_actor(),
    )
    total = sum(counts.values())
    console.print(f"golden set {args.name!r}: {total} images in {len(counts)} classes")
    for label, n in sorted(counts.items()):
        console.print(f"  {label}: {n}")
    return 0


def cmd_golden_show(args: argparse.Namespace, settings: Settings) -> int:
    from training.golden import describe

    counts = describe(settings, name=args.name)
    if not counts:
        console.print(f"no golden set {args.name!r}")
        return 0
    for label, n in sorted(counts.items()):
        console.print(f"  {label}: {n}")
    return 0


def cmd_rollout_status(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq import rollout
    from imageiq.backends import open_database

    name = args.model_name or settings.model_name
    engine = open_database(settings)
    rows = rollout.latest(engine, name)
    if args.json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], default=str, indent=2) + "\n")
        return 0
    if not rows:
        console.print(f"no canary of {name} so far")
        return 0
    table = Table("id", "challenger", "champion", "share", "state", "started", "why", box=None)
    for r in rows:
        table.add_row(
            str(r.id),
            r.challenger_version,
            r.champion_version,
            f"{r.share:.0%}",
            r.state,
            r.started_at.strftime("%Y-%m-%d %H:%M"),
            r.reason or "; ".join(r.last_stats.get("reasons", [])),
        )
    console.print(table)
    running = next((r for r in rows if r.state == "running"), None)
    if running and running.last_stats.get("versions"):
        figures = Table(
            "version", "requests", "errors", "confidence", "p95 ms", "agreement", box=None
        )
        for version, s in running.last_stats["versions"].items():
            figures.add_row(
                version,
                str(s["requests"]),
                f"{s['error_rate']:.2%}",
                _num(s["mean_confidence"], ".3f"),
                _num(s["p95_latency_ms"], ".1f"),
                _num(s["agreement"], ".2%") + f" of {s['feedback']}",
            )
        console.print(figures)
    return 0


def cmd_rollout_start(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq import rollout
    from imageiq.backends import open_database
    from imageiq.model_repo import ModelRepository

    name, _, version = args.challenger.partition(":")
    if not version:
        raise ConfigurationError("Name the challenger as name:version.")
    started = rollout.start_by_hand(
        open_database(settings),
        repo=ModelRepository(settings),
        model_name=name,
        challenger_version=version,
        share=args.share,
        policy=rollout.RolloutPolicy(
            promote_after=args.promote_after,
            min_requests=args.min_requests,
            min_feedback=args.min_feedback,
        ),
        actor=_actor(),
    )
    console.print(
        f"canary {started.id}: {started.share:.0%} of {name} requests to {started.challenger}"
    )
    return 0


def cmd_rollout_end(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq import rollout
    from imageiq.backends import open_database

    name = args.model_name or settings.model_name
    engine = open_database(settings)
    running = [r for r in rollout.running(engine) if r.model_name == name]
    if not running:
        raise ConfigurationError(f"No canary of {name} is running (imageiq rollout status).")
    state: Literal["promoted", "rolled_back"] = (
        "promoted" if args.verb == "promote" else "rolled_back"
    )
    ended = rollout.end_by_hand(
        engine, running[0].id, state=state, actor=_actor(), reason=args.reason
    )
    console.print(f"{ended.challenger}: {state.replace('_', ' ')}")
    return 0


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
