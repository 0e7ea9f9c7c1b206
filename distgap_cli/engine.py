"""``distgap eval`` in batch mode: read, batch, run the core, accumulate.

Batches are stacked ``stack`` at a time into one call of a compiled TensorFlow
function with a fixed signature (the last stack is padded with masked rows), so the
function is traced once per run and the per-call overhead is shared.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distgap_cli import batching
from distgap_cli.accumulate import GapAccumulator
from distgap_cli.distances import Distance
from distgap_cli.errors import NoResultError
from distgap_cli.reading import Reader

# Rows per compiled call; small batches are stacked up to about this many.
_ROWS_PER_CALL = 4096


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


@dataclass
class EvalResult:
    """Everything a report needs, as plain data."""

    settings: EvalSettings
    accumulators: dict[Distance, GapAccumulator]
    classes: int
    dimension: int
    device: str
    health: dict[str, float]
    warnings: list[str] = field(default_factory=list)


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
        for i in range(stack.real):
            labels = stack.labels[i, : stack.sizes[i]]
            self.batches += 1
            self.items_per_class += len(labels) / len(np.unique(labels))
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


def stack_size(batch_size: int) -> int:
    """How many batches one compiled call takes."""
    return max(1, _ROWS_PER_CALL // batch_size)


class BatchEvaluator:
    """A compiled function from a stack of batches to per-batch statistics."""

    def __init__(self, distances: list[Distance], device: str) -> None:
        from distgap_cli import core
        from distgap_cli.backend import resolve_device

        self.distances = distances
        self.device = resolve_device(device)
        tf = core.tf

        def evaluate(labels: Any, x: Any, mask: Any) -> dict[str, Any]:
            out = {}
            for distance in distances:
                anchors = core.anchor_stats(distance, labels, x, mask, full=False)
                out[distance.value] = core.batch_stats(anchors, mask)._asdict()
            return out

        self._fn = tf.function(evaluate, reduce_retracing=True)
        self._tf = tf

    def __call__(
        self, labels: np.ndarray, x: np.ndarray, mask: np.ndarray
    ) -> dict[Distance, dict[str, np.ndarray]]:
        """Per-batch statistics of a ``[K, B]`` / ``[K, B, d]`` stack."""
        with self._tf.device(self.device):
            out = self._fn(labels, x, mask)
        return {
            d: {k: v.numpy() for k, v in out[d.value].items()} for d in self.distances
        }


@dataclass
class Stack:
    """Batches packed for one compiled call, padded to ``[k, batch_size]``.

    ``real`` batches are real, the rest padding; ``sizes`` and ``first_rows`` give
    each real batch's row count and the global index of its first row.
    """

    labels: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    real: int
    sizes: np.ndarray
    first_rows: np.ndarray


def _stacks(
    batches: Iterator[batching.Batch], batch_size: int, k: int
) -> Iterator[Stack]:
    """Group batches into stacks of ``k``; each stack owns fresh arrays."""
    stack: list[batching.Batch] = []
    for batch in batches:
        stack.append(batch)
        if len(stack) == k:
            yield _pack(stack, batch_size, k)
            stack = []
    if stack:
        yield _pack(stack, batch_size, k)


def _pack(stack: list[batching.Batch], batch_size: int, k: int) -> Stack:
    dim = stack[0].embeddings.shape[1]
    labels = np.zeros((k, batch_size), np.int64)
    x = np.zeros((k, batch_size, dim), np.float32)
    mask = np.zeros((k, batch_size), bool)
    for i, batch in enumerate(stack):
        n = len(batch.labels)
        labels[i, :n] = batch.labels
        x[i, :n] = batch.embeddings
        mask[i, :n] = True
    return Stack(
        labels,
        x,
        mask,
        len(stack),
        sizes=np.array([len(b.labels) for b in stack]),
        first_rows=np.array([b.rows[0] for b in stack]),
    )


_DONE = object()


def prefetch(items: Iterator[Any], depth: int = 4) -> Iterator[Any]:
    """Run ``items`` on a background thread, ``depth`` items ahead.

    Reading and batching then overlap the compiled calls, which release the GIL.
    An exception raised while producing is re-raised here, in order.
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((item, None))
        except BaseException as exc:  # handed to the consumer, not swallowed
            slots.put((None, exc))
            return
        slots.put((_DONE, None))

    worker = threading.Thread(target=produce, name="distgap-reader", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue, then let it finish.
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.05)
        worker.join()


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
            classes.update(np.unique(block.labels).tolist())
            if on_rows is not None:
                on_rows(len(block.labels))
            yield block

    blocks = tracked(reader.blocks())
    spill = None
    warnings: list[str] = []
    batches: Iterator[batching.Batch]
    if settings.sampler == "sequential":
        batches = batching.sequential(blocks, settings.batch_size)
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
                    f"{settings.examples_per_class} rows and are drawn with "
                    f"replacement: {shown}" + (f" and {more} more" if more > 0 else "")
                )

    health = BatchHealth()
    accumulators = {d: GapAccumulator() for d in settings.distances}
    k = stack_size(settings.batch_size)
    try:
        first = next(batches, None)
        if first is None:
            raise NoResultError("the input holds no valid rows")
        dim = first.embeddings.shape[1]
        evaluator = BatchEvaluator(settings.distances, settings.device)
        chained = _prepend(first, batches)
        done = 0
        for stack in prefetch(_stacks(chained, settings.batch_size, k)):
            stats = evaluator(stack.labels, stack.x, stack.mask)
            real = {
                d: {name: v[: stack.real] for name, v in values.items()}
                for d, values in stats.items()
            }
            for distance, values in real.items():
                accumulators[distance].add_batches(values)
            health.add(stack, real[settings.distances[0]])
            if on_batches is not None:
                on_batches(done, stack, real)
            done += stack.real
    finally:
        if spill is not None:
            spill.close()

    result = EvalResult(
        settings=settings,
        accumulators=accumulators,
        classes=len(classes),
        dimension=dim,
        device=evaluator.device,
        health=health.summary(),
        warnings=warnings,
    )
    _check_batches(result)
    return result


