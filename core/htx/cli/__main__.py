"""``python -m htx.cli``: the same as the ``htx`` command."""

from htx.cli import main

main()
