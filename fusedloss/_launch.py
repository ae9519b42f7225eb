"""Launch planning and the cached launcher.

Everything a forward launch needs that depends only on the call's *signature* (shapes, strides,
dtypes, devices, reduction, which gradients, the loss and its constexpr variant) is computed
once into a :class:`ForwardPlan` and kept in a dict; a call then costs a key, a dict lookup,
its output allocations and the launch itself.

Compiled kernels are launched through :class:`KernelLauncher`: the first launch of a plan goes
through ``JITFunction.run`` (Triton binds the arguments, specialises them, compiles and caches),
which returns the ``CompiledKernel``; later launches with the same plan and the same pointer
alignments call that kernel's launcher directly. That is exactly the kernel ``JITFunction.run``
would pick: Triton's specialisation of an argument depends on its type, a tensor's dtype and
16-byte alignment, and an int's value class (== 1, divisible by 16, 32/64-bit), and every one of
those is a function of the plan key plus the alignments (tests/test_launch.py checks this
against Triton's own ``native_specialize_impl``). Under the interpreter every launch goes
through ``JITFunction`` (there is nothing compiled to call).
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
import triton
import triton.language as tl
from triton.compiler import CompiledKernel
from triton.runtime.jit import JITFunction

from . import _runtime as rt
from ._plan import MAX_DIMS, collapse, row_major_strides, udiv_magic
from .kernels import engine as K

_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}
_JIT_RUN = JITFunction.run  # Triton's own; a tool may wrap it (see KernelLauncher)
_KNOBS = triton.knobs.runtime  # launch hooks (profilers such as proton install them here)
_INT32_LIMIT = 2 ** 31
ROW_TILE = 1024  # elements per program of a row loss on a GPU (see _build_plan)
# rows of min..max values (padded to a power of two) are held one per thread, in programs of
# at most 4 warps and at most (the third) / values per row warps: 4 for DFL's 16 bins, 2 for
# YOLO's 64 logits
ROW_IN_THREAD = (16, 64, 128)


def grad_buffer_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype the forward keeps a gradient in: fp32 for fp16 (underflow), else the tensor's."""
    return torch.float32 if dtype == torch.float16 else dtype


# --------------------------------------------------------------------------- the launcher

class KernelLauncher:
    """Launch one ``@triton.jit`` kernel, compiled kernels straight through their launcher.

    The kernel's runtime arguments come as ``ptrs`` (its leading pointer parameters) and
    ``scalars`` (the rest), in order; ``constexprs`` are its constexpr parameters in order (the
    kernels keep them last); ``key`` identifies every argument's specialisation (a plan's small
    ident and the pointer alignments). A tool that wraps ``JITFunction.run`` (``gpuproxy sass``,
    ``tests/compile_for_gpu.py``) sees every launch: while it is wrapped, launches go through it.
    """

    def __init__(self, fn, name: str):
        self.fn = fn
        self.name = name
        self._compiled: dict = {}  # key -> what a direct launch needs
        self._kernel: dict = {}  # key -> the CompiledKernel (for profiler hooks)

    def __call__(self, grid: int, key, ptrs: list, scalars: list, constexprs: dict,
                 warps: int) -> None:
        """``ptrs``: the leading pointer arguments (tensors, or None where the kernel does not
        use one: Triton makes it a constexpr None); ``scalars``: the remaining runtime ones."""
        rt.LAUNCH_COUNTS[self.name] += 1
        entry = self._compiled.get(key)
        if entry is None or JITFunction.run is not _JIT_RUN:
            self._first_launch(grid, key, ptrs, scalars, constexprs, warps)
            return
        run, fast, function, packed, cvalues, get_stream, get_device = entry
        stream = get_stream(get_device())
        # integer addresses: the launcher then skips a data_ptr() call and a driver query
        # (cuPointerGetAttribute) per pointer; devices were checked before any kernel
        addresses = [p if p is None else p.data_ptr() for p in ptrs]
        enter, leave = _KNOBS.launch_enter_hook, _KNOBS.launch_exit_hook
        if ((enter is not None and getattr(enter, "calls", True))
                or (leave is not None and getattr(leave, "calls", True))):
            # a profiler hook (e.g. proton) gets the metadata JITFunction.run would give it
            meta = self._kernel[key].launch_metadata((grid, 1, 1), stream, *ptrs, *scalars,
                                                     *cvalues)
            run(grid, 1, 1, stream, function, packed, meta, enter, leave, *addresses, *scalars,
                *cvalues)
        elif fast is not None:
            fast(grid, stream, function, packed, (*addresses, *scalars, *cvalues))
        else:  # Triton builds that metadata for empty hook chains too (~4 us); skip it
            run(grid, 1, 1, stream, function, packed, None, None, None, *addresses, *scalars,
                *cvalues)

    def forget(self) -> None:
        """Drop the direct-launch entries (Triton keeps its compiled kernels)."""
        self._compiled.clear()
        self._kernel.clear()

    def _first_launch(self, grid, key, ptrs, scalars, constexprs, warps) -> None:
        if rt.INTERPRETED:
            self.fn[(grid,)](*ptrs, *scalars, **constexprs)
            return
        kernel = self.fn[(grid,)](*ptrs, *scalars, **constexprs, num_warps=warps)
        if isinstance(kernel, CompiledKernel):  # None or a stand-in when run is wrapped
            self._kernel[key] = kernel
            driver = triton.runtime.driver.active
            self._compiled[key] = (kernel.run, fast_launch(kernel.run), kernel.function,
                                   kernel.packed_metadata, tuple(constexprs.values()),
                                   driver.get_current_stream, driver.get_current_device)


