"""Eager autograd: the forward writes the gradient, the backward (usually) moves no memory.

When a scalar reduction is asked for with grad enabled, the forward writes dL/dinput (and
dL/dtarget) already multiplied by the weight and by ``scale = loss_weight / denominator``. Its
backward then costs no pass over memory when grad_output == 1 (the usual case once
``loss_weight`` is folded in):

* **First call** of a ctx: ``rescale_kernel`` in place, which reads grad_output on the device and
  leaves at once when it is 1, else rescales. It returns the saved buffer itself
  (``save_for_backward``), so ``x.grad`` takes it without a copy, and keeps a reference to that
  grad_output (the factor the buffer now stands for).
* **Later calls** of a retained graph write ``G * go / go_first`` into a fresh buffer, so no
  tensor handed out earlier ever changes. Known limit: a retained graph whose *first*
  grad_output is exactly 0 or non-finite cannot be rescaled by a later backward (the buffer was
  overwritten): that later gradient is NaN.
* **fp16**: a gradient normalised by 1/numel underflows fp16, and a GradScaler multiplies it by
  up to 2^24 afterwards, so for fp16 tensors the forward keeps the gradient in fp32 and the
  backward always writes ``grad_output * G`` rounded once into fp16 (+6 B/element). bf16 has
  fp32's range: it keeps the no-pass backward.
* ``"none"``: ``grad_output * G`` out of place (grad_output is a full tensor).
* Double backward raises (``create_graph=True``): the gradient is not built from
  differentiable torch operations.
"""
from __future__ import annotations

import torch

from . import _runtime as rt
from ._launch import Meta, launch_forward, rescale, row_backward

DOUBLE_BACKWARD_MESSAGE = (
    "fusedloss losses do not support double backward (create_graph=True): the gradient is "
    "computed by a fused kernel, not by differentiable torch operations")


def check_first_order() -> None:
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


def out_of_place_grads(go, gx, gt, x_dtype, t_dtype, meta: Meta):
    """grad_output * G: the "none" backward, and every backward under torch.compile."""
    grad_x = grad_t = None
    if gx is not None:  # a row loss's "none" output has one value per row: go[..., None]
        grad_x = ((go if go.dim() >= gx.dim() else go.unsqueeze(-1)) * gx).to(x_dtype)
    if gt is not None:
        grad_t = (go if go.dim() >= gt.dim() else go.unsqueeze(-1)) * gt
        if tuple(grad_t.shape) != meta.target_shape:  # "none" with a broadcast target
            grad_t = grad_t.sum(dim=meta.target_reduce_dims, keepdim=True).reshape(meta.target_shape)
        grad_t = grad_t.to(t_dtype)
    return grad_x, grad_t


def fused_scalar_grads(state, go, buffers, dtypes, bases):
    """The no-pass backward of a scalar reduction (eager). ``state`` is the autograd ctx;
    ``bases``: each buffer's cached rescale key base (``ForwardPlan.rescale_x/_t``)."""
    first = state.go_first is None
    grads = []
    for g, dtype, base in zip(buffers, dtypes, bases):
        if g is None:
            grads.append(None)
        elif g.dtype != dtype:  # fp16 gradient kept in fp32: never mutated, always rescaled
            out = rt.alloc(g.shape, dtype, g.device)
            rescale(g, out, go, base=base)
            grads.append(out)
        elif first:
            rescale(g, g, go, skip_if_equal=True, base=base)
            grads.append(g)
        else:
            out = rt.alloc(g.shape, g.dtype, g.device)
            rescale(g, out, go, ref=state.go_first, base=base)
            grads.append(out)
    if first:
        state.go_first = go
    return grads


def two_output_grads(state, go):
    """dL/dinput of a two-output row loss (YOLO's IoU and DFL terms) for grad_outputs go: the
    forward wrote G for go = (1, 1); ``fused_row_loss_bwd_kernel`` turns it into the gradient
    for go on the device (in place the first time, a fresh buffer for a retained graph's later
    backward). For "none" (go per row) the same combination in torch ops."""
    gx, _gt, x, saved = state.saved_tensors
    plan = state.plan
    if gx is None:
        return None
    if plan.reduction == "none":
        first = state.spec.row_backward_torch(x.detach(), saved)
        a, b = go[..., 0:1], go[..., 1:2]
        return (b * gx + (a - b) * first).to(plan.dtypes[0])
    if state.go_first is None:
        # G is rewritten in place; a spare buffer (written only if go[1] == 0, decided on the
        # device) keeps what a retained graph's later backward needs
        state.spare = rt.alloc(gx.shape, gx.dtype, gx.device)
        row_backward(state.spec, plan, x, gx, gx, saved, go, None, state.spare)
        state.go_first = go
        return gx
    out = rt.alloc(gx.shape, gx.dtype, gx.device)
    row_backward(state.spec, plan, x, gx, out, saved, go, state.go_first, state.spare)
    return out


class FusedLossFunction(torch.autograd.Function):
    """Eager autograd for every registered loss (the custom op is used under torch.compile).

    ``call`` packs the non-tensor arguments of :func:`launch_forward` (fewer ``apply``
    arguments: less host time per call)."""

    @staticmethod
    def forward(ctx, call, input, target):
        spec, variant, weight, params, reduction, af_value, af_tensor, lw_value, lw_tensor, \
            class_index, need_gx, need_gt, special_call = call
        loss, gx, gt, plan, saved = launch_forward(spec, variant, input, target, weight, params,
                                                   reduction, af_value, af_tensor, lw_value,
                                                   lw_tensor, class_index, need_gx, need_gt,
                                                   special_call)
        if plan.input_grad_only:
            ctx.save_for_backward(gx)
        elif plan.nout > 1:
            ctx.save_for_backward(gx, gt, input, saved)
            ctx.spec = spec
        else:
            ctx.save_for_backward(gx, gt)
        ctx.plan = plan
        ctx.go_first = None
        return loss

    @staticmethod
    def backward(ctx, go):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)
        plan = ctx.plan
        if plan.input_grad_only and ctx.go_first is None:
            # the common case (a scalar loss, dL/dinput only, first backward), kept short for
            # host time: rescale in place only if go != 1 (on the device) and hand G over
            gx, = ctx.saved_tensors
            rescale(gx, gx, go, skip_if_equal=True, base=plan.rescale_x)
            ctx.go_first = go
            return None, gx, None
        if plan.nout > 1:
            return None, two_output_grads(ctx, go), None
        if plan.input_grad_only:
            gx, = ctx.saved_tensors
            gt = None
        else:
            gx, gt = ctx.saved_tensors
        x_dtype, t_dtype = plan.dtypes
        if plan.reduction == "none":
            grad_x, grad_t = out_of_place_grads(go, gx, gt, x_dtype, t_dtype, plan.meta)
        else:
            grad_x, grad_t = fused_scalar_grads(ctx, go, (gx, gt), (x_dtype, t_dtype),
                                                (plan.rescale_x, plan.rescale_t))
        return None, grad_x, grad_t
