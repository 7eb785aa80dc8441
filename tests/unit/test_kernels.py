"""The fused CPU kernels (fxlab.nn.kernels), and every implementation a quantized Linear may choose
(fxlab.nn.kernels.choice), compute what the reference torch ops compute.

The suite runs with ``FXLAB_KERNELS=torch`` (tests/conftest.py); here each implementation is
forced in turn with ``kernels.enabled()`` and ``choice.forced(name)``."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from fxlab.nn import (
    Dequantize,
    HalfLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
    Int8WeightOnlyLinear,
    LinearReLU,
    Quantize,
    kernels,
)
from fxlab.nn.kernels import choice
from fxlab.nn.quantized import quantize_rows

pytestmark = pytest.mark.skipif(kernels._load() is None, reason="numba is a dependency; it must import")


def _both(fn, name: str = "numba"):
    """``fn()`` with implementation ``name`` (the Numba kernels by default), then with torch ops only."""
    with torch.no_grad():
        with kernels.enabled(), choice.forced(name):
            fast = fn()
        with kernels.disabled():
            slow = fn()
    return fast, slow


@pytest.mark.parametrize("shape", [(1, 784), (7, 3), (256, 784), (1000, 50), (3, 1)])
def test_quantize_rows_matches_torch_exactly(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape) * torch.rand(shape[0], 1) * 10
    x[0, 0] = 0.0
    if shape[0] > 2:
        x[1] = 0.0  # an all-zero row: scale eps, codes 0
    (q, s), (q_ref, s_ref) = _both(lambda: quantize_rows(x))
    assert q.dtype == torch.int8 and s.shape == (shape[0], 1)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


def _rounding_edge_rows(count: int) -> torch.Tensor:
    """Rows whose codes ``round(x * (127 * (1 / max|x|)))`` come out otherwise when that product is
    taken in float64 rather than float32 (each row: its absmax, then a value on such an edge)."""
    torch.manual_seed(3)
    amax = torch.rand(200_000) * 3 + 0.01
    inv = amax.reciprocal() * 127.0  # float32, as the reference computes it
    x = (torch.randint(0, 127, (200_000,)) + 0.5) / inv  # near a tie between two codes
    x32 = torch.round(x * inv)
    x64 = torch.round(x.double() * (127.0 / amax.double().clamp_min(1e-12)))
    edge = (x32.double() != x64).nonzero().flatten()[:count]
    assert len(edge) == count, "no rounding edges found"
    return torch.stack([amax[edge], x[edge]], dim=1)


def test_kernels_quantize_in_float32_like_the_reference() -> None:
    """The kernels' per-row int8 codes are float32 arithmetic throughout: where float64 would round a
    product the other way, they still give the reference's codes (and the kernel choice never rejects
    them as not the mode's numbers)."""
    x = _rounding_edge_rows(16)
    (q, s), (q_ref, s_ref) = _both(lambda: quantize_rows(x))
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    m = Int8DynamicLinear.from_float(nn.Linear(2, 3))
    for name in ("numba", "numba+int_mm"):
        fast, slow = _both(lambda: m(x), name)
        assert torch.equal(fast, slow) or choice.mismatch(choice.ops()["dynamic"], fast, slow, m, x, m.weight,
                                                          m.weight_scale, m.bias, False) is None


@pytest.mark.parametrize("name", ["numba", "numba+int_mm"])
@pytest.mark.parametrize("rows", [1, 5, 8, 9, 256])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_dynamic_kernels_match_the_int8_torch_path(name: str, rows: int, relu: bool, bias: bool) -> None:
    torch.manual_seed(1)
    m = Int8DynamicLinear.from_float(nn.Linear(784, 50, bias=bias), relu=relu)
    x = torch.randn(rows, 784)
    fast, slow = _both(lambda: m(x), name)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    if relu:
        assert (fast >= 0).all()


@pytest.mark.parametrize("k", [1024, 1025, 3000])
def test_integer_dot_products_are_exact_for_long_rows(k: int) -> None:
    """Beyond 1024 inputs the float32 partial sums are chunked: still the exact int32 sum."""
    torch.manual_seed(2)
    m = Int8StaticLinear.from_float(nn.Linear(k, 16), input_range=(-1.0, 1.0), output_range=(-40.0, 40.0))
    xq = torch.full((2, k), -128, dtype=torch.int8)  # the largest products: 128 × 127
    xq[1] = torch.randint(-128, 128, (k,), dtype=torch.int8)
    with torch.no_grad():
        m.weight.fill_(127)
        m.weight[1:] = torch.randint(-127, 128, (15, k), dtype=torch.int8)
        m.refresh()
    fast, slow = _both(lambda: m(xq))
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("name", ["numba", "numba+int_mm"])
@pytest.mark.parametrize("rows", [1, 8, 9, 100])
def test_static_modules_match_torch_exactly(name: str, rows: int) -> None:
    torch.manual_seed(3)
    lin = Int8StaticLinear.from_float(nn.Linear(128, 64), relu=True, input_range=(-2.0, 3.0), output_range=(0.0, 9.0))
    x = torch.randn(rows, 128) * 2
    q_fast, q_slow = _both(lambda: lin.input_quant(x))
    assert torch.equal(q_fast, q_slow)
    y_fast, y_slow = _both(lambda: lin(q_fast), name)
    assert (y_fast.int() - y_slow.int()).abs().max() <= 1  # rounding ties may fall either side
    assert (y_fast != y_slow).float().mean() < 1e-3
    d_fast, d_slow = _both(lambda: lin.output_dequant(y_fast))
    assert torch.equal(d_fast, d_slow)


