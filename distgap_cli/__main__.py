"""The ``distgap`` command and ``python -m distgap_cli``."""

import os
import signal
import sys

# distgap runs one NumPy thread per core (distgap_cli.backend.NumpyRunner); the
# matrix products inside each must not start threads of their own. Read by
# OpenBLAS and MKL as NumPy loads; a value the user set is kept.
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# glibc's mallopt parameters and the values distgap sets (see keep_in_heap).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
_TRIM_THRESHOLD = 256 << 20


def keep_in_heap() -> None:
    """Serve allocations up to 32 MB from malloc's heap, and keep freed memory
    there for reuse (up to 256 MB).

    The core makes a few [K, A, B] temporaries of a few megabytes per stack.
    glibc maps allocations over its threshold afresh from the kernel and
    unmaps them on free, so each one pays a page fault per 4 kB page touched:
    on a 2-core AVX2 machine that made up half the time of a batch of 256.
    Nothing happens outside glibc (macOS, Windows, musl) or when the user set
    the thresholds through the ``MALLOC_*_`` environment variables.
    """
    if not sys.platform.startswith("linux"):
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _terminated(signum: int, frame: object) -> None:
    from distgap_cli.errors import Terminated

    raise Terminated


def run() -> None:
    """Start the command line; Ctrl-C while it is still loading exits 130,
    SIGTERM 143 (both remove distgap's temporary files on the way out)."""
    for name in _BLAS_THREADS:
        os.environ.setdefault(name, "1")
    keep_in_heap()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from distgap_cli.cli import main
    except KeyboardInterrupt as exc:
        terminated = type(exc).__name__ == "Terminated"
        said = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
        sys.stderr.write(said + "\n")
        sys.exit(143 if terminated else 130)
    main()


if __name__ == "__main__":
    run()
