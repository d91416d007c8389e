"""ImageIQ's BentoML service: a thin HTTP layer over :mod:`imageiq`'s core.

Request path: a route of the FastAPI app mounted at ``/v1`` (:mod:`bentos.routes`) reads the
request (:mod:`bentos.inputs`), picks the served model (:class:`imageiq.pool.ModelPool`) and
makes one call of the classification core (:class:`imageiq.classify.Classification`: cache,
decode, batching queue, postprocess, storage, records), whose results it shapes into the
response (:mod:`bentos.answers`).

With ``IMAGEIQ_MODEL_PROCESS`` the service runs ``IMAGEIQ_FRONT_WORKERS`` workers that do all
of the above but the forward pass, which one model process runs for all of them
(:mod:`imageiq.model_process`, started by the deployment hook here; docs/architecture.md).

Nothing reads the settings when this module is imported: ``ImageClassifier`` is built by
:func:`build_service` from :func:`imageiq.settings.load_settings` the first time it is looked
up (``bentoml serve bentos.service:ImageClassifier``; ``make serve`` does it for you).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import bentoml
import torch
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

import imageiq
from bentos import bento_apis
from bentos.bento_apis import BentoApiGuard
from bentos.catalog import router as catalog_router
from bentos.explain_routes import router as explain_router
from bentos.http import (
    Door,
    EnvelopeOutsideApi,
    MountRoot,
    RequestGuard,
    install_error_handlers,
)
from bentos.inputs import Limits
from bentos.jobs_routes import router as jobs_router
from bentos.openapi import ServiceOpenApi
from bentos.planes import MetricsOnApiPort, serve_metrics
from bentos.routes import router as classify_router
from bentos.state import ServiceState
from bentos.v2_routes import build_v2
from bentos.webui import UI_PATH, SecurityHeaders, UiApp, docs_router
from imageiq import catalog, errors
from imageiq.activation import ActivationSync
from imageiq.backends import Backends, open_database
from imageiq.classify import Classification
from imageiq.db.engine import check_migrated, is_transient
from imageiq.logs import configure_logging
from imageiq.metrics import metrics
from imageiq.model_client import ModelProcessClient
from imageiq.model_repo import ModelRepository
from imageiq.pool import ConfigWatcher, ModelPool
from imageiq.registry import get_model
from imageiq.rollout_sync import RolloutSync
from imageiq.runner import InferenceThread
from imageiq.settings import Settings, load_settings

log = logging.getLogger("imageiq.service")


def build_api(settings: Settings, door: Door | None = None) -> FastAPI:
    """The public API (mounted at ``/v1``): the routes, the guard and the error envelope.
    ``door``: what it shares with the v2 protocol's mount (:class:`bentos.http.Door`)."""
    docs = settings.docs_enabled
    api = FastAPI(
        title="ImageIQ",
        version=imageiq.__version__,
        description=(
            "Image classification. Send images as multipart/form-data files or base64 in JSON. "
            'Every error is `{"error": {code, message, request_id}}` with a stable `code`.'
        ),
        # FastAPI's pages load Swagger UI and ReDoc from a CDN: /v1/docs is ours (webui).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    api.add_middleware(RequestGuard, settings=settings, door=door)
    api.include_router(classify_router)
    api.include_router(catalog_router)
    api.include_router(explain_router)
    api.include_router(jobs_router)
    if docs:
        api.include_router(docs_router())
    install_error_handlers(api)  # after the routes, so its catch-all route comes last
    return api


def _declared_models(settings: Settings) -> list[bentoml.models.BentoModel]:
    """The configured models, so ``bentoml build`` packages them with the bento. One that
    is not in the store is left out here; the service reports it at start-up instead."""
    declared = []
    for tag in settings.models:
        try:
            declared.append(bentoml.models.BentoModel(get_model(tag).tag))
        except errors.ImageIQError as e:
            log.error("model %s is not in the model store: %s", tag, e.message)
    return declared


def build_service(settings: Settings) -> Any:
    """The BentoML service for ``settings``: start-up, readiness, shutdown; the routes are
    the API's (:func:`build_api`)."""
    configure_logging(settings.log_format)
    # uvicorn (in each worker) reads this when it starts: only these proxies may say who
    # the client is (its default trusts loopback, where a local client could then pick the
    # address its failed authentications are counted against).
    os.environ["FORWARDED_ALLOW_IPS"] = settings.trusted_proxies
    door = Door(settings)  # /v1 and /v2 share the limits and the gate
    api = build_api(settings, door)
    v2 = build_v2(settings, door)

    @bentoml.service(
        name="imageiq",
        # In-process models: one worker (each would load every model). With the model
        # process, the workers are the fronts, and scale the CPU side.
        workers=settings.front_workers if settings.model_process else 1,
        # BentoML's own deadline sits behind RequestGuard's, which answers in the envelope.
        traffic={"timeout": settings.request_timeout_s + 10},
        # RequestGuard writes one `imageiq.access` record per /v1 request (with the request
        # id, key, model and error code); BentoML's own access line would be a poorer one.
        logging={"access": {"enabled": False}},
        # Without IMAGEIQ_TRACE_REQUESTS no URL is traced: creating the (unsampled) spans
        # and their attributes cost 0.6 core-ms per request.
        tracing={} if settings.trace_requests else {"excluded_urls": [".*"]},
        # BentoML's metrics label each request with its raw path: unbounded series. ImageIQ's
        # (route templates) are served by bentos.planes, on the API port or a port of their own.
        metrics={"enabled": False},
    )
    @bentoml.asgi_app(api, path="/v1")
    @bentoml.asgi_app(v2, path="/v2")
    @bentoml.asgi_app(UiApp(), path=UI_PATH)
    class ImageClassifier:
        """Classifies images with the registered ImageIQ models named in the settings."""

        def __init__(self) -> None:
            metrics()  # register every metric now, before worker threads race to
            self.thread: InferenceThread | None = None
            self.remote: ModelProcessClient | None = None
            # The models load and warm up in the background; /readyz tells when.
            if settings.model_process:
                if settings.model_socket is None:
                    raise SystemExit(
                        "imageiq cannot start: IMAGEIQ_MODEL_PROCESS is on but "
                        "IMAGEIQ_MODEL_SOCKET is unset (`bentoml serve` sets it when it "
                        "starts the model process)"
                    )
                # A front's own torch work is a top-k on a few rows: no thread team.
                torch.set_num_threads(1)
                self.remote = ModelProcessClient(
                    socket_path=settings.model_socket, slots=settings.model_slots
                )
                self.pool = ModelPool(settings, remote=self.remote)
            else:
                self.thread = InferenceThread(threads=settings.torch_threads or settings.cpu_count)
                self.pool = ModelPool(settings, thread=self.thread)
            self._watcher = ConfigWatcher(self.pool, load=load_settings)
            self._tasks: set[asyncio.Task[None]] = set()
            try:
                self.backends = Backends.open(settings)
            except errors.ImageIQError as e:
                log.critical("cannot start: %s", e.message)
                raise SystemExit(f"imageiq cannot start: {e.message}") from e
            repo = ModelRepository(settings)
            self._activations = ActivationSync(
                self.pool, self.backends.engine, database=self.backends.database, repo=repo
            )
            self._rollouts = RolloutSync(
                self.pool,
                self.backends.engine,
                database=self.backends.database,
                repo=repo,
                redis=self.backends.redis,
            )
            api.state.imageiq = v2.state.imageiq = ServiceState(
                settings=settings,
                limits=Limits(
                    max_image_bytes=settings.max_image_bytes,
                    max_images=settings.max_batch_images,
                    default_top_k=settings.default_top_k,
                ),
                pool=self.pool,
                backends=self.backends,
                core=Classification(settings=settings, backends=self.backends),
                rollouts=self._rollouts,
            )
            if not settings.auth_enabled:
                for _ in range(3):
                    log.warning(
                        "AUTHENTICATION IS OFF (IMAGEIQ_AUTH_ENABLED=false): anyone who can "
                        "reach this port may classify, read, label and delete. For a local "
                        "demo only."
                    )
            elif settings.api_key_pepper is None:
                for _ in range(3):
                    log.warning(
                        "NO API-KEY PEPPER (IMAGEIQ_API_KEY_PEPPER is unset): keys are hashed "
                        "with an empty HMAC key, so a copy of the database alone is enough to "
                        "test guessed keys. Set a random secret of 16+ characters in "
                        "production (setting or changing it later invalidates every key)."
                    )
            log.info("serving %s (loading in the background)", list(settings.models))

        @bentoml.on_deployment
        def check_database() -> None:
            """Once, in the serving process before any worker starts: an unmigrated or
            unreachable database stops ``bentoml serve`` with the reason, instead of
            workers failing one after the other."""
            engine = open_database(settings)
            try:
                check_migrated(engine)
            except errors.ImageIQError as e:
                log.critical("cannot start: %s", e.message)
                raise SystemExit(f"imageiq cannot start: {e.message}") from e
            finally:
                engine.dispose()

        @bentoml.on_deployment
        def serve_metrics_port() -> None:
            """With ``IMAGEIQ_METRICS_PORT``: Prometheus metrics on that port, served by this
            process (the workers' and the model process's, from BentoML's multiprocess
            directory) for as long as it lives; the API port no longer serves them."""
            if settings.metrics_port is None:
                return
            from bentoml._internal.configuration.containers import BentoMLContainer

            directory = os.path.abspath(BentoMLContainer.prometheus_multiproc_dir.get())
            serve_metrics(port=settings.metrics_port, directory=directory)

        @bentoml.on_deployment
        def start_model_process() -> None:
            """With ``IMAGEIQ_MODEL_PROCESS`` (and no ``IMAGEIQ_MODEL_SOCKET`` of an
            operator's): the model process, started by this process before the workers,
            restarted if it exits, ended with it. The workers inherit its socket's path."""
            if not settings.model_process or settings.model_socket is not None:
                return
            from bentoml._internal.configuration.containers import BentoMLContainer

            from imageiq.model_process import supervise

            run_dir = Path(tempfile.mkdtemp(prefix="imageiq-"))  # this user's only (0700)
            atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
            socket_path = run_dir / "model.sock"
            os.environ["IMAGEIQ_MODEL_SOCKET"] = str(socket_path)
            # Its metrics join the workers' in BentoML's multiprocess directory.
            directory = os.path.abspath(BentoMLContainer.prometheus_multiproc_dir.get())
            supervise(socket_path, {"PROMETHEUS_MULTIPROC_DIR": directory})

        @bentoml.on_startup
        async def start_watching(self) -> None:
            if self.remote is not None:
                self.remote.start()
            self.backends.start()
            loop = asyncio.get_running_loop()
            self._tasks.add(loop.create_task(self._watcher.run()))
            self._tasks.add(loop.create_task(self._activations.run(settings.reload_interval_s)))
            self._tasks.add(loop.create_task(self._rollouts.run(settings.rollout_interval_s)))
            self._tasks.add(loop.create_task(self._record_models()))

        async def _record_models(self) -> None:
            served = [
                (m.model.name, m.model.version, dict(m.model.card.metrics))
                for m in self.pool.models.values()
            ]
            try:
                await anyio.to_thread.run_sync(catalog.record_models, self.backends.engine, served)
            except SQLAlchemyError as e:
                if not is_transient(e):
                    raise
                self.backends.database.failed(e)

        # BentoML's own API endpoints (bentoml.SyncHTTPClient): /v1's classify routes in
        # BentoML's shape, behind the same guard (bentos.bento_apis).
        @bentoml.api(route="/classify")
        async def classify(
            self,
            image: Path,
            top_k: int | None = None,
            min_confidence: float = 0.0,
            model: str | None = None,
            ctx: bentoml.Context = None,  # type: ignore[assignment]  # BentoML fills it
        ) -> dict[str, Any]:
            """Classify one image: top-k labels, attributes, image facts, timings (the
            answer of POST /v1/classify). Send your API key as the client's ``token``."""
            answer = await bento_apis.classify(
                ctx, image, top_k=top_k, min_confidence=min_confidence, model=model
            )
            return answer  # type: ignore[return-value]  # an error is a Response

        @bentoml.api(route="/classify_batch")
        async def classify_batch(
            self,
            images: list[Path],
            top_k: int | None = None,
            min_confidence: float = 0.0,
            model: str | None = None,
            ctx: bentoml.Context = None,  # type: ignore[assignment]
        ) -> dict[str, Any]:
            """Classify several images; one result per image, in order, a bad image its
            own error (the answer of POST /v1/classify/batch)."""
            answer = await bento_apis.classify_batch(
                ctx, images, top_k=top_k, min_confidence=min_confidence, model=model
            )
            return answer  # type: ignore[return-value]

        def __is_ready__(self) -> bool:
            """BentoML's ``/readyz``: 200 once every served model is loaded and warm. A
            dependency that is down does not make the service unready: it degrades
            (uncached, records held back), which ``/v1/models`` and the metrics show."""
            for served in self.pool.models.values():
                metrics().model_ready.labels(served.model.name, served.model.version).set(
                    1 if served.runner.ready else 0
                )
            return self.pool.ready

        def __is_alive__(self) -> bool:
            # A model that fails to load fails readiness, with its error in /v1/models and
            # the log; restarting the process would not fix it, so liveness stays true.
            return True

        @bentoml.on_shutdown
        async def shutdown(self) -> None:
            for task in self._tasks:
                task.cancel()
            for served in self.pool.models.values():
                served.batcher.close()
            if self.thread is not None:
                self.thread.close()
            if self.remote is not None:
                await self.remote.close()
            # Last: the records of the requests that just finished are flushed (or spooled).
            await anyio.to_thread.run_sync(self.backends.close)

    # bentoml.service turns the class into a Service (mypy still sees the class).
    ImageClassifier.models.extend(_declared_models(settings))  # type: ignore[attr-defined]
    # The first added is the outermost: the headers go on every answer, the envelope's too.
    ImageClassifier.add_asgi_middleware(SecurityHeaders)  # type: ignore[attr-defined]
    # /docs.json: the API's document (BentoML's reads version "None" and its own readme).
    ImageClassifier.add_asgi_middleware(  # type: ignore[attr-defined]
        ServiceOpenApi, api=api, metrics=settings.metrics_port is None, mounts={"/v2": v2}
    )
    ImageClassifier.add_asgi_middleware(EnvelopeOutsideApi)  # type: ignore[attr-defined]
    ImageClassifier.add_asgi_middleware(MountRoot, paths=("/v2",))  # type: ignore[attr-defined]
    ImageClassifier.add_asgi_middleware(  # type: ignore[attr-defined]
        BentoApiGuard, settings=settings, door=door, api=api
    )
    if settings.metrics_port is None:
        ImageClassifier.add_asgi_middleware(MetricsOnApiPort)  # type: ignore[attr-defined]
    return ImageClassifier


@functools.cache
def _service() -> Any:
    try:
        settings = load_settings()
    except errors.ImageIQError as e:
        raise SystemExit(f"imageiq cannot start: {e.message}") from e
    return build_service(settings)


def __getattr__(name: str) -> Any:
    """``ImageClassifier`` is built on first look-up (by ``bentoml serve`` and ``bentoml
    build``), not when the module is imported."""
    if name == "ImageClassifier":
        service = _service()
        globals()[name] = service  # found in the module's namespace from now on
        return service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
