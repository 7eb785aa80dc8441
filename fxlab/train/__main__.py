"""``python -m fxlab.train``: the command lives in :mod:`fxlab.cli.train`."""

import sys

from fxlab.cli import run

sys.exit(run("train"))
