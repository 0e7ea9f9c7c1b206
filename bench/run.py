"""Throughput of ``distgap eval`` beside the bounds that limit it.

Generates its own data (float32 embeddings, 1,000 classes) as Parquet
``list<float32>`` and as ``.npy``, then measures in one run:

* end to end: the installed ``distgap eval`` command, rows per second of wall
  time (start-up included) and its peak RSS;
* the reading bound: the same files read through pyarrow / numpy, nothing computed;
* the matmul bound: the batches' Gram matrices alone, made six ways: NumPy on
  one thread per core, each thread looping over its share of the batches into
  one output, as a symmetric product and as a general one (the products and
  nothing else); as distgap's CPU runner makes them (its stacks, parts and
  threads, a fresh output each time); one NumPy call per batch on one thread;
  the stacks in compiled TensorFlow calls; one TensorFlow call per batch, as a
  training loop makes them. The bound is the fastest of the six;
* exact mode (50,000 x 128) beside its products alone, made four ways: each
  pair of square tiles once, as distgap makes them on the CPU when every row is
  an anchor (one product gives both tiles' extremes); every anchor tile times
  every candidate tile on one thread per core, and through distgap's runner;
  the same tiles in compiled TensorFlow calls. The bound is the fastest;
* a bare program (``bench/ceiling.py``): start, read the ``.npy``, normalise,
  the products and one search per row, nothing else, end to end. It shows what
  even a program with none of distgap's work pays beside the products;
* start-up: ``--help``, a four-row evaluation, and ``import tensorflow`` alone;
* where TensorFlow sees a GPU, the same evaluations with ``--device gpu`` and
  the GPU's own stacked matmul bound.

NumPy's BLAS runs one thread here, as in ``distgap`` itself, which runs one
thread per core around it. Each figure is the median of ``--repeat`` runs, each
run after reading its input files once, so that they come from the page cache
(from a cold cache the figures would measure the disk).
Results are printed, checked against the targets below, and written to
``bench/results/latest.json``.

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

from distgap_cli.__main__ import keep_in_heap

# As the distgap command does, so that distgap's own runner is timed as it runs.
keep_in_heap()

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


def warm(*paths: Path) -> None:
    """Read files through once, so that a run after it reads the page cache,
    not the disk: figures from a cold cache measure the disk."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def ceiling(path: Path, batch: int, repeat: int) -> float:
    """Seconds ``bench/ceiling.py`` takes on ``path``: start, read, products
    and one search per row, nothing else (median of ``repeat``)."""
    command = [sys.executable, str(HERE / "ceiling.py"), str(path), str(batch)]

    def run() -> float:
        warm(path)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        return time.perf_counter() - start

    return median_of(repeat, run)


def distgap_command() -> list[str]:
    exe = Path(sys.executable).with_name("distgap")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]


def end_to_end(
    path: Path,
    batch: int,
    repeat: int,
    extra: tuple[str, ...] = (),
    device: str = "cpu",
) -> dict[str, float]:
    """Wall time and peak RSS of the real command, median of ``repeat`` runs."""
    walls, peaks = [], []
    sizing = ("-b", str(batch)) if batch else ()
    for _ in range(repeat):
        warm(*_inputs_of(path))
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
            device,
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


