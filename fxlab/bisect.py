"""``python -m fxlab.bisect``: the command lives in :mod:`fxlab.cli.bisect` (see ``fxlab/apply.py`` for why
this entry point refuses to be imported: ``fxlab.bisect`` is the function)."""

if __name__ != "__main__":
    raise ImportError("fxlab.bisect is the function fxlab.bisect(model, passes, ...); run the command as "
                      "python -m fxlab.bisect (code: fxlab.cli.bisect)")

import sys

from fxlab.cli import run

sys.exit(run("bisect"))
