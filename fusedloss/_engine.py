"""The fused engine, host side: a table of contents, and the dispatch every loss goes through.

| concern | file |
|---|---|
| the kernels (load, broadcast, mask, loss + gradient, reduction, rescale) | ``kernels/engine.py`` |
| where kernels run (CUDA, interpreter, forced compiled, reference), launch config, counters | ``_runtime.py`` |
| argument checks (before any kernel, never a host sync) | ``_validate.py`` |
| collapsing broadcast operands into few (size, stride) dims; division magics | ``_plan.py`` |
| launch plans cached per call signature; the cached-kernel launcher; forward; rescale | ``_launch.py`` |
| eager autograd: gradient in the forward, the no-pass backward | ``_autograd.py`` |
| torch.library custom op per loss (torch.compile) | ``_library.py`` |
| the loss registry (``register_loss``) | ``_registry.py`` |
| segment losses (Dice): per-segment sums, finalize, backward pass; their autograd and ops | ``_segments.py`` |

Design choices (see ../shared/notes/engine-design.md for the byte model):

* **Gradient in the forward**, already scaled by the weight and ``loss_weight / denominator``;
  the backward moves no memory when grad_output == 1 (``_autograd.py``).
* **weighted_mean** needs sum(w) before the gradient can be normalised. Chosen: one deterministic
  ``torch.sum`` over the weight in its own shape before the fused pass (1 B/element for a full
  bool mask, ~0 for a broadcast one; the broadcast multiplicity numel/weight.numel() is applied
  in the kernel). The alternative, writing an un-normalised gradient and folding 1/sum(w) into
  the backward, forces the 8 B/element rescale pass on every step.
* **Broadcast target gradients** are written full-size, then reduced over the broadcast
  dimensions with a deterministic torch sum (no atomics).
* **Eager vs compile.** Eager calls go through a ``torch.autograd.Function`` (lowest host
  overhead) and launch cached compiled kernels directly. Under ``torch.compile`` the same
  launcher runs inside a ``torch.library.custom_op`` per loss.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _validate
from ._autograd import DOUBLE_BACKWARD_MESSAGE, FusedLossFunction
from ._launch import Render, Rows, launch_forward, register_renderer
from ._registry import REGISTRY, LossSpec, register_loss
from ._runtime import INTERPRETED, LAUNCH_COUNTS, engine_config, uses_triton

# torch's C entry of autograd.Function.apply: Function.apply adds ~1.2 us of Python per call
# (default-argument binding and functorch's dead-wrapper unwrapping), which only matters while
# a functorch transform is active; then the full path is taken.
_apply = super(torch.autograd.Function, FusedLossFunction).apply
_functorch_active = torch._C._are_functorch_transforms_active

__all__ = ["apply_loss", "apply_rendered", "apply_rows", "Render", "Rows", "register_renderer",
           "FusedLossModule", "REGISTRY", "LossSpec", "register_loss",
           "engine_config", "uses_triton", "INTERPRETED", "LAUNCH_COUNTS",
           "DOUBLE_BACKWARD_MESSAGE"]


def apply_loss(spec: LossSpec, input, target, params: tuple, reduction: str, weight,
               avg_factor, loss_weight):
    """Validate, then run the fused kernels (or the reference where Triton cannot run)."""
    class_index, weight, af_value, af_tensor, lw_value, lw_tensor = _validate.check_call(
        input, target, weight, reduction, avg_factor, loss_weight,
        allow_class_index=spec.allow_class_index)
    if not uses_triton(input.device):
        kwargs = dict(zip(spec.param_names, params), **spec.reference_kwargs)
        return spec.reference(input, target, reduction=reduction, weight=weight,
                              avg_factor=avg_factor, loss_weight=loss_weight, **kwargs)
    grad_on = torch.is_grad_enabled()
    need_gx = grad_on and input.requires_grad
    need_gt = grad_on and not class_index and target.requires_grad
    if torch.compiler.is_compiling():
        loss, _, _, _ = spec.op(input, target, weight, af_tensor, lw_tensor,
                                [float(p) for p in params], reduction, af_value, lw_value,
                                need_gx, need_gt)
        return loss
    variant = spec.variant(params, class_index)
    if need_gx or need_gt:
        call = (spec, variant, weight, params, reduction, af_value, af_tensor, lw_value,
                lw_tensor, class_index, need_gx, need_gt, None)
        if _functorch_active():
            return FusedLossFunction.apply(call, input, target)
        return _apply(call, input, target)
    return launch_forward(spec, variant, input, target, weight, params, reduction, af_value,
                          af_tensor, lw_value, lw_tensor, class_index, False, False)[0]


LossSpec.__call__ = apply_loss  # spec(...) is apply_loss(spec, ...): no forwarding frame


def apply_rendered(spec: LossSpec, input, data, render_call, params: tuple, reduction: str,
                   weight, avg_factor, loss_weight, reference: Callable):
    """A loss whose target is rendered in the kernel from ``data`` (per-channel, e.g.
    keypoints; it gets no gradient): ``render_call`` = (Render, (r0..r3), aux tensor or None).
    The caller validated input, data and aux; ``reference()`` computes the loss in pure
    PyTorch where Triton cannot run."""
    weight = _validate.check_weight(weight, input)
    return _apply_special(spec, input, data, render_call, params, reduction, weight, avg_factor,
                          loss_weight, reference, False)


def apply_rows(spec: LossSpec, input, target, aux, params: tuple, reduction: str, weight,
               avg_factor, loss_weight, reference: Callable, nout: int = 1, saved: int = 0):
    """A row loss (one value per row of input.shape[-1] values, ``Rows``): ``target`` holds
    rows of target.shape[-1] values, or one value per row (shape input.shape[:-1]); ``aux``
    (optional, no gradient) rows of aux.shape[-1] values; ``weight`` one value per row,
    broadcastable to input.shape[:-1] or to input.shape[:-1] + (1,). Every operand broadcasts
    over rows, none over columns. The caller validated input, target and aux (shapes, dtypes);
    ``reference()`` computes the loss in pure PyTorch where Triton cannot run. ``nout`` 2 /
    ``saved``: a two-term loss (see ``Rows``) whose forward saves that many values per row."""
    rows_view = input.select(-1, 0)  # the row shape, for the checks (a view, no copy)
    if weight is not None and isinstance(weight, torch.Tensor) and weight.dim() == input.dim() \
            and weight.dim() > 0 and weight.shape[-1] == 1:
        weight = weight.squeeze(-1)  # per-row weights written (..., 1), as mmdet does
    weight = _validate.check_weight(weight, rows_view)
    t_cols = target.dim() == input.dim()
    operands = [input, target if t_cols else None, aux]
    if any(t is not None and t.dim() and t.stride(-1) != 1 for t in operands):
        input = input.contiguous() if input.stride(-1) != 1 else input  # rare: copy rows
        target = target.contiguous() if t_cols and target.stride(-1) != 1 else target
        aux = aux.contiguous() if aux is not None and aux.stride(-1) != 1 else aux
    rows = Rows(input.shape[-1], target.shape[-1] if t_cols else 1,
                aux.shape[-1] if aux is not None else 0, t_cols, nout, saved)
    need_gt = torch.is_grad_enabled() and target.requires_grad
    return _apply_special(spec, input, target, (rows, (), aux), params, reduction, weight,
                          avg_factor, loss_weight, reference, need_gt)


def _apply_special(spec, input, target, special_call, params, reduction, weight, avg_factor,
                   loss_weight, reference, need_gt):
    """The shared tail of apply_rendered / apply_rows: the scalar checks, then the fused
    kernels (eager autograd, or the custom op under torch.compile) or the reference."""
    if reduction not in _validate.REDUCTIONS:
        raise ValueError(f"reduction must be one of {_validate.REDUCTIONS}, got {reduction!r}")
    af_value = af_tensor = None
    if avg_factor is not None:
        if reduction != "mean":
            raise ValueError(f"avg_factor is only used with reduction='mean', got "
                             f"reduction={reduction!r}")
        af_value, af_tensor = _validate.check_scalar_arg("avg_factor", avg_factor, input,
                                                         positive=True)
    lw_value, lw_tensor = _validate.check_scalar_arg("loss_weight", loss_weight, input,
                                                     positive=False)
    if not uses_triton(input.device):
        return reference()
    need_gx = torch.is_grad_enabled() and input.requires_grad
    special, floats, aux = special_call
    if torch.compiler.is_compiling():
        tag = 0 if isinstance(special, Render) else 1
        loss, _, _, _ = spec.op(input, target, weight, af_tensor, lw_tensor,
                                [float(p) for p in params], reduction, af_value, lw_value,
                                need_gx, need_gt, aux, [float(f) for f in floats],
                                [tag, *(int(v) for v in special)])
        return loss
    variant = spec.variant(params, False)
    if need_gx or need_gt:
        call = (spec, variant, weight, params, reduction, af_value, af_tensor, lw_value,
                lw_tensor, False, need_gx, need_gt, special_call)
        if _functorch_active():
            return FusedLossFunction.apply(call, input, target)
        return _apply(call, input, target)
    return launch_forward(spec, variant, input, target, weight, params, reduction, af_value,
                          af_tensor, lw_value, lw_tensor, False, False, False, special_call)[0]


class FusedLossModule(torch.nn.Module):
    """Base of the nn.Module wrappers: hyper-parameters and loss_weight at construction (as
    mmdet), weight and avg_factor per call."""

    functional: Callable = None  # set by each subclass

    def __init__(self, reduction: str = "mean", *, loss_weight: float = 1.0, **params):
        super().__init__()
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.params = params

    def forward(self, input: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None, *, avg_factor=None) -> torch.Tensor:
        return type(self).functional(input, target, reduction=self.reduction, weight=weight,
                                     avg_factor=avg_factor, loss_weight=self.loss_weight,
                                     **self.params)

    def extra_repr(self) -> str:
        items = [f"reduction={self.reduction!r}"] + [f"{k}={v!r}" for k, v in self.params.items()]
        if self.loss_weight != 1.0:
            items.append(f"loss_weight={self.loss_weight!r}")
        return ", ".join(items)
