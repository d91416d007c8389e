"""The models a service process serves side by side, and switching them without a restart.

Each configured tag resolves to a registered version with its own runner and
adaptive-batching queue: a :class:`ModelRunner`, all of them sharing one
:class:`InferenceThread`, or with ``IMAGEIQ_MODEL_PROCESS`` a :class:`RemoteRunner` whose
model the model process loads and runs (the retired versions released there). A reload (the
config file changed) loads and warms the new set in the background while the current one
keeps serving, then swaps both the set and the active model at once; a model no longer
served is retired after its in-flight requests finish. A set that fails to resolve or load
is not swapped in: the current one keeps serving, and the failure is logged and shown in
``/v1/models``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from imageiq.batching import Batcher
from imageiq.errors import ImageIQError, ModelNotFound, ModelNotReady
from imageiq.inference import InferenceOptions
from imageiq.metrics import metrics
from imageiq.model_client import ModelProcessClient, RemoteRunner
from imageiq.registry import RegisteredModel, get_model
from imageiq.runner import InferenceThread, ModelRunner, Runner
from imageiq.settings import RELOADABLE, Settings, normalize_tag

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    requested: str  # as configured, e.g. "imageiq-classifier:latest"
    model: RegisteredModel
    runner: Runner
    batcher: Batcher
    in_flight: int = 0

    @property
    def tag(self) -> str:
        return self.model.tag

    @property
    def state(self) -> str:
        return self.runner.state

    @contextlib.contextmanager
    def use(self) -> Iterator[ServedModel]:
        """Counts the requests using the model, so it is retired only once they are done."""
        self.in_flight += 1
        try:
            yield self
        finally:
            self.in_flight -= 1


@dataclass
class _Set:
    models: dict[str, ServedModel]  # tag -> model, in configured order
    aliases: dict[str, ServedModel]  # every configured tag ("name:latest", ...) -> model
    active: ServedModel | None
    errors: dict[str, str] = field(default_factory=dict)  # configured tag -> why unusable

    def resolve(self, ref: str | None) -> ServedModel:
        if ref is None:
            if self.active is None:
                raise ModelNotReady("The active model could not be loaded; see /v1/models.")
            return self.active
        found = self.models.get(ref) or self.aliases.get(normalize_tag(ref))
        if found is not None:
            return found
        if ref.endswith(":latest"):  # the newest *served* version of that name
            ref = ref.removesuffix(":latest")
        if ":" not in ref:
            if self.active is not None and self.active.model.name == ref:
                return self.active
            for served in self.models.values():
                if served.model.name == ref:
                    return served
        raise ModelNotFound(
            f"Model {ref!r} is not served here. Served: {', '.join(self.models) or 'none'}.",
            details={"served": list(self.models)},
        )


@dataclass(frozen=True)
class Canary:
    """A share of the requests for a model name that pin no version go to ``challenger``
    (a tag served beside the champion; :mod:`imageiq.rollout`)."""

    rollout_id: int
    challenger: str
    share: float


class ModelPool:
    """The served models, run on ``thread`` in this process, or by the model process that
    ``remote`` reaches (``IMAGEIQ_MODEL_PROCESS``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        thread: InferenceThread | None = None,
        remote: ModelProcessClient | None = None,
    ) -> None:
        if (thread is None) == (remote is None):
            raise ValueError("a pool runs its models on a thread or in the model process")
        self.settings = settings
        self._thread = thread
        self._remote = remote
        self._set = self._build(settings, current={})
        self.reloading = False
        self.last_reload: dict[str, Any] | None = None
        self.canaries: dict[str, Canary] = {}  # model name -> its running canary
        self._random = random.Random()

    # --- what requests see ------------------------------------------------------------------
    @property
    def models(self) -> dict[str, ServedModel]:
        return self._set.models

    @property
    def active(self) -> ServedModel | None:
        return self._set.active

    @property
    def errors(self) -> dict[str, str]:
        return self._set.errors

    @property
    def ready(self) -> bool:
        """Every configured model resolved, loaded and warmed up."""
        s = self._set
        return not s.errors and bool(s.models) and all(m.runner.ready for m in s.models.values())

    def resolve(self, ref: str | None) -> ServedModel:
        """The served model a request names (name, name:version, name:latest) or the active
        one; 404 ``model_not_found`` when it is not served, 503 while it is not ready."""
        served = self._set.resolve(ref)
        canary = self.canaries.get(served.model.name)
        if canary is not None and _follows_canary(ref) and self._random.random() < canary.share:
            challenger = self._set.models.get(canary.challenger)
            if challenger is not None and challenger.runner.ready:
                return challenger
        if not served.runner.ready:
            raise ModelNotReady(
                f"Model {served.tag} is {served.state}"
                + (f" ({served.runner.error})" if served.runner.error else "")
                + ".",
                details={"model": served.tag, "state": served.state},
            )
        return served

    # --- reloading --------------------------------------------------------------------------
    async def reload(self, settings: Settings) -> bool:
        """Serve ``settings``' models and active model; True once swapped in."""
        if self.reloading:
            log.warning("a reload is already in progress; this one is skipped")
            return False
        self.reloading = True
        try:
            return await self._reload(settings)
        finally:
            self.reloading = False

    async def activate(self, tag: str) -> bool:
        """Serve ``tag`` (name:version) in place of the version of its name served now, or
        beside the others when that name is not served; it becomes the default model when
        its name is the active one. True once swapped in (after loading and warm-up)."""
        name = tag.split(":", 1)[0]
        current = self.settings
        models: list[str] = []
        for configured in current.models:
            if configured.split(":", 1)[0] != name:
                models.append(configured)
            elif tag not in models:
                models.append(tag)
        if tag not in models:
            models.append(tag)
        active = current.active_model
        if self.active is not None and self.active.model.name == name:
            active = tag
        return await self.reload(
            current.model_copy(update={"models": models, "active_model": active})
        )

    async def serve_beside(self, tag: str) -> bool:
        """Serve ``tag`` beside the models served now (a canary's challenger), the others
        pinned to the versions they are: a ``name:latest`` must not move to the newly
        imported version. True once it is loaded and warm."""
        if tag in self.models:
            return True
        current = self.settings
        active = self.active.tag if self.active is not None else current.active_model
        return await self.reload(
            current.model_copy(update={"models": [*self.models, tag], "active_model": active})
        )

    async def stop_serving(self, tag: str) -> bool:
        """Stop serving ``tag`` (a rolled-back challenger), unless it is the active model."""
        if tag not in self.models or (self.active is not None and self.active.tag == tag):
            return True
        current = self.settings
        models = [t for t in self.models if t != tag]
        active = self.active.tag if self.active is not None else current.active_model
        return await self.reload(
            current.model_copy(update={"models": models, "active_model": active})
        )

    async def _reload(self, settings: Settings) -> bool:
        started = time.monotonic()
        current = self._set
        candidate = self._build(settings, current=current.models)
        fresh = [m for tag, m in candidate.models.items() if tag not in current.models]
        await asyncio.gather(*(m.runner.loaded() for m in fresh))
        failed = dict(candidate.errors)
        failed.update({m.tag: m.runner.error or m.state for m in fresh if not m.runner.ready})
        if failed:
            for m in fresh:
                m.batcher.close()
                m.runner.close()
            self._record("failed", started, errors=failed)
            log.error(
                "reload refused, still serving %s: %s",
                list(current.models),
                "; ".join(f"{k}: {v}" for k, v in failed.items()),
            )
            return False
        self._set = candidate
        self.settings = settings
        retired = [m for tag, m in current.models.items() if tag not in candidate.models]
        self._record("ok", started)
        log.info(
            "now serving %s (active %s)",
            list(candidate.models),
            candidate.active.tag if candidate.active else None,
        )
        for m in retired:
            asyncio.get_running_loop().create_task(self._retire(m))
        return True

    async def _retire(self, served: ServedModel) -> None:
        deadline = time.monotonic() + self.settings.request_timeout_s + 10
        while served.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        served.batcher.close()
        served.runner.close()
        metrics().model_ready.labels(served.model.name, served.model.version).set(0)
        log.info("retired model %s", served.tag)

    def _record(self, status: str, started: float, errors: dict[str, str] | None = None) -> None:
        metrics().reloads.labels(status).inc()
        self.last_reload = {
            "status": status,
            "at": datetime.now(timezone.utc).isoformat(),
            "seconds": round(time.monotonic() - started, 3),
            **({"errors": errors} if errors else {}),
        }

    def _build(self, settings: Settings, *, current: dict[str, ServedModel]) -> _Set:
        options = InferenceOptions(
            precision=settings.precision,
            channels_last=settings.channels_last,
            compile=settings.compile,
            max_batch_size=settings.max_batch_size,
        )
        models: dict[str, ServedModel] = {}
        aliases: dict[str, ServedModel] = {}
        errors: dict[str, str] = {}
        for requested in settings.models:
            try:
                model = get_model(requested)
            except ImageIQError as e:
                errors[requested] = e.message
                log.error("model %s cannot be served: %s", requested, e.message)
                continue
            if model.tag in models:  # e.g. "name" and the version it resolves to: one model
                aliases[requested] = models[model.tag]
                continue
            if model.tag in current:
                models[model.tag] = aliases[requested] = current[model.tag]
                continue
            runner: Runner
            if self._remote is not None:
                runner = RemoteRunner(
                    model=model,
                    client=self._remote,
                    options=options,
                    warmup_batch_size=settings.warmup_batch_size,
                )
            else:
                assert self._thread is not None
                runner = ModelRunner(
                    model=model,
                    thread=self._thread,
                    device=settings.device,
                    options=options,
                    warmup_batch_size=settings.warmup_batch_size,
                )
            batcher = Batcher(
                runner,
                max_batch_size=settings.max_batch_size,
                max_latency_ms=settings.max_latency_ms,
            )
            models[model.tag] = aliases[requested] = ServedModel(requested, model, runner, batcher)
        return _Set(models, aliases, aliases.get(settings.model_tag), errors)