def _inputs_of(path: Path) -> list[Path]:
    """``path`` and the labels file distgap reads beside a ``.npy``."""
    labels = Path(str(path).replace(".embeddings.npy", ".labels.npy"))
    return [path, labels] if labels != path and labels.exists() else [path]


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
    warm(paths[kind])
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
    rows: int,
    dim: int,
    batch: int,
    repeat: int,
    stacked: bool = True,
    device: str = "/CPU:0",
) -> float:
    """Seconds for the Gram matrices of every batch in TensorFlow: stacked into
    calls as distgap stacks them, or one call per batch as a training loop
    makes them."""
    from distgap_cli.backend import tensorflow

    tf = tensorflow()
    from distgap_cli.engine import stack_size

    k = stack_size(batch, dim) if stacked else 1
    calls = -(-rows // (k * batch))
    with tf.device(device):
        x = tf.constant(
            np.random.default_rng(1).normal(size=(k, batch, dim)), tf.float32
        )
        gram = tf.function(lambda x: tf.linalg.matmul(x, x, transpose_b=True))
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
    same stacks, cut into the same parts and anchor slices, NumPy on one thread
    per core."""
    from distgap_cli.arrays import NUMPY
    from distgap_cli.backend import NumpyRunner, worker_count
    from distgap_cli.engine import stack_size

    def products(x: np.ndarray) -> dict:
        k, b, _ = x.shape
        step = NUMPY.anchor_rows(k, b)
        if step >= b:
            return {"g": {"g": NUMPY.gram(x)[:, 0]}}
        parts = [NUMPY.matmul_t(x[:, s : s + step], x) for s in range(0, b, step)]
        return {"g": {"g": parts[-1][:, 0]}}

    k = stack_size(batch, dim, worker_count())
    x = np.random.default_rng(1).normal(size=(k, batch, dim)).astype(np.float32)
    run_parts = NumpyRunner(
        products, split=1, size=lambda x: x.shape[1] * max(x.shape[1], x.shape[2])
    )
    calls = -(-rows // (k * batch))

    def run() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            run_parts(x)
        return time.perf_counter() - start

    return median_of(repeat, run)


def _on_every_core(work, repeat: int) -> float:
    """Seconds for ``work(thread)`` run at once on one thread per core (median
    of ``repeat``), each thread with its own inputs and outputs."""
    import concurrent.futures

    from distgap_cli.backend import worker_count

    threads = worker_count()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))  # warm up: BLAS buffers, pages

        def run() -> float:
            start = time.perf_counter()
            list(pool.map(work, range(threads)))
            return time.perf_counter() - start

        return median_of(repeat, run)


def numpy_products(rows: int, dim: int, batch: int, repeat: int, form: str) -> float:
    """Seconds for the batches' Gram matrices and nothing else: one thread per
    core, each looping over its share of the batches, products written into
    the same output every time. ``form`` is ``symmetric`` (the rows times
    themselves, which NumPy hands to the BLAS as a rank-k update) or
    ``general`` (a copy of the rows times the rows)."""
    from distgap_cli.backend import _PART_VALUES, worker_count

    k = max(
        1, _PART_VALUES // (batch * max(batch, dim))
    )  # batches a part, as distgap's
    calls = -(-rows // (k * batch))
    threads = worker_count()
    rng = np.random.default_rng(1)
    inputs = [
        rng.normal(size=(k, batch, dim)).astype(np.float32) for _ in range(threads)
    ]
    outputs = [np.empty((k, batch, batch), np.float32) for _ in range(threads)]

    def work(thread: int) -> None:
        x, out = inputs[thread], outputs[thread]
        rows_ = x if form == "symmetric" else x.copy()
        for _ in range(calls // threads + (thread < calls % threads)):
            np.matmul(rows_, np.swapaxes(x, -1, -2), out=out)

    return _on_every_core(work, repeat)


def exact_products(rows: int, dim: int, repeat: int) -> float:
    """Seconds for exact mode's anchor-by-candidate tile products alone, each
    tile's anchors split across one thread per core."""
    from distgap_cli.backend import worker_count
    from distgap_cli.exact import ANCHOR_TILE, CANDIDATE_TILE

    threads = worker_count()
    calls = -(-rows // ANCHOR_TILE) * -(-rows // CANDIDATE_TILE)
    share = -(-ANCHOR_TILE // threads)
    rng = np.random.default_rng(2)
    anchors = [rng.normal(size=(share, dim)).astype(np.float32) for _ in range(threads)]
    candidates = rng.normal(size=(CANDIDATE_TILE, dim)).astype(np.float32)
    outputs = [np.empty((share, CANDIDATE_TILE), np.float32) for _ in range(threads)]

    def work(thread: int) -> None:
        for _ in range(calls):
            np.matmul(anchors[thread], candidates.T, out=outputs[thread])

    return _on_every_core(work, repeat)


def exact_pair_products(rows: int, dim: int, repeat: int) -> float:
    """Seconds for the products exact mode needs on the CPU when every row is
    an anchor: each pair of its square tiles once (a tile with itself and with
    every later tile, tiles of equal rows give or take one, as distgap cuts
    them), the pairs shared out over one thread per core."""
    from distgap_cli.backend import worker_count
    from distgap_cli.exact import mutual_rows

    side = mutual_rows(dim, rows)
    count = -(-rows // side)
    sizes = [rows * (k + 1) // count - rows * k // count for k in range(count)]
    pairs = [(m, n) for i, m in enumerate(sizes) for n in sizes[i:]]
    threads = worker_count()
    rng = np.random.default_rng(2)
    # Two tiles a thread: one tile times itself would be a symmetric product.
    tiles = [rng.normal(size=(2, side, dim)).astype(np.float32) for _ in range(threads)]
    outputs = [np.empty((side, side), np.float32) for _ in range(threads)]

    def work(thread: int) -> None:
        (a, c), out = tiles[thread], outputs[thread]
        for m, n in pairs[thread::threads]:
            np.matmul(a[:m], c[:n].T, out=out.reshape(-1)[: m * n].reshape(m, n))

    return _on_every_core(work, repeat)


def exact_numpy_matmul(rows: int, dim: int, repeat: int) -> float:
    """Seconds for exact mode's tile products as distgap makes them on the CPU."""
    from distgap_cli.backend import NumpyRunner
    from distgap_cli.exact import ANCHOR_TILE, CANDIDATE_TILE

    rng = np.random.default_rng(2)
    a = rng.normal(size=(ANCHOR_TILE, dim)).astype(np.float32)
    c = rng.normal(size=(CANDIDATE_TILE, dim)).astype(np.float32)
    run_parts = NumpyRunner(
        lambda a, c: {"g": {"g": a @ c.T}},
        split=1,
        size=lambda a, c: max(CANDIDATE_TILE, dim),
    )
    calls = -(-rows // ANCHOR_TILE) * -(-rows // CANDIDATE_TILE)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            run_parts(a, c)
        return time.perf_counter() - start

    return median_of(repeat, run)


def exact_matmul_only(
    rows: int, dim: int, repeat: int, device: str = "/CPU:0"
) -> float:
    """Seconds for the anchor-by-candidate tile products that exact mode makes,
    in TensorFlow."""
    from distgap_cli.backend import tensorflow
    from distgap_cli.exact import ANCHOR_TILE, CANDIDATE_TILE

    tf = tensorflow()
    rng = np.random.default_rng(2)
    calls = -(-rows // ANCHOR_TILE) * -(-rows // CANDIDATE_TILE)
    with tf.device(device):
        a = tf.constant(rng.normal(size=(ANCHOR_TILE, dim)), tf.float32)
        c = tf.constant(rng.normal(size=(CANDIDATE_TILE, dim)), tf.float32)
        gram = tf.function(lambda a, c: tf.linalg.matmul(a, c, transpose_b=True))
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


def cpu_model() -> dict[str, object]:
    """The CPU's name and the vector extensions that decide how fast its
    products run (the same code has run 2.3 to 4.4 M rows/s on the matmul
    bound on two machines of two cores), read from ``/proc/cpuinfo``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in text.splitlines())
        if value
    )
    flags = fields.get("flags", "").split()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    return {
        "cpu_model": fields.get("model name"),
        "vector_extensions": [f for f in wanted if f in flags],
    }


def gpu_device() -> str | None:
    """``/GPU:0`` when TensorFlow sees a GPU, else None."""
    from distgap_cli.backend import _may_have_gpu, tensorflow

    if not _may_have_gpu():
        return None
    return "/GPU:0" if tensorflow().config.list_physical_devices("GPU") else None


# The targets the figures are checked against, as fractions.
BATCH_TARGET = 0.60  # batch mode, .npy, of the matmul bound
PARQUET_TARGET = 0.80  # Parquet, of the .npy figure
EXACT_TARGET = 0.60  # exact mode, of the matmul bound
PEAK_TARGET_MB = 1536  # batch mode, a million rows
HELP_TARGET_S = 0.5


def batch_runs(args: argparse.Namespace, gpu: str | None) -> list[dict]:
    """Every batch-mode figure, with its bounds and ratios."""
    runs = []
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
            bounds = {
                "numpy_symmetric": numpy_products(
                    rows, dim, batch, args.repeat, "symmetric"
                ),
                "numpy_general": numpy_products(
                    rows, dim, batch, args.repeat, "general"
                ),
                "numpy_as_distgap": numpy_matmul_threads(rows, dim, batch, args.repeat),
                "numpy_per_batch": numpy_matmul_loop(rows, dim, batch, args.repeat),
                "tensorflow_stacked": matmul_only(rows, dim, batch, args.repeat),
                "tensorflow_per_batch": matmul_only(
                    rows, dim, batch, args.repeat, stacked=False
                ),
            }
            bound_rate = {k: rows / v for k, v in bounds.items()}
            fastest = max(bound_rate, key=bound_rate.get)
            bare = rows / ceiling(paths["npy"], batch, args.repeat)
            cases = [("npy", "cpu"), ("parquet", "cpu")]
            if gpu:
                cases.append(("npy", "gpu"))
            for kind, device in cases:
                measured = end_to_end(paths[kind], batch, args.repeat, device=device)
                # Rows per second once running: the difference between the whole
                # input and its first fifth cancels start-up.
                fifth = rows // 5
                short = end_to_end(
                    paths[kind],
                    batch,
                    args.repeat,
                    ("--limit", str(fifth)),
                    device=device,
                )
                steady = measured["seconds"] - short["seconds"]
                if steady < 0.1 * measured["seconds"]:
                    steady = math.nan  # too close to start-up noise to measure
                rate = rows / measured["seconds"]
                entry = {
                    "rows": rows,
                    "dim": dim,
                    "batch": batch,
                    "input": kind,
                    "device": device,
                    "seconds": measured["seconds"],
                    "end_to_end_rows_per_s": rate,
                    "after_startup_rows_per_s": (rows - fifth) / steady,
                    "peak_rss_mb": measured["peak_rss_mb"],
                    "read_only_rows_per_s": rows / reading[kind],
                    "matmul_rows_per_s": bound_rate,
                    "matmul_bound": fastest,
                    "ratio_to_read": rate / (rows / reading[kind]),
                    "ceiling_rows_per_s": bare,
                    "ratio_to_ceiling": rate / bare,
                }
                if device == "gpu":
                    gpu_bound = rows / matmul_only(
                        rows, dim, batch, args.repeat, device=gpu
                    )
                    entry["matmul_rows_per_s"] = {"tensorflow_stacked_gpu": gpu_bound}
                    entry["matmul_bound"] = "tensorflow_stacked_gpu"
                bound = entry["matmul_rows_per_s"][entry["matmul_bound"]]
                entry["ratio_to_matmul"] = rate / bound
                entry["ceiling_ratio_to_matmul"] = bare / bound
                entry["after_startup_ratio_to_matmul"] = (
                    entry["after_startup_rows_per_s"] / bound
                )
                runs.append(entry)
                print(
                    f"{rows:>9,} x {dim:<4} batch {batch:<5} {kind:<8} {device:<4}"
                    f" {rate:>10,.0f} rows/s ({measured['seconds']:.2f} s)"
                    f"  peak {entry['peak_rss_mb']:>6,.0f} MB"
                    f"  matmul bound {bound:>10,.0f} ({entry['matmul_bound']}):"
                    f" {entry['ratio_to_matmul']:.0%}"
                    f"  after start-up {entry['after_startup_rows_per_s']:>10,.0f}"
                    f" ({entry['after_startup_ratio_to_matmul']:.0%})"
                    f"  read bound {entry['read_only_rows_per_s']:>10,.0f}"
                    f" ({entry['ratio_to_read']:.0%})"
                    f"  bare program {bare:>10,.0f}"
                    f" ({entry['ceiling_ratio_to_matmul']:.0%} of the bound)",
                    flush=True,
                )
    return runs


def exact_runs(args: argparse.Namespace, gpu: str | None) -> list[dict]:
    """Exact mode end to end beside its tile products."""
    paths = make_data(args.exact_rows, 128)
    pairs = args.exact_rows**2
    bounds = {
        "numpy_pairs_once": pairs
        / exact_pair_products(args.exact_rows, 128, args.repeat),
        "numpy_products": pairs / exact_products(args.exact_rows, 128, args.repeat),
        "numpy_as_distgap": pairs
        / exact_numpy_matmul(args.exact_rows, 128, args.repeat),
        "tensorflow": pairs / exact_matmul_only(args.exact_rows, 128, args.repeat),
    }
    runs = []
    for device in ("cpu", "gpu") if gpu else ("cpu",):
        measured = end_to_end(
            paths["npy"], 0, args.repeat, ("--mode", "exact"), device=device
        )
        if device == "gpu":
            rate = pairs / exact_matmul_only(args.exact_rows, 128, args.repeat, gpu)
            bounds = {"tensorflow_gpu": rate}
        fastest = max(bounds, key=bounds.get)
        entry = {
            "rows": args.exact_rows,
            "dim": 128,
            "mode": "exact",
            "input": "npy",
            "device": device,
            "seconds": measured["seconds"],
            "pairs_per_s": pairs / measured["seconds"],
            "matmul_pairs_per_s": dict(bounds),
            "matmul_bound": fastest,
            "ratio_to_matmul": pairs / measured["seconds"] / bounds[fastest],
            "peak_rss_mb": measured["peak_rss_mb"],
        }
        runs.append(entry)
        print(
            f"exact {args.exact_rows:,} x 128 {device}: {measured['seconds']:.2f} s, "
            f"{entry['pairs_per_s']:,.0f} pairs/s, matmul bound "
            f"{bounds[fastest]:,.0f} ({fastest}): {entry['ratio_to_matmul']:.0%}, "
            f"peak {entry['peak_rss_mb']:,.0f} MB",
            flush=True,
        )
    return runs


def targets(report: dict) -> list[dict]:
    """Each target with the figure it is checked on and whether it is met."""
    checks = []
    cpu = [r for r in report["runs"] if r["device"] == "cpu"]
    million = [r for r in cpu if r["dim"] == 128]
    for r in million:
        if r["input"] == "npy":
            checks.append(
                {
                    "target": f"batch {r['batch']} .npy >= 60% of matmul bound",
                    "measured": r["ratio_to_matmul"],
                    "met": r["ratio_to_matmul"] >= BATCH_TARGET,
                }
            )
    for r in cpu:
        if r["input"] != "parquet":
            continue
        npy = next(
            q
            for q in cpu
            if q["input"] == "npy" and (q["dim"], q["batch"]) == (r["dim"], r["batch"])
        )
        share = r["end_to_end_rows_per_s"] / npy["end_to_end_rows_per_s"]
        checks.append(
            {
                "target": f"d {r['dim']} batch {r['batch']} Parquet >= 80% of .npy",
                "measured": share,
                "met": share >= PARQUET_TARGET,
            }
        )
    for r in report["exact"]:
        if r["device"] == "cpu":
            checks.append(
                {
                    "target": "exact >= 60% of matmul bound",
                    "measured": r["ratio_to_matmul"],
                    "met": r["ratio_to_matmul"] >= EXACT_TARGET,
                }
            )
    if million and million[0]["rows"] >= 1_000_000:
        peak = max(r["peak_rss_mb"] for r in million)
        checks.append(
            {
                "target": "1M rows peak RSS < 1.5 GB",
                "measured": peak,
                "met": peak < PEAK_TARGET_MB,
            }
        )
    checks.append(
        {
            "target": "distgap --help < 0.5 s",
            "measured": report["help_seconds"],
            "met": report["help_seconds"] < HELP_TARGET_S,
        }
    )
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--wide-rows", type=int, default=100_000)
    parser.add_argument("--exact-rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    gpu = gpu_device()
    machine = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        **cpu_model(),
        "python": platform.python_version(),
        "gpu": gpu,
    }
    print(
        f"machine: {machine['cpus']} cores, {machine.get('cpu_model')}, "
        f"{' '.join(machine.get('vector_extensions', []))}, GPU: {gpu or 'none'}"
    )
    report: dict = {
        "machine": machine,
        "repeat": args.repeat,
        "help_seconds": help_time(args.repeat),
        "startup_seconds": startup(args.repeat),
        "import_tensorflow_seconds": import_time(args.repeat),
    }
    report["runs"] = batch_runs(args, gpu)
    report["exact"] = exact_runs(args, gpu) if args.exact_rows else []
    report["targets"] = targets(report)
    print(
        f"distgap --help {report['help_seconds']:.2f} s; "
        f"start-up on 4 rows {report['startup_seconds']:.2f} s; "
        f"import tensorflow alone {report['import_tensorflow_seconds']:.2f} s"
    )
    for check in report["targets"]:
        mark = "met" if check["met"] else "NOT met"
        print(f"target {check['target']}: {check['measured']:.3g} ({mark})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
