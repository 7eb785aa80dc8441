"""quantize-conv: numerics of each quantized conv vs a float reference from its own dequantized
weights (and, for dynamic, its own dequantized activations), every geometry, batch 1 and 64;
state-dict size; printouts; save / load / torch.export; and the sites the quantize passes report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxlab
from fxlab.models import build
from fxlab.models.seeds import MODELS
from fxlab.nn import (
    ConvReLU,
    HalfConv1d,
    HalfConv2d,
    Int8DynamicConv1d,
    Int8DynamicConv2d,
    Int8WeightOnlyConv1d,
    Int8WeightOnlyConv2d,
    quantize_samples,
)
from fxlab.nn.kernels import choice
from fxlab.passes import QuantizeConv, QuantizeLinear
from fxlab.passes.quantize import CONV_MODES, MODES

CONV_MODE_NAMES = list(CONV_MODES)
INT8 = ["dynamic", "weight-only"]
CLASSES = {
    "dynamic": (Int8DynamicConv1d, Int8DynamicConv2d),
    "weight-only": (Int8WeightOnlyConv1d, Int8WeightOnlyConv2d),
    "bf16": (HalfConv1d, HalfConv2d),
    "fp16": (HalfConv1d, HalfConv2d),
}


class SmallCNN(nn.Module):
    """Conv2d + ReLU + MaxPool + Linear: the shape of network the issue brings."""

    fxlab_arch = ("qconv-smallcnn", {})

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, dilation=1)
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


class Conv1dNet(nn.Module):
    """Rows of the image as a sequence: Conv1d over 28 steps of 28 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(28, 16, 5, stride=2, padding=2)
        self.fc = nn.Linear(16 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x.flatten(1, 2))).flatten(1))


NETS = {"smallcnn": SmallCNN, "conv1dnet": Conv1dNet}


def net(name: str = "smallcnn") -> nn.Module:
    torch.manual_seed(0)
    return NETS[name]().eval()


def images(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


# -- numerics -----------------------------------------------------------------------------------
#
# y_ref = conv(x̂, Ŵ) + b in float64, Ŵ the weights the module holds (dequantized), x̂ = x for
# weight-only and half, x̂ = q(x)·s_x (the module's own per-sample codes) for dynamic: the int32
# accumulation is exact, so only float32 rounding of the output is left (1e-6 of the magnitude
# Σ|x̂||Ŵ| + |b|). For dynamic the error against the float input is bounded by the activation
# rounding s_x/2 · Σ|Ŵ| over the receptive field.

GEOMETRIES = [
    {},
    {"stride": 2},
    {"padding": 1},
    {"padding": 2, "dilation": 2},
    {"stride": (2, 1), "padding": (0, 1), "dilation": (1, 2)},
    {"stride": 3, "padding": "valid"},
    {"padding": "same", "dilation": 2},
    {"bias": False, "stride": 2, "padding": 1},
]


def _conv(ndim: int, geometry: dict, cin: int = 3, cout: int = 5) -> nn.Module:
    g = dict(geometry)
    if ndim == 1:  # the 1-D reading of each geometry: the last of each pair
        g = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in g.items()}
        return nn.Conv1d(cin, cout, 3, **g)
    return nn.Conv2d(cin, cout, 3, **g)


