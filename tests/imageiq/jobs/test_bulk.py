"""The worker's pipeline on a real model: answers in order, bad images as their own errors,
and a decode process killed mid-chunk costs nothing (the pool is rebuilt, its images decoded
again)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from imageiq.inference import Classifier
from imageiq.jobs.bulk import BulkClassifier, fastest_batch
from imageiq.jobs.ledger import ItemOutcome
from imageiq.jobs.tasks import decode_processes
from imageiq.registry import RegisteredModel


def _bulk(model: RegisteredModel) -> BulkClassifier:
    return BulkClassifier(
        Classifier.load(model.tag),
        batch_size=8,
        decode_processes=1,
        read_concurrency=4,
        max_image_bytes=1_000_000,
        max_pixels=10_000_000,
        draft=True,
    )


def _run(bulk: BulkClassifier, data: dict[str, bytes], **kwargs: Any) -> list[ItemOutcome]:
    outcomes: list[ItemOutcome] = []
    bulk.classify(
        list(enumerate(data)),
        read=kwargs.pop("read", data.__getitem__),
        top_k=3,
        min_confidence=0.0,
        on_batch=outcomes.extend,
        **kwargs,
    )
    return sorted(outcomes, key=lambda o: o.position)


def test_a_chunk_survives_a_killed_decoder(digits_model: RegisteredModel, digits_dir: Path) -> None:
    files = sorted(digits_dir.rglob("*.png"))[:40]
    data = {str(p): p.read_bytes() for p in files}
    data["broken.png"] = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
    data["empty.jpg"] = b""
    bulk = _bulk(digits_model)
    try:
        clean = _run(bulk, data)
        assert [o.position for o in clean] == list(range(42))
        assert all(o.result is not None for o in clean[:40])
        assert [(o.error_code) for o in clean[40:]] == ["corrupt_image", "empty_image"]

        reads = 0

        def read_and_kill(ref: str) -> bytes:
            nonlocal reads
            reads += 1
            if reads == 12:  # a decode process dies mid-chunk (an OOM kill, a decoder bug)
                for pid in list(bulk._decoders._processes or {}):
                    os.kill(pid, signal.SIGKILL)
            return data[ref]

        pool = bulk._decoders
        survived = _run(bulk, data, read=read_and_kill)
        assert bulk._decoders is not pool  # it broke, and was rebuilt
        assert [(o.position, o.sha256, o.result, o.error_code) for o in survived] == [
            (o.position, o.sha256, o.result, o.error_code) for o in clean
        ]
        # Stopping between batches (a cancelled job) answers nothing more.
        stopped: list[ItemOutcome] = []
        assert not bulk.classify(
            list(enumerate(data)),
            read=data.__getitem__,
            top_k=3,
            min_confidence=0.0,
            on_batch=stopped.extend,
            should_stop=lambda: True,
        )
        assert stopped == []
        best, rates = fastest_batch(bulk.classifier, 8, seconds=0.05)
        assert set(rates) == {1, 2, 4, 8} and best in rates
    finally:
        bulk.close()


def test_default_decode_processes() -> None:
    assert [decode_processes("cpu", n) for n in (1, 2, 8, 16)] == [1, 1, 2, 4]
    assert [decode_processes("cuda", n) for n in (1, 2, 8)] == [1, 1, 7]
