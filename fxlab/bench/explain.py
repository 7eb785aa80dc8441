"""The explain suite: what verification that explains costs.

- **Bisection**: ``fxlab.bisect`` on pipelines of 4, 16 and 64 steps (``--quick``: the same), each
  ``N`` copies of an exact pass that rewrites every Linear (three sites in ``mymodule``) with one
  lying copy, at a random place, that perturbs its second site: verifications used, against the
  bound ``2 + ceil(log2 N) + ceil(log2 sites)``; it must grow logarithmically.
- **Per-node numerics**: one verification step (``_Run.check`` of an exact pass on the 1 000 check
  images, plus the test-set evaluation every step makes) with per-node comparison on and off,
  timed side by side in alternating rounds; the ratio's target is ≤ 1.5×.
"""

from __future__ import annotations

import copy
import logging
import random
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from ..pipeline import Pass, sites
from .targets import Target

if TYPE_CHECKING:
    from . import Config

log = logging.getLogger("fxlab.bench")

PIPELINE_STEPS = (4, 16, 64)


@dataclass
class CopyLinears(Pass):
    """Replace every Linear by a copy (one site each); ``bad``: the site (1-based) whose copy is perturbed."""

    kind = "exact"
    bad: int = 0

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        sites.looked(gm)
        count = 0
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), torch.nn.Linear):
                continue
            if not sites.allow(gm, node.name):
                continue
            count += 1
            new = copy.deepcopy(gm.get_submodule(node.target))
            if count == self.bad:
                with torch.no_grad():
                    new.weight.add_(1e-2)
            gm.add_submodule(node.target, new)
            sites.rewrote(gm, node.name)
        return gm


def explain_suite(cfg: Config) -> dict[str, Any]:
    """Bisection cost per pipeline length and the per-node comparison's overhead."""
    from .. import data as mnist_data
    from ..models import build
    from ..verification import bisect, verification_bound
    from ..verification.run import prepare

    from .._util import resolve_device

    device = resolve_device(cfg.device)
    mnist = mnist_data.as_mnist(cfg.data, device)
    torch.manual_seed(0)
    model = build("mymodule").eval()
    rng = random.Random(0)
    rows = []
    for n in PIPELINE_STEPS:
        liar = rng.randrange(n)
        pipeline = [CopyLinears(bad=2 if i == liar else 0) for i in range(n)]
        t0 = time.perf_counter()
        result = bisect(model, pipeline, data=mnist, device=device, retrain_epochs=0)
        found = result.step == liar and result.site == "layer2"
        rows.append({"steps": n, "liar": liar, "found_step": result.step, "found_site": result.site, "found": found,
                     "verifications": result.verifications, "bound": verification_bound(n, 3),
                     "seconds": time.perf_counter() - t0})
        log.info("explain: bisect %d steps (liar at %d): %d verifications (bound %d), %s", n, liar,
                 result.verifications, verification_bound(n, 3), "found" if found else "NOT FOUND")

    run, _, _ = prepare(model, [CopyLinears()], data=mnist, device=device, retrain_epochs=0)
    p = CopyLinears()
    samples: dict[bool, list[float]] = {True: [], False: []}
    rounds = 3 if cfg.quick else 7
    for r in range(rounds):
        for nodes in ((True, False) if r % 2 == 0 else (False, True)):
            run.nodes = nodes
            t0 = time.perf_counter()
            run.check(1, p, *run._apply(p))
            samples[nodes].append(time.perf_counter() - t0)
    with_nodes, plain = statistics.median(samples[True]), statistics.median(samples[False])
    ratio = with_nodes / plain
    log.info("explain: a verification step with per-node numerics %.3f s, without %.3f s (%.2f×)", with_nodes, plain,
             ratio)
    growth = rows[-1]["verifications"] / rows[0]["verifications"]
    targets = [
        Target("bisection verifications stay within the log bound", "pipelines of " +
               "/".join(str(n) for n in PIPELINE_STEPS) + " steps",
               max(r["verifications"] / r["bound"] for r in rows), "≤ 1.00× the bound",
               all(r["verifications"] <= r["bound"] and r["found"] for r in rows),
               f"verifications {', '.join(str(r['verifications']) for r in rows)}; 16× the steps: {growth:.2f}× the "
               "verifications"),
        Target("per-node numerics overhead", "one verification step, mymodule, 1 000 check images", ratio, "≤ 1.50×",
               ratio <= 1.5, f"{with_nodes * 1000:.0f} ms vs {plain * 1000:.0f} ms"),
    ]
    return {"bisection": rows, "node_overhead": {"with_nodes_s": with_nodes, "without_s": plain, "ratio": ratio,
                                                 "rounds": rounds},
            "method": "fxlab.bisect on N copies of an exact sited pass with one liar; a verify step timed with "
                      "and without per-node numerics in alternating rounds (median)",
            "targets": [t.to_json() for t in targets]}


def explain_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    """Bisection cost per pipeline length, and the per-node overhead."""
    from tabulate import tabulate

    rows = [[r["steps"], r["liar"], f"{r['found_step']} / {r['found_site']}", r["verifications"], r["bound"],
             f"{r['seconds']:.1f}"] for r in result["bisection"]]
    text = "bisection (one lying step among N exact ones):\n\n" + tabulate(
        rows, headers=["steps", "liar", "found (step / site)", "verifications", "bound", "seconds"], tablefmt=fmt,
        disable_numparse=True)
    o = result["node_overhead"]
    return text + (f"\n\nper-node numerics: a verification step {o['with_nodes_s'] * 1000:.0f} ms with, "
                   f"{o['without_s'] * 1000:.0f} ms without ({o['ratio']:.2f}×, median of {o['rounds']} rounds)")
