"""swap-max-pool and MeasuredMaxPool2d: every kernel gives torch's max-pool exactly; the pass swaps
module and functional pools, leaves the ones the views kernel cannot compute (with the reason),
keeps state-dict keys, and the result saves, loads and exports."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxlab
from fxlab.models import build
from fxlab.nn import MeasuredMaxPool2d, views_fit
from fxlab.nn.kernels import choice
from fxlab.passes import SwapMaxPool

GEOMETRIES = [
    {"kernel_size": 2},
    {"kernel_size": 3, "stride": 2},
    {"kernel_size": 3, "stride": 1},
    {"kernel_size": (2, 3), "stride": (1, 2)},
    {"kernel_size": 2, "stride": 1, "dilation": 2},
    {"kernel_size": 1},
]


@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()))
def test_every_max_pool_candidate_is_torchs_max_pool_exactly(geometry: dict, layout: str) -> None:
    """Odd sizes (a remainder the window never reaches), NaN and ±inf included: the same values in
    the same places; forced, the module returns that candidate's output."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 13, 11)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    if layout == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    module = MeasuredMaxPool2d(**geometry)
    expected = F.max_pool2d(x, **geometry)
    op = choice.ops()["max-pool"]
    assert [c.name for c in op.candidates] == ["torch", "views"] and op.exact
    with torch.no_grad():
        for c in op.candidates:
            out = c.fn(module, x)
            assert out.shape == expected.shape and torch.equal(out.isnan(), expected.isnan()), c.name
            assert torch.equal(out.nan_to_num(), expected.nan_to_num()), c.name
            with choice.forced(c.name):
                assert torch.equal(module(x).nan_to_num(), out.nan_to_num())
        finite = torch.randn(3, 5, 13, 11)
        assert choice.mismatch(op, op.candidate("views").fn(module, finite), F.max_pool2d(finite, **geometry),
                               module, finite) is None
        wrong = F.max_pool2d(finite, **geometry).clone()
        wrong.view(-1)[3] += 1
        assert choice.mismatch(op, wrong, F.max_pool2d(finite, **geometry), module, finite) is not None


def test_measured_pool_is_a_max_pool_in_autograd_and_refuses_what_it_cannot_compute() -> None:
    pool = MeasuredMaxPool2d(2)
    assert isinstance(pool, nn.MaxPool2d) and repr(pool) == "MeasuredMaxPool2d(k=2, stride=2)"
    assert repr(MeasuredMaxPool2d((2, 3), stride=1, dilation=2)) == "MeasuredMaxPool2d(k=2×3, stride=1, dilation=2)"
    assert not list(pool.state_dict())
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    pool(x).sum().backward()  # autograd: torch's max-pool, the same gradient
    F.max_pool2d(y, 2).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, y.grad)
    assert torch.equal(pool(torch.ones(3, 4, 4)), torch.ones(3, 2, 2))  # unbatched: torch's max-pool
    for settings, why in [({"padding": 1}, "padding=1"), ({"ceil_mode": True}, "ceil_mode=True"),
                          ({"return_indices": True}, "return_indices=True")]:
        assert views_fit(nn.MaxPool2d(3, 2, **settings)) == why
        with pytest.raises(ValueError, match=why):
            MeasuredMaxPool2d(3, 2, **settings)
    with pytest.raises(ValueError, match="smaller than"):
        choice.ops()["max-pool"].candidate("views").fn(MeasuredMaxPool2d(5), torch.randn(1, 1, 3, 3))


class Pools(nn.Module):
    """Every spelling the pass meets: a shared pool module, F.max_pool2d positional and by keyword,
    and pools it must leave alone (padding, ceil_mode, return_indices, a size computed in the graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.padded = nn.MaxPool2d(3, 1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x))  # 28 -> 14
        x = self.padded(x)
        x = F.max_pool2d(x, 3, 1)  # 14 -> 12
        x = F.max_pool2d(x, kernel_size=2, ceil_mode=True)  # 12 -> 6
        x = self.pool(x)  # 6 -> 3
        y, _ = F.max_pool2d(x, 1, return_indices=True)
        z = F.max_pool2d(x, x.shape[-1] - 2)  # the size is computed in the graph: 3 - 2 = 1
        return torch.flatten(y + z, 1)


def test_swap_max_pool_swaps_what_it_can_and_records_what_it_left() -> None:
    torch.manual_seed(1)
    model = Pools().eval()
    x = torch.randn(4, 1, 28, 28)
    keys = list(model.state_dict())
    gm = fxlab.apply(model, [SwapMaxPool()])
    record = fxlab.records(gm)[-1]
    assert record.rewritten == ["pool", "max_pool2d", "pool_1"]
    skipped = dict(record.skipped)
    assert "padding=1" in skipped["padded"] and "ceil_mode=True" in skipped["max_pool2d_1"]
    assert "return_indices=True" in skipped["max_pool2d_with_indices"]
    assert skipped["max_pool2d_2"] == "a setting is computed in the graph"
    swapped = [type(m).__name__ for m in gm.modules() if isinstance(m, nn.MaxPool2d)]
    assert swapped.count("MeasuredMaxPool2d") == 3 and swapped.count("MaxPool2d") == 1  # padded stays
    assert list(gm.state_dict()) == keys and type(model.pool) is nn.MaxPool2d  # the caller's model untouched
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert fxlab.records(fxlab.apply(gm, [SwapMaxPool()]))[-1].rewritten == []  # twice = once
    limited = fxlab.apply(model, [SwapMaxPool()], limit=1)
    assert fxlab.records(limited)[-1].rewritten == ["pool"]
    assert ("max_pool2d", "beyond limit=1") in fxlab.records(limited)[-1].skipped


def test_swapped_cnn_saves_loads_and_exports(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    model = build("lenet5").eval()
    gm = fxlab.apply(model, "fold-batchnorm,fuse-conv-relu,swap-max-pool")
    assert [n for n, m in gm.named_modules() if isinstance(m, MeasuredMaxPool2d)] == ["max_pool2d", "max_pool2d_1"]
    x = torch.randn(8, 1, 28, 28)
    loaded = fxlab.load(fxlab.save(gm, tmp_path / "lenet5.pth"))
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    fxlab.export_onnx(gm, tmp_path / "lenet5.onnx", example_input=x)  # checked against PyTorch by onnxruntime
    exported = torch.export.export(gm, (x,))
    with torch.no_grad():
        assert torch.equal(exported.module()(x), gm(x))
