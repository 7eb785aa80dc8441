"""quantize-linear, quantize-prepare, quantize-convert: numerics per module (within the error each scheme implies), torch.ao as anchor,
state-dict size and round trip, accuracy budgets on real MNIST, golden printouts, errors."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import fx, nn

import fxlab
import fxlab.nn.quantized as quantized_nn
from fxlab.nn.kernels import choice
from fxlab.models import build
from fxlab.nn import (
    HalfLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
    Int8WeightOnlyLinear,
    LinearReLU,
    kernels,
)
from fxlab.passes import FuseLinearReLU, QuantizeConvert, QuantizeLinear, QuantizePrepare
from fxlab.passes.quantize import MODES
from seed_helpers import assert_close

#: the int8 and half modes (the low-bit ones, int4 / int8-int4 / fp8 / int2: tests/unit/test_lowbit.py)
MODE_NAMES = [m for m in MODES if m not in ("int4", "int8-int4", "fp8", "int2")]
INT8_MODES = ["dynamic", "weight-only", "static"]
BUDGETS = {"dynamic": 0.3, "weight-only": 0.3, "static": 0.5, "bf16": 0.1, "fp16": 0.1}
QUANTIZED = (Int8DynamicLinear, Int8WeightOnlyLinear, Int8StaticLinear, HalfLinear)


def calibration_batches(n: int = 2, size: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, 1, 28, 28, generator=g) for _ in range(n)]


def quantize(model: nn.Module, mode: str, calibration=None, **options) -> fx.GraphModule:
    if mode == "static" and calibration is None:
        calibration = calibration_batches()
    return fxlab.apply(model, [QuantizeLinear(mode=mode, calibration=calibration, **options)])


def state_bytes(module: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


# -- numerics of each quantized Linear vs a float reference with the dequantized weights ----------
#
# y_ref = x @ Ŵᵀ + b, Ŵ the weights the module holds (dequantized). The scheme bounds |y - y_ref|:
# - dynamic (int8 path): x is rounded per row to s_x·q, |x - s_x·q| ≤ s_x/2, so
#   |y - y_ref| ≤ s_x/2 · Σ_k |Ŵ_nk|  (int32 accumulation is exact);
# - weight-only, and dynamic where the int8 GEMM does not pay off (small layers, few rows):
#   float32 rounding only;
# - bf16 / fp16 (unit roundoff u = 2⁻⁸ / 2⁻¹¹): activations and the output may be rounded to the
#   half type: |y - y_ref| ≤ u · (Σ_k |x_k||Ŵ_nk| + |y_ref|);
# - static: input rounding (s_x/2 per element, as dynamic) plus output rounding s_y/2, inside the
#   calibrated ranges.
# Each bound gets a float32 slack of 1e-5 · Σ_k |x_k||Ŵ_nk| (+ |b|).


def _reference(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = module.dequantized_weight().double()
    bias = module.bias.double() if module.bias is not None else 0.0
    y = x.double() @ w.T + bias
    magnitude = x.double().abs() @ w.abs().T + (module.bias.double().abs() if module.bias is not None else 0.0)
    return y, magnitude


@pytest.fixture
def int8_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Int8DynamicLinear call take the int8 path (thresholds at 0)."""
    monkeypatch.setattr(quantized_nn, "CPU_MIN_WORK", 0)


