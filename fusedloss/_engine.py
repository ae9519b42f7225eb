"""Host side of the fused engine: registry, launcher, autograd and torch.library registration.

A loss registers once with :func:`register_loss` (its Triton math, its reference, the names of
its hyper-parameters); the engine imports no loss.

Design choices (see ../shared/notes/engine-design.md for the byte model):

* **Gradient in the forward.** When a scalar reduction is asked for with grad enabled, the
  forward writes dL/dinput (and dL/dtarget) already multiplied by the weight and by
  ``scale = loss_weight / denominator``. The backward then costs no pass over memory when
  grad_output == 1 (the usual case once ``loss_weight`` is folded in): its first call launches
  ``rescale_kernel`` in place, which reads grad_output on the device and masks every access off
  when it is 1, else rescales. It returns the saved buffer itself (``save_for_backward``), so
  ``x.grad`` takes it without a copy. Later backward calls of a retained graph write
  ``G * go / go_first`` into a fresh buffer, so no tensor handed out earlier ever changes.
  Known limit: a retained graph whose *first* grad_output is exactly 0 or non-finite cannot be
  rescaled by a later backward (the buffer was overwritten): that later gradient is NaN.
* **fp16.** A gradient normalised by 1/numel underflows fp16, and a GradScaler multiplies it by
  up to 2^24 afterwards, so for fp16 tensors the forward keeps the gradient in fp32 and the
  backward always writes ``grad_output * G`` rounded once into fp16 (+6 B/element).
  bf16 has fp32's range: it keeps the no-pass backward.
* **weighted_mean** needs sum(w) before the gradient can be normalised. Chosen: one deterministic
  ``torch.sum`` over the weight in its own shape before the fused pass (1 B/element for a full
  bool mask, ~0 for a broadcast one; the broadcast multiplicity numel/weight.numel() is applied
  in the kernel). The alternative, writing an un-normalised gradient and folding 1/sum(w) into
  the backward, forces the 8 B/element rescale pass on every step.
* **Broadcast target gradients** are written full-size, then reduced over the broadcast
  dimensions with a deterministic torch sum (no atomics).
* **Eager vs compile.** Eager calls go through a ``torch.autograd.Function`` (lowest host
  overhead). Under ``torch.compile`` the same launcher runs inside a ``torch.library.custom_op``
  per loss (with ``register_fake`` and ``register_autograd``), whose backward returns
  ``grad_output * G`` out of place so inductor can fuse it.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import triton
import triton.language as tl

from . import _validate
from ._plan import MAX_DIMS, collapse
from .kernels import engine as K

try:  # the interpreter decides at decoration time (shared notes, triton-on-cpu.md 7b)
    from triton.runtime.interpreter import InterpretedFunction as _Interpreted
    INTERPRETED = isinstance(K.fused_loss_fwd_kernel, _Interpreted)
except ImportError:  # pragma: no cover - future triton
    INTERPRETED = False

DOUBLE_BACKWARD_MESSAGE = (
    "fusedloss losses do not support double backward (create_graph=True): the gradient is "
    "computed by a fused kernel, not by differentiable torch operations")

#: kernel launches by name since import (for benchmarks and the launch-count tests)
LAUNCH_COUNTS: collections.Counter = collections.Counter()

_CONFIG: dict[str, Any] = {"block": None, "one_launch": False, "poison": False}


@contextlib.contextmanager
def engine_config(*, block: Optional[int] = None, one_launch: Optional[bool] = None,
                  poison: Optional[bool] = None):
    """Temporarily override the launch configuration (tests and tuning).

    block: elements per program (a power of two). one_launch: finalise scalar reductions in the
    forward launch itself with an integer ticket (default off until verified on a GPU).
    poison: fill every buffer the kernels write with NaN first, so an element a kernel forgot
    to write shows up in a test.
    """
    saved = dict(_CONFIG)
    if block is not None:
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        _CONFIG["block"] = block
    if one_launch is not None:
        _CONFIG["one_launch"] = bool(one_launch)
    if poison is not None:
        _CONFIG["poison"] = bool(poison)
    try:
        yield
    finally:
        _CONFIG.clear()
        _CONFIG.update(saved)


def pick_block(n: int) -> int:
    """Elements per program: a fixed table keyed on size (never timing-based, so a reduction's
    order depends only on n). Under the interpreter the cost is per program (~1.7 ms), so
    blocks grow to keep at most 16 programs up to 2^20 elements."""
    if _CONFIG["block"] is not None:
        return _CONFIG["block"]
    if INTERPRETED:
        return min(max(4096, triton.next_power_of_2(max(1, -(-n // 16)))), 65536)
    return 1024 if n <= 1024 else 4096


def _alloc(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer for a kernel to fill (NaN-poisoned under engine_config(poison=True))."""
    if _CONFIG["poison"]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def uses_triton(device: torch.device) -> bool:
    """CUDA tensors run the Triton kernels; CPU tensors do under TRITON_INTERPRET=1 and fall back
    to the pure-PyTorch reference otherwise."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and INTERPRETED


def _profiling() -> bool:
    return torch.autograd._profiler_enabled()


@contextlib.contextmanager
def _label(name: str):
    if _profiling():
        with torch.profiler.record_function(name):
            yield
    else:
        yield


def grad_buffer_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype the forward keeps a gradient in: fp32 for fp16 (underflow), else the tensor's."""
    return torch.float32 if dtype == torch.float16 else dtype


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@dataclass(frozen=True)
class LossSpec:
    """What a loss plugs into the engine."""
    name: str
    math: Any  # @triton.jit (x, t, p0, p1, p2, p3) -> (loss, dloss/dx, dloss/dt)
    reference: Callable  # pure-PyTorch function with the public signature
    param_names: tuple[str, ...] = ()
    reference_kwargs: dict = field(default_factory=dict)
    allow_class_index: bool = False
    op: Any = None  # the torch.library custom op, set by register_loss

    def __call__(self, input, target, params: tuple, reduction: str, weight, avg_factor,
                 loss_weight):
        return apply_loss(self, input, target, params, reduction, weight, avg_factor, loss_weight)


