"""Composing batches from validated blocks: in order, shuffled, or class-balanced.

Sequential batches cross record-batch and file boundaries; the last one may be
short. Their order is the read order (files in sorted path order, rows in file
order). The shuffled and balanced samplers spill every row to a temporary
memory-mapped file once (float32 embeddings) and gather each batch's rows from it,
so memory stays bounded by the labels, row indices and files (20 bytes a row), not
by the embeddings.

The balanced sampler draws batches the way TensorFlow Similarity's multi-shot
sampler builds them for training: ``classes_per_batch`` distinct classes, then
``examples_per_class`` rows of each, without replacement inside the batch. A
class with fewer rows contributes all of them: drawing a row twice would pair it
with its own copy at distance 0, a positive that does not exist.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from distgap_cli.errors import InputError
from distgap_cli.reading import Block


@dataclass
class Batch:
    """Rows evaluated together: embeddings ``[n, d]``, labels, global rows, files.

    ``origin`` and ``start`` say where in a block the rows lie when the batch is
    a view of one (sequential batches), so that consecutive batches of a block
    can be stacked as one view of it instead of copied together.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    files: np.ndarray
    origin: Block | None = None
    start: int = 0


def sequential(
    blocks: Iterable[Block], batch_size: int, *, split_files: bool = False
) -> Iterator[Batch]:
    """Batches in read order; with ``split_files``, no batch spans two files (the
    last batch of each file may be short).

    Batches that lie inside one block are views of it; only a batch that spans
    blocks is copied together.
    """
    carried: list[Block] = []  # rows of earlier blocks, fewer than a batch
    held = 0
    for block in blocks:
        if split_files and carried and carried[-1].file != block.file:
            yield _joined(carried)
            carried, held = [], 0
        size = len(block.labels)
        start = 0
        if carried:  # complete the batch begun in earlier blocks
            start = min(batch_size - held, size)
            carried.append(_slice(block, 0, start))
            held += start
            if held == batch_size:
                yield _joined(carried)
                carried, held = [], 0
        while size - start >= batch_size:
            batch = _batch(_slice(block, start, start + batch_size))
            batch.origin, batch.start = block, start
            yield batch
            start += batch_size
        if start < size:
            carried.append(_slice(block, start, size))
            held += size - start
    if carried:
        yield _joined(carried)


def _batch(block: Block) -> Batch:
    files = np.full(len(block.labels), block.file, dtype=np.int32)
    return Batch(block.embeddings, block.labels, block.rows, files)


def _joined(parts: list[Block]) -> Batch:
    """One batch of the rows of ``parts``, in order."""
    if len(parts) == 1:
        return _batch(parts[0])
    return Batch(
        embeddings=np.concatenate([p.embeddings for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        rows=np.concatenate([p.rows for p in parts]),
        files=np.concatenate(
            [np.full(len(p.labels), p.file, dtype=np.int32) for p in parts]
        ),
    )


def _slice(block: Block, start: int, stop: int) -> Block:
    return Block(
        block.embeddings[start:stop],
        block.labels[start:stop],
        block.rows[start:stop],
        block.file,
    )


class Spill:
    """Every row of an input, embeddings in a temporary memory-mapped file."""

    def __init__(self, blocks: Iterable[Block]) -> None:
        labels, rows, files = [], [], []
        dim = 0
        with tempfile.NamedTemporaryFile(prefix="distgap-spill-", delete=False) as f:
            self.path = f.name
            try:
                for block in blocks:
                    dim = block.embeddings.shape[1]
                    f.write(np.ascontiguousarray(block.embeddings).tobytes())
                    labels.append(block.labels)
                    rows.append(block.rows)
                    files.append(np.full(len(block.labels), block.file, np.int32))
            except BaseException:
                # Reading failed (bad input, Ctrl-C): nobody will close this spill.
                self.close()
                raise
        self.labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        self.rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
        self.files = np.concatenate(files) if files else np.empty(0, np.int32)
        n = len(self.labels)
        self.embeddings = (
            np.memmap(self.path, dtype=np.float32, mode="r", shape=(n, dim))
            if n
            else np.empty((0, dim), np.float32)
        )

    def take(self, index: np.ndarray) -> Batch:
        """The rows at ``index`` (sorted reads, returned in ``index`` order)."""
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        embeddings = np.empty((len(index), self.embeddings.shape[1]), np.float32)
        embeddings[order] = self.embeddings[sorted_index]
        return Batch(
            embeddings, self.labels[index], self.rows[index], self.files[index]
        )

    def close(self) -> None:
        """Delete the temporary file."""
        self.embeddings = np.empty((0, 0), np.float32)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def shuffled(spill: Spill, batch_size: int, seed: int) -> Iterator[Batch]:
    """Batches through a permutation drawn from ``seed``."""
    order = np.random.default_rng(seed).permutation(len(spill.labels))
    for start in range(0, len(order), batch_size):
        yield spill.take(order[start : start + batch_size])


@dataclass
class BalancedPlan:
    """What the balanced sampler will draw from."""

    classes: int
    small_classes: list[int]
    batches: int


def balanced(
    spill: Spill,
    classes_per_batch: int,
    examples_per_class: int,
    batches: int | None,
    seed: int,
) -> tuple[BalancedPlan, Iterator[Batch]]:
    """Class-balanced batches of ``classes_per_batch * examples_per_class`` rows.

    Args:
        spill: every row of the input.
        classes_per_batch: distinct classes in each batch.
        examples_per_class: rows drawn from each of them.
        batches: how many batches; by default enough to visit every row about once.
        seed: seeds every draw; the same seed gives the same batches.

    Returns:
        The plan (class count, classes drawn with replacement, batch count) and the
        batches.

    Raises:
        InputError: when the input has fewer classes than ``classes_per_batch``.
    """
    ids, inverse, counts = np.unique(
        spill.labels, return_inverse=True, return_counts=True
    )
    if len(ids) < classes_per_batch:
        raise InputError(
            f"the input has {len(ids)} classes, fewer than --classes-per-batch "
            f"{classes_per_batch}",
            fix=f"use --classes-per-batch {len(ids)} or less",
        )
    members = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    size = classes_per_batch * examples_per_class
    total = batches if batches is not None else max(1, -(-len(spill.labels) // size))
    plan = BalancedPlan(
        classes=len(ids),
        small_classes=[int(c) for c in ids[counts < examples_per_class]],
        batches=total,
    )

    def draw() -> Iterator[Batch]:
        rng = np.random.default_rng(seed)
        for _ in range(total):
            chosen = rng.choice(len(ids), size=classes_per_batch, replace=False)
            picks = [
                rng.choice(
                    members[starts[c] : starts[c] + counts[c]],
                    size=min(examples_per_class, int(counts[c])),
                    replace=False,
                )
                for c in chosen
            ]
            yield spill.take(np.concatenate(picks))

    return plan, draw()
