"""The service with the forward pass skipped: the benchmark's measure of everything around
the model (HTTP, auth, multipart, hash, cache, decode, preprocess, batching queue, thread
hops, postprocess, recorder, JSON). A benchmark mode, never a serving mode: it lives here,
not in the package, and only ``load-tests/bench.py`` serves it
(``bentoml serve frontend_service:ImageClassifier --working-dir load-tests``).

Each batch still goes through the queue and the inference thread; only
:meth:`Classifier.predict_proba` answers uniform probabilities instead of running the net.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import torch

import bentos.service
from imageiq.inference import Classifier


def _no_forward(self: Classifier, batch: Any, *, calibrated: bool = True) -> dict[str, Any]:
    n = len(batch)
    heads = {"label": len(self.labels), **{h: len(v) for h, v in self.heads.items()}}
    return {head: torch.full((n, c), 1.0 / c) for head, c in heads.items()}


Classifier.predict_proba = _no_forward  # type: ignore[method-assign]

# Each Python thread's name as its OS thread name (15 characters), so the benchmark can split
# the server's CPU time by thread from /proc (the event loop, decode workers, the inference
# thread, the recorder); CPython 3.11 leaves every thread named after the process.
_libc = ctypes.CDLL(None)
_run = threading.Thread.run


def _named_run(self: threading.Thread) -> None:
    _libc.prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    _run(self)


threading.Thread.run = _named_run  # type: ignore[method-assign]
Classifier.warm_up = lambda self: None  # type: ignore[method-assign]


def __getattr__(name: str) -> Any:
    return getattr(bentos.service, name)
