"""``python -m fxlab.verify``: the command lives in :mod:`fxlab.cli.verify` (see ``fxlab/apply.py`` for why
this entry point refuses to be imported: ``fxlab.verify`` is the function)."""

if __name__ != "__main__":
    raise ImportError("fxlab.verify is the function fxlab.verify(model, passes, ...); run the command as "
                      "python -m fxlab.verify (code: fxlab.cli.verify)")

import sys

from fxlab.cli import run

sys.exit(run("verify"))