def _reference(module: nn.Module, conv: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = module.dequantized_weight().double()
    fn = F.conv1d if isinstance(conv, nn.Conv1d) else F.conv2d
    args = (conv.stride, conv.padding, conv.dilation)
    bias = module.bias.double() if module.bias is not None else None
    y = fn(x.double(), w, bias, *args)
    magnitude = fn(x.double().abs(), w.abs(), bias.abs() if bias is not None else None, *args)
    return y, magnitude


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()) or "plain")
@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("mode", CONV_MODE_NAMES)
def test_each_module_is_its_float_reference(mode: str, ndim: int, geometry: dict, batch: int) -> None:
    torch.manual_seed(0)
    conv = _conv(ndim, geometry)
    cls = CLASSES[mode][ndim - 1]
    module = cls.from_float(conv, **({"dtype": MODES[mode].dtype} if mode in ("bf16", "fp16") else {}))
    x = torch.randn(batch, 3, *((12, 11) if ndim == 2 else (17,))) * 2
    y = module(x)
    assert y.shape == conv(x).shape and y.dtype == torch.float32
    if mode == "dynamic":
        q, s = quantize_samples(x)
        assert q.abs().max() <= 127 and torch.equal(q, q.round())
        x_hat = q.double() * s.double()
        y_ref, magnitude = _reference(module, conv, x_hat)
        assert ((y.double() - y_ref).abs() <= 1e-6 * magnitude + 1e-7).all()
        # against the float input: within the activation rounding (half a step per element)
        bound, _ = _reference(module, conv, torch.zeros_like(x))
        half_step = (s.double() / 2).expand_as(x)
        w_abs = module.dequantized_weight().double().abs()
        fn = F.conv1d if ndim == 1 else F.conv2d
        bound = fn(half_step, w_abs, None, conv.stride, conv.padding, conv.dilation)
        y_float, magnitude = _reference(module, conv, x)
        assert ((y.double() - y_float).abs() <= bound + 1e-6 * magnitude).all()
        assert (y.double() - y_float).abs().max() > 1e-5  # the activations really were rounded
    else:
        y_ref, magnitude = _reference(module, conv, x)
        assert ((y.double() - y_ref).abs() <= 1e-5 * magnitude + 1e-6).all()
    # and the stored weights are the float weights, rounded: per channel half an int8 step, or half rounding
    w, w_hat = conv.weight.double(), module.dequantized_weight().double()
    if mode in INT8:
        step = module.weight_scale.double().reshape(-1, *[1] * (w.dim() - 1)).expand_as(w)
        err, inside = (w - w_hat).abs(), w.abs() <= 127.5 * step  # beyond ±127.5 steps: clipped to ±127
        assert (err[inside] <= step[inside] / 2 + 1e-7).all()
        assert torch.allclose(err[~inside], w.abs()[~inside] - 127 * step[~inside], atol=1e-7)
    else:
        unit = 2**-8 if mode == "bf16" else 2**-11
        assert ((w - w_hat).abs() <= unit * w.abs()).all()


@pytest.mark.parametrize("geometry", [{}, {"stride": 2, "padding": 1}, {"padding": 2, "dilation": 2, "bias": False}],
                         ids=["plain", "stride,padding", "dilation,no-bias"])
