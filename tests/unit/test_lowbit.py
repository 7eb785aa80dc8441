"""Low-bit Linears (int4, int8-int4, int2, fp8): packing, kernels against torch ops, the
quantize-linear modes, state dicts, save / load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxlab
from fxlab.errors import PassError
from fxlab.models import build, seed_names
from fxlab.nn import kernels
from fxlab.nn import lowbit
from fxlab.nn.fused import LinearReLU
from fxlab.nn.lowbit import (
    Float8WeightLinear,
    Int2WeightOnlyLinear,
    Int4WeightOnlyLinear,
    Int8Int4Linear,
    dequantize,
    fake_quantize_weight,
    pack,
    quantize_grouped,
    unpack,
)
from fxlab.nn.quantized import quantize_rows



@pytest.fixture
def numba_kernels():
    """The Numba kernels on for the test (the suite runs with FXLAB_KERNELS=torch; numba is a dependency)."""
    with kernels.enabled():
        assert kernels.available()
        yield


needs_kernels = pytest.mark.usefixtures("numba_kernels")

PACKED = [
    (Int4WeightOnlyLinear, 32),
    (Int4WeightOnlyLinear, 64),
    (Int4WeightOnlyLinear, 128),
    (Int4WeightOnlyLinear, None),
    (Int8Int4Linear, 32),
    (Int8Int4Linear, None),
    (Int2WeightOnlyLinear, None),
]
#: (in, out) shapes: the seeds' own, odd widths, a width below one group, one not a multiple of the group
SHAPES = [(784, 128), (128, 64), (50, 10), (13, 7), (100, 3), (1, 5)]


def _module(cls: type, group: int | None, k: int, n: int, *, relu: bool = False, bias: bool = True):
    torch.manual_seed(k * 31 + n)
    linear = torch.nn.Linear(k, n, bias=bias)
    if relu:
        linear = LinearReLU.from_linear(linear)
    if cls is Float8WeightLinear:
        return cls.from_float(linear, relu=relu), linear
    return cls.from_float(linear, relu=relu, group_size=group), linear


# -- packing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 784])
def test_pack_round_trips(bits: int, k: int) -> None:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.randint(lo, hi + 1, (6, k))
    packed = pack(q, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (6, -(-k * bits // 8))
    assert torch.equal(unpack(packed, k, bits), q.to(torch.int8))


def test_int4_holds_two_weights_a_byte() -> None:
    m = Int4WeightOnlyLinear.from_float(torch.nn.Linear(784, 128), group_size=32)
    sd = m.state_dict()
    assert sd["weight_packed"].dtype == torch.uint8 and sd["weight_packed"].shape == (128, 392)
    assert sd["weight_scale"].shape == (128, 25)  # 784 = 24 groups of 32 and one of 16
    assert set(sd) == {"weight_packed", "weight_scale", "bias"}
    m2 = Int2WeightOnlyLinear.from_float(torch.nn.Linear(784, 128))
    assert m2.state_dict()["weight_packed"].shape == (128, 196)


def test_int4_codes_and_scales() -> None:
    w = torch.randn(5, 70)
    q, s = quantize_grouped(w, 32)
    assert int(q.min()) >= -8 and int(q.max()) <= 7 and s.shape == (5, 3)
    wide = s.repeat_interleave(32, dim=1)[:, :70]
    err = (q.float() * wide - w).square().reshape(5, -1)
    for g in range(3):
        block = w[:, g * 32:(g + 1) * 32]
        plain = block.abs().amax(dim=1, keepdim=True) / 7
        plain_err = (torch.round(block / plain).clamp(-8, 7) * plain - block).square().sum(dim=1)
        group_err = err[:, g * 32:(g + 1) * 32].sum(dim=1)
        assert bool((group_err <= plain_err).all())  # the search includes the absmax scale
        # a scale never clips more than 40 % of the range away (and 2 % of refinement)
        assert bool((s[:, g].abs() >= block.abs().amax(dim=1) * 0.6 * 0.98 / 8 - 1e-7).all())
    assert bool((s < 0).any()), "positive extremes onto -8: negative scales"
    q_again, s_again = quantize_grouped(w, 32)
    assert torch.equal(q, q_again) and torch.equal(s, s_again)


@pytest.mark.parametrize("cls, group", PACKED)
def test_fake_quantize_equals_the_modules_weight(cls: type, group: int | None) -> None:
    kind = {Int2WeightOnlyLinear: "int2"}.get(cls, "int4")
    for k, n in SHAPES:
        m, linear = _module(cls, group, k, n)
        assert torch.equal(fake_quantize_weight(linear.weight.detach(), kind, group), m.dequantized_weight())
    m, linear = _module(Float8WeightLinear, None, 784, 128)
    assert torch.equal(fake_quantize_weight(linear.weight.detach(), "fp8"), m.dequantized_weight())


# -- kernels against torch ops ---------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("cls, group", PACKED)
def test_kernel_dequantize_gives_the_torch_bits(cls: type, group: int | None) -> None:
    lk = lowbit._lowbit_kernels()
    for k, n in SHAPES:
        m, _ = _module(cls, group, k, n)
        packed, scales = m.weight_packed.numpy(), m.weight_scale.numpy()
        out = torch.empty(n, k)
        lk.dequantize(packed, scales, k, m.group, m.bits, out.data_ptr())
        assert torch.equal(out, dequantize(m.weight_packed, m.weight_scale, k, m.group, m.bits))


def _reference(m, x: torch.Tensor) -> torch.Tensor:
    """What the module computes, in torch ops: F.linear on its dequantized weight (int8-int4: on
    the int8 codes of x, times the row scales)."""
    w = m.dequantized_weight()
    if isinstance(m, Int8Int4Linear):
        with kernels.disabled():
            xq, s = quantize_rows(x)
        y = F.linear(xq.float(), w) * s + (m.bias if m.bias is not None else 0)
    else:
        y = F.linear(x, w, m.bias)
    return y.relu() if m.relu else y


@needs_kernels
@pytest.mark.parametrize("cls, group", PACKED)
@pytest.mark.parametrize("relu", [False, True])
def test_every_path_computes_the_same_numbers(cls: type, group: int | None, relu: bool) -> None:
    """The fused kernel (few rows), the kernel-written weight + F.linear (many rows) and the torch ops
    (kernels off) compute the same function: equal up to float32 summation order; the many-rows path
    equals the torch ops exactly (the same weight bits, the same GEMM)."""
    for k, n in SHAPES:
        for bias in (True, False):
            m, _ = _module(cls, group, k, n, relu=relu, bias=bias)
            for rows in (1, lowbit.LOWBIT_KERNEL_MAX_ROWS, lowbit.LOWBIT_KERNEL_MAX_ROWS + 1, 256):
                x = torch.randn(rows, k)
                with torch.no_grad():
                    y = m(x)
                    with kernels.disabled():
                        y_torch = m(x)
                    ref = _reference(m, x)
                # summation order moves a sum by a few ulps of its terms' magnitudes, not of its result
                scale = float(F.linear(x.abs(), m.dequantized_weight().abs()).max()) + 1e-6
                assert y.shape == (rows, n)
                assert float((y - ref).abs().max()) <= 2e-6 * scale * max(1.0, k / 64), (cls, k, n, rows)
                assert float((y_torch - ref).abs().max()) <= 2e-6 * scale * max(1.0, k / 64)
                if rows > lowbit.LOWBIT_KERNEL_MAX_ROWS:
                    assert torch.equal(y, y_torch)


@needs_kernels
def test_int8_int4_few_rows_are_exact_integer_sums() -> None:
    """The fused int8-int4 kernel: per group the exact integer sum of code products, times the scales."""
    m, _ = _module(Int8Int4Linear, 32, 784, 128)
    x = torch.randn(3, 784)
    with torch.no_grad():
        y = m(x)
    with kernels.disabled():
        xq, s_x = quantize_rows(x)
    q = unpack(m.weight_packed, 784, 4).double()
    xg = F.pad(xq.double(), (0, 16)).reshape(3, 25, 32)
    wg = F.pad(q, (0, 16)).reshape(128, 25, 32)
    acc = torch.einsum("mgj,ngj->mng", xg, wg)  # exact integers
    expected = (acc * m.weight_scale.double()).sum(-1) * s_x.double() + m.bias.double()
    assert torch.allclose(y.double(), expected, rtol=1e-5, atol=1e-6)


@needs_kernels
def test_a_wrong_input_width_is_an_error_not_a_read_past_the_end() -> None:
    m, _ = _module(Int4WeightOnlyLinear, 32, 784, 128)
    with torch.no_grad(), pytest.raises(ValueError, match="expected \\(rows, 784\\)"):
        m(torch.randn(2, 700))


def test_three_d_inputs_and_autograd_take_the_torch_ops() -> None:
    m, _ = _module(Int4WeightOnlyLinear, 64, 128, 64)
    x = torch.randn(2, 5, 128)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 5, 64)
    assert torch.allclose(y, _reference(m, x.reshape(10, 128)).reshape(2, 5, 64), atol=1e-5)
    xg = x.clone().requires_grad_()
    m(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


# -- fp8 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", [False, True])
def test_fp8_on_cpu_is_the_widened_weight_times_scale_then_f_linear(relu: bool) -> None:
    for k, n in SHAPES:
        m, linear = _module(Float8WeightLinear, None, k, n, relu=relu)
        assert m.weight.dtype == torch.float8_e4m3fn and m.weight_scale.shape == (n,)
        for rows in (1, 256):
            x = torch.randn(rows, k)
            with torch.no_grad():
                expected = F.linear(x, m.weight.float() * m.weight_scale[:, None], m.bias)
                assert torch.equal(m(x), expected.relu() if relu else expected)
    # e4m3 keeps ~2 significant decimal digits: the weights are near the float ones
    w = linear.weight.detach()
    assert float((m.dequantized_weight() - w).abs().max()) <= float(w.abs().max()) / 16


def test_fp8_scaled_mm_arithmetic_on_cpu() -> None:
    """The CUDA path's function (per-row e4m3 activations, zero padding of K and N to multiples of 16,
    row-wise scales, bfloat16 out) run through torch's CPU ``_scaled_mm``: it computes the per-row
    e4m3 activations times the e4m3 weights, to bfloat16 rounding. (The module itself widens on CPU.)"""
    from fxlab.nn.lowbit import FP8_MAX, _scaled_mm_linear

    for k, n in [(784, 10), (50, 7), (64, 32)]:
        m, _ = _module(Float8WeightLinear, None, k, n)
        x = torch.randn(5, k)
        try:
            y = _scaled_mm_linear(x, m.weight, m.weight_scale, m.bias)
        except (RuntimeError, NotImplementedError) as exc:  # pragma: no cover - a torch without CPU fp8 GEMMs
            pytest.skip(f"torch._scaled_mm does not run on this CPU: {exc}")
        s_x = x.abs().amax(dim=1, keepdim=True) / FP8_MAX
        x8 = (x / s_x).to(torch.float8_e4m3fn).float() * s_x
        expected = F.linear(x8, m.dequantized_weight(), m.bias)
        assert y.shape == (5, n) and y.dtype == torch.float32
        assert float((y - expected).abs().max()) <= 2 ** -7 * float(expected.abs().max()) * 2


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="the fp8 torch._scaled_mm path needs a CUDA GPU of compute capability ≥ 8.9")
def test_fp8_scaled_mm_on_cuda_is_near_the_widened_weights() -> None:  # pragma: no cover - GPU only
    m, _ = _module(Float8WeightLinear, None, 784, 10)
    m = m.cuda()
    x = torch.randn(64, 784, device="cuda")
    with torch.no_grad():
        y = m(x)
        ref = F.linear(x, m.dequantized_weight(), m.bias)
    assert float((y - ref).abs().max()) <= 0.1 * float(ref.abs().max())


# -- the quantize-linear modes --------------------------------------------------------------------

MODE_MODULES = {"int4": Int4WeightOnlyLinear, "int8-int4": Int8Int4Linear, "fp8": Float8WeightLinear,
                "int2": Int2WeightOnlyLinear}


def _state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.mark.parametrize("name", seed_names())
def test_int4_state_dict_is_at_most_017_of_float32_on_every_seed(name: str) -> None:
    model = build(name).eval()
    for mode in ("int4", "int8-int4"):
        gm = fxlab.apply(model, f"quantize-linear{{mode={mode}}}")
        ratio = _state_bytes(gm) / _state_bytes(model)
        assert ratio <= 0.17, f"{mode} on {name}: {ratio:.3f}× float32"
    # int2 at group 32: 2 bits a weight and a float32 scale per 32 weights = 3/32 of float32, plus biases
    assert _state_bytes(fxlab.apply(model, "quantize-linear{mode=int2}")) / _state_bytes(model) <= 0.11
    assert _state_bytes(fxlab.apply(model, "quantize-linear{mode=int2 group_size=none}")) / _state_bytes(model) <= 0.08
    assert _state_bytes(fxlab.apply(model, "quantize-linear{mode=fp8}")) / _state_bytes(model) <= 0.27


@pytest.mark.parametrize("mode", list(MODE_MODULES))
def test_modes_swap_in_their_modules_and_say_so(mode: str) -> None:
    model = build("mymodule").eval()
    gm = fxlab.apply(model, f"quantize-linear{{mode={mode}}}")
    assert type(gm.layer1) is MODE_MODULES[mode]
    text = fxlab.format_graph(gm)
    assert f"layer1:{MODE_MODULES[mode].__name__}(784→128" in text
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        error = float((gm(x) - model(x)).abs().max() / model(x).abs().max())
    assert error < (0.9 if mode == "int2" else 0.2), f"{mode}: relative error {error:.3f}"


def test_group_size_is_an_int4_option_that_round_trips() -> None:
    for text in ("quantize-linear{mode=int4 group_size=none}", "quantize-linear{mode=int8-int4 group_size=128}",
                 "quantize-linear{mode=int4 group_size=64 exclude=layer3}"):
        p = fxlab.parse_pipeline(text)[0]
        assert fxlab.format_pipeline([p]) == text
        assert p.config.group_size == p.group_size
    gm = fxlab.apply(build("mymodule").eval(), "quantize-linear{mode=int4 group_size=none}")
    assert repr(gm.layer1) == "Int4WeightOnlyLinear(784→128, per-channel)" and gm.layer1.weight_scale.shape == (128, 1)
    assert fxlab.parse_pipeline("quantize-linear{mode=int4}")[0].config.group_size == 32
    with pytest.raises(fxlab.PipelineError, match="group_size=48: give 32, 64, 128 or none"):
        fxlab.parse_pipeline("quantize-linear{mode=int4 group_size=48}")
    with pytest.raises(PassError, match="group_size applies to the grouped modes"):
        fxlab.passes.QuantizeLinear(mode="dynamic", group_size=64)


@pytest.mark.parametrize("text", ["quantize-linear{mode=int4 group_size=64}", "quantize-linear{mode=int8-int4}",
                                  "quantize-linear{mode=fp8}", "fuse-linear-relu,quantize-linear{mode=int2}"])
def test_save_load_and_show_round_trip(text: str, tmp_path) -> None:
    model = build("mymodule").eval()
    gm = fxlab.apply(model, text)
    path = tmp_path / "m.fxlab"
    fxlab.save(gm, path)
    back = fxlab.load(path)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), gm(x))
    assert {k: v.dtype for k, v in back.state_dict().items()} == {k: v.dtype for k, v in gm.state_dict().items()}
    assert fxlab.format_graph(fxlab.trace(back)) == fxlab.format_graph(gm)
    fresh = type(gm.layer1)(784, 128, **({} if isinstance(gm.layer1, Float8WeightLinear)
                                         else {"group_size": gm.layer1.group_size}), relu=gm.layer1.relu)
    fresh.load_state_dict(gm.layer1.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x.flatten(1)), gm.layer1(x.flatten(1)))


def test_int2_uses_all_four_codes_and_beats_ternary_per_channel() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(784, 128)
    m = Int2WeightOnlyLinear.from_float(linear, group_size=32)
    codes = unpack(m.weight_packed, 784, 2)
    assert set(codes.unique().tolist()) == {-2, -1, 0, 1}
    w = linear.weight.detach()
    ternary_scale = w.abs().mean(dim=1, keepdim=True)
    ternary = torch.round(w / ternary_scale).clamp(-1, 1) * ternary_scale
    for group in (32, None):
        err = (Int2WeightOnlyLinear.from_float(linear, group_size=group).dequantized_weight() - w).square().sum()
        assert err < 0.8 * (ternary - w).square().sum(), group


def test_int2_files_with_one_scale_per_channel_still_load() -> None:
    """int2 was ternary with one scale per channel before it had groups; such a state dict loads."""
    torch.manual_seed(1)
    q = torch.randint(-1, 2, (10, 64))
    state = {"weight_packed": pack(q, 2), "weight_scale": torch.rand(10, 1), "bias": torch.randn(10)}
    m = Int2WeightOnlyLinear(64, 10, group_size=32)
    m.load_state_dict(state, strict=True)
    assert m.group_size is None and repr(m) == "Int2WeightOnlyLinear(64→10, per-channel)"
    assert torch.equal(m.dequantized_weight(), q.float() * state["weight_scale"])
    x = torch.randn(3, 64)
    torch.testing.assert_close(m(x), x @ m.dequantized_weight().T + state["bias"])


def test_quantizing_twice_names_the_low_bit_modules() -> None:
    gm = fxlab.apply(build("mymodule").eval(), "quantize-linear{mode=int2}")
    with pytest.raises(PassError, match="Int2WeightOnlyLinear"):
        fxlab.apply(gm, "quantize-linear{mode=int4}")


@needs_kernels
def test_float_codes_kernel_gives_quantize_rows_codes() -> None:
    k = kernels._kernels()
    x = torch.randn(37, 784) * torch.rand(37, 1) * 10
    q, s = torch.empty(37, 784), torch.empty(37, 1)
    k.quantize_rows_float(x.data_ptr(), 37, 784, 1e-12, q.data_ptr(), s.data_ptr())
    with kernels.disabled():
        q_ref, s_ref = quantize_rows(x)
    assert torch.equal(q, q_ref.float()) and torch.equal(s, s_ref)


@needs_kernels
def test_bench_lowbit_suite_times_every_path_and_compares_them() -> None:
    from fxlab.bench import Config, lowbit_suite, lowbit_tables

    result = lowbit_suite(Config(quick=True, rounds=1, round_time=0.0))
    assert {(r["mode"], r["batch"]) for r in result["rows"]} == {(m, b) for m in ("int4", "int8-int4", "int2")
                                                                   for b in (1, 256)}
    for r in result["rows"]:
        speedups = {n: c["speedup_vs_unpack"] for n, c in r["candidates"].items()}
        assert speedups["unpack + F.linear"] == pytest.approx(1.0)
        assert all(v is not None and v > 0 for v in speedups.values()), speedups
        assert r["max_rel_diff_kernel_paths"] < 1e-5
    assert "kernel weight + F.linear" in lowbit_tables(result)
    assert result["targets"][0]["target"] == "low-bit Linears faster than unpack + F.linear"


# -- quantization-aware training: the fake-quantized forward is the target module's ----------------

from fxlab.passes import QuantizeLinear  # noqa: E402
from fxlab.passes.quantize import GROUPED_MODES, MODES, FakeQuantLinear  # noqa: E402

QAT_CASES = [("int4", 32), ("int4", None), ("int8-int4", 64), ("int2", 32), ("fp8", None), ("dynamic", None),
             ("weight-only", None)]


@pytest.mark.parametrize("mode, group", QAT_CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_fake_quantized_forward_is_the_converted_modules(mode: str, group: int | None, relu: bool) -> None:
    torch.manual_seed(3)
    linear = torch.nn.Linear(784, 128)
    if relu:
        linear = LinearReLU.from_linear(linear)
    p = QuantizeLinear(mode=mode, **({"group_size": group} if mode in GROUPED_MODES else {}))
    fake = FakeQuantLinear.wrap(linear, p.config)
    converted = fxlab.apply(torch.nn.Sequential(linear), [p]).get_submodule("0")
    x = torch.randn(64, 784)
    with torch.no_grad(), kernels.disabled():
        expected = converted(x)
    y = fake(x)
    assert y.requires_grad
    assert float((y.detach() - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_fake_quantized_backward_is_straight_through() -> None:
    torch.manual_seed(4)
    linear = torch.nn.Linear(40, 8)
    fake = FakeQuantLinear.wrap(linear, MODES["int2"])
    x = torch.randn(16, 40, requires_grad=True)
    g = torch.randn(16, 8)
    fake(x).backward(g)
    w_q = fake_quantize_weight(linear.weight.detach(), "int2", 32)
    assert torch.allclose(linear.weight.grad, g.t() @ x.detach(), atol=1e-5)  # d/dw as if rounding were identity
    assert torch.allclose(x.grad, g @ w_q, atol=1e-5)  # the input's gradient sees the quantized weight
    assert linear.bias.grad is not None


def test_qat_options_round_trip_and_are_checked() -> None:
    p = fxlab.parse_pipeline("quantize-linear{mode=int4 group_size=none qat_epochs=0.5}")[0]
    assert p.qat_epochs == 0.5 and "data" not in p.options()
    assert fxlab.format_pipeline([p]) == "quantize-linear{mode=int4 group_size=none qat_epochs=0.5}"
    with pytest.raises(PassError, match="qat_epochs=-1: give a number of epochs ≥ 0"):
        QuantizeLinear(mode="int4", qat_epochs=-1)
    for mode in ("static", "bf16"):
        with pytest.raises(PassError, match=f"mode={mode} is not trained through"):
            QuantizeLinear(mode=mode, qat_epochs=1)
    with pytest.raises(PassError, match="needs MNIST training data"):
        fxlab.apply(build("mymodule").eval(), "quantize-linear{mode=int2 qat_epochs=1}")


@pytest.mark.parametrize("mode", ["int4", "int8-int4", "int2", "fp8"])
def test_onnx_export_is_checked_against_onnxruntime(mode: str, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    gm = fxlab.apply(build("neuralnetwork").eval(), f"quantize-linear{{mode={mode}}}")
    path = fxlab.export_onnx(gm, tmp_path / "m.onnx")  # runs it with onnxruntime: within 1e-4 of PyTorch
    assert path.stat().st_size > 0 and not list(tmp_path.glob("*.tmp*"))


def test_verify_qat_setting_reaches_the_passes_that_train() -> None:
    from fxlab.passes import FuseLinearReLU
    from fxlab.verification.run import with_qat

    assert with_qat(QuantizeLinear(mode="int4"), 0.5).qat_epochs == 0.5
    assert with_qat(QuantizeLinear(mode="int4", qat_epochs=2), 0.5).qat_epochs == 2  # its own setting wins
    assert with_qat(QuantizeLinear(mode="static"), 0.5).qat_epochs == 0  # calibrated: not trained
    assert with_qat(QuantizeLinear(mode="fp16"), 0.5).qat_epochs == 0
    assert with_qat(QuantizeLinear(mode="int4"), 0).qat_epochs == 0
    fuse = FuseLinearReLU()
    assert with_qat(fuse, 1) is fuse