@pytest.fixture(params=["kernels", "torch ops"])
def kernel_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test with the fused CPU kernels, then with torch ops only."""
    if request.param == "kernels":
        with kernels.enabled(), choice.forced("numba"):
            yield request.param
    else:
        with kernels.disabled():
            yield request.param


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("rows", [1, 16, 64])
@pytest.mark.parametrize("shape", [(784, 128), (64, 10)])
def test_dynamic_error_within_activation_rounding_bound(
    request: pytest.FixtureRequest, shape: tuple[int, int], rows: int, forced: bool, kernel_mode: str
) -> None:
    if forced:
        request.getfixturevalue("int8_everywhere")
    module = Int8DynamicLinear.from_float(nn.Linear(*shape))
    x = torch.randn(rows, shape[0]) * 3
    y_ref, magnitude = _reference(module, x)
    err = (module(x).double() - y_ref).abs()
    w_l1 = module.dequantized_weight().double().abs().sum(1)
    if module.uses_int8_matmul(x):  # int8 activations, int32 accumulation
        x_scale = x.double().abs().amax(1, keepdim=True) / 127
        bound = x_scale / 2 * w_l1 + 1e-5 * magnitude
        assert err.max() > 1e-4 * magnitude.max()  # the activations really were rounded
    else:  # float activations × the same int8 weights
        assert not forced
        bound = 1e-5 * magnitude + 1e-6
    assert (err <= bound).all(), f"max excess {(err - bound).max():.3g}"


def test_dynamic_kernel_choice() -> None:
    """CPU inference: int8 at every size, whichever implementation runs (every candidate is int8).
    On the autograd path (no choice there): the int8 GEMM where its torch ops pay off, else
    weight-only math."""
    small = Int8DynamicLinear.from_float(nn.Linear(64, 10))
    for policy in ("torch", "numba", "numba+int_mm"):
        with kernels.enabled(), choice.forced(policy):
            assert small.uses_int8_matmul(torch.randn(1, 64))
    _autograd_kernel_choice()


def _autograd_kernel_choice() -> None:
    def x(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, requires_grad=True)

    big, small = Int8DynamicLinear.from_float(nn.Linear(784, 128)), Int8DynamicLinear.from_float(nn.Linear(64, 10))
    assert big.uses_int8_matmul(x(256, 784)) and big.uses_int8_matmul(x(16, 784))
    assert not big.uses_int8_matmul(x(1, 784))
    assert not small.uses_int8_matmul(x(256, 64)) and small.uses_int8_matmul(x(10_000, 64))
    assert Int8DynamicLinear.from_float(nn.Linear(784, 312)).uses_int8_matmul(x(1, 784))


def test_weight_only_is_float_math_on_the_int8_weights() -> None:
    module = Int8WeightOnlyLinear.from_float(nn.Linear(784, 128))
    for rows in (1, 64):
        x = torch.randn(rows, 784)
        y_ref, magnitude = _reference(module, x)
        assert ((module(x).double() - y_ref).abs() <= 1e-5 * magnitude + 1e-6).all()
    # the int8 weights are within half a step of the float ones inside the channel's range (±127.5
    # steps); beyond it they are clipped to ±127 steps, and only where that lowers the channel's error
    linear = nn.Linear(784, 128)
    module = Int8WeightOnlyLinear.from_float(linear)
    w, step = linear.weight.detach(), module.weight_scale[:, None]
    err = (module.dequantized_weight() - w).abs()
    inside = w.abs() <= 127.5 * step
    assert (err[inside] <= (step / 2 + 1e-7).expand_as(w)[inside]).all()
    assert torch.allclose(err[~inside], (w.abs() - 127 * step)[~inside], atol=1e-7)
    plain = w.abs().amax(dim=1, keepdim=True) / 127
    plain_err = (torch.round(w / plain) * plain - w).square().sum(dim=1)
    assert (err.square().sum(dim=1) <= plain_err * (1 + 1e-6)).all()
    assert module.weight.dtype == torch.int8 and module.weight.abs().max() <= 127


@pytest.mark.parametrize("dtype, unit", [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)])
def test_half_error_within_half_rounding_bound(dtype: torch.dtype, unit: float) -> None:
    module = HalfLinear.from_float(nn.Linear(784, 128), dtype=dtype)
    assert module.weight.dtype == dtype
    for rows in (1, 64):
        x = torch.randn(rows, 784)
        y = module(x)
        assert y.dtype == torch.float32
        y_ref, magnitude = _reference(module, x)
        bound = unit * (magnitude + y_ref.abs()) + 1e-5 * magnitude
        assert ((y.double() - y_ref).abs() <= bound).all()


def test_static_error_within_input_and_output_rounding_bound() -> None:
    linear = nn.Linear(784, 128)
    x = torch.randn(64, 784)
    probe = Int8StaticLinear.from_float(linear)  # placeholder scales: only for its weights
    y_ref, magnitude = _reference(probe, x)
    x_step = (x.max() - min(x.min(), 0)) / 255
    input_error = float((x_step / 2 * probe.dequantized_weight().abs().sum(1)).max())
    module = Int8StaticLinear.from_float(
        linear,
        input_range=(float(x.min()), float(x.max())),
        output_range=(float(y_ref.min()) - input_error, float(y_ref.max()) + input_error),
    )
    y = module.output_dequant(module(module.input_quant(x)))
    s_x, s_y = module.input_quant.scale.double(), module.output_dequant.scale.double()
    bound = s_x / 2 * module.dequantized_weight().double().abs().sum(1) + s_y / 2 + 1e-5 * magnitude
    assert ((y.double() - y_ref).abs() <= bound).all()


def test_static_children_stay_ordinary_submodules() -> None:
    """``input_quant`` / ``output_dequant`` are read through class properties (a faster lookup); they
    must still behave as submodules: assigned, deleted, copied, listed and saved like any other."""
    module = Int8StaticLinear.from_float(nn.Linear(4, 2), input_range=(-1, 1), output_range=(-3, 3))
    assert [name for name, _ in module.named_children()] == ["input_quant", "output_dequant"]
    replacement = quantized_nn.Quantize(0.5, 1)
    module.input_quant = replacement
    assert module.input_quant is replacement and module._modules["input_quant"] is replacement
    copied = copy.deepcopy(module)
    assert copied.input_quant is copied._modules["input_quant"] and copied.input_quant is not replacement
    assert float(copied.input_quant.scale) == 0.5
    assert {"input_quant.scale", "output_dequant.zero_point"} <= set(module.state_dict())
    del module.output_dequant
    assert not hasattr(module, "output_dequant")
    with pytest.raises(AttributeError, match="output_dequant"):
        module.output_dequant


def test_dynamic_error_comparable_to_torch_ao_on_the_same_weights() -> None:
    """Same Linear, same inputs: error vs the float32 output, ours and torch.ao's quantize_dynamic."""
    linear = nn.Linear(784, 128)
    x = torch.randn(256, 784)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization warns that it is deprecated
        ao = torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(linear)), {nn.Linear}, dtype=torch.qint8)
        with torch.no_grad():
            ref, theirs = linear(x), ao(x)
    with torch.no_grad():
        ours = Int8DynamicLinear.from_float(linear)(x)
    ours_err = (ours - ref).abs().mean().item()
    ao_err = (theirs - ref).abs().mean().item()
    assert ours_err <= 1.25 * ao_err, f"mean abs error: ours {ours_err:.3g}, torch.ao {ao_err:.3g}"


