"""``distgap eval`` in batch mode: read, batch, run the core, accumulate.

Input is read and batched on a background thread (:class:`ReadAhead`) while the
core computes. Batches are stacked up to :func:`stack_size` at a time into one
call: on the CPU one call is cut into parts for NumPy threads (a short stack, at
the end or from a slow stream, stays short); on a GPU it is one call of a
compiled TensorFlow function with a fixed signature, traced once per run (a
short stack is padded with masked rows). Either way the per-call overhead is
shared by many batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distgap_cli import batching
from distgap_cli.accumulate import GapAccumulator
from distgap_cli.backend import NumpyRunner, Runner, runner, worker_count
from distgap_cli.breakdown import PerAnchor
from distgap_cli.distances import Distance
from distgap_cli.errors import NoResultError
from distgap_cli.reading import Reader

# Rows per compiled call; small batches are stacked up to about this many...
_ROWS_PER_CALL = 16384
# ...no more than this many pairwise values (64 MB per B x B tensor)...
_PAIRS_PER_CALL = 1 << 24
# ...and no more than this many bytes of embeddings (d 768: about 10,900 rows).
_BYTES_PER_CALL = 1 << 25
# Bytes of stacks the reader may hold ready ahead of the computation. It fills
# them while the core computes, and while TensorFlow is imported (GPU runs).
_READ_AHEAD_BYTES = 1 << 28
# Seconds to wait for the first batch before setting up the computation
# regardless (on a GPU that means importing TensorFlow).
_FIRST_BATCH_WAIT = 1.0
# Seconds to wait for the next batch before evaluating a shorter stack: a slow
# stream is evaluated as it comes instead of once a whole stack has come.
_PATIENCE = 0.25
# Seconds a closed read-ahead waits for its reader to stop. A reader blocked on a
# slow pipe is left behind (a daemon thread) rather than holding up an error.
_STOP_WAIT = 1.0


@dataclass
class EvalSettings:
    """How a batch-mode evaluation runs."""

    distances: list[Distance]
    batch_size: int = 256
    sampler: str = "sequential"
    seed: int = 0
    device: str = "/CPU:0"
    classes_per_batch: int | None = None
    examples_per_class: int | None = None
    batches: int | None = None
    per_file: bool = False
    per_anchor: bool = False


@dataclass
class EvalResult:
    """Everything a report needs, as plain data."""

    settings: EvalSettings
    accumulators: dict[Distance, GapAccumulator]
    classes: int
    dimension: int | None
    device: str
    health: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    per_file: dict[int, dict[Distance, GapAccumulator]] = field(default_factory=dict)
    anchors: dict[Distance, PerAnchor] | None = None


def _distinct(labels: np.ndarray) -> np.ndarray:
    """The distinct values of ``labels``. np.unique does the same, but NumPy
    2 imports numpy.ma on its first call (60 ms holding the GIL while the
    cores start computing)."""
    ordered = np.sort(labels)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _distinct_labels(stack: Stack) -> np.ndarray:
    """How many classes each real batch of ``stack`` holds."""
    labels = stack.labels[: stack.real]
    width = labels.shape[1]
    kept = np.arange(width) < stack.sizes[:, None]
    # Rows past a batch's size sort last; among its first `size` sorted labels,
    # each change of value is one more class.
    ordered = np.sort(np.where(kept, labels, np.iinfo(labels.dtype).max), axis=1)
    changes = (ordered[:, 1:] != ordered[:, :-1]) & kept[:, 1:]
    return 1 + np.count_nonzero(changes, axis=1)


class BatchHealth:
    """Whether batches can have a gap at all: rows per class, anchors with pairs."""

    def __init__(self) -> None:
        self.batches = 0
        self.items_per_class = 0.0
        self.anchors = 0
        self.with_pos = 0
        self.with_neg = 0

    def add(self, stack: Stack, stats: dict[str, np.ndarray]) -> None:
        """Count the real batches of ``stack``."""
        self.batches += stack.real
        self.items_per_class += float(np.sum(stack.sizes / _distinct_labels(stack)))
        self.anchors += int(stats["anchors"].sum())
        self.with_pos += int(stats["anchors_with_pos"].sum())
        self.with_neg += int(stats["anchors_with_neg"].sum())

    def summary(self) -> dict[str, float]:
        """Means over all batches and anchors."""
        return {
            "mean_rows_per_class": self.items_per_class / max(self.batches, 1),
            "anchors_with_positive": self.with_pos / max(self.anchors, 1),
            "anchors_with_negative": self.with_neg / max(self.anchors, 1),
        }


def stack_size(batch_size: int, dim: int, at_least: int = 1) -> int:
    """How many batches one call takes: larger stacks share the per-call
    overhead (cosine, batch 256, d 128: 505k rows/s at 16 batches a call, 776k at
    64), bounded so the B x B tensors and the stacked rows stay small. The B x B
    bound gives way to ``at_least`` (one batch per CPU thread: NumPy takes the
    anchors of a large batch a slice at a time, never the whole matrix)."""
    rows = min(_ROWS_PER_CALL, _BYTES_PER_CALL // (4 * max(dim, 1)))
    by_rows = rows // batch_size
    by_pairs = _PAIRS_PER_CALL // (batch_size * batch_size)
    return max(1, min(by_rows, max(by_pairs, at_least)))


class BatchEvaluator:
    """The core over a stack of batches, to per-batch statistics.

    Args:
        distances: what to compute.
        device: a ``--device`` value.
        per_anchor: also return each anchor's hardest pairs.
        library: ``auto`` (NumPy on the CPU, TensorFlow on a GPU) or
            ``tensorflow`` (TensorFlow on the CPU too).
    """

    def __init__(
        self,
        distances: list[Distance],
        device: str,
        per_anchor: bool = False,
        library: str = "auto",
    ) -> None:
        from distgap_cli import core

        def evaluate(labels: Any, x: Any, mask: Any) -> dict[str, Any]:
            out = {}
            for distance in distances:
                anchors = core.anchor_stats(distance, labels, x, mask, full=False)
                out[distance.value] = core.batch_stats(anchors, mask)._asdict()
                if per_anchor:
                    out[distance.value].update(
                        anchor_hardest_pos=anchors.hardest_pos,
                        anchor_hardest_neg=anchors.hardest_neg,
                        anchor_neg_index=anchors.hardest_neg_index,
                    )
            return out

        self.distances = distances
        self._run: Runner = runner(
            evaluate,
            device,
            3,
            size=lambda labels, x, mask: x.shape[1] * max(x.shape[1], x.shape[2]),
            library=library,
        )
        self.device = self._run.device

    @property
    def on_numpy(self) -> bool:
        """Whether stacks run on NumPy threads: any shape, one batch per thread
        at least, instead of a compiled function's fixed shape."""
        return isinstance(self._run, NumpyRunner)

    def __call__(
        self, labels: np.ndarray, x: np.ndarray, mask: np.ndarray
    ) -> dict[Distance, dict[str, np.ndarray]]:
        """Per-batch statistics of a ``[K, B]`` / ``[K, B, d]`` stack."""
        out = self._run(labels, x, mask)
        return {d: out[d.value] for d in self.distances}