REGISTRY: dict[str, LossSpec] = {}


def register_loss(name: str, math, reference: Callable, param_names: tuple[str, ...] = (), *,
                  reference_kwargs: Optional[dict] = None,
                  allow_class_index: bool = False) -> LossSpec:
    """Register a loss: returns the callable the public function forwards to."""
    if len(param_names) > 4:
        raise ValueError("the engine passes at most 4 hyper-parameters to a loss's math")
    spec = LossSpec(name, math, reference, tuple(param_names), dict(reference_kwargs or {}),
                    allow_class_index)
    spec = dataclasses.replace(spec, op=_make_custom_op(spec))
    REGISTRY[name] = spec
    return spec


# --------------------------------------------------------------------------- output metadata

@dataclass(frozen=True)
class _Meta:
    loss_shape: tuple
    loss_dtype: torch.dtype
    acc_dtype: torch.dtype
    gx_dtype: torch.dtype
    gt_shape: tuple  # what the forward returns for the target gradient
    gt_dtype: torch.dtype
    target_shape: tuple
    target_reduce_dims: tuple  # dims of input.shape the target broadcasts over


def _meta(input, target, weight, reduction, class_index) -> _Meta:
    shape = tuple(input.shape)
    if class_index:
        result = input.dtype
    else:
        result = torch.result_type(input, target)
    wide = torch.float64 in (input.dtype, target.dtype, weight.dtype if weight is not None else None)
    acc = torch.float64 if wide else torch.float32
    if reduction == "none":
        loss_shape, loss_dtype = shape, result
    else:
        loss_shape = ()
        loss_dtype = torch.float64 if result == torch.float64 else torch.float32
    reduce_dims: tuple = ()
    if not class_index and tuple(target.shape) != shape:
        lead = len(shape) - target.dim()
        reduce_dims = tuple(d for d in range(len(shape))
                            if d < lead or (target.shape[d - lead] == 1 and shape[d] != 1))
    if reduce_dims and reduction == "none":
        gt_shape, gt_dtype = shape, acc  # reduced in the backward, after grad_output
    else:
        gt_shape, gt_dtype = tuple(target.shape), grad_buffer_dtype(target.dtype)
    return _Meta(loss_shape, loss_dtype, acc, grad_buffer_dtype(input.dtype), gt_shape, gt_dtype,
                 tuple(target.shape), reduce_dims)


