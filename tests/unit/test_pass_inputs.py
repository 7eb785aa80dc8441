"""Inputs passes must refuse or handle rather than get wrong: a BatchNorm1d after a Linear on 3-D
input, quantizing non-float32 convs, preparing twice, an empty max-pool stride, malformed arguments
to ``apply`` and ``get_pass``, ``group_size`` on a mode without groups, and trace errors in a
forward whose first parameter is not called ``self``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

import fxlab
from fxlab.models import build
from fxlab.passes import QuantizeLinear
from seed_helpers import assert_close, randomize_batchnorm, seed_model


def linear_batchnorm(features: int = 6) -> nn.Module:
    return randomize_batchnorm(nn.Sequential(nn.Linear(features, features), nn.BatchNorm1d(features))).eval()


def called_modules(gm: torch.fx.GraphModule) -> list[str]:
    return [type(gm.get_submodule(str(n.target))).__name__ for n in gm.graph.nodes if n.op == "call_module"]


# -- 1. fold-batchnorm: BatchNorm1d normalises a Linear's features on 2-D input only ----------------


def test_fold_never_gives_other_numbers_on_3d_input_where_batchnorm_normalises_dim_1() -> None:
    model = linear_batchnorm()
    x2, x3 = torch.randn(5, 6), torch.randn(3, 6, 6)
    gm = fxlab.apply(model, "fold-batchnorm")
    with torch.no_grad():
        assert_close(gm(x2), model(x2))
        with pytest.raises(AssertionError, match=r"must be 2-D \(N, C\): fold-batchnorm folded _1"):
            gm(x3)
    assert fxlab.records(gm)[-1].rewritten == ["_1"]


def test_fold_leaves_the_site_alone_where_shape_metadata_says_3d() -> None:
    model = linear_batchnorm()
    x3 = torch.randn(3, 6, 6)
    traced = fxlab.trace(model)
    ShapeProp(traced).propagate(x3)
    gm = fxlab.apply(traced, "fold-batchnorm")
    assert called_modules(gm) == ["Linear", "BatchNorm1d"]
    assert fxlab.records(gm)[-1].skipped == [
        ("_1", "_0's output is 3-D, where BatchNorm1d normalises dim 1, not the features of Linear _0; not folded")]
    with torch.no_grad():
        assert torch.equal(gm(x3), model(x3))


def test_fold_leaves_the_site_alone_where_the_graph_fixes_a_3d_input() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.bn = nn.Linear(6, 6), nn.BatchNorm1d(6)

        def forward(self, x):
            return self.bn(self.fc(x.view(x.size(0), 6, 6)))

    model = randomize_batchnorm(Tokens()).eval()
    gm = fxlab.apply(model, "fold-batchnorm")
    assert called_modules(gm) == ["Linear", "BatchNorm1d"]
    assert fxlab.records(gm)[-1].rewritten == []
    x = torch.randn(4, 36)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


def test_fold_needs_no_guard_where_the_graph_fixes_a_2d_input() -> None:
    model = randomize_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(6, 6), nn.BatchNorm1d(6), nn.ReLU())).eval()
    gm = fxlab.apply(model, "fold-batchnorm")
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_module", "call_module", "output"]
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_fold_guards_each_input_once_and_again_adds_nothing() -> None:
    model = randomize_batchnorm(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(),
                                              nn.Linear(5, 4), nn.BatchNorm1d(4))).eval()
    gm = fxlab.apply(model, "fold-batchnorm")
    asserts = [n for n in gm.graph.nodes if n.target is torch._assert]
    assert len(asserts) == 1 and "_1, _4" in asserts[0].args[1]
    again = fxlab.apply(gm, "fold-batchnorm,dce,cse")
    assert fxlab.format_graph(again) == fxlab.format_graph(gm)
    x = torch.randn(7, 6)
    with torch.no_grad():
        assert_close(again(x), model(x))
    assert called_modules(torch.fx.symbolic_trace(again)) == ["Linear", "ReLU", "Linear"]  # still traceable


def test_fold_on_simplenn_still_folds_without_a_guard() -> None:
    gm = fxlab.apply(seed_model("simplenn"), "fold-batchnorm")
    assert fxlab.records(gm)[-1].rewritten == ["bn1", "bn2"]
    assert not any(n.target is torch._assert for n in gm.graph.nodes)


# -- 2. quantize-conv refuses non-float32 weights, as quantize-linear does ---------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["weight-only", "dynamic", "bf16"])
def test_quantize_conv_refuses_weights_that_are_not_float32(dtype: torch.dtype, mode: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3)).to(dtype).eval()
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(fxlab.PassError, match=rf"^quantize-conv: 0 holds {name} weights; quantize-conv quantizes "
                                              r"float32 models: convert with model.float\(\) first$"):
        fxlab.apply(model, f"quantize-conv{{mode={mode}}}")
    with pytest.raises(fxlab.PassError, match=rf"^quantize-linear: 0 holds {name} weights"):
        fxlab.apply(nn.Sequential(nn.Linear(4, 2)).to(dtype).eval(), f"quantize-linear{{mode={mode}}}")


# -- 3. quantize-prepare on a prepared graph ---------------------------------------------------------


def test_quantize_prepare_twice_is_refused() -> None:
    with pytest.raises(fxlab.PassError, match=r"^quantize-prepare: observers watch layer1, layer2, layer3 already"):
        fxlab.apply(build("mymodule").eval(), "quantize-prepare,quantize-prepare")
    prepared = fxlab.apply(build("mymodule").eval(), "quantize-prepare{targets=layer1}")
    with pytest.raises(fxlab.PassError, match=r"observers watch layer1 already.*or exclude them"):
        fxlab.apply(prepared, "quantize-prepare")
    more = fxlab.apply(prepared, "quantize-prepare{exclude=layer1}")  # the other Linears: still allowed
    with torch.no_grad():
        more(torch.randn(16, 1, 28, 28))
    converted = fxlab.apply(more, "quantize-convert")
    assert not any("observer" in name for name, _ in converted.named_modules())
    calib = [torch.randn(16, 1, 28, 28)]
    with pytest.raises(fxlab.PassError, match=r"^quantize-linear: observers watch layer1 already"):
        fxlab.apply(prepared, [QuantizeLinear(mode="static", calibration=calib)])


# -- 4. swap-max-pool reads the settings as torch does ----------------------------------------------


@pytest.mark.parametrize("settings", [
    {"stride": []}, {"stride": ()}, {"stride": None}, {"stride": [3]}, {"kernel_size": [2], "stride": [1]},
], ids=repr)
@pytest.mark.parametrize("spelling", ["functional", "module"])
def test_swap_max_pool_reads_empty_and_one_element_settings_as_torch_does(settings: dict, spelling: str) -> None:
    settings = {"kernel_size": 2, **settings}

    class Functional(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, **settings)

    model = Functional() if spelling == "functional" else nn.Sequential(nn.MaxPool2d(**settings))
    gm = fxlab.apply(model, "swap-max-pool")
    record = fxlab.records(gm)[-1]
    assert (len(record.rewritten), record.skipped) == (1, [])
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(gm(x), model(x))


def test_swap_max_pool_leaves_settings_torch_cannot_read_alone() -> None:
    class Fractional(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, 2, stride=2.5)

    gm = fxlab.apply(Fractional(), "swap-max-pool")
    assert fxlab.records(gm)[-1].skipped == [("max_pool2d", "stride=2.5 is not one or two ints; left alone")]


# -- 5. fxlab's own errors for malformed arguments ---------------------------------------------------


def test_apply_and_get_pass_refuse_what_is_not_a_pipeline_or_a_name() -> None:
    model = build("mymodule").eval()
    with pytest.raises(fxlab.PipelineError, match="passes must be pipeline text, a pass or a list of passes, got "
                                                  "NoneType"):
        fxlab.apply(model, None)
    with pytest.raises(fxlab.PipelineError, match="a pass name is a string.*got NoneType"):
        fxlab.get_pass(None)


@pytest.mark.parametrize("limit", ["a", -1, 1.5, True])
def test_apply_refuses_a_limit_that_is_not_a_count(limit: object) -> None:
    with pytest.raises(fxlab.PassError, match=rf"^limit={limit!r}: give a whole number of sites ≥ 0"):
        fxlab.apply(build("mymodule").eval(), "fuse-linear-relu", limit=limit)


def test_apply_limit_zero_rewrites_nothing() -> None:
    model = build("mymodule").eval()
    gm = fxlab.apply(model, "fuse-linear-relu", limit=0)
    assert fxlab.records(gm)[-1].rewritten == []
    assert fxlab.format_graph(gm) == fxlab.format_graph(fxlab.trace(model))


@pytest.mark.parametrize("mode", ["dynamic", "fp16", "fp8", "weight-only", "bf16", "static"])
@pytest.mark.parametrize("group", ["32", "64", "none"])
def test_group_size_given_for_a_mode_without_groups_is_refused_whatever_its_value(mode: str, group: str) -> None:
    with pytest.raises(fxlab.PipelineError, match=f"group_size applies to the grouped modes .* not to mode={mode}"):
        fxlab.parse_pipeline(f"quantize-linear{{mode={mode} group_size={group}}}")
    with pytest.raises(fxlab.PassError, match="group_size applies to the grouped modes"):
        QuantizeLinear(mode=mode, group_size=None if group == "none" else int(group))


def test_group_size_default_still_reads_and_writes_as_before() -> None:
    texts = ["quantize-linear{mode=dynamic}", "quantize-linear{mode=int4}", "quantize-linear{mode=int4 group_size=32}"]
    for text in texts:
        assert fxlab.format_pipeline(fxlab.parse_pipeline(text)) == text
    assert QuantizeLinear(mode="int4") == QuantizeLinear(mode="int4", group_size=32)
    assert QuantizeLinear(mode="int4").config.group_size == 32
    assert repr(QuantizeLinear(mode="fp8")).endswith("group_size=32, qat_epochs=0)")


# -- 6. trace errors name the module whatever its forward calls its first parameter ----------------


def test_trace_error_names_the_module_and_line_when_forward_does_not_call_its_first_parameter_self() -> None:
    class Branchy(nn.Module):
        def forward(s, x):  # noqa: N805 - the point of the test
            if x.sum() > 0:
                return x
            return -x

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Branchy()

        def forward(self, x):
            return self.inner(x) + 1

    with pytest.raises(fxlab.TraceError, match=r"cannot trace Branchy\.forward at .*test_pass_inputs\.py:\d+ "
                                               r"\('if x\.sum\(\) > 0:'\)"):
        fxlab.trace(Outer())
