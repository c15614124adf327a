"""AdamW for tiny training steps: torch's fused kernel without the generic step's upkeep.

A quick-mode step (a head on cached features) takes ~2 ms on one core, and
`torch.optim.AdamW(fused=True).step()` spent ~0.2 ms of it around a ~0.02 ms kernel:
hooks, profiler markers, grouping the tensors by device and dtype, checks made again
every step. `LeanAdamW` is that optimizer - same hyper-parameters, same state, same
`state_dict`, same results to the last bit - with a `fast_step` that calls the fused kernel
directly when nothing needs the general path, and takes the general `step` otherwise
(AMSGrad, maximize, capturable or differentiable groups, tensor learning rates,
parameters off the CPU or not float32, or a torch without the kernel). `step` itself is
the general one: torch wraps every optimizer class's `step` in its hooks and profiler
markers, which alone cost several times the kernel."""

from __future__ import annotations

import torch

_KERNEL = getattr(torch, "_fused_adamw_", None)


class LeanAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW(..., fused=True)` with a cheaper `step` (see the module)."""

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, fused=True, **kwargs)
        params = [p for group in self.param_groups for p in group["params"]]
        self._kernel_fits = _KERNEL is not None and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)

    def fast_step(self) -> None:
        """One optimizer step, as `step()` takes it (see the module)."""
        if not (self._kernel_fits and all(map(self._plain_group, self.param_groups))):
            self.step()
            return
        with torch.no_grad():
            for group in self.param_groups:
                self._update(group)

    @staticmethod
    def _plain_group(group: dict) -> bool:
        """Whether the fused kernel alone does what the general step would for `group`."""
        flags = group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]
        return not flags and isinstance(group["lr"], float)

    def _update(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        states = [self._state_of(p) for p in params]
        steps = [state["step"] for state in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        _KERNEL(params, [p.grad for p in params], [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states], [], steps,
                amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                grad_scale=None, found_inf=None)

    def _state_of(self, param: torch.Tensor) -> dict:
        """The parameter's state, created as the fused general step creates it."""
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state
