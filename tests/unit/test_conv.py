"""Conv passes and site records: fuse-conv-relu, fold-batchnorm on convolutions, remove-dropout's
conv-net spellings; what each fusion/cleanup pass reports it rewrote or left alone; ``limit``;
inference contexts (``torch.inference_mode``, ``torch.no_grad``), float64/bfloat16 and meta models.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import fxlab
from conv_models import CONV_MODELS, conv_model
from seed_helpers import assert_close, randomize_batchnorm, seed_model, state
from fxlab.nn import ConvReLU, LinearReLU
from fxlab.passes import FuseConvReLU, fold_conv_bn, relu_input

CONV_PASSES = ["fuse-conv-relu", "fold-batchnorm", "remove-dropout"]
EXACT = ["fold-batchnorm", "remove-dropout", "fuse-conv-relu", "fuse-linear-relu", "fuse-consecutive-linear",
         "swap-max-pool", "dce", "cse"]
PIPELINE = "fold-batchnorm,remove-dropout,fuse-conv-relu,fuse-linear-relu,swap-max-pool,dce,cse"


def called(gm: fx.GraphModule, kind: type) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)]


# -- the conv passes on the test conv nets -------------------------------------------------------


@pytest.mark.parametrize("name", list(CONV_MODELS))
@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_conv_passes_golden_exact_idempotent_and_leave_caller_alone(pass_name: str, name: str, golden) -> None:
    model = conv_model(name)
    saved = state(model)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        gm = fxlab.apply(model, pass_name)
        assert_close(gm(x), expected)
    golden.check(f"{pass_name}/{name}", fxlab.format_graph(gm))
    again = fxlab.apply(gm, pass_name)
    assert fxlab.format_graph(again) == fxlab.format_graph(gm)
    assert fxlab.records(again)[-1].rewritten == []
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", list(CONV_MODELS))
def test_conv_pipeline_golden_and_numbers(name: str, golden) -> None:
    model = conv_model(name)
    gm = fxlab.apply(model, PIPELINE)
    golden.check(f"exact-pipeline/{name}", fxlab.format_graph(gm))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert_close(gm(x), model(x))


def test_lenet_sites_and_provenance() -> None:
    gm = fxlab.apply(conv_model("lenet"), "fold-batchnorm,remove-dropout,fuse-conv-relu")
    fold, drop, fuse = fxlab.records(gm)
    assert (fold.rewritten, fold.skipped) == (["bn1", "bn2"], [])
    assert (drop.rewritten, drop.skipped) == (["drop2d", "drop"], [])
    assert (fuse.rewritten, fuse.skipped) == (["conv1", "conv2"], [])
    nodes = {n.name: n for n in gm.graph.nodes}
    assert nodes["conv1"].meta["fxlab.from"] == ("conv1", "bn1", "relu1")
    assert nodes["conv2"].meta["fxlab.from"] == ("conv2", "bn2", "relu")
    assert called(gm, ConvReLU) == ["conv1", "conv2"] and called(gm, nn.BatchNorm2d) == []
    assert list(gm.state_dict())[:4] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]


def test_conv_whose_output_has_other_users_is_left_alone_with_the_reason() -> None:
    gm = fxlab.apply(conv_model("mnist-cnn"), "fuse-conv-relu")
    record = fxlab.records(gm)[-1]
    assert record.rewritten == ["conv2"]
    assert record.skipped == [("conv1", "output has 2 users; not fused")]
    gm = fxlab.apply(conv_model("conv1d-net"), "fold-batchnorm")
    record = fxlab.records(gm)[-1]
    assert record.rewritten == ["block_1"]
    assert record.skipped == [("bn", "follows a Conv1d with 2 users; not folded")]


RELU_SPELLINGS = {
    "nn.ReLU": lambda m, x: m.relu_module(x),
    "nn.ReLU(inplace)": lambda m, x: m.relu_inplace(x),
    "F.relu": lambda m, x: F.relu(x),
    "F.relu(inplace=True)": lambda m, x: F.relu(x, inplace=True),
    "F.relu_": lambda m, x: F.relu_(x),
    "torch.relu": lambda m, x: torch.relu(x),
    "torch.relu_": lambda m, x: torch.relu_(x),
    "Tensor.relu": lambda m, x: x.relu(),
    "Tensor.relu_": lambda m, x: x.relu_(),
}


def test_every_relu_spelling_after_a_conv_is_fused() -> None:
    class Spelled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in RELU_SPELLINGS)
            self.relu_module, self.relu_inplace = nn.ReLU(), nn.ReLU(inplace=True)

        def forward(self, x):
            for spell, conv in zip(RELU_SPELLINGS.values(), self.convs):
                x = spell(self, conv(x))
            return x

    model = Spelled().eval()
    gm = fxlab.apply(model, [FuseConvReLU()])
    assert [n.op for n in gm.graph.nodes] == ["placeholder"] + ["call_module"] * len(RELU_SPELLINGS) + ["output"]
    assert not any(relu_input(gm, n) for n in gm.graph.nodes)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_close(gm(x), model(x))


@pytest.mark.parametrize("conv", [
    nn.Conv1d(3, 4, 3), nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.Conv2d(4, 4, 3, groups=2, dilation=2),
    nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"), nn.Conv3d(3, 4, (1, 3, 3)),
])
def test_conv_relu_matches_and_trains_like_the_pair(conv: nn.Module) -> None:
    fused = ConvReLU.from_conv(conv)
    assert fused.weight is conv.weight and fused.bias is conv.bias
    assert list(fused.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, conv.in_channels, *([8] * (conv.weight.dim() - 2)), requires_grad=True)
    y, y_ref = fused(x), torch.relu(conv(x))
    assert torch.equal(y, y_ref)
    (g,) = torch.autograd.grad(y.sum(), x)
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x)
    assert torch.equal(g, g_ref)
    assert repr(fused).startswith(f"Conv{conv.weight.dim() - 2}dReLU({conv.in_channels}→{conv.out_channels}, k=")
    assert torch.equal(copy.deepcopy(fused)(x), y)


@pytest.mark.parametrize("conv, bn", [
    (nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)),
    (nn.Conv1d(3, 5, 3, bias=False), nn.BatchNorm1d(5)),
    (nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5, affine=False)),
    (nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)),
])
def test_fold_conv_bn_matches_torchs_fuse_conv_bn_eval(conv: nn.Module, bn: nn.Module) -> None:
    torch.manual_seed(3)
    model = randomize_batchnorm(nn.Sequential(conv, bn)).eval()
    folded = fold_conv_bn(conv, bn)
    reference = fuse_conv_bn_eval(copy.deepcopy(conv), copy.deepcopy(bn)) if bn.affine else None
    x = torch.randn(2, conv.in_channels, *([6] * (conv.weight.dim() - 2)))
    with torch.no_grad():
        assert_close(folded(x), model(x))
        if reference is not None:
            assert_close(folded.weight, reference.weight)
            assert_close(folded.bias, reference.bias)
    assert type(folded) is type(conv) and folded.weight is not conv.weight
    gm = fxlab.apply(model, "fold-batchnorm")
    assert fxlab.records(gm)[-1].rewritten == ["_1"]


def test_fold_refuses_conv_batchnorm_in_training_mode_and_mismatched_kinds_are_skipped() -> None:
    model = conv_model("lenet").train()
    with pytest.raises(fxlab.PassError, match=r"bn1 \(BatchNorm2d\) is in training mode.*model.eval\(\)"):
        fxlab.apply(model, "fold-batchnorm")
    odd = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm3d(4)).eval()
    gm = fxlab.apply(odd, "fold-batchnorm")
    assert fxlab.records(gm)[-1].rewritten == []
    assert fxlab.records(gm)[-1].skipped == [("_1", "BatchNorm3d does not normalise the channels of Conv2d _0; not folded")]


# -- sites and limit on the seed models ------------------------------------------------------------


def test_sites_of_fuse_linear_relu_and_fold_batchnorm_on_seed_models() -> None:
    gm = fxlab.apply(seed_model("mymodule"), "fuse-linear-relu")
    assert (fxlab.records(gm)[-1].rewritten, fxlab.records(gm)[-1].skipped) == (["layer1", "layer2"], [])
    gm = fxlab.apply(seed_model("simplenn"), "fold-batchnorm,fuse-linear-relu")
    fold, fuse = fxlab.records(gm)
    assert (fold.rewritten, fold.skipped) == (["bn1", "bn2"], [])
    assert (fuse.rewritten, fuse.skipped) == (["fc1", "fc2"], [])
    gm = fxlab.apply(seed_model("simplenn"), "fuse-linear-relu")  # ReLUs follow BatchNorms: nothing to fuse
    assert (fxlab.records(gm)[-1].rewritten, fxlab.records(gm)[-1].skipped) == ([], [])

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.bn1 = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            h = self.fc(x)
            return torch.relu(h) + self.bn1(h)

    gm = fxlab.apply(Shared().eval(), "fuse-linear-relu,fold-batchnorm")
    fuse, fold = fxlab.records(gm)
    assert fuse.skipped == [("fc", "output has 2 users; not fused")]
    assert fold.skipped == [("bn1", "follows a Linear with 2 users; not folded")]


def test_limit_one_fuses_only_the_first_site() -> None:
    model = seed_model("mymodule")
    gm = fxlab.apply(model, "fuse-linear-relu", limit=1)
    record = fxlab.records(gm)[-1]
    assert record.rewritten == ["layer1"]
    assert record.skipped == [("layer2", "beyond limit=1")]
    assert called(gm, LinearReLU) == ["layer1"]
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert_close(gm(x), model(x))
    for text, first in [("fold-batchnorm", "bn1"), ("fold-batchnorm,fuse-conv-relu", "conv1"), ("remove-dropout", "drop2d")]:
        gm = fxlab.apply(conv_model("lenet"), text, limit=1)
        assert fxlab.records(gm)[-1].rewritten == [first], text
    gm = fxlab.apply(conv_model("lenet"), PIPELINE, limit=0)
    assert fxlab.format_graph(gm) == fxlab.format_graph(fxlab.trace(conv_model("lenet")))


# -- inference contexts, dtypes, meta --------------------------------------------------------------


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad])
@pytest.mark.parametrize("name", ["lenet", "mymodule", "simplenn"])
def test_apply_and_run_under_inference_contexts(context, name: str) -> None:
    model = conv_model(name) if name in CONV_MODELS else seed_model(name)
    x = torch.randn(1100, 1, 28, 28)  # over LinearReLU's packed-path threshold
    with torch.no_grad():
        expected = model(x)
    with context():
        gm = fxlab.apply(model, PIPELINE)
        assert_close(gm(x), expected)
        assert_close(gm(x[:3]), expected[:3])
    with context():  # weights made in inference mode (folded there), run outside it too
        gm = fxlab.apply(model, "fold-batchnorm")
    gm = fxlab.apply(gm, "fuse-linear-relu,fuse-conv-relu")
    with context():
        assert_close(gm(x), expected)
    with torch.no_grad():
        assert_close(gm(x), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["lenet", "simplenn"])
def test_exact_passes_keep_the_dtype(dtype: torch.dtype, name: str) -> None:
    model = (conv_model(name) if name in CONV_MODELS else seed_model(name)).to(dtype)
    x = torch.randn(8, 1, 28, 28, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    for text in EXACT:
        gm = fxlab.apply(model, text)
        assert {p.dtype for p in gm.parameters()} == {dtype}, text
        with torch.no_grad():
            y = gm(x)
        assert y.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 3e-2
        scale = float(expected.abs().max())
        torch.testing.assert_close(y, expected, rtol=tol, atol=tol * scale * 10)


@pytest.mark.parametrize("name", ["lenet", "conv1d-net", "mymodule", "simplenn"])
def test_meta_models(name: str) -> None:
    model = (conv_model(name) if name in CONV_MODELS else seed_model(name)).to("meta")
    for text in ["fuse-linear-relu", "remove-dropout", "dce", "cse", "fuse-conv-relu", "swap-max-pool"]:
        gm = fxlab.apply(model, text)
        assert all(p.is_meta for p in gm.parameters())
        assert gm(torch.randn(2, 1, 28, 28, device="meta")).shape == (2, 10)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        with pytest.raises(fxlab.PassError, match="meta device"):
            fxlab.apply(model, "fold-batchnorm")
