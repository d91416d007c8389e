"""The model process: one per device, batching every front process's images
(``IMAGEIQ_MODEL_PROCESS``; docs/architecture.md).

The front processes (BentoML workers) serve HTTP, auth, decode and preprocessing, and send
the prepared images here through shared memory (:mod:`imageiq.model_wire`). This process
loads and warms up each model once, however many fronts serve it, and runs one batching
queue per model across all of them, on one inference thread (:mod:`imageiq.runner`), so
the device sees the batches of the whole pod, not of one front. A model stays loaded while
any front holds it (a front's reload releases the versions it no longer serves).

``bentoml serve`` starts it (:func:`supervise`, from the service's deployment hook) and
starts it again if it ever exits; the fronts reconnect by themselves and report 503
``model_not_ready`` meanwhile. It can also run on its own (``python -m
imageiq.model_process --socket PATH``), e.g. as a container of its own beside the fronts,
with ``IMAGEIQ_MODEL_SOCKET`` set to the same path on the fronts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import torch

from imageiq import errors
from imageiq.batching import Batcher
from imageiq.inference import InferenceOptions
from imageiq.logs import configure_logging
from imageiq.metrics import metrics
from imageiq.model_wire import Answer, Image, encode, receive
from imageiq.registry import get_model
from imageiq.runner import BatchOutput, InferenceThread, ModelRunner
from imageiq.settings import Settings, load_settings

# Named, not __name__: run as `python -m` this module is __main__, outside imageiq.* logging.
log = logging.getLogger("imageiq.model_process")


@dataclass
class _Hosted:
    runner: ModelRunner
    batcher: Batcher
    holders: set[int] = field(default_factory=set)  # connections serving it


class ModelHost:
    """The models of this process, each loaded once and held by the fronts that serve it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.thread = InferenceThread(threads=settings.torch_threads or settings.cpu_count)
        self.models: dict[str, _Hosted] = {}
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    def acquire(
        self, tag: str, options: InferenceOptions, warmup_batch_size: int, holder: int
    ) -> _Hosted:
        hosted = self.models.get(tag)
        if hosted is None:
            runner = ModelRunner(
                model=get_model(tag),
                thread=self.thread,
                device=self.settings.device,
                options=options,
                warmup_batch_size=warmup_batch_size,
            )
            batcher = Batcher(
                runner,
                max_batch_size=self.settings.max_batch_size,
                max_latency_ms=self.settings.max_latency_ms,
            )
            hosted = self.models[tag] = _Hosted(runner, batcher)
            log.info("loading %s for the front processes", tag)
        hosted.holders.add(holder)
        return hosted

    def release(self, tag: str, holder: int) -> None:
        hosted = self.models.get(tag)
        if hosted is None:
            return
        hosted.holders.discard(holder)
        if not hosted.holders:
            del self.models[tag]
            hosted.batcher.close()
            hosted.runner.close()
            log.info("unloaded %s: no front serves it any more", tag)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One front's connection, until it closes."""
        holder = id(writer)
        current = asyncio.current_task()
        assert current is not None
        self._connections[writer] = current
        held: set[str] = set()
        slots: _Slots | None = None
        tasks: set[asyncio.Task[None]] = set()

        def spawn(coro: Any) -> None:
            task = asyncio.get_running_loop().create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            while True:
                message = await receive(reader)
                kind = message[0]
                if kind == "run":
                    _, rid, tag, images = message
                    spawn(self._run(writer, slots, rid, tag, images))
                elif kind == "load":
                    _, rid, tag, options, warmup_batch_size = message
                    held.add(tag)
                    spawn(self._load(writer, rid, tag, options, warmup_batch_size, holder))
                elif kind == "release":
                    held.discard(message[1])
                    self.release(message[1], holder)
                elif kind == "hello":
                    _, name, slot_bytes, count = message
                    slots = _Slots(name, slot_bytes, count)
                else:
                    raise ConnectionError(f"unknown message {kind!r}")
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            if not isinstance(e, asyncio.IncompleteReadError):
                log.warning("front connection dropped: %s", e)
        finally:
            for task in tasks:
                task.cancel()
            for tag in held:
                self.release(tag, holder)
            self._connections.pop(writer, None)
            writer.close()
            if slots is not None:
                slots.close()

    async def _load(
        self,
        writer: asyncio.StreamWriter,
        rid: int,
        tag: str,
        options: InferenceOptions,
        warmup_batch_size: int,
        holder: int,
    ) -> None:
        try:
            hosted = self.acquire(tag, options, warmup_batch_size, holder)
        except Exception as e:  # not in the store, unreadable: the front shows why
            reason = e.message if isinstance(e, errors.ImageIQError) else f"{type(e).__name__}: {e}"
            await _reply(writer, ("loaded", rid, "failed", reason))
            return
        state = await hosted.runner.loaded()
        await _reply(writer, ("loaded", rid, state, hosted.runner.error))

    async def _run(
        self,
        writer: asyncio.StreamWriter,
        slots: _Slots | None,
        rid: int,
        tag: str,
        images: list[Image],
    ) -> None:
        hosted = self.models.get(tag)
        if hosted is None or not hosted.runner.ready:
            answers = [
                Answer(None, error_code="model_not_ready", error=f"Model {tag} is not loaded.")
            ] * len(images)
        else:
            # The front always hears back, so its batch never waits forever.
            try:
                tensors = [_tensor(image, slots) for image in images]
            except (ConnectionError, ValueError, RuntimeError) as e:  # a malformed message
                answers = [_answer(e)] * len(images)
            else:
                outputs = await asyncio.gather(
                    *(hosted.batcher(t) for t in tensors), return_exceptions=True
                )
                answers = [_answer(out) for out in outputs]
        await _reply(writer, ("ran", rid, answers))

    async def close(self) -> None:
        """Hangs up on every front (each connection's handler ends on its own), then stops
        the models."""
        handlers = list(self._connections.values())
        for writer in list(self._connections):
            writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        for hosted in list(self.models.values()):
            hosted.batcher.close()
        self.thread.close()