@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_every_half_conv_candidate_gives_the_modes_numbers(mode: str, ndim: int, geometry: dict) -> None:
    """Each implementation of ``bf16-conv`` / ``fp16-conv`` (run here whether or not this CPU has
    native half dot products: oneDNN computes the same numbers, only slower) stays within the
    mode's rounding of the reference; forced, the module returns exactly that candidate's output."""
    torch.manual_seed(3)
    conv = _conv(ndim, geometry, cin=6, cout=7)
    module = CLASSES[mode][ndim - 1].from_float(conv, dtype=MODES[mode].dtype)
    x = torch.randn(4, 6, *((13, 12) if ndim == 2 else (19,))) * 3
    x4 = x if ndim == 2 else x.unsqueeze(-2)  # what conv2d sees
    op = choice.ops()[f"{mode}-conv"]
    assert [c.name for c in op.candidates] == ["torch", "native", "native-nhwc"]
    args = (module.weight, module.bias)
    with torch.no_grad():
        ref = op.reference.fn(module, x4, *args)
        torch.testing.assert_close(ref.squeeze(-2) if ndim == 1 else ref, module(x), rtol=0, atol=0)
        for c in op.candidates[1:]:
            out = c.fn(module, x4, *args)
            assert choice.mismatch(op, out, ref, module, x4, *args) is None, c.name
            assert (out - ref).abs().max() > 0  # the input really was rounded to the half type
            if c.available():
                with choice.forced(c.name):
                    y = module(x)
                assert torch.equal(y, out.squeeze(-2) if ndim == 1 else out)
        # and the bound is tight enough to catch a wrong answer: one output off by 1/64 of the largest
        wrong = ref.clone()
        wrong.view(-1)[5] += ref.abs().max() * 2**-6
        assert choice.mismatch(op, wrong, ref, module, x4, *args) is not None


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_half_conv_candidates_apply_a_fused_relu_and_keep_channels_last(mode: str) -> None:
    """A module with ``relu`` returns exactly the ReLU of each candidate's output (forced, where the
    candidate is available; the reference elsewhere); ``native-nhwc`` returns a channels-last
    output (what lets the next conv skip its reorder), and the module hands that layout on."""
    torch.manual_seed(6)
    module = HalfConv2d.from_float(ConvReLU.from_conv(nn.Conv2d(6, 7, 3)), dtype=MODES[mode].dtype)
    assert module.relu
    x = torch.randn(4, 6, 13, 12) * 3
    op = choice.ops()[f"{mode}-conv"]
    with torch.no_grad():
        for c in op.candidates:
            plain = c.fn(module, x, module.weight, module.bias)
            with choice.forced(c.name):
                expected = plain if c.available() else op.reference.fn(module, x, module.weight, module.bias)
                assert torch.equal(module(x), expected.relu()), c.name
        candidate = op.candidate("native-nhwc")
        nhwc = candidate.fn(module, x, module.weight, module.bias)
        assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
        if candidate.available():  # forced where this CPU has the native half type (else the reference runs)
            with choice.forced("native-nhwc"):
                y = module(x)
            assert torch.equal(y, nhwc.relu()) and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("geometry", [{}, {"stride": 2, "padding": 1}, {"padding": 2, "dilation": 2, "bias": False}],
                         ids=["plain", "stride,padding", "dilation,no-bias"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_every_dynamic_conv_candidate_gives_the_modes_numbers(ndim: int, geometry: dict) -> None:
    """``dynamic-conv``: the float32 conv of the codes sums the same integers as the int32 GEMM, so
    its output is the reference's up to the float32 rounding of the final scale and bias; forced,
    the module returns it; a conv with K = C·kh·kw over 1040 leaves the candidate out."""
    torch.manual_seed(4)
    conv = _conv(ndim, geometry, cin=6, cout=7)
    module = CLASSES["dynamic"][ndim - 1].from_float(conv)
    x = torch.randn(4, 6, *((13, 12) if ndim == 2 else (19,))) * 3
    x4 = x if ndim == 2 else x.unsqueeze(-2)
    op = choice.ops()["dynamic-conv"]
    assert [c.name for c in op.candidates] == ["torch", "float-conv"]
    args = (module.weight, module.weight_scale, module.bias)
    with torch.no_grad():
        ref = op.reference.fn(module, x4, *args)
        torch.testing.assert_close(ref.squeeze(-2) if ndim == 1 else ref, module(x), rtol=0, atol=0)
        out = op.candidates[1].fn(module, x4, *args)
        assert choice.mismatch(op, out, ref, module, x4, *args) is None
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        with choice.forced("float-conv"):
            y = module(x)
        assert torch.equal(y, out.squeeze(-2) if ndim == 1 else out)
        wide = Int8DynamicConv2d.from_float(nn.Conv2d(128, 4, 3))  # K = 1152
        xw = torch.randn(1, 128, 5, 5)
        with pytest.raises(ValueError, match="K = 1152"):
            op.candidates[1].fn(wide, xw, wide.weight, wide.weight_scale, wide.bias)


@pytest.mark.parametrize("mode", ["dynamic", "bf16", "fp16"])
def test_every_conv_candidate_takes_a_channels_last_input(mode: str) -> None:
    """On a channels-last input (what the int8 reference conv outputs) and on its contiguous copy,
    every candidate gives the mode's numbers of the reference on the channels-last input."""
    torch.manual_seed(5)
    conv = nn.Conv2d(6, 7, 3, padding=1)
    module = (Int8DynamicConv2d.from_float(conv) if mode == "dynamic"
              else HalfConv2d.from_float(conv, dtype=MODES[mode].dtype))
    x = (torch.randn(4, 6, 13, 12) * 3).to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    op = choice.ops()[f"{mode}-conv"]
    args = ((module.weight, module.weight_scale, module.bias) if mode == "dynamic"
            else (module.weight, module.bias))
    with torch.no_grad():
        ref = op.reference.fn(module, x, *args)
        for c in op.candidates:
            out = c.fn(module, x, *args)
            assert choice.mismatch(op, out, ref, module, x, *args) is None, c.name
            assert choice.mismatch(op, c.fn(module, x.contiguous(), *args), ref, module, x, *args) is None, c.name


def test_dynamic_is_batch_independent_and_exact_in_integers() -> None:
    """Per-sample scales: a sample's output does not depend on the rest of the batch; the int32
    accumulator equals the float64 convolution of the codes exactly."""
    m = Int8DynamicConv2d.from_float(nn.Conv2d(8, 16, 3, padding=1))
    x = torch.randn(5, 8, 10, 10)
    x[3] *= 100
    assert torch.equal(m(x)[1:2], m(x[1:2]))
    q, s = quantize_samples(x)
    cols = F.unfold(q, 3, padding=1).transpose(1, 2).reshape(-1, 72).to(torch.int8)
    acc = torch._int_mm(cols, m.weight.reshape(16, -1).t())
    exact = F.conv2d(q.double(), m.weight.double(), None, 1, 1)
    assert torch.equal(acc.double().reshape(5, 100, 16).transpose(1, 2).reshape(5, 16, 10, 10), exact)


def test_grouped_and_circular_convs_are_refused_by_the_module_and_skipped_by_the_pass() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        Int8DynamicConv2d.from_float(nn.Conv2d(4, 4, 3, groups=2))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 3, padding=1,
                          padding_mode="circular"), nn.Conv2d(4, 2, 2, padding="same")).eval()
    gm = fxlab.apply(model, "quantize-conv{mode=dynamic}")
    assert type(gm.get_submodule("0")) is Int8DynamicConv2d
    assert fxlab.records(gm).left_alone().splitlines() == [
        "quantize-conv: _1: groups=4 (grouped / depthwise conv) is not quantized; left in float32",
        "quantize-conv: _2: padding_mode='circular' is not quantized (zeros only); left in float32",
        "quantize-conv: _3: padding='same' pads one side more (even kernel); left in float32",
    ]
    x = torch.randn(2, 1, 12, 12)
    assert (gm(x) - model(x)).abs().max() < 0.05


