"""Streaming embeddings and labels out of Parquet, Arrow IPC, .npy and .npz inputs.

Memory stays bounded: Parquet is read by record batch, Arrow IPC files through a
memory map, ``.npy`` files through a read-only memory map (the user's file is never
written), and list columns are converted through their flat values buffer and a
reshape, honouring slice offsets. Every row keeps its global position (counted
over all inputs in read order, invalid rows included) and its file, so that errors
and per-row output can name them.

Validation happens here, before any distance is computed: nulls, rows of the wrong
length, NaN or infinite values, rows a chosen distance is undefined for, labels
that are null or not whole numbers. Each problem either stops the run with an
:class:`~distgap_cli.errors.InputError` naming file, row and column, or (with
``on_invalid="skip"``) drops the row and its label together and is counted.
"""

from __future__ import annotations

import contextlib
import importlib
import mmap
import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distgap_cli import sources as src
from distgap_cli.errors import InputError, UsageError


class _OnFirstUse:
    """A module imported when one of its names is first read: reading only
    ``.npy`` files never imports pyarrow (50 ms of every start)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
else:
    pa = _OnFirstUse("pyarrow")
    pq = _OnFirstUse("pyarrow.parquet")

# Rows per block are chosen so that one block holds about this many values.
_BLOCK_VALUES = 1 << 23

LABEL_NAMES = ("label", "labels", "y", "class", "class_id", "target", "category")
EMBEDDING_NAMES = ("embedding", "embeddings", "emb", "vector", "vectors", "features")
NPZ_EMBEDDING_NAMES = ("embeddings", "embedding", "emb", "x", "X")
NPZ_LABEL_NAMES = ("labels", "label", "y", "Y")

# Largest accepted |value|: squared distances of rows of up to ~80 million
# dimensions then stay inside float32's range (3.4e38).
MAX_MAGNITUDE = 1e15

_SKIP_HINT = "fix or drop the row, or pass --on-invalid skip to leave it out"


@dataclass
class ReadOptions:
    """What to read and how strictly.

    Attributes:
        embedding_column: column (or .npz array) holding the embeddings.
        label_column: column (or .npz array) holding the labels.
        embedding_prefix: read the embeddings from scalar columns ``PREFIX0``,
            ``PREFIX1``, ... instead of one list column.
        labels: label ``.npy`` files, one per ``.npy`` embeddings file, in order.
        on_invalid: ``"error"`` stops at the first invalid row; ``"skip"`` drops it.
        need_direction: reject all-zero rows (cosine).
        need_variance: reject rows with zero variance (snr).
        limit: read only the first ``limit`` rows.
        files_apart: files are evaluated apart (``--per-file``), so each may have
            its own dimension.
    """

    embedding_column: str | None = None
    label_column: str | None = None
    embedding_prefix: str | None = None
    labels: list[str] = field(default_factory=list)
    on_invalid: str = "error"
    need_direction: bool = False
    need_variance: bool = False
    limit: int | None = None
    files_apart: bool = False


@dataclass
class Block:
    """Consecutive valid rows of one file."""

    embeddings: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    file: int


class LabelMap:
    """Labels compared by value: integers are their own ids, strings get ids in
    order of first appearance (stable for the same input, whatever the shards'
    dictionaries)."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.ids: dict[str, int] = {}

    def encode_strings(self, values: list[str]) -> np.ndarray:
        """Ids for distinct string ``values``."""
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            out[i] = self.ids.setdefault(value, len(self.ids))
        return out

    def to_json(self) -> dict[str, Any]:
        """The mapping as the JSON report shows it."""
        if self.kind == "string":
            return {"kind": "string", "ids": dict(self.ids)}
        return {"kind": self.kind or "integer", "ids": None}

    def value(self, label_id: int) -> int | str:
        """The label as the input held it: an integer, or its string."""
        return self.name(label_id) if self.kind == "string" else int(label_id)

    def name(self, label_id: int) -> str:
        """The label a user wrote for ``label_id``."""
        if self.kind == "string":
            for value, known in self.ids.items():
                if known == label_id:
                    return value
        return str(label_id)


@dataclass
class _Check:
    """One kind of invalid row found in a block."""

    reason: str
    mask: np.ndarray
    describe: Callable[[int], tuple[str, str | None, str | None]]
    for_distance: bool = False
    file: str | None = None  # when not the embeddings' file (a labels .npy)


def _compute() -> Any:
    """``pyarrow.compute``, imported on first use: only nulls and string labels
    need it, and importing it costs 30 ms of every start."""
    return importlib.import_module("pyarrow.compute")


def _dtype_name(arrow_type: pa.DataType) -> str:
    """numpy's name for an Arrow number type (``float32`` rather than ``float``)."""
    try:
        return np.dtype(arrow_type.to_pandas_dtype()).name
    except (NotImplementedError, TypeError):
        return str(arrow_type)


# Bytes of a Parquet file read at a time (a buffered stream of its pages).
_PARQUET_BUFFER = 1 << 20
_STREAM_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # Arrow's end-of-stream marker

# How to fix files of different dimensions in one run.
_OTHER_DIMENSION_HINT = (
    "evaluate one model's embeddings at a time, or pass --per-file to evaluate "
    "each file apart (batch mode)"
)


def _values(count: int) -> str:
    return "1 value" if count == 1 else f"{count} values"


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _type_family(arrow_type: pa.DataType) -> str:
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_integer(arrow_type):
        return "integer"
    return str(arrow_type)