# --------------------------------------------------------------------------- launcher

_TICKETS: dict = {}
# kernel size/stride arguments when every operand is contiguous (unused by the kernel then)
_CONTIGUOUS_ARGS = [1] * (4 * MAX_DIMS)


def _ticket_counter(device: torch.device) -> torch.Tensor:
    counter = _TICKETS.get(device)
    if counter is None:
        counter = _TICKETS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return counter


def launch_forward(spec: LossSpec, input, target, weight, params, reduction, af_value, af_tensor,
                   lw_value, lw_tensor, class_index, need_gx, need_gt):
    """Run the fused forward. Returns (loss, G_input or None, G_target or None, meta)."""
    meta = _meta(input, target, weight, reduction, class_index)
    shape = tuple(input.shape)
    n = input.numel()
    device = input.device

    if (not class_index and input.is_contiguous() and target.is_contiguous()
            and tuple(target.shape) == shape and (weight is None or (
                weight.is_contiguous() and tuple(weight.shape) == shape))):
        # the common case: every operand contiguous in input's shape, no index arithmetic
        x, t, w = input, target, weight
        ndim, strides, contiguous = 1, _CONTIGUOUS_ARGS, (True, True, True)
    else:
        t_view = target.unsqueeze(-1).expand(shape) if class_index else target.expand(shape)
        operands = [input, t_view] + ([weight.expand(shape)] if weight is not None else [])
        plan = collapse(shape, [op.stride() for op in operands])
        if plan.ndim > MAX_DIMS:  # rare: copy the operands rather than fail
            operands = [op.contiguous() for op in operands]
            plan = collapse(shape, [op.stride() for op in operands])
        x, t = operands[0], operands[1]
        w = operands[2] if weight is not None else None
        ndim, strides = plan.ndim, plan.kernel_args()
        if w is None:
            strides += [0] * MAX_DIMS
        contiguous = plan.contiguous + ((True,) if w is None else ())

    out = _alloc(meta.loss_shape, meta.loss_dtype, device)
    gx = _alloc(shape, meta.gx_dtype, device) if need_gx else None
    gt_full = None
    if need_gt:
        gt_dtype = meta.acc_dtype if meta.target_reduce_dims else meta.gt_dtype
        gt_full = _alloc(shape, gt_dtype, device)

    lw_f = 1.0 if lw_value is None else lw_value
    denom_ptr, denom_mult, zero_safe = out, 1, False
    if reduction in ("none", "sum"):
        denom = K.DENOM_ONE
    elif reduction == "mean":
        if af_tensor is not None:
            denom, denom_ptr = K.DENOM_TENSOR, af_tensor
        elif af_value is not None:
            denom, lw_f = K.DENOM_ONE, lw_f / af_value
        else:
            denom = K.DENOM_NUMEL
    elif weight is None:  # weighted_mean without a weight is the mean
        denom = K.DENOM_NUMEL
    else:
        denom, zero_safe = K.DENOM_TENSOR, True
        denom_ptr = weight.sum(dtype=meta.acc_dtype)
        LAUNCH_COUNTS["torch.sum(weight)"] += 1
        denom_mult = n // weight.numel() if weight.numel() else 1

    block = pick_block(n)
    grid = max(1, triton.cdiv(n, block))
    if reduction == "none" or grid == 1:
        finalize = K.FINALIZE_SINGLE
    else:
        finalize = K.FINALIZE_TICKET if _CONFIG["one_launch"] else K.FINALIZE_PARTIALS
    partials = (_alloc((grid,), meta.acc_dtype, device)
                if reduction != "none" and grid > 1 else out)
    counter = _ticket_counter(device) if finalize == K.FINALIZE_TICKET else out
    acc = _TL_DTYPES[meta.acc_dtype]
    p = list(params) + [0.0] * (4 - len(params))
    lw_ptr = lw_tensor if lw_tensor is not None else out

    with _label(f"fusedloss::{spec.name}.forward"):
        K.fused_loss_fwd_kernel[(grid,)](
            x, t, w if w is not None else x,
            out, gx if gx is not None else out, gt_full if gt_full is not None else out,
            partials, counter, denom_ptr, lw_ptr,
            n, shape[-1] if class_index else 1, denom_mult, lw_f,
            *p, *strides,
            MATH=spec.math, NDIM=ndim,
            X_CONTIG=contiguous[0], T_CONTIG=contiguous[1], W_CONTIG=contiguous[2],
            HAS_W=w is not None, T_INDEX=class_index, REDUCE=0 if reduction == "none" else 1,
            DENOM=denom, ZERO_SAFE=zero_safe, HAS_LW_PTR=lw_tensor is not None,
            NEED_GX=need_gx, NEED_GT=need_gt, FINALIZE=finalize,
            ACC=acc, BLOCK=block, RBLOCK=K.REDUCE_BLOCK, num_warps=_num_warps(block))
        LAUNCH_COUNTS["fused_loss_fwd_kernel"] += 1
        if reduction != "none" and finalize == K.FINALIZE_PARTIALS:
            K.finalize_kernel[(1,)](
                partials, out, denom_ptr, lw_ptr, grid, n, denom_mult, lw_f,
                DENOM=denom, ZERO_SAFE=zero_safe, HAS_LW_PTR=lw_tensor is not None,
                ACC=acc, RBLOCK=K.REDUCE_BLOCK, num_warps=4)
            LAUNCH_COUNTS["finalize_kernel"] += 1

    gt = gt_full
    if need_gt and meta.target_reduce_dims and reduction != "none":
        gt = gt_full.sum(dim=meta.target_reduce_dims, keepdim=True)
        gt = gt.reshape(meta.gt_shape).to(meta.gt_dtype)
    return out, gx, gt, meta


