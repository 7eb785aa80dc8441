"""Fusion passes: fuse-linear-relu, fold-batchnorm, fuse-consecutive-linear (kind exact).

Every pass is checked for: the same function up to float rounding (1e-5 relative to the
output's scale), idempotence, the caller's model untouched, nothing of the pattern left behind,
and a golden printout on every seed model. A hypothesis test runs random pipelines of all the
exact passes (these three and remove-dropout, dce, cse) over random MLPs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

import fxlab
from seed_helpers import assert_close, randomize_batchnorm, seed_model, state
from fxlab.models import build
from fxlab.models import seed_names as names
from fxlab.nn import LinearReLU
from fxlab.passes import FoldBatchNorm, FuseConsecutiveLinear, FuseLinearReLU, relu_input

FUSION = ["fuse-linear-relu", "fold-batchnorm", "fuse-consecutive-linear"]
EXACT = [*FUSION, "remove-dropout", "dce", "cse"]


# -- helpers -----------------------------------------------------------------------------------






def same_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)


def modules_called(gm: fx.GraphModule, kind: type) -> list[nn.Module]:
    return [gm.get_submodule(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)]


def is_plain_linear(gm: fx.GraphModule, node: object) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_module"
            and type(gm.get_submodule(node.target)) is nn.Linear)


def leftovers(gm: fx.GraphModule, pass_name: str) -> list[str]:
    """Nodes where ``pass_name`` would still apply (checked independently of the pass's code)."""
    out = []
    for n in gm.graph.nodes:
        if pass_name == "fuse-linear-relu":
            src = relu_input(gm, n)
            if is_plain_linear(gm, src) and len(src.users) == 1:
                out.append(n.name)
        elif pass_name == "fold-batchnorm":
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.BatchNorm1d):
                src = n.args[0]
                if is_plain_linear(gm, src) and len(src.users) == 1:
                    out.append(n.name)
        elif pass_name == "fuse-consecutive-linear":
            src = n.args[0] if n.args else None
            if is_plain_linear(gm, n) and is_plain_linear(gm, src) and len(src.users) == 1:
                first, second = gm.get_submodule(src.target), gm.get_submodule(n.target)
                i, m, o = first.in_features, first.out_features, second.out_features
                if i * o <= i * m + m * o:
                    out.append(n.name)
    return out


# -- every pass on every seed model ------------------------------------------------------------


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("pass_name", FUSION)
def test_fusion_on_seed_models_is_exact_idempotent_and_leaves_caller_alone(pass_name: str, name: str) -> None:
    model = seed_model(name)
    saved = state(model)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        gm = fxlab.apply(model, pass_name)
        assert_close(gm(x), expected)
    assert leftovers(gm, pass_name) == []
    (p,) = fxlab.parse_pipeline(pass_name)
    again = fxlab.apply(gm, [p])
    assert fxlab.format_graph(again) == fxlab.format_graph(gm)
    assert not p(copy.deepcopy(gm)).modified
    assert same_state(model, saved) and type(model).__name__ != "GraphModule"
    with torch.no_grad():
        assert torch.equal(model(x), expected)


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("pass_name", FUSION)
def test_fusion_golden(pass_name: str, name: str, golden) -> None:
    gm = fxlab.apply(seed_model(name), pass_name)
    golden.check(f"{pass_name}/{name}", fxlab.format_graph(gm))


PIPELINE = "fold-batchnorm,remove-dropout,fuse-linear-relu"


@pytest.mark.parametrize("name", names())
def test_exact_pipeline_golden_and_numbers(name: str, golden) -> None:
    model = seed_model(name)
    gm = fxlab.apply(model, PIPELINE)
    golden.check(f"exact-pipeline/{name}", fxlab.format_graph(gm))
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_simplenn_pipeline_leaves_three_linears() -> None:
    gm = fxlab.apply(seed_model("simplenn"), PIPELINE)
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert kinds == ["LinearReLU", "LinearReLU", "Linear"]
    assert {name for name, _ in gm.named_modules()} == {"", "fc1", "fc2", "fc3"}  # bn, dropout gone
    assert list(gm.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]


@pytest.mark.parametrize(("name", "fused"), [("mymodule", 2), ("neuralnetwork", 1), ("linear-relu-stack", 2),
                                              ("simplenn", 0), ("mymnist", 0)])
