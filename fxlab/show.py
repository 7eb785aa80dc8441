"""``python -m fxlab.show``: the command lives in :mod:`fxlab.cli.show`."""

if __name__ == "__main__":
    import sys

    from fxlab.cli import run

    sys.exit(run("show"))