@dataclass
class Stack:
    """Batches packed for one call, as ``[k, batch_size]`` arrays.

    ``real`` batches are real, the rest padding (masked rows, for a compiled
    function's fixed shape; a short last batch is padded the same way).
    ``sizes`` and ``first_rows`` give each real batch's row count and the
    global index of its first row.
    """

    labels: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    real: int
    sizes: np.ndarray
    first_rows: np.ndarray
    rows: np.ndarray
    files: np.ndarray


def _pack(stack: list[batching.Batch], batch_size: int, k: int) -> Stack:
    """The batches of ``stack`` as ``[k, batch_size]`` arrays: views of the
    block they lie in where they fill a run of it, else copied together and
    padded with masked rows."""
    viewed = _view(stack, batch_size, k)
    if viewed is not None:
        return viewed
    dim = stack[0].embeddings.shape[1]
    labels = np.zeros((k, batch_size), np.int64)
    x = np.zeros((k, batch_size, dim), np.float32)
    mask = np.zeros((k, batch_size), bool)
    rows = np.full((k, batch_size), -1, np.int64)
    files = np.zeros((k, batch_size), np.int32)
    for i, batch in enumerate(stack):
        n = len(batch.labels)
        labels[i, :n] = batch.labels
        x[i, :n] = batch.embeddings
        mask[i, :n] = True
        rows[i, :n] = batch.rows
        files[i, :n] = batch.files
    return Stack(
        labels,
        x,
        mask,
        len(stack),
        sizes=np.array([len(b.labels) for b in stack]),
        first_rows=np.array([b.rows[0] for b in stack]),
        rows=rows,
        files=files,
    )


