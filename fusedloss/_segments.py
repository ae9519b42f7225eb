"""Segment losses, host side: per-segment sums, the loss per segment, a backward pass.

A segment loss (Dice) is a function of a few sums over each segment's elements (a segment:
one (sample, class) of a (B, C, *spatial) input, or one class over the batch), so its gradient
needs the sums first. The engine's three segment kernels (``kernels/engine.py``) do it in
fixed order, no atomics:

    forward:  fused_segment_sums_kernel (read x, t)  ->  segment_finalize_kernel (tiny)
    backward: fused_segment_grad_kernel (read x, t, write dL/dx with grad_output folded in)

A loss supplies its ``@triton.jit`` ELEM / ELEM_GRAD / SEG math and its reference
(``SegmentSpec``, ``register_segment_loss``); the launches, the autograd Function and the
torch.library ops (torch.compile) are here. Why a backward pass rather than the gradient in
the forward: see the kernels' section comment (same bytes; grad_output folded for free; no
gradient buffer held between forward and backward; nothing paid without a backward).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
import triton

from . import _runtime as rt
from ._autograd import check_first_order
from ._launch import KernelLauncher, _aligned
from ._runtime import uses_triton
from .kernels import engine as K

_TL = {torch.float32: triton.language.float32, torch.float64: triton.language.float64}
_INT32_LIMIT = 2 ** 31
SEGMENT_TILE = 4096  # channels x pixels per program on a GPU (interpreter: larger, see below)
CHANNELS_IN_THREAD = 32  # up to this many channels (padded), a thread holds all of a pixel's
REDUCE_TILE = 1024  # channels x partials per step of the finalize's fixed-order sum

SUMS = KernelLauncher(K.fused_segment_sums_kernel, "fused_segment_sums_kernel")
FINALIZE = KernelLauncher(K.segment_finalize_kernel, "segment_finalize_kernel")
GRAD = KernelLauncher(K.fused_segment_grad_kernel, "fused_segment_grad_kernel")


@dataclass(frozen=True)
class SegmentSpec:
    """What a segment loss plugs into the engine (see ``kernels/engine.py``):
    elem ``(x, p, t, p0..p3, VARIANT) -> (q0, q1, q2, q3)`` summed per segment (q3: summed over
    everything, the "global" term); elem_grad ``(x, p, t, c0..c3, p0..p3, VARIANT) -> (dL/dp,
    dL/dx direct)``; seg ``(S0, S1, S2, p0..p3, VARIANT) -> (f, df/dS0, df/dS1, df/dS2)``."""
    name: str
    elem: Any
    elem_grad: Any
    seg: Any
    op: Any = None
    grad_op: Any = None


class SegmentCall(NamedTuple):
    """The non-tensor arguments of one call (hashable: the launch keys are built from it)."""
    act: int  # K.ACT_NONE / ACT_SIGMOID / ACT_SOFTMAX
    variant: int
    params: tuple  # 4 floats
    batch: bool  # segments span the batch (one per class)
    c_start: int  # first channel that forms segments (1: background excluded)
    reduction: str
    global_scale: float  # the global term's factor, divided by input.numel() (0: none)
    lw_value: Optional[float]
    seg_factor: float = 1.0  # the segment part's factor (bce_dice_loss's dice_weight)


def _geometry(input: torch.Tensor):
    b, c = input.shape[0], input.shape[1]
    s = math.prod(input.shape[2:])
    return _geometry_of(b, c, s, input.element_size(), rt.persistent_programs(input.device),
                        rt.INTERPRETED)


@functools.lru_cache(maxsize=256)
def _geometry_of(b: int, c: int, s: int, elsize: int, programs: int, interpreted: bool):
    """(b, c, s, CP, BLOCK_S, pixel blocks, programs per image, IDX64, EVEN_S, PIX, warps)."""
    cp = triton.next_power_of_2(c)
    tile = SEGMENT_TILE
    if interpreted:  # the interpreter's cost is per program: few, large tiles
        tile = max(tile, min(65536, triton.next_power_of_2(max(1, b * c * s) // 8)))
    block_s = max(16, min(tile // cp, triton.next_power_of_2(max(s, 1))))
    warps = 4 if cp * block_s <= 2048 else 8
    pix = 0
    if 2 <= cp <= CHANNELS_IN_THREAD:
        # every channel of a pixel in one thread (see kernels/engine.py, segment section): pix
        # pixels of <= 16 bytes per thread, <= 32 values (x and three accumulators in
        # registers); C is a constexpr, so the padded channels compile away
        pix = min(16 // elsize, max(1, CHANNELS_IN_THREAD // cp))
        if not interpreted:
            warps = 4
            block_s = 32 * warps * pix
    n_blocks = max(1, -(-s // block_s))
    per_image = max(1, min(n_blocks, programs // max(b, 1)))
    if n_blocks % per_image:  # prefer a divisor: every program then has whole tiles only
        divisor = max(d for d in range(1, per_image + 1) if n_blocks % d == 0)
        per_image = divisor if 2 * divisor >= per_image else per_image
    idx64 = b * c * s >= _INT32_LIMIT
    even = s % block_s == 0 and n_blocks % per_image == 0
    return b, c, s, cp, block_s, n_blocks, per_image, idx64, even, pix, warps


def _loss_shape(b: int, c: int, call: SegmentCall) -> tuple:
    if call.reduction != "none":
        return ()
    return (c - call.c_start,) if call.batch else (b, c - call.c_start)


def _acc_dtype(input: torch.Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def segment_forward(spec: SegmentSpec, input: torch.Tensor, target: torch.Tensor,
                    weight: Optional[torch.Tensor], lw_tensor: Optional[torch.Tensor],
                    call: SegmentCall, need_coef: bool):
    """(loss, coefficients (B, C, 4) or None): the sums pass and the finalize."""
    b, c, s, cp, block_s, n_blocks, per_image, idx64, even, pix, warps = _geometry(input)
    acc = _acc_dtype(input)
    t_index = target.dim() < input.dim()  # class indices (B, *spatial)
    partial = rt.alloc((4, b, c, per_image), acc, input.device)
    p0, p1, p2, p3 = call.params
    sums_c = dict(ELEM=spec.elem, VARIANT=call.variant, ACT=call.act, T_INDEX=t_index,
                  HAS_GLOBAL=call.global_scale != 0.0, ACC=_TL[acc], CP=cp, BLOCK_S=block_s,
                  EVEN_S=even, IDX64=idx64, C=c, PIX=pix)
    key = (spec.name, "sums", input.dtype, target.dtype, call.variant, call.act, c, block_s,
           call.global_scale != 0.0, even, idx64, _aligned(input, target))
    SUMS(b * per_image, key, [input, target, partial],
         [s, b, n_blocks, per_image, p0, p1, p2, p3], sums_c, warps)
    loss = rt.alloc(_loss_shape(b, c, call), acc, input.device)
    coef = rt.alloc((b, c, 4), acc, input.device) if need_coef else None
    segments = (1 if call.batch else b) * (c - call.c_start)
    seg_count = segments if call.reduction == "mean" else 1
    sw_b = sw_c = 0
    if weight is not None:
        sw_c = weight.stride(-1)
        sw_b = weight.stride(0) if weight.dim() == 2 else 0
    lw_f = 1.0 if call.lw_value is None else call.lw_value
    fin_c = dict(SEG=spec.seg, VARIANT=call.variant, HAS_W=weight is not None,
                 HAS_LW_PTR=lw_tensor is not None, REDUCE=0 if call.reduction == "none" else 1,
                 BATCH=call.batch, NEED_COEF=need_coef, ACC=_TL[acc], CP=cp,
                 RB=min(triton.next_power_of_2(per_image), max(1, REDUCE_TILE // cp)))
    key = (spec.name, "fin", call.variant, weight is not None and weight.dtype,
           lw_tensor is not None and lw_tensor.dtype, call.reduction, call.batch, need_coef,
           acc, cp, fin_c["RB"], _aligned(weight, lw_tensor))
    FINALIZE(1, key, [partial, loss, coef, weight, lw_tensor],
             [b, c, per_image, call.c_start, sw_b, sw_c, call.seg_factor, seg_count,
              call.global_scale, max(input.numel(), 1), lw_f, p0, p1, p2, p3], fin_c, 4)
    return loss, coef


def segment_backward(spec: SegmentSpec, input: torch.Tensor, target: torch.Tensor,
                     coef: torch.Tensor, go: torch.Tensor, call: SegmentCall) -> torch.Tensor:
    """dL/dinput for grad_output ``go`` (a scalar, or one value per segment for "none")."""
    b, c, s, cp, block_s, n_blocks, _per_image, idx64, even, pix, warps = _geometry(input)
    acc = _acc_dtype(input)
    out = rt.alloc(tuple(input.shape), input.dtype, input.device)
    go = go.contiguous()
    p0, p1, p2, p3 = call.params
    per_segment = call.reduction == "none"
    consts = dict(ELEM_GRAD=spec.elem_grad, VARIANT=call.variant, ACT=call.act,
                  T_INDEX=target.dim() < input.dim(), GO_PER_SEGMENT=per_segment,
                  BATCH=call.batch, ACC=_TL[acc], CP=cp, BLOCK_S=block_s, EVEN_S=even,
                  IDX64=idx64, C=c, PIX=pix)
    key = (spec.name, "grad", input.dtype, target.dtype, go.dtype, call.variant, call.act,
           per_segment, call.batch, c, block_s, even, idx64, _aligned(input, target, go))
    GRAD(b * n_blocks, key, [input, target, coef, go, out],
         [s, call.c_start, n_blocks, p0, p1, p2, p3], consts, warps)
    return out


class SegmentLossFunction(torch.autograd.Function):
    """Eager autograd: the forward keeps (input, target, coefficients); the backward is one
    pass over input and target."""

    @staticmethod
    def forward(ctx, spec, call, input, target, weight, lw_tensor):
        loss, coef = segment_forward(spec, input, target, weight, lw_tensor, call, True)
        ctx.save_for_backward(input, target, coef)
        ctx.spec, ctx.call = spec, call
        return loss

    @staticmethod
    def backward(ctx, go):
        check_first_order()
        input, target, coef = ctx.saved_tensors
        return (None, None, segment_backward(ctx.spec, input, target, coef, go, ctx.call),
                None, None, None)


def apply_segments(spec: SegmentSpec, input: torch.Tensor, target: torch.Tensor,
                   weight: Optional[torch.Tensor], lw_value: Optional[float],
                   lw_tensor: Optional[torch.Tensor], call: SegmentCall,
                   reference: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Run a validated segment-loss call: input (B, C, *spatial) floating; target of input's
    shape (floating or bool) or (B, *spatial) class indices (integer; one-hot in the kernels:
    told apart by the number of dims); weight
    None, (C',) or (B, C') floating with C' = C - c_start; the result in float32 (float64 for a
    float64 input). ``reference()`` where Triton cannot run."""
    if not uses_triton(input.device) or input.numel() == 0:
        return reference()  # (an empty input: nothing to launch)
    input = input if input.is_contiguous() else input.contiguous()
    target = target if target.is_contiguous() else target.contiguous()
    if target.dtype == torch.bool:  # a mask of input's shape: read as 0/1 bytes
        target = target.view(torch.uint8)
    need_grad = torch.is_grad_enabled() and input.requires_grad
    if torch.compiler.is_compiling():
        loss, _coef = spec.op(input, target, weight, lw_tensor, call.act, call.variant,
                              list(call.params), call.batch, call.c_start, call.reduction,
                              call.global_scale, call.lw_value, call.seg_factor, need_grad)
        return loss
    if need_grad:
        return SegmentLossFunction.apply(spec, call, input, target, weight, lw_tensor)
    return segment_forward(spec, input, target, weight, lw_tensor, call, False)[0]