def test_fuse_linear_relu_counts_on_seeds(name: str, fused: int) -> None:
    gm = fxlab.apply(seed_model(name), [FuseLinearReLU()])
    assert len(modules_called(gm, LinearReLU)) == fused
    relus = [n for n in gm.graph.nodes if relu_input(gm, n) is not None]
    assert relus == [] or name == "simplenn"  # simplenn's ReLUs follow BatchNorm until it is folded
    if name == "linear-relu-stack":  # the nn.ReLU modules are gone from the module tree too
        assert sorted(k for k, _ in gm.named_modules() if k.startswith("linear_relu_stack.")) == [
            "linear_relu_stack.0", "linear_relu_stack.2", "linear_relu_stack.4"]


# -- fuse-linear-relu --------------------------------------------------------------------------

SPELLINGS = {
    "nn.ReLU": lambda m, x: m.relu_module(x),
    "nn.ReLU(inplace)": lambda m, x: m.relu_inplace(x),
    "F.relu": lambda m, x: F.relu(x),
    "F.relu(inplace=True)": lambda m, x: F.relu(x, inplace=True),
    "F.relu(x, True)": lambda m, x: F.relu(x, True),
    "F.relu_": lambda m, x: F.relu_(x),
    "torch.relu": lambda m, x: torch.relu(x),
    "torch.relu_": lambda m, x: torch.relu_(x),
    "Tensor.relu": lambda m, x: x.relu(),
    "Tensor.relu_": lambda m, x: x.relu_(),
}


class EverySpelling(nn.Module):
    """One Linear per ReLU spelling, each followed by its ReLU."""

    def __init__(self, spellings: list[str], width: int = 6) -> None:
        super().__init__()
        self.spellings = spellings
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in spellings)
        self.relu_module = nn.ReLU()
        self.relu_inplace = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for spelling, layer in zip(self.spellings, self.layers):
            x = SPELLINGS[spelling](self, layer(x))
        return x


def test_every_relu_spelling_is_fused() -> None:
    model = EverySpelling(list(SPELLINGS)).eval()
    gm = fxlab.apply(model, [FuseLinearReLU()])
    ops = [n.op for n in gm.graph.nodes]
    assert ops == ["placeholder"] + ["call_module"] * len(SPELLINGS) + ["output"]
    assert len(modules_called(gm, LinearReLU)) == len(SPELLINGS)
    assert not any(isinstance(m, nn.ReLU) for m in gm.modules())
    x = torch.randn(32, 6)
    with torch.no_grad():
        assert_close(gm(x), model(x))
    # printed as what it is
    assert "layers.0:LinearReLU(6→6)(%x)" in fxlab.format_graph(gm)


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_not_fused_when_the_linear_output_has_other_users(spelling: str) -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 5)
            self.relu_module, self.relu_inplace = nn.ReLU(), nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.fc(x)
            skip = h * 2  # read before the (maybe in-place) ReLU
            return SPELLINGS[spelling](self, h) + skip

    model = Shared()
    gm = fxlab.apply(model, [FuseLinearReLU()])
    assert modules_called(gm, LinearReLU) == []
    assert fxlab.format_graph(gm) == fxlab.format_graph(fxlab.trace(model))
    x = torch.randn(4, 5)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


def test_relu_of_a_non_linear_and_subclassed_linears_are_left_alone() -> None:
    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Tanh(), nn.ReLU(), Custom(3, 3), nn.ReLU(), LinearReLU(3, 3), nn.ReLU())
    gm = fxlab.apply(model, [FuseLinearReLU()])
    assert fxlab.format_graph(gm) == fxlab.format_graph(fxlab.trace(model))


def test_a_linear_called_twice_is_fused_at_a_new_path_sharing_parameters() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.fc(x)) + self.fc(x)

    model = Twice()
    gm = fxlab.apply(model, [FuseLinearReLU()])
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets == ["fc_relu", "fc"]
    assert gm.fc_relu.weight is gm.fc.weight and isinstance(gm.fc, nn.Linear) and type(gm.fc) is nn.Linear
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert fxlab.format_graph(fxlab.apply(gm, [FuseLinearReLU()])) == fxlab.format_graph(gm)


