"""NumPy on the CPU and TensorFlow agree: the same core, two array libraries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from distgap_cli import arrays, backend
from distgap_cli.distances import Distance
from distgap_cli.engine import BatchEvaluator
from distgap_cli.exact import ANCHOR_TILE, CANDIDATE_TILE, ExactEvaluator

from .conftest import ROOT

DISTANCES = list(Distance)


def _stack(k, b, d, seed=0, classes=6, padded=True):
    """A stack of random batches, the last one padded like a short final batch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, (k, b))
    x = (rng.normal(size=(k, b, d)) * 2 + 1).astype(np.float32)
    mask = np.ones((k, b), bool)
    if padded:
        mask[-1, b // 3 :] = False
        x[-1, b // 3 :] = 0.0
        labels[-1, b // 3 :] = 0
    return labels, x, mask


def _assert_same(got, want, distance):
    for name in (
        "anchors",
        "anchors_with_pos",
        "anchors_with_neg",
        "anchors_with_both",
    ):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ("max_pos", "min_neg", "gap", "margin"):
        np.testing.assert_allclose(
            got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=f"{distance} {name}"
        )
    for name in ("sum_hardest_pos", "sum_hardest_neg"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
    # Violations compare two floats; a near-tie may fall either way.
    assert np.abs(got["violations"] - want["violations"]).max() <= 1


@pytest.mark.parametrize("distance", DISTANCES, ids=[d.value for d in DISTANCES])
def test_batch_mode_numpy_matches_tensorflow(distance, monkeypatch):
    # Small parts and anchor slices, so the split and the slicing both happen.
    monkeypatch.setattr(backend, "_PART_VALUES", 3 * 48 * 48)
    monkeypatch.setattr(arrays, "_ANCHOR_PAIRS", 3 * 48 * 10)
    labels, x, mask = _stack(k=9, b=48, d=7, seed=distance.value.__len__())
    on_numpy = BatchEvaluator([distance], "cpu", per_anchor=True)
    on_tf = BatchEvaluator([distance], "cpu", per_anchor=True, library="tensorflow")
    assert isinstance(on_numpy._run, backend.NumpyRunner)
    assert isinstance(on_tf._run, backend.TensorFlowRunner)
    got = on_numpy(labels, x, mask)[distance]
    want = on_tf(labels, x, mask)[distance]
    _assert_same(got, want, distance)
    np.testing.assert_allclose(
        got["anchor_hardest_pos"], want["anchor_hardest_pos"], rtol=2e-5, atol=2e-6
    )
    agree = got["anchor_neg_index"] == want["anchor_neg_index"]
    assert agree.mean() > 0.99  # the same partner, bar float near-ties


@pytest.mark.parametrize(
    ("k", "b", "d", "parts"),
    [
        (64, 256, 128, 2),  # 32 batches of 256 x 256 products a part
        (42, 256, 768, 4),  # 256 x 768 rows outweigh the products: 10 a part
        (16, 1024, 128, 8),  # 2 of 1,024 x 1,024
        (3, 256, 128, 1),  # a small stack is one part (on one core)
        (3, 2048, 128, 3),  # never less than a batch a part
    ],
)
def test_parts_hold_the_larger_of_products_and_rows(monkeypatch, k, b, d, parts):
    monkeypatch.setattr(backend, "worker_count", lambda: 1)
    evaluator = BatchEvaluator([Distance.COSINE], "cpu")
    stack = (np.zeros((k, b), np.int64), np.zeros((k, b, d), np.float32), None)
    assert evaluator._run._parts(stack) == parts


def test_anchor_slices_bound_the_differences_at_a_high_dimension(monkeypatch):
    ops = arrays.NumpyOps()
    assert ops.anchor_rows(1, 64, 1_000_000) == 8  # 8 x 2 x 1M values: 64 MB
    assert ops.anchor_rows(10, 256, 768) >= 256  # whole batches at d = 768
    assert ops.anchor_rows(4, 1024, 128) == 512  # by the products: 2M values
    labels, x, mask = _stack(k=3, b=40, d=9, seed=5)
    whole = BatchEvaluator([Distance.SNR], "cpu", per_anchor=True)(labels, x, mask)
    monkeypatch.setattr(arrays, "_DIFFERENCE_VALUES", 3 * 2 * 9 * 7)  # 7 anchors
    assert ops.anchor_rows(3, 40, 9) == 7
    cut = BatchEvaluator([Distance.SNR], "cpu", per_anchor=True)(labels, x, mask)
    for name, value in whole[Distance.SNR].items():
        np.testing.assert_allclose(cut[Distance.SNR][name], value, rtol=1e-6)


def test_parts_and_slices_change_nothing(monkeypatch):
    labels, x, mask = _stack(k=8, b=64, d=5, seed=3)
    whole = BatchEvaluator([Distance.EUCLIDEAN], "cpu")(labels, x, mask)
    monkeypatch.setattr(backend, "_PART_VALUES", 64 * 64)
    monkeypatch.setattr(arrays, "_ANCHOR_PAIRS", 64 * 7)
    cut = BatchEvaluator([Distance.EUCLIDEAN], "cpu")(labels, x, mask)
    for name, value in whole[Distance.EUCLIDEAN].items():
        np.testing.assert_allclose(cut[Distance.EUCLIDEAN][name], value, rtol=1e-6)


@pytest.mark.parametrize(
    "distance", [Distance.COSINE, Distance.EUCLIDEAN, Distance.INNER_PRODUCT]
)
def test_exact_tiles_numpy_matches_tensorflow(distance):
    rng = np.random.default_rng(5)
    d = 6
    a = rng.normal(size=(ANCHOR_TILE, d)).astype(np.float32)
    c = rng.normal(size=(CANDIDATE_TILE, d)).astype(np.float32)
    a_labels = rng.integers(0, 20, ANCHOR_TILE)
    c_labels = rng.integers(0, 20, CANDIDATE_TILE)
    a_ids = np.arange(ANCHOR_TILE, dtype=np.int64)
    c_ids = np.arange(CANDIDATE_TILE, dtype=np.int64)
    c_mask = np.arange(CANDIDATE_TILE) < CANDIDATE_TILE - 100
    args = (a, a_labels, a_ids, c, c_labels, c_ids, c_mask)
    got = ExactEvaluator([distance], "cpu", d)(*args)[distance]
    want = ExactEvaluator([distance], "cpu", d, library="tensorflow")(*args)[distance]
    for name in ("max_pos", "min_neg", "nearest_pos", "nearest_neg"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6)
    assert (got["nearest_neg_index"] == want["nearest_neg_index"]).mean() > 0.99


@pytest.mark.slow
def test_a_cpu_evaluation_never_imports_tensorflow():
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from distgap_cli.cli import app\n"
        "result = CliRunner().invoke(app, ['eval', sys.argv[1], '-q', '-f', 'json',"
        " '--device', 'cpu'])\n"
        "print(result.exit_code, 'tensorflow' in sys.modules)\n"
    )
    sample = ROOT / "sample_data" / "digits_trained.parquet"
    done = subprocess.run(
        [sys.executable, "-c", script, str(sample)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["0", "False"]
