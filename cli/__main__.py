"""``python -m cli`` is the ``oralfed`` command (used by tests, works without the script)."""

from cli.main import main

main()
