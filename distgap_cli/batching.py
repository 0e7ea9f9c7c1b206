"""Cutting validated blocks into batches of exactly ``batch_size`` rows.

Batches cross record-batch and file boundaries; the last one may be short. The
sequential order is the read order (files in sorted path order, rows in file
order). The shuffled order spills every row to a temporary memory-mapped file once
and draws batches through a seeded permutation, so memory stays bounded by the
labels and row indices (16 bytes a row), not by the embeddings.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from distgap_cli.reading import Block


@dataclass
class Batch:
    """Rows evaluated together: embeddings ``[n, d]``, labels, global rows, files."""

    embeddings: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    files: np.ndarray


def sequential(blocks: Iterable[Block], batch_size: int) -> Iterator[Batch]:
    """Batches in read order."""
    pending: list[Block] = []
    held = 0
    for block in blocks:
        pending.append(block)
        held += len(block.labels)
        while held >= batch_size:
            batch, pending = _cut(pending, batch_size)
            held -= batch_size
            yield batch
    if held:
        batch, _ = _cut(pending, held)
        yield batch


def _cut(pending: list[Block], n: int) -> tuple[Batch, list[Block]]:
    """The first ``n`` rows of ``pending`` as a batch, and what is left."""
    parts: list[Block] = []
    need = n
    rest = list(pending)
    while need:
        block = rest.pop(0)
        size = len(block.labels)
        if size <= need:
            parts.append(block)
            need -= size
        else:
            parts.append(_slice(block, 0, need))
            rest.insert(0, _slice(block, need, size))
            need = 0
    batch = Batch(
        embeddings=np.concatenate([p.embeddings for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        rows=np.concatenate([p.rows for p in parts]),
        files=np.concatenate(
            [np.full(len(p.labels), p.file, dtype=np.int32) for p in parts]
        ),
    )
    return batch, rest


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
