"""``fxlab data`` / ``python -m fxlab.data``: find, check and fetch MNIST."""

from __future__ import annotations

from collections.abc import Sequence

from ..data import check, fetch, resolve_root
from ..errors import UsageError
from .runner import parser


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.data {fetch,check,where} [--root DIR]``."""

    p = parser("python -m fxlab.data", "Find, check and fetch MNIST.")
    p.add_argument("command", choices=["fetch", "check", "where"], help="what to do")
    p.add_argument("--root", help="MNIST root (default: $FXLAB_DATA, else the user cache)")
    p.add_argument("--force", action="store_true", help="fetch: replace the files even if intact")
    ns = p.parse_args(argv)
    if ns.force and ns.command != "fetch":
        raise UsageError(f"--force applies to fetch only, not to {ns.command}")
    if ns.command == "where":
        print(resolve_root(ns.root))
    elif ns.command == "check":
        print(f"ok: {check(ns.root)} (4 files, MD5s match)")
    else:
        print(f"ok: {fetch(ns.root, force=ns.force)} (4 files, MD5s match)")
    return 0

