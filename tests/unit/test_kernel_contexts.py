"""Quantized modules across contexts: inference mode then no_grad (with kernels chosen by measurement),
the autograd path of the int8 Linear, export checked against the arithmetic it captures, and
unbatched conv inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxlab
from fxlab.nn import kernels
from fxlab.nn.kernels import choice
from fxlab.nn.quantized import HALF_OPS, Int8DynamicLinear, linear_int8_weight, quantize_rows
from fxlab.nn.quantized_conv import HALF_CONV_OPS


@pytest.fixture
def two_threads():
    """torch's pool of two threads at least: the thread-pool probe of the kernel choice runs only then."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def measuring(tmp_path, monkeypatch, two_threads):
    """Kernels chosen by measurement in a fresh user cache, nothing decided yet and the thread-pool
    probe not made yet (as in a new process); the probe itself runs, unpatched."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(choice, "_load_per_cpu", lambda: 0.25)
    monkeypatch.setattr(choice, "RECHECK_S", 1e9)  # a busy machine's provisional choice is kept
    monkeypatch.setattr(choice, "_PROBE", [])
    choice.reset(disk=True)
    with kernels.enabled(), choice.forced("auto"):
        yield tmp_path
    choice.reset(disk=True)


# --------------------------------------------------------------------------------------------
# inference mode first, then no_grad and grad


def test_the_thread_pool_probe_made_in_inference_mode_runs_outside_it(monkeypatch, two_threads) -> None:
    monkeypatch.setattr(choice, "_PROBE", [])
    with torch.inference_mode():
        choice._pool_contended()
    with torch.no_grad():
        choice._pool_contended()
    choice._pool_contended()


def _linear_model() -> nn.Module:
    return nn.Sequential(nn.Linear(200, 64), nn.ReLU(), nn.Linear(64, 10))


def _conv_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))


@pytest.mark.parametrize("build, pipeline, shape", [
    (_linear_model, "quantize-linear{mode=dynamic}", (200,)),
    (_linear_model, "quantize-linear{mode=bf16}", (200,)),
    (_conv_model, "quantize-conv{mode=dynamic}", (3, 10, 10)),
    (_conv_model, "quantize-conv{mode=bf16}", (3, 10, 10)),
])
def test_a_model_called_in_inference_mode_first_works_in_every_context_after(measuring, build, pipeline,
                                                                              shape) -> None:
    """The first call, under inference mode, measures and makes what the choice keeps; a later call
    outside it measures a new shape bucket with them, and every context gives the same numbers."""
    gm = fxlab.apply(build().eval(), pipeline)
    small, large = torch.randn(3, *shape), torch.randn(40, *shape)
    with torch.inference_mode():
        first_small = gm(small)
    with torch.no_grad():
        outside = gm(large)
        again_small = gm(small)
    with torch.inference_mode():
        inside = gm(large)
    with_grad = gm(large)  # grad enabled; nothing here requires grad, so the same kernels run
    assert any(d.source == "measured" for d in choice.decisions())
    torch.testing.assert_close(again_small, first_small, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(inside, outside, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(with_grad.detach(), outside, rtol=1e-6, atol=1e-6)


def test_a_packed_weight_made_in_inference_mode_is_a_plain_tensor() -> None:
    """A module's cached copy of its weight outlives the call that made it."""
    m = fxlab.nn.HalfLinear.from_float(nn.Linear(32, 16))
    with torch.inference_mode():
        packed = kernels.onednn_packed(m, m.weight, 4, lambda w: w.float() * 2)
    assert not packed.is_inference()
    with torch.no_grad():
        packed.mul_(1.0)  # as a later call outside inference mode may use it


# --------------------------------------------------------------------------------------------
# the int8 dynamic Linear on the autograd path


def _dynamic(relu: bool) -> Int8DynamicLinear:
    module = Int8DynamicLinear.from_float(nn.Linear(1024, 128), relu=relu)
    module.bias.requires_grad_(True)
    return module


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("rows", [1, 33])
def test_the_input_gradient_is_straight_through_the_rounding(relu, rows) -> None:
    """At every size the gradient is that of the weight-only arithmetic, ``(g · s_w) @ q(W)`` (masked
    by the fused ReLU's output): 1 row runs that arithmetic, 33 rows the int8 GEMM
    (``K·N·(rows + 6) ≥ CPU_MIN_WORK``), whose values equal the no_grad reference's."""
    module = _dynamic(relu)
    x = torch.randn(rows, 1024, requires_grad=True)
    assert module.uses_int8_matmul(x) == (rows == 33)
    y = module(x)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    with torch.no_grad(), choice.forced("torch"):
        reference = module(x)
    if rows == 33:
        assert torch.equal(y.detach(), reference)
    passed = upstream * (y.detach() > 0) if relu else upstream
    expected = (passed * module.weight_scale) @ module.weight.float()
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module.bias.grad, passed.sum(0))


def test_int8_and_weight_only_paths_give_the_same_input_gradient() -> None:
    module = _dynamic(relu=False)
    x = torch.randn(33, 1024)
    through_module = x.clone().requires_grad_(True)
    module(through_module).sum().backward()
    through_weight_only = x.clone().requires_grad_(True)
    linear_int8_weight(through_weight_only, module.weight, module.weight_scale, module.bias).sum().backward()
    torch.testing.assert_close(through_module.grad, through_weight_only.grad, rtol=1e-6, atol=1e-6)


