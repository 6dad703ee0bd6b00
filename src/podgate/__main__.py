"""``python -m podgate`` is the ``podgate`` command."""

from podgate.cli.main import main

main()
