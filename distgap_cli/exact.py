"""Exact mode: every anchor against every other row of the dataset.

Rows are held in memory when they fit ``memory_limit``, else spilled to a
temporary memory-mapped file; anchors and candidates are then walked in tiles,
so memory is bounded by the tile sizes, not by the row count, while the work is
``O(anchors x rows x d)``. ``anchors`` rows drawn at random (seeded) can stand in
for all of them when the dataset is large.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distgap_cli import core
from distgap_cli.batching import Spill
from distgap_cli.distances import Distance
from distgap_cli.errors import NoResultError
from distgap_cli.reading import Block

# Rows of an anchor tile and of a candidate tile, at most: fewer where the
# dimension is high, so that a tile holds at most _TILE_VALUES values (16 MB of
# float32; a tile's products, copies and differences are a few times that).
ANCHOR_TILE = 1024
CANDIDATE_TILE = 4096
_TILE_VALUES = 1 << 22
# Rows of the square tiles paired when every row is an anchor: about as many
# pairs as an anchor tile against a candidate tile. Not 2,048: products whose
# rows are a power of two long meet in the same cache sets, and 50,000 x 128
# took 3.5 s at 2,048, 3.0 s at 2,000.
MUTUAL_TILE = 2000
# Bytes of tiles gathered and prepared once for every pair they are in (256 MB).
_KEPT_BYTES = 1 << 28
PERCENTILES = (1, 5, 50, 95, 99)


@dataclass
class Rows:
    """Every valid row: embeddings (in memory or memory-mapped), labels, ids."""

    embeddings: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    files: np.ndarray
    spill: Spill | None = None

    def close(self) -> None:
        """Delete the spill file, if any."""
        if self.spill is not None:
            self.spill.close()


def collect(blocks: Iterable[Block], memory_limit: int) -> Rows:
    """Gather every row; spill to disk once they outgrow ``memory_limit`` bytes."""
    held: list[Block] = []
    size = 0
    iterator = iter(blocks)
    for block in iterator:
        held.append(block)
        size += block.embeddings.nbytes
        if size > memory_limit:
            spill = Spill(itertools.chain(held, iterator))
            return Rows(spill.embeddings, spill.labels, spill.rows, spill.files, spill)
    if not held:
        empty = np.empty(0, np.int64)
        return Rows(np.empty((0, 0), np.float32), empty, empty, empty.astype(np.int32))
    return Rows(
        np.concatenate([b.embeddings for b in held]),
        np.concatenate([b.labels for b in held]),
        np.concatenate([b.rows for b in held]),
        np.concatenate([np.full(len(b.labels), b.file, np.int32) for b in held]),
    )


@dataclass
class AnchorTable:
    """Per-anchor results of one distance, ``[n_anchors]`` arrays."""

    index: np.ndarray  # positions of the anchors in Rows
    max_pos: np.ndarray  # the hardest positive
    min_neg: np.ndarray  # the hardest negative
    nearest_pos: np.ndarray  # smallest, or largest for a similarity
    nearest_neg: np.ndarray
    nearest_neg_row: np.ndarray  # positions in Rows, -1 where none


def tile_rows(dim: int, rows: int | None = None) -> tuple[int, int]:
    """Rows of an anchor tile and of a candidate tile for embeddings of ``dim``
    values: ``ANCHOR_TILE`` and ``CANDIDATE_TILE`` while a tile holds at most
    ``_TILE_VALUES`` values, fewer above (from d = 1,024 for candidates, 4,096
    for anchors). With ``rows``, no more than the dataset holds."""
    fit = max(_TILE_VALUES // max(dim, 1), 1)
    anchor, candidate = min(ANCHOR_TILE, fit), min(CANDIDATE_TILE, fit)
    if rows is not None:
        anchor, candidate = min(anchor, max(rows, 1)), min(candidate, max(rows, 1))
    return anchor, candidate


def mutual_rows(dim: int, rows: int | None = None) -> int:
    """Rows of the square tiles :func:`anchor_tables` pairs when every row is
    an anchor: ``MUTUAL_TILE``, fewer where a tile would hold more than
    ``_TILE_VALUES`` values, never a multiple of 256 (see ``MUTUAL_TILE``),
    and no more than the data holds."""
    side = min(MUTUAL_TILE, max(_TILE_VALUES // max(dim, 1), 1))
    if side > 256 and side % 256 == 0:
        side -= 16
    return side if rows is None else min(side, max(rows, 1))


class ExactEvaluator:
    """One tile of anchors against one tile of candidates, every selected
    distance at once (``library`` as for the batch-mode evaluator).

    Tiles have the rows of :func:`tile_rows`. A compiled TensorFlow function
    takes them in one fixed shape, so short tiles are padded to it; NumPy takes
    any shape, and ``rows`` (the dataset's) keeps its tiles from outgrowing
    the data.
    """

    def __init__(
        self,
        distances: list[Distance],
        device: str,
        dim: int,
        library: str = "auto",
        rows: int | None = None,
    ) -> None:
        from distgap_cli.backend import NumpyRunner, runner

        a_tile, c_tile = tile_rows(dim)

        def signature(tf: Any) -> list[Any]:
            return [
                tf.TensorSpec([a_tile, dim], tf.float32),
                tf.TensorSpec([a_tile], tf.int64),
                tf.TensorSpec([a_tile], tf.int64),
                tf.TensorSpec([c_tile, dim], tf.float32),
                tf.TensorSpec([c_tile], tf.int64),
                tf.TensorSpec([c_tile], tf.int64),
                tf.TensorSpec([c_tile], tf.bool),
                *[tf.TensorSpec([c_tile, dim], tf.float32) for _ in distances],
            ]

        def tile(*args: Any) -> dict[str, Any]:
            # The last arguments: the candidates prepared for each distance.
            a, a_labels, a_ids, c, c_labels, c_ids, c_mask = args[:7]
            return {
                d.value: core.cross_extremes(
                    d, a, a_labels, a_ids, c, c_labels, c_ids, c_mask, prepared=ready
                )._asdict()
                for d, ready in zip(distances, args[7:], strict=True)
            }

        self.distances = distances

        def size(a: Any, *rest: Any) -> int:  # an anchor's products, or its row
            return max(c_tile, a.shape[1])

        self._run = runner(tile, device, 3, size, signature, library)
        self.device = self._run.device
        self.on_numpy = isinstance(self._run, NumpyRunner)
        if self.on_numpy:
            a_tile, c_tile = tile_rows(dim, rows)
        self.anchor_tile, self.candidate_tile = a_tile, c_tile
        self.mutual_tile = mutual_rows(dim, rows)

    def prepare(self, candidates: np.ndarray) -> list[np.ndarray]:
        """A candidate tile as each distance's core takes it, made once for
        every anchor tile it meets (on the CPU, normalising 4,096 rows for
        cosine costs 7 % of one anchor-tile call)."""
        return [core.prepared_rows(d, candidates) for d in self.distances]

    def __call__(
        self, *args: np.ndarray, prepared: list[np.ndarray] | None = None
    ) -> dict[Distance, dict[str, np.ndarray]]:
        """Extremes of the anchor tile, ``[anchor_tile]`` arrays per distance."""
        if prepared is None:
            prepared = self.prepare(args[3])
        out = self._run(*args, *prepared)
        return {d: out[d.value] for d in self.distances}


def _padded(array: np.ndarray, size: int, fill: Any = None) -> np.ndarray:
    """``array`` grown to ``size`` rows with ``fill`` (by default its last row,
    which keeps a tile's labels within their range)."""
    if len(array) == size:
        return np.ascontiguousarray(array)
    shape = (size, *array.shape[1:])
    out = np.empty(shape, dtype=array.dtype)
    out[: len(array)] = array
    out[len(array) :] = array[-1] if fill is None else fill
    return out


def anchor_tables(
    rows: Rows,
    anchors: np.ndarray,
    candidates: np.ndarray,
    evaluator: ExactEvaluator,
    on_pairs: Callable[[int], None] | None = None,
) -> dict[Distance, AnchorTable]:
    """Each anchor's extremes among the candidates, walked in tiles.

    ``anchors`` and ``candidates`` are positions in ``rows``. Indices returned are
    positions in ``rows`` as well. Both are walked in label order, so that a
    tile of anchors meets most tiles of candidates with no label in common (no
    positive to search for) and the others in runs of one class. Where every
    candidate is an anchor and the tiles run on NumPy, each pair of tiles is
    taken once for both (:func:`_mutual_walk`); otherwise every anchor tile
    meets every candidate tile (:func:`_tile_walk`).
    """
    by_label = np.argsort(rows.labels[anchors], kind="stable")
    anchors = anchors[by_label]
    candidates = candidates[np.argsort(rows.labels[candidates], kind="stable")]
    n = len(anchors)
    tables = {
        d: AnchorTable(
            index=anchors,
            max_pos=np.full(n, -np.inf),
            min_neg=np.full(n, np.inf),
            nearest_pos=np.full(n, -np.inf if d.is_similarity else np.inf),
            nearest_neg=np.full(n, -np.inf if d.is_similarity else np.inf),
            nearest_neg_row=np.full(n, -1, np.int64),
        )
        for d in evaluator.distances
    }
    if evaluator.on_numpy and np.array_equal(anchors, candidates):
        _mutual_walk(rows, anchors, evaluator, tables, on_pairs)
    else:
        _tile_walk(rows, anchors, candidates, evaluator, tables, on_pairs)
    back = np.empty(n, np.intp)  # from label order to the order given
    back[by_label] = np.arange(n)
    for table in tables.values():
        for name, values in vars(table).items():
            setattr(table, name, values[back])
    return tables


def _tile_walk(
    rows: Rows,
    anchors: np.ndarray,
    candidates: np.ndarray,
    evaluator: ExactEvaluator,
    tables: dict[Distance, AnchorTable],
    on_pairs: Callable[[int], None] | None,
) -> None:
    """Fill ``tables`` an anchor tile against a candidate tile at a time, each
    candidate tile gathered and prepared once for every anchor tile."""
    a_tile, c_tile = evaluator.anchor_tile, evaluator.candidate_tile
    for c0 in range(0, len(candidates), c_tile):
        c_pos = candidates[c0 : c0 + c_tile]
        c_x = _padded(np.asarray(rows.embeddings[c_pos], np.float32), c_tile)
        c_labels = _padded(rows.labels[c_pos], c_tile)
        c_ids = _padded(c_pos.astype(np.int64), c_tile, -2)
        c_mask = _padded(np.ones(len(c_pos), bool), c_tile, False)
        prepared = evaluator.prepare(c_x)
        for a0 in range(0, len(anchors), a_tile):
            a_pos = anchors[a0 : a0 + a_tile]
            a_x = _padded(np.asarray(rows.embeddings[a_pos], np.float32), a_tile)
            a_labels = _padded(rows.labels[a_pos], a_tile)
            a_ids = _padded(a_pos.astype(np.int64), a_tile, -1)
            tile = (a_x, a_labels, a_ids, c_x, c_labels, c_ids, c_mask)
            out = evaluator(*tile, prepared=prepared)
            span = slice(a0, a0 + len(a_pos))
            for distance, got in out.items():
                _merge(distance, tables[distance], span, got, c_pos, len(a_pos))
            if on_pairs is not None:
                on_pairs(len(a_pos) * len(c_pos))


# A tile's positions in the rows, its rows, their labels, and its rows as each
# distance's core takes them.
Tile = tuple[np.ndarray, np.ndarray, np.ndarray, dict[Distance, np.ndarray]]


def _mutual_walk(
    rows: Rows,
    order: np.ndarray,
    evaluator: ExactEvaluator,
    tables: dict[Distance, AnchorTable],
    on_pairs: Callable[[int], None] | None,
) -> None:
    """Fill ``tables`` (anchors ``order``, which are every candidate too) a
    pair of square tiles at a time: a tile with itself, and each tile with
    every later one through :func:`core.mutual_extremes`, whose one product
    gives both tiles' extremes among each other. The pairs run on one thread
    per core, a pair a thread, and are merged in the order of a walk along
    the rows (each anchor meets its candidates' tiles in order, so ties go
    to the same candidates as in :func:`_tile_walk`)."""
    from distgap_cli.backend import pool, worker_count

    # Tiles of equal rows, give or take one: a last tile of one row would be a
    # matrix-vector product, which rounds otherwise than the others, so that
    # duplicate candidates could differ in score and break the tie rule.
    count = -(-len(order) // evaluator.mutual_tile)
    bounds = [len(order) * k // count for k in range(count + 1)]
    pairs = [(i, j) for i in range(count) for j in range(i, count)]
    distances = evaluator.distances

    def tile(k: int) -> Tile:
        positions = order[bounds[k] : bounds[k + 1]]
        x = np.asarray(rows.embeddings[positions], np.float32)
        prepared = {d: core.prepared_rows(d, x) for d in distances}
        return positions, x, rows.labels[positions], prepared

    # Each tile meets every other: gathered and prepared once where the copies
    # fit _KEPT_BYTES and the rows were not spilled (--memory-limit asked for
    # less memory), else again for each pair.
    kept = {}
    copies = len(order) * rows.embeddings.shape[1] * 4 * (1 + len(distances))
    if rows.spill is None and copies <= _KEPT_BYTES:
        kept = {k: tile(k) for k in range(count)}

    def both(i: int, j: int) -> tuple[int, int, np.ndarray, np.ndarray, Any]:
        a_pos, a_x, a_labels, a_ready = kept.get(i) or tile(i)
        c_pos, c_x, c_labels, c_ready = (
            (a_pos, a_x, a_labels, a_ready) if i == j else kept.get(j) or tile(j)
        )
        ids_a, ids_c = a_pos.astype(np.int64), c_pos.astype(np.int64)
        out: dict[Distance, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for d in distances:
                prepared_c = c_ready[d]
                if i == j:
                    everyone = np.ones(len(c_pos), bool)
                    alone = core.cross_extremes(
                        d,
                        a_x,
                        a_labels,
                        ids_a,
                        c_x,
                        c_labels,
                        ids_c,
                        everyone,
                        prepared=prepared_c,
                    )
                    out[d] = (alone._asdict(), None)
                else:
                    across, down = core.mutual_extremes(
                        d, a_ready[d], a_labels, ids_a, prepared_c, c_labels, ids_c
                    )
                    out[d] = (across._asdict(), down._asdict())
        return i, j, a_pos, c_pos, out

    def merge(done: tuple[int, int, np.ndarray, np.ndarray, Any]) -> None:
        i, j, a_pos, c_pos, out = done
        for distance, (across, down) in out.items():
            table = tables[distance]
            span = slice(bounds[i], bounds[i + 1])
            _merge(distance, table, span, across, c_pos, len(a_pos))
            if down is not None:
                span = slice(bounds[j], bounds[j + 1])
                _merge(distance, table, span, down, a_pos, len(c_pos))
        if on_pairs is not None:
            on_pairs(len(a_pos) * len(c_pos) * (1 if i == j else 2))

    running: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
    try:
        for i, j in pairs:
            running.append(pool().submit(both, i, j))
            while len(running) > worker_count():
                merge(running.popleft().result())
        while running:
            merge(running.popleft().result())
    finally:
        for future in running:
            future.cancel()


def _merge(
    distance: Distance,
    table: AnchorTable,
    span: slice,
    got: dict[str, np.ndarray],
    c_pos: np.ndarray,
    k: int,
) -> None:
    """Fold one candidate tile's extremes into the running ones."""
    table.max_pos[span] = np.maximum(table.max_pos[span], got["max_pos"][:k])
    table.min_neg[span] = np.minimum(table.min_neg[span], got["min_neg"][:k])
    nearer = np.greater if distance.is_similarity else np.less
    pos, neg = got["nearest_pos"][:k], got["nearest_neg"][:k]
    table.nearest_pos[span] = np.where(
        nearer(pos, table.nearest_pos[span]), pos, table.nearest_pos[span]
    )
    closer = nearer(neg, table.nearest_neg[span])
    index = got["nearest_neg_index"][:k]
    row = np.where(index >= 0, c_pos[np.maximum(index, 0)], -1)
    table.nearest_neg[span] = np.where(closer, neg, table.nearest_neg[span])
    table.nearest_neg_row[span] = np.where(closer, row, table.nearest_neg_row[span])


@dataclass
class AnchorView:
    """Per-anchor figures of one distance in the report's terms."""

    hardest_pos: np.ndarray  # NaN without a positive
    hardest_neg: np.ndarray  # NaN without a negative
    has_pos: np.ndarray
    has_neg: np.ndarray
    nearest_neg_row: np.ndarray  # positions in Rows, -1 where none
    hit: np.ndarray  # the nearest neighbour shares the label


def view(distance: Distance, table: AnchorTable) -> AnchorView:
    """Hardest pairs, nearest negative and precision@1 from the extremes.

    For a distance, nearest means smallest; for inner_product (a similarity),
    largest. The hardest pairs keep TensorFlow Similarity's literal definition
    (max over positives, min over negatives) for every distance.
    """
    has_pos = np.isfinite(table.max_pos)
    has_neg = np.isfinite(table.min_neg)
    nearer = np.greater if distance.is_similarity else np.less
    closer = nearer(table.nearest_pos, table.nearest_neg)
    hit = has_pos & (~has_neg | closer)
    return AnchorView(
        hardest_pos=np.where(has_pos, table.max_pos, np.nan),
        hardest_neg=np.where(has_neg, table.min_neg, np.nan),
        has_pos=has_pos,
        has_neg=has_neg,
        nearest_neg_row=table.nearest_neg_row,
        hit=hit,
    )


def summary(v: AnchorView) -> dict[str, Any]:
    """Whole-dataset figures of one distance."""
    both = v.has_pos & v.has_neg
    anchors = len(v.has_pos)
    max_pos = float(np.max(v.hardest_pos[v.has_pos])) if v.has_pos.any() else math.nan
    min_neg = float(np.min(v.hardest_neg[v.has_neg])) if v.has_neg.any() else math.nan
    margins = (v.hardest_neg - v.hardest_pos)[both]
    return {
        "anchors": anchors,
        "anchors_without_positive": int((~v.has_pos).sum()),
        "anchors_without_negative": int((~v.has_neg).sum()),
        "max_pos": max_pos,
        "min_neg": min_neg,
        "gap": abs(min_neg - max_pos),
        "margin": min_neg - max_pos,
        "violation_rate": float((margins < 0).mean()) if len(margins) else math.nan,
        "precision_at_1": float(v.hit.mean()) if anchors else math.nan,
        "mean_hardest_pos": (
            float(v.hardest_pos[v.has_pos].mean()) if v.has_pos.any() else math.nan
        ),
        "mean_hardest_neg": (
            float(v.hardest_neg[v.has_neg].mean()) if v.has_neg.any() else math.nan
        ),
        "margin_percentiles": {
            f"p{q}": float(np.percentile(margins, q)) if len(margins) else math.nan
            for q in PERCENTILES
        },
    }


def choose_anchors(n: int, count: int | None, seed: int) -> np.ndarray:
    """All positions, or ``count`` of them drawn without replacement (sorted)."""
    if count is None or count >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=count, replace=False))


def require_rows(rows: Rows) -> None:
    """Exact mode needs a row with a positive and a negative: two classes, one of
    them with two rows. The labels tell, before anything is computed."""
    if len(rows.labels) < 2:
        raise NoResultError("exact mode needs at least two valid rows")
    _, counts = np.unique(rows.labels, return_counts=True)
    if len(counts) == 1:
        raise NoResultError(
            "the input holds a single class, so no row has a negative and there is "
            "no gap; evaluate embeddings of at least two classes"
        )
    if counts.max() < 2:
        raise NoResultError(
            f"each of the {len(counts)} classes has a single row, so no row has a "
            "positive and there is no gap; evaluate at least two rows of a class"
        )


@dataclass
class ExactSettings:
    """How an exact evaluation runs."""

    distances: list[Distance]
    anchors: int | None = None
    seed: int = 0
    memory_limit: int = 2 << 30
    device: str = "auto"
    per_file: bool = False


@dataclass
class ExactResult:
    """Everything an exact-mode report needs."""

    settings: ExactSettings
    results: dict[Distance, dict[str, Any]]
    anchors: dict[Distance, Any]
    classes: int
    dimension: int
    device: str
    rows: int
    per_file: dict[int, dict[Distance, dict[str, Any]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def evaluate_exact(
    reader: Any,
    settings: ExactSettings,
    on_rows: Callable[[int], None] | None = None,
    on_pairs: Callable[[int], None] | None = None,
) -> ExactResult:
    """Evaluate every selected distance over the whole dataset."""
    from distgap_cli.breakdown import PerAnchor

    def tracked(blocks: Iterable[Block]) -> Iterable[Block]:
        for block in blocks:
            if on_rows is not None:
                on_rows(len(block.labels))
            yield block

    rows = collect(tracked(reader.blocks()), settings.memory_limit)
    try:
        require_rows(rows)
        dim = rows.embeddings.shape[1]
        evaluator = ExactEvaluator(
            settings.distances, settings.device, dim, rows=len(rows.labels)
        )
        everyone = np.arange(len(rows.labels))

        def run(candidates: np.ndarray) -> dict[Distance, AnchorView]:
            anchors = choose_anchors(len(candidates), settings.anchors, settings.seed)
            tables = anchor_tables(
                rows, candidates[anchors], candidates, evaluator, on_pairs
            )
            return {d: view(d, t) for d, t in tables.items()}

        views = run(everyone)
        per_file: dict[int, dict[Distance, dict[str, Any]]] = {}
        if settings.per_file:
            for owner in np.unique(rows.files):
                inside = everyone[rows.files == owner]
                per_file[int(owner)] = {d: summary(v) for d, v in run(inside).items()}
        index = choose_anchors(len(everyone), settings.anchors, settings.seed)
        anchors = {}
        for distance, v in views.items():
            partner = np.where(v.nearest_neg_row >= 0, v.nearest_neg_row, 0)
            anchors[distance] = PerAnchor(
                rows=rows.rows[index],
                files=rows.files[index],
                labels=rows.labels[index],
                hardest_pos=v.hardest_pos,
                hardest_neg=v.hardest_neg,
                nearest_neg_row=np.where(
                    v.nearest_neg_row >= 0, rows.rows[partner], -1
                ),
                nearest_neg_label=rows.labels[partner],
                hit=v.hit,
            )
        warnings = []
        if settings.anchors is not None and settings.anchors >= len(rows.labels):
            warnings.append(
                f"--anchors {settings.anchors} is not fewer than the "
                f"{len(rows.labels)} rows: every row is an anchor (nothing sampled)"
            )
        return ExactResult(
            settings=settings,
            warnings=warnings,
            results={d: summary(v) for d, v in views.items()},
            anchors=anchors,
            classes=len(np.unique(rows.labels)),
            dimension=dim,
            device=evaluator.device,
            rows=len(rows.labels),
            per_file=per_file,
        )
    finally:
        rows.close()