# -- storage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["mymodule", "simplenn"])
@pytest.mark.parametrize("mode", INT8_MODES)
def test_int8_state_dict_at_most_0_3_of_float32(model_name: str, mode: str) -> None:
    model = build(model_name).eval()
    gm = quantize(model, mode)
    assert state_bytes(gm) <= 0.3 * state_bytes(model), (state_bytes(gm), state_bytes(model))


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_fresh_model_loads_the_state_dict_strictly(mode: str, tmp_path) -> None:
    model = build("mymodule").eval()
    gm = quantize(model, mode)
    # how fxlab.load rebuilds a saved model: re-run the pipeline, then load the state dict strictly
    fresh = fxlab.load(fxlab.save(gm, tmp_path / f"{mode}.pth"))
    fresh.load_state_dict(gm.state_dict(), strict=True)
    x = torch.randn(32, 1, 28, 28)
    assert torch.equal(fresh(x), gm(x))
    for _, module in gm.named_modules():
        if isinstance(module, (Int8DynamicLinear, Int8WeightOnlyLinear, Int8StaticLinear)):
            assert module.weight.dtype == torch.int8
            assert module.weight_scale.dtype == torch.float32


@pytest.mark.parametrize("pipeline", ["quantize-linear{mode=static}", "quantize-prepare,quantize-convert",
                                      "fuse-linear-relu,quantize-prepare{exclude=layer1}", "quantize-prepare"])
def test_static_model_saves_and_loads_exactly(tmp_path, pipeline: str) -> None:
    """fxlab.save / fxlab.load: scales, zero points, int8 tables and observed ranges are all buffers,
    so the rebuilt model (calibrated on one example batch) gets the saved numbers back exactly."""
    passes = fxlab.parse_pipeline(pipeline)
    gm = fxlab.trace(build("mymodule").eval())
    for p in passes:
        if isinstance(p, QuantizeLinear):
            p = p.calibrated(calibration_batches())
        gm = fxlab.apply(gm, [p])
        if type(p).calibrates:
            calibrate(gm, calibration_batches())
    fxlab.save(gm, tmp_path / "static.pt", base="mymodule", pipeline=pipeline)
    loaded = fxlab.load(tmp_path / "static.pt")
    x = torch.randn(64, 1, 28, 28) * 2
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))
    assert fxlab.format_graph(loaded) == fxlab.format_graph(gm)