FWD = KernelLauncher(K.fused_loss_fwd_kernel, "fused_loss_fwd_kernel")
FWD_STRIDED = KernelLauncher(K.fused_loss_fwd_strided_kernel, "fused_loss_fwd_strided_kernel")
FWD_RENDERED = KernelLauncher(K.fused_loss_fwd_rendered_kernel, "fused_loss_fwd_rendered_kernel")
FWD_ROWS = KernelLauncher(K.fused_row_loss_fwd_kernel, "fused_row_loss_fwd_kernel")
BWD_ROWS = KernelLauncher(K.fused_row_loss_bwd_kernel, "fused_row_loss_bwd_kernel")
FINALIZE = KernelLauncher(K.finalize_kernel, "finalize_kernel")
RESCALE = KernelLauncher(K.rescale_kernel, "rescale_kernel")


# Triton's CudaLauncher.__call__ (a Python wrapper around its C launch function) costs ~1 us a
# launch: two closures, scratch-allocator lookups. For the two wrapper sources we know, exactly
# (sha256 of the method's source), and a kernel that needs no scratch memory, the wrapper only
# forwards to the C function; we call that directly. Any other launcher (another Triton version,
# another backend) goes through the wrapper. tests/test_launch.py checks, for the installed
# Triton, that both ways pass the C function the same arguments.
_KNOWN_WRAPPERS = {
    "7858736667eaebc162739e5004f19c43cdd1ffea8e30b86811abc6183a338e7e": "3.9",
    "9412a64d532d5b5ce67ef236d2f377fe728f58c346b5ef399c4836793b79f436": "3.6",
}
_WRAPPER_LAYOUT: dict = {}  # launcher class -> layout name or None


def _wrapper_layout(cls) -> Optional[str]:
    layout = _WRAPPER_LAYOUT.get(cls, 0)
    if layout == 0:
        try:
            source = inspect.getsource(cls.__call__)
        except (OSError, TypeError):
            source = ""
        layout = _WRAPPER_LAYOUT[cls] = _KNOWN_WRAPPERS.get(
            hashlib.sha256(source.encode()).hexdigest())
    return layout


def fast_launch(run):
    """``f(grid, stream, function, packed_metadata, args)`` calling the C launch function behind
    ``run`` (a Triton launcher) as its wrapper would with no hooks, or None when that cannot
    be known (see ``_KNOWN_WRAPPERS``)."""
    layout = _wrapper_layout(type(run))
    if (layout is None or getattr(run, "global_scratch_size", 1)
            or getattr(run, "profile_scratch_size", 1) or getattr(run, "gsan_enabled", False)):
        return None
    launch, coop, pdl = run.launch, run.launch_cooperative_grid, run.launch_pdl
    if layout == "3.9":
        annotations, signature = run.arg_annotations, run.kernel_signature

        def call(grid, stream, function, packed, args):
            launch(grid, 1, 1, stream, function, coop, pdl, packed, None, None, None, None, None,
                   annotations, signature, args)
    else:
        def call(grid, stream, function, packed, args):
            launch(grid, 1, 1, stream, function, coop, pdl, None, None, packed, None, None, None,
                   *args)
    return call


def _aligned(*tensors):
    """Triton's pointer specialisation: 16-byte alignment of each user tensor (True when all
    are aligned, the common case, else one flag per tensor)."""
    combined = 0
    for t in tensors:
        if t is not None:
            combined |= t.data_ptr()
    if combined % 16 == 0:
        return True
    return tuple(t is None or t.data_ptr() % 16 == 0 for t in tensors)


