"""Fusion passes (kind ``exact``): fewer, bigger operations computing the same function.

Each pass makes one sweep over the graph, replaces modules rather than mutating them (new
modules, new tensors; a fused module shares the parameters it does not change), and deletes
the modules it leaves unused. Applying a pass twice gives the same graph as applying it once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult
from torch.nn.parameter import is_lazy
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..core.provenance import absorb
from ..errors import PassError
from ..nn.fused import ConvReLU, LinearReLU
from ..pipeline import Pass, register_pass, sites
from ._rank import Rank, add_rank_guard, ranks
from ._rewrite import ModuleUses, module_of, new_linear, plain_linear, require_values, single_input, wide

__all__ = [
    "FoldBatchNorm",
    "FuseConsecutiveLinear",
    "FuseConvReLU",
    "FuseLinearReLU",
    "fold_conv_bn",
    "fold_linear_bn",
    "plain_conv",
    "merge_linears",
    "relu_input",
]

#: ``F.relu_`` is ``torch.relu_``; ``F.relu(x, inplace=True)`` is ``F.relu`` with a keyword.
_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu)
_RELU_METHODS = ("relu", "relu_")


def relu_input(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The node that ``node`` applies a ReLU to, if ``node`` is a ReLU in any spelling, else None.

    Spellings: ``nn.ReLU()`` and ``nn.ReLU(inplace=True)`` modules, ``F.relu(x)``,
    ``F.relu(x, inplace=True)``, ``torch.relu``, ``torch.relu_`` (= ``F.relu_``), ``x.relu()``
    and ``x.relu_()``.
    """
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        kwargs = dict(node.kwargs)
        args = list(node.args)
        if node.target is F.relu:
            if len(args) == 2:  # F.relu(x, True)
                kwargs["inplace"] = args.pop()
            kwargs.pop("inplace", None)
        if len(args) == 1 and not kwargs:
            src = args[0]
        elif not args and set(kwargs) == {"input"}:
            src = kwargs["input"]
        else:
            return None
        return src if isinstance(src, fx.Node) else None
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return node.args[0] if len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node) else None
    module = module_of(gm, node)
    if isinstance(module, nn.ReLU) and type(module).forward is nn.ReLU.forward:
        return single_input(node)
    return None


@register_pass
@dataclass
class FuseLinearReLU(Pass):
    """Fuse a Linear and the ReLU after it into one LinearReLU module (every ReLU spelling).

    The ReLU may be an ``nn.ReLU`` module, ``F.relu``, ``torch.relu``, ``x.relu()`` or any of
    their in-place forms. Where the Linear's output has another user (it is needed before the
    ReLU), nothing is fused. The ``LinearReLU`` shares the Linear's parameters and takes its
    place (same module path, so state-dict keys stay).

    >>> import fxlab, torch
    >>> from fxlab.models import build
    >>> from fxlab.passes import FuseLinearReLU
    >>> model = build("mymodule").eval()
    >>> gm = fxlab.apply(model, [FuseLinearReLU()])
    >>> print(fxlab.format_graph(gm))
    %x = input
    %flatten = torch.flatten(%x, 1)
    %layer1 = layer1:LinearReLU(784→128)(%flatten)
    %layer2 = layer2:LinearReLU(128→64)(%layer1)
    %layer3 = layer3:Linear(64→10)(%layer2)
    return %layer3
    >>> x = torch.randn(4, 1, 28, 28)
    >>> torch.allclose(gm(x), model(x))
    True
    """

    name = "fuse-linear-relu"
    kind = "exact"

    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, fuse_relu_after(gm, plain_linear, LinearReLU.from_linear))


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FORWARDS = {cls.forward for cls in _CONVS}