def calibrate(gm: fx.GraphModule, batches: list[torch.Tensor]) -> None:
    """What the caller does between quantize-prepare and quantize-convert."""
    gm.eval()
    with torch.no_grad():
        for batch in batches:
            gm(batch)


def prepare_calibrate_convert(model: nn.Module, batches: list[torch.Tensor], *, chain: bool = True,
                              **options) -> fx.GraphModule:
    prepared = fxlab.apply(model, [QuantizePrepare(**options)])
    calibrate(prepared, batches)
    return fxlab.apply(prepared, [QuantizeConvert(chain=chain)])


# -- static in three steps: prepare, calibrate, convert ------------------------------------------


@pytest.mark.parametrize("model_name", ["mymodule", "mymnist", "linear-relu-stack"])
@pytest.mark.parametrize("fuse", [False, True])
def test_prepare_calibrate_convert_is_the_one_call_form(model_name: str, fuse: bool) -> None:
    model = build(model_name).eval()
    if fuse:
        model = fxlab.apply(model, [FuseLinearReLU()])
    batches = calibration_batches(3)
    one_call = quantize(model, "static", calibration=batches, exclude=SEED_OUTPUT.get(model_name))
    three_steps = prepare_calibrate_convert(model, batches, exclude=SEED_OUTPUT.get(model_name))
    assert fxlab.format_graph(three_steps) == fxlab.format_graph(one_call)
    x = torch.randn(200, 1, 28, 28) * 2
    with torch.no_grad():
        assert torch.equal(three_steps(x), one_call(x))
    assert three_steps.state_dict().keys() == one_call.state_dict().keys()
    assert all(torch.equal(v, one_call.state_dict()[k]) for k, v in three_steps.state_dict().items())


SEED_OUTPUT = {"linear-relu-stack": "linear_relu_stack.4"}


def test_prepared_model_computes_the_float_function() -> None:
    model = build("mymodule").eval()
    prepared = fxlab.apply(model, "quantize-prepare")
    observers = [m for m in prepared.modules() if isinstance(m, quantized_nn.MinMaxObserver)]
    assert len(observers) == 6 and not any(m.seen for m in observers)
    assert QuantizePrepare.calibrates and not QuantizeConvert.calibrates
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(prepared(x), model(x))
    assert all(m.seen for m in observers)
    assert {"layer1_input_observer.min_val", "layer1_input_observer.max_val"} <= set(prepared.state_dict())


def test_prepare_and_convert_text_round_trips() -> None:
    text = "quantize-prepare{exclude=layer3},quantize-convert"
    passes = fxlab.parse_pipeline(text)
    assert [type(p) for p in passes] == [QuantizePrepare, QuantizeConvert]
    assert passes[0].exclude == "layer3" and passes[0].mode == "static" and passes[1].chain
    assert fxlab.format_pipeline(passes) == text
    assert str(QuantizeConvert(chain=False)) == "quantize-convert{chain=false}"
    assert str(QuantizePrepare(targets=["layer1", "layer2"])) == "quantize-prepare{targets=layer1,layer2}"
    assert [p.budget for p in passes] == [0.5, 0.5] and {p.kind for p in passes} == {"approximate"}


def test_convert_refuses_unobserved_and_uncalibrated_models() -> None:
    model = build("mymodule").eval()
    with pytest.raises(fxlab.PassError, match="no observed Linear.*run quantize-prepare"):
        fxlab.apply(model, "quantize-convert")
    prepared = fxlab.apply(model, "quantize-prepare")
    message = (r"^quantize-convert: observer layer1_input_observer has seen no data: run calibration batches "
               r"through the prepared model before quantize-convert$")
    with pytest.raises(fxlab.PassError, match=message):
        fxlab.apply(prepared, "quantize-convert")
    with pytest.raises(fxlab.PassError, match="mode 'dynamic' is not calibrated: use quantize-linear"):
        QuantizePrepare(mode="dynamic")


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_one_call_static_needs_calibration_data(mode: str) -> None:
    p = QuantizeLinear(mode=mode)
    if mode != "static":
        fxlab.apply(build("mymodule"), [p])  # the other modes need no data
        return
    with pytest.raises(fxlab.PassError, match="calibration=.*quantize-prepare.*quantize-convert"):
        fxlab.apply(build("mymodule"), [p])





