"""``python -m fxlab.apply FILE PIPELINE -o OUT`` (the command lives in :mod:`fxlab.cli_apply`).

``fxlab.apply`` is the library function; importing a submodule of the same name would replace
it on the package, so this file only runs as ``python -m fxlab.apply`` and refuses to be imported.
"""

if __name__ == "__main__":
    import sys

    from fxlab.cli_apply import main

    sys.exit(main())
else:
    raise ImportError(
        "fxlab.apply is the function fxlab.apply(model, passes); the command line is fxlab.cli_apply "
        "(run it as python -m fxlab.apply FILE PIPELINE -o OUT)"
    )