def plain_conv(gm: fx.GraphModule, node: Any) -> nn.modules.conv._ConvNd | None:
    """The ``nn.Conv1d/2d/3d`` a node calls with one input, if it is a plain one (not a subclass
    with its own forward, such as ``ConvReLU``, not lazy)."""
    module = module_of(gm, node)
    if (
        isinstance(module, _CONVS)
        and type(module).forward in _CONV_FORWARDS
        and not is_lazy(module.weight)
        and single_input(node) is not None
    ):
        return module
    return None


def fuse_relu_after(
    gm: fx.GraphModule,
    producer: Callable[[fx.GraphModule, Any], nn.Module | None],
    fuse: Callable[[Any], nn.Module],
) -> bool:
    """Fuse every ReLU (any spelling, see :func:`relu_input`) that follows a module ``producer``
    accepts into ``fuse(module)``, which takes the module's place; in graph order, asking
    :func:`sites.allow` first. A module whose output has other users is left alone (recorded as
    skipped). Whether anything changed."""
    sites.looked(gm)
    uses = ModuleUses(gm)
    changed = False
    for node in list(gm.graph.nodes):
        src = relu_input(gm, node)
        module = producer(gm, src) if src is not None else None
        if module is None:
            continue
        if len(src.users) != 1:
            sites.skipped(gm, src.name, f"output has {len(src.users)} users; not fused")
            continue
        if not sites.allow(gm, src.name):
            continue
        uses.swap_module(src, fuse(module), "relu")
        absorb(src, src, node)
        uses.bypass(node, src)
        sites.rewrote(gm, src.name)
        changed = True
    return changed


@register_pass
@dataclass
class FuseConvReLU(Pass):
    """Fuse a Conv1d/2d/3d and the ReLU after it into one ConvReLU module (every ReLU spelling).

    The same matching as ``fuse-linear-relu``: the ReLU may be an ``nn.ReLU`` module, ``F.relu``,
    ``torch.relu``, ``x.relu()`` or any of their in-place forms; where the convolution's output
    has another user, nothing is fused. The ``ConvReLU`` shares the convolution's parameters and
    takes its place (same module path, so state-dict keys stay).

    >>> import fxlab, torch
    >>> from fxlab.passes import FuseConvReLU
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU()).eval()
    >>> gm = fxlab.apply(model, [FuseConvReLU()])
    >>> print(fxlab.format_graph(gm))
    %input_1 = input
    %_0 = 0:Conv2dReLU(1→6, k=5, pad=2)(%input_1)
    return %_0
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.allclose(gm(x), model(x))
    True
    """

    name = "fuse-conv-relu"
    kind = "exact"

    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, fuse_relu_after(gm, plain_conv, ConvReLU.from_conv))


# --------------------------------------------------------------------------------------------


