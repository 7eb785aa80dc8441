"""Verification: every step of a pipeline proven by numbers, accuracy and a graph diff.

``fxlab.verify(model, passes)`` applies a pipeline one pass at a time and holds each pass to the
promise of its ``kind``:

- ``exact``: on a fixed batch of real MNIST test images, the outputs of the model after the pass
  match those of the model before it: max absolute difference ≤ ``tolerance`` (default 1e-4) and
  100 % argmax agreement;
- ``approximate``: the test accuracy drops by at most the pass's ``budget`` (accuracy points),
  measured against the model *before this step* (so every step is judged on its own change, and
  the budgets of several approximate steps add up for the whole pipeline); a pass that declares
  no budget is held to ``floor``. A pass with an empty ``calibration`` option
  (``quantize-linear{mode=static}`` from pipeline text) is calibrated on MNIST training images;
  after a pass whose class sets ``calibrates = True`` (it leaves observers in the graph), the same
  training batches run through the new model before the next step, and the step's own checks run
  on a copy so that its observers never see test images. A pass with an empty ``data`` option
  (``quantize-linear{mode=dynamic max_drop=0.5}``) gets the run's MNIST as its evaluation data;
- ``changes``: the model is fine-tuned ``retrain_epochs`` epochs (``fxlab.train.fit``) and its
  recovered accuracy (``retrained_accuracy``) must be within ``floor`` points (default 1) of the
  baseline. Retraining changes the weights: later steps start from the retrained model.

Every step also records the test accuracy after the pass, the graph diff ``fxlab.apply`` recorded
for the pass (nodes added, removed, replaced, changed) with the printouts before and after, and
the wall time. ``Report.ok`` is False when any
contract fails, and the failing step says why.

>>> import fxlab
>>> report = fxlab.verify("mymodule", "fuse-linear-relu")      # doctest: +SKIP
>>> print(report.table())                                       # doctest: +SKIP

Command line (``python -m fxlab.verify``)::

    python -m fxlab.verify --model mymodule --passes "insert-activation{after=layer2 fn=gelu},fuse-linear-relu,quantize-linear{mode=dynamic}"
    python -m fxlab.verify model.pth --passes fuse-linear-relu --json report.json --plot report.png

Exit status: 0 when every contract holds, 1 when one fails, 2 on bad input.

Every step also compares each node with its counterpart before the pass (by provenance: max abs
diff, relative error, SQNR; ``Step.nodes``) and names the node that explains the difference
(``Step.first_divergence``; :mod:`~fxlab.verification.nodes`), and carries the pass's site records
(``Step.rewritten``, ``Step.skipped``). ``fxlab.bisect(model, passes)``
(:mod:`~fxlab.verification.bisection`) finds the first pass of a failing pipeline that breaks its
contract, and the first of its rewrites that does, in a logarithmic number of verifications.

The package: :mod:`~fxlab.verification.run` (the algorithm), :mod:`~fxlab.verification.contracts`
(one check per pass kind, registered by kind), :mod:`~fxlab.verification.report` (``Report``,
``Step``, ``Baseline``: table, diffs, JSON), :mod:`~fxlab.verification.plot` (matplotlib),
:mod:`~fxlab.verification.models` (which model to check) and :mod:`~fxlab.verification.retrain`;
:mod:`~fxlab.verification.sweep` runs many verifications from a TOML file, sharded over torchrun's ranks.
"""

from __future__ import annotations

from .bisection import BisectResult, bisect, verification_bound
from .contracts import CONTRACTS, Settings, StepCheck, Verdict, contract_for, register_contract
from .report import JSON_FORMAT, Baseline, Report, Step
from .retrain import RETRAIN_BATCH, RETRAIN_LR, retrain_plan
from .run import CALIBRATION_BATCH, CHECK_IMAGES, calibrate, compare, verify, with_calibration, with_data

__all__ = [
    "CALIBRATION_BATCH",
    "CHECK_IMAGES",
    "CONTRACTS",
    "JSON_FORMAT",
    "RETRAIN_BATCH",
    "RETRAIN_LR",
    "Baseline",
    "BisectResult",
    "Report",
    "Settings",
    "Step",
    "StepCheck",
    "Verdict",
    "bisect",
    "calibrate",
    "compare",
    "contract_for",
    "register_contract",
    "retrain_plan",
    "verification_bound",
    "verify",
    "with_calibration",
    "with_data",
]
