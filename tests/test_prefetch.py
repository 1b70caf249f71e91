"""The background batch preparation (``tta.streams.prefetch``): same items, same order, the
producer's exception raised unchanged in the loop, an early exit stops the producer, and a run
gives the same rows with and without it."""

from __future__ import annotations

import threading

import pytest

import tta.runner as runner
from tta.errors import UserError
from tta.runner import Run, RunConfig
from tta.streams import prefetch


def test_same_items_in_the_same_order_at_every_depth():
    for depth in (0, 1, 2, 5):
        assert list(prefetch(iter(range(50)), depth)) == list(range(50))


def test_the_producers_error_is_raised_unchanged_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise UserError("fog.npy holds 20 images of 16 x 16 x 3")

    seen = []
    with pytest.raises(UserError, match="fog.npy holds 20 images"):
        for item in prefetch(items(), 2):
            seen.append(item)
    assert seen == [1, 2]


def test_leaving_the_loop_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    before = threading.active_count()
    for item in prefetch(items(), 2):
        if item == 3:
            break
    assert threading.active_count() == before          # the producer thread has ended
    assert len(produced) <= 3 + 1 + 2 + 1               # at most depth (+ the one in hand) past the break


def test_a_run_gives_the_same_rows_with_and_without_prefetching(monkeypatch):
    rows = {}
    for depth in (0, 2):
        monkeypatch.setattr(runner, "PREFETCH_DEPTH", depth)
        run = Run(RunConfig(protocol="smoke", method="tent", domains=["fog", "contrast"], n_examples=400))
        rows[depth] = [(r["domain"], r["error"], r["nll"], r["ece"]) for r in run.execute(None)]
    assert rows[0] == rows[2]
    assert len(rows[2]) == 2
