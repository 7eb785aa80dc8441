"""A training step for MLPs that are a plain chain of Linears and ReLUs, with the backward written out.

At MNIST sizes (batch 64, 784→128→64→10) a step's GEMMs take under half of its time; the rest
is the autograd engine and module calls. For a model whose traced graph is a chain ``flatten →
Linear → ReLU → … → Linear`` this step runs the same ops without them: the forward as
``addmm`` + ``relu``, the loss and its gradient on the logits through autograd (a graph of two
ops), then per layer the very ops autograd's ``AddmmBackward`` and ``ReluBackward`` run, in the
same operand order (``gᵀ·h`` for the weight, ``g·W`` for the input, ``g.sum(0)`` for the bias,
``threshold_backward``). The gradients are therefore bit for bit autograd's
(``tests/unit/test_train_chain.py`` holds them to it), and a model trains to the same weights.

Anything else (BatchNorm, Dropout in train mode, other activations, hooks, parametrizations,
DistributedDataParallel) returns None from :meth:`LinearChain.of` and trains through autograd.
"""

from __future__ import annotations

import functools
import logging
import struct

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from .._util import hooks_set
from ..errors import FxlabError

log = logging.getLogger(__name__)

__all__ = ["LinearChain"]

_RELU_FUNCTIONS = {torch.relu, F.relu, torch.nn.functional.relu}
_FLATTEN_METHODS = {"view", "reshape", "flatten"}


def _hooked(module: nn.Module) -> bool:
    """Whether running ``module`` by hand would skip something its call does."""
    return (
        hooks_set(module)
        or parametrize.is_parametrized(module)
        or any(p._backward_hooks for p in module.parameters(recurse=False))  # type: ignore[attr-defined]
    )


def _skippable(module: nn.Module) -> bool:
    """A module that passes its input through unchanged while training."""
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and module.p == 0.0)


