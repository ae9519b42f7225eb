"""torch.library registration: one ``fusedloss::<name>`` custom op per loss, for torch.compile.

Under ``torch.compile`` the same launcher runs inside the op (dynamo traces it as one node,
``register_fake`` gives its output metadata); the op returns (loss, G_input, G_target) and its
registered backward returns ``grad_output * G`` out of place, which inductor can fuse into
whatever consumes the gradient. Gradients not asked for come back as empty tensors. A raw
in-place rescale cannot be traced, and never exposing G as a user-held output keeps ``x.grad``
from sharing its storage (shared notes, engine-design.md).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._autograd import check_first_order, out_of_place_grads
from ._launch import Render, Rows, launch_forward, output_meta


def _special(special: Optional[list]):
    """The Render / Rows descriptor an op call carries as ``[tag, *fields]`` (or None)."""
    if special is None:
        return None
    return (Render if special[0] == 0 else Rows)(*special[1:])


def _meta(input, target, weight, reduction, special):
    descriptor = _special(special)
    class_index = descriptor is None and not target.dtype.is_floating_point
    return output_meta(input, target, weight, reduction, class_index,
                       isinstance(descriptor, Render),
                       descriptor if isinstance(descriptor, Rows) else None)


def make_custom_op(spec):
    """The ``fusedloss::<spec.name>`` op running ``spec``'s fused forward."""

    def impl(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
             avg_factor: Optional[torch.Tensor], loss_weight: Optional[torch.Tensor],
             params: list[float], reduction: str, avg_factor_value: Optional[float],
             loss_weight_value: Optional[float], need_input_grad: bool,
             need_target_grad: bool, aux: Optional[torch.Tensor] = None,
             special_floats: Optional[list[float]] = None,
             special: Optional[list[int]] = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        descriptor = _special(special)
        class_index = descriptor is None and not target.dtype.is_floating_point
        params = tuple(params)
        special_call = None
        if descriptor is not None:
            special_call = (descriptor, tuple(special_floats), aux)
        loss, gx, gt, _plan, saved = launch_forward(
            spec, spec.variant_of(params, class_index), input, target, weight, params,
            reduction, avg_factor_value, avg_factor, loss_weight_value, loss_weight, class_index,
            need_input_grad, need_target_grad, special_call)
        def empty(t):  # distinct empty tensors: a custom op's outputs may not alias
            return t if t is not None else input.new_empty(0)
        return loss, empty(gx), empty(gt), empty(saved)

    op = torch.library.custom_op(f"fusedloss::{spec.name}", impl, mutates_args=())

    @op.register_fake
    def _fake(input, target, weight, avg_factor, loss_weight, params, reduction,
              avg_factor_value, loss_weight_value, need_input_grad, need_target_grad, aux=None,
              special_floats=None, special=None):
        meta = _meta(input, target, weight, reduction, special)
        loss = input.new_empty(meta.loss_shape, dtype=meta.loss_dtype)
        gx = input.new_empty(tuple(input.shape) if need_input_grad else (0,), dtype=meta.gx_dtype
                             if need_input_grad else input.dtype)
        if need_target_grad:
            gt = input.new_empty(meta.gt_shape, dtype=meta.gt_dtype)
        else:
            gt = input.new_empty((0,))
        rows = _special(special)
        saved = input.new_empty((0,))
        if isinstance(rows, Rows) and rows.nout > 1 and need_input_grad:
            saved = input.new_empty(tuple(input.shape[:-1]) + (rows.ks,), dtype=meta.acc_dtype)
        return loss, gx, gt, saved

    def setup_context(ctx, inputs, output):
        input, target, weight, _, _, _, reduction, _, _, need_gx, need_gt = inputs[:11]
        special = inputs[13] if len(inputs) > 13 else None
        _, gx, gt, saved = output
        rows = _special(special)
        ctx.two_outputs = isinstance(rows, Rows) and rows.nout > 1 and need_gx
        ctx.save_for_backward(gx if need_gx else None, gt if need_gt else None,
                              input if ctx.two_outputs else None,
                              saved if ctx.two_outputs else None)
        ctx.meta = _meta(input, target, weight, reduction, special)
        ctx.dtypes = (input.dtype, target.dtype)
        ctx.mark_non_differentiable(gx, gt, saved)

    def backward(ctx, go, _unused_gx, _unused_gt, _unused_saved):
        check_first_order()
        gx, gt, input, saved = ctx.saved_tensors
        if ctx.two_outputs:  # beta G + gamma dA for the pair of grad_outputs (out of place)
            first = spec.row_backward_torch(input.detach(), saved)
            a, b = go[..., 0:1], go[..., 1:2]
            if go.dim() == 1:
                a, b = go[0], go[1]
            return ((b * gx + (a - b) * first).to(ctx.dtypes[0]),) + (None,) * 13
        grad_x, grad_t = out_of_place_grads(go, gx, gt, *ctx.dtypes, ctx.meta)
        return (grad_x, grad_t) + (None,) * 12

    op.register_autograd(backward, setup_context=setup_context)
    return op
