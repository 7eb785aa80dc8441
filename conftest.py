"""Doctest collection: skip the modules that only run as ``python -m`` entry points."""

collect_ignore = ["fxlab/__main__.py", "fxlab/apply.py", "fxlab/verify.py", "fxlab/bisect.py", "fxlab/show.py",
                  "fxlab/train/__main__.py", "fxlab/data/__main__.py", "fxlab/bench/__main__.py"]
