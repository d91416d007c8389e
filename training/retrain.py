"""``imageiq retrain``: the closed loop's one command.

1. Takes the model name's retrain lock (a PostgreSQL advisory lock held for the run, or a
   file lock beside the SQLite database), so two runs never overlap: a CronJob's and one
   started by hand included.
2. Reads what the service collected (:mod:`training.db_source`): the effective human label
   of every stored image, the golden set's images left out.
3. Trains a challenger on it with the adaptive recipe (:mod:`training.train`), registering
   it with its dataset snapshot.
4. Scores the champion (the version marked active) and the challenger on the same held-out
   split and on the pinned golden set (:mod:`training.compare`), and decides by the
   promotion rule; writes the comparison report (JSON, Markdown, confusion matrices).
5. Records the run in ``evaluations`` (and the audit log), and rolls a promoted challenger
   out: published to the model repository (:mod:`imageiq.model_repo`), then activated on
   every replica, or started as a canary (:mod:`imageiq.rollout`).

A run that fails (no usable data, a diverged training, an unreachable store) is recorded
with outcome ``failed`` and exits non-zero, which fails the CronJob's Job.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import getpass
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from imageiq import rollout
from imageiq.backends import open_database
from imageiq.db.engine import check_migrated
from imageiq.db.schema import AuditEntry, Evaluation, Model, utcnow
from imageiq.errors import ConfigurationError, ImageIQError
from imageiq.inference import Classifier
from imageiq.model_repo import ModelRepository
from imageiq.registry import DEFAULT_MODEL_NAME
from imageiq.settings import Settings


class RetrainLocked(ImageIQError):
    status, code = 409, "retrain_running"


@dataclass(frozen=True)
class RetrainResult:
    evaluation_id: int
    outcome: str  # promoted, canary, rejected
    champion: str | None
    challenger: str
    reasons: list[str]
    report_dir: Path
    rollout_id: int | None = None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training options (``imageiq train``'s), the data filters and the decision's."""
    from training.db_source import add_db_arguments
    from training.options import add_arguments as add_train_arguments

    add_train_arguments(parser)
    parser.set_defaults(data="db")
    add_db_arguments(parser)
    g = parser.add_argument_group("champion vs challenger")
    g.add_argument(
        "--golden",
        default="default",
        help="the golden set both models are also scored on (imageiq golden freeze); "
        "ignored when no such set exists",
    )
    g.add_argument("--metric", choices=["macro_f1", "top1"], default="macro_f1")
    g.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="how much better the challenger's primary metric must be (absolute)",
    )
    g.add_argument(
        "--class-tolerance",
        type=float,
        default=0.05,
        help="how much worse any one class the champion knew may get",
    )
    g.add_argument(
        "--min-class-support",
        type=int,
        default=5,
        help="classes with fewer evaluation images are reported, not decisive",
    )
    g.add_argument(
        "--rollout",
        choices=["activate", "canary"],
        default="canary",
        help="what a promotion does: activate on every replica at once, or start a canary "
        "(without a champion it always activates)",
    )
    g.add_argument("--canary-share", type=float, default=0.1)
    g.add_argument(
        "--promote-after",
        type=int,
        default=0,
        help="a canary not worse after this many challenger requests is promoted (0: by hand)",
    )
    g.add_argument("--report-dir", default=None, help="default: the run directory/comparison")
    g.add_argument(
        "--skip-if-busy",
        action="store_true",
        help="exit 0 (skipped) when another retrain of the model runs or its canary is "
        "undecided, instead of failing (for schedules)",
    )
    return parser