def test_a_whole_quantized_model_trains_through_its_int8_path() -> None:
    gm = fxlab.apply(nn.Sequential(nn.Linear(1024, 128)).eval(), "quantize-linear{mode=dynamic}")
    x = torch.randn(33, 1024, requires_grad=True)
    gm(x).sum().backward()
    assert x.grad is not None and bool(x.grad.isfinite().all()) and bool(x.grad.abs().sum() > 0)


def test_quantize_rows_of_a_tensor_autograd_tracks() -> None:
    x = torch.randn(64, 1024)  # more than a grain: the path of in-place steps without autograd
    codes, scale = quantize_rows(x)
    tracked = x.clone().requires_grad_(True)
    tracked_codes, tracked_scale = quantize_rows(tracked)
    tracked_scale.sum().backward()
    assert torch.equal(tracked_codes, codes) and torch.equal(tracked_scale.detach(), scale)
    assert bool(tracked.grad.isfinite().all())


# --------------------------------------------------------------------------------------------
# export checked against the arithmetic it captures


def _rounding_activations(reference: choice.Candidate, dtype: torch.dtype) -> choice.Candidate:
    """A candidate computing as a native half kernel does on any CPU: the activations rounded to
    ``dtype`` first (within the mode's bound, not equal to the float32 reference)."""

    def run(module, x, *args):
        return reference.fn(module, x.to(dtype).float(), *args)

    return choice.Candidate("rounding-activations", run)


@pytest.mark.parametrize("pipeline, op", [
    ("quantize-conv{mode=bf16}", HALF_CONV_OPS[torch.bfloat16]),
    ("quantize-conv{mode=fp16}", HALF_CONV_OPS[torch.float16]),
    ("quantize-linear{mode=bf16}", HALF_OPS[torch.bfloat16]),
    ("quantize-linear{mode=fp16}", HALF_OPS[torch.float16]),
])
def test_export_of_a_half_model_whose_kernel_rounds_the_activations(tmp_path, monkeypatch, pipeline, op) -> None:
    dtype = torch.bfloat16 if "bf16" in pipeline else torch.float16
    monkeypatch.setattr(op, "candidates", [*op.candidates, _rounding_activations(op.reference, dtype)])
    gm = fxlab.apply(fxlab.models.build("lenet5").eval(), pipeline)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad(), choice.forced("rounding-activations"):
        eager = gm(x)
    assert any(d.op == op.name and d.chosen == "rounding-activations" for d in choice.decisions())
    with torch.no_grad():
        reference = gm(x)
    if dtype == torch.bfloat16:
        assert float((eager - reference).abs().max()) > 1e-4  # beyond the export check's tolerance
    with choice.forced("rounding-activations"):
        program = fxlab.export_program(gm, tmp_path / "model.pt2")
        if dtype == torch.bfloat16:
            pytest.importorskip("onnxruntime")
            fxlab.export_onnx(gm, tmp_path / "model.onnx")
        assert choice.policy() == "rounding-activations"  # restored after the check
    loaded = torch.export.load(program).module()
    torch.testing.assert_close(loaded(x), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HALF_CONV_OPS[torch.bfloat16].candidate("native").available(),
                    reason="no native bf16 convolution on this CPU")
def test_export_of_a_bf16_conv_model_on_the_native_kernel(tmp_path) -> None:
    gm = fxlab.apply(fxlab.models.build("lenet5").eval(), "quantize-conv{mode=bf16}")
    with kernels.enabled(), choice.forced("native"):
        fxlab.export_program(gm, tmp_path / "model.pt2")


# --------------------------------------------------------------------------------------------
# unbatched conv inputs


_CONVS = {"conv2d": (lambda: nn.Conv2d(3, 8, 3, padding=1), (3, 9, 7)), "conv1d": (lambda: nn.Conv1d(3, 8, 3), (3, 11))}


@pytest.mark.parametrize("mode", ["dynamic", "weight-only", "bf16", "fp16"])
@pytest.mark.parametrize("kind", sorted(_CONVS))
@pytest.mark.parametrize("policy", ["torch", "auto"])
def test_quantized_convs_take_unbatched_inputs_as_nn_conv_does(measuring, mode, kind, policy) -> None:
    make, shape = _CONVS[kind]
    conv = make().eval()
    gm = fxlab.apply(nn.Sequential(conv, nn.ReLU()).eval(), f"fuse-conv-relu,quantize-conv{{mode={mode}}}")
    x = torch.randn(*shape)
    with torch.no_grad(), choice.forced(policy):
        unbatched = gm(x)
        batched = gm(x.unsqueeze(0))
    assert unbatched.shape == conv(x).shape
    torch.testing.assert_close(unbatched, batched.squeeze(0), rtol=1e-6, atol=1e-6)


def test_a_conv_input_of_another_rank_is_refused_as_nn_conv_refuses_it() -> None:
    gm = fxlab.apply(nn.Sequential(nn.Conv2d(3, 8, 3)).eval(), "quantize-conv{mode=dynamic}")
    with pytest.raises(RuntimeError, match=r"Expected 3D \(unbatched\) or 4D \(batched\) input"):
        gm(torch.randn(3, 8))
