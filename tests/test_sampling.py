"""Batch composition: sequential, shuffled and class-balanced samplers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distgap_cli import batching
from distgap_cli.reading import Block

from .conftest import SAMPLE_DATA, write_parquet

PIXELS = SAMPLE_DATA / "digits_pixels.parquet"


def _spill(labels, dim=3):
    labels = np.asarray(labels, np.int64)
    x = np.arange(len(labels) * dim, dtype=np.float32).reshape(len(labels), dim)
    block = Block(x, labels, np.arange(len(labels), dtype=np.int64), 0)
    return batching.Spill([block])


def test_balanced_batches_hold_c_classes_of_e_rows():
    labels = np.repeat(np.arange(6), [5, 6, 7, 8, 9, 10])
    spill = _spill(labels)
    try:
        plan, batches = batching.balanced(spill, 3, 4, 20, seed=1)
        assert (plan.classes, plan.small_classes, plan.batches) == (6, [], 20)
        drawn = list(batches)
        assert len(drawn) == 20
        for batch in drawn:
            classes, counts = np.unique(batch.labels, return_counts=True)
            assert len(classes) == 3 and set(counts) == {4}
            # Without replacement inside a batch: no row twice.
            assert len(np.unique(batch.rows)) == 12
            # Rows and labels stay paired; embeddings are the rows' own.
            np.testing.assert_array_equal(labels[batch.rows], batch.labels)
            np.testing.assert_array_equal(batch.embeddings[:, 0], batch.rows * 3)
    finally:
        spill.close()


def test_small_classes_give_all_their_rows_and_never_a_row_twice():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    spill = _spill(labels)
    try:
        plan, batches = batching.balanced(spill, 4, 3, None, seed=0)
        assert plan.small_classes == [1, 3]
        assert plan.batches == 1  # 11 rows, 12 per batch: about once each
        for batch in batches:
            assert sorted(batch.rows[batch.labels == 1]) == [4, 5]
            assert list(batch.rows[batch.labels == 3]) == [10]
            assert len(np.unique(batch.rows)) == len(batch.rows)
    finally:
        spill.close()


def test_a_single_row_class_gets_no_made_up_positive(cli, tmp_path):
    x = np.array([[0, 0], [0, 1], [5, 0], [5, 1], [5, 2], [9, 9], [-9, 9]], "f4")
    labels = ["a", "a", "b", "b", "b", "c", "d"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "s.parquet"
    pq.write_table(
        pa.table(
            {"embedding": pa.array(x.tolist(), pa.list_(pa.float32())), "label": labels}
        ),
        path,
    )
    out = cli(
        "eval",
        path,
        "--sampler",
        "balanced",
        "--classes-per-batch",
        "4",
        "--examples-per-class",
        "2",
        "--batches",
        "3",
        "-d",
        "l2",
        "-f",
        "json",
    )
    assert out.exit_code == 0, out.stderr
    assert "c, d" in out.stderr and "no positive" in out.stderr
    result = json.loads(out.stdout)["results"][0]
    # Every batch holds a, b, c, d: 2 + 2 + 1 + 1 rows, 4 anchors with a positive.
    assert result["rows"] == 3 * 6
    assert result["anchors"]["with_positive"] == 3 * 4


def test_same_seed_same_batches_other_seed_other_batches():
    labels = np.repeat(np.arange(10), 10)
    spill = _spill(labels)
    try:

        def rows(seed):
            return [b.rows.tolist() for b in batching.balanced(spill, 4, 3, 5, seed)[1]]

        assert rows(7) == rows(7)
        assert rows(7) != rows(8)
    finally:
        spill.close()


def test_too_few_classes(cli):
    out = cli(
        "eval",
        PIXELS,
        "--sampler",
        "balanced",
        "--classes-per-batch",
        "11",
        "--examples-per-class",
        "2",
    )
    assert out.exit_code == 2 and "has 10 classes" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "balanced"], "--classes-per-batch C"),
        (
            [
                "--sampler",
                "balanced",
                "--classes-per-batch",
                "4",
                "--examples-per-class",
                "4",
                "-b",
                "32",
            ],
            "contradicts",
        ),
        (["--classes-per-batch", "4"], "needs --sampler balanced"),
        (["--shuffle", "--sampler", "balanced"], "contradict"),
        (["--no-shuffle", "--sampler", "shuffle"], "--no-shuffle and --sampler"),
    ],
)
def test_sampler_usage_errors(cli, args, message):
    out = cli("eval", PIXELS, *args)
    assert out.exit_code == 2 and message in out.stderr


def test_balanced_sample_data_gives_every_anchor_both_pairs(cli):
    args = (
        "eval",
        PIXELS,
        "--sampler",
        "balanced",
        "--classes-per-batch",
        "8",
        "--examples-per-class",
        "4",
        "-f",
        "json",
        "--seed",
        "5",
    )
    out = cli(*args)
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["batch_health"] == {
        "mean_rows_per_class": 4.0,
        "anchors_with_positive": 1.0,
        "anchors_with_negative": 1.0,
    }
    result = doc["results"][0]
    assert result["batches"]["total"] == result["batches"]["used"] == 57
    assert result["rows"] == 57 * 32
    assert doc["settings"]["sampler"] == "balanced"
    assert doc["settings"]["batch_size"] == 32
    assert cli(*args).stdout == out.stdout


def test_singleton_batches_warn_about_health(cli, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(400) // 2  # pairs of rows, 200 classes
    order = rng.permutation(400)
    path = write_parquet(
        tmp_path / "pairs.parquet", rng.normal(size=(400, 4)), labels[order]
    )
    out = cli("eval", path, "-b", "16")
    assert out.exit_code == 0
    assert "rows per class on average" in out.stderr
    assert "--sampler balanced" in out.stderr
    fixed = cli(
        "eval",
        path,
        "--sampler",
        "balanced",
        "--classes-per-batch",
        "8",
        "--examples-per-class",
        "2",
    )
    assert fixed.exit_code == 0 and "rows per class" not in fixed.stderr


@pytest.mark.parametrize("split_files", [False, True])
def test_sequential_batches_cut_rows_in_read_order(split_files):
    # Blocks of every size around the batch size, from three files: the
    # batches hold every row once, in order, batch_size at a time (a file's
    # last batch may be short when files are split).
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 30, 40)
    files = np.repeat([0, 1, 2], [13, 13, 14])
    start, blocks = 0, []
    for size, file in zip(sizes, files, strict=True):
        rows = np.arange(start, start + size)
        x = rows[:, None].astype(np.float32) * [1, -1]
        blocks.append(Block(x, rows % 7, rows, int(file)))
        start += size
    batches = list(batching.sequential(blocks, 8, split_files=split_files))

    rows = np.concatenate([b.rows for b in batches])
    np.testing.assert_array_equal(rows, np.arange(start))
    file_of_row = np.repeat(files, sizes)
    for b in batches:
        np.testing.assert_array_equal(b.embeddings[:, 0], b.rows)
        np.testing.assert_array_equal(b.labels, b.rows % 7)
        np.testing.assert_array_equal(b.files, file_of_row[b.rows])
    if split_files:
        assert all(len(set(b.files.tolist())) == 1 for b in batches)
        ends = np.flatnonzero(np.diff(file_of_row)) + 1
        cuts = np.cumsum([len(b.rows) for b in batches])
        assert set(ends.tolist()) <= set(cuts.tolist())
        for b in batches:
            last_of_file = b.rows[-1] + 1 in set(ends.tolist()) | {start}
            assert len(b.rows) == 8 or last_of_file
    else:
        assert [len(b.rows) for b in batches[:-1]] == [8] * (len(batches) - 1)
