"""A front process's side of the model process (``IMAGEIQ_MODEL_PROCESS``).

:class:`RemoteRunner` is the :class:`~imageiq.runner.Runner` of a model that runs in the
model process: the pool and the batching queue use it as they use a local one. The front
still batches (its queue sends one message per batch, not per image); the model process
merges the batches of every front into its own. Its state is the model process's: ready
once that process has loaded and warmed the model, so every front's ``/readyz`` tells the
same truth.

:class:`ModelProcessClient` holds the connection: it connects (and reconnects, forever,
while the model process starts or restarts), re-announces every model, writes prepared
images into its shared-memory slots and matches the answers to the batches. When the
connection drops, every batch in flight fails with 503 ``model_not_ready`` and the models
read "loading" until the model process has them again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import math
from collections.abc import Sequence
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imageiq import errors
from imageiq.inference import InferenceOptions, ModelIO
from imageiq.model_wire import Answer, Image, encode, receive
from imageiq.registry import RegisteredModel
from imageiq.runner import BatchOutput, State

log = logging.getLogger(__name__)

# A slot holds at least a 224x224 RGB image (uint8), or the largest input served at start.
_MIN_SLOT_BYTES = 3 * 224 * 224
_ERRORS: dict[str, type[errors.ImageIQError]] = {
    "overloaded": errors.Overloaded,
    "model_not_ready": errors.ModelNotReady,
}


class RemoteRunner:
    """A model run by the model process."""

    def __init__(
        self,
        *,
        model: RegisteredModel,
        client: ModelProcessClient,
        options: InferenceOptions,
        warmup_batch_size: int,
    ) -> None:
        self.model = model
        self.tag = model.tag
        self.options, self.warmup_batch_size = options, warmup_batch_size
        self.state: State = "loading"
        self.error: str | None = None
        self._io = ModelIO(model)
        self._client = client
        self._settled: concurrent.futures.Future[None] = concurrent.futures.Future()
        client.register(self)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def io(self) -> ModelIO:
        return self._io

    def wait(self, timeout: float | None = None) -> State:
        self._settled.result(timeout)
        return self.state

    async def loaded(self) -> State:
        await asyncio.wrap_future(self._settled)
        return self.state

    async def run_batch(self, images: Sequence[torch.Tensor]) -> list[BatchOutput | Exception]:
        return await self._client.run(self.tag, images)

    def close(self) -> None:
        self._client.unregister(self)

    # --- told by the client -----------------------------------------------------------------
    def settle(self, state: State, error: str | None) -> None:
        self.state, self.error = state, error
        if not self._settled.done():
            self._settled.set_result(None)

    def lost(self) -> None:
        """The model process went away: loading again until it is back."""
        if self._settled.done():
            self._settled = concurrent.futures.Future()
        self.state, self.error = "loading", "the model process is (re)starting"


class ModelProcessClient:
    def __init__(self, *, socket_path: Path, slots: int) -> None:
        self.socket_path = socket_path
        self.slots = slots
        self.connected = False
        self._runners: dict[str, list[RemoteRunner]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count()
        self._pending: dict[int, tuple[asyncio.Future[Any], list[int]]] = {}
        self._memory: shared_memory.SharedMemory | None = None
        self._slot_bytes = 0
        self._flat: np.ndarray | None = None
        self._free: list[int] = []
        self._task: asyncio.Task[None] | None = None

    # --- runners ----------------------------------------------------------------------------
    def register(self, runner: RemoteRunner) -> None:
        self._runners.setdefault(runner.tag, []).append(runner)
        if self._writer is not None:
            self._send_load(runner)

    def unregister(self, runner: RemoteRunner) -> None:
        same = self._runners.get(runner.tag, [])
        if runner in same:
            same.remove(runner)
        if not same:
            self._runners.pop(runner.tag, None)
            if self._writer is not None:
                self._writer.write(encode(("release", runner.tag)))

    def _send_load(self, runner: RemoteRunner) -> None:
        rid = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        answer.add_done_callback(lambda f: self._settle(runner.tag, f))
        self._pending[rid] = (answer, [])
        assert self._writer is not None
        self._writer.write(
            encode(("load", rid, runner.tag, runner.options, runner.warmup_batch_size))
        )

    def _settle(self, tag: str, answer: asyncio.Future[Any]) -> None:
        if answer.cancelled() or answer.exception() is not None:
            return  # the connection dropped: the runners read "loading" until it is back
        state, error = answer.result()
        for runner in self._runners.get(tag, []):
            runner.settle(state, error)

    # --- the connection ---------------------------------------------------------------------
    def start(self) -> None:
        """Connects in the background (on the running event loop) and stays connected."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self._open_slots()
            assert self._memory is not None
            writer.write(encode(("hello", self._memory.name, self._slot_bytes, self.slots)))
            self._writer, self.connected = writer, True
            log.info("connected to the model process at %s", self.socket_path)
            for runners in self._runners.values():
                self._send_load(runners[0])
            try:
                while True:
                    self._dispatch(await receive(reader))
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
                log.error("lost the model process (%s); reconnecting", type(e).__name__)
            finally:
                self._disconnected(writer)

    def _disconnected(self, writer: asyncio.StreamWriter) -> None:
        self._writer, self.connected = None, False
        writer.close()
        pending, self._pending = self._pending, {}
        for answer, _ in pending.values():
            if not answer.done():
                answer.set_exception(
                    errors.ModelNotReady("The model process is restarting; retry shortly.")
                )
        self._free = list(range(self.slots))
        for runners in self._runners.values():
            for runner in runners:
                runner.lost()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind, rid = message[0], message[1]
        entry = self._pending.pop(rid, None)
        if entry is None:
            return
        answer, slots = entry
        self._free.extend(slots)
        if answer.done():
            return
        if kind == "loaded":
            answer.set_result((message[2], message[3]))
        elif kind == "ran":
            answer.set_result(message[2])
        else:
            raise ConnectionError(f"unknown message {kind!r}")

    def _open_slots(self) -> None:
        if self._memory is not None:
            return
        largest = max(
            [_MIN_SLOT_BYTES]
            + [math.prod(rs[0].io.input_shape) for rs in self._runners.values() if rs]
        )
        self._slot_bytes = largest
        self._memory = shared_memory.SharedMemory(create=True, size=largest * self.slots)
        self._flat = np.ndarray((largest * self.slots,), dtype=np.uint8, buffer=self._memory.buf)
        self._free = list(range(self.slots))

    # --- batches ----------------------------------------------------------------------------
    async def run(self, tag: str, images: Sequence[torch.Tensor]) -> list[BatchOutput | Exception]:
        writer = self._writer
        if writer is None or self._flat is None:
            raise errors.ModelNotReady("The model process is starting; retry shortly.")
        wire: list[Image] = []
        used: list[int] = []
        for tensor in images:
            array = tensor.numpy()
            shape = tuple(array.shape)
            if array.size <= self._slot_bytes and self._free:
                slot = self._free.pop()
                used.append(slot)
                start = slot * self._slot_bytes
                self._flat[start : start + array.size] = array.reshape(-1)
                wire.append(Image(shape, slot=slot))
            else:  # no slot free, or larger than one: on the socket
                wire.append(Image(shape, data=array.tobytes()))
        rid = next(self._ids)
        answer: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (answer, used)
        try:
            writer.write(encode(("run", rid, tag, wire)))
            await writer.drain()
        except (ConnectionError, OSError) as e:  # the reader notices too, and reconnects
            if self._pending.pop(rid, None) is not None:
                self._free.extend(used)
            raise errors.ModelNotReady("The model process is restarting; retry shortly.") from e
        return [_output(a) for a in await answer]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._memory is not None:
            self._flat = None
            self._memory.close()
            self._memory.unlink()
            self._memory = None


def _output(answer: Answer) -> BatchOutput | Exception:
    if answer.probabilities is not None:
        return BatchOutput(
            {head: torch.from_numpy(p) for head, p in answer.probabilities.items()},
            answer.batch_size,
            answer.inference_s,
        )
    error = _ERRORS.get(answer.error_code or "")
    if error is not None:
        return error(answer.error or "")
    return RuntimeError(f"the model process failed this batch: {answer.error}")