# -- printouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["mymodule", "simplenn"])
@pytest.mark.parametrize("mode", MODE_NAMES)
def test_golden_printout(golden, model_name: str, mode: str) -> None:
    gm = quantize(build(model_name).eval(), mode)
    golden.check(f"quantize-linear/{mode}/{model_name}", fxlab.format_graph(gm))


@pytest.mark.parametrize("model_name", ["mymodule"])
def test_golden_printout_prepare(golden, model_name: str) -> None:
    gm = fxlab.apply(build(model_name).eval(), "quantize-prepare")
    golden.check(f"quantize-prepare/{model_name}", fxlab.format_graph(gm))


def test_module_reprs() -> None:
    linear = nn.Linear(784, 128)
    assert repr(Int8DynamicLinear.from_float(linear)) == "Int8DynamicLinear(784→128, per-channel)"
    assert repr(Int8WeightOnlyLinear.from_float(linear, relu=True)) == "Int8WeightOnlyLinear(784→128, per-channel, relu)"
    assert repr(HalfLinear.from_float(linear, dtype=torch.float16)) == "HalfLinear(784→128, fp16)"
    assert repr(Int8StaticLinear.from_float(linear)) == "Int8StaticLinear(784→128, per-channel)"
    assert repr(quantized_nn.MinMaxObserver()) == "MinMaxObserver(per-tensor)"


# -- the pass: options, text, selection, fused Linear+ReLU ---------------------------------------


def test_pipeline_text_round_trips() -> None:
    text = "quantize-linear{mode=dynamic exclude=layer3}"
    (p,) = fxlab.parse_pipeline(text)
    assert isinstance(p, QuantizeLinear) and p.exclude == "layer3" and p.kind == "approximate"
    assert fxlab.format_pipeline([p]) == text
    assert str(QuantizeLinear("bf16", targets=["layer1", "layer2"])) == "quantize-linear{mode=bf16 targets=layer1,layer2}"
    # calibration data is an input, not part of the pipeline's text
    assert str(QuantizeLinear(mode="static", calibration=calibration_batches())) == "quantize-linear{mode=static}"
    model = build("mymodule").eval()
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(fxlab.apply(model, text)(x), fxlab.apply(model, [QuantizeLinear("dynamic", exclude="layer3")])(x))


def test_targets_and_exclude_select_the_linears() -> None:
    gm = quantize(build("mymodule").eval(), "dynamic", exclude="layer3")
    assert isinstance(gm.layer1, Int8DynamicLinear) and isinstance(gm.layer2, Int8DynamicLinear)
    assert type(gm.layer3) is nn.Linear
    gm = quantize(build("linear-relu-stack").eval(), "weight-only", targets="linear_relu_stack.*")
    kinds = [type(gm.get_submodule(f"linear_relu_stack.{i}")).__name__ for i in range(5)]
    assert kinds == ["Int8WeightOnlyLinear", "ReLU", "Int8WeightOnlyLinear", "ReLU", "Int8WeightOnlyLinear"]


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_callers_model_is_untouched(mode: str) -> None:
    model = build("simplenn").eval()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(16, 1, 28, 28)
    before = model(x)
    quantize(model, mode)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(model(x), before)
    assert not any(isinstance(m, QUANTIZED) for m in model.modules())


