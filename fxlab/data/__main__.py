"""``python -m fxlab.data``: the command lives in :mod:`fxlab.cli.data`."""

import sys

from fxlab.cli import run

sys.exit(run("data"))