def _view(stack: list[batching.Batch], batch_size: int, k: int) -> Stack | None:
    """``stack`` as views of one block, when its ``k`` batches are whole and
    lie one after another in it (sequential batches of a large block), else
    None. Stacking them costs no copy of the embeddings."""
    block, start = stack[0].origin, stack[0].start
    if block is None or len(stack) != k:
        return None
    for i, batch in enumerate(stack):
        if batch.origin is not block or batch.start != start + i * batch_size:
            return None
    span = slice(start, start + k * batch_size)
    shape = (k, batch_size)
    return Stack(
        labels=block.labels[span].astype(np.int64, copy=False).reshape(shape),
        x=block.embeddings[span].reshape(*shape, -1),
        mask=np.ones(shape, bool),
        real=k,
        sizes=np.full(k, batch_size),
        first_rows=block.rows[span][::batch_size].copy(),
        rows=block.rows[span].reshape(shape),
        files=np.full(shape, block.file, np.int32),
    )


class ReadAhead:
    """Items produced on a background thread, up to ``budget`` ahead.

    Reading and batching then overlap the compiled calls, which release the GIL,
    and the TensorFlow import. ``weigh`` says what an item costs against the
    budget; one item always fits. An exception raised while producing is
    re-raised by :meth:`get`, after the items produced before it.
    """

    END = object()  # what get() returns once every item has been taken
    LATE = object()  # what get() returns when its timeout passed first

    def __init__(
        self, items: Iterator[Any], weigh: Callable[[Any], int], budget: int
    ) -> None:
        self._items = items
        self._weigh = weigh
        self._budget = budget
        self._ready: collections.deque[tuple[Any, int, BaseException | None]] = (
            collections.deque()
        )
        self._held = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._worker = threading.Thread(
            target=self._produce, name="distgap-reader", daemon=True
        )
        self._worker.start()

    def _room_for(self, weight: int) -> bool:
        held = self._held
        return self._stop.is_set() or not held or held + weight <= self._budget

    def _hand_over(self, item: Any, weight: int, error: BaseException | None) -> None:
        with self._changed:
            self._ready.append((item, weight, error))
            self._held += weight
            self._changed.notify_all()

    def _produce(self) -> None:
        try:
            for item in self._items:
                weight = self._weigh(item)
                with self._changed:
                    self._changed.wait_for(functools.partial(self._room_for, weight))
                if self._stop.is_set():
                    return
                self._hand_over(item, weight, None)
        except BaseException as exc:  # handed to the consumer, not swallowed
            self._hand_over(None, 0, exc)
            return
        self._hand_over(self.END, 0, None)

    def get(self, timeout: float | None = None) -> Any:
        """The next item, :attr:`END`, or :attr:`LATE` after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._ready), timeout):
                return self.LATE
            item, weight, error = self._ready[0]
            if item is not self.END:  # END stays, for every later call
                self._ready.popleft()
            self._held -= weight
            self._changed.notify_all()
        if error is not None:
            raise error
        return item

    def has_ready(self) -> bool:
        """Whether :meth:`get` would return at once."""
        with self._changed:
            return bool(self._ready)

    def __iter__(self) -> Iterator[Any]:
        while (item := self.get()) is not self.END:
            yield item

    def close(self) -> None:
        """Stop the reader before its next item. One blocked inside an item (a
        slow pipe) is left behind as a daemon thread rather than waited for."""
        with self._changed:
            self._stop.set()
            self._changed.notify_all()
        self._worker.join(_STOP_WAIT)


def _stacks(
    ahead: ReadAhead,
    batch_size: int,
    patience: float,
    first: Any = None,
    *,
    at_least: int = 1,
    pad: bool = True,
) -> Iterator[Stack]:
    """Group the batches ``ahead`` into stacks of :func:`stack_size`.

    A stack is cut short when the next batch has not come within ``patience``
    seconds, so that a slow stream is evaluated (and its per-batch lines written)
    as it arrives, not once a whole stack of it has. ``first``, when given, is
    the batch already taken from ``ahead``. When ``pad`` (a compiled function's
    fixed shape), a short stack is padded to the full size with masked batches
    and a short batch to the batch size with masked rows; otherwise a stack is
    as wide as its widest batch (64 rows at ``-b 256`` cost 64 x 64 values, not
    256 x 256).
    Each stack owns fresh arrays.
    """
    carried = first
    while True:
        batch = ahead.get() if carried is None else carried
        carried = None
        if batch is ReadAhead.END:
            return
        dim = batch.embeddings.shape[1]
        k = stack_size(batch_size, dim, at_least)
        group = [batch]
        deadline = time.monotonic() + patience
        while len(group) < k:
            following = ahead.get(max(0.0, deadline - time.monotonic()))
            if following is ReadAhead.LATE:
                break
            if following is ReadAhead.END or following.embeddings.shape[1] != dim:
                # Files evaluated apart may differ in dimension: never mix them.
                carried = following
                break
            group.append(following)
        if pad:
            yield _pack(group, batch_size, k)
        else:  # no wider than its widest batch (a short last one, a small input)
            yield _pack(group, max(len(b.labels) for b in group), len(group))


def _computed(
    stacks: Iterator[Stack], evaluator: BatchEvaluator, ahead: ReadAhead
) -> Iterator[tuple[Stack, dict[Distance, dict[str, np.ndarray]]]]:
    """Each stack with its statistics, in order.

    A stack's call runs on a thread of its own while the caller takes the
    previous stack's results and the next stack is packed, so the cores never
    wait for that work. When no batch is ready to pack (a slow stream), the
    stack's results are handed over at once rather than held for the next one.
    """
    with concurrent.futures.ThreadPoolExecutor(1, "distgap-call") as caller:
        pending: tuple[Stack, concurrent.futures.Future[Any]] | None = None
        for stack in stacks:
            future = caller.submit(evaluator, stack.labels, stack.x, stack.mask)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (stack, future)
            if not ahead.has_ready():
                yield stack, future.result()
                pending = None
        if pending is not None:
            yield pending[0], pending[1].result()


def _batch_bytes(batch: batching.Batch) -> int:
    arrays = (batch.embeddings, batch.labels, batch.rows, batch.files)
    return sum(a.nbytes for a in arrays)


def evaluate(
    reader: Reader,
    settings: EvalSettings,
    on_rows: Callable[[int], None] | None = None,
    on_batches: Callable[[int, Stack, dict[Distance, dict[str, np.ndarray]]], None]
    | None = None,
) -> EvalResult:
    """Run a batch-mode evaluation over everything ``reader`` yields.

    Args:
        reader: the input.
        settings: batch size, order, distances, device.
        on_rows: called with the number of rows each time a block is read.
        on_batches: called after each compiled call with the index of its first
            batch, the stack, and the per-batch statistics of its real batches.

    Raises:
        InputError: from the reader, for bad input.
        NoResultError: when no batch had both a positive and a negative pair.
    """
    classes: set[int] = set()

    def tracked(blocks: Iterator[Any]) -> Iterator[Any]:
        for block in blocks:
            classes.update(_distinct(block.labels).tolist())
            if on_rows is not None:
                on_rows(len(block.labels))
            yield block

    if settings.sampler == "sequential":  # stacks as views of the blocks read
        batch = settings.batch_size
        cores = worker_count()
        reader.takes = lambda dim: stack_size(batch, dim, cores) * batch
    blocks = tracked(reader.blocks())
    spill = None
    warnings: list[str] = []
    batches: Iterator[batching.Batch]
    if settings.sampler == "sequential":
        batches = batching.sequential(
            blocks, settings.batch_size, split_files=settings.per_file
        )
    else:
        spill = batching.Spill(blocks)
        if settings.sampler == "shuffle":
            batches = batching.shuffled(spill, settings.batch_size, settings.seed)
        else:
            try:
                plan, batches = batching.balanced(
                    spill,
                    settings.classes_per_batch or 2,
                    settings.examples_per_class or 2,
                    settings.batches,
                    settings.seed,
                )
            except BaseException:
                spill.close()
                raise
            if plan.small_classes:
                names = [reader.label_map.name(c) for c in plan.small_classes[:10]]
                shown = ", ".join(names)
                more = len(plan.small_classes) - 10
                warnings.append(
                    f"{len(plan.small_classes)} class(es) have fewer than "
                    f"{settings.examples_per_class} rows, so their batches hold all "
                    "their rows and fewer than --examples-per-class (a class of one "
                    f"row gives its anchor no positive): {shown}"
                    + (f" and {more} more" if more > 0 else "")
                )

    health = BatchHealth()
    dims: set[int] = set()
    per_file: dict[int, dict[Distance, GapAccumulator]] = {}
    anchor_parts: dict[Distance, list[PerAnchor]] = {d: [] for d in settings.distances}
    accumulators = {d: GapAccumulator() for d in settings.distances}
    ahead = ReadAhead(batches, weigh=_batch_bytes, budget=_READ_AHEAD_BYTES)
    try:
        # The first batch is read before TensorFlow may be imported (a GPU run),
        # so that bad input fails fast; the reader goes on during the import. A
        # stream slow to fill a batch does not hold a device error back.
        first = ahead.get(_FIRST_BATCH_WAIT)
        if first is ReadAhead.END:
            raise NoResultError(_nothing_valid(reader))
        evaluator = BatchEvaluator(
            settings.distances, settings.device, settings.per_anchor
        )
        if first is ReadAhead.LATE:
            first = ahead.get()
            if first is ReadAhead.END:
                raise NoResultError(_nothing_valid(reader))
        stacks = _stacks(
            ahead,
            settings.batch_size,
            _PATIENCE,
            first,
            at_least=worker_count() if evaluator.on_numpy else 1,
            pad=not evaluator.on_numpy,
        )
        del first  # held by the stacking until used, not for the whole run
        done = 0
        for stack, stats in _computed(stacks, evaluator, ahead):
            real = {
                d: {name: v[: stack.real] for name, v in values.items()}
                for d, values in stats.items()
            }
            for distance, values in real.items():
                accumulators[distance].add_batches(values)
            health.add(stack, real[settings.distances[0]])
            dims.add(stack.x.shape[2])
            if settings.per_file:
                _add_per_file(per_file, stack, real)
            if settings.per_anchor:
                for distance, values in real.items():
                    anchor_parts[distance].append(_per_anchor(stack, values))
            if on_batches is not None:
                on_batches(done, stack, real)
            done += stack.real
    finally:
        try:
            ahead.close()
        finally:
            if spill is not None:
                spill.close()

    result = EvalResult(
        settings=settings,
        accumulators=accumulators,
        classes=len(classes),
        dimension=dims.pop() if len(dims) == 1 else None,
        device=evaluator.device,
        health=health.summary(),
        warnings=warnings,
        per_file=per_file,
        anchors=(
            {d: PerAnchor.concat(parts) for d, parts in anchor_parts.items()}
            if settings.per_anchor
            else None
        ),
    )
    _check_batches(result, reader.rows_kept)
    return result


def _nothing_valid(reader: Reader) -> str:
    """Why an input gave no rows to evaluate."""
    if not reader.dropped:
        return "the input holds no rows"
    return (
        f"the input holds no valid rows: --on-invalid skip dropped all "
        f"{reader.rows_read} ({reader.dropped_reasons()}); fix those rows or export "
        "them again"
    )


def _add_per_file(
    per_file: dict[int, dict[Distance, GapAccumulator]],
    stack: Stack,
    stats: dict[Distance, dict[str, np.ndarray]],
) -> None:
    """Accumulate each batch into its file's state (batches never span files)."""
    for i in range(stack.real):
        owner = int(stack.files[i, 0])
        states = per_file.setdefault(owner, {d: GapAccumulator() for d in stats})
        for distance, values in stats.items():
            states[distance].add_batches({k: v[i : i + 1] for k, v in values.items()})


