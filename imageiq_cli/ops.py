"""Operator commands: ``imageiq db``, ``imageiq keys`` and ``imageiq purge``."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Column, Table

from imageiq.console import console, err_console
from imageiq.errors import ImageIQError
from imageiq.settings import Settings


def add_commands(sub: Any) -> None:
    db = sub.add_parser("db", help="the metadata database").add_subparsers(
        dest="db_command", required=True
    )
    p = db.add_parser("upgrade", help="create or migrate the schema to this release's version")
    p.add_argument("--revision", default="head", help="target migration (default: head)")
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("current", help="the database's migration, and whether it is current")
    p.set_defaults(func=cmd_db_current)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("create", help="create a key and print it (once: only a hash is kept)")
    p.add_argument("--name", required=True, help="who or what the key is for")
    p.add_argument("--scopes", default="classify", help="comma-separated: classify, label, admin")
    p.add_argument(
        "--rate-limit",
        type=_rate,
        default=None,
        help="requests per minute, 0 for unlimited (default: IMAGEIQ_RATE_LIMIT_PER_MINUTE)",
    )
    p.add_argument(
        "--save",
        type=Path,
        default=None,
        help="also write the key to this file (mode 0600); with --if-missing, keep a file "
        "that already holds a working key",
    )
    p.add_argument("--if-missing", action="store_true", help="only with --save (see there)")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("list", help="every key: id, name, scopes, created, revoked")
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser(
        "purge",
        help="forget stored images and predictions older than an age (dry run unless --apply)",
    )
    p.add_argument("--older-than", required=True, help="an age: 90d, 12h, 2w")
    p.add_argument("--apply", action="store_true", help="delete (without it: only count)")
    p.set_defaults(func=cmd_purge)


def _rate(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError("a whole number of requests per minute, 0 to 10000000")
    return value


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.backends import open_database
    from imageiq.db.engine import describe, upgrade

    engine = open_database(settings)
    before, after = upgrade(engine, args.revision)
    where = describe(engine.url)
    if before == after:
        console.print(f"{where}: already at migration {after}")
    else:
        console.print(f"{where}: migrated {before or '(empty)'} -> {after}")
    return 0


def cmd_db_current(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.backends import open_database
    from imageiq.db.engine import current_revision, describe, head_revision

    engine = open_database(settings)
    current, head = current_revision(engine), head_revision()
    state = "current" if current == head else f"behind: run `imageiq db upgrade` (head {head})"
    console.print(f"{describe(engine.url)}: migration {current or '(none)'}, {state}")
    return 0 if current == head else 1


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.backends import open_database
    from imageiq.db.engine import check_migrated
    from imageiq.keys import create_key, parse_scopes

    engine = open_database(settings)
    check_migrated(engine)
    if args.if_missing and args.save is not None and args.save.exists():
        from imageiq.keys import KeyRing

        try:
            saved = args.save.read_text().strip()
            who = KeyRing(engine, pepper=settings.pepper, ttl_s=0).authenticate(f"Bearer {saved}")
        except ImageIQError:
            pass
        else:
            err_console.print(f"{args.save} holds a working key ({who.key_id}, {who.name})")
            return 0
    key, row = create_key(
        engine,
        name=args.name,
        scopes=parse_scopes(args.scopes),
        pepper=settings.pepper,
        rate_limit_per_minute=args.rate_limit,
        actor=_actor(),
    )
    err_console.print(
        f"created key {row.id} ({row.name}, scopes {','.join(row.scopes)}); "
        "it is shown once, store it now:"
    )
    console.print(key, soft_wrap=True, highlight=False)
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(args.save, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when the file existed with a wider mode
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        err_console.print(f"saved to {args.save}")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.backends import open_database
    from imageiq.db.engine import check_migrated
    from imageiq.keys import list_keys

    engine = open_database(settings)
    check_migrated(engine)
    table = Table(Column("id", no_wrap=True), "name", "scopes", "rate limit", "created", "revoked")
    for row in list_keys(engine):
        table.add_row(
            row.id,
            row.name,
            ",".join(row.scopes),
            _rate_text(row.rate_limit_per_minute),
            f"{row.created_at:%Y-%m-%d %H:%M}",
            f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "",
        )
    # Piped output is not cut to 80 columns.
    (console if console.is_terminal else Console(width=200)).print(table)
    return 0


def _rate_text(per_minute: int | None) -> str:
    """A key's own limit: none set follows IMAGEIQ_RATE_LIMIT_PER_MINUTE, 0 is no limit."""
    if per_minute is None:
        return "default"
    return "unlimited" if per_minute == 0 else f"{per_minute}/min"


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.backends import open_database
    from imageiq.db.engine import check_migrated
    from imageiq.keys import revoke_key

    engine = open_database(settings)
    check_migrated(engine)
    row = revoke_key(engine, args.key_id, actor=_actor())
    console.print(f"revoked key {row.id} ({row.name}) at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.backends import open_database, open_redis
    from imageiq.cache import build_cache
    from imageiq.db.engine import check_migrated
    from imageiq.retention import parse_age, purge
    from imageiq.storage import build_store

    age = parse_age(args.older_than)
    engine = open_database(settings)
    check_migrated(engine)
    store = build_store(settings)
    cache = build_cache(settings, open_redis(settings)) if settings.redis_url else None
    report = purge(engine, store, cache, older_than=age, apply=args.apply, actor=_actor())
    verb = "deleted" if args.apply else "would delete (dry run; --apply to delete)"
    console.print(
        f"older than {report.cutoff:%Y-%m-%d %H:%M} UTC: {verb} {report.images} stored images "
        f"(with {report.labels} labels) and {report.predictions} predictions"
    )
    for failure in report.failures[:20]:
        err_console.print(f"[yellow]kept[/] {failure}")
    return 1 if report.failures else 0
