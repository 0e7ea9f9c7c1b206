"""The ``distgap`` command and ``python -m distgap_cli``."""

import os
import sys

# distgap runs one NumPy thread per core (distgap_cli.backend.NumpyRunner); the
# matrix products inside each must not start threads of their own. Read by
# OpenBLAS and MKL as NumPy loads; a value the user set is kept.
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run() -> None:
    """Start the command line; Ctrl-C while it is still loading exits 130."""
    for name in _BLAS_THREADS:
        os.environ.setdefault(name, "1")
    try:
        from distgap_cli.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