def _layers(model: nn.Module) -> list[tuple[nn.Linear, bool]] | None:
    """``[(linear, relu after it), ...]`` when ``model``'s traced graph is a flatten then a chain of
    Linears and ReLUs ending on a Linear; None otherwise."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # untraceable: autograd it is
        return None
    modules = dict(gm.named_modules())
    layers: list[tuple[nn.Linear, bool]] = []
    current: fx.Node | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                return None
            current = node
            continue
        if current is None or node.args[:1] != (current,) or len(current.users) != 1:
            return None
        if node.op == "output":
            break
        target = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(target, nn.Linear) and type(target) is nn.Linear:
            layers.append((target, False))
        elif not layers and (
            (node.op == "call_method" and node.target in _FLATTEN_METHODS)
            or (node.op == "call_function" and node.target is torch.flatten and node.args[1:] in ((1,), (1, -1))
                and not node.kwargs)
            or (isinstance(target, nn.Flatten) and (target.start_dim, target.end_dim) == (1, -1))
        ):
            pass  # the input's rows as vectors: checked against the first Linear at each step
        elif layers and not layers[-1][1] and (
            (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target == "relu")
            or isinstance(target, nn.ReLU)
        ):
            layers[-1] = (layers[-1][0], True)
        elif target is not None and _skippable(target):
            pass
        else:
            return None
        current = node
    else:
        return None
    if not layers or layers[-1][1]:
        return None
    return layers


def cross_entropy_and_grad(logits: Tensor, y: Tensor, label_smoothing: float, *,
                           loss: bool = True) -> tuple[Tensor | None, Tensor]:
    """``F.cross_entropy(logits, y, label_smoothing=…)`` (mean over rows) and its gradient on ``logits``,
    computed with the ops, in the order and float32 roundings, that autograd's backward of
    ``cross_entropy`` uses (``NllLossBackward`` plus, with smoothing, the backward of the mean of
    ``-log_softmax(logits).sum(1)``, then ``_log_softmax_backward_data``): both bit for bit torch's.
    With ``loss=False`` the loss is not computed (None): the gradient does not need it.

    >>> z, y = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 2, 1, 2])
    >>> loss, g = cross_entropy_and_grad(z.detach(), y, 0.1)
    >>> reference = F.cross_entropy(z, y, label_smoothing=0.1)
    >>> reference.backward()
    >>> torch.equal(loss, reference.detach()), torch.equal(g, z.grad)
    (True, True)
    """
    rows, classes = logits.shape
    with torch.no_grad():
        logp = torch.log_softmax(logits, 1)
        value = _cross_entropy(logp, y, label_smoothing) if loss else None
        g = _grad_rows(rows, classes, label_smoothing, logp.dtype, logp.device).index_select(0, y)
        return value, torch.ops.aten._log_softmax_backward_data(g, logp, 1, logits.dtype)


@functools.lru_cache(maxsize=32)
def _grad_rows(rows: int, classes: int, label_smoothing: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """d loss / d logp for a row of each label (row ``c``: label ``c``), made by the ops autograd's
    ``NllLossBackward`` (and the smoothing term's backward) run: a fill of ``-(eps/C)/rows``, then
    ``scatter_add_`` of ``-(1-eps)/rows`` at the label. A batch's gradient is the rows of its
    labels: the same float32 numbers, in one op instead of four per step. Never written to."""
    if label_smoothing > 0:
        g = torch.full((classes, classes), -_f32(_f32(label_smoothing / classes) / rows), dtype=dtype, device=device)
        picked = -_f32(_f32(1 - label_smoothing) / rows)
    else:
        g = torch.zeros((classes, classes), dtype=dtype, device=device)
        picked = -_f32(1 / rows)
    labels = torch.arange(classes, device=device).reshape(classes, 1)
    return g.scatter_add_(1, labels, torch.full((classes, 1), picked, dtype=dtype, device=device))


def _cross_entropy(logp: Tensor, y: Tensor, label_smoothing: float) -> Tensor:
    """The mean cross-entropy from ``log_softmax(logits)``, with ``F.cross_entropy``'s ops."""
    nll = F.nll_loss(logp, y)
    if label_smoothing <= 0:
        return nll
    rows, classes = logp.shape
    smooth = (-logp.sum(1)).sum() / rows
    return (1 - label_smoothing) * nll + smooth * (label_smoothing / classes)


def _f32(value: float) -> float:
    """``value`` rounded to float32 (one float32 operation on float32 operands, done in double and
    rounded once, is the correctly rounded float32 result)."""
    return struct.unpack("f", struct.pack("f", value))[0]


class LinearChain:
    """The hand-written training step of a chain of Linears and ReLUs (see the module's docstring).

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> chain = LinearChain.of(model)
    >>> chain
    LinearChain(Linear 4→3, relu, Linear 3→2)
    >>> logits, loss = chain.step(torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 1, 0, 1]), 0.0)
    >>> model[1].weight.grad.shape
    torch.Size([3, 4])
    >>> LinearChain.of(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))) is None
    True
    """

    def __init__(self, layers: list[tuple[nn.Linear, bool]]) -> None:
        self.layers = layers

    @classmethod
    def of(cls, model: nn.Module) -> LinearChain | None:
        """The chain step for ``model`` in its current (training) mode, or None when it is not such a
        chain (or something would be skipped: hooks, parametrizations, Dropout that drops)."""
        if isinstance(model, nn.parallel.DistributedDataParallel) or _hooked(model):
            return None
        layers = _layers(model)
        if layers is None or any(_hooked(m) for m in model.modules()):
            return None
        weights = [p for linear, _ in layers for p in linear.parameters()]
        if any(p.dtype != torch.float32 or not p.requires_grad for p in weights):
            return None
        if len({id(p) for p in weights}) != len(weights):  # a Linear called twice, or tied weights:
            return None  # autograd sums the gradients of every use; this step would keep the last
        log.debug("training %s with the hand-written chain step", type(model).__name__)
        return cls(layers)

    def __repr__(self) -> str:
        parts = []
        for linear, relu in self.layers:
            parts.append(f"Linear {linear.in_features}→{linear.out_features}")
            if relu:
                parts.append("relu")
        return f"LinearChain({', '.join(parts)})"

    def step(self, x: Tensor, y: Tensor, label_smoothing: float, *, loss: bool = True) -> tuple[Tensor, Tensor | None]:
        """Forward and backward of one batch: ``(logits, loss)``; every Linear's ``.grad`` is set
        (replaced, as after ``zero_grad(set_to_none=True)`` and ``backward``). With ``loss=False``
        the loss is left out (None): a tenth of the small ops of a step at batch 64."""
        first = self.layers[0][0]
        h = x.reshape(x.shape[0], -1)
        if h.shape[1] != first.in_features:
            raise FxlabError(f"input of {h.shape[1]} features for a first Linear of {first.in_features}")
        inputs: list[Tensor] = []
        with torch.no_grad():
            for linear, relu in self.layers:
                inputs.append(h)
                params = linear._parameters  # Module.__getattr__ costs more than the small ops here
                h = F.linear(h, params["weight"], params["bias"])  # addmm(bias, h, Wᵀ), as nn.Linear runs it
                if relu:
                    h = h.relu_()
            logits = h
            value, g = cross_entropy_and_grad(logits, y, label_smoothing, loss=loss)
            for i in range(len(self.layers) - 1, -1, -1):
                params = self.layers[i][0]._parameters
                h_in = inputs[i]
                params["weight"].grad = g.t().mm(h_in)
                if params["bias"] is not None:
                    params["bias"].grad = g.sum(0)
                if i:
                    g = g.mm(params["weight"])
                    if self.layers[i - 1][1]:
                        g = torch.ops.aten.threshold_backward(g, h_in, 0)
        return logits, value