def _follows_canary(ref: str | None) -> bool:
    """A request that names no version (nothing, a name, ``name:latest``) may be routed to a
    canary; one that pins ``name:version`` gets exactly that version."""
    return ref is None or ":" not in ref or ref.endswith(":latest")


class ConfigWatcher:
    """Re-reads the settings when the config file's content changes and reloads the pool.

    Only :data:`~imageiq.settings.RELOADABLE` keys apply live; a change to any other key
    is logged as needing a restart. An invalid file is logged and ignored.
    """

    def __init__(self, pool: ModelPool, *, load: Callable[[], Settings]) -> None:
        self.pool = pool
        self._load = load
        self._digest = self._file_digest(pool.settings.config_file)

    async def run(self) -> None:
        interval = self.pool.settings.reload_interval_s
        if not self.pool.settings.config_file or interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("config reload failed")

    async def check(self) -> bool:
        path = self.pool.settings.config_file
        digest = self._file_digest(path)
        if digest == self._digest:
            return False
        try:
            settings = self._load()
        except (ValidationError, ImageIQError) as e:
            log.error("config file %s is invalid, keeping the current settings: %s", path, e)
            self._digest = digest
            return False
        self._digest = digest
        current = self.pool.settings
        old, new = current.model_dump(), settings.model_dump()
        restart = sorted(k for k in new if k not in RELOADABLE and new[k] != old[k])
        if restart:
            log.warning("config file %s changed %s: these apply after a restart", path, restart)
        if all(new[k] == old[k] for k in RELOADABLE):
            return False
        log.info("config file %s changed: reloading models", path)
        # Only the reloadable keys change; the rest stay as the process started with them.
        return await self.pool.reload(current.model_copy(update={k: new[k] for k in RELOADABLE}))

    @staticmethod
    def _file_digest(path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
