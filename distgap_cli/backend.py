"""Where the core runs: NumPy threads on the CPU, TensorFlow on a GPU.

A :class:`Runner` calls a function written against :mod:`distgap_cli.arrays` on
stacks of NumPy arrays and returns NumPy arrays. On the CPU (:class:`NumpyRunner`)
it splits the stack across threads, one per core, and computes with NumPy, so a
command-line run never pays for TensorFlow's start-up (seconds). On a GPU
(:class:`TensorFlowRunner`) it calls the function compiled with ``tf.function``,
placed on the device.

TensorFlow is imported here and only here, on first use, so that ``distgap --help``
and input errors never wait for it, and its C++ start-up logging (CUDA probing,
oneDNN notices) stays off a user's terminal.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from distgap_cli.errors import DeviceError, UsageError

_tf: Any = None
_keras: Any = None

# Read by TensorFlow's C++ logging as it loads. Set when this module is imported,
# before distgap starts its reader thread: changing the environment while another
# thread may read it is not safe.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def tensorflow() -> Any:
    """Return the ``tensorflow`` module, importing it quietly the first time."""
    global _tf
    if _tf is None:
        # absl writes its start-up lines straight to file descriptor 2 before
        # TF_CPP_MIN_LOG_LEVEL is read, so hold stderr shut while TensorFlow loads
        # and probes for devices; Python errors are still raised as usual.
        with _stderr_silenced():
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        tf.get_logger().setLevel("ERROR")
        _tf = tf
    return _tf


def keras() -> Any:
    """Return the ``keras`` module, importing it (and TensorFlow) quietly."""
    global _keras
    if _keras is None:
        tensorflow()
        with _stderr_silenced():
            import keras as module
        _keras = module
    return _keras


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration of the block."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def parse_device(spec: str) -> tuple[str, int | None]:
    """Split ``auto``, ``cpu``, ``gpu`` or ``gpu:N`` into a kind and an index."""
    text = spec.strip().lower()
    if text in ("auto", "cpu", "gpu"):
        return text, None
    if text.startswith("gpu:") and text[4:].isdigit():
        return "gpu", int(text[4:])
    raise UsageError(
        f"unknown device {spec!r}; expected auto, cpu, gpu or gpu:N (N a GPU index)"
    )


def _may_have_gpu() -> bool:
    """False when no GPU can be visible to TensorFlow, found without importing it.

    On Linux TensorFlow reaches NVIDIA GPUs through ``/dev/nvidia*`` and AMD ones
    through ``/dev/kfd``; without those device files there is nothing to ask it.
    Elsewhere only TensorFlow can tell.
    """
    if not sys.platform.startswith("linux"):
        return True
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def resolve_device(spec: str) -> str:
    """Turn a ``--device`` value into a TensorFlow device name such as ``/GPU:0``.

    ``auto`` is the first GPU when TensorFlow sees one, else the CPU; it imports
    TensorFlow only where a GPU may be there.

    Raises:
        DeviceError: when a GPU is asked for and TensorFlow sees none (or not that one).
    """
    kind, index = parse_device(spec)
    if kind == "cpu" or (kind == "auto" and not _may_have_gpu()):
        return "/CPU:0"
    gpus = tensorflow().config.list_physical_devices("GPU")
    if kind == "auto":
        return "/GPU:0" if gpus else "/CPU:0"
    wanted = index or 0
    if wanted >= len(gpus):
        seen = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
        raise DeviceError(
            f"--device {spec}: TensorFlow sees {seen}; use --device cpu or auto"
        )
    return f"/GPU:{wanted}"


def worker_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
# Values in one part's [B, B] temporaries or rows on the CPU (2M: 8 MB of
# float32).
_PART_VALUES = 1 << 21


def pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads, one per core, that CPU work is split across."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(
            worker_count(), thread_name_prefix="distgap-core"
        )
    return _POOL


Results = dict[str, dict[str, np.ndarray]]


class NumpyRunner:
    """Calls ``fn`` with NumPy arrays, its stack split across one thread per core.

    The first ``split`` arguments are cut along their first axis into parts, at
    least one per thread; the others go whole to every part. ``size(*args)`` is
    how many values one item of the split axis holds at most: its ``[B, B]``
    temporaries or its rows, whichever are larger.
    ``fn`` returns a dict of dicts of arrays whose first axis follows the split;
    the parts are joined back. NumPy releases the GIL in the matrix products and
    the passes over them, so the threads run in parallel. Each thread's matrix
    products should then be single-threaded: the command line sets
    ``OPENBLAS_NUM_THREADS=1`` before NumPy loads.
    """

    device = "/CPU:0"

    def __init__(
        self, fn: Callable[..., Results], split: int, size: Callable[..., int]
    ) -> None:
        self._compute = fn
        self._split = split
        self._size = size

    def _fn(self, *args: np.ndarray) -> Results:
        # inf - inf and 0 / 0 make the NaNs the core means (no pair, no value).
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._compute(*args)

    def __call__(self, *args: np.ndarray) -> Results:
        """``fn`` over the whole stack."""
        parts = self._parts(args)
        if parts <= 1:
            return self._fn(*args)
        pieces = [np.array_split(a, parts) for a in args[: self._split]]
        shared = args[self._split :]
        futures = [
            pool().submit(self._fn, *(p[i] for p in pieces), *shared)
            for i in range(parts)
        ]
        outs = [f.result() for f in futures]
        return {
            key: {name: np.concatenate([o[key][name] for o in outs]) for name in value}
            for key, value in outs[0].items()
        }

    def _parts(self, args: tuple[np.ndarray, ...]) -> int:
        """How many parts to cut a stack into: one per core at least, more while
        a part would hold more than ``_PART_VALUES`` values (in its ``[B, B]``
        temporaries, or in its rows where they are larger).

        Each part costs some hundred NumPy calls, so parts should be large;
        their temporaries are reused from malloc's heap (see
        ``distgap_cli.__main__.keep_in_heap``) up to 32 MB, so 8 MB ones cost
        no page faults. Exact mode, a 1,024 x 4,096 tile a call: 12.0 CPU
        seconds for 50,000 rows at 2M values a part (two parts), 16.2 at 512k
        (eight). Batch mode, one thread, batch 256: at d = 128, 32 batches a
        part ran 440-560k rows/s where 8 ran 300-330k; at d = 768, the rows
        bound a part to 10 batches, and 32 (whose anchors the core then
        slices, giving up the symmetric product) ran 80-95k rows/s where 8 or
        16 ran 105-125k.
        """
        stacked = len(args[0])
        by_size = -(-stacked * self._size(*args) // _PART_VALUES)
        return max(1, min(stacked, max(worker_count(), by_size)))


class TensorFlowRunner:
    """Calls ``fn`` compiled with ``tf.function`` on a TensorFlow device."""

    def __init__(
        self, fn: Callable[..., Any], device: str, signature: list[Any] | None = None
    ) -> None:
        tf = tensorflow()
        self.device = device
        self._tf = tf
        if signature is None:
            self._fn = tf.function(fn, reduce_retracing=True, autograph=False)
        else:
            self._fn = tf.function(fn, input_signature=signature, autograph=False)

    def __call__(self, *args: np.ndarray) -> Results:
        """``fn`` over the whole stack, as NumPy arrays."""
        with self._tf.device(self.device):
            out = self._fn(*args)
        return {
            key: {name: v.numpy() for name, v in value.items()}
            for key, value in out.items()
        }


Runner = NumpyRunner | TensorFlowRunner


def runner(
    fn: Callable[..., Any],
    device: str,
    split: int,
    size: Callable[..., int],
    signature: Callable[[Any], list[Any]] | None = None,
    library: str = "auto",
) -> Runner:
    """A runner of ``fn`` for a ``--device`` value: NumPy threads on the CPU,
    TensorFlow on a GPU (or on the CPU too, with ``library="tensorflow"``).
    ``split`` and ``size`` are as for :class:`NumpyRunner`; ``signature(tf)``,
    when given, fixes the compiled function's input signature."""
    placed = resolve_device(device)
    if placed == "/CPU:0" and library != "tensorflow":
        return NumpyRunner(fn, split, size)
    spec = signature(tensorflow()) if signature is not None else None
    return TensorFlowRunner(fn, placed, spec)
