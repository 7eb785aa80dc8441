"""What a pass did where: the sites it rewrote and the ones it left alone, with the reason.

A pass reports its sites while it runs, on the GraphModule it is given::

    from fxlab.pipeline import sites
    sites.rewrote(gm, node.name)
    sites.skipped(gm, node.name, "output has 2 users; not fused")

``apply`` collects them into the pass's ``PassRecord`` (``rewritten``, ``skipped``). A pass that
reports nothing (a user's pass, say) has ``rewritten is None``: its sites are unknown, not empty.
A pass that looked and found nothing to do reports that with :func:`looked`.

Before each rewrite a pass asks :func:`allow`; ``fxlab.apply(..., limit=N)`` lets each pass
rewrite at most ``N`` sites (in its stable order), like LLVM's ``-opt-bisect-limit``, which is
how bisection finds the one rewrite that breaks a contract.

A pass that chooses its sites by measuring on data (``quantize-linear{max_drop=...}``) reports what
it measured with :func:`measured`, and the pipeline text that does the same without the data; the
record keeps the measurement (``PassRecord.sensitivity``) and the result's pipeline the text.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx

_KEY = "fxlab.sites"
_LIMIT = "fxlab.limit"
_MEASURED = "fxlab.measured"


def _sites(gm: fx.GraphModule) -> dict[str, Any]:
    return gm.meta.setdefault(_KEY, {"rewritten": [], "skipped": []})


def rewrote(gm: fx.GraphModule, *names: str) -> None:
    """Record that the pass rewrote the nodes ``names`` (in the order it applied them)."""
    _sites(gm)["rewritten"].extend(names)


def skipped(gm: fx.GraphModule, name: str, reason: str) -> None:
    """Record that the pass left the node ``name`` alone, and why."""
    _sites(gm)["skipped"].append((name, reason))


def allow(gm: fx.GraphModule, name: str) -> bool:
    """Whether the pass may rewrite the site ``name``: False (and the site recorded as left alone)
    once it has rewritten as many sites as ``apply``'s ``limit``."""
    limit = gm.meta.get(_LIMIT)
    found = _sites(gm)
    if limit is not None and len(found["rewritten"]) >= limit:
        found["skipped"].append((name, f"beyond limit={limit}"))
        return False
    return True


def set_limit(gm: fx.GraphModule, limit: int | None) -> None:
    """At most ``limit`` rewrites per pass from now on (``None``: no limit)."""
    if limit is None:
        gm.meta.pop(_LIMIT, None)
    else:
        gm.meta[_LIMIT] = int(limit)


def looked(gm: fx.GraphModule) -> None:
    """Record that the pass reports its sites, even if it found none."""
    _sites(gm)


def take(gm: fx.GraphModule) -> tuple[list[str] | None, list[tuple[str, str]] | None]:
    """(rewritten, skipped) recorded on ``gm`` since the last call, and forget them; (None, None) if none."""
    found = gm.meta.pop(_KEY, None)
    if found is None:
        return None, None
    return list(found["rewritten"]), list(found["skipped"])


def measured(gm: fx.GraphModule, sensitivity: dict[str, Any], replay: str) -> None:
    """Record what the pass measured to choose its sites (``sensitivity``: plain data), and
    ``replay``: pipeline text doing the same without the data ("" for nothing), which the result
    records as the pass's pipeline so that a saved model rebuilds without it."""
    gm.meta[_MEASURED] = (sensitivity, replay)


def take_measured(gm: fx.GraphModule) -> tuple[dict[str, Any] | None, str | None]:
    """(sensitivity, replay) recorded on ``gm`` since the last call, and forget them; (None, None) if none."""
    return gm.meta.pop(_MEASURED, (None, None))
