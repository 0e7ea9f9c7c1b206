"""The ``distgap`` command and ``python -m distgap_cli``."""

import sys


def run() -> None:
    """Start the command line; Ctrl-C while it is still loading exits 130."""
    try:
        from distgap_cli.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
