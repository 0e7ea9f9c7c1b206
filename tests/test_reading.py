"""The input layer, driven through ``distgap eval`` the way a user runs it.

Every input is built in a temp dir. Good inputs are checked by the gaps they give
(the values of the shared input cases C3-C10, computed in float64); bad inputs must
give exit code 2, one line on stderr naming the file (and the global row and column
where there is one), nothing on stdout and no traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from distgap_cli import batching, sources
from distgap_cli.reading import Block, Reader, ReadOptions

from .conftest import HARDNEG_X, HARDNEG_Y, SAMPLE_DATA, write_npy_pair

# A warning printed by numpy would be a second line on a user's stderr.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

DISTANCES = (
    "cosine",
    "euclidean",
    "squared_euclidean",
    "manhattan",
    "inner_product",
    "snr",
)

# The shared cases' ``hardneg`` (euclidean gap 5) as plain lists.
HARDNEG = [[0], [1], [3], [10]]
LABELS = [0, 0, 1, 1]

# C9: batch 0 (rows 0-3) has gap 4, batch 1 (rows 4-7) gap 8; one batch: 0.3851648.
C9_X = [[0, 0], [0, 1], [5, 0], [5, 1], [0, 0], [0, 2], [10, 0], [10, 2]]
C9_Y = [0, 0, 1, 1, 0, 0, 1, 1]
C9_ONE_BATCH_GAP = 0.3851648

LIST32 = pa.list_(pa.float32())


# Building inputs -------------------------------------------------------------------


def table(embeddings, labels, *, emb_type=LIST32, label_type=None) -> pa.Table:
    """An ``embedding`` list column (None for a null row) and a ``label`` column."""
    column = pa.array([None if r is None else list(r) for r in embeddings], emb_type)
    return pa.table({"embedding": column, "label": pa.array(labels, label_type)})


def save(path: Path, data: pa.Table, **kw) -> Path:
    """Write ``data`` in the format the suffix of ``path`` names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(data, path, **kw)
    elif path.suffix == ".feather":
        feather.write_feather(data, path)
    elif path.suffix == ".arrows":
        with pa.ipc.new_stream(str(path), data.schema) as writer:
            writer.write_table(data)
    else:
        with pa.ipc.new_file(str(path), data.schema) as writer:
            writer.write_table(data)
    return path