@pytest.mark.parametrize("module", ["weight-only", "bf16", "fp16"])
@pytest.mark.parametrize("rows", [1, 8])
def test_float_activation_kernels_match_torch(module: str, rows: int) -> None:
    torch.manual_seed(4)
    lin = nn.Linear(300, 40)
    if module == "weight-only":
        m = Int8WeightOnlyLinear.from_float(lin, relu=True)
    else:
        m = HalfLinear.from_float(lin, relu=True, dtype=torch.bfloat16 if module == "bf16" else torch.float16)
    x = torch.randn(rows, 300)
    fast, slow = _both(lambda: m(x))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_weights_widen_exactly(dtype: torch.dtype) -> None:
    """Every 16-bit pattern (normals, subnormals, ±0, ±inf, NaN) widens to its float32 value."""
    k = kernels._load()
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    widened = k.widen_half(bits.numpy(), dtype == torch.float16)
    assert np.array_equal(widened, bits.view(dtype).float().numpy(), equal_nan=True)


def test_kernels_stay_out_of_autograd_and_tracing() -> None:
    m = Int8WeightOnlyLinear.from_float(nn.Linear(8, 4))
    x = torch.randn(2, 8, requires_grad=True)
    with kernels.enabled():
        assert kernels.for_tensor(x) is None  # grad mode on: torch ops
        with torch.no_grad():
            assert kernels.for_tensor(x) is not None
        assert kernels.for_tensor(torch.randn(8, 2).t()) is None  # not contiguous
        with kernels.disabled():
            assert kernels.for_tensor(torch.randn(2, 8)) is None
        assert m(x).shape == (2, 4)


def test_caches_follow_the_tensors_and_stay_out_of_pickles() -> None:
    torch.manual_seed(5)
    a = Int8DynamicLinear.from_float(nn.Linear(16, 4))
    b = Int8DynamicLinear.from_float(nn.Linear(16, 4))
    x = torch.randn(3, 16)
    with torch.no_grad(), kernels.enabled(), choice.forced("numba"):
        a(x)
        assert "_fxlab_arrays" in a.__dict__
        buf = io.BytesIO()
        torch.save(a, buf)
        assert b"_fxlab_arrays" not in pickle.dumps(a.__getstate__())
        a.load_state_dict(b.state_dict())  # in place: the cached views see the new values
        torch.testing.assert_close(a(x), b(x))
        a.weight.data = torch.zeros_like(a.weight)  # a new tensor: the cache is rebuilt
        torch.testing.assert_close(a(x), a.bias.expand(3, 4))
    q = Quantize()
    q.scale.fill_(0.5)
    assert q.values()[0] == 0.5
    q.scale.fill_(0.25)  # in place: the version changes
    assert q.values() == (0.25, 4.0, 0)
    assert torch.equal(Dequantize()(torch.tensor([[3]], dtype=torch.int8)), torch.tensor([[3.0]]))


def test_a_misfit_input_is_refused_not_read_past_its_end() -> None:
    m = Int8DynamicLinear.from_float(nn.Linear(16, 4))
    with torch.no_grad(), pytest.raises((ValueError, RuntimeError)):
        m(torch.randn(2, 8))
    s = Int8StaticLinear.from_float(nn.Linear(16, 4), input_range=(-1.0, 1.0), output_range=(-1.0, 1.0))
    with torch.no_grad(), pytest.raises((ValueError, RuntimeError)):
        s(torch.zeros(2, 8, dtype=torch.int8))


# --------------------------------------------------------------------------------------------
# every candidate of every op (fxlab.nn.kernels.choice) against the op's reference


def _module_and_input(op: str, rows: int, relu: bool):
    torch.manual_seed(7)
    lin = nn.Linear(300, 40)
    x = torch.randn(rows, 300) * 2
    if op == "dynamic":
        m = Int8DynamicLinear.from_float(lin, relu=relu)
        return m, x, (m.weight, m.weight_scale, m.bias, relu)
    if op == "weight-only":
        m = Int8WeightOnlyLinear.from_float(lin, relu=relu)
        return m, x, (m.weight, m.weight_scale, m.bias, relu)
    if op in ("bf16", "fp16"):
        m = HalfLinear.from_float(lin, relu=relu, dtype=torch.bfloat16 if op == "bf16" else torch.float16)
        return m, x, (m.weight, m.bias, relu)
    if op == "linear-relu":
        m = LinearReLU.from_linear(lin)
        return m, x, (m.weight, m.bias)
    m = Int8StaticLinear.from_float(lin, relu=relu, input_range=(-4.0, 4.0), output_range=(-6.0, 8.0))
    return m, m.input_quant(x), (m.weight, m._multiplier, m._offset)


OPS = ["dynamic", "weight-only", "bf16", "fp16", "static", "linear-relu"]


def test_every_quantized_linear_registers_its_op() -> None:
    ops = choice.ops()
    assert set(OPS) <= set(ops)
    for name in OPS:
        assert ops[name].reference.name == "torch" and len(ops[name].candidates) >= 2


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("rows", [1, 9, 300])
@pytest.mark.parametrize("relu", [False, True])
def test_every_candidate_gives_the_modes_numbers(op: str, rows: int, relu: bool) -> None:
    target = choice.ops()[op]
    m, x, args = _module_and_input(op, rows, relu)
    with torch.no_grad(), kernels.enabled():
        ref = target.reference.fn(m, x, *args)
        ran = 0
        for c in target.candidates[1:]:
            if not c.available():
                continue
            out = c.fn(m, x, *args)
            assert choice.mismatch(target, out, ref, m, x, *args) is None, c.name
            # and the module, with the candidate forced, returns the same
            with choice.forced(c.name):
                assert torch.equal(m(x), out)
            ran += 1
        assert ran >= 1  # the Numba kernels (oneDNN for linear-relu) at least
