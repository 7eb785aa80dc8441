"""``python -m fxlab COMMAND ...``: the same as the ``fxlab`` console script."""

import sys

from fxlab.cli import main

sys.exit(main())