def _per_anchor(stack: Stack, values: dict[str, np.ndarray]) -> PerAnchor:
    """The anchors of a stack's real batches, with global rows for partners."""
    parts = []
    for i in range(stack.real):
        n = int(stack.sizes[i])
        index = values["anchor_neg_index"][i, :n]
        found = index >= 0
        safe = np.where(found, index, 0)
        parts.append(
            PerAnchor(
                rows=stack.rows[i, :n],
                files=stack.files[i, :n],
                labels=stack.labels[i, :n],
                hardest_pos=values["anchor_hardest_pos"][i, :n].astype(np.float64),
                hardest_neg=values["anchor_hardest_neg"][i, :n].astype(np.float64),
                nearest_neg_row=np.where(found, stack.rows[i, safe], -1),
                nearest_neg_label=stack.labels[i, safe],
            )
        )
    return PerAnchor.concat(parts)


def _batches(count: int) -> str:
    return "1 batch" if count == 1 else f"{count} batches"


# A balanced sampler draws at least two rows of every class that has them
# (--examples-per-class is at least 2): a batch of it without positives drew
# classes of one row, which no other setting gives a positive.
_SINGLE_ROW_CLASSES = (
    "the classes drawn had a single row; leave out classes of one row, or raise "
    "--classes-per-batch"
)