def run(
    args: argparse.Namespace, settings: Settings, *, console: Console | None = None
) -> RetrainResult:
    from training.compare import PromotionPolicy, compare_models, decide, write_report
    from training.data import stratified_split
    from training.db_source import load_db_data, query_from_args
    from training.golden import load_golden
    from training.train import main as train_main

    console = console or Console()
    if not 0.0 < args.canary_share < 1.0:
        raise ConfigurationError("--canary-share must be between 0 and 1 (exclusive).")
    name = args.model_name or DEFAULT_MODEL_NAME
    engine = open_database(settings)
    check_migrated(engine)
    repo = ModelRepository(settings)
    actor = f"cli:{getpass.getuser()}"
    started = utcnow()
    with retrain_lock(engine, settings, name):
        champion_tag = active_version(engine, name)
        if champion_tag and args.rollout == "canary":
            busy = [r for r in rollout.running(engine) if r.model_name == name]
            if busy:
                raise rollout.RolloutConflict(
                    f"A canary of {busy[0].challenger} is running (rollout {busy[0].id}): "
                    "promote or roll it back before retraining (imageiq rollout status)."
                )
        golden_ids = golden_set(engine, args.golden)
        dataset: dict[str, Any] = {"golden_set": args.golden if golden_ids else None}
        challenger_tag: str | None = None
        try:
            query = dataclasses.replace(
                query_from_args(args), exclude=query_from_args(args).exclude | set(golden_ids)
            )
            data = load_db_data(settings, query, max_pixels=settings.max_image_pixels)
            dataset.update(
                {
                    "source": data.source,
                    "images": len(data.samples),
                    "classes": data.classes,
                    "skipped": len(data.skipped),
                    "fingerprint": data.fingerprint,
                }
            )
            console.print(
                f"retrain {name}: {len(data.samples)} labelled images, {len(data.classes)} "
                f"classes; champion {champion_tag or 'none'}; golden set "
                f"{args.golden if golden_ids else 'none'} ({len(golden_ids)} images)"
            )
            trained = train_main(
                args, max_image_pixels=settings.max_image_pixels, console=console, data=data
            )
            challenger_tag = trained.model.tag
            challenger = Classifier.load(challenger_tag, device=settings.device)
            champion = (
                Classifier.load(repo.ensure_local(champion_tag).tag, device=settings.device)
                if champion_tag
                else None
            )
            _, val_idx = stratified_split(
                data.targets, val_fraction=args.val_fraction, seed=args.seed
            )
            sets = {"held_out": (data, val_idx)}
            if golden_ids:
                golden = load_golden(
                    settings, engine, args.golden, max_pixels=settings.max_image_pixels
                )
                sets["golden"] = (golden, list(range(len(golden.samples))))
            comparison = compare_models(
                champion,
                challenger,
                sets,
                batch_size=64,
                max_pixels=settings.max_image_pixels,
            )
            policy = PromotionPolicy(
                primary_metric=args.metric,
                margin=args.margin,
                class_tolerance=args.class_tolerance,
                min_class_support=args.min_class_support,
            )
            decision = decide(comparison, policy)
            report_dir = Path(args.report_dir or trained.run_dir / "comparison")
            paths = write_report(comparison, decision, report_dir)
            report = json.loads(Path(paths["json"]).read_text())
        except ImageIQError as e:
            record(
                engine,
                name=name,
                champion=champion_tag,
                challenger=challenger_tag,
                outcome="failed",
                started=started,
                actor=actor,
                dataset=dataset,
                golden=args.golden if golden_ids else None,
                error=e.message,
            )
            raise
        outcome, rollout_id = "rejected", None
        if decision.promote:
            repo.publish(challenger_tag)
            canary = champion_tag is not None and args.rollout == "canary"
            outcome = "canary" if canary else "promoted"
        evaluation_id = record(
            engine,
            name=name,
            champion=champion_tag,
            challenger=challenger_tag,
            outcome=outcome,
            started=started,
            actor=actor,
            dataset=dataset,
            golden=args.golden if golden_ids else None,
            decision=decision,
            report=report,
        )
        version = challenger_tag.split(":", 1)[1]
        if outcome == "promoted":
            activate(engine, name=name, version=version, actor=actor)
        elif outcome == "canary":
            assert champion_tag is not None
            rollout_id = rollout.start(
                engine,
                model_name=name,
                champion_version=champion_tag.split(":", 1)[1],
                challenger_version=version,
                share=args.canary_share,
                policy=rollout.RolloutPolicy(promote_after=args.promote_after),
                actor=actor,
                evaluation_id=evaluation_id,
            ).id
    return RetrainResult(
        evaluation_id=evaluation_id,
        outcome=outcome,
        champion=champion_tag,
        challenger=challenger_tag,
        reasons=list(decision.reasons),
        report_dir=report_dir,
        rollout_id=rollout_id,
    )


# --- the database side ---------------------------------------------------------------------
def active_version(engine: Engine, name: str) -> str | None:
    """The champion: the version of ``name`` marked active, as ``name:version``."""
    with Session(engine) as session:
        version = session.scalar(
            select(Model.version).where(Model.name == name, Model.status == "active")
        )
    return f"{name}:{version}" if version else None


def golden_set(engine: Engine, set_name: str | None) -> list[str]:
    from training.golden import golden_ids

    return golden_ids(engine, set_name) if set_name else []


def activate(engine: Engine, *, name: str, version: str, actor: str) -> None:
    from imageiq import catalog

    catalog.activate_model(
        engine,
        name=name,
        version=version,
        metrics={},
        actor=actor,
        request_id=None,
        previous=None,
    )


def record(
    engine: Engine,
    *,
    name: str,
    champion: str | None,
    challenger: str | None,
    outcome: str,
    started: datetime,
    actor: str,
    dataset: dict[str, Any],
    golden: str | None,
    decision: Any = None,
    report: dict[str, Any] | None = None,
    error: str | None = None,
) -> int:
    """The run's ``evaluations`` row and its ``model.evaluate`` audit entry, together."""
    figures = getattr(decision, "figures", {}) or {}
    with Session(engine, expire_on_commit=False) as session, session.begin():
        row = Evaluation(
            model_name=name,
            champion_version=champion.split(":", 1)[1] if champion else None,
            challenger_version=challenger.split(":", 1)[1] if challenger else None,
            outcome=outcome,
            primary_metric=figures.get("metric"),
            champion_score=figures.get("champion"),
            challenger_score=figures.get("challenger"),
            reasons=list(getattr(decision, "reasons", []) or []),
            report=report or {},
            dataset=dataset,
            golden_set=golden,
            error=error[:2000] if error else None,
            actor=actor,
            started_at=started,
            finished_at=utcnow(),
        )
        session.add(row)
        session.flush()
        session.add(
            AuditEntry(
                actor=actor,
                action="model.evaluate",
                target=f"{name}:{row.challenger_version or '?'}",
                detail={
                    "evaluation": row.id,
                    "outcome": outcome,
                    "champion": row.champion_version,
                    "error": row.error,
                },
            )
        )
    return row.id


@contextlib.contextmanager
def retrain_lock(engine: Engine, settings: Settings, name: str) -> Iterator[None]:
    """One retrain of ``name`` at a time, across machines on PostgreSQL (a session advisory
    lock, released when the run's connection closes, also when the process dies)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            key = f"imageiq.retrain:{name}"
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(hashtext(:key))"), {"key": key}
            ).scalar()
            connection.commit()
            if not got:
                raise RetrainLocked(f"Another retrain of {name} is running; try again later.")
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": key})
                connection.commit()
        return
    path = Path(settings.data_dir) / f"retrain-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise RetrainLocked(f"Another retrain of {name} is running; try again later.") from e
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