# -- storage, printouts ---------------------------------------------------------------------------


def _tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


@pytest.mark.parametrize("mode", CONV_MODE_NAMES)
def test_state_dict_holds_int8_or_half_weights(mode: str) -> None:
    conv = nn.Conv2d(32, 64, 3)
    gm = fxlab.apply(nn.Sequential(conv).eval(), QuantizeConv(mode=mode))
    state = gm.state_dict()
    assert state["0.weight"].shape == conv.weight.shape
    ratio = _tensor_bytes(gm) / _tensor_bytes(conv)
    if mode in INT8:
        assert state["0.weight"].dtype == torch.int8 and state["0.weight_scale"].dtype == torch.float32
        assert ratio <= 0.3, ratio
    else:
        assert state["0.weight"].dtype == MODES[mode].dtype and ratio <= 0.51, ratio
    fresh = type(gm.get_submodule("0"))(32, 64, 3, **({"dtype": MODES[mode].dtype} if "weight_scale" not in state
                                                      and mode not in INT8 else {}))
    fresh.load_state_dict(gm.get_submodule("0").state_dict(), strict=True)
    x = torch.randn(2, 32, 9, 9)
    assert torch.equal(fresh(x), gm(x))


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("mode", CONV_MODE_NAMES)
def test_golden_printout(golden, mode: str, net_name: str) -> None:
    gm = fxlab.apply(net(net_name), QuantizeConv(mode=mode))
    golden.check(f"quantize-conv/{mode}/{net_name}", fxlab.format_graph(gm))


def test_module_reprs() -> None:
    assert repr(Int8DynamicConv2d.from_float(nn.Conv2d(1, 32, 3))) == "Int8DynamicConv2d(1→32, k=3, per-channel)"
    assert repr(Int8WeightOnlyConv2d.from_float(nn.Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 2),
                                                          dilation=2, bias=False))) == (
        "Int8WeightOnlyConv2d(3→8, k=3×5, stride=1×2, padding=1×2, dilation=2, per-channel, bias=False)")
    assert repr(HalfConv1d.from_float(nn.Conv1d(28, 16, 5, padding="same"), dtype=torch.float16)) == (
        "HalfConv1d(28→16, k=5, padding=2, fp16)")


# -- the pass -------------------------------------------------------------------------------------