def _rescale(g: torch.Tensor, out: torch.Tensor, go: torch.Tensor, *, ref=None, record=None,
             skip_if_one: bool = False) -> None:
    n = g.numel()
    block = pick_block(n)
    acc = tl.float64 if torch.float64 in (g.dtype, go.dtype) else tl.float32
    K.rescale_kernel[(max(1, triton.cdiv(n, block)),)](
        g, out, go, ref if ref is not None else go, record if record is not None else go, n,
        SKIP_IF_EQUAL=skip_if_one, HAS_REF=ref is not None, RECORD=record is not None,
        ACC=acc, BLOCK=block, num_warps=_num_warps(block))
    LAUNCH_COUNTS["rescale_kernel"] += 1


# --------------------------------------------------------------------------- backward

def _check_first_order() -> None:
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


def out_of_place_grads(go, gx, gt, x_dtype, t_dtype, meta: _Meta):
    """grad_output * G: the "none" backward, and every backward under torch.compile."""
    grad_x = grad_t = None
    if gx is not None:
        grad_x = (go * gx).to(x_dtype)
    if gt is not None:
        grad_t = go * gt
        if tuple(grad_t.shape) != meta.target_shape:  # "none" with a broadcast target
            grad_t = grad_t.sum(dim=meta.target_reduce_dims, keepdim=True).reshape(meta.target_shape)
        grad_t = grad_t.to(t_dtype)
    return grad_x, grad_t


def fused_scalar_grads(state, go, buffers, dtypes):
    """The no-pass backward of a scalar reduction (eager). ``state`` is the autograd ctx.

    First call: rescale each saved buffer in place only if grad_output != 1 (decided on the
    device) and return the buffer itself. Later calls (retain_graph): out of place.
    """
    first = state.backward_calls == 0
    state.backward_calls += 1
    grads = []
    for g, dtype in zip(buffers, dtypes):
        if g is None:
            grads.append(None)
        elif g.dtype != dtype:  # fp16 gradient kept in fp32: never mutated, always rescaled
            out = _alloc(g.shape, dtype, g.device)
            _rescale(g, out, go)
            grads.append(out)
        elif first:
            record = None
            if state.go_record is None:
                record = state.go_record = torch.empty((), dtype=go.dtype, device=go.device)
            _rescale(g, g, go, record=record, skip_if_one=True)
            grads.append(g)
        else:
            out = _alloc(g.shape, g.dtype, g.device)
            _rescale(g, out, go, ref=state.go_record)
            grads.append(out)
    return grads