# --------------------------------------------------------------------------- output metadata

@dataclass(frozen=True)
class Meta:
    loss_shape: tuple
    loss_dtype: torch.dtype
    acc_dtype: torch.dtype
    gx_dtype: torch.dtype
    gt_shape: tuple  # what the forward returns for the target gradient
    gt_dtype: torch.dtype
    target_shape: tuple
    target_reduce_dims: tuple  # dims of input.shape the target broadcasts over


class Render(NamedTuple):
    """A target rendered in the kernel (``fused_loss_fwd_rendered_kernel``) instead of read.

    renderer: the id ``register_renderer`` gave the loss's ``@triton.jit`` renderer ``(c, p,
    t_ptr, aux_ptr, r0..r3, k0, k1, RK, RA, HAS_AUX, ACC) -> target``; kind/count: its RK/RA
    constexprs; channel_dims: how many leading dimensions of input.shape make the channel
    index c (the rest is the position p); k0, k1: its integer parameters. The target tensor
    passed with it holds the per-channel data (e.g. keypoints), an optional ``aux`` tensor more
    (e.g. visibility); the floats r0..r3 come per call. Plain integers, so torch.compile traces
    it and the custom op passes it as ``list(render)``.
    """
    renderer: int
    kind: int
    count: int
    channel_dims: int
    k0: int
    k1: int


#: renderers by id (see Render)
RENDERERS: list = []


def register_renderer(fn) -> int:
    """The id of ``fn`` (a ``@triton.jit`` renderer) for ``Render.renderer``."""
    if fn not in RENDERERS:
        RENDERERS.append(fn)
    return RENDERERS.index(fn)


class Rows(NamedTuple):
    """A row loss (``fused_row_loss_fwd_kernel``): one value per row of ``kx`` input values
    (input.shape[-1]) against rows of ``kt`` target values (target.shape[-1]; with
    ``t_cols`` False the target holds one value per row, shape input.shape[:-1], and kt is 1)
    and rows of ``ka`` values of an optional aux tensor (0 without one). ``nout`` 2: a loss
    of two terms reduced into two outputs (shape (2,), or (rows..., 2) for "none"), whose
    forward also saves ``ks`` values per row for the backward (see the row drivers)."""
    kx: int
    kt: int
    ka: int
    t_cols: bool
    nout: int = 1
    ks: int = 0


def output_meta(input, target, weight, reduction, class_index, rendered: bool = False,
                rows: Optional[Rows] = None) -> Meta:
    shape = tuple(input.shape)  # the shape of the loss ("none") and of the target's gradient
    loss_shape = shape
    nout = 1
    if rows is not None:
        loss_shape = shape[:-1]
        shape = loss_shape + ((rows.kt,) if rows.t_cols else ())
        nout = rows.nout
        if nout > 1:
            loss_shape = loss_shape + (nout,)
    if class_index or rendered:
        result = input.dtype
    else:
        result = torch.result_type(input, target)
    wide = torch.float64 in (input.dtype, None if rendered else target.dtype,
                             weight.dtype if weight is not None else None)
    acc = torch.float64 if wide else torch.float32
    if reduction == "none":
        loss_dtype = result
    else:
        loss_shape = () if nout == 1 else (nout,)
        loss_dtype = torch.float64 if result == torch.float64 else torch.float32
    reduce_dims: tuple = ()
    if not (class_index or rendered) and tuple(target.shape) != shape:
        lead = len(shape) - target.dim()
        reduce_dims = tuple(d for d in range(len(shape))
                            if d < lead or (target.shape[d - lead] == 1 and shape[d] != 1))
    if reduce_dims and reduction == "none":
        gt_shape, gt_dtype = shape, acc  # reduced in the backward, after grad_output
    else:
        gt_shape, gt_dtype = tuple(target.shape), grad_buffer_dtype(target.dtype)
    return Meta(loss_shape, loss_dtype, acc, grad_buffer_dtype(input.dtype), gt_shape, gt_dtype,
                tuple(target.shape), reduce_dims)


# --------------------------------------------------------------------------- forward plans