def test_pipeline_text_and_budgets() -> None:
    for mode in CONV_MODE_NAMES:
        p = QuantizeConv(mode=mode, exclude="conv2")
        assert p.budget == QuantizeLinear(mode=mode).budget and p.kind == "approximate"
        assert fxlab.parse_pipeline(fxlab.format_pipeline([p])) == [p]
    with pytest.raises(fxlab.PassError, match=r"unknown mode 'static' \(static int8 is for Linears"):
        QuantizeConv(mode="static")
    with pytest.raises(fxlab.PassError, match=r"targets='fc' matches no nn.Conv1d / nn.Conv2d"):
        fxlab.apply(net(), "quantize-conv{mode=dynamic targets=fc}")


def test_callers_model_is_untouched_and_nan_weights_refused() -> None:
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxlab.apply(model, "quantize-conv{mode=dynamic}")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(fxlab.PassError, match=r"^quantize-conv: conv2: weight has 1 NaN value;.*exclude=conv2"):
        fxlab.apply(model, "quantize-conv{mode=dynamic}")
    gm = fxlab.apply(model, "quantize-conv{mode=dynamic exclude=conv2}")
    assert type(gm.conv1) is Int8DynamicConv2d and type(gm.conv2) is nn.Conv2d


@pytest.mark.parametrize("mode", CONV_MODE_NAMES)
def test_save_load_round_trip_and_torch_export(monkeypatch, tmp_path, mode: str) -> None:
    monkeypatch.setitem(MODELS, "qconv-smallcnn", SmallCNN)
    gm = fxlab.apply(net(), f"quantize-conv{{mode={mode}}},quantize-linear{{mode={mode}}}")
    x = images(8)
    loaded = fxlab.load(fxlab.save(gm, tmp_path / "cnn.pth"))
    assert torch.equal(loaded(x), gm(x))
    program = torch.export.load(fxlab.export_program(gm, tmp_path / "cnn.pt2", example_input=x))
    assert torch.allclose(program.module()(x), gm(x), atol=1e-5, rtol=1e-5)