class FusedLossFunction(torch.autograd.Function):
    """Eager autograd for every registered loss (the custom op is used under torch.compile)."""

    @staticmethod
    def forward(ctx, spec, input, target, weight, params, reduction, af_value, af_tensor,
                lw_value, lw_tensor, class_index, need_gx, need_gt):
        loss, gx, gt, meta = launch_forward(spec, input, target, weight, params, reduction,
                                            af_value, af_tensor, lw_value, lw_tensor,
                                            class_index, need_gx, need_gt)
        ctx.save_for_backward(gx, gt)
        ctx.meta = meta
        ctx.reduction = reduction
        ctx.dtypes = (input.dtype, target.dtype)
        ctx.backward_calls = 0
        ctx.go_record = None
        return loss

    @staticmethod
    def backward(ctx, go):
        _check_first_order()
        gx, gt = ctx.saved_tensors
        x_dtype, t_dtype = ctx.dtypes
        with _label("fusedloss.backward"):
            if ctx.reduction == "none":
                grad_x, grad_t = out_of_place_grads(go, gx, gt, x_dtype, t_dtype, ctx.meta)
            else:
                grad_x, grad_t = fused_scalar_grads(ctx, go, (gx, gt), (x_dtype, t_dtype))
        return (None, grad_x, grad_t) + (None,) * 10


# --------------------------------------------------------------------------- torch.library

def _make_custom_op(spec: LossSpec):
    """One ``fusedloss::<name>`` custom op per loss, returning (loss, G_input, G_target);
    gradients not asked for come back as empty tensors."""

    def impl(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
             avg_factor: Optional[torch.Tensor], loss_weight: Optional[torch.Tensor],
             params: list[float], reduction: str, avg_factor_value: Optional[float],
             loss_weight_value: Optional[float], need_input_grad: bool,
             need_target_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        class_index = not target.dtype.is_floating_point
        loss, gx, gt, _ = launch_forward(spec, input, target, weight, params, reduction,
                                         avg_factor_value, avg_factor, loss_weight_value,
                                         loss_weight, class_index, need_input_grad,
                                         need_target_grad)
        empty = input.new_empty(0)
        return loss, gx if gx is not None else empty, gt if gt is not None else empty

    op = torch.library.custom_op(f"fusedloss::{spec.name}", impl, mutates_args=())

    @op.register_fake
    def _fake(input, target, weight, avg_factor, loss_weight, params, reduction,
              avg_factor_value, loss_weight_value, need_input_grad, need_target_grad):
        meta = _meta(input, target, weight, reduction, not target.dtype.is_floating_point)
        loss = input.new_empty(meta.loss_shape, dtype=meta.loss_dtype)
        gx = input.new_empty(tuple(input.shape) if need_input_grad else (0,), dtype=meta.gx_dtype
                             if need_input_grad else input.dtype)
        if need_target_grad:
            gt = input.new_empty(meta.gt_shape, dtype=meta.gt_dtype)
        else:
            gt = input.new_empty((0,))
        return loss, gx, gt

    def setup_context(ctx, inputs, output):
        input, target, weight, _, _, _, reduction, _, _, need_gx, need_gt = inputs
        _, gx, gt = output
        ctx.save_for_backward(gx if need_gx else None, gt if need_gt else None)
        ctx.meta = _meta(input, target, weight, reduction, not target.dtype.is_floating_point)
        ctx.dtypes = (input.dtype, target.dtype)
        ctx.mark_non_differentiable(gx, gt)

    def backward(ctx, go, _unused_gx, _unused_gt):
        _check_first_order()
        gx, gt = ctx.saved_tensors
        grad_x, grad_t = out_of_place_grads(go, gx, gt, *ctx.dtypes, ctx.meta)
        return (grad_x, grad_t) + (None,) * 9

    op.register_autograd(backward, setup_context=setup_context)
    return op


# --------------------------------------------------------------------------- dispatch

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
        loss, _, _ = spec.op(input, target, weight, af_tensor, lw_tensor, [float(p) for p in params],
                             reduction, af_value, lw_value, need_gx, need_gt)
        return loss
    if need_gx or need_gt:
        return FusedLossFunction.apply(spec, input, target, weight, params, reduction, af_value,
                                       af_tensor, lw_value, lw_tensor, class_index, need_gx,
                                       need_gt)
    return launch_forward(spec, input, target, weight, params, reduction, af_value, af_tensor,
                          lw_value, lw_tensor, class_index, False, False)[0]


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
