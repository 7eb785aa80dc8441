"""``python -m fxlab.verify``: the verification command line.

``fxlab.verify`` is the *function* (``fxlab.verify(model, passes, ...)``, from ``fxlab.verification``);
this file exists only so that ``python -m fxlab.verify`` runs the command. Importing it as a module
would shadow the function, so an import is refused.
"""

if __name__ == "__main__":
    import sys

    from fxlab.verification import main

    sys.exit(main())

raise ImportError(
    "fxlab.verify is the function fxlab.verify(model, passes, ...) (defined in fxlab.verification), not a "
    "module: use `import fxlab; fxlab.verify(...)` or `from fxlab.verification import verify`; the command "
    "line is `python -m fxlab.verify`"
)
