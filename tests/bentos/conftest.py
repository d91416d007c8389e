"""Fixtures of the service tests: the service on real PostgreSQL, Redis and S3 (moto)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imageiq.registry import RegisteredModel
from tests.backends import Stack
from tests.conftest import Server, running_server


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    running = Stack()
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def served(
    stack: Stack,
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    species_model: RegisteredModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("persist") / "server.log"
    env = {**stack.env(), "IMAGEIQ_MODELS": f"{digits_model.tag},{species_model.name}"}
    with running_server(digits_model, log, env) as server:
        yield server
