"""The optimizer ``fit`` trains with: torch's Adam, fused, and its step without the per-call bookkeeping."""

from __future__ import annotations

import torch
from torch.optim import adam as adam_module
from torch.optim import optimizer as optimizer_module

__all__ = ["AdamSteps", "adam"]


def adam(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with its fused kernel (one kernel for every parameter's update; CPU and CUDA since torch
    2.4), else the multi-tensor ``foreach`` path: the same update rule, fewer per-step kernel calls."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


class AdamSteps:
    """``optimizer.step()`` for a ``torch.optim.Adam``, at a fraction of its per-call cost.

    ``Adam.step`` rebuilds its argument lists from the parameter group on every call (``_init_group``)
    and runs hooks and checks around the update; at batch 64 on an MNIST MLP that is ~0.1 ms of a
    ~1 ms step. After the first real step (which creates the state), this calls the function
    ``Adam.step`` itself calls, ``torch.optim.adam.adam``, with the same arguments, on the
    optimizer's own state tensors (for the fused kernel and parameters on one device in one dtype,
    the two ops that function ends in: adding 1 to the step counts, which it keeps as views of one
    tensor to do that in one op, and ``_fused_adam_``): the same kernel on the same numbers, so the
    same update bit for bit. Whenever anything differs from that simple case (several parameter groups, a parameter
    without a gradient, step hooks, a grad scaler) it calls ``optimizer.step()``.

    >>> p = torch.nn.Parameter(torch.ones(2))
    >>> opt = adam([p], lr=0.1, weight_decay=0.0)
    >>> steps = AdamSteps(opt)
    >>> for _ in range(2):
    ...     p.grad = torch.ones(2)
    ...     steps()
    >>> p.detach().tolist(), int(opt.state[p]["step"])
    ([0.800000011920929, 0.800000011920929], 2)
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._state: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None
        self._one_fused_group = False
        self._step_counts: torch.Tensor | None = None

    def _share_step_counts(self) -> None:
        """Make the parameters' step counts views of one tensor (the state keeps one 0-d tensor per
        parameter, as ``Adam`` reads and saves it), so that a step counts them all in one op:
        ``_foreach_add_`` on CPU adds to each 0-d tensor on its own, a fifth of the update's cost
        at batch 64 on an MNIST MLP."""
        assert self._state is not None
        params, exp_avgs, exp_avg_sqs, counts = self._state
        if len({(c.dtype, c.device) for c in counts}) != 1 or any(c.dim() for c in counts):
            return
        self._step_counts = torch.stack(counts)
        views = list(self._step_counts.unbind())
        for p, view in zip(params, views):
            self.optimizer.state[p]["step"] = view
        self._state = (params, exp_avgs, exp_avg_sqs, views)

    def _simple(self) -> bool:
        opt = self.optimizer
        if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
            return False
        group = opt.param_groups[0]
        return not (
            group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]
            or group.get("decoupled_weight_decay", False)
            or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
            or optimizer_module._global_optimizer_pre_hooks or optimizer_module._global_optimizer_post_hooks
            or getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None
        )

    def __call__(self) -> None:
        opt = self.optimizer
        if self._state is None:
            opt.step()
            if self._simple():
                params = list(opt.param_groups[0]["params"])
                states = [opt.state.get(p) for p in params]
                if all(s and {"exp_avg", "exp_avg_sq", "step"} <= s.keys() for s in states) \
                        and not any(p.is_complex() for p in params):
                    self._state = (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                   [s["step"] for s in states])
                    group = opt.param_groups[0]
                    self._one_fused_group = bool(
                        group["fused"] and hasattr(torch, "_fused_adam_") and not isinstance(group["lr"], torch.Tensor)
                        and len({(p.device, p.dtype) for p in params}) == 1
                        and all(s.device == params[0].device for s in self._state[3])
                    )
                    if self._one_fused_group:
                        self._share_step_counts()
            return
        params, exp_avgs, exp_avg_sqs, steps = self._state
        grads = [p.grad for p in params]
        state = opt.state
        if any(g is None or g.is_sparse for g in grads) or not self._simple() \
                or any(state.get(p, {}).get("step") is not s for p, s in zip(params, steps)):
            self._state = self._step_counts = None
            opt.step()
            return
        group = opt.param_groups[0]
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            if self._one_fused_group:  # what torch.optim.adam._fused_adam does for one device and dtype
                if self._step_counts is not None:
                    self._step_counts.add_(1)  # every parameter's count, in one op
                else:
                    torch._foreach_add_(steps, 1)
                torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                                   beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                                   maximize=False, grad_scale=None, found_inf=None)
                return
            adam_module.adam(
                params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, has_complex=False, beta1=beta1,
                beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                foreach=group["foreach"], capturable=False, differentiable=False, fused=group["fused"],
                grad_scale=None, found_inf=None,
            )
