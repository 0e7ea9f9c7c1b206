"""The batch-mode plumbing: read-ahead on a thread, and how batches are stacked."""

from __future__ import annotations

import threading
import time

import pytest

from distgap_cli.engine import prefetch, stack_size


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "distgap-reader"]


def test_items_arrive_in_order():
    assert list(prefetch(iter(range(100)), weigh=lambda _: 1, budget=7)) == list(
        range(100)
    )


def test_the_reader_holds_no_more_than_its_budget_ahead():
    made = 0

    def items():
        nonlocal made
        for i in range(40):
            made += 1
            yield i

    ahead = []
    stream = prefetch(items(), weigh=lambda _: 2, budget=6)
    for consumed, _ in enumerate(stream, start=1):
        time.sleep(0.002)  # a slow consumer lets the reader run ahead
        # Three items fit in the budget, plus the one the reader holds waiting.
        ahead.append(made - consumed)
    assert max(ahead) <= 4
    assert max(ahead) >= 3  # it did read ahead


def test_an_item_larger_than_the_budget_still_passes():
    assert list(prefetch(iter([5, 50, 5]), weigh=lambda w: w, budget=10)) == [5, 50, 5]


def test_an_error_arrives_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("row 3 is bad")

    got = []
    with pytest.raises(ValueError, match="row 3"):
        for item in prefetch(items(), weigh=lambda _: 1, budget=100):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_the_reader():
    started = len(_reader_threads())
    stream = prefetch(iter(range(10**9)), weigh=lambda _: 1, budget=4)
    assert next(stream) == 0
    stream.close()
    assert len(_reader_threads()) == started


@pytest.mark.parametrize(
    ("batch", "dim", "expected"),
    [
        (256, 128, 64),  # 16,384 rows a call
        (256, 768, 42),  # 32 MB of rows a call: 10,922 rows
        (1024, 128, 16),
        (4096, 128, 1),  # a single 4096 x 4096 matrix fills the pair budget
        (8192, 4, 1),  # never fewer than one batch
    ],
)
def test_stacks_are_bounded_by_rows_pairs_and_bytes(batch, dim, expected):
    assert stack_size(batch, dim) == expected


def test_closing_does_not_wait_for_a_reader_stuck_on_a_slow_input():
    more = threading.Event()

    def items():
        yield 0
        more.wait(30)  # a pipe whose writer has gone quiet
        yield 1

    stream = prefetch(items(), weigh=lambda _: 1, budget=4)
    assert next(stream) == 0
    start = time.perf_counter()
    stream.close()
    assert time.perf_counter() - start < 10
    more.set()