def fold_linear_bn(linear: nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> nn.Linear:
    """A new Linear computing ``bn(linear(x))`` with ``bn``'s running statistics (eval mode).

    ``W' = W·γ/√(var+ε)`` row by row and ``b' = (b − mean)·γ/√(var+ε) + β``, computed in
    float64 and stored in the Linear's dtype; the same result as torch's
    ``torch.nn.utils.fusion.fuse_linear_bn_eval``. Neither input is modified.
    """
    weight = wide(linear.weight)
    bias = wide(linear.bias) if linear.bias is not None else torch.zeros_like(weight[:, 0])
    scale = torch.rsqrt(wide(bn.running_var) + bn.eps)
    if bn.weight is not None:
        scale = scale * wide(bn.weight)
    shift = wide(bn.bias) if bn.bias is not None else torch.zeros_like(scale)
    return new_linear(weight * scale[:, None], (bias - wide(bn.running_mean)) * scale + shift, linear)


def fold_conv_bn(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> nn.modules.conv._ConvNd:
    """A new convolution computing ``bn(conv(x))`` with ``bn``'s running statistics (eval mode).

    The arithmetic is torch's own ``torch.nn.utils.fusion.fuse_conv_bn_weights``, done in float64
    and stored in the convolution's dtype; a BatchNorm without affine parameters counts as
    γ = 1, β = 0. Neither input is modified; the new module shares nothing with ``conv``.
    """
    weight = wide(conv.weight)
    gamma = wide(bn.weight) if bn.weight is not None else torch.ones_like(wide(bn.running_var))
    beta = wide(bn.bias) if bn.bias is not None else torch.zeros_like(gamma)
    bias = wide(conv.bias) if conv.bias is not None else None
    with torch.no_grad():
        w, b = fuse_conv_bn_weights(weight, bias, wide(bn.running_mean), wide(bn.running_var), bn.eps, gamma, beta)
    folded = type(conv).__new__(type(conv))
    nn.Module.__init__(folded)
    for key, value in conv.__dict__.items():  # the settings (kernel_size, stride, ...), not the parameters
        if not key.startswith("_") or key == "_reversed_padding_repeated_twice":
            folded.__dict__[key] = value
    like = conv.weight
    folded.weight = nn.Parameter(w.detach().to(dtype=like.dtype, device=like.device), requires_grad=like.requires_grad)
    folded.bias = nn.Parameter(b.detach().to(dtype=like.dtype, device=like.device), requires_grad=like.requires_grad)
    folded.train(conv.training)
    return folded


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: the BatchNorm that normalises a convolution's channels, by the convolution's class
_BN_FOR_CONV = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def _foldable_bn(module: nn.Module | None) -> nn.modules.batchnorm._BatchNorm | None:
    if (
        isinstance(module, _BATCHNORMS)
        and type(module).forward is nn.modules.batchnorm._BatchNorm.forward
        and not is_lazy(module.weight if module.weight is not None else module.running_mean)
    ):
        return module
    return None


def _fold_mismatch(bn: nn.modules.batchnorm._BatchNorm, layer: nn.Module, src: fx.Node,
                   rank: Rank | None) -> str | None:
    """Why ``bn`` cannot fold into ``layer`` (a plain Linear or convolution; ``rank``: that of the
    Linear's output), or None if it can."""
    kind = type(layer).__name__
    if isinstance(layer, nn.Linear):
        if not isinstance(bn, nn.BatchNorm1d):
            return f"{type(bn).__name__} does not normalise the features of {kind} {src.name}"
        if rank is not None and (rank.known > 2 or rank.exactly() not in (None, 2)):
            dims = f"{rank.known}-D" if rank.exactly() is not None else f"at least {rank.known}-D"
            return (f"{src.name}'s output is {dims}, where BatchNorm1d normalises dim 1, not the features "
                    f"of {kind} {src.name}")
        features = layer.out_features
    else:
        expected = next(bn_cls for conv_cls, bn_cls in _BN_FOR_CONV.items() if isinstance(layer, conv_cls))
        if not isinstance(bn, expected):
            return f"{type(bn).__name__} does not normalise the channels of {kind} {src.name}"
        features = layer.out_channels
    if bn.num_features != features:
        return f"has {bn.num_features} features, {kind} {src.name} makes {features}"
    return None


#: value of unknown rank → the (BatchNorm, Linear) nodes folded on the condition that it is 2-D
_Guards = dict[fx.Node, list[tuple[fx.Node, fx.Node]]]


def _guard_message(root: fx.Node, folded: list[str]) -> str:
    before = "it" if len(folded) == 1 else "each"
    return (f"{root.name} must be 2-D (N, C): fold-batchnorm folded {', '.join(folded)} into the Linear "
            f"before {before}, which equals BatchNorm1d on 2-D input only; run the model without "
            "fold-batchnorm for other input")


def _add_rank_guards(gm: fx.GraphModule, guards: _Guards) -> None:
    """For each root, one guard that it is 2-D, before the first Linear folded on that assumption."""
    for root, folds in guards.items():
        add_rank_guard(gm.graph, root, folds[0][1], _guard_message(root, [bn.name for bn, _ in folds]))


@register_pass
@dataclass
class FoldBatchNorm(Pass):
    """Fold an eval-mode BatchNorm into the Linear or convolution before it (weight and bias).

    BatchNorm1d after a Linear, and BatchNorm1d/2d/3d after a Conv1d/2d/3d with as many channels
    (torch's ``fuse_conv_bn_weights`` arithmetic, in float64). BatchNorm1d normalises dim 1, which
    is a Linear's features only on 2-D ``(N, C)`` output: where the graph shows the Linear's output
    has another rank (shape metadata, or an op such as ``flatten`` upstream; :mod:`._rank`), the
    site is left alone; where the rank depends on an input of unknown rank, the pass folds and
    guards that input with ``torch._assert(x.dim() == 2, ...)``, so that other input raises
    instead of giving other numbers.
    Only where the BatchNorm is the layer's one user; the sites left alone are recorded with the
    reason. A BatchNorm in training mode normalises with batch statistics, so it cannot be folded:
    the pass refuses with ``PassError`` (call ``model.eval()`` first). A BatchNorm with
    ``track_running_stats=False`` always uses batch statistics and is left alone.

    >>> import fxlab, torch
    >>> from fxlab.models import build
    >>> from fxlab.passes import FoldBatchNorm
    >>> model = build("simplenn").eval()
    >>> gm = fxlab.apply(model, [FoldBatchNorm()])
    >>> [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    ['fc1', 'dropout', 'fc2', 'dropout', 'fc3']
    >>> x = torch.randn(4, 1, 28, 28)
    >>> torch.allclose(gm(x), model(x), atol=1e-6)
    True
    """

    name = "fold-batchnorm"
    kind = "exact"

    def call(self, gm: fx.GraphModule) -> PassResult:
        # Plan first, so that a refusal leaves the graph untouched.
        sites.looked(gm)
        into, guards = self._plan(gm)
        require_values(self.name, [(str(n.target), module_of(gm, n)) for bn, lin in into.items() for n in (lin, bn)])
        _add_rank_guards(gm, guards)
        uses = ModuleUses(gm)
        for node, target in into.items():
            layer, bn = gm.get_submodule(str(target.target)), gm.get_submodule(str(node.target))
            folded = fold_linear_bn(layer, bn) if isinstance(layer, nn.Linear) else fold_conv_bn(layer, bn)
            uses.swap_module(target, folded, "folded")
            absorb(target, target, node)
            uses.bypass(node, target)
        return PassResult(gm, bool(into))

    def _plan(self, gm: fx.GraphModule) -> tuple[dict[fx.Node, fx.Node], _Guards]:
        """The BatchNorms to fold (BatchNorm node → the layer node it folds into), and the values of
        unknown rank that Linear folds need 2-D (root → its (BatchNorm, Linear) nodes); the sites
        left alone are recorded. A BatchNorm right after a folded one follows the same layer once
        the first is folded: ``into`` records that."""
        into: dict[fx.Node, fx.Node] = {}
        guards: _Guards = {}
        rank_of: dict[fx.Node, Rank] | None = None
        for node in gm.graph.nodes:
            bn = _foldable_bn(module_of(gm, node))
            src = single_input(node) if bn is not None else None
            if src is None or bn.running_mean is None:
                continue
            target = into.get(src, src)
            layer = plain_linear(gm, target) or plain_conv(gm, target)
            if layer is None:
                continue
            kind = type(layer).__name__
            if len(src.users) != 1:
                sites.skipped(gm, node.name, f"follows a {kind} with {len(src.users)} users; not folded")
                continue
            rank = None
            if isinstance(layer, nn.Linear):
                rank_of = ranks(gm) if rank_of is None else rank_of
                rank = rank_of[target]
            reason = _fold_mismatch(bn, layer, target, rank)
            if reason is not None:
                sites.skipped(gm, node.name, f"{reason}; not folded")
                continue
            if bn.training:
                raise PassError(
                    f"{self.name}: {node.target} ({type(bn).__name__}) is in training mode, where it "
                    "normalises with the statistics of each batch, so it cannot be folded into "
                    f"{target.target}; call model.eval() before applying {self.name}"
                )
            if not sites.allow(gm, node.name):
                continue
            into[node] = target
            for root in rank.roots if rank is not None else ():
                guards.setdefault(root, []).append((node, target))
            sites.rewrote(gm, node.name)
        return into, guards


# --------------------------------------------------------------------------------------------


def merge_linears(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """A new Linear computing ``second(first(x))``: ``W = W₂W₁``, ``b = W₂b₁ + b₂`` (in float64)."""
    w2 = wide(second.weight)
    weight = w2 @ wide(first.weight)
    bias = None
    if first.bias is not None:
        bias = w2 @ wide(first.bias)
    if second.bias is not None:
        bias = wide(second.bias) if bias is None else bias + wide(second.bias)
    return new_linear(weight, bias, second)


def _mergeable(first: nn.Linear, second: nn.Linear, allow_growth: bool) -> bool:
    w1, w2 = first.weight, second.weight
    if (w1.dtype, w1.device) != (w2.dtype, w2.device):
        return False
    n_in, mid, n_out = first.in_features, first.out_features, second.out_features
    return allow_growth or n_in * n_out <= n_in * mid + mid * n_out


@register_pass
@dataclass
class FuseConsecutiveLinear(Pass):
    """Merge Linears that follow each other with nothing between into one (W = W₂W₁, b = W₂b₁ + b₂).

    A Linear is merged into the Linear after it where that is its only user; a chain of Linears
    becomes one, which takes the last one's place and module path. By default a pair is merged
    only where the merged weight is no larger than the two it replaces (``in·out ≤ in·mid +
    mid·out``), so a bottleneck such as 784→8→784 stays factored (fewer multiply-adds);
    ``allow_growth=true`` merges those too.

    >>> import fxlab, torch
    >>> from fxlab.passes import FuseConsecutiveLinear
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 4), torch.nn.Linear(4, 2))
    >>> gm = fxlab.apply(model, [FuseConsecutiveLinear()])
    >>> print(fxlab.format_graph(gm))
    %input_1 = input
    %_2 = 2:Linear(8→2)(%input_1)
    return %_2
    >>> x = torch.randn(3, 8)
    >>> torch.allclose(gm(x), model(x), atol=1e-6)
    True
    """

    name = "fuse-consecutive-linear"
    kind = "exact"

    allow_growth: bool = False

    def call(self, gm: fx.GraphModule) -> PassResult:
        sites.looked(gm)
        uses = ModuleUses(gm)
        changed = False
        for node in list(gm.graph.nodes):
            second = plain_linear(gm, node)
            while second is not None:
                src = single_input(node)
                first = plain_linear(gm, src)
                if first is None:
                    break
                if len(src.users) != 1:
                    sites.skipped(gm, src.name, f"output has {len(src.users)} users; not merged into {node.name}")
                    break
                if not _mergeable(first, second, self.allow_growth):
                    w1, w2 = first.weight, second.weight
                    why = (f"{w1.dtype}/{w1.device} and {w2.dtype}/{w2.device} differ"
                           if (w1.dtype, w1.device) != (w2.dtype, w2.device)
                           else "the merged weight would be larger (allow_growth=true merges it)")
                    sites.skipped(gm, src.name, f"{why}; not merged into {node.name}")
                    break
                if not sites.allow(gm, src.name):
                    break
                require_values(self.name, [(str(src.target), first), (str(node.target), second)])
                second = merge_linears(first, second)
                uses.swap_module(node, second, "merged")
                absorb(node, src, node)
                node.args, node.kwargs = (single_input(src),), {}
                uses.erase(src)
                sites.rewrote(gm, src.name)
                changed = True
        return PassResult(gm, changed)
