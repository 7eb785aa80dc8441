"""The error-minimising symmetric scales shared by the int8 and int4 weights (fxlab.nn.scales)."""

from __future__ import annotations

import pytest
import torch

from fxlab.nn.lowbit import Int4WeightOnlyLinear, Int8Int4Linear, fake_quantize_weight, quantize_grouped
from fxlab.nn.quantized import Int8DynamicLinear, Int8WeightOnlyLinear, quantize_weight
from fxlab.nn.scales import CLIP_RATIOS, quantize_symmetric


def _error(w: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    q = torch.round(w / torch.where(scale == 0, 1.0, scale)).clamp(qmin, qmax)
    return (q * scale - w).square().sum(dim=-1)


@pytest.mark.parametrize("qmin, qmax", [(-127, 127), (-8, 7)])
def test_least_error_among_the_candidates(qmin: int, qmax: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 48) * torch.rand(64, 1)  # rows of different ranges
    w[3, 5] = 9.0  # an outlier
    q, s = quantize_symmetric(w, qmin, qmax)
    assert s.shape == (64,) and q.shape == w.shape
    assert int(q.min()) >= qmin and int(q.max()) <= qmax and torch.equal(q, q.round())
    got = (q * s[:, None] - w).square().sum(dim=1)
    assert torch.equal(got, _error(w, s[:, None], qmin, qmax))  # the codes are those of the scale
    amax = w.abs().amax(dim=1, keepdim=True)
    plain = _error(w, amax * (1 / qmax), qmin, qmax)
    def at_most(err: torch.Tensor) -> bool:  # up to the float rounding of a candidate's scale
        return bool((got <= err * (1 + 1e-5) + 1e-9).all())

    assert at_most(plain)
    for r in CLIP_RATIOS:  # no candidate of the grid does better
        assert at_most(_error(w, amax * (r / qmax), qmin, qmax))
    if qmin == -qmax:
        assert bool((s >= 0).all())
    else:
        extreme = torch.where(w.amax(dim=1, keepdim=True) >= amax, amax, -amax)
        assert at_most(_error(w, extreme / qmin, qmin, qmax))
        assert bool((got < plain * 0.99).any())  # the extra step of [-8, 7] pays


def test_zero_rows_and_refused_ranges() -> None:
    q, s = quantize_symmetric(torch.zeros(2, 5), -8, 7)
    assert torch.equal(q, torch.zeros(2, 5)) and torch.equal(s, torch.zeros(2))
    with pytest.raises(ValueError, match="symmetric"):
        quantize_symmetric(torch.ones(1, 3), 0, 255)


def test_int8_weights_keep_their_code_range_and_improve() -> None:
    torch.manual_seed(1)
    w = torch.randn(128, 784) * 0.05
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and s.shape == (128,) and bool((s > 0).all())
    plain = w.abs().amax(dim=1) / 127
    plain_err = (torch.round(w / plain[:, None]).clamp(-127, 127) * plain[:, None] - w).square().sum()
    assert float((q.float() * s[:, None] - w).square().sum()) < float(plain_err)


@pytest.mark.parametrize("cls", [Int8DynamicLinear, Int8WeightOnlyLinear])
def test_int8_modules_store_the_searched_codes(cls: type) -> None:
    linear = torch.nn.Linear(40, 6)
    m = cls.from_float(linear)
    q, s = quantize_weight(linear.weight)
    assert torch.equal(m.weight, q) and torch.equal(m.weight_scale, s)


@pytest.mark.parametrize("cls", [Int4WeightOnlyLinear, Int8Int4Linear])
@pytest.mark.parametrize("group", [32, None])
def test_int4_modules_qat_and_conversion_agree(cls: type, group: int | None) -> None:
    linear = torch.nn.Linear(70, 9)
    m = cls.from_float(linear, group_size=group)
    q, s = quantize_grouped(linear.weight, group)
    assert torch.equal(m.weight_scale, s)
    assert torch.equal(fake_quantize_weight(linear.weight, "int4", group), m.dequantized_weight())
