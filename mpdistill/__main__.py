"""``python -m mpdistill``: the same commands as the ``mpdistill`` script."""

from mpdistill.cli import main

if __name__ == "__main__":
    main()
