"""``python -m fxlab.bench``: the command lives in :mod:`fxlab.cli.bench`."""

import sys

from fxlab.cli import run

sys.exit(run("bench"))
