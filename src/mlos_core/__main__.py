"""``python -m mlos_core``: same as the ``mlos-core`` command."""

from mlos_core.cli import main

main()