@dataclass(frozen=True)
class ForwardPlan:
    meta: Meta
    launcher: KernelLauncher
    grid: int
    ints: tuple  # (n, denom_mult) for the contiguous kernel; + sizes/magics/strides (strided)
    constexprs: dict
    warps: int
    denom: int  # K.DENOM_*
    weight_sum: bool  # "weighted_mean" with a weight: denominator = sum(weight) (a torch sum)
    partials: bool  # per-program partials in a buffer of ``grid`` elements
    finalize: bool  # a finalize launch sums the partials
    copy_operands: bool  # more than MAX_DIMS collapsed dims: operands are copied contiguous
    gt_full_dtype: Optional[torch.dtype]  # dtype of the full-size target gradient buffer
    finalize_constexprs: dict
    gx_like_input: bool  # the input gradient buffer is torch.empty_like(input)
    gt_full_shape: tuple  # the target gradient the kernel writes (reduced afterwards if it broadcasts)
    ticket: bool  # FINALIZE_TICKET: the integer ticket counter
    poison: bool  # engine_config(poison=True)
    rescale_x: tuple  # rescale key bases of the gradient buffers (see ``rescale``)
    rescale_t: tuple
    ident: int  # a small number naming the plan in kernel-cache keys (cheap to hash)
    dtypes: tuple  # (input.dtype, target.dtype)
    reduction: str
    input_grad_only: bool  # scalar reduction, gradient for input only, kept in input's dtype
    nout: int  # outputs (2: a two-term row loss)
    nout_saved: int  # values per row its forward saves for the backward (0: none)
    rendered: bool  # the target is rendered in the kernel (scalars then carry r0..r3)
    takes_aux: bool  # the driver takes an aux pointer (last); floats r0..r3 follow p0..p3


_PLANS: dict = {}
_MAX_PLANS = 4096
_IDENTS = itertools.count()


def forward_plan(spec, variant: int, input, target, weight, reduction: str, af_kind: int,
                 af_tensor, lw_tensor, class_index: bool, need_gx: bool, need_gt: bool,
                 special=None, aux: Optional[torch.Tensor] = None):
    """The cached plan of a forward launch (``plan.ident`` keys its compiled kernels).
    ``special``: a Render or Rows descriptor, or None for an elementwise loss."""
    key = (spec.name, variant, reduction, af_kind, need_gx, need_gt, class_index,
           input.shape, input.stride(), input.dtype, input.get_device(),
           target.shape, target.stride(), target.dtype,
           None if weight is None else (weight.shape, weight.stride(), weight.dtype),
           None if af_tensor is None else af_tensor.dtype,
           None if lw_tensor is None else lw_tensor.dtype, rt.CONFIG_KEY,
           special, None if aux is None else (aux.shape, aux.stride(), aux.dtype))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:  # many distinct shapes: start over (plans are cheap)
            _PLANS.clear()
            _RESCALE_PLANS.clear()
            for launcher in (FWD, FWD_STRIDED, FWD_RENDERED, FWD_ROWS, BWD_ROWS, FINALIZE,
                             RESCALE):
                launcher.forget()
        plan = _PLANS[key] = _build_plan(spec, variant, input, target, weight, reduction, af_kind,
                                         af_tensor, lw_tensor, class_index, need_gx, need_gt,
                                         next(_IDENTS), special, aux)
    return plan


def _rendered_plan(input, weight, render: Render, aux, n, denom_mult, block, span, even,
                   constexprs):
    """Launcher, integer arguments and constexprs of the rendered driver: input and weight
    addressed as in the strided driver, the target computed by ``render.fn``."""
    shape = tuple(input.shape)
    operands = [input] + ([weight.expand(shape)] if weight is not None else [])
    plan = collapse(shape, [op.stride() for op in operands])
    if plan.ndim > MAX_DIMS:
        raise ValueError(f"input of shape {shape} with strides {input.stride()} (and weight) "
                         f"need more than {MAX_DIMS} dimensions; pass input.contiguous()")
    zx, zw = plan.zero_masks(2)
    contig = plan.contiguous + ((True,) if weight is None else ())
    chan_size = math.prod(shape[render.channel_dims:])
    channels = math.prod(shape[:render.channel_dims])
    largest = max([span] + [plan.max_offset(k) + 1 for k in range(len(operands))])
    ints = (n, denom_mult, render.k0, render.k1, chan_size, udiv_magic(max(chan_size, 2)),
            max(channels, 1), *plan.kernel_args(2))
    c = constexprs
    return FWD_RENDERED, ints, dict(
        MATH=c["MATH"], VARIANT=c["VARIANT"], HAS_W=c["HAS_W"], REDUCE=c["REDUCE"],
        DENOM=c["DENOM"], ZERO_SAFE=c["ZERO_SAFE"], HAS_LW_PTR=c["HAS_LW_PTR"],
        NEED_GX=c["NEED_GX"], FINALIZE=c["FINALIZE"], ACC=c["ACC"], BLOCK=block,
        RBLOCK=K.REDUCE_BLOCK, IDX64=largest >= _INT32_LIMIT, EVEN=even, NDIM=plan.ndim,
        X_CONTIG=contig[0], W_CONTIG=contig[1], ZX=zx, ZW=zw,
        RENDER=RENDERERS[render.renderer], RK=render.kind,
        RA=render.count, HAS_AUX=aux is not None,
        CHAN_UNIFORM=chan_size > 0 and chan_size % block == 0,
        W_CHANNEL=weight is not None and all(
            size == 1 or stride == 0 for size, stride in
            zip(shape[render.channel_dims:], operands[-1].stride()[render.channel_dims:])))


