"""The least a Python program pays for a cosine evaluation of a ``.npy`` file.

Starts, imports NumPy, memory-maps the embeddings, and for each batch only
normalises the rows, makes their Gram matrix and finds each row's largest
product, on one thread per core (as many batches a call as distgap takes). No
labels, no validation, no re-measured pairs, no report. ``bench/run.py`` times
it end to end beside ``distgap eval`` on the same file: what lies between the
two is what distgap's own work costs (labels, checks, exact values, report);
what lies between this and the products alone is what even a program this
bare pays for starting, reading and one pass over each product.

    python bench/ceiling.py EMBEDDINGS.npy BATCH
"""

import concurrent.futures
import os
import sys
import threading

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np


def main() -> None:
    x = np.load(sys.argv[1], mmap_mode="r")
    batch = int(sys.argv[2])
    k = max(1, (1 << 21) // (batch * max(batch, x.shape[1])))  # as distgap
    step = k * batch
    dim = x.shape[1]
    local = threading.local()  # each thread writes its products in one place

    def part(start: int) -> np.ndarray:
        rows = np.asarray(x[start : start + step], dtype=np.float32)
        rows = rows[: len(rows) // batch * batch].reshape(-1, batch, dim)
        rows = rows / np.sqrt(np.einsum("kbd,kbd->kb", rows, rows))[..., None]
        if getattr(local, "gram", None) is None:
            local.gram = np.empty((k, batch, batch), np.float32)
        gram = local.gram[: len(rows)]
        # A general product is faster above 512 rows (see NumpyOps.gram).
        left = rows.copy() if batch > 512 else rows
        np.matmul(left, np.swapaxes(rows, -1, -2), out=gram)
        return gram.argmax(axis=-1)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    with concurrent.futures.ThreadPoolExecutor(cores) as pool:
        for _ in pool.map(part, range(0, len(x), step)):
            pass


if __name__ == "__main__":
    main()