def _check_batches(result: EvalResult, rows: int) -> None:
    """Fail when no batch had a gap; warn when many were skipped. ``rows`` is
    how many valid rows the input held."""
    acc = next(iter(result.accumulators.values()))
    counts = acc.counts
    total = counts["batches"]
    no_pos = counts["skipped_no_positive_pair"]
    no_neg = counts["skipped_no_negative_pair"]
    if acc.used_batches == 0 and result.classes == 1:
        raise NoResultError(
            "the input holds a single class, so no row has a negative and there is "
            "no gap; evaluate embeddings of at least two classes"
        )
    if acc.used_batches == 0 and result.classes == rows:
        # No sampler and no batch size can make a positive pair here.
        raise NoResultError(
            f"each of the {result.classes} classes has a single row, so no row "
            "has a positive and there is no gap; evaluate at least two rows of a "
            "class"
        )
    if acc.used_batches == 0 and counts["anchors_with_pos"] == 0:
        hint = (
            _SINGLE_ROW_CLASSES
            if result.settings.sampler == "balanced"
            else "try --sampler balanced or a larger --batch-size"
        )
        raise NoResultError(
            f"no batch had two rows of one class ({_batches(total)}, none with a "
            f"positive pair), so there is no gap; {hint}"
        )
    if acc.used_batches == 0:
        raise NoResultError(
            f"none of the {total} batch(es) had both a positive pair and a negative "
            f"pair ({no_pos} without a positive pair, {no_neg} without a negative "
            "pair), so there is no gap to report; try --shuffle or a larger "
            "--batch-size"
        )
    health = result.health
    sampler = result.settings.sampler
    more_rows = (
        _SINGLE_ROW_CLASSES if sampler == "balanced" else "try --sampler balanced"
    )
    if health["mean_rows_per_class"] < 2 or health["anchors_with_positive"] < 0.5:
        result.warnings.append(
            f"batches hold {health['mean_rows_per_class']:.2f} rows per class on "
            f"average and {health['anchors_with_positive']:.0%} of anchors have a "
            f"positive; the gap needs classes with 2 or more rows in a batch: "
            f"{more_rows}"
        )
    skipped = no_pos + no_neg
    if skipped and skipped * 10 >= total:
        if no_neg >= no_pos:
            hint = {
                "sequential": "the input looks sorted by label; try --shuffle",
                "balanced": "one class fills most batches; raise --classes-per-batch",
            }.get(sampler, "one class fills most batches; try --sampler balanced")
        else:
            hint = "most classes have too few rows per batch; " + {
                "sequential": "try --shuffle or a larger --batch-size",
                "balanced": more_rows,
            }.get(sampler, "try --sampler balanced or a larger --batch-size")
        result.warnings.append(
            f"{skipped} of {total} batches were skipped ({no_pos} without a positive "
            f"pair, {no_neg} without a negative pair, i.e. a single class): {hint}"
        )