def test_pass_objects_and_text_round_trip() -> None:
    ps = fxlab.parse_pipeline("fuse-linear-relu,fold-batchnorm,fuse-consecutive-linear{allow_growth=true}")
    assert ps == [FuseLinearReLU(), FoldBatchNorm(), FuseConsecutiveLinear(allow_growth=True)]
    assert fxlab.format_pipeline(ps) == "fuse-linear-relu,fold-batchnorm,fuse-consecutive-linear{allow_growth=true}"
    assert all(p.kind == "exact" for p in ps)
    assert FuseLinearReLU.summary().startswith("Fuse a Linear and the ReLU after it")


# -- LinearReLU --------------------------------------------------------------------------------


def test_linear_relu_module_is_a_linear_with_linears_names() -> None:
    lin = nn.Linear(784, 128)
    fused = LinearReLU.from_linear(lin)
    assert isinstance(fused, nn.Linear) and isinstance(fused, fxlab.core.LeafModule)
    assert repr(fused) == "LinearReLU(784→128)" and repr(LinearReLU(3, 2, bias=False)) == "LinearReLU(3→2, bias=False)"
    assert fused.weight is lin.weight and fused.bias is lin.bias
    assert list(fused.state_dict()) == list(lin.state_dict()) == ["weight", "bias"]
    fresh = LinearReLU(784, 128)
    fresh.load_state_dict(lin.state_dict())
    x = torch.randn(7, 784)
    assert torch.equal(fresh(x), torch.relu(lin(x)))
    # one node when traced, printed as itself
    gm = fxlab.trace(nn.Sequential(fresh))
    assert fxlab.format_graph(gm).splitlines()[1] == "%_0 = 0:LinearReLU(784→128)(%input_1)"


@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 6), (6,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_relu_matches_and_trains_like_the_pair(shape: tuple[int, ...], bias: bool) -> None:
    lin = nn.Linear(6, 4, bias=bias)
    fused = LinearReLU(6, 4, bias=bias)
    fused.load_state_dict(lin.state_dict())
    x1 = torch.randn(*shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = torch.relu(lin(x1)), fused(x2)
    assert torch.equal(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert torch.allclose(x1.grad, x2.grad)
    assert torch.allclose(lin.weight.grad, fused.weight.grad)
    if bias:
        assert torch.allclose(lin.bias.grad, fused.bias.grad)
    assert torch.autograd.gradcheck(LinearReLU(3, 2).double(), torch.randn(4, 3, dtype=torch.float64, requires_grad=True))


def test_linear_relu_exports_as_linear_and_relu() -> None:
    model = nn.Sequential(LinearReLU(784, 128)).eval()
    ep = torch.export.export(model, (torch.randn(256, 784),))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets == ["aten.linear.default", "aten.relu_.default"]


def test_fused_model_trains_like_the_original() -> None:
    model = build("linear-relu-stack").train()
    gm = fxlab.apply(model, "fuse-linear-relu,fuse-consecutive-linear")
    assert gm.training and all(m.training for m in gm.modules())
    x, target = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for net in (model, gm):
        F.cross_entropy(net(x), target).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert {k for k, _ in gm.named_parameters()} == set(grads)  # same names: optimisers, checkpoints
    for k, p in gm.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-5, atol=1e-7)


# -- fold-batchnorm ----------------------------------------------------------------------------


def test_fold_matches_torchs_fuse_linear_bn_eval() -> None:
    model = seed_model("simplenn")
    gm = fxlab.apply(model, [FoldBatchNorm()])
    theirs = fuse_linear_bn_eval(copy.deepcopy(model.fc1), copy.deepcopy(model.bn1))
    torch.testing.assert_close(gm.fc1.weight, theirs.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gm.fc1.bias, theirs.bias, rtol=1e-6, atol=1e-6)
    assert modules_called(gm, nn.BatchNorm1d) == [] and not hasattr(gm, "bn1") and not hasattr(gm, "bn2")


def test_fold_refuses_training_mode_and_says_to_call_eval() -> None:
    model = seed_model("simplenn").train()
    with pytest.raises(fxlab.PassError) as err:
        fxlab.apply(model, [FoldBatchNorm()])
    msg = str(err.value)
    assert "fold-batchnorm" in msg and "bn1" in msg and "training mode" in msg and "model.eval()" in msg
    # a model in training mode whose BatchNorm is in eval mode: folding is exact, so it folds
    model.bn1.eval()
    model.bn2.eval()
    gm = fxlab.apply(model, [FoldBatchNorm()])
    assert modules_called(gm, nn.BatchNorm1d) == []


def test_fold_variants_affine_off_no_bias_and_batch_statistics() -> None:
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4, affine=False), nn.ReLU(),
                          nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False))
    randomize_batchnorm(model).eval()
    gm = fxlab.apply(model, [FoldBatchNorm()])
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert kinds == ["Linear", "ReLU", "Linear", "BatchNorm1d"]  # no running stats: left alone
    assert gm.get_submodule("0").bias is not None and not hasattr(gm, "1")  # folded in place, BN deleted
    x = torch.randn(16, 5)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_fold_skips_when_the_linear_output_has_other_users() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            h = self.fc(x)
            return self.bn(h) + h

    model = randomize_batchnorm(Skip()).eval()
    gm = fxlab.apply(model, [FoldBatchNorm()])
    assert fxlab.format_graph(gm) == fxlab.format_graph(fxlab.trace(model))


