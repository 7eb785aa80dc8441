"""Cleanup passes: remove-dropout, dce, cse (kind exact).

The random-pipeline property test over all exact passes lives in test_fusion.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxlab
from seed_helpers import seed_model
from fxlab.models import seed_names as names
from fxlab.passes import CommonSubexpressionElimination, DeadCodeElimination, RemoveDropout, has_effects

CLEANUP = ["remove-dropout", "dce", "cse"]




def graph_of(gm: fx.GraphModule) -> list[str]:
    return fxlab.format_graph(gm).splitlines()


def calls(gm: fx.GraphModule) -> list[str]:
    """Every call in the graph, spelled by target (module path, function or method name)."""
    return [fxlab.core.target_name(n) for n in gm.graph.nodes if n.op.startswith("call")]


# -- every pass on every seed model ------------------------------------------------------------


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("pass_name", CLEANUP)
def test_cleanup_on_seed_models_is_exact_idempotent_and_leaves_caller_alone(pass_name: str, name: str) -> None:
    model = seed_model(name)
    saved = copy.deepcopy(model.state_dict())
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        gm = fxlab.apply(model, pass_name)
        assert torch.equal(gm(x), expected)  # these passes change no arithmetic at all
    (p,) = fxlab.parse_pipeline(pass_name)
    assert graph_of(fxlab.apply(gm, [p])) == graph_of(gm)
    assert not p(copy.deepcopy(gm)).modified
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    if pass_name == "remove-dropout":
        assert not any(isinstance(m, nn.Dropout) for m in gm.modules())


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("pass_name", CLEANUP)
def test_cleanup_golden(pass_name: str, name: str, golden) -> None:
    gm = fxlab.apply(seed_model(name), pass_name)
    golden.check(f"{pass_name}/{name}", fxlab.format_graph(gm))


# -- remove-dropout ----------------------------------------------------------------------------


class EveryDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.5)
        self.drop_inplace = nn.Dropout(0.5, inplace=True)
        self.alpha = nn.AlphaDropout(0.3)
        self.drop1d = nn.Dropout1d(0.2)

    def forward(self, x):
        x = self.drop(self.fc(x))
        x = self.drop_inplace(x * 1)
        x = self.alpha(x)
        x = self.drop1d(x.unsqueeze(0)).squeeze(0)
        x = F.dropout(x, 0.4, training=self.training)
        x = F.dropout(x, p=0.1, training=False, inplace=True)
        x = torch.dropout(x, 0.3, self.training)
        x = F.alpha_dropout(x, 0.2)  # training defaults to False
        return self.drop(x)  # the same module twice


def test_every_dropout_spelling_is_removed_in_eval() -> None:
    model = EveryDropout().eval()
    gm = fxlab.apply(model, [RemoveDropout()])
    assert calls(gm) == ["fc", "operator.mul", "unsqueeze", "squeeze"]
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in gm.modules())
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


def test_remove_dropout_refuses_training_mode() -> None:
    model = seed_model("simplenn").train()
    with pytest.raises(fxlab.PassError) as err:
        fxlab.apply(model, [RemoveDropout()])
    msg = str(err.value)
    assert "remove-dropout" in msg and "dropout (Dropout(p=0.5) in training mode)" in msg
    assert "dropout_1" in msg and "model.eval()" in msg


def test_remove_dropout_refuses_an_always_active_functional_dropout() -> None:
    class Always(nn.Module):
        def forward(self, x):
            return F.dropout(x * 2)  # training=True by default: active even in eval mode

    with pytest.raises(fxlab.PassError, match=r"dropout \(dropout\(p=0.5, training=True\)\).*training=self.training"):
        fxlab.apply(Always().eval(), [RemoveDropout()])


def test_zero_probability_dropout_is_removed_in_any_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0)).train()
    gm = fxlab.apply(model, [RemoveDropout()])
    assert calls(gm) == ["0"]


# -- dce ---------------------------------------------------------------------------------------


class Dead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.unused, self.bn = nn.Linear(4, 4), nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        h = self.fc(x)
        self.unused(h)          # dead: pure, nothing reads it
        torch.sigmoid(h) * 3    # dead
        h.size(0)               # dead
        h.add_(1)               # in-place, result unused: must stay
        torch.rand_like(h)      # random (moves the RNG): must stay
        self.bn(h)              # in training, BatchNorm updates running stats: must stay then
        return h


def test_dce_removes_dead_pure_nodes_and_unused_submodules() -> None:
    model = Dead().eval()
    gm = fxlab.apply(model, [DeadCodeElimination()])
    assert calls(gm) == ["fc", "add_", "torch.rand_like"]
    assert {k for k, _ in gm.named_modules()} == {"", "fc"}
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert graph_of(fxlab.apply(gm, [DeadCodeElimination()])) == graph_of(gm)


def test_dce_keeps_effects_that_fx_alone_would_drop() -> None:
    model = Dead().train()
    gm = fxlab.apply(model, [DeadCodeElimination()])
    assert calls(gm) == ["fc", "add_", "torch.rand_like", "bn"]
    # torch.fx's own test would drop the in-place add_ whose result nobody reads
    plain = fxlab.trace(Dead())
    plain.graph.eliminate_dead_code()
    assert "add_" not in calls(plain)
    assert has_effects(gm, next(n for n in gm.graph.nodes if n.target == "add_"))


# -- cse ---------------------------------------------------------------------------------------


def test_cse_merges_repeated_pure_work() -> None:
    class Repeats(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.alias = self.fc  # the same module under two names
            self.twin = copy.deepcopy(self.fc)  # equal weights, another module

        def forward(self, x):
            a = torch.relu(self.fc(x.view(-1, 4)))
            b = torch.relu(self.alias(x.view(-1, 4)))
            c = self.twin(x.view(-1, 4))
            return a + b + c + x.size(0) + x.size(0)

    model = Repeats()
    gm = fxlab.apply(model, [CommonSubexpressionElimination()])
    assert calls(gm) == ["view", "fc", "torch.relu", "twin", "operator.add", "operator.add", "size",
                         "operator.add", "operator.add"]
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert graph_of(fxlab.apply(gm, [CommonSubexpressionElimination()])) == graph_of(gm)


def test_cse_never_merges_random_or_stateful_ops() -> None:
    class Random(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop, self.bn = nn.Dropout(0.5), nn.BatchNorm1d(4)

        def forward(self, x):
            r = torch.rand_like(x) + torch.rand_like(x)
            d = self.drop(x) + self.drop(x) + F.dropout(x, 0.5, True) + F.dropout(x, 0.5, True)
            return r + d + self.bn(x) + self.bn(x)

    model = Random().train()
    gm = fxlab.apply(model, [CommonSubexpressionElimination()])
    assert graph_of(gm) == graph_of(fxlab.trace(model))
    # in eval mode, dropout modules are the identity and BatchNorm is a pure function: merged
    evaluated = fxlab.apply(Random().eval(), [CommonSubexpressionElimination()])
    assert calls(evaluated).count("drop") == 1 and calls(evaluated).count("bn") == 1
    assert calls(evaluated).count("torch.rand_like") == 2


def test_cse_respects_writes_in_place() -> None:
    class Writes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.fc(x)
            a = h + 1
            h.mul_(2)         # h changes: h + 1 below is another value
            b = h + 1
            c = h * 3
            d = h * 3         # a twin of c, but c is written into below
            c.relu_()
            v = h.view(-1)    # a view of h, which relu below writes into
            e = v * 5
            self.relu(h)
            f = v * 5         # same node args as e, read after the write
            g = torch.tanh(e) + torch.tanh(e)  # e itself is never written: merged
            return a, b, c, d, e, f, g

    model = Writes()
    gm = fxlab.apply(model, [CommonSubexpressionElimination()])
    assert calls(gm).count("torch.tanh") == 1
    assert len(gm.graph.nodes) == len(fxlab.trace(model).graph.nodes) - 1
    x = torch.randn(3, 4)
    with torch.no_grad():
        for got, want in zip(gm(x), model(x)):
            assert torch.equal(got, want)


def test_cse_keeps_constants_of_different_types_apart() -> None:
    class Constants(nn.Module):
        def forward(self, x):
            return (x + 1, x + 1.0, x + True, x * 0.0, x * -0.0, x + 1)

    model = Constants()
    gm = fxlab.apply(model, [CommonSubexpressionElimination()])
    assert len([n for n in gm.graph.nodes if n.op == "call_function"]) == 5  # only the last x + 1 merged
    x = torch.tensor([1, -2, 3])
    for got, want in zip(gm(x), model(x)):
        assert torch.equal(got, want) and got.dtype == want.dtype
    xf = torch.tensor([1.0, -2.0])
    for got, want in zip(gm(xf), model(xf)):
        assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())


CALLS_MADE: list[int] = []


def log_and_double(t: torch.Tensor) -> torch.Tensor:
    """A user function with a side effect; traced as one call (torch.fx.wrap)."""
    CALLS_MADE.append(1)
    return t * 2


torch.fx.wrap("log_and_double")


class Foreign(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.custom = Custom()

    def forward(self, x):
        return log_and_double(x) + log_and_double(x) + self.custom(x) + self.custom(x)


class Custom(nn.Module):
    """A module of the user's (kept whole as a leaf): CSE cannot know that it is pure."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + self.calls


def test_cse_leaves_foreign_functions_and_modules_alone() -> None:
    model = Foreign()
    gm = fxlab.apply(fxlab.trace(model, leaf_modules=[Custom]), [CommonSubexpressionElimination()])
    assert calls(gm).count("custom") == 2 and len(calls(gm)) == 7
    CALLS_MADE.clear()
    gm(torch.ones(2))
    assert len(CALLS_MADE) == 2


def test_cse_and_dce_are_linear_sweeps_on_a_deep_model() -> None:
    layers = []
    for _ in range(300):
        layers += [nn.Linear(4, 4), nn.ReLU()]
    model = nn.Sequential(*layers)
    gm = fxlab.apply(model, "cse,dce,remove-dropout")
    assert graph_of(gm) == graph_of(fxlab.trace(model))
