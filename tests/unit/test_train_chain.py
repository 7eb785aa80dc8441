"""The hand-written training step of Linear/ReLU chains and the cheaper Adam step: the same numbers
as autograd and ``Adam.step``, bit for bit, so that a model trains to the same weights."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxlab.data.mnist import MNIST, Split
from fxlab.models import build
from fxlab.train import fit
from fxlab.train import loop
from fxlab.train.chain import LinearChain
from fxlab.train.optim import AdamSteps, adam


def _autograd_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: float) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, label_smoothing=smoothing).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["mymodule", "neuralnetwork", "linear-relu-stack"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chain_gradients_are_autograds_bit_for_bit(name: str, smoothing: float) -> None:
    torch.manual_seed(0)
    model = build(name).train()
    chain = LinearChain.of(model)
    assert chain is not None
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    expected = _autograd_grads(model, x, y, smoothing)
    expected_loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
    model.zero_grad(set_to_none=True)
    logits, loss = chain.step(x, y, smoothing)
    assert torch.equal(logits, model(x).detach())
    assert torch.equal(loss, expected_loss.detach())
    for got, want in zip([p.grad for p in model.parameters()], expected):
        assert torch.equal(got, want)
    model.zero_grad(set_to_none=True)
    logits_only, no_loss = chain.step(x, y, smoothing, loss=False)  # the loss left out, nothing else
    assert no_loss is None and torch.equal(logits_only, logits)
    for got, want in zip([p.grad for p in model.parameters()], expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["simplenn", "mymnist"])
def test_other_models_train_through_autograd(name: str) -> None:
    assert LinearChain.of(build(name).train()) is None  # BatchNorm and Dropout; GELU


def test_what_is_not_a_chain() -> None:
    relu_last = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    dropout = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    frozen = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    frozen[0].weight.requires_grad_(False)
    hooked = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    hooked[2].register_forward_hook(lambda *a: None)
    residual = _Residual()
    twice = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    twice.append(twice[0])  # the same Linear called twice
    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    tied[2].weight = tied[0].weight
    for model in (relu_last, dropout, frozen, hooked, residual, twice, tied):
        assert LinearChain.of(model) is None, model
    assert LinearChain.of(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.0), nn.Identity(), nn.Linear(3, 2))) is not None


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)) + x)


def test_adam_steps_are_adam_step_bit_for_bit() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = adam(list(a.parameters()), 1e-2, 1e-4), adam(list(b.parameters()), 1e-2, 1e-4)
    steps = AdamSteps(opt_b)
    for i in range(5):
        grads = [torch.randn_like(p) for p in a.parameters()]
        for p, q, g in zip(a.parameters(), b.parameters(), grads):
            p.grad, q.grad = g.clone(), g.clone()
        for opt in (opt_a, opt_b):
            opt.param_groups[0]["lr"] = 1e-2 / (i + 1)
        opt_a.step()
        steps()
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert steps._state is not None  # the cheaper path ran
    assert opt_a.state_dict()["state"][0]["step"] == opt_b.state_dict()["state"][0]["step"] == 5


def test_adam_step_counts_are_one_tensor_that_saves_and_loads_like_adams() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = adam(list(a.parameters()), 1e-2, 0.0), adam(list(b.parameters()), 1e-2, 0.0)
    steps = AdamSteps(opt_b)
    for _ in range(3):
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = q.grad = torch.randn_like(p)
        opt_a.step()
        steps()
    counts = [opt_b.state[p]["step"] for p in b.parameters()]
    assert steps._step_counts is not None
    assert all(c.dim() == 0 and c.untyped_storage().data_ptr() == steps._step_counts.untyped_storage().data_ptr()
               for c in counts)  # views of one tensor
    saved, reference = opt_b.state_dict(), opt_a.state_dict()
    for i in range(2):
        assert saved["state"][i]["step"] == reference["state"][i]["step"] == 3
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    resumed = adam(list(b.parameters()), 1e-2, 0.0)  # a checkpoint resumed: Adam.step on the loaded counts
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for p, q in zip(a.parameters(), b.parameters()):
        p.grad = q.grad = torch.randn_like(p)
    opt_a.step()
    resumed.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(int(resumed.state[p]["step"]) == 4 for p in b.parameters())
    opt_b.step()  # torch's own step on the shared counts: each parameter's count once
    assert [int(c) for c in counts] == [4, 4]
    assert [int(c) for c in steps._step_counts] == [4, 4]


@pytest.mark.parametrize("max_steps", [None, 17])
def test_epoch_figures_are_the_steps_loss_and_hits(monkeypatch: pytest.MonkeyPatch, max_steps: int | None) -> None:
    """The epoch's loss and accuracy, counted at its end from the kept logits, are the mean of the
    losses and the hits of its steps as autograd's loop computes them step by step (also when a
    step budget ends the second epoch early)."""
    data = _tiny_mnist()
    torch.manual_seed(0)
    fast = build("mymodule")
    slow = build("mymodule")
    slow.load_state_dict(fast.state_dict())
    options = {"epochs": 2, "batch_size": 48, "seed": 0, "progress": False, "label_smoothing": 0.1,
               "max_steps": max_steps}
    fast_history = fit(fast, data, **options)
    seen: list[tuple[float, int, int]] = []
    cross_entropy = F.cross_entropy

    def recording_cross_entropy(out: torch.Tensor, y: torch.Tensor, **kwargs: object) -> torch.Tensor:
        loss = cross_entropy(out, y, **kwargs)
        if out.requires_grad:  # a training step's loss (not the epoch's sum at its end)
            seen.append((float(loss.detach()), int((out.argmax(1) == y).sum()), int(y.shape[0])))
        return loss

    monkeypatch.setattr(loop.LinearChain, "of", classmethod(lambda cls, model: None))
    monkeypatch.setattr(loop.F, "cross_entropy", recording_cross_entropy)
    slow_history = fit(slow, data, evaluate_each_epoch=False, **options)
    per_epoch = 14  # ⌈640 / 48⌉
    assert len(seen) == (max_steps or 2 * per_epoch)
    for epoch, part in enumerate((seen[:per_epoch], seen[per_epoch:])):
        rows = sum(r for _, _, r in part)
        assert rows == (640 if max_steps is None or epoch == 0 else 3 * 48)
        loss = sum(value * r for value, _, r in part) / rows
        accuracy = 100.0 * sum(hits for _, hits, _ in part) / rows
        for history in (fast_history, slow_history):
            assert history.epochs[epoch]["train_loss"] == pytest.approx(loss, rel=1e-6)
            assert history.epochs[epoch]["train_accuracy"] == accuracy


def test_adam_steps_fall_back_on_a_step_hook() -> None:
    p = nn.Parameter(torch.ones(2))
    opt = adam([p], 0.1, 0.0)
    calls = []
    steps = AdamSteps(opt)
    p.grad = torch.ones(2)
    steps()
    opt.register_step_post_hook(lambda *a: calls.append(1))
    p.grad = torch.ones(2)
    steps()
    assert calls == [1]


def _tiny_mnist() -> MNIST:
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (640, 28, 28), dtype=torch.uint8, generator=gen),
                  torch.randint(0, 10, (640,), generator=gen))
    return MNIST(train=split, test=split, root=Path("."), device=torch.device("cpu"))


def test_fit_trains_to_the_same_weights_as_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tiny_mnist()
    torch.manual_seed(0)
    fast = build("mymodule")
    slow = build("mymodule")
    slow.load_state_dict(fast.state_dict())
    fit(fast, data, epochs=2, batch_size=64, seed=0, progress=False)
    monkeypatch.setattr(loop.LinearChain, "of", classmethod(lambda cls, model: None))
    monkeypatch.setattr(loop.AdamSteps, "__call__", lambda self: self.optimizer.step())
    fit(slow, data, epochs=2, batch_size=64, seed=0, progress=False)
    for p, q in zip(fast.parameters(), slow.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("rows", [1, 32, 60, 256])
def test_loss_and_its_gradient_are_cross_entropys(smoothing: float, rows: int) -> None:
    from fxlab.train.chain import cross_entropy_and_grad

    gen = torch.Generator().manual_seed(rows)
    z = (torch.randn(rows, 10, generator=gen) * 4).requires_grad_()
    y = torch.randint(0, 10, (rows,), generator=gen)
    reference = F.cross_entropy(z, y, label_smoothing=smoothing)
    reference.backward()
    loss, g = cross_entropy_and_grad(z.detach(), y, smoothing)
    assert torch.equal(loss, reference.detach())
    assert torch.equal(g, z.grad)
