"""``python -m vared2`` is the ``vared2`` command."""

from vared2.cli import main

main()