def test_onnx_export_of_dynamic_conv_is_its_integer_arithmetic(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    gm = fxlab.apply(net(), "quantize-conv{mode=dynamic}")
    fxlab.export_onnx(gm, tmp_path / "cnn.onnx", example_input=images(4))  # checked against PyTorch within 1e-4


@pytest.mark.parametrize("mode", CONV_MODE_NAMES)
def test_a_fused_conv_relu_is_quantized_with_its_relu(monkeypatch, tmp_path, mode: str) -> None:
    """fuse-conv-relu then quantize-conv: each ConvReLU becomes the quantized conv with ``relu``,
    computing exactly what quantizing the unfused conv and then the ReLU computes; it saves, loads
    and exports like the others."""
    monkeypatch.setitem(MODELS, "qconv-smallcnn", SmallCNN)
    x = images(8)
    fused = fxlab.apply(net(), f"fuse-conv-relu,quantize-conv{{mode={mode}}}")
    plain = fxlab.apply(net(), f"quantize-conv{{mode={mode}}}")
    for name in ("conv1", "conv2"):
        module = fused.get_submodule(name)
        assert type(module) is CLASSES[mode][1] and module.relu and repr(module).endswith(", relu)")
    assert not plain.conv1.relu and "relu" not in repr(plain.conv1)
    assert fxlab.records(fused)[-1].rewritten == ["conv1", "conv2"]
    assert [node for node, _ in fxlab.records(fused)[-1].skipped] == ["fc"]  # the Linear only
    assert torch.equal(fused(x), plain(x))
    loaded = fxlab.load(fxlab.save(fused, tmp_path / "fused.pth"))
    assert torch.equal(loaded(x), fused(x)) and loaded.conv1.relu
    one_d = fxlab.apply(net("conv1dnet"), f"fuse-conv-relu,quantize-conv{{mode={mode}}}")
    assert type(one_d.conv) is CLASSES[mode][0] and one_d.conv.relu
    rows = torch.randn(2, 1, 28, 28)
    assert torch.equal(one_d(rows), fxlab.apply(net("conv1dnet"), f"quantize-conv{{mode={mode}}}")(rows))


def test_onnx_export_of_a_quantized_conv_relu(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    gm = fxlab.apply(net(), "fuse-conv-relu,quantize-conv{mode=dynamic}")
    fxlab.export_onnx(gm, tmp_path / "cnn.onnx", example_input=images(4))  # checked against PyTorch within 1e-4


# -- sites: what each quantize pass rewrote and left alone ------------------------------------------


def test_quantize_linear_reports_convs_and_exclusions() -> None:
    model = nn.Sequential(SmallCNN(), nn.ReLU(), nn.Linear(10, 10)).eval()
    gm = fxlab.apply(model, "quantize-linear{mode=dynamic exclude=_2}")
    record = fxlab.records(gm)[0]
    assert record.rewritten == ["_0_fc"]
    assert fxlab.records(gm).left_alone().splitlines() == [
        "quantize-linear: _0_conv1: Conv2d left in float32 (quantize-linear quantizes nn.Linear; use quantize-conv)",
        "quantize-linear: _0_conv2: Conv2d left in float32 (quantize-linear quantizes nn.Linear; use quantize-conv)",
        "quantize-linear: _2: excluded by exclude='_2'",
    ]
    gm = fxlab.apply(model, "quantize-conv{mode=bf16 targets=_0_conv2},quantize-linear{mode=fp16 targets=_2}")
    assert [r.rewritten for r in fxlab.records(gm)] == [["_0_conv2"], ["_2"]]
    assert "quantize-conv: _0_conv1: not selected by targets='_0_conv2'" in fxlab.records(gm).left_alone()
    assert "quantize-linear: _0_fc: not selected by targets='_2'" in fxlab.records(gm).left_alone()


def test_quantize_linear_on_a_model_without_linear_is_a_recorded_no_op() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    gm = fxlab.apply(model, "quantize-linear{mode=dynamic}")
    x = torch.randn(2, 1, 9, 9)
    assert torch.equal(gm(x), model(x))
    record = fxlab.records(gm)[0]
    assert record.rewritten == [] and [name for name, _ in record.skipped] == ["_0", "_2"]
    assert "quantize-linear quantizes nn.Linear; use quantize-conv" in record.skipped[0][1]
    with pytest.raises(fxlab.PassError, match="matches no nn.Linear"):
        fxlab.apply(model, "quantize-linear{mode=dynamic targets=_0}")
    gm = fxlab.apply(model, "quantize-prepare")  # nothing to observe: a no-op too
    assert fxlab.records(gm)[0].rewritten == []


@pytest.mark.parametrize("pipeline, quantized", [
    ("quantize-linear{mode=dynamic}", ["layer1"]),
    ("quantize-prepare", ["layer1"]),
    ("quantize-conv{mode=weight-only}", ["conv1"]),
])
def test_limit_quantizes_only_the_first_sites(pipeline: str, quantized: list[str]) -> None:
    model = build("mymodule").eval() if "conv" not in pipeline else net()
    gm = fxlab.apply(model, pipeline, limit=1)
    record = fxlab.records(gm)[0]
    assert record.rewritten == quantized
    beyond = [name for name, reason in record.skipped if reason == "beyond limit=1"]
    assert beyond == (["layer2", "layer3"] if "conv" not in pipeline else ["conv2"])


def test_limit_on_static_and_convert() -> None:
    model = build("mymodule").eval()
    gm = fxlab.apply(model, [QuantizeLinear(mode="static", calibration=[images(16)])], limit=2)
    assert fxlab.records(gm)[0].rewritten == ["layer1", "layer2"]
    assert type(gm.layer3) is nn.Linear
    prepared = fxlab.apply(model, "quantize-prepare")
    prepared(images(16))
    gm = fxlab.apply(prepared, "quantize-convert", limit=1)
    assert fxlab.records(gm)[-1].rewritten == ["layer1"]
    assert type(gm.layer1).__name__ == "Int8StaticLinear" and type(gm.layer2) is nn.Linear


@pytest.mark.parametrize("model_name", ["mymodule", "simplenn"])
def test_seed_models_report_their_sites(model_name: str) -> None:
    model = build(model_name).eval()
    gm = fxlab.apply(model, "quantize-linear{mode=dynamic}")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(fxlab.records(gm)[0].rewritten) == len(linears) and fxlab.records(gm)[0].skipped == []
    gm = fxlab.apply(model, "quantize-conv{mode=dynamic}")  # no conv: a no-op that says why per Linear
    record = fxlab.records(gm)[0]
    assert record.rewritten == [] and len(record.skipped) == len(linears)
    assert all("use quantize-linear" in reason for _, reason in record.skipped)
