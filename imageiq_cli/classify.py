"""``imageiq classify PATHS...``: local files through a running service, with the SDK
(:class:`imageiq.client.Client`).

Paths are files (sent whatever their extension: the service decides what is an image),
folders (searched recursively for image extensions) or globs (expanded here too, so a
quoted ``'photos/**/*.jpg'`` works as the shell's would). Images go in batch requests,
``--concurrency`` in flight, results in the order the paths were given. The key comes from
``IMAGEIQ_API_KEY`` or ``--api-key-file`` as for ``imageiq jobs``, never from an argument.

Exit status: 0 when every file was classified, 1 when any failed (each reported on stderr
with its code), 2 for a usage error or a refused key.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from imageiq.client import AuthenticationError, BatchItem, Client, ImageIQError
from imageiq.client import PermissionDeniedError as ClientForbidden
from imageiq.console import err_console
from imageiq.settings import Settings
from imageiq_cli.jobs import _Api, _client_arguments

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}
)
GLOB_CHARS = frozenset("*?[")
FORMATS = ("table", "jsonl", "csv")
CSV_COLUMNS = ["path", "label", "score", "predictions", "model", "error_code", "error_message"]


def add_commands(sub: Any) -> None:
    # No abbreviations: `--api-key KEY` must not pass for `--api-key-file` (and read a file
    # named after the key); a key on the command line is refused outright.
    p = sub.add_parser(
        "classify", help="classify local images with a running service", allow_abbrev=False
    )
    p.add_argument("paths", nargs="+", help="files, folders (recursive) or globs")
    _client_arguments(p)
    p.add_argument("--concurrency", type=_positive, default=4, help="requests in flight")
    p.add_argument("--top-k", type=_positive, default=None, help="labels per image")
    p.add_argument("--min-confidence", type=float, default=None, help="leave out lower scores")
    p.add_argument("--model", default=None, help="name or name:version (default: the active)")
    p.add_argument("--format", choices=FORMATS, default="table", help="of the results")
    p.add_argument("-o", "--out", type=Path, default=None, help="file (default: stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_classify)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def expand(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The files ``paths`` name, in order, each once; and the paths that name none."""
    found: list[Path] = []
    missing: list[str] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found.extend(_images_under(path))
        elif path.exists():
            found.append(path)
        elif GLOB_CHARS & set(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            files = [m for m in matches if m.is_file()]
            for folder in (m for m in matches if m.is_dir()):
                files.extend(_images_under(folder))
            if not files:
                missing.append(text)
            found.extend(files)
        else:
            missing.append(text)
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, missing


def _images_under(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            yield path


def cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    files, missing = expand(args.paths)
    for text in missing:
        err_console.print(f"[red]error[/] (usage): no such file, folder or match: {text}")
    if missing or not files:
        if not missing:
            err_console.print("[red]error[/] (usage): no images under the paths given")
        return 2
    # The same key and connection as ``imageiq jobs``: IMAGEIQ_API_KEY or --api-key-file.
    try:
        http = _Api(args, settings).client
    except OSError as e:
        err_console.print(f"[red]error[/] (usage): cannot read the API key file: {e.strerror}")
        return 2
    show = not args.quiet and err_console.is_terminal
    try:
        with Client(args.url, http_client=http, concurrency=args.concurrency) as client:
            items = _classify(client, files, args, show_progress=show)
    except (AuthenticationError, ClientForbidden) as e:
        err_console.print(f"[red]error[/] ({e.code}): {e.message}")
        return 2
    except ImageIQError as e:  # the service refused the run as a whole (model, options)
        err_console.print(f"[red]error[/] ({e.code}): {e.message}")
        return 2
    finally:
        http.close()
    failed = [(path, item) for path, item in zip(files, items, strict=True) if item.error]
    for path, item in failed:
        assert item.error is not None
        err_console.print(f"[red]failed[/] {path}: ({item.error.code}) {item.error.message}")
    if args.out is not None:
        with args.out.open("w", newline="", encoding="utf-8") as out:
            write(args.format, files, items, out)
    else:
        write(args.format, files, items, sys.stdout)
    if failed and not args.quiet:
        err_console.print(f"{len(files) - len(failed)} classified, {len(failed)} failed")
    return 1 if failed else 0


def _classify(
    client: Client, files: list[Path], args: argparse.Namespace, *, show_progress: bool
) -> list[BatchItem]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    options: dict[str, Any] = {
        "top_k": args.top_k,
        "min_confidence": args.min_confidence,
        "model": args.model,
    }
    with Progress(
        "[bold]classify",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not show_progress,
    ) as progress:
        task = progress.add_task("classify", total=len(files))
        result = client.classify_batch(
            files, **options, on_result=lambda _item: progress.advance(task)
        )
    return result.results


def _row(path: Path, item: BatchItem) -> dict[str, Any]:
    top = item.top
    return {
        "path": str(path),
        "label": top.label if top else None,
        "score": top.score if top else None,
        "predictions": [p.model_dump() for p in item.predictions or []],
        "model": item.model.tag if item.model else None,
        "error_code": item.error.code if item.error else None,
        "error_message": item.error.message if item.error else None,
    }


def write(fmt: str, files: list[Path], items: list[BatchItem], out: IO[str]) -> None:
    rows = [_row(path, item) for path, item in zip(files, items, strict=True)]
    if fmt == "jsonl":
        for path, item in zip(files, items, strict=True):
            line = {"path": str(path), **item.model_dump(mode="json", exclude_none=True)}
            line.pop("index", None)
            out.write(json.dumps(line) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "predictions": json.dumps(row["predictions"])})
    else:
        table = Table("path", "label", "score", "others", "error", box=None)
        for row in rows:
            others = ", ".join(f"{p['label']} {p['score']:.3f}" for p in row["predictions"][1:])
            table.add_row(
                row["path"],
                row["label"] or "-",
                f"{row['score']:.4f}" if row["score"] is not None else "-",
                others,
                f"{row['error_code']}: {row['error_message']}" if row["error_code"] else "",
            )
        # Piped output has no terminal width: whole rows, for grep and friends.
        terminal = out is sys.stdout and sys.stdout.isatty()
        console = Console(file=out, width=None if terminal else 200, highlight=False)
        console.print(table)