def _call_of(act, variant, params, batch, c_start, reduction, global_scale, lw_value,
             seg_factor=1.0):
    return SegmentCall(act, variant, tuple(params), batch, c_start, reduction, global_scale,
                       lw_value, seg_factor)


def make_segment_ops(spec: SegmentSpec):
    """``fusedloss::<name>`` (forward: loss and coefficients) and ``fusedloss::<name>_grad``
    (the backward pass) custom ops, for torch.compile."""

    def forward_impl(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                     loss_weight: Optional[torch.Tensor], act: int, variant: int,
                     params: list[float], batch: bool, c_start: int, reduction: str,
                     global_scale: float, loss_weight_value: Optional[float],
                     seg_factor: float, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        call = _call_of(act, variant, params, batch, c_start, reduction, global_scale,
                        loss_weight_value, seg_factor)
        loss, coef = segment_forward(spec, input, target, weight, loss_weight, call, need_grad)
        return loss, coef if coef is not None else input.new_empty(0, dtype=loss.dtype)

    op = torch.library.custom_op(f"fusedloss::{spec.name}", forward_impl, mutates_args=())

    @op.register_fake
    def _fake(input, target, weight, loss_weight, act, variant, params, batch, c_start,
              reduction, global_scale, loss_weight_value, seg_factor, need_grad):
        b, c = input.shape[0], input.shape[1]
        acc = _acc_dtype(input)
        call = _call_of(act, variant, params, batch, c_start, reduction, global_scale,
                        loss_weight_value)
        loss = input.new_empty(_loss_shape(b, c, call), dtype=acc)
        coef = input.new_empty((b, c, 4) if need_grad else (0,), dtype=acc)
        return loss, coef

    def grad_impl(input: torch.Tensor, target: torch.Tensor, coef: torch.Tensor,
                  go: torch.Tensor, act: int, variant: int, params: list[float], batch: bool,
                  c_start: int, reduction: str) -> torch.Tensor:
        call = _call_of(act, variant, params, batch, c_start, reduction, 0.0, None)
        return segment_backward(spec, input, target, coef, go, call)

    grad_op = torch.library.custom_op(f"fusedloss::{spec.name}_grad", grad_impl,
                                      mutates_args=())

    @grad_op.register_fake
    def _grad_fake(input, target, coef, go, act, variant, params, batch, c_start, reduction):
        return torch.empty_like(input)

    def setup_context(ctx, inputs, output):
        input, target = inputs[0], inputs[1]
        ctx.args = inputs[4:10]  # act, variant, params, batch, c_start, reduction
        ctx.save_for_backward(input, target, output[1])
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, go, _unused_coef):
        check_first_order()
        input, target, coef = ctx.saved_tensors
        return (grad_op(input, target, coef, go, *ctx.args),) + (None,) * 13

    op.register_autograd(backward, setup_context=setup_context)
    return op, grad_op


SEGMENT_REGISTRY: dict[str, SegmentSpec] = {}


def register_segment_loss(name: str, elem, elem_grad, seg) -> SegmentSpec:
    """Register a segment loss: its jit math (see ``SegmentSpec``); returns the spec that
    ``apply_segments`` runs."""
    spec = SegmentSpec(name, elem, elem_grad, seg)
    op, grad_op = make_segment_ops(spec)
    spec = SegmentSpec(name, elem, elem_grad, seg, op, grad_op)
    SEGMENT_REGISTRY[name] = spec
    return spec
