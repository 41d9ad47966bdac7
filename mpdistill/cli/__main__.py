"""``python -m mpdistill.cli``: the ``mpdistill`` command, as launchers run it (``torchrun -m``,
``accelerate launch -m``)."""

from mpdistill.cli import main

if __name__ == "__main__":
    main()
