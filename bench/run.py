"""Throughput of ``distgap eval`` beside the bounds that limit it.

Generates its own data (float32 embeddings, 1,000 classes) as Parquet
``list<float32>`` and as ``.npy``, then measures in one run:

* end to end: the installed ``distgap eval`` command, rows per second of wall
  time (start-up included) and its peak RSS;
* the reading bound: the same files read through pyarrow / numpy, nothing computed;
* the matmul bound: the batches' Gram matrices alone, made as distgap makes
  them on the CPU (NumPy, the stacks cut into the same parts, one thread per
  core); beside it the fastest products this machine makes (the same stacks in
  compiled TensorFlow calls) and, for reference, one TensorFlow call per batch
  and a NumPy loop over the batches;
* start-up: ``--help``, a four-row evaluation, and ``import tensorflow`` alone,
  which is the floor of any evaluation.

NumPy's BLAS runs one thread here, as in ``distgap`` itself, which runs one
thread per core around it. Each figure is the median of ``--repeat`` runs.
Results are printed and written to ``bench/results/latest.json``.

    python bench/run.py                 # 1,000,000 x 128 and 100,000 x 768
    python bench/run.py --rows 200000   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# As the distgap command does: threads of its own, one BLAS thread in each.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"


def make_data(rows: int, dim: int) -> dict[str, Path]:
    """Write (or reuse) the benchmark inputs of ``rows`` x ``dim``."""
    DATA.mkdir(parents=True, exist_ok=True)
    stem = DATA / f"bench_{rows}x{dim}"
    paths = {
        "npy": Path(f"{stem}.embeddings.npy"),
        "labels": Path(f"{stem}.labels.npy"),
        "parquet": Path(f"{stem}.parquet"),
    }
    if all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1000, rows)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    x = centres[labels] + rng.normal(size=(rows, dim)).astype(np.float32)
    np.save(paths["npy"], x)
    np.save(paths["labels"], labels)
    offsets = pa.array(np.arange(0, rows * dim + 1, dim, dtype=np.int32))
    column = pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))
    table = pa.table({"embedding": column, "label": labels})
    pq.write_table(table, paths["parquet"], row_group_size=65536)
    return paths


def median_of(repeat: int, run) -> float:
    return statistics.median(run() for _ in range(repeat))


def distgap_command() -> list[str]:
    exe = Path(sys.executable).with_name("distgap")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]


def end_to_end(
    path: Path, batch: int, repeat: int, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    """Wall time and peak RSS of the real command, median of ``repeat`` runs."""
    walls, peaks = [], []
    sizing = ("-b", str(batch)) if batch else ()
    for _ in range(repeat):
        command = [
            *distgap_command(),
            "eval",
            str(path),
            *sizing,
            *extra,
            "-q",
            "-f",
            "json",
            "--device",
            "cpu",
        ]
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        peak = 0
        # ru_maxrss of a child starts from this process's own size at fork, so
        # read the child's high-water mark (which exec resets) while it runs.
        while child.poll() is None:
            peak = max(peak, _high_water_kb(child.pid))
            time.sleep(0.05)
        walls.append(time.perf_counter() - start)
        peaks.append(peak / 1024)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({child.returncode})")
    return {"seconds": statistics.median(walls), "peak_rss_mb": max(peaks)}


def _high_water_kb(pid: int) -> int:
    """VmHWM of a running process in kB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_only(paths: dict[str, Path], kind: str) -> float:
    """Seconds to read every embedding into float32 blocks, nothing computed."""
    start = time.perf_counter()
    if kind == "npy":
        x = np.load(paths["npy"], mmap_mode="r")
        for i in range(0, len(x), 65536):
            np.asarray(x[i : i + 65536], dtype=np.float32).sum()
    else:
        pf = pq.ParquetFile(paths["parquet"])
        for batch in pf.iter_batches(batch_size=65536):
            col = batch.column(0)
            col.values.to_numpy().reshape(len(col), -1).sum()
    return time.perf_counter() - start