def stream_bytes(data: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return sink.getvalue().to_pybytes()


def npy_bytes(*arrays: np.ndarray, **named: np.ndarray) -> bytes:
    """Arrays saved back to back as .npy, or as one .npz when given by name."""
    buffer = io.BytesIO()
    if named:
        np.savez(buffer, **named)
    for array in arrays:
        np.save(buffer, array)
    return buffer.getvalue()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Running the CLI -------------------------------------------------------------------


def report(cli, *args, distance="euclidean", batch=4, input=None) -> dict:
    """The JSON report of a run that must succeed."""
    out = cli(
        "eval", *args, "-d", distance, "-b", str(batch), "-f", "json", input=input
    )
    assert out.exit_code == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    return json.loads(out.stdout)


def gap(cli, *args, **kw) -> float:
    """The mean gap of a run that must succeed."""
    return report(cli, *args, **kw)["results"][0]["gap"]["mean"]


def rejected(cli, *args, distance="euclidean", input=None) -> str:
    """The one stderr line of a run that must fail with exit code 2."""
    out = cli("eval", *args, "-d", distance, "-f", "json", input=input)
    assert out.exit_code == 2, (out.exit_code, out.stdout, out.stderr)
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# 1. Input forms ---------------------------------------------------------------------


def _parquet(tmp: Path) -> tuple[list, bytes | None]:
    return [save(tmp / "x.parquet", table(HARDNEG, LABELS))], None


def _hive_directory(tmp: Path) -> tuple[list, bytes | None]:
    root = tmp / "shards"
    save(root / "day=1" / "part-0.parquet", table(HARDNEG[:2], LABELS[:2]))
    save(root / "day=2" / "sub" / "part-0.parquet", table(HARDNEG[2:], LABELS[2:]))
    (root / "_SUCCESS").write_bytes(b"")
    (root / ".part-0.parquet.crc").write_bytes(b"junk")
    return [root], None


def _partition_label(tmp: Path) -> tuple[list, bytes | None]:
    root = tmp / "by_class"
    for cls, rows in (("0", HARDNEG[:2]), ("1", HARDNEG[2:])):
        data = pa.table({"embedding": pa.array(rows, LIST32)})
        save(root / f"cls={cls}" / "part.parquet", data)
    return [root, "--label-column", "cls"], None


def _glob(tmp: Path) -> tuple[list, bytes | None]:
    save(tmp / "shard-0.parquet", table(HARDNEG[:2], LABELS[:2]))
    save(tmp / "shard-1.parquet", table(HARDNEG[2:], LABELS[2:]))
    return [tmp / "shard-*.parquet"], None


def _several_paths(tmp: Path) -> tuple[list, bytes | None]:
    a = save(tmp / "a.parquet", table(HARDNEG[:1], LABELS[:1]))
    b = save(tmp / "b.arrow", table(HARDNEG[1:], LABELS[1:]))
    return [a, b], None


def _arrow_file(tmp: Path) -> tuple[list, bytes | None]:
    return [save(tmp / "x.arrow", table(HARDNEG, LABELS))], None


def _feather(tmp: Path) -> tuple[list, bytes | None]:
    return [save(tmp / "x.feather", table(HARDNEG, LABELS))], None


def _arrow_stream(tmp: Path) -> tuple[list, bytes | None]:
    return [save(tmp / "x.arrows", table(HARDNEG, LABELS))], None


def _npy_labels_flag(tmp: Path) -> tuple[list, bytes | None]:
    np.save(tmp / "vectors.npy", HARDNEG_X)
    np.save(tmp / "classes.npy", HARDNEG_Y)
    return [tmp / "vectors.npy", "--labels", tmp / "classes.npy"], None


def _npy_beside(tmp: Path) -> tuple[list, bytes | None]:
    np.save(tmp / "run.embeddings.npy", HARDNEG_X)
    np.save(tmp / "run.labels.npy", HARDNEG_Y)
    return [tmp / "run.embeddings.npy"], None


def _npz(tmp: Path) -> tuple[list, bytes | None]:
    np.savez(tmp / "x.npz", embeddings=HARDNEG_X, labels=HARDNEG_Y)
    return [tmp / "x.npz"], None


def _npz_named(tmp: Path) -> tuple[list, bytes | None]:
    np.savez_compressed(tmp / "x.npz", vecs=HARDNEG_X, cls=HARDNEG_Y, other=HARDNEG_Y)
    flags = ["--embedding-column", "vecs", "--label-column", "cls"]
    return [tmp / "x.npz", *flags], None


def _stdin_parquet(tmp: Path) -> tuple[list, bytes | None]:
    return ["-"], save(tmp / "x.parquet", table(HARDNEG, LABELS)).read_bytes()


def _stdin_arrow_stream(tmp: Path) -> tuple[list, bytes | None]:
    return ["-"], stream_bytes(table(HARDNEG, LABELS))


def _stdin_npy_pair(tmp: Path) -> tuple[list, bytes | None]:
    return ["-"], npy_bytes(HARDNEG_X, HARDNEG_Y)


def _stdin_npz(tmp: Path) -> tuple[list, bytes | None]:
    return ["-"], npy_bytes(embeddings=HARDNEG_X, labels=HARDNEG_Y)


@pytest.mark.parametrize(
    "build",
    [
        _parquet,
        _hive_directory,
        _partition_label,
        _glob,
        _several_paths,
        _arrow_file,
        _feather,
        _arrow_stream,
        _npy_labels_flag,
        _npy_beside,
        _npz,
        _npz_named,
        _stdin_parquet,
        _stdin_arrow_stream,
        _stdin_npy_pair,
        _stdin_npz,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_every_input_form_gives_the_hardneg_gap(cli, tmp_path, build):
    args, stdin = build(tmp_path)
    doc = report(cli, *args, input=stdin)
    assert doc["results"][0]["gap"]["mean"] == pytest.approx(5, abs=1e-6)
    assert doc["input"]["rows"] == 4
    assert doc["input"]["dimension"] == 1
    assert doc["input"]["classes"] == 2


def test_directory_reads_every_shard_in_sorted_order(cli, tmp_path):
    root = tmp_path / "shards"
    save(root / "k=b" / "x.parquet", table(HARDNEG[2:], LABELS[2:]))
    save(root / "k=a" / "deeper" / "x.parquet", table(HARDNEG[:2], LABELS[:2]))
    doc = report(cli, root)
    assert doc["input"]["files"] == [
        str(root / "k=a" / "deeper" / "x.parquet"),
        str(root / "k=b" / "x.parquet"),
    ]


def test_stdin_spool_is_removed(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stdin = npy_bytes(HARDNEG_X, HARDNEG_Y)
    gap(cli, "-", input=stdin)
    rejected(cli, "-", tmp_path / "missing.npy", input=stdin)
    assert not list(tmp_path.glob("distgap-*"))


def test_a_file_given_twice_is_refused(cli, tmp_path):
    path = save(tmp_path / "shards" / "a.parquet", table(HARDNEG, LABELS))
    twice = cli("eval", path, path)
    assert twice.exit_code == 2 and "is given twice: its rows" in twice.stderr
    nested = cli("eval", tmp_path / "shards", path)
    assert nested.exit_code == 2 and "through" in nested.stderr
    glob_and_file = cli("eval", str(tmp_path / "shards" / "*.parquet"), path)
    assert glob_and_file.exit_code == 2 and str(path) in glob_and_file.stderr
    (tmp_path / "link.parquet").symlink_to(path)
    linked = cli("eval", path, tmp_path / "link.parquet")
    assert linked.exit_code == 2 and "given twice" in linked.stderr
    os.link(path, tmp_path / "hard.parquet")
    hard = cli("eval", path, tmp_path / "hard.parquet")
    assert hard.exit_code == 2 and "given twice" in hard.stderr


def test_stdin_spool_is_removed_when_its_copy_is_interrupted(
    cli, tmp_path, monkeypatch
):
    # Ctrl-C or SIGTERM while standard input is still being copied.
    from distgap_cli import sources

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def interrupted(source, target, length=0):
        target.write(source.read(16))
        raise KeyboardInterrupt

    monkeypatch.setattr(sources.shutil, "copyfileobj", interrupted)
    out = cli("eval", "-", "-d", "l2", input=npy_bytes(HARDNEG_X, HARDNEG_Y))
    assert out.exit_code == 130 and "interrupted" in out.stderr
    assert not list(tmp_path.glob("distgap-*"))


@pytest.mark.slow
def test_arrow_stream_piped_into_the_installed_command(tmp_path):
    # A real pipe, written in small pieces: the head arrives in several reads.
    data = stream_bytes(table(HARDNEG, LABELS))
    command = [Path(sys.executable).with_name("distgap"), "eval", "-", "-d", "l2"]
    with subprocess.Popen(
        [*command, "-b", "4", "-f", "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        for start in range(0, len(data), 5):
            process.stdin.write(data[start : start + 5])
            process.stdin.flush()
        process.stdin.close()
        stdout, stderr = process.stdout.read(), process.stderr.read()
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["results"][0]["gap"]["mean"] == pytest.approx(5)


@pytest.mark.parametrize("stdin", [b"", None])
def test_empty_stdin_is_rejected(cli, stdin):
    line = rejected(cli, "-", input=stdin)
    assert "<stdin>" in line
    assert "empty" in line


def test_stdin_with_unknown_content_is_rejected(cli):
    line = rejected(cli, "-", input=b"label,embedding\n0,1\n")
    assert "<stdin>" in line


# 2. Column types ------------------------------------------------------------------


@pytest.mark.parametrize("value_type", ["float16", "float32", "float64", "int32"])
@pytest.mark.parametrize(
    "list_type",
    [pa.list_, pa.large_list, lambda t: pa.list_(t, 1)],
    ids=["list", "large_list", "fixed_size_list"],
)
def test_list_column_types(cli, tmp_path, list_type, value_type):
    emb_type = list_type(pa.type_for_alias(value_type))
    path = save(tmp_path / "x.parquet", table(HARDNEG, LABELS, emb_type=emb_type))
    assert gap(cli, path) == pytest.approx(5, abs=1e-6)


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_fixed_shape_tensor_column(cli, tmp_path, suffix):
    tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(np.array(C9_X, np.float32))
    data = pa.table({"vectors": tensor, "label": pa.array(C9_Y)})
    path = save(tmp_path / f"x{suffix}", data)
    doc = report(cli, path, batch=8)
    assert doc["input"]["dimension"] == 2
    assert doc["results"][0]["gap"]["mean"] == pytest.approx(C9_ONE_BATCH_GAP, abs=1e-6)


def _prefixed_table(dim: int, rows: np.ndarray, labels) -> pa.Table:
    """Columns ``emb_0 .. emb_{dim-1}`` written in a scrambled order."""
    order = np.random.default_rng(1).permutation(dim)
    columns = {f"emb_{j}": pa.array(rows[:, j]) for j in order}
    columns["label"] = pa.array(labels)
    return pa.table(columns)


def test_embedding_prefix_orders_columns_numerically(tmp_path):
    dim = 12
    rows = np.tile(np.arange(dim, dtype=np.float32), (3, 1))
    path = save(tmp_path / "x.parquet", _prefixed_table(dim, rows, [0, 1, 0]))
    options = ReadOptions(embedding_prefix="emb_")
    reader = Reader(sources.discover([str(path)]), options)
    (block,) = reader.blocks()
    np.testing.assert_array_equal(block.embeddings, rows)


def test_embedding_prefix_through_the_cli(cli, tmp_path):
    # emb_9 and emb_10 carry C9's two coordinates, so every column must be read.
    # Distances do not see the column order; the tests around this one do.
    x = np.zeros((8, 11), np.float32)
    x[:, 10] = np.array(C9_X)[:, 0]
    x[:, 9] = np.array(C9_X)[:, 1]
    path = save(tmp_path / "x.parquet", _prefixed_table(11, x, C9_Y))
    doc = report(cli, path, "--embedding-prefix", "emb_", batch=8)
    assert doc["input"]["dimension"] == 11
    assert doc["results"][0]["gap"]["mean"] == pytest.approx(C9_ONE_BATCH_GAP, abs=1e-6)


def test_embedding_prefix_mixed_with_npy_keeps_coordinates_aligned(cli, tmp_path):
    # Half the rows from a .npy, half from emb_* columns, in one batch: a wrong
    # column order would move the Parquet rows away from the .npy rows.
    x = np.zeros((8, 11), np.float32)
    x[:, 10] = np.array(C9_X)[:, 0]
    x[:, 1] = np.array(C9_X)[:, 1]
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # one row of each pair in each file
    y = np.array(C9_Y)
    np.save(tmp_path / "a.embeddings.npy", x[order[:4]])
    np.save(tmp_path / "a.labels.npy", y[order[:4]])
    path = save(tmp_path / "b.parquet", _prefixed_table(11, x[order[4:]], y[order[4:]]))
    args = [tmp_path / "a.embeddings.npy", path, "--embedding-prefix", "emb_"]
    assert gap(cli, *args, batch=8) == pytest.approx(C9_ONE_BATCH_GAP, abs=1e-6)


def test_embedding_prefix_value_beyond_float32(cli, tmp_path):
    x = np.array(C9_X[:4], np.float64)
    x[2, 1] = 1e300
    data = _prefixed_table(2, x, C9_Y[:4])
    path = save(tmp_path / "x.parquet", data)
    line = rejected(cli, path, "--embedding-prefix", "emb_")
    assert str(path) in line
    assert "row 2" in line
    assert "column 'emb_0...'" in line


def test_embedding_prefix_next_to_npy_of_another_dimension(cli, tmp_path):
    a, _ = write_npy_pair(tmp_path, np.zeros((4, 3), np.float32), LABELS, "a")
    b = save(tmp_path / "b.parquet", _prefixed_table(2, np.zeros((4, 2)), LABELS))
    line = rejected(cli, a, b, "--embedding-prefix", "emb_")
    assert str(a) in line
    assert str(b) in line
    assert "dimension 2" in line


@pytest.mark.parametrize(
    ("labels", "label_type"),
    [
        (LABELS, pa.int8()),
        (LABELS, pa.int32()),
        ([3, 3, 2**62, 2**62], pa.uint64()),
        ([False, False, True, True], pa.bool_()),
        (["cat", "cat", "dog", "dog"], pa.string()),
        (["cat", "cat", "dog", "dog"], pa.large_string()),
        (["cat", "cat", "dog", "dog"], pa.dictionary(pa.int32(), pa.string())),
        ([0.0, 0.0, 1.0, 1.0], pa.float64()),
    ],
    ids=lambda v: str(v) if isinstance(v, pa.DataType) else None,
)
def test_label_types(cli, tmp_path, labels, label_type):
    data = table(HARDNEG, labels, label_type=label_type)
    assert gap(cli, save(tmp_path / "x.parquet", data)) == pytest.approx(5, abs=1e-6)


def test_uint64_labels_beyond_int64_are_rejected(cli, tmp_path):
    data = table(HARDNEG, [3, 3, 2**63 + 7, 2**63 + 7], label_type=pa.uint64())
    path = save(tmp_path / "x.parquet", data)
    line = rejected(cli, path)
    assert str(path) in line
    assert "row 2" in line and "column 'label'" in line
    assert "label 9223372036854775815 exceeds the int64 range" in line


def test_npy_string_labels_get_ids_in_order_of_appearance(cli, tmp_path):
    names = ["dog", "dog", "cat", "cat"]
    path, _ = write_npy_pair(tmp_path, HARDNEG_X, np.array(names))
    from_npy = report(cli, path)
    from_parquet = report(cli, save(tmp_path / "x.parquet", table(HARDNEG, names)))
    assert from_npy["input"]["labels"]["ids"] == {"dog": 0, "cat": 1}
    assert from_parquet["input"]["labels"] == from_npy["input"]["labels"]
    assert from_npy["results"][0]["gap"]["mean"] == pytest.approx(5, abs=1e-6)


def _string_shards(tmp: Path) -> list[Path]:
    """The C9 rows as two shards of string labels whose dictionaries differ."""
    paths = []
    for i, dictionary in enumerate((["cat", "dog"], ["dog", "cat"])):
        names = ["cat" if y == 0 else "dog" for y in C9_Y[4 * i : 4 * i + 4]]
        indices = pa.array([dictionary.index(n) for n in names], pa.int32())
        labels = pa.DictionaryArray.from_arrays(indices, pa.array(dictionary))
        data = pa.table(
            {"embedding": pa.array(C9_X[4 * i : 4 * i + 4], LIST32), "label": labels}
        )
        paths.append(save(tmp / f"part-{i}.parquet", data))
    return paths


def test_string_labels_are_compared_by_value_across_shards(cli, tmp_path):
    paths = _string_shards(tmp_path)
    first = report(cli, *paths, batch=8)
    again = report(cli, *paths, batch=8)
    result = first["results"][0]
    assert result["gap"]["mean"] == pytest.approx(C9_ONE_BATCH_GAP, abs=1e-6)
    assert result["margin"]["mean"] == pytest.approx(-C9_ONE_BATCH_GAP, abs=1e-6)
    assert first["input"]["labels"]["kind"] == "string"
    assert first["input"]["labels"]["ids"] == {"cat": 0, "dog": 1}
    assert again["input"]["labels"] == first["input"]["labels"]

    integers = save(tmp_path / "int.parquet", table(C9_X, C9_Y))
    same = report(cli, integers, batch=8)["results"][0]
    assert result["gap"] == same["gap"]


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_float_labels_must_be_whole_numbers(cli, tmp_path, suffix):
    labels = np.array([0.0, 0.0, 0.5, 1.0])
    if suffix == ".npy":
        path, named = write_npy_pair(tmp_path, HARDNEG_X, labels)
        column = "labels"
    else:
        path = named = save(tmp_path / "x.parquet", table(HARDNEG, labels))
        column = "label"
    line = rejected(cli, path)
    assert str(named) in line  # the file that holds the labels
    assert "row 2" in line
    assert f"column '{column}'" in line
    assert "0.5" in line


# 3. Auto-detection -----------------------------------------------------------------


def test_ambiguous_embedding_column_lists_the_columns(cli, tmp_path):
    data = pa.table(
        {
            "a": pa.array(HARDNEG, LIST32),
            "b": pa.array(HARDNEG, pa.list_(pa.float64())),
            "label": pa.array(LABELS),
        }
    )
    path = save(tmp_path / "x.parquet", data)
    line = rejected(cli, path)
    assert str(path) in line
    schema = pq.read_schema(path)
    assert f"a ({schema.field('a').type})" in line  # list<element: float>
    assert f"b ({schema.field('b').type})" in line
    assert "label (int64)" in line
    assert "--embedding-column" in line

    # Naming one of them settles it.
    assert gap(cli, path, "--embedding-column", "b") == pytest.approx(5, abs=1e-6)


def test_conventional_name_wins_over_other_list_columns(cli, tmp_path):
    data = table(HARDNEG, LABELS).append_column("tags", pa.array([[1]] * 4))
    assert gap(cli, save(tmp_path / "x.parquet", data)) == pytest.approx(5, abs=1e-6)


def test_label_column_found_whatever_its_case(cli, tmp_path):
    data = table(HARDNEG, LABELS).rename_columns(["Embedding", "Label"])
    assert gap(cli, save(tmp_path / "x.parquet", data)) == pytest.approx(5, abs=1e-6)


@pytest.mark.parametrize("flag", ["--label-column", "--embedding-column"])
def test_missing_named_column_lists_the_columns(cli, tmp_path, flag):
    path = save(tmp_path / "x.parquet", table(HARDNEG, LABELS))
    line = rejected(cli, path, flag, "nope")
    assert str(path) in line
    assert "'nope'" in line
    listed = pq.read_schema(path).field("embedding").type
    assert f"embedding ({listed}), label (int64)" in line
    assert flag in line


def test_missing_npz_array_lists_the_arrays(cli, tmp_path):
    np.savez(tmp_path / "x.npz", vecs=HARDNEG_X, cls=HARDNEG_Y)
    line = rejected(cli, tmp_path / "x.npz")
    assert str(tmp_path / "x.npz") in line
    assert "vecs" in line
    assert "cls" in line


# 4. Shards that disagree -----------------------------------------------------------


@pytest.mark.parametrize(
    "emb_type", [LIST32, pa.list_(pa.float32(), 3)], ids=["list", "fixed_size"]
)
def test_shards_of_different_dimension(cli, tmp_path, emb_type):
    a = save(tmp_path / "a.parquet", table(C9_X[:4], C9_Y[:4]))
    three = [[*row, 0] for row in C9_X[4:]]
    b = save(tmp_path / "b.parquet", table(three, C9_Y[4:], emb_type=emb_type))
    line = rejected(cli, tmp_path)
    assert str(a) in line
    assert str(b) in line
    # Rows are counted within their file, and over all inputs beside.
    assert "row 0 (row 4 of all inputs)" in line
    assert "3 values" in line
    assert f"{a} row 0 has 2" in line
    assert "--per-file" in line  # files of two models can be evaluated apart


def test_a_bad_row_of_a_later_file_is_counted_within_it(cli, tmp_path):
    save(tmp_path / "a.parquet", table(C9_X, C9_Y))
    bad = [list(row) for row in C9_X]
    bad[5][1] = float("nan")
    b = save(tmp_path / "b.parquet", table(bad, C9_Y))
    line = rejected(cli, tmp_path)
    assert f"{b}, row 5 (row 13 of all inputs), column 'embedding'" in line
    alone = rejected(cli, b)
    assert f"{b}, row 5, column 'embedding'" in alone


def test_npy_files_of_different_dimension(cli, tmp_path):
    a, _ = write_npy_pair(tmp_path, np.zeros((4, 2), np.float32), LABELS, "a")
    b, _ = write_npy_pair(tmp_path, np.zeros((4, 3), np.float32), LABELS, "b")
    line = rejected(cli, a, b)
    assert str(a) in line
    assert str(b) in line
    assert "dimension 3" in line
    assert "has 2" in line
    assert "--per-file" in line


def test_a_short_row_in_one_file_is_told_in_the_singular(cli, tmp_path):
    rows = [[0.0, 1.0], [1.0, 0.0], [2.0], [3.0, 1.0]]
    line = rejected(cli, save(tmp_path / "a.parquet", table(rows, [0, 0, 1, 1])))
    assert "row 2" in line and "has 1 value but row 0 has 2" in line
    assert "give every row the same dimension" in line


def test_shards_with_integer_and_string_labels(cli, tmp_path):
    a = save(tmp_path / "a.parquet", table(HARDNEG[:2], [0, 1]))
    b = save(tmp_path / "b.parquet", table(HARDNEG[2:], ["x", "y"]))
    line = rejected(cli, tmp_path)
    assert str(a) in line
    assert str(b) in line
    assert "label column is string" in line
    assert "has integer" in line


def test_shards_with_float_and_integer_values(cli, tmp_path):
    save(tmp_path / "a.parquet", table(HARDNEG[:2], [0, 0]))
    ints = pa.list_(pa.int64())
    b = save(tmp_path / "b.parquet", table(HARDNEG[2:], [1, 1], emb_type=ints))
    line = rejected(cli, tmp_path)
    assert str(b) in line
    assert "integer" in line


def test_float32_shard_next_to_float64_shard(cli, tmp_path):
    save(tmp_path / "a.parquet", table(HARDNEG[:2], [0, 0]))
    f64 = pa.list_(pa.float64())
    save(tmp_path / "b.parquet", table(HARDNEG[2:], [1, 1], emb_type=f64))
    assert gap(cli, tmp_path) == pytest.approx(5, abs=1e-6)


# 5. The shared cases -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_c3_label_shapes_accepted(cli, tmp_path, shape):
    path, _ = write_npy_pair(tmp_path, HARDNEG_X, HARDNEG_Y.reshape(shape))
    assert gap(cli, path) == pytest.approx(5, abs=1e-6)


def test_c3_two_labels_per_row_rejected(cli, tmp_path):
    path, labels = write_npy_pair(tmp_path, HARDNEG_X, np.zeros((4, 2), np.int64))
    line = rejected(cli, path)
    assert str(labels) in line
    assert "(4, 2)" in line


def test_c3_three_labels_for_four_rows(cli, tmp_path):
    path, labels = write_npy_pair(tmp_path, HARDNEG_X, HARDNEG_Y[:3])
    line = rejected(cli, path)
    assert str(path) in line
    assert str(labels) in line
    assert "4 rows" in line
    assert "3 labels" in line


def test_c3_integral_float_labels(cli, tmp_path):
    path, _ = write_npy_pair(tmp_path, HARDNEG_X, HARDNEG_Y.astype(np.float64))
    assert gap(cli, path) == pytest.approx(5, abs=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("distance", DISTANCES)
def test_c6_non_finite_values(cli, tmp_path, distance, bad):
    x = np.array([[0, 0], [0, 1], [5, bad], [5, 1]], np.float32)
    path, _ = write_npy_pair(tmp_path, x, LABELS)
    line = rejected(cli, path, distance=distance)
    assert str(path) in line
    assert "row 2" in line


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_c6_non_finite_values_in_parquet(cli, tmp_path, bad):
    x = [[0, 0], [0, 1], [5, bad], [5, 1]]
    emb_type = pa.list_(pa.float64())
    path = save(tmp_path / "x.parquet", table(x, LABELS, emb_type=emb_type))
    line = rejected(cli, path)
    assert str(path) in line
    assert "row 2" in line
    assert "column 'embedding'" in line


@pytest.mark.parametrize(
    ("embeddings", "labels"),
    [
        (HARDNEG_X.astype(">f4"), HARDNEG_Y.astype(">i8")),
        (np.asfortranarray([[0, 0], [1, 0], [3, 0], [10, 0]], np.float32), LABELS),
    ],
    ids=["big-endian", "fortran"],
)
def test_c7_unusual_npy_layouts(cli, tmp_path, embeddings, labels):
    path, _ = write_npy_pair(tmp_path, embeddings, labels)
    native, _ = write_npy_pair(
        tmp_path, np.ascontiguousarray(embeddings, "=f4"), LABELS, "n"
    )
    assert gap(cli, path) == gap(cli, native) == pytest.approx(5, abs=1e-6)


def test_c7_reading_never_writes_the_file(cli, tmp_path):
    x = np.array([[3, 4], [6, 8], [0, 1], [0, 7]], np.float32)
    path, labels = write_npy_pair(tmp_path, x, LABELS)
    before = digest(path), digest(labels)
    report(cli, path, distance="cosine")
    assert (digest(path), digest(labels)) == before


def test_c8_truncated_npy(cli, tmp_path):
    path, _ = write_npy_pair(tmp_path, np.ones((4, 3), np.float32), LABELS)
    path.write_bytes(path.read_bytes()[:-8])
    line = rejected(cli, path)
    assert str(path) in line
    assert "truncated" in line


def test_c8_empty_npy(cli, tmp_path):
    path, _ = write_npy_pair(tmp_path, HARDNEG_X, LABELS)
    path.write_bytes(b"")
    line = rejected(cli, path)
    assert str(path) in line
    assert "empty" in line


@pytest.mark.parametrize("where", ["embeddings", "labels", "npz"])
def test_c8_object_arrays_are_never_unpickled(cli, tmp_path, monkeypatch, where):
    ragged = np.empty(4, dtype=object)
    ragged[:] = [[0.0], [1.0, 2.0], [3.0], [10.0]]
    if where == "npz":
        path = bad = tmp_path / "x.npz"
        np.savez(path, embeddings=ragged, labels=HARDNEG_Y)
    else:
        path, labels = write_npy_pair(tmp_path, HARDNEG_X, HARDNEG_Y)
        bad = path if where == "embeddings" else labels
        np.save(bad, ragged, allow_pickle=True)

    def refuse(*args, **kwargs):
        raise AssertionError("pickled data was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    line = rejected(cli, path)
    assert str(bad) in line
    assert "object array" in line


@pytest.mark.parametrize(
    "emb_type",
    [LIST32, pa.large_list(pa.float32()), pa.list_(pa.float32(), 2)],
    ids=["list", "large_list", "fixed_size_list"],
)
@pytest.mark.parametrize("row_group_size", [None, 4, 3])
def test_c9_list_columns_and_slices(cli, tmp_path, emb_type, row_group_size):
    data = table(C9_X, C9_Y, emb_type=emb_type)
    path = save(tmp_path / "x.parquet", data, row_group_size=row_group_size)

    result = report(cli, path, batch=4)["results"][0]
    assert result["batches"]["total"] == 2
    assert result["gap"]["min"] == pytest.approx(4, abs=1e-6)
    assert result["gap"]["max"] == pytest.approx(8, abs=1e-6)
    assert result["last_gap"] == pytest.approx(8, abs=1e-6)

    whole = report(cli, path, batch=8)["results"][0]
    assert whole["gap"]["mean"] == pytest.approx(C9_ONE_BATCH_GAP, abs=1e-6)
    assert whole["margin"]["mean"] == pytest.approx(-C9_ONE_BATCH_GAP, abs=1e-6)


def test_c9_sliced_ipc_batches(cli, tmp_path):
    # Record batches of 3 and 5 rows: the batches of 4 straddle them.
    data = table(C9_X, C9_Y)
    path = tmp_path / "x.arrow"
    with pa.ipc.new_file(str(path), data.schema) as writer:
        for batch in data.to_batches():
            writer.write_batch(batch.slice(0, 3))
            writer.write_batch(batch.slice(3, 5))
    result = report(cli, path, batch=4)["results"][0]
    assert (result["gap"]["min"], result["last_gap"]) == pytest.approx((4, 8))


@pytest.mark.parametrize(
    "emb_type",
    [LIST32, pa.large_list(pa.float32()), pa.list_(pa.float32(), 2)],
    ids=["list", "large_list", "fixed_size_list"],
)
def test_c9_record_batches_that_are_slices(tmp_path, monkeypatch, emb_type):
    # Slices keep the parent's child values: only the offsets say where rows are.
    rows = [list(r) for r in C9_X]
    rows[6] = [10, None]
    data = table(rows, C9_Y, emb_type=emb_type).to_batches()[0]
    path = save(tmp_path / "x.arrow", pa.Table.from_batches([data]))
    options = ReadOptions(on_invalid="skip")
    reader = Reader(sources.discover([str(path)]), options)
    pieces = [data.slice(0, 3), data.slice(3, 4), data.slice(7, 1)]
    monkeypatch.setattr(reader, "_arrow_batches", lambda source: iter(pieces))
    blocks = list(reader.blocks())
    rows_kept = np.concatenate([b.rows for b in blocks])
    np.testing.assert_array_equal(rows_kept, [0, 1, 2, 3, 4, 5, 7])
    x = np.concatenate([b.embeddings for b in blocks])
    np.testing.assert_array_equal(x, np.array(C9_X, np.float32)[rows_kept])
    assert reader.dropped == {"null value inside embedding": 1}


@pytest.mark.parametrize("row_group_size", [None, 4])
def test_c9_row_of_wrong_length(cli, tmp_path, row_group_size):
    rows = [list(r) for r in C9_X]
    rows[5] = [0, 2, 0]
    data = table(rows, C9_Y)
    path = save(tmp_path / "x.parquet", data, row_group_size=row_group_size)
    line = rejected(cli, path)
    assert str(path) in line
    assert "row 5" in line
    assert "column 'embedding'" in line
    assert "3 values" in line
    assert "has 2" in line


C10_X = [[0, 0], [0, 1], None, [5, 0], [5, 1]]
C10_Y = [0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    ("rows", "emb_type", "row"),
    [
        (C10_X, pa.large_list(pa.float32()), 2),
        (C10_X, LIST32, 2),
        (C10_X, pa.list_(pa.float32(), 2), 2),
        ([[0, 0], [0, None], [0, 1], [5, 0], [5, 1]], pa.large_list(pa.float32()), 1),
        ([[0, 0], [0, None], [0, 1], [5, 0], [5, 1]], pa.list_(pa.float32(), 2), 1),
    ],
    ids=["null-row", "null-row-list", "null-fixed", "null-value", "null-value-fixed"],
)
def test_c10_nulls_in_the_embedding_column(cli, tmp_path, rows, emb_type, row):
    path = save(tmp_path / "x.parquet", table(rows, C10_Y, emb_type=emb_type))
    line = rejected(cli, path)
    assert str(path) in line
    assert f"row {row}" in line
    assert "column 'embedding'" in line
    assert "null" in line


@pytest.mark.parametrize(
    "emb_type",
    [pa.large_list(pa.float32()), pa.list_(pa.float32(), 2)],
    ids=["large_list", "fixed_size_list"],
)
def test_c10_skip_drops_the_row_and_its_label(cli, tmp_path, emb_type):
    path = save(tmp_path / "x.parquet", table(C10_X, C10_Y, emb_type=emb_type))
    doc = report(cli, path, "--on-invalid", "skip", batch=8)
    assert doc["results"][0]["gap"]["mean"] == pytest.approx(4, abs=1e-6)
    assert doc["input"]["dropped"] == {"null embedding": 1}
    assert doc["input"]["rows"] == 4
    assert doc["input"]["rows_read"] == 5


def test_null_label_is_rejected_and_skippable(cli, tmp_path):
    path = save(tmp_path / "x.parquet", table(C9_X[:5], [0, 0, None, 1, 1]))
    line = rejected(cli, path)
    assert "row 2" in line
    assert "column 'label'" in line
    doc = report(cli, path, "--on-invalid", "skip", batch=8)
    assert doc["input"]["dropped"] == {"null label": 1}


def test_null_string_label_is_skipped_without_entering_the_mapping(cli, tmp_path):
    data = table([*HARDNEG, [5]], ["a", "a", "b", "b", None])
    doc = report(cli, save(tmp_path / "x.parquet", data), "--on-invalid", "skip")
    assert doc["input"]["labels"]["ids"] == {"a": 0, "b": 1}
    assert doc["input"]["dropped"] == {"null label": 1}
    assert doc["results"][0]["gap"]["mean"] == pytest.approx(5, abs=1e-6)


def test_row_index_is_global_across_files(cli, tmp_path):
    save(tmp_path / "a.parquet", table(C9_X[:4], C9_Y[:4]))
    rows = [list(r) for r in C9_X[4:]]
    rows[1] = [0, float("nan")]
    b = save(tmp_path / "b.parquet", table(rows, C9_Y[4:]))
    line = rejected(cli, tmp_path)
    assert str(b) in line
    assert "row 5" in line


# 6. Other bad inputs ------------------------------------------------------------------


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere.parquet"


def _empty_directory(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    (tmp / "out" / "_SUCCESS").write_bytes(b"")
    return tmp / "out"


def _csv_named_parquet(tmp: Path) -> Path:
    path = tmp / "x.parquet"
    path.write_text("embedding,label\n0,0\n")
    return path


def _npy_named_parquet(tmp: Path) -> Path:
    path = tmp / "x.parquet"
    with path.open("wb") as handle:
        np.save(handle, HARDNEG_X)
    return path


def _parquet_named_arrow(tmp: Path) -> Path:
    path = save(tmp / "x.parquet", table(HARDNEG, LABELS))
    return path.rename(tmp / "x.arrow")


def _truncated_parquet(tmp: Path) -> Path:
    path = save(tmp / "x.parquet", table(C9_X, C9_Y))
    path.write_bytes(path.read_bytes()[:-20])
    return path


def _empty_parquet(tmp: Path) -> Path:
    path = tmp / "x.parquet"
    path.write_bytes(b"")
    return path


def _zero_row_parquet(tmp: Path) -> Path:
    return save(tmp / "x.parquet", table([], [], label_type=pa.int64()))


def _truncated_arrow_file(tmp: Path) -> Path:
    path = save(tmp / "x.arrow", table(C9_X, C9_Y))
    path.write_bytes(path.read_bytes()[:-20])
    return path


def _truncated_arrow_stream(tmp: Path) -> Path:
    path = save(tmp / "x.arrows", table(C9_X, C9_Y))
    path.write_bytes(path.read_bytes()[:-40])
    return path


def _truncated_npz(tmp: Path) -> Path:
    path = tmp / "x.npz"
    np.savez(path, embeddings=HARDNEG_X, labels=HARDNEG_Y)
    path.write_bytes(path.read_bytes()[:-30])
    return path


def _npy_without_labels(tmp: Path) -> Path:
    np.save(tmp / "x.npy", HARDNEG_X)
    return tmp / "x.npy"


def _one_dimensional_npy(tmp: Path) -> Path:
    path, _ = write_npy_pair(tmp, HARDNEG_X[:, 0], LABELS)
    return path


def _empty_vectors(tmp: Path) -> Path:
    data = table([[], [], [1], [2]], LABELS)
    return save(tmp / "x.parquet", data)


def _npy_of_zero_columns(tmp: Path) -> Path:
    path, _ = write_npy_pair(tmp, np.zeros((4, 0), np.float32), LABELS)
    return path


def _embeddings_not_a_list(tmp: Path) -> Path:
    data = pa.table({"embedding": pa.array(["a", "b"]), "label": pa.array([0, 1])})
    return save(tmp / "x.parquet", data)


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (_missing, "no such file"),
        (_empty_directory, "no data files"),
        (_csv_named_parquet, "not a Parquet file"),
        (_npy_named_parquet, "named like a Parquet file but holds .npy data"),
        (_parquet_named_arrow, "named like an Arrow IPC file but holds Parquet"),
        (_truncated_parquet, "truncated"),
        (_empty_parquet, "empty"),
        (_zero_row_parquet, "no rows"),
        (_truncated_arrow_file, "truncated"),
        (_truncated_arrow_stream, "truncated"),
        (_truncated_npz, ".npz"),
        (_npy_without_labels, "no labels"),
        (_one_dimensional_npy, "2-D"),
        (_empty_vectors, "row 0, column 'embedding': embedding is empty"),
        (_npy_of_zero_columns, "at least one column"),
        (_embeddings_not_a_list, "string"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_bad_inputs(cli, tmp_path, build, says):
    path = build(tmp_path)
    line = rejected(cli, path)
    assert str(path) in line
    assert says in line


def test_file_names_are_printed_verbatim(cli, tmp_path):
    path = tmp_path / "[bold]x.npy"
    path.write_bytes(b"")
    line = rejected(cli, path)
    assert str(path) in line


def test_glob_matching_nothing(cli, tmp_path):
    line = rejected(cli, tmp_path / "*.parquet")
    assert str(tmp_path / "*.parquet") in line


def _spark_output(tmp: Path) -> Path:
    """A Spark-style output folder: part files beside bookkeeping files."""
    root = tmp / "spark"
    save(root / "part-00000.parquet", table(HARDNEG[:2], LABELS[:2]))
    # Hadoop-style: no suffix, recognised by its first bytes.
    save(root / "part-00001.parquet", table(HARDNEG[2:], LABELS[2:])).rename(
        root / "part-00001"
    )
    (root / "_SUCCESS").write_bytes(b"")
    (root / ".part-00000.parquet.crc").write_bytes(b"junk")
    (root / "part-00001.crc").write_bytes(b"junk")
    (root / "README.md").write_text("# embeddings\n")
    # A task's leftovers: data, but not to be read twice.
    save(root / "_temporary" / "0" / "part-00000.parquet", table(HARDNEG, LABELS))
    return root


@pytest.mark.parametrize("pattern", ["*", "**/*", "**", "part-*"])
def test_glob_skips_what_a_directory_skips(cli, tmp_path, pattern):
    root = _spark_output(tmp_path)
    walked = report(cli, root)
    matched = report(cli, root / pattern)
    assert (
        matched["input"]["files"]
        == walked["input"]["files"]
        == [
            str(root / "part-00000.parquet"),
            str(root / "part-00001"),
        ]
    )
    assert matched["input"]["rows"] == walked["input"]["rows"] == 4
    assert matched["results"] == walked["results"]
    assert matched["results"][0]["gap"]["mean"] == pytest.approx(5, abs=1e-6)


def test_recursive_glob_skips_a_readme(cli, tmp_path):
    root = tmp_path / "shards"
    a = save(root / "day=1" / "part-0.parquet", table(HARDNEG[:2], LABELS[:2]))
    b = save(root / "day=2" / "sub" / "part-0.parquet", table(HARDNEG[2:], LABELS[2:]))
    (root / "README.md").write_text("# shards\n")
    (root / "day=1" / "schema.json").write_text("{}\n")
    doc = report(cli, root / "**" / "*")
    assert doc["input"]["files"] == [str(a), str(b)]
    assert doc["results"][0]["gap"]["mean"] == pytest.approx(5, abs=1e-6)


def test_glob_matching_only_skipped_files(cli, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_SUCCESS").write_bytes(b"")
    (tmp_path / "out" / "README.md").write_text("# nothing yet\n")
    pattern = tmp_path / "out" / "*"
    line = rejected(cli, pattern)
    assert line.startswith(f"error: {pattern}: pattern matches no data files")
    assert "2 files skipped" in line
    assert str(tmp_path / "out" / "README.md") in line
    assert str(tmp_path / "out" / "_SUCCESS") in line
    assert "name a file explicitly" in line


def test_glob_lists_at_most_three_skipped_files(cli, tmp_path):
    for name in ("a.md", "b.md", "c.md", "d.md", "e.md"):
        (tmp_path / name).write_text("notes\n")
    line = rejected(cli, tmp_path / "*.md")
    assert str(tmp_path / "c.md") + " and 2 more" in line
    assert str(tmp_path / "d.md") not in line


@pytest.mark.parametrize(
    ("given", "says"),
    [
        # A file named in full is read, whatever its name.
        ("spark/_SUCCESS", "file is empty (0 bytes)"),
        # So is a name a pattern spells out, only its folders matched by wildcards.
        ("*/_SUCCESS", "file is empty (0 bytes)"),
        ("spark/*.crc", "pattern matches no data files (1 file skipped"),
    ],
)
def test_files_named_explicitly_are_read(cli, tmp_path, given, says):
    _spark_output(tmp_path)
    line = rejected(cli, tmp_path / given)
    assert says in line


def test_folder_a_pattern_spells_out_is_entered(cli, tmp_path):
    root = _spark_output(tmp_path)
    doc = report(cli, root / "_temporary" / "*" / "*.parquet")
    assert doc["input"]["files"] == [
        str(root / "_temporary" / "0" / "part-00000.parquet")
    ]


def test_labels_file_with_too_few_labels(cli, tmp_path):
    np.save(tmp_path / "x.npy", HARDNEG_X)
    np.save(tmp_path / "y.npy", HARDNEG_Y[:3])
    line = rejected(cli, tmp_path / "x.npy", "--labels", tmp_path / "y.npy")
    assert str(tmp_path / "x.npy") in line
    assert str(tmp_path / "y.npy") in line
    assert "4 rows" in line
    assert "3 labels" in line


def test_labels_flag_given_once_per_npy_file(cli, tmp_path):
    np.save(tmp_path / "x.npy", HARDNEG_X)
    np.save(tmp_path / "y.npy", HARDNEG_Y)
    flags = ["--labels", tmp_path / "y.npy", "--labels", tmp_path / "y.npy"]
    line = rejected(cli, tmp_path / "x.npy", *flags)
    assert "--labels was given 2 time(s) for 1 .npy" in line


def test_labels_file_that_is_not_npy(cli, tmp_path):
    np.save(tmp_path / "x.npy", HARDNEG_X)
    (tmp_path / "y.npy").write_text("0\n0\n1\n1\n")
    line = rejected(cli, tmp_path / "x.npy", "--labels", tmp_path / "y.npy")
    assert str(tmp_path / "y.npy") in line


def test_directory_of_npy_pairs(cli, tmp_path):
    # The labels file beside its embeddings is not a second embeddings input.
    write_npy_pair(tmp_path, C9_X[:4], C9_Y[:4], "a")
    write_npy_pair(tmp_path, C9_X[4:], C9_Y[4:], "b")
    doc = report(cli, tmp_path)
    assert len(doc["input"]["files"]) == 2
    result = doc["results"][0]
    assert (result["gap"]["min"], result["last_gap"]) == pytest.approx((4, 8))


@pytest.mark.parametrize("name", ["digits_pixels", "digits_trained"])
def test_sample_data_reads_the_same_from_parquet_and_npy(cli, name):
    parquet = report(cli, SAMPLE_DATA / f"{name}.parquet", batch=64)
    npy = report(cli, SAMPLE_DATA / f"{name}.embeddings.npy", batch=64)
    assert parquet["input"]["rows"] == npy["input"]["rows"] == 1797
    assert parquet["results"] == npy["results"]


# 7. Row limit and row order -------------------------------------------------------


@pytest.mark.parametrize("limit", [3, 4, 6])
def test_limit_reads_only_the_first_rows(cli, tmp_path, limit):
    save(tmp_path / "a.parquet", table(C9_X[:4], C9_Y[:4]))
    save(tmp_path / "b.parquet", table(C9_X[4:], C9_Y[4:]))
    doc = report(cli, tmp_path, "--limit", str(limit), batch=4)
    assert doc["input"]["rows_read"] == limit
    assert doc["input"]["rows"] == limit
    # The report names only the files that were read.
    read = ["a.parquet"] if limit <= 4 else ["a.parquet", "b.parquet"]
    assert [Path(f).name for f in doc["input"]["files"]] == read
    if limit == 4:
        result = doc["results"][0]
        assert result["batches"]["total"] == 1
        assert result["gap"]["mean"] == pytest.approx(4, abs=1e-6)


def test_limit_on_npy(cli, tmp_path):
    path, _ = write_npy_pair(tmp_path, C9_X, C9_Y)
    doc = report(cli, path, "--limit", "4", batch=4)
    assert doc["input"]["rows_read"] == 4
    assert doc["results"][0]["gap"]["mean"] == pytest.approx(4, abs=1e-6)


def test_files_are_read_in_sorted_path_order(cli, tmp_path):
    # Written gap-8 content first under the later name: sorted order puts the
    # gap-4 batch first whatever the creation order.
    save(tmp_path / "b.parquet", table(C9_X[4:], C9_Y[4:]))
    save(tmp_path / "a.parquet", table(C9_X[:4], C9_Y[:4]))
    for args in ([tmp_path], [tmp_path / "*.parquet"]):
        result = report(cli, *args, batch=4)["results"][0]
        assert result["last_gap"] == pytest.approx(8, abs=1e-6)
    # Paths given one by one keep the order given.
    given = report(cli, tmp_path / "b.parquet", tmp_path / "a.parquet", batch=4)
    assert given["results"][0]["last_gap"] == pytest.approx(4, abs=1e-6)


def test_batches_cross_file_boundaries(cli, tmp_path):
    # Shards of 3, 3 and 2 rows still make two batches of C9's 4 + 4 rows.
    for i, (start, stop) in enumerate(((0, 3), (3, 6), (6, 8))):
        save(tmp_path / f"p{i}.parquet", table(C9_X[start:stop], C9_Y[start:stop]))
    result = report(cli, tmp_path, batch=4)["results"][0]
    assert result["batches"]["total"] == 2
    assert (result["gap"]["min"], result["last_gap"]) == pytest.approx((4, 8))


# 8. Batching -----------------------------------------------------------------------


def _blocks(sizes, dim=3) -> list[Block]:
    blocks, start = [], 0
    for file, size in enumerate(sizes):
        rows = np.arange(start, start + size, dtype=np.int64)
        x = np.repeat(rows[:, None], dim, axis=1).astype(np.float32)
        blocks.append(Block(x, rows % 5, rows, file))
        start += size
    return blocks


@pytest.mark.parametrize(
    ("sizes", "batch_size", "expected"),
    [
        ((3, 5, 1, 7), 4, [4, 4, 4, 4]),
        ((3, 5, 1, 7), 6, [6, 6, 4]),
        ((3, 5, 1, 7), 5, [5, 5, 5, 1]),
        ((1, 1, 1), 2, [2, 1]),
        ((9,), 4, [4, 4, 1]),
        ((2, 0, 2), 3, [3, 1]),
    ],
)
def test_sequential_batches(sizes, batch_size, expected):
    batches = list(batching.sequential(iter(_blocks(sizes)), batch_size))
    assert [len(b.labels) for b in batches] == expected
    rows = np.concatenate([b.rows for b in batches])
    np.testing.assert_array_equal(rows, np.arange(sum(sizes)))
    for batch in batches:
        np.testing.assert_array_equal(batch.embeddings[:, 0], batch.rows)
        np.testing.assert_array_equal(batch.labels, batch.rows % 5)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    np.testing.assert_array_equal(np.concatenate([b.files for b in batches]), owner)


def _shuffled_rows(sizes, batch_size, seed) -> list[np.ndarray]:
    spill = batching.Spill(iter(_blocks(sizes)))
    try:
        batches = list(batching.shuffled(spill, batch_size, seed))
        for batch in batches:
            np.testing.assert_array_equal(batch.embeddings[:, 0], batch.rows)
            np.testing.assert_array_equal(batch.labels, batch.rows % 5)
        return [b.rows for b in batches]
    finally:
        spill.close()


def test_shuffled_batches_are_a_seeded_permutation():
    sizes = (3, 5, 1, 7, 20)
    first = _shuffled_rows(sizes, 8, seed=3)
    assert [len(r) for r in first] == [8, 8, 8, 8, 4]
    every = np.concatenate(first)
    np.testing.assert_array_equal(np.sort(every), np.arange(sum(sizes)))
    assert not np.array_equal(every, np.arange(sum(sizes)))

    again = _shuffled_rows(sizes, 8, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = np.concatenate(_shuffled_rows(sizes, 8, seed=4))
    assert not np.array_equal(every, other)


def test_spill_removes_its_file_when_reading_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def failing():
        yield from _blocks((3,))
        raise RuntimeError("reading failed")

    with pytest.raises(RuntimeError):
        batching.Spill(failing())
    assert not list(tmp_path.iterdir())


def test_shuffle_through_the_cli_reads_every_row(cli, tmp_path):
    path, _ = write_npy_pair(tmp_path, C9_X, C9_Y)
    doc = report(cli, path, "--shuffle", "--seed", "5", batch=8)
    assert doc["input"]["rows"] == 8
    assert doc["results"][0]["gap"]["mean"] == pytest.approx(C9_ONE_BATCH_GAP, abs=1e-6)


def test_row_checks_look_at_values_where_the_sum_of_squares_cannot_tell(tmp_path):
    # The checks clear most rows by their sum of squares; these rows are the ones
    # that sum cannot clear, so their values decide.
    rows = np.ones((7, 128), np.float32)
    rows[0] = 9e14  # every value allowed, though the sum of squares overflows 1e30
    rows[1, 5] = 2e15  # one value too large
    rows[2, 7] = np.nan
    rows[3, 9] = -np.inf
    rows[4] = 1e-30  # squares underflow to 0, yet the row is not all zeros
    rows[5] = 0.0
    rows[6, 0] = 3e38  # finite in float32, squares overflow
    emb, _ = write_npy_pair(tmp_path, rows, [0, 0, 1, 1, 2, 2, 3])
    options = ReadOptions(on_invalid="skip", need_direction=True)
    reader = Reader(sources.discover([str(emb)]), options)
    kept = np.concatenate([b.rows for b in reader.blocks()])
    np.testing.assert_array_equal(kept, [0, 4])
    assert reader.dropped == {
        "value too large": 2,
        "NaN or infinite value": 2,
        "all-zero vector (cosine)": 1,
    }


def test_flat_rows_are_found_for_snr(tmp_path):
    rows = np.array([[1, 2, 3], [4, 4, 4], [0, 0, 1e-30], [-2, -2, -2]], np.float32)
    emb, _ = write_npy_pair(tmp_path, rows, [0, 0, 1, 1])
    options = ReadOptions(on_invalid="skip", need_variance=True)
    reader = Reader(sources.discover([str(emb)]), options)
    kept = np.concatenate([b.rows for b in reader.blocks()])
    np.testing.assert_array_equal(kept, [0, 2])
    assert reader.dropped == {"zero variance (snr)": 2}


def test_skipping_every_row_says_what_was_dropped(cli, tmp_path):
    rows = np.full((4, 3), np.nan, np.float32)
    emb, _ = write_npy_pair(tmp_path, rows, [0, 0, 1, 1])
    out = cli("eval", emb, "--on-invalid", "skip")
    assert out.exit_code == 2 and out.stdout == ""
    assert "dropped all 4 (4 NaN or infinite value)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_parquet_asks_for_each_next_row_group_while_reading(tmp_path, monkeypatch):
    from distgap_cli import reading

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    path = save(tmp_path / "x.parquet", table(x, np.arange(30) % 3), row_group_size=10)
    metadata = pq.ParquetFile(path).metadata
    asked = []
    monkeypatch.setattr(
        reading.os, "posix_fadvise", lambda fd, start, n, advice: asked.append(start)
    )
    reader = Reader(sources.discover([str(path)]), ReadOptions())
    rows = np.concatenate([b.embeddings for b in reader.blocks()])
    np.testing.assert_array_equal(rows, x)
    # Groups 1 and 2 are announced, each before it is decoded; group 0 is not.
    firsts = []
    for g in (1, 2):
        column = metadata.row_group(g).column(0)
        firsts.append(
            column.dictionary_page_offset
            if column.has_dictionary_page
            else column.data_page_offset
        )
    assert asked == firsts