@pytest.mark.parametrize("mode", list(MODES))
def test_quantized_under_inference_mode_runs_there_and_under_no_grad(mode: str) -> None:
    """A model quantized inside ``torch.inference_mode()`` holds inference tensors (no version
    counter): it computes what the same model quantized outside gives, in either context (up to
    float32 rounding: the kernels chosen may sum in another order)."""
    model = build("mymodule").eval()
    x = torch.randn(300, 1, 28, 28)
    with torch.no_grad():
        expected = quantize(model, mode)(x)
    with torch.inference_mode():
        gm = quantize(model, mode)
    assert all(t.is_inference() for t in gm.buffers())
    for context in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with context():
            assert_close(gm(x), expected)
            assert_close(gm(x[:1]), expected[:1])


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_fused_linear_relu_keeps_its_relu(mode: str) -> None:
    model = build("mymodule").eval()
    fused = fxlab.apply(model, [FuseLinearReLU()])
    assert isinstance(fused.layer1, LinearReLU)
    gm = quantize(fused, mode)
    assert gm.layer1.relu and gm.layer2.relu and not gm.layer3.relu
    assert repr(gm.layer1).endswith(", relu)")
    x = torch.randn(64, 1, 28, 28)
    for rows in (64, 1):
        h_float = fused.layer1(torch.flatten(x[:rows], 1))
        if mode == "static":
            h = gm.layer1.output_dequant(gm.layer1(gm.layer1.input_quant(torch.flatten(x[:rows], 1))))
        else:
            h = gm.layer1(torch.flatten(x[:rows], 1))
        assert (h >= 0).all() and ((h == 0) == (h_float == 0)).float().mean() > 0.9
    out, ref = gm(x), model(x)
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_static_graph_has_quantize_and_dequantize_around_the_int8_chain() -> None:
    """Float enters through a quantize node and leaves through a dequantize node; between int8
    Linears the activations stay int8 (a ReLU between them becomes an int8 table)."""
    gm = quantize(build("mymodule").eval(), "static")
    ops = [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert ops == ["layer1.input_quant", "layer1", "relu_int8", "layer2", "relu_1_int8", "layer3",
                   "layer3.output_dequant"]
    assert isinstance(gm.relu_int8, quantized_nn.Int8Table)
    fused = quantize(fxlab.apply(build("mymodule").eval(), [FuseLinearReLU()]), "static")
    assert [str(n.target) for n in fused.graph.nodes if n.op == "call_module"] == [
        "layer1.input_quant", "layer1", "layer2", "layer3", "layer3.output_dequant"]
    assert not any("observer" in name for name, _ in gm.named_modules())
    keys = gm.state_dict().keys()
    assert {"layer1.input_quant.scale", "layer1.input_quant.zero_point", "layer1.output_dequant.scale",
            "relu_int8.table"} <= set(keys)
    assert gm.layer1.input_quant.scale.item() != 1.0  # calibrated, not the placeholder


@pytest.mark.parametrize("model_name", ["mymodule", "mymnist"])
@pytest.mark.parametrize("fuse", [False, True])
def test_int8_chaining_changes_no_output(model_name: str, fuse: bool) -> None:
    """Dropping dequantize → quantize pairs and tabulating dequantize → fn → quantize give the
    very outputs of the graph with every quantize and dequantize step in place (chain=false)."""
    model = build(model_name).eval()
    if fuse:
        model = fxlab.apply(model, [FuseLinearReLU()])
    torch.manual_seed(0)
    calibration = [torch.randn(64, 1, 28, 28) for _ in range(2)]
    chained = fxlab.apply(model, [QuantizeLinear(mode="static", calibration=calibration)])
    stepwise = prepare_calibrate_convert(model, calibration, chain=False)
    assert len(stepwise.graph.nodes) > len(chained.graph.nodes)
    assert torch.equal(prepare_calibrate_convert(model, calibration)(calibration[0]), chained(calibration[0]))
    x = torch.randn(300, 1, 28, 28) * 2
    with torch.no_grad():
        assert torch.equal(chained(x), stepwise(x))
        with kernels.disabled():
            assert torch.equal(chained(x), stepwise(x))


def test_int8_table_is_the_three_steps_on_every_code() -> None:
    q, d = quantized_nn.Quantize(), quantized_nn.Dequantize()
    d.scale.fill_(0.037)
    d.zero_point.fill_(-20)
    q.scale.fill_(0.011)
    q.zero_point.fill_(5)
    table = quantized_nn.Int8Table.build("gelu", torch.nn.functional.gelu, d, q)
    codes = torch.arange(-128, 128).to(torch.int8).reshape(4, 64)
    with torch.no_grad():
        expected = q(torch.nn.functional.gelu(d(codes)))
        assert torch.equal(table(codes), expected)
        with kernels.disabled():
            assert torch.equal(table(codes), expected)


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_mode_lists_the_modes() -> None:
    with pytest.raises(fxlab.PassError, match="unknown mode 'int3'.*dynamic, weight-only, bf16, fp16, static"):
        QuantizeLinear(mode="int3")
    with pytest.raises(fxlab.PipelineError, match="unknown mode"):
        fxlab.parse_pipeline("quantize-linear{mode=int3}")
    with pytest.raises(fxlab.PipelineError, match="needs mode="):
        fxlab.parse_pipeline("quantize-linear")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"targets": "layer9"}, r"'layer9' matches no node \(closest: layer3, layer2, layer1\)"),
        ({"exclude": "layer9"}, r"'layer9' matches no node"),
        ({"targets": "relu"}, r"targets='relu' matches no nn.Linear, only relu \(torch.relu\)"),
        ({"targets": "layer3", "exclude": "layer3"}, r"leaves no Linear to quantize"),
    ],
)
def test_selection_errors(options: dict, message: str) -> None:
    with pytest.raises(fxlab.PassError, match=message):
        quantize(build("mymodule").eval(), "dynamic", **options)