class _Slots:
    """A front's shared-memory slots, attached (the front created it and unlinks it)."""

    def __init__(self, name: str, slot_bytes: int, count: int) -> None:
        self.memory = shared_memory.SharedMemory(name=name)
        # Python 3.11 registers an attached segment too, and its tracker would unlink the
        # front's segment when this process exits: the front owns it.
        resource_tracker.unregister(self.memory._name, "shared_memory")  # type: ignore[attr-defined]
        self.slot_bytes, self.count = slot_bytes, count
        self.flat = torch.frombuffer(self.memory.buf, dtype=torch.uint8)

    def image(self, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        if not 0 <= slot < self.count:
            raise ConnectionError(f"slot {slot} out of range")
        start = slot * self.slot_bytes
        n = int(torch.Size(shape).numel())
        if n > self.slot_bytes:
            raise ConnectionError("image larger than its slot")
        return self.flat[start : start + n].view(shape)

    def close(self) -> None:
        del self.flat
        with contextlib.suppress(BufferError):  # a queued image still views it: the GC will
            self.memory.close()


async def _reply(writer: asyncio.StreamWriter, message: tuple[Any, ...]) -> None:
    """Answers a front; one that has gone away gets nothing (its handler is ending)."""
    if writer.is_closing():
        return
    try:
        writer.write(encode(message))
        await writer.drain()
    except (ConnectionError, OSError):
        pass


def _tensor(image: Image, slots: _Slots | None) -> torch.Tensor:
    if image.data is not None:
        return torch.frombuffer(bytearray(image.data), dtype=torch.uint8).view(image.shape)
    if slots is None:
        raise ConnectionError("an image in a slot before the front said hello")
    return slots.image(image.slot, image.shape)


def _answer(out: BatchOutput | BaseException) -> Answer:
    if isinstance(out, BatchOutput):
        return Answer(
            {head: p.numpy() for head, p in out.probabilities.items()},
            out.batch_size,
            out.inference_s,
        )
    if isinstance(out, errors.ImageIQError):
        return Answer(None, error_code=out.code, error=out.message)
    log.error("batch failed: %s: %s", type(out).__name__, out)
    return Answer(None, error_code="failed", error=f"{type(out).__name__}: {out}")


async def serve(settings: Settings, socket_path: Path) -> None:
    host = ModelHost(settings)
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    umask = os.umask(0o177)  # the socket is this user's from the start: 0600
    try:
        server = await asyncio.start_unix_server(host.serve, path=str(socket_path))
    finally:
        os.umask(umask)
    log.info("model process %d listening on %s", os.getpid(), socket_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        server.close()
        await host.close()
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imageiq.model_process")
    parser.add_argument("--socket", type=Path, help="default: IMAGEIQ_MODEL_SOCKET")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except errors.ImageIQError as e:
        raise SystemExit(f"imageiq model process cannot start: {e.message}") from e
    configure_logging(settings.log_format)
    socket_path = args.socket or settings.model_socket
    if socket_path is None:
        raise SystemExit("imageiq model process: give --socket or IMAGEIQ_MODEL_SOCKET")
    metrics()  # registered before the first batch (multiprocess files when the env says so)
    asyncio.run(serve(settings, socket_path))


# --- started by `bentoml serve` ------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the thread that started it ends (the
    supervisor's, which lives as long as ``bentoml serve``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(socket_path: Path, env: dict[str, str]) -> threading.Thread:
    """Starts the model process and starts it again whenever it exits (after 1 s, doubling
    to 30 s while it keeps failing within a minute), for as long as this process lives."""

    def run() -> None:
        delay = 1.0
        while True:
            started = time.monotonic()
            child = subprocess.Popen(
                [sys.executable, "-m", "imageiq.model_process", "--socket", str(socket_path)],
                env={**os.environ, **env},
                preexec_fn=_die_with_parent,
            )
            code = child.wait()
            if time.monotonic() - started > 60:
                delay = 1.0
            log.error(
                "model process %d exited with %s; restarting in %.0f s", child.pid, code, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    thread = threading.Thread(target=run, name="imageiq-model-process", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    main()