def _prepend(first: batching.Batch, rest: Iterator[batching.Batch]) -> Iterator[Any]:
    yield first
    yield from rest


def _check_batches(result: EvalResult) -> None:
    """Fail when no batch had a gap; warn when many were skipped."""
    acc = next(iter(result.accumulators.values()))
    counts = acc.counts
    total = counts["batches"]
    no_pos = counts["skipped_no_positive_pair"]
    no_neg = counts["skipped_no_negative_pair"]
    if acc.used_batches == 0:
        raise NoResultError(
            f"none of the {total} batch(es) had both a positive pair and a negative "
            f"pair ({no_pos} without a positive pair, {no_neg} without a negative "
            "pair), so there is no gap to report; try --shuffle or a larger "
            "--batch-size"
        )
    health = result.health
    if health["mean_rows_per_class"] < 2 or health["anchors_with_positive"] < 0.5:
        result.warnings.append(
            f"batches hold {health['mean_rows_per_class']:.2f} rows per class on "
            f"average and {health['anchors_with_positive']:.0%} of anchors have a "
            "positive; the gap needs classes with 2 or more rows in a batch: try "
            "--sampler balanced"
        )
    skipped = no_pos + no_neg
    if skipped and skipped * 10 >= total:
        hint = (
            "the input looks sorted by label; try --shuffle"
            if no_neg >= no_pos
            else "most classes have too few rows per batch; try --shuffle or a "
            "larger --batch-size"
        )
        result.warnings.append(
            f"{skipped} of {total} batches were skipped ({no_neg} had a single "
            f"class, {no_pos} had no two rows of one class): {hint}"
        )
