"""Every command of fxlab: ``fxlab show|apply|verify|train|data|bench`` and ``python -m fxlab.NAME``.

Each command is a module here with ``main(argv)``; :func:`run` is the one runner they go
through. Library modules hold no argparse and no print.
"""

from .runner import COMMANDS, main, parser, run

__all__ = ["COMMANDS", "main", "parser", "run"]
