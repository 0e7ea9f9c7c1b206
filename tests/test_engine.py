"""The batch-mode plumbing: read-ahead on a thread, and how batches are stacked."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from distgap_cli import batching
from distgap_cli.batching import Batch
from distgap_cli.engine import (
    ReadAhead,
    Stack,
    _distinct,
    _distinct_labels,
    _pack,
    _stacks,
    _view,
    stack_size,
)
from distgap_cli.reading import Block


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "distgap-reader"]


def test_items_arrive_in_order():
    ahead = ReadAhead(iter(range(100)), weigh=lambda _: 1, budget=7)
    assert list(ahead) == list(range(100))
    assert ahead.get() is ReadAhead.END  # and stays so


def test_the_reader_holds_no_more_than_its_budget_ahead():
    made = 0

    def items():
        nonlocal made
        for i in range(40):
            made += 1
            yield i

    ahead = []
    for consumed, _ in enumerate(ReadAhead(items(), lambda _: 2, budget=6), start=1):
        time.sleep(0.002)  # a slow consumer lets the reader run ahead
        # Three items fit in the budget, plus the one the reader holds waiting.
        ahead.append(made - consumed)
    assert max(ahead) <= 4
    assert max(ahead) >= 3  # it did read ahead


def test_an_item_larger_than_the_budget_still_passes():
    assert list(ReadAhead(iter([5, 50, 5]), weigh=lambda w: w, budget=10)) == [5, 50, 5]


def test_an_error_arrives_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("row 3 is bad")

    got = []
    with pytest.raises(ValueError, match="row 3"):
        for item in ReadAhead(items(), weigh=lambda _: 1, budget=100):
            got.append(item)
    assert got == [1, 2]


def test_a_late_item_is_reported_as_late():
    more = threading.Event()

    def items():
        yield 0
        more.wait(30)
        yield 1

    ahead = ReadAhead(items(), weigh=lambda _: 1, budget=4)
    assert ahead.get() == 0
    assert ahead.get(timeout=0.05) is ReadAhead.LATE
    more.set()
    assert ahead.get() == 1
    assert ahead.get() is ReadAhead.END


def test_closing_early_stops_the_reader():
    started = len(_reader_threads())
    ahead = ReadAhead(iter(range(10**9)), weigh=lambda _: 1, budget=4)
    assert ahead.get() == 0
    ahead.close()
    assert len(_reader_threads()) == started


def test_closing_does_not_wait_for_a_reader_stuck_on_a_slow_input():
    more = threading.Event()

    def items():
        yield 0
        more.wait(30)  # a pipe whose writer has gone quiet
        yield 1

    ahead = ReadAhead(items(), weigh=lambda _: 1, budget=4)
    assert ahead.get() == 0
    start = time.perf_counter()
    ahead.close()
    assert time.perf_counter() - start < 10
    more.set()


def _batch(first_row: int, n: int = 4, dim: int = 2) -> Batch:
    return Batch(
        embeddings=np.ones((n, dim), np.float32),
        labels=np.zeros(n, np.int64),
        rows=np.arange(first_row, first_row + n),
        files=np.zeros(n, np.int32),
    )


def test_a_slow_stream_is_stacked_as_it_arrives():
    # 4-row batches stack 4096 to a call; a stream that pauses after two batches
    # must not hold them back until 4096 have come.
    more = threading.Event()

    def batches():
        yield _batch(0)
        yield _batch(4)
        more.wait(30)
        yield _batch(8)

    stacks = _stacks(ReadAhead(batches(), lambda _: 1, 100), 4, patience=0.1)
    start = time.perf_counter()
    first = next(stacks)
    assert time.perf_counter() - start < 10
    assert first.real == 2 and list(first.first_rows) == [0, 4]
    more.set()
    assert [list(s.first_rows) for s in stacks] == [[8]]


def test_batches_of_different_dimensions_never_share_a_stack():
    parts = [_batch(0, dim=2), _batch(4, dim=2), _batch(8, dim=3), _batch(12, dim=3)]
    stacks = list(_stacks(ReadAhead(iter(parts), lambda _: 1, 100), 4, patience=5))
    assert [(s.x.shape[2], list(s.first_rows)) for s in stacks] == [
        (2, [0, 4]),
        (3, [8, 12]),
    ]


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


def test_one_large_batch_per_cpu_thread_at_least():
    assert stack_size(4096, 128, at_least=2) == 2
    assert stack_size(4096, 768, at_least=16) == 2  # the bytes bound still holds
    assert stack_size(256, 128, at_least=2) == 64


@pytest.mark.parametrize("pad, shape", [(True, (4096, 4)), (False, (2, 4))])
def test_short_stacks_are_padded_only_for_a_fixed_shape(pad, shape):
    parts = [_batch(0), _batch(4)]
    ahead = ReadAhead(iter(parts), lambda _: 1, 100)
    (stack,) = _stacks(ahead, 4, patience=5, pad=pad)
    assert stack.labels.shape == shape and stack.real == 2
    assert stack.mask[:2].all() and not stack.mask[2:].any()


@pytest.mark.parametrize("pad, shape", [(True, (stack_size(8, 2), 8)), (False, (2, 5))])
def test_short_batches_are_padded_only_for_a_fixed_shape(pad, shape):
    # Batches of 8 rows, of which the input holds 5 and 3: on NumPy the stack
    # is 5 wide, not 8 (64 rows at -b 256 would otherwise cost 256 x 256).
    parts = [_batch(0, n=5), _batch(5, n=3)]
    (stack,) = _stacks(ReadAhead(iter(parts), lambda _: 1, 100), 8, 5, pad=pad)
    assert stack.labels.shape == shape and stack.x.shape[:2] == shape
    assert list(stack.sizes) == [5, 3] and stack.mask[0].sum() == 5
    assert stack.mask[1].sum() == 3 and not stack.mask[2:].any()


def test_distinct_labels_per_batch_match_unique():
    # Batch health counts the classes of each real batch of a stack at once;
    # rows past a batch's size, and the largest int64 label, must not confuse it.
    rng = np.random.default_rng(0)
    for trial in range(500):
        k, width = rng.integers(1, 5), rng.integers(1, 9)
        labels = rng.integers(0, 4, (k, width))
        if trial % 7 == 0:
            labels[0, 0] = np.iinfo(np.int64).max
        real = rng.integers(1, k + 1)
        sizes = rng.integers(1, width + 1, real)
        stack = Stack(labels, None, None, real, sizes, None, None, None)
        want = [len(np.unique(labels[i, : sizes[i]])) for i in range(real)]
        assert _distinct_labels(stack).tolist() == want


def test_distinct_values_match_unique():
    rng = np.random.default_rng(3)
    for n in (1, 2, 50, 1000):
        labels = rng.integers(-3, 7, n)
        assert _distinct(labels).tolist() == np.unique(labels).tolist()


def _block(rows: int, first_row: int = 0, dim: int = 3, file: int = 0) -> Block:
    rng = np.random.default_rng(first_row)
    return Block(
        embeddings=rng.normal(size=(rows, dim)).astype(np.float32),
        labels=rng.integers(0, 5, rows),
        rows=np.arange(first_row, first_row + rows),
        file=file,
    )


def _copied(batches: list[Batch]) -> list[Batch]:
    """The same batches, no longer views of a block."""
    return [
        Batch(b.embeddings.copy(), b.labels.copy(), b.rows.copy(), b.files.copy())
        for b in batches
    ]


def _same_stack(a: Stack, b: Stack) -> bool:
    fields = ("labels", "x", "mask", "sizes", "first_rows", "rows", "files")
    return a.real == b.real and all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in fields
    )


def test_consecutive_batches_of_a_block_stack_as_a_view_of_it():
    block = _block(40)
    batches = list(batching.sequential([block], 8))[:4]
    stack = _pack(batches, 8, 4)
    assert np.shares_memory(stack.x, block.embeddings)
    assert _same_stack(stack, _pack(_copied(batches), 8, 4))


def test_batches_that_are_not_one_run_of_a_block_are_copied():
    # A batch across two blocks, batches out of order, a stack padded past its
    # batches and a short last batch: each is copied, with the same contents.
    blocks = [_block(12), _block(20, first_row=12), _block(20, first_row=32)]
    batches = list(batching.sequential(blocks[:2], 8))  # rows 0-7, ..., 24-31
    tail = list(batching.sequential(blocks[2:], 8))  # the last has 4 rows
    assert np.shares_memory(_pack(batches[2:], 8, 2).x, blocks[1].embeddings)
    cases = [
        (batches[:2], 2),
        (batches[1:3], 2),
        ([batches[3], batches[2]], 2),
        (batches[2:3], 4),
        (tail[1:], 2),
    ]
    for group, k in cases:
        stack = _pack(group, 8, k)
        assert not any(np.shares_memory(stack.x, b.embeddings) for b in blocks)
        assert _same_stack(stack, _pack(_copied(group), 8, k))


def test_npy_blocks_cut_to_whole_stacks_so_that_stacks_are_views(tmp_path, monkeypatch):
    """Batch mode asks the reader for blocks of whole stacks: the stacks of a
    sequential run are then views of a block, not copies, and the figures are
    those of blocks cut anywhere."""
    from distgap_cli import engine, reading, sources
    from distgap_cli.distances import Distance

    from .conftest import write_npy_pair

    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 24)).astype(np.float32)
    y = rng.integers(0, 30, 3000)
    path, _ = write_npy_pair(tmp_path, x, y)
    # Blocks of 1,000 rows of 24 values, where stacks take 8 batches of 48.
    monkeypatch.setattr(reading, "_BLOCK_VALUES", 24_000)
    monkeypatch.setattr(engine, "_ROWS_PER_CALL", 384)
    views = []

    def counted(*args):
        stack = _view(*args)
        views.append(stack is not None)
        return stack

    monkeypatch.setattr(engine, "_view", counted)

    class Unaligned(reading.Reader):
        """A reader that cuts its blocks without asking what is taken."""

        takes = property(lambda self: None, lambda self, value: None)

    def run(reader_class):
        views.clear()
        reader = reader_class(sources.discover([str(path)]), reading.ReadOptions())
        settings = engine.EvalSettings([Distance.COSINE], batch_size=48, device="cpu")
        result = engine.evaluate(reader, settings)
        return result.accumulators[Distance.COSINE].summary(), list(views)

    unaligned, copied = run(Unaligned)
    aligned, viewed = run(reading.Reader)
    assert aligned == unaligned
    # 2,976 rows in stacks of 384; blocks of 1,000 rows cut some of them.
    assert len(viewed) == len(copied) == 8 and not all(copied[:-1])
    assert all(viewed[:-1])  # blocks of 768 rows: two stacks each