def test_fold_with_weight_read_elsewhere_keeps_the_original_for_that_reader() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.fc(x)) + x @ self.fc.weight

    model = randomize_batchnorm(Tied()).eval()
    gm = fxlab.apply(model, [FoldBatchNorm()])
    assert [n.target for n in gm.graph.nodes if n.op in ("call_module", "get_attr")] == ["fc_folded", "fc.weight"]
    x = torch.randn(6, 4)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_passes_never_write_into_the_callers_tensors_even_inplace() -> None:
    model = seed_model("simplenn")
    saved = state(model)
    params = {k: v for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        gm = fxlab.apply(model, PIPELINE + ",fuse-consecutive-linear,cse,dce", inplace=True)
        assert_close(gm(x), expected)
    assert all(torch.equal(params[k], saved[k]) for k in saved)  # the very tensors, unchanged
    assert same_state(model, saved)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


# -- fuse-consecutive-linear -------------------------------------------------------------------


def test_chain_of_linears_becomes_one() -> None:
    model = nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 6, bias=False), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 3))
    gm = fxlab.apply(model, [FuseConsecutiveLinear()])
    assert fxlab.format_graph(gm).splitlines()[1:] == [
        "%_2 = 2:Linear(10→3)(%input_1)",
        "%_3 = 3:ReLU()(%_2)",
        "%_4 = 4:Linear(3→3)(%_3)",
        "return %_4",
    ]
    assert not hasattr(gm, "0") and not hasattr(gm, "1")
    x = torch.randn(9, 10)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_bottleneck_stays_unless_growth_is_allowed() -> None:
    model = nn.Sequential(nn.Linear(16, 2), nn.Linear(2, 16), nn.Linear(16, 1))
    x = torch.randn(4, 16)
    gm = fxlab.apply(model, [FuseConsecutiveLinear()])
    # 16→2→16 would grow (256 > 64 weights), but 2→16→1 shrinks, and then 16→2→1 shrinks too
    assert [str(m) for m in modules_called(gm, nn.Linear)] == ["Linear(in_features=16, out_features=1, bias=True)"]
    bottleneck = nn.Sequential(nn.Linear(16, 2), nn.Linear(2, 16))
    kept = fxlab.apply(bottleneck, [FuseConsecutiveLinear()])
    assert len(modules_called(kept, nn.Linear)) == 2
    grown = fxlab.apply(bottleneck, "fuse-consecutive-linear{allow_growth=true}")
    assert [m.weight.shape for m in modules_called(grown, nn.Linear)] == [torch.Size([16, 16])]
    with torch.no_grad():
        assert_close(gm(x), model(x))
        assert_close(grown(x), bottleneck(x))


