"""What every request of the service shares (settings, limits, model pool, backends, the
classification core), built once at start-up and kept on the API's ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from bentos.inputs import Limits
from imageiq.backends import Backends
from imageiq.classify import Classification
from imageiq.pool import ModelPool
from imageiq.rollout_sync import RolloutSync
from imageiq.settings import Settings


@dataclass(frozen=True)
class ServiceState:
    settings: Settings
    limits: Limits
    pool: ModelPool
    backends: Backends
    core: Classification
    rollouts: RolloutSync | None = None  # counts server errors per version during a canary


def state(request: Request) -> ServiceState:
    """The service's shared state, from a request to its API."""
    found: ServiceState = request.app.state.imageiq
    return found