def _storage_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type an extension type (such as ``arrow.fixed_shape_tensor``) stores."""
    if isinstance(arrow_type, pa.BaseExtensionType):
        return arrow_type.storage_type
    return arrow_type


def _list_storage(column: pa.Array) -> pa.Array:
    return column.storage if isinstance(column.type, pa.BaseExtensionType) else column


def _is_vector_type(arrow_type: pa.DataType) -> bool:
    arrow_type = _storage_type(arrow_type)
    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def _require(
    column: str, names: list[str], flag: str, listing: str, source: src.Source
) -> None:
    """Stop, listing the columns there are, when ``column`` is not among them."""
    if column not in names:
        raise InputError(
            f"no column '{column}'; columns are: {listing}",
            file=source.name,
            fix=f"check {flag}",
        )


def _describe_columns(schema: pa.Schema, extra: dict[str, str]) -> str:
    cols = [f"{f.name} ({f.type})" for f in schema]
    cols += [f"{k} (partition folder)" for k in extra]
    return ", ".join(cols) or "none"


class Reader:
    """Reads sources in order and yields validated :class:`Block` objects."""

    def __init__(self, sources: list[src.Source], options: ReadOptions) -> None:
        self.sources = sources
        self.options = options
        self.label_map = LabelMap()
        self.dropped: Counter[str] = Counter()
        self.rows_read = 0
        self.files_read: list[str] = []  # the sources opened, in order
        self.warnings: list[str] = []  # what the user should know of the input
        self.dim: int | None = None
        self.value_type: str | None = None
        # The file and the row (within it) that set the dimension.
        self._dim_origin: tuple[str, int] | None = None
        self._file_start = 0  # the global row of the current file's first row
        self._first_types: tuple[str, str, str] | None = None
        # Rows a consumer takes at once for a dimension (see block_rows).
        self.takes: Callable[[int], int] | None = None
        if options.embedding_column and options.embedding_prefix is not None:
            raise UsageError(
                "--embedding-column and --embedding-prefix both say where the "
                "embeddings are: give one of them"
            )
        npy_count = sum(1 for s in sources if s.kind == src.NPY)
        if options.labels and len(options.labels) != npy_count:
            raise UsageError(
                f"--labels was given {len(options.labels)} time(s) for {npy_count} "
                ".npy embeddings file(s); give one labels file per embeddings file"
            )

    def block_rows(self, dim: int) -> int:
        """Rows of a block of a ``.npy`` file, which is read in chunks of
        ``_BLOCK_VALUES`` values (8M) rounded down to a multiple of what the
        consumer takes at once (``takes(dim)``, set by batch mode to its
        stacks' rows), so that its stacks lie inside blocks and are views of
        the memory-mapped file. At d = 768, blocks of 10,922 rows against
        stacks of 10,752 made nine stacks in ten copies (0.37 s of packing for
        100k rows); cut to whole stacks, 100k x 768 ran in 0.56-0.62 s against
        0.63-1.03 s, and peaked at 360 MB against 440."""
        rows = max(1024, _BLOCK_VALUES // max(dim, 1))
        if self.takes is None:
            return rows
        taken = max(self.takes(dim), 1)
        return max(taken, rows // taken * taken)

    def ignored_options(self) -> list[str]:
        """Column options that no input can use (every input is a bare ``.npy``
        array, which has no columns), as a note for the user."""
        given = [
            flag
            for flag, value in (
                ("--embedding-column", self.options.embedding_column),
                ("--label-column", self.options.label_column),
                ("--embedding-prefix", self.options.embedding_prefix),
            )
            if value is not None
        ]
        if not given or any(s.kind != src.NPY for s in self.sources):
            return []
        return [
            f"{' and '.join(given)} ignored: .npy files hold one array and no "
            "columns (labels come from --labels or a .labels.npy file beside each)"
        ]

    @property
    def rows_kept(self) -> int:
        """Rows read minus rows dropped."""
        return self.rows_read - sum(self.dropped.values())

    def dropped_reasons(self) -> str:
        """The rows ``--on-invalid skip`` dropped, by reason: ``"2 NaN ..., 1 ..."``."""
        return ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items()))

    def blocks(self) -> Iterator[Block]:
        """Every valid row of every source, in read order, in blocks."""
        npy_index = 0
        for index, source in enumerate(self.sources):
            if self._limit_reached():
                return
            if self.options.files_apart:
                self.dim, self._dim_origin = None, None
            self.files_read.append(source.name)
            self._file_start = self.rows_read
            if source.kind == src.NPY:
                labels = None
                if self.options.labels:
                    labels = self.options.labels[npy_index]
                npy_index += 1
                blocks = self._npy_blocks(index, source, labels)
            elif source.kind == src.NPZ:
                blocks = self._npz_blocks(index, source)
            else:
                blocks = self._arrow_blocks(index, source)
            produced = False
            for block in blocks:
                produced = True
                if len(block.labels):
                    yield block
            if not produced:
                raise InputError(
                    "file holds no rows", file=source.name, fix="re-export it"
                )

    def _limit_reached(self) -> bool:
        limit = self.options.limit
        return limit is not None and self.rows_read >= limit

    def _take(self, n: int) -> int:
        """How many of the next ``n`` rows the row limit lets through."""
        if self.options.limit is None:
            return n
        return max(0, min(n, self.options.limit - self.rows_read))

    # Arrow: Parquet, IPC files, IPC streams -------------------------------------

    def _arrow_batches(self, source: src.Source) -> Iterator[pa.RecordBatch]:
        name = source.name
        try:
            if source.kind == src.PARQUET:
                # One row group at a time and without pre-buffering: iterating a
                # whole file with pre-buffering keeps every row group read so far.
                # Pages are read through a small buffer, not a column chunk at a
                # time: distgap on a 1M x 128 file written as one row group
                # peaked at 835 MB, now 307 MB (pyarrow alone decoded it in 2.0 s,
                # now 0.7 s).
                parquet = pq.ParquetFile(
                    source.path, pre_buffer=False, buffer_size=_PARQUET_BUFFER
                )
                columns = self._columns_for(parquet.schema_arrow, source)
                wanted = [c for c in columns if c in parquet.schema_arrow.names]
                # Blocks of Parquet are Arrow's fresh buffers, and a block held
                # while its stacks are computed keeps them: cut to whole stacks
                # (as .npy is), 100k x 768 took 1.1-1.5 s against 0.9 s, most
                # of it the kernel's, and 1M x 128 peaked 20-30 % higher.
                size = max(1024, _BLOCK_VALUES // (self.dim or 1024))
                with open(source.path, "rb") as hints:
                    for group in range(parquet.num_row_groups):
                        _read_ahead(hints.fileno(), parquet.metadata, group + 1)
                        yield from parquet.iter_batches(
                            batch_size=size, columns=wanted, row_groups=[group]
                        )
            elif source.kind == src.ARROW_FILE:
                reader = pa.ipc.open_file(pa.memory_map(source.path))
                self._columns_for(reader.schema, source)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
            else:
                stream = source.stream or pa.memory_map(source.path)
                yield from pa.ipc.open_stream(stream)
                if not _ended_with_marker(stream):
                    self.warnings.append(
                        f"{name} ended without the Arrow stream's end-of-stream "
                        "marker: if its writer stopped early, rows are missing "
                        "(check the writer's exit status, e.g. with set -o "
                        "pipefail)"
                    )
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            detail = detail.rstrip(". ")
            raise InputError(
                f"cannot be read as {source.kind} (truncated or corrupt?): {detail}",
                file=name,
                fix="re-export the file",
            ) from None

    def _arrow_blocks(self, index: int, source: src.Source) -> Iterator[Block]:
        columns: tuple[list[str], str] | None = None
        for batch in self._arrow_batches(source):
            if columns is None:
                columns = self._resolve(batch.schema, source)
            n = self._take(batch.num_rows)
            if n == 0:
                if self._limit_reached():
                    return
                continue
            batch = batch.slice(0, n)
            emb_cols, label_col = columns
            row0 = self.rows_read
            self.rows_read += n
            yield self._arrow_block(index, source, batch, emb_cols, label_col, row0)
            if self._limit_reached():
                return
        if columns is None:
            # A file without record batches still has a schema worth checking.
            return

    def _columns_for(self, schema: pa.Schema, source: src.Source) -> list[str]:
        emb_cols, label_col = self._resolve(schema, source)
        return [*emb_cols, label_col]

    def _resolve(self, schema: pa.Schema, source: src.Source) -> tuple[list[str], str]:
        """Pick the embedding and label columns of one file, and check them
        against the first file."""
        opts = self.options
        names = schema.names
        listing = _describe_columns(schema, source.partition)

        # Embedding column(s).
        if opts.embedding_prefix is not None:
            prefixed = [
                n
                for n in names
                if n.startswith(opts.embedding_prefix)
                and n[len(opts.embedding_prefix) :].isdigit()
            ]
            if not prefixed:
                raise InputError(
                    f"no columns named {opts.embedding_prefix}0, "
                    f"{opts.embedding_prefix}1, ...; columns are: {listing}",
                    file=source.name,
                    fix="check --embedding-prefix",
                )
            emb_cols = sorted(
                prefixed, key=lambda n: int(n[len(opts.embedding_prefix or "") :])
            )
            for col in emb_cols:
                t = schema.field(col).type
                if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                    raise InputError(
                        f"column is {t}; embedding columns must be numeric",
                        file=source.name,
                        column=col,
                    )
            emb_desc = f"{len(emb_cols)} scalar columns"
            self.value_type = self.value_type or _dtype_name(
                schema.field(emb_cols[0]).type
            )
        else:
            if opts.embedding_column is not None:
                _require(
                    opts.embedding_column, names, "--embedding-column", listing, source
                )
                emb = opts.embedding_column
            else:
                vectors = [f.name for f in schema if _is_vector_type(f.type)]
                named = [n for n in vectors if n.lower() in EMBEDDING_NAMES]
                if len(vectors) == 1:
                    emb = vectors[0]
                elif len(named) == 1:
                    emb = named[0]
                else:
                    what = "several list columns" if vectors else "no list column"
                    raise InputError(
                        f"cannot tell which column holds the embeddings ({what}); "
                        f"columns are: {listing}",
                        file=source.name,
                        fix="pass --embedding-column NAME (or --embedding-prefix)",
                    )
            emb_cols = [emb]
            emb_type = schema.field(emb).type
            if not _is_vector_type(emb_type):
                raise InputError(
                    f"column is {emb_type}, not a list of numbers",
                    file=source.name,
                    column=emb,
                    fix="store one list<float32> per row, or use --embedding-prefix "
                    "for scalar columns",
                )
            value_type = _storage_type(emb_type).value_type
            if not (
                pa.types.is_floating(value_type) or pa.types.is_integer(value_type)
            ):
                raise InputError(
                    f"column is {emb_type}; embeddings must be numbers",
                    file=source.name,
                    column=emb,
                )
            emb_desc = f"list of {_type_family(value_type)}"
            self.value_type = self.value_type or _dtype_name(value_type)

        # Label column.
        candidates = list(names) + [k for k in source.partition if k not in names]
        if opts.label_column is not None:
            _require(opts.label_column, candidates, "--label-column", listing, source)
            label = opts.label_column
        else:
            by_name = [c for n in LABEL_NAMES for c in candidates if c.lower() == n]
            scalar = [
                f.name
                for f in schema
                if f.name not in emb_cols and not _is_vector_type(f.type)
            ] + [key for key in source.partition if key not in names]
            if by_name:
                label = by_name[0]
            elif len(scalar) == 1:
                label = scalar[0]
            else:
                raise InputError(
                    "cannot tell which column holds the labels; columns are: "
                    f"{listing}",
                    file=source.name,
                    fix="pass --label-column NAME",
                )
        if label in names:
            label_type = schema.field(label).type
            if pa.types.is_dictionary(label_type):
                label_type = label_type.value_type
            if _is_vector_type(label_type):
                raise InputError(
                    f"labels are {label_type}; expected one value per row",
                    file=source.name,
                    column=label,
                )
            label_desc = (
                "string"
                if pa.types.is_string(label_type)
                or pa.types.is_large_string(label_type)
                else "integer"
            )
        else:
            label_desc = "partition"

        # Shards must agree with the first file.
        mine = (source.name, emb_desc, label_desc)
        if self._first_types is None:
            self._first_types = mine
        else:
            first = self._first_types
            for i, what in ((1, "embedding"), (2, "label")):
                if mine[i] != first[i] and "partition" not in (mine[i], first[i]):
                    raise InputError(
                        f"{what} column is {mine[i]} but {first[0]} has {first[i]}",
                        file=source.name,
                        fix="export every shard with the same column types",
                    )
        return emb_cols, label

    def _arrow_block(
        self,
        index: int,
        source: src.Source,
        batch: pa.RecordBatch,
        emb_cols: list[str],
        label_col: str,
        row0: int,
    ) -> Block:
        n = batch.num_rows
        checks: list[_Check] = []
        if len(emb_cols) == 1 and _is_vector_type(batch.schema.field(emb_cols[0]).type):
            values = self._list_values(
                batch.column(emb_cols[0]), emb_cols[0], source, row0, checks
            )
        else:
            values = self._scalar_values(batch, emb_cols, source, row0, checks)
        if label_col in batch.schema.names:
            labels = self._arrow_labels(
                batch.column(label_col), label_col, source, row0, checks
            )
        else:
            value = source.partition[label_col]
            labels = self._partition_labels(value, n, source)
        return self._settle(index, source, values, labels, row0, checks, emb_cols[0])

    def _list_values(
        self,
        column: pa.Array,
        name: str,
        source: src.Source,
        row0: int,
        checks: list[_Check],
    ) -> np.ndarray:
        """``[n, d]`` values of a list column; invalid rows flagged in ``checks``."""
        column = _list_storage(column)
        n = len(column)
        if pa.types.is_fixed_size_list(column.type):
            size = column.type.list_size
            offsets = (np.arange(n + 1, dtype=np.int64) + column.offset) * size
        else:
            offsets = column.offsets.to_numpy().astype(np.int64, copy=False)
        lengths = np.diff(offsets)
        null = (
            column.is_null().to_numpy(zero_copy_only=False)
            if column.null_count
            else np.zeros(n, bool)
        )
        ok = ~null
        checks.append(
            _Check(
                "null embedding",
                null,
                lambda i: ("embedding is null", name, _SKIP_HINT),
            )
        )
        empty = ok & (lengths == 0)
        checks.append(
            _Check(
                "empty embedding",
                empty,
                lambda i: ("embedding is empty (0 values)", name, _SKIP_HINT),
            )
        )
        ok &= ~empty

        # The dimension is set by the first valid row of the first file.
        if self.dim is None and ok.any():
            first = _first(ok)
            self.dim = int(lengths[first])
            self._dim_origin = (source.name, row0 + first - self._file_start)
        dim = self.dim or 0
        wrong = ok & (lengths != dim)
        origin = self._dim_origin or (source.name, row0 - self._file_start)
        where = (
            f"row {origin[1]}"
            if origin[0] == source.name
            else f"{origin[0]} row {origin[1]}"
        )
        hint = (
            "give every row the same dimension"
            if origin[0] == source.name
            else _OTHER_DIMENSION_HINT
        )
        checks.append(
            _Check(
                "wrong length",
                wrong,
                lambda i: (
                    f"embedding has {_values(lengths[i])} but {where} has {dim}",
                    name,
                    hint,
                ),
            )
        )
        ok &= ~wrong

        child = column.values
        value_type = child.type
        if child.null_count:
            inner = child.is_null().to_numpy(zero_copy_only=False)
            positions = np.flatnonzero(inner)
            owners = np.searchsorted(offsets, positions, side="right") - 1
            inside = (owners >= 0) & (owners < n)
            bad_rows = np.zeros(n, bool)
            bad_rows[owners[inside]] = True
            bad_rows &= ok
            checks.append(
                _Check(
                    "null value inside embedding",
                    bad_rows,
                    lambda i: ("embedding holds a null value", name, _SKIP_HINT),
                )
            )
            ok &= ~bad_rows
            child = _compute().fill_null(child, pa.scalar(0, value_type))
        flat = child.to_numpy(zero_copy_only=False)

        # Fast path: every row valid and contiguous; else gather the valid rows.
        if ok.all() and n:
            values = flat[offsets[0] : offsets[0] + n * dim].reshape(n, dim)
        else:
            values = np.zeros((n, dim), dtype=flat.dtype)
            starts = offsets[:-1][ok]
            values[ok] = flat[starts[:, None] + np.arange(dim)]
        return self._as_float32(values, ok, name, checks)

    def _scalar_values(
        self,
        batch: pa.RecordBatch,
        names: list[str],
        source: src.Source,
        row0: int,
        checks: list[_Check],
    ) -> np.ndarray:
        n = batch.num_rows
        if self.dim is None:
            self.dim = len(names)
            self._dim_origin = (source.name, row0 - self._file_start)
        elif len(names) != self.dim:
            origin = self._dim_origin[0] if self._dim_origin else "the first file"
            raise InputError(
                f"embeddings have dimension {len(names)} but {origin} has {self.dim}",
                file=source.name,
                fix=_OTHER_DIMENSION_HINT,
            )
        values = np.empty((n, len(names)), dtype=np.float32)
        null = np.zeros(n, bool)
        for j, col in enumerate(names):
            arr = batch.column(col)
            if arr.null_count:
                null |= arr.is_null().to_numpy(zero_copy_only=False)
                arr = _compute().fill_null(arr, pa.scalar(0, arr.type))
            with np.errstate(over="ignore"):  # inf, caught in _as_float32
                values[:, j] = arr.to_numpy(zero_copy_only=False)
        checks.append(
            _Check(
                "null value inside embedding",
                null,
                lambda i: (
                    "embedding holds a null value",
                    names[0] + "...",
                    _SKIP_HINT,
                ),
            )
        )
        return self._as_float32(values, ~null, names[0] + "...", checks)

    def _as_float32(
        self, values: np.ndarray, ok: np.ndarray, name: str, checks: list[_Check]
    ) -> np.ndarray:
        """Convert to float32 and flag non-finite rows and rows the distance rejects.

        One pass (each row's sum of squares) clears almost every row: a sum that
        is finite and at most ``MAX_MAGNITUDE**2`` means every value is finite and
        small enough, and a non-zero sum means the row is not all zeros. Only the
        rows it cannot clear are looked at value by value (and, for snr, every
        row is compared with its first value).
        """
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(values, dtype=np.float32)  # beyond float32 becomes inf
            squares = np.einsum("ij,ij->i", out, out)
        magnitude = np.zeros(len(out), np.float32)
        doubtful = np.flatnonzero(~(squares <= np.float32(MAX_MAGNITUDE) ** 2))
        if doubtful.size and out.shape[1]:
            magnitude[doubtful] = np.abs(out[doubtful]).max(axis=1)  # NaN stays NaN
        finite = np.isfinite(magnitude)
        bad = ok & ~finite
        checks.append(
            _Check(
                "NaN or infinite value",
                bad,
                lambda i: (
                    "embedding holds NaN or an infinite value (or one beyond float32 "
                    "range)",
                    name,
                    _SKIP_HINT,
                ),
            )
        )
        ok = ok & finite
        huge = ok & (magnitude > MAX_MAGNITUDE)
        checks.append(
            _Check(
                "value too large",
                huge,
                lambda i: (
                    f"embedding holds a value of magnitude {magnitude[i]:.3g}; "
                    f"distgap computes in float32 and accepts up to "
                    f"{MAX_MAGNITUDE:.0e}, so that no distance overflows",
                    name,
                    "rescale the embeddings (every distance but cosine scales with "
                    "them), or pass --on-invalid skip",
                ),
            )
        )
        ok = ok & ~huge
        if self.options.need_direction:
            zero = np.zeros(len(out), bool)
            maybe = np.flatnonzero(squares == 0)
            zero[maybe] = ~out[maybe].any(axis=1)
            zero &= ok
            checks.append(
                _Check(
                    "all-zero vector (cosine)",
                    zero,
                    lambda i: (
                        "embedding is all zeros and has no direction for cosine",
                        name,
                        "drop the row, pass --on-invalid skip, or choose another "
                        "--distance",
                    ),
                    for_distance=True,
                )
            )
            ok = ok & ~zero
        if self.options.need_variance and out.shape[1]:
            flat = ok & (out == out[:, :1]).all(axis=1)
            checks.append(
                _Check(
                    "zero variance (snr)",
                    flat,
                    lambda i: (
                        "embedding has zero variance (all values equal); snr divides "
                        "by it",
                        name,
                        "drop the row, pass --on-invalid skip, or choose another "
                        "--distance",
                    ),
                    for_distance=True,
                )
            )
        return out

    # Labels ----------------------------------------------------------------------

    def _arrow_labels(
        self,
        column: pa.Array,
        name: str,
        source: src.Source,
        row0: int,
        checks: list[_Check],
    ) -> np.ndarray:
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        t = column.type
        null = (
            column.is_null().to_numpy(zero_copy_only=False)
            if column.null_count
            else np.zeros(len(column), bool)
        )
        checks.append(
            _Check("null label", null, lambda i: ("label is null", name, _SKIP_HINT))
        )
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            self._label_kind("string", source, name)
            # Null labels stay out of the mapping; their rows are flagged above.
            encoded = _compute().dictionary_encode(column)
            ids = self.label_map.encode_strings(encoded.dictionary.to_pylist())
            index = _compute().fill_null(encoded.indices, len(ids))
            return np.append(ids, -1)[index.to_numpy(zero_copy_only=False)]
        if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
            self._label_kind("integer", source, name)
            if column.null_count:
                column = _compute().fill_null(column, pa.scalar(0, t))
            raw = column.to_numpy(zero_copy_only=False)
            return self._integer_labels(raw, name, checks, null, source.name)
        raise InputError(
            f"labels are {t}; expected integers, booleans or strings",
            file=source.name,
            column=name,
        )

    def _integer_labels(
        self,
        raw: np.ndarray,
        name: str,
        checks: list[_Check],
        null: np.ndarray,
        file: str,
    ) -> np.ndarray:
        if raw.dtype.kind == "f":
            # 2**63 is the first float past the int64 range.
            whole = np.isfinite(raw) & (np.floor(raw) == raw) & (abs(raw) < 2.0**63)
            bad = ~whole & ~null
            checks.append(
                _Check(
                    "label not a whole number",
                    bad,
                    lambda i: (
                        f"label {float(raw[i])!r} is not a whole number in the "
                        "int64 range",
                        name,
                        "labels must be class ids (integers or strings)",
                    ),
                )
            )
            return np.where(whole, raw, 0).astype(np.int64)
        if raw.dtype == np.uint64:
            beyond = raw > np.iinfo(np.int64).max
            checks.append(
                _Check(
                    "label beyond the int64 range",
                    beyond & ~null,
                    lambda i: (
                        f"label {int(raw[i])} exceeds the int64 range",
                        name,
                        "renumber the classes",
                    ),
                )
            )
            return np.where(beyond, 0, raw).astype(np.int64)
        return raw.astype(np.int64)

    def _partition_labels(self, value: str, n: int, source: src.Source) -> np.ndarray:
        try:
            number = int(value)
        except ValueError:
            self._label_kind("string", source, "partition folder")
            return np.full(n, self.label_map.encode_strings([value])[0], dtype=np.int64)
        self._label_kind("integer", source, "partition folder")
        return np.full(n, number, dtype=np.int64)

    def _label_kind(self, kind: str, source: src.Source, name: str) -> None:
        if self.label_map.kind is None:
            self.label_map.kind = kind
        elif self.label_map.kind != kind:
            raise InputError(
                f"labels are {kind}s here but {self.label_map.kind}s in the files "
                "before",
                file=source.name,
                column=name,
                fix="use one label type across all inputs",
            )

    # .npy and .npz --------------------------------------------------------------

    def _npy_blocks(
        self, index: int, source: src.Source, labels_path: str | None
    ) -> Iterator[Block]:
        embeddings = map_npy(source.path, source.name)
        if labels_path is not None:
            labels_name = labels_path
            labels = map_npy(labels_path, labels_name, _check_kind=True)
        else:
            labels_name, labels = self._npy_labels_beside(source, embeddings)
        yield from self._array_blocks(index, source, embeddings, labels, labels_name)

    def _npy_labels_beside(
        self, source: src.Source, embeddings: np.ndarray
    ) -> tuple[str, np.ndarray]:
        """Labels from a second array after the first (a piped pair), or from the
        ``NAME.labels.npy`` beside ``NAME.embeddings.npy``."""
        offset = getattr(embeddings, "_distgap_end", None)
        if offset is not None and os.path.getsize(source.path) > offset:
            return source.name + " (second array)", map_npy(
                source.path, source.name, offset=offset
            )
        base = source.path
        for suffix in (".embeddings.npy", ".npy"):
            if base.endswith(suffix):
                candidate = base[: -len(suffix)] + ".labels.npy"
                if candidate != base and os.path.exists(candidate):
                    return candidate, map_npy(candidate, candidate)
        raise InputError(
            "no labels for these .npy embeddings",
            file=source.name,
            fix="pass --labels LABELS.npy (or put NAME.labels.npy beside "
            "NAME.embeddings.npy)",
        )

    def _npz_blocks(self, index: int, source: src.Source) -> Iterator[Block]:
        try:
            archive = np.load(source.path, allow_pickle=False)
            names = list(archive.files)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(
                f"cannot be read as .npz ({exc})", file=source.name, fix="re-save it"
            ) from None
        with archive:
            emb_name = self._pick_array(
                names,
                self.options.embedding_column,
                NPZ_EMBEDDING_NAMES,
                source,
                "embeddings",
            )
            label_name = self._pick_array(
                names, self.options.label_column, NPZ_LABEL_NAMES, source, "labels"
            )
            embeddings = _npz_array(archive, emb_name, source.name)
            labels = _npz_array(archive, label_name, source.name)
        yield from self._array_blocks(
            index, source, embeddings, labels, f"{source.name}:{label_name}"
        )

    def _pick_array(
        self,
        names: list[str],
        given: str | None,
        defaults: tuple[str, ...],
        source: src.Source,
        what: str,
    ) -> str:
        if given is not None:
            if given in names:
                return given
            raise InputError(
                f"no array '{given}'; arrays are: {', '.join(names) or 'none'}",
                file=source.name,
            )
        for name in defaults:
            if name in names:
                return name
        flag = "--embedding-column" if what == "embeddings" else "--label-column"
        raise InputError(
            f"cannot tell which array holds the {what}; arrays are: "
            f"{', '.join(names) or 'none'}",
            file=source.name,
            fix=f"pass {flag} NAME",
        )

    def _array_blocks(
        self,
        index: int,
        source: src.Source,
        embeddings: np.ndarray,
        labels: np.ndarray,
        labels_name: str,
    ) -> Iterator[Block]:
        name = source.name
        if (
            embeddings.dtype.kind not in "fiub"
            or embeddings.ndim != 2
            or embeddings.shape[1] == 0
        ):
            raise InputError(
                "embeddings must be a 2-D numeric array with at least one column; "
                f"got shape "
                f"{embeddings.shape} of {embeddings.dtype}",
                file=name,
                fix="save an array of shape (rows, dimension)",
            )
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise InputError(
                f"labels have shape {labels.shape}; expected one label per row",
                file=labels_name,
                fix="save labels of shape (rows,) or (rows, 1)",
            )
        if len(labels) != len(embeddings):
            raise InputError(
                f"{len(embeddings)} rows of embeddings but {len(labels)} labels in "
                f"{labels_name}",
                file=name,
                fix="save one label per embedding row",
            )
        self.value_type = self.value_type or embeddings.dtype.name
        if self.dim is None:
            self.dim = int(embeddings.shape[1])
            self._dim_origin = (name, self.rows_read - self._file_start)
        elif embeddings.shape[1] != self.dim:
            origin = self._dim_origin[0] if self._dim_origin else "the first file"
            raise InputError(
                f"embeddings have dimension {embeddings.shape[1]} but {origin} has "
                f"{self.dim}",
                file=name,
                fix=_OTHER_DIMENSION_HINT,
            )
        kind = "string" if labels.dtype.kind in "US" else "integer"
        if labels.dtype.kind not in "biufUS":
            raise InputError(
                f"labels are {labels.dtype}; expected integers or strings",
                file=labels_name,
            )
        self._label_kind(kind, source, "labels")

        step = self.block_rows(self.dim or 1)
        total = len(embeddings)
        if total == 0:
            return
        row_bytes = embeddings[:1].nbytes
        for start in range(0, total, step):
            # Let the pages of earlier chunks go. Rows of them that are still
            # waiting to be stacked come back from the page cache when read.
            _forget_pages(embeddings, start * row_bytes)
            n = self._take(min(step, total - start))
            if n == 0:
                return
            row0 = self.rows_read
            self.rows_read += n
            checks: list[_Check] = []
            chunk = np.asarray(embeddings[start : start + n])
            values = self._as_float32(chunk, np.ones(n, bool), "embeddings", checks)
            raw = np.asarray(labels[start : start + n])
            if kind == "string":
                texts = raw.astype(str)
                # Ids in order of first appearance, as for Arrow labels.
                uniq, first, inverse = np.unique(
                    texts, return_index=True, return_inverse=True
                )
                order = np.argsort(first)
                ids = np.empty(len(uniq), np.int64)
                ids[order] = self.label_map.encode_strings(list(uniq[order]))
                ids = ids[inverse]
            else:
                native = raw.astype(raw.dtype.newbyteorder("="))
                before = len(checks)
                ids = self._integer_labels(
                    native, "labels", checks, np.zeros(n, bool), labels_name
                )
                for check in checks[before:]:
                    check.file = labels_name
            yield self._settle(index, source, values, ids, row0, checks, "embeddings")

    # Invalid rows -----------------------------------------------------------------

    def _settle(
        self,
        index: int,
        source: src.Source,
        values: np.ndarray,
        labels: np.ndarray,
        row0: int,
        checks: list[_Check],
        column: str,
    ) -> Block:
        """Raise for the first invalid row, or drop invalid rows and count them.

        A broken value (null, NaN, wrong length, bad label) is reported before a
        row that only the chosen distance rejects (a zero vector for cosine), so
        that the message points at the data that needs re-exporting.
        """
        n = len(labels)
        invalid = np.zeros(n, bool)
        found = [c for c in checks if c.mask.any()]
        if found and self.options.on_invalid == "error":
            check = min(found, key=lambda c: (c.for_distance, _first(c.mask)))
            i = _first(check.mask)
            problem, col, fix = check.describe(i)
            raise InputError(
                problem,
                file=check.file or source.name,
                row=row0 + i - self._file_start,
                input_row=row0 + i,
                column=col,
                fix=fix,
            )
        for check in found:
            fresh = check.mask & ~invalid
            self.dropped[check.reason] += int(fresh.sum())
            invalid |= check.mask
        rows = np.arange(row0, row0 + n, dtype=np.int64)
        if invalid.any():
            keep = ~invalid
            values, labels, rows = values[keep], labels[keep], rows[keep]
        return Block(np.ascontiguousarray(values), labels, rows, index)


def _ended_with_marker(stream: Any) -> bool:
    """Whether the Arrow stream read from ``stream`` ended with the
    end-of-stream marker that Arrow writers since 0.15 write on closing (a
    continuation word and a zero length): whether the last 8 bytes its reader
    took are that marker. A writer may also just close the stream, so its
    absence is no error, but it is also what a writer that died between two
    record batches leaves. Bytes after the marker are never read.

    ``stream`` is a mapped file, read back from where its reader stopped (past
    a schema at least), or standard input (``sources._Watched``), which keeps
    the bytes it handed out last."""
    if isinstance(stream, pa.MemoryMappedFile):
        stream.seek(stream.tell() - len(_STREAM_END))
        return bool(stream.read(len(_STREAM_END)) == _STREAM_END)
    return bool(stream.tail == _STREAM_END)


def _read_ahead(fd: int, metadata: Any, group: int) -> None:
    """Ask the kernel to start reading Parquet row group ``group`` of the file
    open as ``fd`` into the page cache, so that it arrives while the one before
    is decoded. pyarrow reads a row group when it starts decoding it; from a
    cold cache the decoding then waited for every read (1M x 128 float32 from
    disk: 1.14-1.37 s read alone, 1.08-1.09 s with the hint). Nothing happens
    where the kernel offers no such advice."""
    if group >= metadata.num_row_groups or not hasattr(os, "posix_fadvise"):
        return
    row_group = metadata.row_group(group)
    spans = []
    for i in range(row_group.num_columns):
        column = row_group.column(i)
        start = (
            column.dictionary_page_offset
            if column.has_dictionary_page
            else column.data_page_offset
        )
        spans.append((start, start + column.total_compressed_size))
    if spans:
        begin, end = min(s for s, _ in spans), max(e for _, e in spans)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, begin, end - begin, os.POSIX_FADV_WILLNEED)


def _npy_header(handle: Any, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from the .npy header ``handle`` is at."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        return np.lib.format.read_array_header_2_0(handle)
    except ValueError as exc:
        raise InputError(
            f"not a valid .npy file ({exc})",
            file=name,
            fix="re-save it with numpy.save",
        ) from None


def _refuse_objects(dtype: np.dtype, name: str) -> None:
    if dtype.hasobject:
        raise InputError(
            "holds an object array, which distgap refuses to load (it needs "
            "pickling, which can run arbitrary code)",
            file=name,
            fix="save a plain array: np.save(path, np.asarray(x, dtype=np.float32)) "
            "for embeddings, np.int64 (or str) for labels",
        )


def _npz_array(archive: Any, key: str, name: str) -> np.ndarray:
    """One array of an open .npz, its header checked before anything is loaded."""
    where = f"{name}:{key}"
    try:
        with archive.zip.open(f"{key}.npy") as member:
            _, _, dtype = _npy_header(member, where)
        _refuse_objects(dtype, where)
        return archive[key]
    except KeyError:
        raise InputError(
            "is not a .npy array", file=where, fix="save it with numpy.savez"
        ) from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InputError(f"is truncated or corrupt ({exc})", file=where) from None


def map_npy(
    path: str, name: str, *, offset: int = 0, _check_kind: bool = False
) -> np.ndarray:
    """Memory-map one ``.npy`` array read-only, starting ``offset`` bytes in.

    The header is parsed here rather than by ``np.load`` so that an array after
    another one (a pair piped through one stream) can be mapped too, and so that
    object arrays are refused before anything is loaded: pickled data is never
    read.

    Raises:
        InputError: for an empty, truncated, pickled or non-.npy file.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        raise InputError("no such file", file=name, fix="check the path") from None
    if size == 0:
        raise InputError("file is empty (0 bytes)", file=name, fix="re-save the array")
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            shape, fortran, dtype = _npy_header(handle, name)
            data_start = handle.tell()
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", file=name) from None
    _refuse_objects(dtype, name)
    count = int(np.prod(shape, dtype=np.int64))
    end = data_start + count * dtype.itemsize
    if end > size:
        raise InputError(
            f"is truncated (its header promises {end - data_start} bytes of data, "
            f"the file holds {size - data_start})",
            file=name,
            fix="re-save or re-copy the file",
        )
    if count == 0:
        array = np.empty(shape, dtype=dtype)
    else:
        array = np.memmap(
            path,
            dtype=dtype,
            mode="r",
            offset=data_start,
            shape=shape,
            order="F" if fortran else "C",
        )
    mapped = array.view(_MappedArray)
    mapped._distgap_end = end
    return mapped


def _forget_pages(array: np.ndarray, consumed: int) -> None:
    """Drop the mapped pages of the first ``consumed`` bytes of a C-ordered
    memory-mapped array from this process's resident memory.

    The pages stay in the page cache and come back on access; without this, the
    resident size of a run grows with the size of the file it has read.
    """
    base: Any = array
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    handle = getattr(base, "_mmap", None)
    if handle is None or not array.flags.c_contiguous:
        return
    end = consumed // mmap.PAGESIZE * mmap.PAGESIZE
    if end > 0:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            handle.madvise(mmap.MADV_DONTNEED, 0, end)


class _MappedArray(np.ndarray):
    """An ndarray that remembers where its data ended in its file."""

    _distgap_end: int = 0


def estimate_rows(sources: list[src.Source]) -> int | None:
    """Total rows from file metadata, or None when a source cannot tell cheaply."""
    total = 0
    for source in sources:
        try:
            if source.kind == src.PARQUET:
                total += pq.ParquetFile(source.path).metadata.num_rows
            elif source.kind == src.NPY:
                total += len(map_npy(source.path, source.name))
            else:
                return None
        except (InputError, pa.ArrowException, OSError):
            return None
    return total
