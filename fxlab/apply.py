"""``python -m fxlab.apply FILE PIPELINE -o OUT``: the command lives in :mod:`fxlab.cli.apply`.

``fxlab.apply`` is the library function; importing a submodule of the same name would replace it
on the package (Python sets a package attribute per imported submodule), so this entry point
refuses to be imported. ``fxlab/verify.py`` is its twin for ``fxlab.verify``.
"""

if __name__ != "__main__":
    raise ImportError("fxlab.apply is the function fxlab.apply(model, passes); run the command as "
                      "python -m fxlab.apply FILE PIPELINE -o OUT (code: fxlab.cli.apply)")

import sys

from fxlab.cli import run

sys.exit(run("apply"))
