"""``python -m distgap_cli`` runs the command line."""

from distgap_cli.cli import main

if __name__ == "__main__":
    main()
