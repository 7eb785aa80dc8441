"""The core: trace, selectors, Pass, apply, pipeline text, InsertActivation / InsertRelu."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.fx.passes.infra.pass_manager import PassManager

import fxlab
from seed_helpers import SEED_LAYERS
from fxlab.models import build
from fxlab.models import seed_names as names
from fxlab.passes import InsertActivation, InsertRelu



def eager_with_activation(model: nn.Module, layers: dict[str, list], x: torch.Tensor) -> torch.Tensor:
    """The model computed eagerly, with ``fns`` applied to the outputs of the named submodules."""
    handles = []
    for path, fns in layers.items():
        for fn in fns:
            handles.append(model.get_submodule(path).register_forward_hook(lambda m, i, o, fn=fn: fn(o)))
    try:
        return model(x)
    finally:
        for h in handles:
            h.remove()


def fx_demo_transform(m: nn.Module) -> fx.GraphModule:
    """Seed 000's fx_demo.py, as torch.fx's documentation writes it."""
    gm = fx.symbolic_trace(m)
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == "layer3":
            with gm.graph.inserting_after(node):
                new_node = gm.graph.call_function(torch.relu, args=(node,))
                node.replace_all_uses_with(new_node)
                new_node.args = (node,)
    gm.graph.lint()
    gm.recompile()
    return gm


def ops(gm: fx.GraphModule) -> list[tuple[str, object]]:
    return [(n.op, n.target) for n in gm.graph.nodes]


# -- InsertRelu and the seed demo --------------------------------------------------------------


def test_insert_relu_is_seed_fx_demo() -> None:
    model = build("mymodule").eval()
    ours = fxlab.apply(model, [InsertRelu("layer3")])
    theirs = fx_demo_transform(copy.deepcopy(model))
    assert ops(ours) == ops(theirs)
    x = torch.randn(16, 1, 28, 28)
    assert torch.equal(ours(x), theirs(x))
    assert torch.equal(ours(x), torch.relu(model(x)))
    assert (ours(x) >= 0).all() and (model(x) < 0).any()


def test_apply_never_mutates_the_callers_model() -> None:
    model = build("simplenn").eval()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 1, 28, 28)
    before = model(x)
    gm = fxlab.apply(model, "insert-relu{after=fc3},insert-activation{after=fc1 fn=tanh}")
    with torch.no_grad():
        for p in gm.parameters():
            p.add_(1.0)  # the result owns its parameters
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), before)
    assert not isinstance(model, fx.GraphModule) and type(model).__name__ == "SimpleNN"


def test_apply_on_graphmodule_copies_unless_inplace() -> None:
    gm = fxlab.trace(build("mymodule"))
    before = fxlab.format_graph(gm)
    out = fxlab.apply(gm, [InsertRelu("layer1")])
    assert fxlab.format_graph(gm) == before and out is not gm
    same = fxlab.apply(gm, [InsertRelu("layer1")], inplace=True)
    assert same is gm and fxlab.format_graph(gm) != before


@pytest.mark.parametrize("name", names())
def test_insert_relu_on_every_seed_layer_name(name: str) -> None:
    model = build(name).eval()
    layer = SEED_LAYERS[name]
    gm = fxlab.apply(model, [InsertRelu(layer)])
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(gm(x), eager_with_activation(model, {layer: [torch.relu]}, x))


@pytest.mark.parametrize("name", names())
def test_insert_relu_golden(name: str, golden) -> None:
    gm = fxlab.apply(build(name), [InsertRelu(SEED_LAYERS[name])])
    golden.check(f"insert-relu/{name}", fxlab.format_graph(gm))


def test_activation_reaches_every_user_including_output() -> None:
    class TwoUsers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            h = self.a(x)
            return h + 1, h * 2

    model = TwoUsers()
    gm = fxlab.apply(model, [InsertActivation(after="a", fn="sigmoid")])
    x = torch.randn(2, 3)
    s = torch.sigmoid(model.a(x))
    y1, y2 = gm(x)
    assert torch.equal(y1, s + 1) and torch.equal(y2, s * 2)


def test_activation_kinds_callable_and_module() -> None:
    model = build("mymodule").eval()
    x = torch.randn(3, 1, 28, 28)
    gm = fxlab.apply(model, [InsertActivation(after="layer2", fn=nn.Hardtanh(-0.5, 0.5))])
    assert "layer2_activation" in dict(gm.named_modules())
    ref = eager_with_activation(model, {"layer2": [nn.Hardtanh(-0.5, 0.5)]}, x)
    assert torch.equal(gm(x), ref)
    gm = fxlab.apply(model, [InsertActivation(after="layer1", fn=F.softsign)])
    assert torch.equal(gm(x), eager_with_activation(model, {"layer1": [F.softsign]}, x))


# -- selectors ---------------------------------------------------------------------------------


def test_selectors_name_path_glob_type_function() -> None:
    gm = fxlab.trace(build("mymodule"))
    assert [n.name for n in fxlab.select(gm, "layer*")] == ["layer1", "layer2", "layer3"]
    assert [n.name for n in fxlab.select(gm, nn.Linear)] == ["layer1", "layer2", "layer3"]
    assert [n.name for n in fxlab.select(gm, torch.relu)] == ["relu", "relu_1"]
    assert [n.name for n in fxlab.select(gm, ["layer3", "layer1"])] == ["layer1", "layer3"]
    stack = fxlab.trace(build("linear-relu-stack"))
    assert [n.name for n in fxlab.select(stack, "linear_relu_stack.4")] == ["linear_relu_stack_4"]
    assert [n.name for n in fxlab.select(stack, nn.ReLU)] == ["linear_relu_stack_1", "linear_relu_stack_3"]
    nn001 = fxlab.trace(build("neuralnetwork"))
    assert [n.name for n in fxlab.select(nn001, F.relu)] == ["relu"]
    mymnist = fxlab.trace(build("mymnist"))
    assert [n.name for n in fxlab.select(mymnist, "_hidden_layer_?")] == ["_hidden_layer_0", "_hidden_layer_1"]


def test_selector_matching_nothing_names_closest() -> None:
    with pytest.raises(fxlab.PassError) as err:
        fxlab.apply(build("mymodule"), [InsertRelu("layer4")])
    msg = str(err.value)
    assert "insert-relu" in msg and "'layer4'" in msg and "layer3, layer2, layer1" in msg
    with pytest.raises(fxlab.PassError, match="module types present: Linear"):
        fxlab.apply(build("mymodule"), [InsertRelu(nn.Conv2d)])


# -- errors ------------------------------------------------------------------------------------


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.lin(x)
        return x


def test_trace_error_names_module_line_and_fixes() -> None:
    with pytest.raises(fxlab.TraceError) as err:
        fxlab.trace(Branchy())
    msg = str(err.value)
    assert "Branchy.forward" in msg and "test_core.py" in msg and "if x.sum() > 0" in msg
    assert "concrete_args" in msg and "leaf_modules" in msg
    wrapped = nn.Sequential(nn.Linear(4, 4), Branchy())
    gm = fxlab.trace(wrapped, leaf_modules=[Branchy])
    assert [n.op for n in gm.graph.nodes].count("call_module") == 2


def test_pipeline_errors_point_at_position() -> None:
    with pytest.raises(fxlab.PipelineError) as err:
        fxlab.parse_pipeline("insert-relu{after=layer3},fuse-everything")
    msg = str(err.value)
    assert "unknown pass 'fuse-everything'" in msg and "position 26" in msg and "insert-relu" in msg
    assert msg.splitlines()[-1].index("^") == 2 + 26
    with pytest.raises(fxlab.PipelineError, match=r"no option 'aftr' \(closest: after\).*position 12"):
        fxlab.parse_pipeline("insert-relu{aftr=layer3}")
    # a name with a character outside [A-Za-z0-9_-] is reported whole, not cut at that character
    with pytest.raises(fxlab.PipelineError, match=r"unknown pass 'fusé-linear-relu' \(closest: fuse-linear-relu"):
        fxlab.parse_pipeline("fusé-linear-relu")
    with pytest.raises(fxlab.PipelineError, match="missing '}'"):
        fxlab.parse_pipeline("insert-relu{after=layer3")
    with pytest.raises(fxlab.PipelineError, match="empty pipeline"):
        fxlab.parse_pipeline("  ")
    with pytest.raises(fxlab.PipelineError, match="given twice"):
        fxlab.parse_pipeline("insert-relu{after=a after=b}")
    with pytest.raises(fxlab.PipelineError, match="pass .insert-relu. needs after="):
        fxlab.parse_pipeline("insert-relu")


@dataclass
class Explodes(fxlab.Pass):
    name = "explodes"
    kind = "exact"

    def call(self, gm):
        node = next(n for n in gm.graph.nodes if n.op == "call_module")
        with gm.graph.inserting_after(node):
            gm.graph.call_function(torch.neg, (node,))
        raise RuntimeError("boom")


@dataclass
class Dangling(fxlab.Pass):
    name = "dangling"
    kind = "exact"

    def call(self, gm):
        node = next(n for n in gm.graph.nodes if n.op == "call_module")
        node.target = "no_such_module"
        return gm


def test_failing_pass_raises_pass_error_and_applies_nothing() -> None:
    gm = fxlab.trace(build("mymodule"))
    before = fxlab.format_graph(gm)
    with pytest.raises(fxlab.PassError, match="pass 'explodes' failed: RuntimeError: boom"):
        fxlab.apply(gm, [InsertRelu("layer1"), Explodes()], inplace=True)
    assert fxlab.format_graph(gm) != before  # insert-relu{after=layer1} landed
    # inplace: passes that succeeded before the failure stay, the failing one is rolled back
    assert "neg" not in fxlab.format_graph(gm)
    with pytest.raises(fxlab.PassError, match="'dangling' left an invalid graph"):
        fxlab.apply(build("mymodule"), [Dangling()])
    x = torch.randn(2, 1, 28, 28)
    gm2 = fxlab.trace(build("mymodule"))
    ref = gm2(x)
    with pytest.raises(fxlab.PassError):
        fxlab.apply(gm2, [Dangling()], inplace=True)
    assert torch.equal(gm2(x), ref) and "no_such_module" not in fxlab.format_graph(gm2)


def test_apply_rejects_non_passes() -> None:
    with pytest.raises(fxlab.PipelineError, match="not an fxlab.Pass"):
        fxlab.apply(build("mymodule"), [lambda gm: gm])


# -- torch PassManager, records, registry ------------------------------------------------------


def test_passes_run_under_torch_pass_manager() -> None:
    model = build("mymodule").eval()
    gm = fxlab.trace(copy.deepcopy(model))
    result = PassManager(passes=[InsertRelu("layer1"), InsertActivation(after="layer3", fn="tanh")])(gm)
    x = torch.randn(2, 1, 28, 28)
    ref = eager_with_activation(model, {"layer1": [torch.relu], "layer3": [torch.tanh]}, x)
    assert result.modified and torch.equal(result.graph_module(x), ref)


def test_records_table() -> None:
    gm = fxlab.apply(build("mymodule"), "insert-relu{after=layer3},insert-activation{after=layer*}")
    recs = fxlab.records(gm)
    assert [(r.name, r.added, r.removed) for r in recs] == [("insert-relu", 1, 0), ("insert-activation", 3, 0)]
    assert recs[1].nodes_after == recs[1].nodes_before + 3 and recs[1].changed == 3
    table = recs.table()
    assert "insert-activation" in table and "nodes after" in table
    assert gm.meta["fxlab.pipeline"] == "insert-relu{after=layer3},insert-activation{after=layer*}"


def test_user_defined_pass_registers_and_parses() -> None:
    @fxlab.register_pass
    @dataclass
    class Scale(fxlab.Pass):
        """Multiply the output by a factor."""

        name = "scale-output"
        kind = "changes"
        factor: float = 2.0
        exact_only: bool = False

        def call(self, gm):
            out = next(n for n in gm.graph.nodes if n.op == "output")
            with gm.graph.inserting_before(out):
                new = gm.graph.call_function(torch.mul, (out.args[0], self.factor))
            out.args = (new,)
            return gm

    (p,) = fxlab.parse_pipeline("scale-output{factor=0.5 exact_only=true}")
    assert p == Scale(0.5, True) and fxlab.get_pass("scale-output") is Scale
    assert Scale.summary() == "Multiply the output by a factor."
    model = build("mymodule")
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(fxlab.apply(model, "scale-output{factor=0.5}")(x), model(x) * 0.5)
    with pytest.raises(fxlab.PipelineError, match="expected float, got 'big'"):
        fxlab.parse_pipeline("scale-output{factor=big}")
    with pytest.raises(fxlab.PipelineError, match="taken"):
        fxlab.register_pass(type("Other", (Scale,), {"__qualname__": "Other"}))


# -- pipeline text round trip ------------------------------------------------------------------

ROUND_TRIP = [
    "insert-relu{after=layer3}",
    "insert-relu{after=layer3},insert-activation{after=layer2 fn=gelu}",
    "insert-activation{fn=relu after=layer2}",
    "insert-activation{after=layer1,layer3 fn=tanh}",
    'insert-activation{after="linear_relu_stack.*" fn=sigmoid}',
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_pipeline_text_round_trips(text: str) -> None:
    passes = fxlab.parse_pipeline(text)
    assert fxlab.format_pipeline(passes) == text.replace('"linear_relu_stack.*"', "linear_relu_stack.*")
    assert fxlab.parse_pipeline(fxlab.format_pipeline(passes)) == passes


def test_objects_round_trip_and_rich_options_have_no_text() -> None:
    ps = [InsertRelu("layer3"), InsertActivation(after=["fc1", "fc2"], fn="silu"), InsertActivation("x y")]
    assert fxlab.parse_pipeline(fxlab.format_pipeline(ps)) == ps
    assert fxlab.format_pipeline(ps) == 'insert-relu{after=layer3},insert-activation{after=fc1,fc2 fn=silu},insert-activation{after="x y"}'
    with pytest.raises(fxlab.PipelineError, match="no text form"):
        fxlab.format_pipeline([InsertActivation(after=nn.Linear)])


# -- property test -----------------------------------------------------------------------------

ACTS = {"relu": torch.relu, "gelu": F.gelu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


@st.composite
def mlp_and_insertions(draw):
    widths = draw(st.lists(st.integers(1, 12), min_size=2, max_size=6))
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(draw(st.sampled_from([nn.ReLU, nn.Tanh, nn.Identity]))())
    inserts = draw(
        st.lists(st.tuples(st.integers(0, len(layers) - 1), st.sampled_from(sorted(ACTS))), max_size=5)
    )
    return widths[0], nn.Sequential(*layers), inserts


@settings(max_examples=40, deadline=None)
@given(mlp_and_insertions(), st.integers(0, 2**16))
def test_random_mlps_with_random_insertions_match_eager(case, seed) -> None:
    width, model, inserts = case
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p)
    passes = [InsertActivation(after=str(i), fn=fn) for i, fn in inserts]
    gm = fxlab.apply(model, passes)
    layers: dict[str, list] = {}
    for i, fn in inserts:
        # a later insertion after the same layer sits right after it: it runs first
        layers.setdefault(str(i), []).insert(0, ACTS[fn])
    x = torch.randn(5, width)
    assert torch.equal(gm(x), eager_with_activation(model, layers, x))


def test_import_fxlab_stays_light() -> None:
    """`python -m fxlab.<command>` must not find its module already imported (runpy warning)."""
    import subprocess
    import sys

    commands = ["fxlab.show", "fxlab.train", "fxlab.data", "fxlab.bench", "fxlab.verification", "fxlab.cli",
                "fxlab.rendering", "fxlab.serialization", "torchvision", "onnx", "graphviz"]
    code = f"import sys, fxlab; print([m for m in {commands!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_keyword_and_number_strings_are_quoted() -> None:
    for text in ["none", "true", "1.5", "12"]:
        p = InsertActivation(after=text)
        assert p.to_text() == f'insert-activation{{after="{text}"}}'
        assert fxlab.parse_pipeline(p.to_text()) == [p]


def test_applied_graph_module_is_called_directly_and_still_traceable() -> None:
    """fxlab's GraphModules skip torch.fx's printing error wrapper; tracing a model that holds one
    still sees through it, and a recompile brings the wrapper back."""
    import torch
    from torch import nn

    import fxlab
    from fxlab.models import build
    from fxlab.passes import InsertRelu

    gm = fxlab.apply(build("mymodule").eval(), [InsertRelu("layer3")])
    assert type(gm).__call__.__name__ == "module_call"
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(gm(x), gm.forward(x))
    outer = nn.Sequential(gm, nn.Softmax(dim=1))
    traced = torch.fx.symbolic_trace(outer)
    assert any(n.op == "call_module" and n.target.endswith("layer1") for n in traced.graph.nodes)
    torch.testing.assert_close(traced(x), outer(x))
    with pytest.raises(RuntimeError):
        gm(torch.randn(3, 5))  # the error itself is torch's, unchanged
    gm.recompile()
    assert type(gm).__call__.__name__ == "call_wrapped"


def test_applied_graph_module_finds_its_children_on_its_class_and_they_stay_submodules() -> None:
    """The generated code's ``self.<child>`` is found on the GraphModule's own class (not through
    ``Module.__getattr__``); children are still assigned, deleted, added, saved and copied as
    ordinary submodules, and other GraphModules are left alone."""
    import copy

    import torch
    from torch import nn

    import fxlab
    from fxlab.models import build
    from fxlab.passes import InsertRelu

    model = build("mymodule").eval()
    gm = fxlab.apply(model, [InsertRelu("layer3")])
    names = list(gm._modules)
    assert names and all(isinstance(type(gm).__dict__.get(n), property) for n in names)
    assert all(getattr(gm, n) is gm._modules[n] for n in names)
    assert not any(isinstance(type(fxlab.trace(model)).__dict__.get(n), property) for n in names)
    x = torch.randn(3, 1, 28, 28)
    expected = gm(x)
    state = gm.state_dict()
    twin = copy.deepcopy(gm)
    assert torch.equal(twin(x), expected) and twin.state_dict().keys() == state.keys()
    replacement = nn.Linear(gm.layer1.in_features, gm.layer1.out_features)
    gm.layer1 = replacement  # Module.__setattr__: into _modules, seen by the property
    assert gm.layer1 is replacement and gm._modules["layer1"] is replacement
    assert not torch.equal(gm(x), expected)
    del gm.layer1
    assert "layer1" not in gm._modules
    with pytest.raises(AttributeError, match="layer1"):
        gm.layer1
    with pytest.raises(AttributeError):
        gm(x)
    gm.add_module("layer1", twin.layer1)
    assert gm.layer1 is twin.layer1
    assert torch.equal(gm(x), expected)
    gm.register_buffer("extra", torch.ones(2))  # other attributes: Module.__getattr__ as before
    assert torch.equal(gm.extra, torch.ones(2))


def test_direct_calls_still_run_hooks_tracers_and_compiled_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """fxlab's modules and applied GraphModules skip ``nn.Module.__call__`` only when it would do
    nothing but call ``forward``: hooks (the module's own and global ones), torch.fx's tracer,
    TorchScript tracing and ``Module.compile`` all still see every call."""
    from torch.nn.modules import module as torch_module

    from fxlab._util import DirectCall, module_call
    from fxlab.nn import Dequantize, Int8StaticLinear, LinearReLU, Quantize
    from fxlab.passes import FuseLinearReLU, QuantizeLinear

    model = build("neuralnetwork").eval()
    calibration = [torch.randn(16, 1, 28, 28)]
    gm = fxlab.apply(model, [FuseLinearReLU(), QuantizeLinear(mode="static", calibration=calibration)])
    fused = fxlab.apply(model, [FuseLinearReLU()])
    leaves = [m for m in gm.modules() if m is not gm]
    assert {type(m) for m in leaves} == {Int8StaticLinear, Quantize, Dequantize}
    assert all(isinstance(m, DirectCall) for m in leaves) and isinstance(fused.fc1, LinearReLU)
    assert type(gm).__call__ is module_call
    x = torch.randn(3, 1, 28, 28)
    expected = nn.Module.__call__(gm, x)
    assert torch.equal(gm(x), expected)

    seen: list[str] = []
    handles = [gm.fc1.register_forward_pre_hook(lambda m, args: seen.append("pre")),
               gm.fc1.register_forward_hook(lambda m, args, out: seen.append("post"))]
    assert torch.equal(gm(x), expected) and seen == ["pre", "post"]
    for handle in handles:
        handle.remove()
    seen.clear()
    doubled = fused.fc1.register_forward_hook(lambda m, args, out: out * 2)  # a hook's result is used
    assert torch.equal(fused.fc1(x.flatten(1)), 2 * F.relu(F.linear(x.flatten(1), fused.fc1.weight, fused.fc1.bias)))
    doubled.remove()
    handle = torch_module.register_module_forward_hook(lambda m, args, out: seen.append(type(m).__name__))
    try:
        gm(x)
    finally:
        handle.remove()
    assert seen == ["Quantize", "Int8StaticLinear", "Int8StaticLinear", "Dequantize", type(gm).__name__]

    # torch.fx's tracer patches nn.Module.__call__: the quantized modules stay leaves of the new graph
    retraced = fxlab.trace(gm)
    assert [n.target for n in retraced.graph.nodes if n.op == "call_module"] == [
        "fc1.input_quant", "fc1", "fc2", "fc2.output_dequant"]
    assert torch.equal(retraced(x), expected)
    assert torch.equal(torch.jit.trace(gm, x)(x), expected)
    compiled_calls: list[int] = []
    gm.fc2._compiled_call_impl = lambda *args: compiled_calls.append(1) or gm.fc2.forward(*args)
    assert torch.equal(gm(x), expected) and compiled_calls == [1]
    # the fast path itself: forward, and nothing else
    del gm.fc2._compiled_call_impl
    gm.fc2._compiled_call_impl = None
    monkeypatch.setattr(torch_module.Module, "_call_impl", lambda *a, **k: pytest.fail("slow path taken"))
    assert torch.equal(gm(x), expected)


def test_torch_fx_symbolic_trace_keeps_fxlabs_modules_whole() -> None:
    """``torch.fx.symbolic_trace`` (whose tracer keeps only torch.nn's own modules whole) records
    each of fxlab's modules as one call_module node, as fxlab's tracer does: quantized Linears and
    convs, quantize / dequantize, fused Linear+ReLU and Conv+ReLU, observers, fake quantizers."""
    from fxlab.nn import ConvReLU, LinearReLU, MinMaxObserver
    from fxlab.passes import FuseConvReLU, FuseLinearReLU, QuantizeConv, QuantizeLinear
    from fxlab.passes.quantize.configs import MODES
    from fxlab.passes.quantize.qat import FakeQuantLinear

    x = torch.randn(3, 1, 28, 28)
    lenet = build("lenet5").eval()
    mlp = build("neuralnetwork").eval()
    fq = copy.deepcopy(mlp)
    fq.fc1 = FakeQuantLinear.wrap(fq.fc1, MODES["int4"])
    models = {
        "fused": fxlab.apply(lenet, "fold-batchnorm,fuse-conv-relu,fuse-linear-relu"),
        "dynamic+conv": fxlab.apply(lenet, [FuseConvReLU(), QuantizeLinear(mode="dynamic"), QuantizeConv(mode="dynamic")]),
        "bf16+conv": fxlab.apply(lenet, [QuantizeLinear(mode="bf16"), QuantizeConv(mode="bf16")]),
        "static": fxlab.apply(mlp, [FuseLinearReLU(), QuantizeLinear(mode="static", calibration=[x])]),
        "prepared": fxlab.apply(mlp, "quantize-prepare"),
        "fake-quant": fq,
    }
    kinds: set[type] = set()
    for label, model in models.items():
        ours = fxlab.trace(model)
        theirs = torch.fx.symbolic_trace(model)
        targets = [n.target for n in theirs.graph.nodes if n.op == "call_module"]
        assert targets == [n.target for n in ours.graph.nodes if n.op == "call_module"], label
        kinds |= {type(theirs.get_submodule(t)) for t in targets}
        with torch.no_grad():
            torch.testing.assert_close(theirs(x), model(x), rtol=0, atol=0, msg=label)
    assert {ConvReLU, LinearReLU, MinMaxObserver, FakeQuantLinear} <= kinds


def test_value_reading_passes_refuse_meta_device_weights() -> None:
    chain = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4), nn.Linear(4, 2)).to("meta")
    with pytest.raises(fxlab.PassError, match=r"^fuse-consecutive-linear: 0's weight is on the meta device \(no values\); "
                       r"load real weights first"):
        fxlab.apply(chain, "fuse-consecutive-linear")
    with pytest.raises(fxlab.PassError, match=r"^fold-batchnorm: fc1's weight is on the meta device"):
        fxlab.apply(build("simplenn").eval().to("meta"), "fold-batchnorm")


class _ReluToGelu(fxlab.Pass):
    """A user pass: F.gelu in place of the first relu (insert, replace_all_uses_with, erase)."""

    name = "test-relu-to-gelu"
    kind = "changes"

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        return _relu_to_gelu(gm)


def _relu_to_gelu(gm: fx.GraphModule) -> fx.GraphModule:
    relu = next(n for n in gm.graph.nodes if n.name == "relu")
    with gm.graph.inserting_after(relu):
        gelu = gm.graph.call_function(F.gelu, relu.args)
    relu.replace_all_uses_with(gelu)
    gm.graph.erase_node(relu)
    gm.recompile()
    return gm


def _builtin_passes() -> list[fxlab.Pass]:
    from fxlab.pipeline.base import registered_passes

    calibration = [torch.randn(8, 1, 28, 28)]
    made: list[fxlab.Pass] = []
    for name, cls in sorted(registered_passes().items()):
        if name == "quantize-linear":
            made += [cls(mode=m, calibration=calibration) for m in ("dynamic", "weight-only", "bf16", "static")]
        elif name in ("insert-activation", "insert-relu"):
            made.append(cls(after="layer2"))
        elif name == "quantize-conv":
            made.append(cls(mode="dynamic"))
        elif name == "quantize-convert":
            continue  # below, after quantize-prepare and calibration
        elif cls.__module__.startswith("fxlab."):
            made.append(cls())
    return made


def test_every_builtin_pass_keeps_provenance_to_traced_names() -> None:
    from fxlab.core import origins
    from fxlab.pipeline import records

    model = build("mymodule").eval()
    traced = {n.name for n in fxlab.trace(model).graph.nodes}
    results = {str(p): fxlab.apply(model, [p]) for p in _builtin_passes()}
    prepared = results["quantize-prepare"]
    prepared(torch.randn(8, 1, 28, 28))
    results["quantize-prepare,quantize-convert"] = fxlab.apply(prepared, "quantize-convert")
    for text, gm in results.items():
        stands = [origins(n) for n in gm.graph.nodes]
        for n, names_ in zip(gm.graph.nodes, stands):
            assert set(names_) <= traced, (text, n.name, names_)
        # every traced name is stood for by exactly one node (none lost, none claimed twice)
        flat = [name for names_ in stands for name in names_]
        assert sorted(flat) == sorted(set(flat)), (text, flat)
        assert set(flat) == traced, (text, traced - set(flat))
    fused = {n.name: origins(n) for n in results["fuse-linear-relu"].graph.nodes}
    assert fused["layer1"] == ("layer1", "relu") and fused["layer2"] == ("layer2", "relu_1")
    inserted = results["insert-activation{after=layer2}"]
    new = [n for n in inserted.graph.nodes if n.name not in traced]
    assert len(new) == 1 and origins(new[0]) == ()
    for text in ("quantize-linear{mode=static}", "quantize-prepare,quantize-convert"):
        tables = {n.name: origins(n) for n in results[text].graph.nodes if n.name.endswith("_int8")}
        assert tables == {"relu_int8": ("relu",), "relu_1_int8": ("relu_1",)}, text
    chain = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4), nn.Linear(4, 2))
    merged = {n.name: origins(n) for n in fxlab.apply(chain, "fuse-consecutive-linear").graph.nodes}
    assert merged == {"input_1": ("input_1",), "_2": ("_0", "_1", "_2"), "output": ("output",)}

    gm = fxlab.apply(model, [_ReluToGelu()])
    gelu = next(n for n in gm.graph.nodes if n.target is F.gelu)
    assert origins(gelu) == ("relu",)
    diff = records(gm)[-1].diff
    assert diff.replaced == {gelu.name: ["relu"]} and not diff.added and not diff.removed


def test_site_records_and_the_rewrite_limit() -> None:
    """A pass reports the sites it rewrote and left alone; apply's limit caps its rewrites, in order."""
    from fxlab.pipeline import sites

    @fxlab.register_pass
    @dataclass
    class DoubleLinears(fxlab.Pass):
        name = "test-double-linears"
        kind = "changes"

        def call(self, gm):
            for node in list(gm.graph.nodes):
                if node.op != "call_module":
                    continue
                if node.target == "layer2":
                    sites.skipped(gm, node.name, "kept for the test")
                    continue
                if not sites.allow(gm, node.name):
                    continue
                with gm.graph.inserting_after(node):
                    doubled = gm.graph.call_function(torch.mul, (node, 2.0))
                node.replace_all_uses_with(doubled, delete_user_cb=lambda user: user is not doubled)
                sites.rewrote(gm, node.name)
            return gm

    model = build("mymodule")
    record = fxlab.records(fxlab.apply(model, "test-double-linears"))[-1]
    assert record.rewritten == ["layer1", "layer3"] and record.skipped == [("layer2", "kept for the test")]
    assert record.sites_text() == "2 rewritten, 1 left alone"
    limited = fxlab.records(fxlab.apply(model, "test-double-linears", limit=1))[-1]
    assert limited.rewritten == ["layer1"]
    assert ("layer3", "beyond limit=1") in limited.skipped
    table = fxlab.records(fxlab.apply(model, "test-double-linears")).table()
    assert "test-double-linears: layer2: kept for the test" in table
    # a pass that reports nothing has unknown sites, not empty ones
    assert fxlab.records(fxlab.apply(model, [_ReluToGelu()]))[-1].rewritten is None
    # insert-relu reports its sites and honours the limit
    assert fxlab.records(fxlab.apply(model, [InsertRelu("layer3")]))[-1].rewritten == ["layer3"]
    assert fxlab.records(fxlab.apply(model, [InsertRelu("layer3")], limit=0))[-1].skipped == [("layer3", "beyond limit=0")]


def test_each_pass_record_diffs_its_own_before_and_after() -> None:
    """A pipeline's records equal what each pass gives applied alone to the previous result."""
    pipeline = "insert-relu{after=layer3},fuse-linear-relu,insert-activation{after=layer* fn=tanh}"
    model = build("mymodule").eval()
    recs = fxlab.records(fxlab.apply(model, pipeline))
    step = model
    for record, p in zip(recs, fxlab.parse_pipeline(pipeline)):
        alone = fxlab.records(fxlab.apply(step, [p]))[-1]
        got, want = record.diff, alone.diff
        assert (got.added, got.removed, got.changed, got.replaced) == (want.added, want.removed, want.changed,
                                                                       want.replaced), p
        assert got.before == want.before and got.after == want.after
        assert record.row()[3:] == alone.row()[3:]  # everything but the name, kind and time
        previous = step
        step = fxlab.apply(step, [p])
        assert fxlab.diff_graphs(fxlab.trace(previous) if not isinstance(previous, fx.GraphModule) else previous,
                                 step).summary() == got.summary()
    assert [r.name for r in recs] == ["insert-relu", "fuse-linear-relu", "insert-activation"]


@pytest.mark.parametrize("enabled", [True, False])
def test_apply_restores_the_garbage_collectors_state(enabled: bool) -> None:
    import gc

    was = gc.isenabled()
    seen: list[bool] = []

    @dataclass
    class Probe(fxlab.Pass):
        name = ""
        kind = "exact"
        fail: bool = False

        def call(self, gm):
            seen.append(gc.isenabled())
            if self.fail:
                raise RuntimeError("boom")
            return gm

    try:
        (gc.enable if enabled else gc.disable)()
        fxlab.apply(build("mymodule"), [Probe()])
        assert gc.isenabled() is enabled
        with pytest.raises(fxlab.PassError, match="boom"):
            fxlab.apply(build("mymodule"), [Probe(fail=True)])
        assert gc.isenabled() is enabled
        assert seen == [False, False]  # paused while the passes run
    finally:
        (gc.enable if was else gc.disable)()


def test_submodule_lookup_matches_get_submodule() -> None:
    from fxlab.core import submodules

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.ModuleList([nn.Tanh()])))
    get = submodules(model)
    for path, module in model.named_modules():
        assert get(path) is module is model.get_submodule(path)
    for bad in ("2", "1.1.3", "0.weight", "1.x.0"):
        with pytest.raises(AttributeError) as theirs:
            model.get_submodule(bad)
        with pytest.raises(AttributeError, match=str(theirs.value)):
            get(bad)


def test_replaced_nodes_list_what_they_replaced_in_graph_order() -> None:
    from fxlab.core import diff_signatures

    before = {"x": "%x = input", "a": "%a = F.relu(%x)", "b": "%b = F.relu(%a)", "c": "%c = F.relu(%b)",
              "output": "return %c"}
    after = {"x": "%x = input", "ab": "%ab = f(%x)", "c2": "%c2 = g(%ab)", "output": "return %c2"}
    origins = {"ab": ("b", "a", "b"), "c2": ("c",)}  # given out of order, one name twice
    diff = diff_signatures(before, after, None, origins)
    assert diff.replaced == {"ab": ["a", "b"], "c2": ["c"]}
    assert (diff.added, diff.removed, diff.changed) == ([], [], ["output"])