def test_static_without_calibration_data() -> None:
    model = build("mymodule").eval()
    with pytest.raises(fxlab.PassError, match=r"mode=static needs calibration data.*quantize-prepare"):
        fxlab.apply(model, [QuantizeLinear(mode="static")])
    with pytest.raises(fxlab.PassError, match="holds no batch"):
        fxlab.apply(model, [QuantizeLinear(mode="static", calibration=[])])


def test_non_float_models_are_refused() -> None:
    with pytest.raises(fxlab.PassError, match=r"layer1 holds float64 weights.*model.float\(\)"):
        quantize(build("mymodule").double(), "dynamic")
    done = quantize(build("mymodule").eval(), "dynamic")
    with pytest.raises(fxlab.PassError, match=r"no float nn.Linear left.*already quantized: layer1 \(Int8DynamicLinear\)"):
        quantize(done, "weight-only")


# --------------------------------------------------------------------------------------------
# weights a quantizer cannot use: NaN / inf, or no values at all (meta device)


def _poisoned() -> nn.Module:
    model = build("mymodule").eval()
    with torch.no_grad():
        model.layer2.weight[0, :3] = float("nan")
        model.layer3.bias[1] = float("inf")
    return model


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_quantize_linear_refuses_nan_and_inf_weights_naming_the_layers(mode: str) -> None:
    calibration = [torch.randn(8, 1, 28, 28)]
    with pytest.raises(fxlab.PassError) as info:
        fxlab.apply(_poisoned(), [QuantizeLinear(mode=mode, calibration=calibration)])
    message = str(info.value)
    assert "\n" not in message
    assert "layer2: weight has 3 NaN values" in message and "layer3: bias has 1 inf value" in message
    assert "scales NaN" in message
    # excluding the bad layers quantizes the rest
    gm = fxlab.apply(_poisoned(), [QuantizeLinear(mode=mode, exclude=["layer2", "layer3"], calibration=calibration)])
    assert type(gm.layer1) is not nn.Linear


def test_quantize_prepare_and_convert_refuse_nan_weights() -> None:
    with pytest.raises(fxlab.PassError, match=r"^quantize-prepare: layer2: weight has 3 NaN values"):
        fxlab.apply(_poisoned(), "quantize-prepare")
    prepared = fxlab.apply(build("mymodule").eval(), "quantize-prepare")
    prepared(torch.randn(8, 1, 28, 28))
    with torch.no_grad():
        prepared.layer1.weight[0, 0] = float("nan")
    with pytest.raises(fxlab.PassError, match=r"^quantize-convert: layer1: weight has 1 NaN value;"):
        fxlab.apply(prepared, "quantize-convert")


@pytest.mark.parametrize("pipeline", ["quantize-linear{mode=dynamic}", "quantize-linear{mode=bf16}", "quantize-prepare"])
def test_quantize_refuses_meta_device_weights_in_one_line(pipeline: str) -> None:
    model = build("mymodule").to("meta")
    with pytest.raises(fxlab.PassError) as info:
        fxlab.apply(model, pipeline)
    label = pipeline.split("{")[0]
    assert str(info.value) == (
        f"{label}: layer1's weight is on the meta device (no values); load real weights first "
        "(e.g. model.to_empty(device='cpu') then load_state_dict)"
    )