def test_the_same_linear_applied_twice_merges() -> None:
    class Square(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(self.fc(x))

    model = Square()
    gm = fxlab.apply(model, [FuseConsecutiveLinear()])
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["fc_merged"] and not hasattr(gm, "fc")
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert_close(gm(x), model(x))


# -- random MLPs × random pipelines of every exact pass -----------------------------------------

LAYER_KINDS = ["linear", "bn", "dropout", "F.dropout", "twice", "skip", *SPELLINGS]


class RandomMLP(nn.Module):
    """An MLP from a list of layer kinds; functional spellings are traced as calls, not modules.

    Besides Linear, BatchNorm1d, Dropout and ReLU in every spelling: ``twice`` (one Linear applied
    twice to the same input, summed) and ``skip`` (``x + relu(x)``).
    """

    def __init__(self, width_in: int, plan: list[tuple[str, int]]) -> None:
        super().__init__()
        self.plan = plan
        self.mods = nn.ModuleList()
        self.relu_module, self.relu_inplace = nn.ReLU(), nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.3)
        width = width_in
        for kind, arg in plan:
            if kind == "linear":
                self.mods.append(nn.Linear(width, arg, bias=arg % 3 != 0))
                width = arg
            elif kind == "bn":
                self.mods.append(nn.BatchNorm1d(width, affine=arg % 2 == 0))
            elif kind == "twice":
                self.mods.append(nn.Linear(width, width))
            else:
                self.mods.append(nn.Identity())
        self.width_out = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (kind, _), mod in zip(self.plan, self.mods):
            if kind in ("linear", "bn"):
                x = mod(x)
            elif kind == "dropout":
                x = self.drop(x)
            elif kind == "F.dropout":
                x = F.dropout(x, 0.2, training=self.training)
            elif kind == "twice":  # the same work twice (cse), a Linear with two users
                x = mod(x) + mod(x)
            elif kind == "skip":  # a value read by a ReLU and by something else
                x = x + torch.relu(x)
            else:
                x = SPELLINGS[kind](self, x)
        return x


@st.composite
def random_mlps(draw):
    plan = [("linear", draw(st.integers(1, 10)))]
    for _ in range(draw(st.integers(0, 9))):
        kind = draw(st.sampled_from(LAYER_KINDS))
        plan.append((kind, draw(st.integers(1, 10))))
    return RandomMLP(draw(st.integers(1, 10)), plan)


@settings(max_examples=60, deadline=None)
@given(random_mlps(), st.lists(st.sampled_from(EXACT), min_size=1, max_size=8), st.integers(0, 2**16))
def test_random_mlps_random_exact_pipelines(model: RandomMLP, pipeline: list[str], seed: int) -> None:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, 0, 0.7)
    randomize_batchnorm(model).eval()
    saved = state(model)
    x = torch.randn(8, model.mods[0].in_features)
    with torch.no_grad():
        expected = model(x)
    gm = fxlab.trace(model)
    for text in pipeline:
        (p,) = fxlab.parse_pipeline(text)
        once = fxlab.apply(gm, [p])
        twice = fxlab.apply(once, [p])
        assert fxlab.format_graph(twice) == fxlab.format_graph(once), text
        if text in FUSION:
            assert leftovers(once, text) == [], text
        gm = once
    with torch.no_grad():
        assert_close(gm(x), expected)
    assert same_state(model, saved)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_linear_relu_big_cpu_calls_use_packed_weights_that_follow_the_weight() -> None:
    """oneDNN's fused Linear+ReLU on a pre-packed weight (the ``onednn`` candidate, forced here; CPU
    inference chooses it where measured faster): same numbers as relu(linear), repacked after an
    in-place update, never saved or copied."""
    import io

    import fxlab.nn.fused as fused_nn
    from fxlab.nn.kernels import choice

    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    fused = LinearReLU.from_linear(lin)
    x = torch.randn(1024, 64)
    with torch.no_grad(), choice.forced("onednn"):
        y = fused(x)
        assert ("_fxlab_packed" in fused.__dict__) == fused_nn._MKLDNN
        torch.testing.assert_close(y, torch.relu(lin(x)), rtol=1e-5, atol=1e-5)
        lin.weight.mul_(-2.0)  # an optimizer step would do this in place
        torch.testing.assert_close(fused(x), torch.relu(lin(x)), rtol=1e-5, atol=1e-5)
    assert "_fxlab_packed" not in copy.deepcopy(fused).__dict__
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    assert set(fused.state_dict()) == {"weight", "bias"}
    x.requires_grad_(True)  # autograd: the plain path
    fused(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None
