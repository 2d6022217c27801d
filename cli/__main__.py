"""``python -m oralfed.cli`` is the ``oralfed`` command (used by tests and benchmarks)."""

from oralfed.cli.main import main

main()