def matmul_only(
    rows: int, dim: int, batch: int, repeat: int, stacked: bool = True
) -> float:
    """Seconds for the Gram matrices of every batch: stacked into calls as distgap
    stacks them, or one call per batch as a training loop makes them."""
    from distgap_cli.backend import tensorflow

    tf = tensorflow()
    from distgap_cli.engine import stack_size

    k = stack_size(batch, dim) if stacked else 1
    x = tf.constant(np.random.default_rng(1).normal(size=(k, batch, dim)), tf.float32)
    gram = tf.function(lambda x: tf.linalg.matmul(x, x, transpose_b=True))
    calls = -(-rows // (k * batch))
    with tf.device("/CPU:0"):
        gram(x).numpy()

        def run() -> float:
            start = time.perf_counter()
            for _ in range(calls):
                gram(x).numpy()
            return time.perf_counter() - start

        return median_of(repeat, run)


def numpy_matmul_loop(rows: int, dim: int, batch: int, repeat: int) -> float:
    """Seconds for the same Gram matrices made one batch at a time in NumPy."""
    x = np.random.default_rng(1).normal(size=(batch, dim)).astype(np.float32)
    calls = -(-rows // batch)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            x @ x.T
        return time.perf_counter() - start

    return median_of(repeat, run)


def numpy_matmul_threads(rows: int, dim: int, batch: int, repeat: int) -> float:
    """Seconds for the Gram matrices made as distgap makes them on the CPU: the
    same stacks, cut into the same parts, NumPy on one thread per core."""
    from distgap_cli.backend import NumpyRunner
    from distgap_cli.engine import stack_size

    k = stack_size(batch, dim)
    x = np.random.default_rng(1).normal(size=(k, batch, dim)).astype(np.float32)
    run_parts = NumpyRunner(
        lambda x: {"g": {"g": np.matmul(x, np.swapaxes(x, -1, -2))}},
        split=1,
        pairs=lambda x: x.shape[1] ** 2,
    )
    calls = -(-rows // (k * batch))

    def run() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            run_parts(x)
        return time.perf_counter() - start

    return median_of(repeat, run)


def exact_numpy_matmul(rows: int, dim: int, repeat: int) -> float:
    """Seconds for exact mode's tile products as distgap makes them on the CPU."""
    from distgap_cli.backend import NumpyRunner
    from distgap_cli.exact import ANCHOR_TILE, CANDIDATE_TILE

    rng = np.random.default_rng(2)
    a = rng.normal(size=(ANCHOR_TILE, dim)).astype(np.float32)
    c = rng.normal(size=(CANDIDATE_TILE, dim)).astype(np.float32)
    run_parts = NumpyRunner(
        lambda a, c: {"g": {"g": a @ c.T}}, split=1, pairs=lambda a: CANDIDATE_TILE
    )
    calls = -(-rows // ANCHOR_TILE) * -(-rows // CANDIDATE_TILE)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            run_parts(a, c)
        return time.perf_counter() - start

    return median_of(repeat, run)


def exact_matmul_only(rows: int, dim: int, repeat: int) -> float:
    """Seconds for the anchor-by-candidate tile products that exact mode makes."""
    from distgap_cli.backend import tensorflow
    from distgap_cli.exact import ANCHOR_TILE, CANDIDATE_TILE

    tf = tensorflow()
    rng = np.random.default_rng(2)
    a = tf.constant(rng.normal(size=(ANCHOR_TILE, dim)), tf.float32)
    c = tf.constant(rng.normal(size=(CANDIDATE_TILE, dim)), tf.float32)
    gram = tf.function(lambda a, c: tf.linalg.matmul(a, c, transpose_b=True))
    calls = -(-rows // ANCHOR_TILE) * -(-rows // CANDIDATE_TILE)
    with tf.device("/CPU:0"):
        gram(a, c).numpy()

        def run() -> float:
            start = time.perf_counter()
            for _ in range(calls):
                gram(a, c).numpy()
            return time.perf_counter() - start

        return median_of(repeat, run)


def startup(repeat: int) -> float:
    """Seconds ``distgap eval`` takes on four rows: import, trace, report."""
    DATA.mkdir(parents=True, exist_ok=True)
    tiny = DATA / "tiny.parquet"
    pq.write_table(
        pa.table(
            {
                "embedding": pa.array([[0.0, 1], [1, 0], [3, 1], [10, 0]]),
                "label": [0, 0, 1, 1],
            }
        ),
        tiny,
    )
    return statistics.median(end_to_end(tiny, 4, 1)["seconds"] for _ in range(repeat))


def import_time(repeat: int) -> float:
    """Seconds a fresh Python takes to ``import tensorflow``."""

    def run() -> float:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import tensorflow"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start

    return median_of(repeat, run)


def help_time(repeat: int) -> float:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run([*distgap_command(), "--help"], stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    return median_of(repeat, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--wide-rows", type=int, default=100_000)
    parser.add_argument("--exact-rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "repeat": args.repeat,
        "help_seconds": help_time(args.repeat),
        "startup_seconds": startup(args.repeat),
        "import_tensorflow_seconds": import_time(args.repeat),
        "runs": [],
    }
    for rows, dim, batches in (
        (args.rows, 128, (256, 1024)),
        (args.wide_rows, 768, (256,)),
    ):
        paths = make_data(rows, dim)
        reading = {
            k: median_of(args.repeat, lambda k=k, p=paths: read_only(p, k))
            for k in ("npy", "parquet")
        }
        for batch in batches:
            bound = matmul_only(rows, dim, batch, args.repeat)
            loop = matmul_only(rows, dim, batch, args.repeat, stacked=False)
            numpy_loop = numpy_matmul_loop(rows, dim, batch, args.repeat)
            own = numpy_matmul_threads(rows, dim, batch, args.repeat)
            for kind in ("npy", "parquet"):
                measured = end_to_end(paths[kind], batch, args.repeat)
                # Rows per second once running: the difference between the whole
                # input and its first fifth cancels start-up (import, tracing).
                fifth = rows // 5
                short = end_to_end(
                    paths[kind], batch, args.repeat, ("--limit", str(fifth))
                )
                steady = measured["seconds"] - short["seconds"]
                if steady < 0.1 * measured["seconds"]:
                    steady = math.nan  # too close to start-up noise to measure
                entry = {
                    "rows": rows,
                    "dim": dim,
                    "batch": batch,
                    "input": kind,
                    "end_to_end_rows_per_s": rows / measured["seconds"],
                    "after_startup_rows_per_s": (rows - fifth) / steady,
                    "peak_rss_mb": measured["peak_rss_mb"],
                    "read_only_rows_per_s": rows / reading[kind],
                    "matmul_as_distgap_rows_per_s": rows / own,
                    "matmul_only_rows_per_s": rows / bound,
                    "matmul_per_batch_call_rows_per_s": rows / loop,
                    "matmul_numpy_loop_rows_per_s": rows / numpy_loop,
                }
                entry["ratio_to_own_matmul"] = (
                    entry["end_to_end_rows_per_s"]
                    / entry["matmul_as_distgap_rows_per_s"]
                )
                entry["ratio_to_matmul"] = (
                    entry["end_to_end_rows_per_s"] / entry["matmul_only_rows_per_s"]
                )
                entry["after_startup_ratio_to_matmul"] = (
                    entry["after_startup_rows_per_s"] / entry["matmul_only_rows_per_s"]
                )
                entry["ratio_to_read"] = (
                    entry["end_to_end_rows_per_s"] / entry["read_only_rows_per_s"]
                )
                report["runs"].append(entry)
                print(
                    f"{rows:>9,} x {dim:<4} batch {batch:<5} {kind:<8}"
                    f" {entry['end_to_end_rows_per_s']:>10,.0f} rows/s"
                    f"  peak {entry['peak_rss_mb']:>6,.0f} MB"
                    f"  its matmuls {entry['matmul_as_distgap_rows_per_s']:>10,.0f}"
                    f" ({entry['ratio_to_own_matmul']:.0%})"
                    f"  fastest matmuls {entry['matmul_only_rows_per_s']:>10,.0f}"
                    f" ({entry['ratio_to_matmul']:.0%})"
                    f"  read bound {entry['read_only_rows_per_s']:>10,.0f}"
                    f" ({entry['ratio_to_read']:.0%})"
                    f"  after start-up {entry['after_startup_rows_per_s']:>10,.0f}"
                    f" ({entry['after_startup_ratio_to_matmul']:.0%} of matmul)"
                    f"  one matmul call per batch "
                    f"{entry['matmul_per_batch_call_rows_per_s']:>10,.0f}"
                    f"  numpy loop {entry['matmul_numpy_loop_rows_per_s']:>10,.0f}",
                    flush=True,
                )
    if args.exact_rows:
        paths = make_data(args.exact_rows, 128)
        measured = end_to_end(paths["npy"], 0, args.repeat, ("--mode", "exact"))
        bound = exact_matmul_only(args.exact_rows, 128, args.repeat)
        own = exact_numpy_matmul(args.exact_rows, 128, args.repeat)
        pairs = args.exact_rows**2
        entry = {
            "rows": args.exact_rows,
            "dim": 128,
            "mode": "exact",
            "input": "npy",
            "seconds": measured["seconds"],
            "pairs_per_s": pairs / measured["seconds"],
            "matmul_as_distgap_pairs_per_s": pairs / own,
            "matmul_only_pairs_per_s": pairs / bound,
            "peak_rss_mb": measured["peak_rss_mb"],
        }
        entry["ratio_to_own_matmul"] = (
            entry["pairs_per_s"] / entry["matmul_as_distgap_pairs_per_s"]
        )
        entry["ratio_to_matmul"] = (
            entry["pairs_per_s"] / entry["matmul_only_pairs_per_s"]
        )
        report["exact"] = entry
        print(
            f"exact {args.exact_rows:,} x 128: {measured['seconds']:.1f} s, "
            f"{entry['pairs_per_s']:,.0f} pairs/s, its matmuls "
            f"{entry['matmul_as_distgap_pairs_per_s']:,.0f} "
            f"({entry['ratio_to_own_matmul']:.0%}), fastest matmuls "
            f"{entry['matmul_only_pairs_per_s']:,.0f} "
            f"({entry['ratio_to_matmul']:.0%}), "
            f"peak {entry['peak_rss_mb']:,.0f} MB",
            flush=True,
        )
    print(
        f"distgap --help {report['help_seconds']:.2f} s; "
        f"start-up on 4 rows {report['startup_seconds']:.2f} s; "
        f"import tensorflow alone {report['import_tensorflow_seconds']:.2f} s"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
