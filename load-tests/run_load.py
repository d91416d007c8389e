"""Runs the load test headless and writes its reports: ``make load`` calls this.

    .venv/bin/python load-tests/run_load.py --stages smoke --out .load/results
    IMAGEIQ_API_KEY=iiq_... .venv/bin/python load-tests/run_load.py --url http://10.0.0.5:3000

Without --url it serves the classifier itself, the way ``make serve`` does: the demo model
(trained into the model store on first use), a migrated database and a fresh API key with
the classify scope and no rate limit, all under ``<state>/`` (default .load/service), on
127.0.0.1 and a free port, in a process group of its own that is stopped at the end,
whatever happens. With --url, the key comes from IMAGEIQ_API_KEY.

Reports in --out: ``report.html``, ``stats_stats.csv`` (per request name),
``stats_failures.csv``, ``stats_exceptions.csv``, ``stats_stats_history.csv``. The exit
status is locust's: 0 when the gate passed (see locustfile.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from load_data import STAGES
from local_server import serving

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def main(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    if args.url:
        key = os.environ.get("IMAGEIQ_API_KEY", "")
        if not key:
            raise SystemExit("with --url (URL=), give the API key in IMAGEIQ_API_KEY (KEY=)")
        return run_locust(args, url=args.url.rstrip("/"), key=key)
    with local_service(args.state) as (url, key):
        return run_locust(args, url=url, key=key)


def run_locust(args: argparse.Namespace, *, url: str, key: str) -> int:
    seconds = sum(stage.seconds for stage in STAGES[args.stages])
    for old in [*args.out.glob("stats_*.csv"), args.out / "report.html", args.out / "locust.log"]:
        old.unlink(missing_ok=True)  # locust appends to its log; no report of an earlier run
    command = [
        str(BIN / "locust"),
        *("-f", str(LOCUSTFILE), "--headless", "--host", url),
        *("--csv", str(args.out / "stats"), "--html", str(args.out / "report.html")),
        *("--logfile", str(args.out / "locust.log"), "--stop-timeout", "15"),
        *("--stages", args.stages, "--expect-cache", args.expect_cache),
        *("--max-fail-ratio", str(args.max_fail_ratio)),
        *(("--peak-users", str(args.users)) if args.users else ()),
        *(("--images", str(args.images)) if args.images else ()),
        *args.locust_args,
    ]
    print(f"load test: {args.stages} stages ({seconds:.0f} s) against {url}", flush=True)
    env = {**os.environ, "IMAGEIQ_API_KEY": key}
    try:
        # The stages bound the run; this only catches a locust that never stops.
        code = subprocess.run(command, cwd=ROOT, env=env, timeout=seconds + 120).returncode
    except subprocess.TimeoutExpired:
        print("load test: locust did not stop in time", file=sys.stderr)
        code = 124
    print(f"load test: exit {code}; reports in {args.out}/ (report.html, stats_*.csv)")
    return code


@contextmanager
def local_service(state: Path) -> Iterator[tuple[str, str]]:
    """The classifier on 127.0.0.1, with the demo model, its own database and a key."""
    store = Path(os.environ.get("BENTOML_HOME", ROOT / ".bentoml")).resolve()
    shutil.rmtree(state, ignore_errors=True)  # a fresh database and an empty cache
    home = state / "bentoml-home"  # serve empties its home's metrics folder: not the shared one
    home.mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if k != "IMAGEIQ_API_KEY"},
        "BENTOML_HOME": str(store),
        "BENTOML_DO_NOT_TRACK": "True",
        "IMAGEIQ_DATA_DIR": str((state / "data").resolve()),
        # Valid requests must never be refused: the key has no limit, nor does the service.
        "IMAGEIQ_RATE_LIMIT_PER_MINUTE": "0",
        # The `bad` persona sends bad keys all run long from this one address.
        "IMAGEIQ_AUTH_FAILURES_BURST": "1000000",
    }
    imageiq = str(BIN / "imageiq")
    subprocess.run([imageiq, "demo-model", "--data", ".data/digits"], cwd=ROOT, env=env, check=True)
    (home / "models").symlink_to(store / "models", target_is_directory=True)
    env["BENTOML_HOME"] = str(home.resolve())
    subprocess.run([imageiq, "db", "upgrade"], cwd=ROOT, env=env, check=True)
    key_file = state / "load.key"
    create_key = [imageiq, "keys", "create", "--name", "load-test", "--scopes", "classify"]
    subprocess.run(
        [*create_key, "--rate-limit", "0", "--save", str(key_file)],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"load test: starting the service (log {state / 'server.log'})", flush=True)
    with serving(env, state / "server.log") as server:
        url = server.url
        print(f"load test: serving on {url}", flush=True)
        yield url, key_file.read_text().strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="a running service (default: start one)")
    parser.add_argument("--stages", choices=sorted(STAGES), default="default")
    parser.add_argument("--users", type=int, default=0, help="users at the peak (0: the stages')")
    parser.add_argument("--images", type=Path, default=None, help="more images to send")
    parser.add_argument("--out", type=Path, default=ROOT / ".load" / "results")
    parser.add_argument("--state", type=Path, default=ROOT / ".load" / "service")
    parser.add_argument("--max-fail-ratio", type=float, default=0.0)
    parser.add_argument("--expect-cache", choices=["yes", "no", "any"], default="yes")
    parser.add_argument("locust_args", nargs="*", help="after --: more locust options")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through local_service's finally


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main(parse_args()))
