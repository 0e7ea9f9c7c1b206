"""Regenerate distgap's bundled sample data from scikit-learn's digits set.

Writes two embedding sets for the 1,797 8x8 handwritten digits that ship with
scikit-learn, each as a Parquet file and as a pair of ``.npy`` files:

* ``digits_pixels``: the 64 raw pixel values per image, scaled to ``[0, 1]``.
* ``digits_trained``: 16-dimensional, L2-normalised embeddings from a small
  Keras model trained with a batch-hard triplet loss on cosine distance.

Rows keep the dataset's original order in every file, so the labels of the two
sets are identical. Training is seeded and uses deterministic TensorFlow ops, so
rerunning the script on the same machine and software versions gives
byte-identical files.

Usage::

    python sample_data/make_sample_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Sends the process's standard error (file descriptor 2) to the null device.

    TensorFlow logs a few lines from C++ while it loads, before its logging is
    set up, and ``TF_CPP_MIN_LOG_LEVEL`` does not silence those; Python
    exceptions still propagate and are reported after the block ends.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
with _stderr_silenced():
    import keras
    import tensorflow as tf

SEED = 0
EMBEDDING_DIM = 16
CLASSES_PER_BATCH = 8
EXAMPLES_PER_CLASS = 8
TRAIN_STEPS = 4000
LEARNING_RATE = 1e-3
MARGIN = 0.2
ROW_GROUP_SIZE = 512


def load_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Loads the digits as scaled pixel vectors in the dataset's original order.

    Returns:
        A pair ``(pixels, labels)``: ``pixels`` is float32 of shape ``[n, 64]``
        with values in ``[0, 1]`` and ``labels`` is int64 of shape ``[n]``.
    """
    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    return pixels, labels


def build_model(input_dim: int) -> keras.Model:
    """Builds the embedding model: a small MLP whose outputs lie on the unit sphere.

    Args:
        input_dim: Number of input features.

    Returns:
        An uncompiled Keras model mapping ``[n, input_dim]`` to
        ``[n, EMBEDDING_DIM]`` unit-length embeddings.
    """
    return keras.Sequential(
        [
            keras.Input(shape=(input_dim,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(EMBEDDING_DIM),
            keras.layers.UnitNormalization(),
        ],
        name="digits_embedder",
    )


def batch_hard_triplet_loss(
    labels: tf.Tensor, embeddings: tf.Tensor, margin: float
) -> tf.Tensor:
    """Computes the batch-hard triplet loss on cosine distance.

    For each anchor, the hardest positive is the farthest item with the same
    label and the hardest negative is the closest item with a different label.

    Args:
        labels: int64 labels of shape ``[b]``.
        embeddings: Unit-length float32 embeddings of shape ``[b, d]``.
        margin: How much closer the hardest positive must be than the hardest
            negative before an anchor stops contributing to the loss.

    Returns:
        Scalar mean over anchors of ``relu(hardest_pos - hardest_neg + margin)``.
    """
    distances = 1.0 - tf.matmul(embeddings, embeddings, transpose_b=True)
    same_label = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    positive = tf.logical_and(same_label, not_self)
    negative = tf.logical_not(same_label)

    # Cosine distances lie in [0, 2], so -1 and 3 never win the max and the min.
    hardest_pos = tf.reduce_max(tf.where(positive, distances, -1.0), axis=1)
    hardest_neg = tf.reduce_min(tf.where(negative, distances, 3.0), axis=1)
    return tf.reduce_mean(tf.nn.relu(hardest_pos - hardest_neg + margin))


def sample_batch(
    rng: np.random.Generator, rows_by_class: list[np.ndarray]
) -> np.ndarray:
    """Draws the row indices of one class-balanced batch.

    Args:
        rng: Source of randomness.
        rows_by_class: For each class, the indices of its rows.

    Returns:
        ``CLASSES_PER_BATCH * EXAMPLES_PER_CLASS`` row indices: distinct classes,
        each with distinct rows, so every anchor has a positive and a negative.
    """
    classes = rng.choice(len(rows_by_class), CLASSES_PER_BATCH, replace=False)
    return np.concatenate(
        [
            rng.choice(rows_by_class[c], EXAMPLES_PER_CLASS, replace=False)
            for c in classes
        ]
    )


def train_embeddings(pixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Trains the embedding model on every row and embeds every row.

    Args:
        pixels: float32 inputs of shape ``[n, 64]``.
        labels: int64 labels of shape ``[n]``.

    Returns:
        float32 embeddings of shape ``[n, EMBEDDING_DIM]``, in the input order.
    """
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(SEED)

    model = build_model(pixels.shape[1])
    optimizer = keras.optimizers.Adam(learning_rate=LEARNING_RATE)
    rows_by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = batch_hard_triplet_loss(y, model(x, training=True), MARGIN)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    for _ in range(TRAIN_STEPS):
        rows = sample_batch(rng, rows_by_class)
        train_step(tf.constant(pixels[rows]), tf.constant(labels[rows]))

    return np.asarray(model(pixels, training=False), dtype=np.float32)


def write_set(
    out_dir: Path, name: str, embeddings: np.ndarray, labels: np.ndarray
) -> None:
    """Writes one embedding set as Parquet and as a pair of ``.npy`` files.

    Args:
        out_dir: Folder to write into.
        name: Stem of the file names.
        embeddings: float32 embeddings of shape ``[n, d]``.
        labels: int64 labels of shape ``[n]``.
    """
    rows, dim = embeddings.shape
    offsets = np.arange(0, rows * dim + 1, dim, dtype=np.int32)
    column = pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.array(embeddings.reshape(-1), type=pa.float32()),
        type=pa.list_(pa.float32()),
    )
    table = pa.table({"embedding": column, "label": pa.array(labels, pa.int64())})

    outputs = [
        (out_dir / f"{name}.parquet", dim),
        (out_dir / f"{name}.embeddings.npy", dim),
        (out_dir / f"{name}.labels.npy", None),
    ]
    pq.write_table(table, outputs[0][0], row_group_size=ROW_GROUP_SIZE)
    np.save(outputs[1][0], embeddings)
    np.save(outputs[2][0], labels)
    for path, shown_dim in outputs:
        detail = f"dim {shown_dim}" if shown_dim is not None else "labels"
        print(f"wrote {path}: {rows} rows, {detail}")


def main(argv: list[str] | None = None) -> None:
    """Parses the command line, builds both embedding sets and writes them.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder to write the files into (default: this script's folder)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    pixels, labels = load_pixels()
    write_set(args.out, "digits_pixels", pixels, labels)

    start = time.perf_counter()
    trained = train_embeddings(pixels, labels)
    print(f"trained {TRAIN_STEPS} steps in {time.perf_counter() - start:.1f} s")
    write_set(args.out, "digits_trained", trained, labels)


if __name__ == "__main__":
    main()
