"""The OpenAPI document of /v1 is complete and truthful: schemathesis (every check) fuzzes a
server of its own from it, and the gaps a first run found stay closed.

The fuzzer deletes images, activates models and labels images with an admin key (it must
reach every route), so it gets a server and a database of its own, never the shared
``served`` one: the other tests' images and active model stay as they left them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import imageiq
from bentos.schemas import EXAMPLE_PNG_B64
from imageiq.registry import RegisteredModel
from tests.backends import Stack
from tests.conftest import Server, running_server

# Bounded: a few examples per operation, every request answered or abandoned within 20 s,
# and the whole run killed after WALL_S (it takes ~30 s on 2 cores).
MAX_EXAMPLES = 8
REQUEST_TIMEOUT_S = 20
WALL_S = 150

# Rules a JSON schema cannot state, so that schema-valid data may still be refused (422, or
# 400/413/415 for images): an image's bytes must decode (any base64 or binary string is
# schema-valid), a date must exist (2024-02-30 fits the pattern), a label must be one a
# served model knows, a rollout's challenger must not be the active version, a job's source
# names exactly one of three and an allowed bucket (403). Every other check still runs there.
_SEMANTIC = {
    "/classify": ["400", "413", "415", "422"],
    "/classify/batch": ["400", "413", "415", "422"],
    "/explain": ["400", "413", "415", "422"],
    "/images": ["422"],
    "/review": ["400", "422"],
    "/stats": ["422"],
    "/images/{image_id}/labels": ["422"],
    "/admin/rollouts": ["422"],
    "/jobs": ["422"],
    # /v2 (its own document, paths under the mount): any tensor fits the schema, few are
    # images of the model's size (400 invalid_tensor, 413, 415 or 422 for the rest).
    "/models/{name}/infer": ["400", "413", "415", "422"],
    "/models/{name}/versions/{version}/infer": ["400", "413", "415", "422"],
}
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "503"]
# Archive uploads to /v1/jobs are raw bytes; schemathesis has no serializer for those types.
_HOOKS = """
import schemathesis

@schemathesis.serializer(
    "application/zip", "application/x-zip-compressed", "application/x-tar",
    "application/gzip", "application/x-gzip", "application/x-bzip2", "application/x-xz",
)
def raw(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()
"""


def _config() -> str:
    sections = []
    for path, extra in _SEMANTIC.items():
        statuses = ", ".join(f'"{s}"' for s in [*_ACCEPTED, *extra])
        section = (
            f'[[operations]]\ninclude-path = "{path}"\n'
            f"[operations.checks.positive_data_acceptance]\nexpected-statuses = [{statuses}]\n"
        )
        sections.append(section)
    return "\n".join(sections)


@pytest.fixture(scope="module")
def fuzzed(
    stack: Stack,
    digits_model: RegisteredModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """A server of the fuzzer's own, with auth on and the digits model: its own data
    directory, and on the session's stack its own database, Redis database and bucket."""
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    stack.s3.client().create_bucket(Bucket="imageiq-fuzz")
    env = {
        **stack.env(),
        "IMAGEIQ_MODELS": digits_model.tag,
        "IMAGEIQ_DATABASE_URL": _own_database(stack),
        "IMAGEIQ_REDIS_URL": f"{stack.redis.url.rpartition('/')[0]}/7",
        "IMAGEIQ_S3_BUCKET": "imageiq-fuzz",
    }
    with running_server(digits_model, log, env) as server:
        yield server


def _own_database(stack: Stack) -> str:
    """A database of its own on the session's PostgreSQL, so the fuzzer's rows never reach
    the other tests' counts."""
    from sqlalchemy import create_engine, text

    url = stack.postgres.url
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS imageiq_fuzz"))
            conn.execute(text("CREATE DATABASE imageiq_fuzz"))
    finally:
        engine.dispose()
    base, _, _ = url.rpartition("/")
    return f"{base}/imageiq_fuzz"


def test_the_spec_declares_what_users_found_missing(fuzzed: Server) -> None:
    spec = fuzzed.get("/v1/openapi.json", auth=False).json()
    assert spec["info"]["version"] == imageiq.__version__
    paths = spec["paths"]
    for path, method in [("/classify", "post"), ("/categories", "get"), ("/models", "get")]:
        responses = paths[path][method]["responses"]
        assert {"401", "403", "429", "503"} <= set(responses), path
        assert responses["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert "400" in paths["/admin/models/{name}/activate"]["post"]["responses"]
    assert "400" in paths["/images/{image_id}/labels"]["post"]["responses"]
    for path in ("/classify", "/classify/batch"):
        query = {p["name"] for p in paths[path]["post"]["parameters"] if p["in"] == "query"}
        assert query == {"top_k", "min_confidence", "model", "store"}, path
    body = paths["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["image_b64"]["examples"] == [EXAMPLE_PNG_B64]
    results = paths["/jobs/{job_id}/results"]["get"]["responses"]
    assert {"application/x-ndjson", "text/csv"} <= set(results["200"]["content"])
    assert "307" in results


def test_the_image_b64_example_is_accepted(fuzzed: Server) -> None:
    resp = fuzzed.post("/v1/classify", json={"image_b64": EXAMPLE_PNG_B64})
    assert resp.status_code == 200, resp.text
    resp = fuzzed.post("/v1/classify/batch", json={"images_b64": [EXAMPLE_PNG_B64] * 2})
    assert resp.status_code == 200 and resp.json()["succeeded"] == 2, resp.text


def test_the_service_document_has_a_version_and_a_description(fuzzed: Server) -> None:
    """BentoML's /docs.json read "None" and BentoML's readme: it is the API's document."""
    spec = fuzzed.get("/docs.json", auth=False).json()
    assert spec["info"]["version"] == imageiq.__version__
    assert "BentoML" not in spec["info"].get("description", "")
    assert "/v1/classify" in spec["paths"] and "/readyz" in spec["paths"]
    assert "/v2/models/{name}/infer" in spec["paths"]


@pytest.mark.slow
@pytest.mark.parametrize("document", ["/v1/openapi.json", "/v2/openapi.json"])
def test_schemathesis_finds_nothing(fuzzed: Server, tmp_path: Path, document: str) -> None:
    """Every check of schemathesis, over every operation of /v1 and of the v2 protocol: no
    5xx, every status, content type, header and body as declared, valid data accepted,
    invalid refused, the spec itself valid OpenAPI 3."""
    (tmp_path / "st_hooks.py").write_text(textwrap.dedent(_HOOKS))
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config())
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{fuzzed.url}{document}",
        "--checks",
        "all",
        "-H",
        f"Authorization: Bearer {fuzzed.key}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "1",
        # One: Python 3.11's ast module counts its recursion depth across threads, and
        # hypothesis parses lambdas' sources while it draws: two workers crash it now and then
        # ("AST constructor recursion depth mismatch", in schemathesis, not in the server).
        "--workers",
        "1",
        "--no-color",
        "--output-truncate",
        "false",
    ]
    env = {"SCHEMATHESIS_HOOKS": "st_hooks", "PYTHONPATH": str(tmp_path), "PATH": "/usr/bin"}
    try:
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WALL_S
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"schemathesis ran past {WALL_S} s:\n{(e.stdout or '')[-5000:]!s}")
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-3000:]
