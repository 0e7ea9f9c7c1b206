"""Importing TensorFlow quietly and placing work on a device.

TensorFlow is imported here and only here, on first use, so that ``distgap --help``
and input errors never wait for it, and its C++ start-up logging (CUDA probing,
oneDNN notices) stays off a user's terminal.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

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


def resolve_device(spec: str) -> str:
    """Turn a ``--device`` value into a TensorFlow device name such as ``/GPU:0``.

    Raises:
        DeviceError: when a GPU is asked for and TensorFlow sees none (or not that one).
    """
    kind, index = parse_device(spec)
    if kind == "cpu":
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