def _rows_plan(input, target, weight, rows: Rows, aux, n, denom_mult, rows_per_program,
               constexprs):
    """Launcher, integer arguments and constexprs of the row driver: rows addressed through
    the collapsed row shape input.shape[:-1] (four operands: input, target, weight, aux; the
    caller made each one's last dimension contiguous), columns contiguous."""
    row_shape = tuple(input.shape[:-1])

    def row_strides(t, k, cols):
        if t is None:
            return (0,) * len(row_shape)
        full = t.expand(row_shape + ((k,) if cols else ()))
        return full.stride()[:len(row_shape)]

    plan = collapse(row_shape, [input.stride()[:-1], row_strides(target, rows.kt, rows.t_cols),
                                row_strides(weight, 0, False),
                                row_strides(aux, rows.ka, True)])
    if plan.ndim > MAX_DIMS:
        raise ValueError(f"the rows of input {tuple(input.shape)} need more than {MAX_DIMS} "
                         f"dimensions with these strides; pass contiguous tensors")
    widths = (rows.kx, rows.kt, 1, max(rows.ka, 1))  # values per row of each operand
    major = row_major_strides(plan.sizes)
    row_contig = [plan.strides[k] == tuple(s * width for s in major)
                  for k, width in enumerate(widths)]
    zx, zt, zw, za = plan.zero_masks(4)
    # the largest element offset a launch forms: masked tail rows, gradients written contiguous
    largest = max([(n + rows_per_program) * max(widths)]
                  + [plan.max_offset(k) + width for k, width in enumerate(widths)])
    c = constexprs
    return FWD_ROWS, (n, denom_mult, *plan.kernel_args(4)), dict(
        MATH=c["MATH"], VARIANT=c["VARIANT"], HAS_W=c["HAS_W"], HAS_AUX=aux is not None,
        REDUCE=c["REDUCE"], DENOM=c["DENOM"], ZERO_SAFE=c["ZERO_SAFE"],
        HAS_LW_PTR=c["HAS_LW_PTR"], NEED_GX=c["NEED_GX"], NEED_GT=c["NEED_GT"],
        FINALIZE=c["FINALIZE"], ACC=c["ACC"], ROWS=rows_per_program, RBLOCK=K.REDUCE_BLOCK,
        IDX64=largest >= _INT32_LIMIT, NDIM=plan.ndim,
        KX=rows.kx, KT=rows.kt, KA=rows.ka, KXP=triton.next_power_of_2(rows.kx),
        KTP=triton.next_power_of_2(rows.kt), KAP=triton.next_power_of_2(max(rows.ka, 1)),
        X_RC=row_contig[0], T_RC=row_contig[1], W_RC=row_contig[2], A_RC=row_contig[3],
        ZX=zx, ZT=zt, ZW=zw, ZA=za, NOUT=rows.nout, KS=rows.ks)


AF_NONE, AF_VALUE, AF_TENSOR = 0, 1, 2
_PAD = [(0.0,) * (4 - k) for k in range(5)]  # hyper-parameters padded to p0..p3


