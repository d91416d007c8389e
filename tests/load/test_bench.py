"""The benchmark's bookkeeping: which phases are compared in slices, and what a slice
counts (the timing itself is only ever measured by ``make bench``, never asserted)."""

from __future__ import annotations

from tests.load.test_smoke_load import load_module

bench = load_module("bench")


def test_twin_phases_pair_up_and_the_burst_stays_next_to_the_c1_after_it() -> None:
    steps = bench.paired(bench.interleave(bench.model_schedule("resnet50")))
    names = [[(on, phase.name) for on, phase in step] for step in steps]
    assert names[:5] == [
        [(True, "c=1"), (False, "c=1")],
        [(True, "c=4"), (False, "c=4")],
        [(True, "c=16"), (False, "c=16")],
        [(False, "c=64"), (True, "c=64")],
        [(True, "c=1 after c=64"), (False, "c=1 after c=64")],
    ]
    assert all(len(step) == 1 for step in steps[5:])  # large, cache hit, batch endpoint
    # int8 runs with batching only: nothing to pair.
    assert all(
        len(s) == 1 for s in bench.paired(bench.interleave(bench.model_schedule("resnet50 int8")))
    )


def test_each_side_of_a_pair_runs_first_as_often_and_the_pair_ends_as_it_began() -> None:
    off, on = (False, bench.Phase("c=64", 64)), (True, bench.Phase("c=64", 64))
    order = bench.stretches([off, on])
    assert order == [off, on, on, off, on, off, off, on]  # A B, B A, B A, A B
    assert order[-1] == on  # right before the batching server's "c=1 after c=64"
    alone = (True, bench.Phase("cache hit, c=1", 1, "cache"))
    assert bench.stretches([alone]) == [alone]


def test_slices_add_up_and_only_measured_answers_count() -> None:
    first, second = bench.Sample(wall=2.0), bench.Sample(wall=2.0)
    first.add(200, 0.010, 1, b"{}", measured=True)
    first.add(200, 0.500, 1, b"{}", measured=False)  # warm-up: status only
    second.add(200, 0.030, 16, b"{}", measured=True)
    second.add(503, 0.001, 1, b'{"error": "overloaded"}', measured=False)
    total = bench.Sample()
    total.extend(first)
    total.extend(second)
    summary = total.summary()
    assert summary["requests"] == 4 and summary["non_2xx"] == 1
    assert summary["statuses"] == {"200": 3, "503": 1}
    assert summary["img_s"] == round(17 / 4.0, 1)
    assert summary["p50_ms"] == 20.0  # of the two measured answers
    assert summary["errors"] == ['503: b\'{"error": "overloaded"}\'']