def _build_plan(spec, variant, input, target, weight, reduction, af_kind, af_tensor, lw_tensor,
                class_index, need_gx, need_gt, ident: int, special, aux) -> ForwardPlan:
    render = special if isinstance(special, Render) else None
    rows = special if isinstance(special, Rows) else None
    meta = output_meta(input, target, weight, reduction, class_index, render is not None, rows)
    shape = tuple(input.shape)
    n = input.numel() if rows is None else math.prod(shape[:-1])
    block = rt.pick_block(n if rows is None else n * triton.next_power_of_2(rows.kx))
    if render is not None and rt._CONFIG["block"] is None and not rt.INTERPRETED:
        # a block that divides the channel (e.g. 1024 for 64 x 48 heatmaps): each block then
        # lies in one channel, whose data (and weight) are per-program scalars
        chan_size = math.prod(shape[render.channel_dims:])
        divisor = chan_size & -chan_size
        if divisor >= 1024 and n > 1024:
            block = min(divisor, block)
    warps = rt.num_warps(block)
    if rows is not None:  # a tile of ROWS rows of KXP columns
        tile = block
        if rt._CONFIG["block"] is None and not rt.INTERPRETED:
            # a row's math keeps tens of values alive (CIoU ~60): 1024 elements per program of
            # 4 warps (2 boxes, or half a 16-bin row, per thread) stay within 128 registers
            tile = min(tile, ROW_TILE)
        kxp = triton.next_power_of_2(rows.kx)
        block = max(1, tile // kxp)
        warps = rt.num_warps(tile)
        if ROW_IN_THREAD[0] <= kxp <= ROW_IN_THREAD[1]:
            # wide rows (DFL's bins, YOLO's 4 x 16 logits): one row per thread (the row
            # driver's V > 0), so a row's reductions need no shuffles and its scalar math
            # (YOLO's CIoU) runs once, not once per thread sharing the row; up to 64 values
            # per thread. gpuproxy sass, YOLO: see bench/NOTES.md
            vector = max(1, min(16 // input.element_size(), kxp))
            if rt._CONFIG["block"] is None and not rt.INTERPRETED:
                warps = min(4, ROW_IN_THREAD[2] // kxp)
                block = 32 * warps
        else:
            vector = 0
    grid = max(1, triton.cdiv(n, block))

    weight_sum, zero_safe, denom_mult = False, False, 1
    if reduction in ("none", "sum") or (reduction == "mean" and af_kind == AF_VALUE):
        denom = K.DENOM_ONE  # a Python avg_factor is folded into the loss_weight factor
    elif reduction == "mean" and af_kind == AF_TENSOR:
        denom = K.DENOM_TENSOR
    elif reduction == "mean" or weight is None:  # weighted_mean without a weight is the mean
        denom = K.DENOM_NUMEL
    else:
        denom, zero_safe, weight_sum = K.DENOM_TENSOR, True, True
        denom_mult = n // weight.numel() if weight.numel() else 1

    nout = 1 if rows is None else rows.nout
    if reduction == "none" or grid == 1:
        finalize = K.FINALIZE_SINGLE
    elif rt._CONFIG["one_launch"] and nout == 1:
        finalize = K.FINALIZE_TICKET
    else:
        finalize = K.FINALIZE_PARTIALS

    constexprs: dict[str, Any] = dict(
        MATH=spec.math, VARIANT=variant, HAS_W=weight is not None, T_INDEX=class_index,
        REDUCE=0 if reduction == "none" else 1, DENOM=denom, ZERO_SAFE=zero_safe,
        HAS_LW_PTR=lw_tensor is not None, NEED_GX=need_gx, NEED_GT=need_gt, FINALIZE=finalize,
        ACC=_TL_DTYPES[meta.acc_dtype], BLOCK=block, RBLOCK=K.REDUCE_BLOCK)
    even = n > 0 and n % block == 0
    span = grid * block  # linear indices a launch computes (masked beyond n)

    contiguous = (not class_index and input.is_contiguous() and target.is_contiguous()
                  and tuple(target.shape) == shape
                  and (weight is None or (weight.is_contiguous() and tuple(weight.shape) == shape)))
    copy_operands = False
    if rows is not None:
        launcher, ints, constexprs = _rows_plan(input, target, weight, rows, aux, n, denom_mult,
                                                block, constexprs)
        constexprs["V"] = vector
    elif render is not None:
        launcher, ints, constexprs = _rendered_plan(input, weight, render, aux, n, denom_mult,
                                                    block, span, even, constexprs)
    elif contiguous:  # the common case: no index arithmetic at all
        launcher, ints = FWD, (n, denom_mult)
        constexprs.update(IDX64=span >= _INT32_LIMIT, EVEN=even)
    else:
        t_view = target.unsqueeze(-1).expand(shape) if class_index else target.expand(shape)
        operands = [input, t_view] + ([weight.expand(shape)] if weight is not None else [])
        plan = collapse(shape, [op.stride() for op in operands])
        if plan.ndim > MAX_DIMS:  # rare: copy the operands rather than fail
            copy_operands = True
            plan = collapse(shape, [op.contiguous().stride() for op in operands])
        contig = plan.contiguous + ((True,) if weight is None else ())
        zx, zt, zw = plan.zero_masks()
        largest = max([span] + [plan.max_offset(k) + 1 for k in range(len(operands))])
        launcher, ints = FWD_STRIDED, (n, denom_mult, *plan.kernel_args())
        constexprs.update(IDX64=largest >= _INT32_LIMIT, EVEN=even, NDIM=plan.ndim,
                          X_CONTIG=contig[0], T_CONTIG=contig[1], W_CONTIG=contig[2],
                          ZX=zx, ZT=zt, ZW=zw, COL_IS_DIM0=class_index and shape[-1] != 1)

    gt_full_dtype = None
    gt_full_shape = shape if rows is None else tuple(
        target.expand(shape[:-1] + ((rows.kt,) if rows.t_cols else ())).shape)
    if need_gt:
        gt_full_dtype = meta.acc_dtype if meta.target_reduce_dims else meta.gt_dtype
    finalize_constexprs = dict(DENOM=denom, ZERO_SAFE=zero_safe,
                               HAS_LW_PTR=lw_tensor is not None, ACC=constexprs["ACC"],
                               RBLOCK=K.REDUCE_BLOCK, NOUT=nout)
    return ForwardPlan(meta, launcher, grid, ints, constexprs, warps, denom,
                       weight_sum, reduction != "none" and grid > 1,
                       reduction != "none" and finalize == K.FINALIZE_PARTIALS, copy_operands,
                       gt_full_dtype, finalize_constexprs,
                       input.is_contiguous() and meta.gx_dtype == input.dtype, gt_full_shape,
                       finalize == K.FINALIZE_TICKET, bool(rt._CONFIG["poison"]),
                       (ident, 0), (ident, 1), ident, (input.dtype, target.dtype), reduction,
                       reduction != "none" and need_gx and not need_gt
                       and meta.gx_dtype == input.dtype and nout == 1, nout,
                       rows.ks if rows is not None and nout > 1 else 0, render is not None,
                       launcher is FWD_RENDERED or launcher is FWD_ROWS)


_TICKETS: dict = {}


def _ticket_counter(device: torch.device) -> torch.Tensor:
    counter = _TICKETS.get(device)
    if counter is None:
        counter = _TICKETS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return counter


def launch_forward(spec, variant, input, target, weight, params, reduction, af_value, af_tensor,
                   lw_value, lw_tensor, class_index, need_gx, need_gt, special_call=None):
    """Run the fused forward. Returns (loss, G_input or None, G_target or None, plan, saved):
    ``saved`` is what a two-output row loss keeps per row for its backward (else None).

    ``special_call``: (Render, (r0, r1, r2, r3), aux tensor or None) when the target is
    rendered in the kernel from ``target`` (its per-channel data) instead of read; (Rows, (),
    aux tensor or None) for a row loss."""
    af_kind = AF_TENSOR if af_tensor is not None else AF_VALUE if af_value is not None else AF_NONE
    special, floats, aux = special_call if special_call is not None else (None, (), None)
    plan = forward_plan(spec, variant, input, target, weight, reduction, af_kind, af_tensor,
                        lw_tensor, class_index, need_gx, need_gt, special, aux)
    meta = plan.meta
    x, t, w = input, target, weight
    if plan.copy_operands:
        shape = tuple(input.shape)
        x = x.contiguous()
        t = (t.unsqueeze(-1) if class_index else t).expand(shape).contiguous()
        w = w.expand(shape).contiguous() if w is not None else None

    if plan.poison:
        out = rt.alloc(meta.loss_shape, meta.loss_dtype, input.device)
        gx = rt.alloc(input.shape, meta.gx_dtype, input.device) if need_gx else None
    else:  # the cheapest allocation calls (host time)
        out = input.new_empty(meta.loss_shape, dtype=meta.loss_dtype)
        gx = None
        if need_gx:
            gx = (torch.empty_like(input) if plan.gx_like_input
                  else input.new_empty(input.shape, dtype=meta.gx_dtype))
    gt_full = rt.alloc(plan.gt_full_shape, plan.gt_full_dtype, input.device) if need_gt else None
    partials = (rt.alloc((plan.grid * plan.nout,), meta.acc_dtype, input.device)
                if plan.partials else None)
    saved = (rt.alloc(input.shape[:-1] + (plan.nout_saved,), meta.acc_dtype, input.device)
             if need_gx and plan.nout_saved else None)
    counter = _ticket_counter(input.device) if plan.ticket else None

    lw_f = 1.0 if lw_value is None else lw_value
    if af_value is not None:
        lw_f = lw_f / af_value
    denom_ptr = None
    if plan.denom == K.DENOM_TENSOR:
        if plan.weight_sum:
            denom_ptr = weight.sum(dtype=meta.acc_dtype)
            rt.LAUNCH_COUNTS["torch.sum(weight)"] += 1
        else:
            denom_ptr = af_tensor
    p = params + _PAD[len(params)]

    ptrs = [x, t, w, out, gx, gt_full, partials, counter, denom_ptr, lw_tensor]
    if plan.takes_aux:
        kkey = (plan.ident, _aligned(x, t, w, af_tensor, lw_tensor, aux))
        ptrs.append(aux)
        if plan.launcher is FWD_ROWS:
            ptrs.append(saved)
        scalars = [plan.ints[0], plan.ints[1], lw_f, *p, *floats, *plan.ints[2:]]
    else:
        kkey = (plan.ident, _aligned(x, t, w, af_tensor, lw_tensor))
        scalars = [plan.ints[0], plan.ints[1], lw_f, *p, *plan.ints[2:]]
    plan.launcher(plan.grid, kkey, ptrs, scalars, plan.constexprs, plan.warps)
    if plan.finalize:
        FINALIZE(1, kkey, [partials, out, denom_ptr, lw_tensor],
                 [plan.grid, plan.ints[0], plan.ints[1], lw_f], plan.finalize_constexprs, 4)

    gt = gt_full
    if need_gt and meta.target_reduce_dims and reduction != "none":
        gt = gt_full.sum(dim=meta.target_reduce_dims, keepdim=True)
        gt = gt.reshape(meta.gt_shape).to(meta.gt_dtype)
    return out, gx, gt, plan, saved


# --------------------------------------------------------------------------- rescale

_RESCALE_PLANS: dict = {}
_MAX_PLANS = 4096
_IDENTS = itertools.count()


def rescale(g: torch.Tensor, out: torch.Tensor, go: torch.Tensor, *, ref=None,
            skip_if_equal: bool = False, base=None) -> None:
    """out = g * (go / ref) (ref = 1 unless given) on a persistent grid; with
    ``skip_if_equal`` nothing moves when go == ref (decided on the device).

    ``g`` and ``out`` are the engine's own buffers (16-byte aligned). ``base`` names ``g``'s
    (numel, dtype, device) in the key: a forward plan's (ident, slot), cheap to hash, or None.
    """
    if base is None:
        base = (g.numel(), g.dtype, g.device, rt.CONFIG_KEY)
    key = (base, out.dtype, go.dtype, skip_if_equal, go.data_ptr() % 16 == 0,
           None if ref is None else (ref.dtype, ref.data_ptr() % 16 == 0))
    entry = _RESCALE_PLANS.get(key)
    if entry is None:
        if len(_RESCALE_PLANS) >= _MAX_PLANS:
            _RESCALE_PLANS.clear()
            RESCALE.forget()
        n = g.numel()
        block = rt.pick_block(n)
        blocks = max(1, -(-n // block))
        grid = min(blocks, rt.persistent_programs(g.device))
        acc = tl.float64 if torch.float64 in (g.dtype, go.dtype) else tl.float32
        entry = _RESCALE_PLANS[key] = (grid, next(_IDENTS), [n, -(-blocks // grid)], dict(
            SKIP_IF_EQUAL=skip_if_equal, HAS_REF=ref is not None, ACC=acc, BLOCK=block,
            IDX64=blocks * block >= _INT32_LIMIT), rt.num_warps(block))
    grid, ident, scalars, constexprs, warps = entry
    RESCALE(grid, ident, [g, out, go, ref], scalars, constexprs, warps)


# --------------------------------------------------------------------------- two-output rows

def row_backward(spec, plan: ForwardPlan, x: torch.Tensor, g: torch.Tensor, out: torch.Tensor,
                 saved: torch.Tensor, go: torch.Tensor, ref: Optional[torch.Tensor],
                 spare: torch.Tensor) -> None:
    """out = beta G + gamma dA for a two-output row loss (``fused_row_loss_bwd_kernel``), with
    dA rebuilt from the input x and ``saved`` by the loss's ``spec.row_backward``; ``spare``
    (same shape as G) keeps G when the first backward's second grad_output is 0."""
    x = x if x.is_contiguous() else x.contiguous()
    kx = x.shape[-1]
    rows = plan.constexprs["ROWS"]
    n = x.numel() // kx
    key = (plan.ident, "bwd", ref is None, go.dtype, _aligned(x, go, ref))
    BWD_ROWS(max(1, -(-n // rows)), key, [x, g, out, saved, go, ref, spare], [n], dict(
        BWD=spec.row_backward, HAS_REF=ref is not None, ACC=plan.constexprs["ACC"], ROWS=rows,
        KX=kx, KXP=triton.next_power_of_2(kx), KS=plan.nout_saved,
        IDX64=plan.constexprs["IDX64"]), plan.warps)
