"""The fused elementwise-loss engine: one Triton driver every loss plugs its math into.

A loss supplies a ``@triton.jit`` function
``math(x, t, p0, p1, p2, p3, T_BINARY: constexpr, VARIANT: constexpr) -> (loss, dloss/dx, dloss/dt)``
over blocks in the accumulation dtype (T_BINARY: the target is known to be 0 or 1, e.g. a
one-hot made from class indices; VARIANT: a constant the loss derived from its hyper-parameters
on the host, e.g. an integer focal gamma). The engine does everything else in one pass:

    load x, t, w (each in its own dtype, broadcast by strides, never materialised)
    -> loss, gradient (the loss's math)
    -> zero-weight exclusion, weight, scale = loss_weight / denominator
    -> store the "none" output or the per-program partial sum, and the gradients

and the partials are summed in a fixed order (a separate tiny launch, the last program of the
same launch via an integer ticket, or directly when one program covers everything). No float
atomics: a result depends only on the inputs and the block size, never on scheduling.

Three drivers share that body (``_forward_block``):

* ``fused_loss_fwd_kernel``: every operand contiguous in input's shape. Offsets are the linear
  index, accesses are 16-byte vectors, and the launch takes 17 arguments (host time).
* ``fused_loss_fwd_strided_kernel``: broadcast or strided operands, addressed through the
  jointly collapsed (size, stride) dimensions of the launch (``fusedloss._plan``). The index
  arithmetic is int32 whenever every operand's addressed span fits (``IDX64`` off, chosen on
  the host as inductor does) and divides by the collapsed sizes with host-computed magic
  numbers (a multiply-high and a shift, ``_udiv``): no 64-bit division and no slow path in the
  per-element body. Contiguous operands skip the arithmetic; stride-0 dimensions of an operand
  (``Z*`` bit masks) cost nothing. Beyond 2^31 (``IDX64``) the arithmetic is int64 ``//``/``%``.
* ``fused_loss_fwd_rendered_kernel``: the target is not a tensor but rendered per element by
  the loss's own jit function from per-channel data (heatmaps from keypoints): 0 bytes of
  target traffic.

Row losses (one value per row of K inputs: boxes, distributions) have their own driver,
``fused_row_loss_fwd_kernel``, with the same contract over rows instead of elements.
Segment losses (a function of a few sums per (sample, class): Dice) have three kernels at the
end of this file: sums, a fixed-order finalize, and a gradient pass in the backward.

Bytes per element for fp32 x and t, bool w, gradient for x only (forward + backward):
read x 4 + read t 4 + read w 1 + write dx 4 = 13; the backward adds nothing when grad_output
equals the loss_weight the forward folded in (the rescale kernel moves no memory).
"""
import triton
import triton.language as tl

from .mathlib import COMPILED, fast_exp, fast_rcp

MAX_DIMS = 6  # collapsed dimensions the strided addressing handles (more: operands are copied)
REDUCE_BLOCK = 1024  # tile of the fixed-order sum over per-program partials

# denominator modes of the scale
DENOM_ONE = 0  # "sum" and "none"
DENOM_NUMEL = 1  # "mean"
DENOM_TENSOR = 2  # avg_factor tensor, or sum(weight) for "weighted_mean"

# Where two dimensions of a loaded tile have the same contiguity (1 and 1), Triton's coalescing
# pass breaks the tie differently by version (read from the TTGIR): triton 3.9 puts the
# threads on the later dimension, 3.6 on the earlier one. The two layouts that rely on it (a
# row per thread, a pixel's channels per thread) arrange their tiles by this flag so the
# threads land on the rows / pixels in both; versions between were not measured (either
# arrangement computes the same values).
TIES_TO_FIRST_DIM: tl.constexpr = tl.constexpr(
    tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9))


# how a scalar reduction's partials are finalised
FINALIZE_PARTIALS = 0  # write partials; finalize_kernel sums them (second launch)
FINALIZE_SINGLE = 1  # one program covers everything: it writes the result itself
FINALIZE_TICKET = 2  # integer ticket: the last program to finish sums the partials


@triton.jit
def store_rounded(ptr, val, mask):
    """Store ``val`` into ``ptr``'s dtype, rounding to nearest-even for bfloat16.

    The interpreter truncates fp32 -> bf16 (shared notes, triton-on-cpu.md section 3); there a
    bit-level round-to-nearest-even gives torch's bits. Compiled, the conversion is the GPU's
    own round-to-nearest-even (``cvt.rn.bf16``, 1 instruction per 2 values, not 6 per value).
    """
    if ptr.dtype.element_ty == tl.bfloat16 and not COMPILED:
        v = val.to(tl.float32)
        u = v.to(tl.uint32, bitcast=True)
        u = u + 0x7FFF + ((u >> 16) & 1)
        b = (u >> 16).to(tl.uint16)
        b = tl.where(v != v, 0x7FC0, b).to(tl.uint16)
        tl.store(ptr, b.to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swap01(v):
    """v with its first two dimensions swapped: a layout permutation, no data movement."""
    if len(v.shape) == 2:
        return tl.trans(v)
    else:
        return tl.permute(v, (1, 0, 2))


@triton.jit
def load_swapped(ptr, offs, mask, SWAP: tl.constexpr):
    """``tl.load(ptr + offs, mask, other=0)``, issued with the tile's first two dimensions
    swapped when SWAP, so that a tie in their contiguity gives the threads to the dimension
    the caller wants (see TIES_TO_FIRST_DIM); the tile comes back in the caller's order."""
    if SWAP:
        return _swap01(tl.load(ptr + _swap01(offs), mask=_swap01(mask), other=0.0))
    else:
        return tl.load(ptr + offs, mask=mask, other=0.0)


@triton.jit
def store_swapped(ptr, offs, val, mask, SWAP: tl.constexpr):
    """``store_rounded`` through the same arrangement as ``load_swapped``."""
    if SWAP:
        store_rounded(ptr + _swap01(offs), _swap01(val), _swap01(mask))
    else:
        store_rounded(ptr + offs, val, mask)


@triton.jit
def _udiv(rem, magic):
    """floor(rem / d) for int32 0 <= rem < 2^31, without a division instruction.

    ``magic`` = m + ((s + 1) << 32) from ``fusedloss._plan.udiv_magic(d)``: m = ceil(2^(31+l) / d),
    l = ceil(log2 d), s = l - 1, so floor(rem / d) = umulhi(rem, m) >> s exactly for every
    31-bit rem (Granlund & Montgomery 1994, Theorem 4.2 with N = 31; checked exhaustively at the
    edges in tests/test_engine.py).
    """
    magic = magic.to(tl.int64)
    m = (magic & 0xFFFFFFFF).to(tl.uint32)
    s = ((magic >> 32) - 1).to(tl.uint32)
    q = tl.umulhi(rem.to(tl.uint32, bitcast=True), m) >> s
    return q.to(tl.int32, bitcast=True)


@triton.jit
def _dim_step(rem, size, magic, sa, sb, sc, oa, ob, oc,
              LAST: tl.constexpr, IDX64: tl.constexpr,
              ZA: tl.constexpr, ZB: tl.constexpr, ZC: tl.constexpr):
    """Peel one collapsed dimension off the row-major index ``rem``; Z*: stride 0 (skip)."""
    if LAST:
        i = rem
    else:
        if IDX64:
            q = rem // size
        else:
            q = _udiv(rem, magic)
        i = rem - q * size
        rem = q
    if not ZA:
        oa += i * sa
    if not ZB:
        ob += i * sb
    if not ZC:
        oc += i * sc
    return rem, i, oa, ob, oc


@triton.jit
def operand_offsets(offs, NDIM: tl.constexpr, IDX64: tl.constexpr,
                    ZA: tl.constexpr, ZB: tl.constexpr, ZC: tl.constexpr,
                    n0, n1, n2, n3, n4, n5,
                    m0, m1, m2, m3, m4,
                    a0, a1, a2, a3, a4, a5,
                    b0, b1, b2, b3, b4, b5,
                    c0, c1, c2, c3, c4, c5):
    """Element offsets of three operands for the row-major launch indices ``offs``, and the
    index along the innermost collapsed dimension (the class column of a one-hot target).

    Dimension k = 0 is the innermost; n* are the collapsed sizes, m* their division magics,
    a*/b*/c* each operand's strides in elements; bit k of ZA/ZB/ZC says the operand's stride k
    is 0. Integer width follows ``offs`` (int32 unless IDX64).
    """
    rem = offs
    oa = tl.zeros_like(offs)
    ob = tl.zeros_like(offs)
    oc = tl.zeros_like(offs)
    col = tl.zeros_like(offs)
    if NDIM > 0:
        rem, col, oa, ob, oc = _dim_step(rem, n0, m0, a0, b0, c0, oa, ob, oc, NDIM == 1, IDX64,
                                         ZA & 1, ZB & 1, ZC & 1)
    if NDIM > 1:
        rem, _i, oa, ob, oc = _dim_step(rem, n1, m1, a1, b1, c1, oa, ob, oc, NDIM == 2, IDX64,
                                        (ZA >> 1) & 1, (ZB >> 1) & 1, (ZC >> 1) & 1)
    if NDIM > 2:
        rem, _i, oa, ob, oc = _dim_step(rem, n2, m2, a2, b2, c2, oa, ob, oc, NDIM == 3, IDX64,
                                        (ZA >> 2) & 1, (ZB >> 2) & 1, (ZC >> 2) & 1)
    if NDIM > 3:
        rem, _i, oa, ob, oc = _dim_step(rem, n3, m3, a3, b3, c3, oa, ob, oc, NDIM == 4, IDX64,
                                        (ZA >> 3) & 1, (ZB >> 3) & 1, (ZC >> 3) & 1)
    if NDIM > 4:
        rem, _i, oa, ob, oc = _dim_step(rem, n4, m4, a4, b4, c4, oa, ob, oc, NDIM == 5, IDX64,
                                        (ZA >> 4) & 1, (ZB >> 4) & 1, (ZC >> 4) & 1)
    if NDIM > 5:  # always the outermost: no division, no magic
        rem, _i, oa, ob, oc = _dim_step(rem, n5, m4, a5, b5, c5, oa, ob, oc, True, IDX64,
                                        (ZA >> 5) & 1, (ZB >> 5) & 1, (ZC >> 5) & 1)
    return oa, ob, oc, col


@triton.jit
def loss_scale(n, denom_ptr, denom_mult, lw_f, lw_ptr,
               DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
               ACC: tl.constexpr):
    """loss_weight / denominator, read on the device (no host sync).

    ZERO_SAFE ("weighted_mean"): a zero denominator gives scale 0, so loss and gradient are 0.
    """
    lw = tl.full([], lw_f, ACC)
    if HAS_LW_PTR:
        lw = lw * tl.load(lw_ptr).to(ACC)
    if DENOM == 0:
        scale = lw
    else:
        if DENOM == 1:
            denom = tl.cast(n, ACC)
        else:
            denom = tl.load(denom_ptr).to(ACC) * tl.cast(denom_mult, ACC)
        if ZERO_SAFE:
            safe = tl.where(denom != 0, denom, 1.0)
            scale = tl.where(denom != 0, lw / safe, 0.0)
        else:
            scale = lw / denom
    return scale


@triton.jit
def sum_partials(partial_ptr, count, ACC: tl.constexpr, RBLOCK: tl.constexpr):
    """Sum ``count`` partials in a fixed order (tile by tile, then a fixed tree)."""
    acc = tl.zeros([RBLOCK], ACC)
    # a while loop: triton 3.6's interpreter rejects range() over a runtime bound that was
    # passed into a nested jit function (3.9 accepts both)
    start = 0
    while start < count:
        idx = start + tl.arange(0, RBLOCK)
        acc += tl.load(partial_ptr + idx, mask=idx < count, other=0.0, cache_modifier=".cg")
        start += RBLOCK
    return tl.sum(acc, axis=0)


@triton.jit
def _reduce_block(pid, loss, scale, out_ptr, partial_ptr, counter_ptr,
                  FINALIZE: tl.constexpr, ACC: tl.constexpr, RBLOCK: tl.constexpr):
    """A program's share of a scalar reduction: the result itself when one program covers
    everything, else its partial sum (and, with the integer ticket, the last program sums the
    partials in a fixed order)."""
    block_sum = tl.sum(loss, axis=0)
    if FINALIZE == 1:
        store_rounded(out_ptr, block_sum * scale, None)
    else:
        tl.store(partial_ptr + pid, block_sum)
        if FINALIZE == 2:
            # make this program's partial visible before taking a ticket
            tl.debug_barrier()
            ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
            if ticket == tl.num_programs(0) - 1:
                total = sum_partials(partial_ptr, tl.num_programs(0), ACC, RBLOCK)
                store_rounded(out_ptr, total * scale, None)
                tl.store(counter_ptr, 0)  # ready for the next call, no memset launch


@triton.jit
def _forward_block(pid, offs, mask, ox, ot, ow, col, t_given,
                   x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr,
                   denom_ptr, lw_ptr, n, denom_mult, lw_f, p0, p1, p2, p3,
                   MATH: tl.constexpr, VARIANT: tl.constexpr,
                   HAS_W: tl.constexpr, T_INDEX: tl.constexpr, REDUCE: tl.constexpr,
                   DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
                   NEED_GX: tl.constexpr, NEED_GT: tl.constexpr, FINALIZE: tl.constexpr,
                   ACC: tl.constexpr, RBLOCK: tl.constexpr, FULL: tl.constexpr):
    """The body every driver shares: offsets in, loss / gradients / partials out. ``t_given``:
    the target's values when the driver computed them (else None: loaded, or a one-hot).

    FULL (the block lies inside [0, n)): no bounds mask at all, so loads and stores are
    unpredicated 16-byte vectors (a mask ``offs < n`` with n not a multiple of 16 would make
    them scalar) and no register needs a zero fill. Otherwise masked-off lanes load nothing and
    are never used: no ``other=`` fill.
    """
    if FULL:
        mask = None
    x = tl.load(x_ptr + ox, mask=mask).to(ACC)
    if t_given is not None:  # computed by the driver (a target rendered in the kernel)
        t = t_given.to(ACC)
    elif T_INDEX:
        # integer class index per row: one-hot on the fly (a compare against the column),
        # never materialised
        cls = tl.load(t_ptr + ot, mask=mask)
        t = tl.where(cls == col, 1.0, 0.0).to(ACC)
    else:
        t = tl.load(t_ptr + ot, mask=mask).to(ACC)
    if HAS_W:
        w = tl.load(w_ptr + ow, mask=mask).to(ACC)
        if FULL:
            keep = w != 0
        else:
            keep = mask & (w != 0)
        # a zero weight excludes the element even where x or t is NaN/inf
        x = tl.where(keep, x, 0.0)
        t = tl.where(keep, t, 0.0)

    loss, dx, dt = MATH(x, t, p0, p1, p2, p3, T_INDEX, VARIANT)

    if HAS_W:
        loss = tl.where(keep, loss * w, 0.0)
        dx = tl.where(keep, dx * w, 0.0)
        dt = tl.where(keep, dt * w, 0.0)
    elif not FULL:
        loss = tl.where(mask, loss, 0.0)  # garbage lanes must not reach the sum

    scale = loss_scale(n, denom_ptr, denom_mult, lw_f, lw_ptr, DENOM, ZERO_SAFE, HAS_LW_PTR, ACC)
    if NEED_GX:
        store_rounded(gx_ptr + offs, dx * scale, mask)
    if NEED_GT:
        store_rounded(gt_ptr + offs, dt * scale, mask)

    if REDUCE == 0:
        store_rounded(out_ptr + offs, loss * scale, mask)
    else:
        _reduce_block(pid, loss, scale, out_ptr, partial_ptr, counter_ptr, FINALIZE, ACC, RBLOCK)


@triton.jit
def _forward_split(pid, offs, ox, ot, ow, col, t_given,
                   x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr,
                   denom_ptr, lw_ptr, n, denom_mult, lw_f, p0, p1, p2, p3,
                   MATH: tl.constexpr, VARIANT: tl.constexpr,
                   HAS_W: tl.constexpr, T_INDEX: tl.constexpr, REDUCE: tl.constexpr,
                   DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
                   NEED_GX: tl.constexpr, NEED_GT: tl.constexpr, FINALIZE: tl.constexpr,
                   ACC: tl.constexpr, RBLOCK: tl.constexpr, BLOCK: tl.constexpr,
                   EVEN: tl.constexpr):
    """Every block but the last of a launch is full: it runs the mask-free body, and only the
    tail block pays for bounds masks (EVEN, n a multiple of BLOCK on the host: no tail)."""
    if EVEN or (pid + 1) * BLOCK <= n:
        _forward_block(pid, offs, None, ox, ot, ow, col, t_given,
                       x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr,
                       denom_ptr, lw_ptr, n, denom_mult, lw_f, p0, p1, p2, p3,
                       MATH, VARIANT, HAS_W, T_INDEX, REDUCE, DENOM, ZERO_SAFE, HAS_LW_PTR,
                       NEED_GX, NEED_GT, FINALIZE, ACC, RBLOCK, True)
    else:
        _forward_block(pid, offs, offs < n, ox, ot, ow, col, t_given,
                       x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr,
                       denom_ptr, lw_ptr, n, denom_mult, lw_f, p0, p1, p2, p3,
                       MATH, VARIANT, HAS_W, T_INDEX, REDUCE, DENOM, ZERO_SAFE, HAS_LW_PTR,
                       NEED_GX, NEED_GT, FINALIZE, ACC, RBLOCK, False)


@triton.jit
def _block_offsets(BLOCK: tl.constexpr, IDX64: tl.constexpr):
    pid = tl.program_id(0)
    if IDX64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    return pid, offs


# Integer arguments are specialised by the runtime: a value of 1 becomes a compile-time constant
# (no ``.to``: convert with tl.cast) and divisibility by 16 is recorded, which lets masked loads
# and stores be vectorised. Do not mark n do_not_specialize: that drops the divisibility too.
@triton.jit
def fused_loss_fwd_kernel(
    x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr, denom_ptr, lw_ptr,
    n, denom_mult, lw_f, p0, p1, p2, p3,
    MATH: tl.constexpr, VARIANT: tl.constexpr,
    HAS_W: tl.constexpr, T_INDEX: tl.constexpr, REDUCE: tl.constexpr,
    DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
    NEED_GX: tl.constexpr, NEED_GT: tl.constexpr, FINALIZE: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, RBLOCK: tl.constexpr, IDX64: tl.constexpr,
    EVEN: tl.constexpr,
):
    """Every operand contiguous in input's shape (a class-index target only when C == 1)."""
    pid, offs = _block_offsets(BLOCK, IDX64)
    _forward_split(pid, offs, offs, offs, offs, tl.zeros_like(offs), None,
                   x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr,
                   denom_ptr, lw_ptr, n, denom_mult, lw_f, p0, p1, p2, p3,
                   MATH, VARIANT, HAS_W, T_INDEX, REDUCE, DENOM, ZERO_SAFE, HAS_LW_PTR,
                   NEED_GX, NEED_GT, FINALIZE, ACC, RBLOCK, BLOCK, EVEN)


@triton.jit
def fused_loss_fwd_strided_kernel(
    x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr, denom_ptr, lw_ptr,
    n, denom_mult, lw_f, p0, p1, p2, p3,
    n0, n1, n2, n3, n4, n5,
    m0, m1, m2, m3, m4,
    sx0, sx1, sx2, sx3, sx4, sx5,
    st0, st1, st2, st3, st4, st5,
    sw0, sw1, sw2, sw3, sw4, sw5,
    MATH: tl.constexpr, VARIANT: tl.constexpr,
    HAS_W: tl.constexpr, T_INDEX: tl.constexpr, REDUCE: tl.constexpr,
    DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
    NEED_GX: tl.constexpr, NEED_GT: tl.constexpr, FINALIZE: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, RBLOCK: tl.constexpr, IDX64: tl.constexpr,
    EVEN: tl.constexpr, NDIM: tl.constexpr, X_CONTIG: tl.constexpr, T_CONTIG: tl.constexpr, W_CONTIG: tl.constexpr,
    ZX: tl.constexpr, ZT: tl.constexpr, ZW: tl.constexpr, COL_IS_DIM0: tl.constexpr,
):
    """Broadcast / strided operands (see the module docstring). COL_IS_DIM0: the innermost
    collapsed dimension is the class dimension of a class-index target (else C == 1)."""
    pid, offs = _block_offsets(BLOCK, IDX64)
    ox, ot, ow, col = operand_offsets(offs, NDIM, IDX64, ZX, ZT, ZW,
                                      n0, n1, n2, n3, n4, n5, m0, m1, m2, m3, m4,
                                      sx0, sx1, sx2, sx3, sx4, sx5,
                                      st0, st1, st2, st3, st4, st5,
                                      sw0, sw1, sw2, sw3, sw4, sw5)
    if X_CONTIG:
        ox = offs
    if T_CONTIG:
        ot = offs
    if W_CONTIG:
        ow = offs
    if not COL_IS_DIM0:
        col = tl.zeros_like(offs)
    _forward_split(pid, offs, ox, ot, ow, col, None,
                   x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr,
                   denom_ptr, lw_ptr, n, denom_mult, lw_f, p0, p1, p2, p3,
                   MATH, VARIANT, HAS_W, T_INDEX, REDUCE, DENOM, ZERO_SAFE, HAS_LW_PTR,
                   NEED_GX, NEED_GT, FINALIZE, ACC, RBLOCK, BLOCK, EVEN)


@triton.jit
def fused_loss_fwd_rendered_kernel(
    x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr, denom_ptr, lw_ptr,
    aux_ptr,
    n, denom_mult, lw_f, p0, p1, p2, p3,
    r0, r1, r2, r3, k0, k1, chan_size, chan_magic, channels,
    n0, n1, n2, n3, n4, n5,
    m0, m1, m2, m3, m4,
    sx0, sx1, sx2, sx3, sx4, sx5,
    sw0, sw1, sw2, sw3, sw4, sw5,
    MATH: tl.constexpr, VARIANT: tl.constexpr,
    HAS_W: tl.constexpr, REDUCE: tl.constexpr,
    DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
    NEED_GX: tl.constexpr, FINALIZE: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, RBLOCK: tl.constexpr, IDX64: tl.constexpr,
    EVEN: tl.constexpr, NDIM: tl.constexpr, X_CONTIG: tl.constexpr, W_CONTIG: tl.constexpr,
    ZX: tl.constexpr, ZW: tl.constexpr,
    RENDER: tl.constexpr, RK: tl.constexpr, RA: tl.constexpr, HAS_AUX: tl.constexpr,
    CHAN_UNIFORM: tl.constexpr, W_CHANNEL: tl.constexpr,
):
    """A target rendered in the kernel from per-channel data, never read from memory.

    input.shape is (channels, chan_size) row-major (e.g. (B*K, H*W) heatmaps): element ``offs``
    lies in channel ``offs // chan_size`` at position ``offs % chan_size`` there. The loss's
    renderer, ``RENDER(c, p, t_ptr, aux_ptr, r0..r3, k0, k1, RK, RA, HAS_AUX, ACC)``, turns
    that into the target value (``t_ptr``/``aux_ptr``: its per-channel data, e.g. keypoints and
    visibility; r*/k*: its float and integer parameters; RK/RA: its constexpr kind and
    count). CHAN_UNIFORM (chan_size a multiple of BLOCK): a block lies in one channel, so its
    channel and per-channel data are per-program scalars, and so is a weight that is constant
    within a channel (W_CHANNEL, e.g. (B, K, 1, 1)). Input and weight are otherwise addressed
    as in the strided driver; there is no target gradient.
    """
    pid, offs = _block_offsets(BLOCK, IDX64)
    ox, _ot, ow, _col = operand_offsets(offs, NDIM, IDX64, ZX, 63, ZW,
                                        n0, n1, n2, n3, n4, n5, m0, m1, m2, m3, m4,
                                        sx0, sx1, sx2, sx3, sx4, sx5,
                                        sx0, sx1, sx2, sx3, sx4, sx5,
                                        sw0, sw1, sw2, sw3, sw4, sw5)
    if X_CONTIG:
        ox = offs
    if W_CONTIG:
        ow = offs
    if CHAN_UNIFORM and W_CHANNEL:  # one weight per channel, one channel per block: a scalar
        _ox, _ot, ow, _col = operand_offsets(pid * BLOCK, NDIM, IDX64, ZX, 63, ZW,
                                             n0, n1, n2, n3, n4, n5, m0, m1, m2, m3, m4,
                                             sx0, sx1, sx2, sx3, sx4, sx5,
                                             sx0, sx1, sx2, sx3, sx4, sx5,
                                             sw0, sw1, sw2, sw3, sw4, sw5)
    if CHAN_UNIFORM:
        c = (pid * BLOCK) // chan_size
    else:
        if IDX64:
            c = offs // chan_size
        else:
            c = _udiv(offs, chan_magic)
        c = tl.minimum(c, channels - 1)  # lanes past n (masked later) keep a valid channel
    t = RENDER(c, offs - c * chan_size, t_ptr, aux_ptr, r0, r1, r2, r3, k0, k1,
               RK, RA, HAS_AUX, ACC)
    _forward_split(pid, offs, ox, ox, ow, ox, t,
                   x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr,
                   denom_ptr, lw_ptr, n, denom_mult, lw_f, p0, p1, p2, p3,
                   MATH, VARIANT, HAS_W, False, REDUCE, DENOM, ZERO_SAFE, HAS_LW_PTR,
                   NEED_GX, False, FINALIZE, ACC, RBLOCK, BLOCK, EVEN)


@triton.jit
def _row_offsets(r, RC: tl.constexpr, K: tl.constexpr, o):
    """Row start of an operand: r * K when its rows are contiguous (RC), else the strided
    offset ``o`` of row r."""
    if RC:
        return r * K
    else:
        return o


@triton.jit
def fused_row_loss_fwd_kernel(
    x_ptr, t_ptr, w_ptr, out_ptr, gx_ptr, gt_ptr, partial_ptr, counter_ptr, denom_ptr, lw_ptr,
    aux_ptr, saved_ptr,
    n, denom_mult, lw_f, p0, p1, p2, p3,
    n0, n1, n2, n3, n4, n5,
    m0, m1, m2, m3, m4,
    sx0, sx1, sx2, sx3, sx4, sx5,
    st0, st1, st2, st3, st4, st5,
    sw0, sw1, sw2, sw3, sw4, sw5,
    sa0, sa1, sa2, sa3, sa4, sa5,
    MATH: tl.constexpr, VARIANT: tl.constexpr,
    HAS_W: tl.constexpr, HAS_AUX: tl.constexpr, REDUCE: tl.constexpr,
    DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
    NEED_GX: tl.constexpr, NEED_GT: tl.constexpr, FINALIZE: tl.constexpr,
    ACC: tl.constexpr, ROWS: tl.constexpr, RBLOCK: tl.constexpr, IDX64: tl.constexpr,
    NDIM: tl.constexpr, KX: tl.constexpr, KT: tl.constexpr, KA: tl.constexpr,
    KXP: tl.constexpr, KTP: tl.constexpr, KAP: tl.constexpr,
    X_RC: tl.constexpr, T_RC: tl.constexpr, W_RC: tl.constexpr, A_RC: tl.constexpr,
    ZX: tl.constexpr, ZT: tl.constexpr, ZW: tl.constexpr, ZA: tl.constexpr,
    NOUT: tl.constexpr, KS: tl.constexpr, V: tl.constexpr,
):
    """Row losses: one loss value per row of KX input values (boxes: 4 coordinates;
    distributions: n bins), against rows of KT target values and KA auxiliary values (e.g. an
    anchor point), weighted per row.

    A program takes ROWS rows as a (ROWS, KXP) tile (KXP = KX rounded up to a power of two;
    masked columns load 0). Rows are addressed like elements in the strided driver (the row
    index over input.shape[:-1], collapsed, int32 unless IDX64), columns are contiguous. The
    loss's ``MATH(x, t, a, gs, p0..p3, VARIANT, KX, KT, KA) -> (loss[ROWS], dx[ROWS, KXP],
    dt[ROWS, KTP])`` works on whole rows (reductions along a row are its own) and returns the
    gradients already multiplied by ``gs[ROWS]`` (weight x scale, 0 for excluded rows: a loss
    folds it into its per-row factors, e.g. YOLO's, before the per-value products); everything
    else (zero-weight exclusion, weight, scale, reduction over rows, gradients written in the
    forward) is the engine's, as for elementwise losses. ``n`` is the number of rows ("mean"
    divides by it); outputs and gradients are contiguous.

    V > 0 (wide rows: DFL's bins, YOLO's 4 x 16 logits): each thread holds whole rows. The
    input is loaded as a (ROWS, KXP / V, V) tile of V-element vectors (16 bytes): only V has
    contiguity above 1, and ``load_swapped`` issues the load so that the tie between the row
    and chunk dimensions gives the threads to the rows (TIES_TO_FIRST_DIM), not to a row's
    columns; the reshape to (ROWS, KXP) moves no data. A row's reductions stay inside one
    thread (no shuffles) and its scalar math (YOLO's CIoU) runs once, not once per thread
    sharing the row (gpuproxy sass, YOLO fp32: 62 -> 20 instructions per logit, see
    bench/NOTES.md). The gradient is stored through the same arrangement. A warp's 16-byte loads then touch 32 rows' sectors
    at once, the other half of each sector coming from L1 on the next load: DRAM bytes are
    unchanged.

    NOUT == 2: a loss of two terms (YOLO's IoU and DFL), each reduced into its own output; MATH
    then returns (loss[ROWS, 2], dx, dt, saved[ROWS, KS]): dx is the gradient of the sum of the
    terms, and ``saved`` (scaled like dx, stored per row) lets ``fused_row_loss_bwd_kernel``
    rebuild the first term's part of dx when the two outputs' grad_outputs differ.
    """
    pid = tl.program_id(0)
    if IDX64:
        r = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    else:
        r = pid * ROWS + tl.arange(0, ROWS)
    rmask = r < n
    ox, ot, ow, _c = operand_offsets(r, NDIM, IDX64, ZX, ZT, ZW,
                                     n0, n1, n2, n3, n4, n5, m0, m1, m2, m3, m4,
                                     sx0, sx1, sx2, sx3, sx4, sx5,
                                     st0, st1, st2, st3, st4, st5,
                                     sw0, sw1, sw2, sw3, sw4, sw5)
    ox = _row_offsets(r, X_RC, KX, ox)
    ot = _row_offsets(r, T_RC, KT, ot)
    if W_RC:
        ow = r
    if HAS_W:
        w = tl.load(w_ptr + ow, mask=rmask, other=0).to(ACC)
        keep = rmask & (w != 0)
    else:
        keep = rmask
    # a zero weight excludes the row even where its values are NaN/inf: its values are not
    # read (they load as 0; YOLO's background anchors then cost no input bytes)
    cx = tl.arange(0, KXP)
    ct = tl.arange(0, KTP)
    xmask = rmask[:, None] & (cx < KX)[None, :]
    tmask = rmask[:, None] & (ct < KT)[None, :]
    if V > 0:  # rows in threads: (ROWS, KXP / V, V) vectors, see the docstring
        cx3 = (tl.arange(0, KXP // V)[None, :, None] * V + tl.arange(0, V)[None, None, :])
        xmask3 = rmask[:, None, None] & (cx3 < KX)
        x = load_swapped(x_ptr, ox[:, None, None] + cx3, keep[:, None, None] & (cx3 < KX),
                         not TIES_TO_FIRST_DIM)
        x = tl.reshape(x.to(ACC), [ROWS, KXP])
    else:
        x = tl.load(x_ptr + ox[:, None] + cx[None, :], mask=keep[:, None] & (cx < KX)[None, :],
                    other=0.0).to(ACC)
    t = tl.load(t_ptr + ot[:, None] + ct[None, :], mask=keep[:, None] & (ct < KT)[None, :],
                other=0.0).to(ACC)
    a = None
    if HAS_AUX:
        oa, _o2, _o3, _c2 = operand_offsets(r, NDIM, IDX64, ZA, 63, 63,
                                            n0, n1, n2, n3, n4, n5, m0, m1, m2, m3, m4,
                                            sa0, sa1, sa2, sa3, sa4, sa5,
                                            sa0, sa1, sa2, sa3, sa4, sa5,
                                            sa0, sa1, sa2, sa3, sa4, sa5)
        oa = _row_offsets(r, A_RC, KA, oa)
        ca = tl.arange(0, KAP)
        a = tl.load(aux_ptr + oa[:, None] + ca[None, :],
                    mask=keep[:, None] & (ca < KA)[None, :], other=0.0).to(ACC)

    scale = loss_scale(n, denom_ptr, denom_mult, lw_f, lw_ptr, DENOM, ZERO_SAFE, HAS_LW_PTR, ACC)
    # the gradients' factor per row, folded in by the loss (x, t, a are 0 in excluded rows, so
    # their gradients are finite there and become 0)
    if HAS_W:
        gs = tl.where(keep, w * scale, 0.0)
    else:
        gs = tl.where(keep, scale, 0.0)
    if NOUT == 1:
        loss, dx, dt = MATH(x, t, a, gs, p0, p1, p2, p3, VARIANT, KX, KT, KA)
    else:
        loss2, dx, dt, saved = MATH(x, t, a, gs, p0, p1, p2, p3, VARIANT, KX, KT, KA)
        loss, loss_b = tl.split(loss2)

    if HAS_W:
        loss = loss * w
    loss = tl.where(keep, loss, 0.0)
    if NOUT == 2:
        if HAS_W:
            loss_b = loss_b * w
        loss_b = tl.where(keep, loss_b, 0.0)
        cs = tl.arange(0, saved.shape[1])
        if NEED_GX:
            store_rounded(saved_ptr + r[:, None] * KS + cs[None, :],
                          tl.where(keep[:, None], saved, 0.0),
                          rmask[:, None] & (cs < KS)[None, :])
        if REDUCE == 0:
            store_rounded(out_ptr + r * 2 + 1, loss_b * scale, rmask)
        else:
            if FINALIZE == 1:  # one program: no partials buffer
                _reduce_block(pid, loss_b, scale, out_ptr + 1, partial_ptr, counter_ptr,
                              FINALIZE, ACC, RBLOCK)
            else:
                _reduce_block(pid, loss_b, scale, out_ptr + 1,
                              partial_ptr + tl.num_programs(0), counter_ptr, FINALIZE, ACC,
                              RBLOCK)
    if NEED_GX:
        if V > 0:
            store_swapped(gx_ptr, r[:, None, None] * KX + cx3,
                          tl.reshape(dx, [ROWS, KXP // V, V]), xmask3, not TIES_TO_FIRST_DIM)
        else:
            store_rounded(gx_ptr + r[:, None] * KX + cx[None, :], dx, xmask)
    if NEED_GT:
        store_rounded(gt_ptr + r[:, None] * KT + ct[None, :], dt, tmask)
    if REDUCE == 0:
        store_rounded(out_ptr + r * NOUT, loss * scale, rmask)
    else:
        _reduce_block(pid, loss, scale, out_ptr, partial_ptr, counter_ptr, FINALIZE, ACC, RBLOCK)


@triton.jit
def fused_row_loss_bwd_kernel(x_ptr, g_ptr, out_ptr, saved_ptr, go_ptr, ref_ptr, spare_ptr, n,
                              BWD: tl.constexpr, HAS_REF: tl.constexpr, ACC: tl.constexpr,
                              ROWS: tl.constexpr, KX: tl.constexpr, KXP: tl.constexpr,
                              KS: tl.constexpr, IDX64: tl.constexpr):
    """The backward of a two-output row loss (NOUT == 2): the forward wrote
    G = dA + dB for grad_outputs (1, 1) and saved what ``BWD(x, saved) -> dA`` needs.

    First backward (HAS_REF False), grad_outputs (a, b), in place (out is G):

        out = b G + (a - b) dA

    decided on the device: (1, 1) moves no memory, a == b reads no input (a plain rescale),
    else the input is read again to rebuild dA. If b == 0 the result no longer holds dB, so G
    is first copied to ``spare`` (only then: no traffic otherwise).
    Later backward of a retained graph (HAS_REF, ref = the first (a, b), out a fresh buffer):
    from G' = ra dA + rb dB (or from the spare copy, (1, 1), when rb == 0),

        out = beta G' + gamma dA,   beta = b / rb,   gamma = a - b ra / rb.
    """
    pid = tl.program_id(0)
    a = tl.load(go_ptr).to(ACC)
    b = tl.load(go_ptr + 1).to(ACC)
    if IDX64:
        r = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    else:
        r = pid * ROWS + tl.arange(0, ROWS)
    cx = tl.arange(0, KX if KX == KXP else KXP)
    colmask = (cx < KX)[None, :]
    offs = r[:, None] * KX + cx[None, :]
    if HAS_REF:
        ra = tl.load(ref_ptr).to(ACC)
        rb = tl.load(ref_ptr + 1).to(ACC)
        lim_spare = tl.where(rb == 0.0, n, 0)  # G' lost dB: read the spare copy of G instead
        ra = tl.where(rb == 0.0, 1.0, ra)
        rb = tl.where(rb == 0.0, 1.0, rb)
        beta = b / rb
        gamma = a - b * (ra / rb)
        rmask = r < n
        xmask = rmask[:, None] & colmask
        g = (tl.load(g_ptr + offs, mask=(r < n - lim_spare)[:, None] & colmask, other=0.0)
             + tl.load(spare_ptr + offs, mask=(r < lim_spare)[:, None] & colmask, other=0.0))
        g = g.to(ACC)
    else:
        beta = b
        gamma = a - b
        moves = tl.where(beta != 1.0, 1, 0) + tl.where(gamma != 0.0, 1, 0)
        rmask = r < tl.where(moves > 0, n, 0)
        xmask = rmask[:, None] & colmask
        g = tl.load(g_ptr + offs, mask=xmask, other=0.0)
        lim_keep = tl.where(b == 0.0, n, 0)
        tl.store(spare_ptr + offs, g, mask=(r < lim_keep)[:, None] & colmask)
        g = g.to(ACC)
    extra = r < tl.where(gamma != 0.0, n, 0)
    extra = extra & rmask
    x = tl.load(x_ptr + offs, mask=extra[:, None] & colmask, other=0.0).to(ACC)
    cs = tl.arange(0, KS)
    sv = tl.load(saved_ptr + r[:, None] * KS + cs[None, :], mask=extra[:, None],
                 other=0.0).to(ACC)
    d_first = BWD(x, sv, KX)
    store_rounded(out_ptr + offs, beta * g + gamma * d_first, xmask)


@triton.jit
def finalize_kernel(partial_ptr, out_ptr, denom_ptr, lw_ptr,
                    count, n, denom_mult, lw_f,
                    DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
                    ACC: tl.constexpr, RBLOCK: tl.constexpr, NOUT: tl.constexpr):
    """out[k] = scale * (sum of output k's ``count`` partials), k < NOUT (partials of output
    k at partial_ptr + k * count)."""
    scale = loss_scale(n, denom_ptr, denom_mult, lw_f, lw_ptr, DENOM, ZERO_SAFE, HAS_LW_PTR, ACC)
    for k in tl.static_range(NOUT):
        total = sum_partials(partial_ptr + k * count, count, ACC, RBLOCK)
        store_rounded(out_ptr + k, total * scale, None)


@triton.jit
def rescale_kernel(g_ptr, out_ptr, go_ptr, ref_ptr, n, iters,
                   SKIP_IF_EQUAL: tl.constexpr, HAS_REF: tl.constexpr,
                   ACC: tl.constexpr, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """out = g * (grad_output / ref), ref = 1 unless given; a grid-stride loop over a
    persistent grid (a few programs per SM), ``iters`` blocks per program at most.

    SKIP_IF_EQUAL (in place, first backward): when grad_output == ref every program leaves its
    loop before the first iteration, decided on the device: the backward moves no memory,
    costs one small launch and never syncs the host. The block index times the constexpr BLOCK
    keeps every access a 16-byte vector (checked in tests/compile_for_gpu.py).
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    go = tl.load(go_ptr).to(ACC)
    if HAS_REF:
        ref = tl.load(ref_ptr).to(ACC)
    else:
        ref = tl.full([], 1.0, ACC)
    factor = go / ref
    todo = iters
    if SKIP_IF_EQUAL:
        todo = tl.where(go != ref, iters, 0)
    i = 0
    # a while loop: the triton 3.6 interpreter cannot range() over a device-decided bound
    while i < todo:
        if IDX64:
            start = (pid + i * nprog).to(tl.int64) * BLOCK
        else:
            start = (pid + i * nprog) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        store_rounded(out_ptr + offs, g * factor, mask)
        i += 1


# --------------------------------------------------------------------------- segment losses
# A segment loss (Dice) is not a sum of per-element terms: per segment (one (sample, class), or
# one class over the batch) it is a function of a few sums over the segment's elements, so its
# gradient needs those sums before it can be written. Three launches:
#
#   fused_segment_sums_kernel   read x (and t) once: per-program partial sums, per channel
#   segment_finalize_kernel     fixed-order sum of the partials, the loss per segment (the
#                               loss's SEG math), the reduction, and per segment the
#                               coefficients c_k = dL/dS_k the gradient needs
#   fused_segment_grad_kernel   (backward) read x and t again, write dL/dx = chain(sum_k c_k
#                               dq_k/dp) with grad_output folded in
#
# Bytes, fp32 x and t, forward + backward: 4 + 4 (sums) + 4 + 4 + 4 (gradient) = 20 per element
# (an integer class-index target: 8 B per pixel for C channels, i.e. 8/C per element). The
# gradient could instead be written by a second forward pass: the same bytes, but paid even
# without a backward, a gradient buffer held from forward to backward, and grad_output applied
# by one more pass when it is not 1; the backward pass folds grad_output in for free.
#
# Tiles are (channels, pixels) of one image: [CP, BLOCK_S] with CP = next_pow2(C), every
# channel of a pixel in one program, so a softmax over the channels needs no second pass.
# Layout: channel-first contiguous (B, C, S) (what conv nets produce); the loads are
# contiguous along the pixels of each channel.
#
# PIX > 0 (2 <= CP <= 32): every channel of a pixel in one thread. The pixel offsets carry a
# contiguity hint of PIX (PIX pixels, <= 16 bytes, per thread), so the coalescing pass puts
# the threads and warps on the pixels (BLOCK_S = 32 x warps x PIX) and each thread holds all
# CP channels: the softmax's max and sum over the channels stay in registers (no shuffles, no
# shared memory), and since C is a constexpr and a register's channel is known at compile
# time, the padded channels (C = 21 -> 32) compile away. A warp's load is 32 threads x PIX
# consecutive pixels of one channel: coalesced (gpuproxy sass: bench/NOTES.md).

ACT_NONE = 0  # probabilities given
ACT_SIGMOID = 1
ACT_SOFTMAX = 2  # over the channel dimension


@triton.jit
def _segment_tile(x_ptr, t_ptr, b, s0, S, C: tl.constexpr, ACT: tl.constexpr,
                  T_INDEX: tl.constexpr, ACC: tl.constexpr, CP: tl.constexpr,
                  BLOCK_S: tl.constexpr, EVEN_S: tl.constexpr, IDX64: tl.constexpr,
                  PIX: tl.constexpr):
    """Channels x pixels [CP, BLOCK_S] of image b from pixel s0: (x, p = activation(x), t,
    mask, offsets). p and t are 0 outside the image's channels and pixels (so products and
    sums of them need no mask); x is 0 there. EVEN_S: the tile lies inside the image (only the
    channel mask, a per-thread constant, remains; none when C == CP). One reciprocal per pixel
    (softmax) or element (sigmoid) on the SFU (``fast_rcp``: rcp.approx, 1 ulp), exponentials
    as ex2.approx (``fast_exp``)."""
    c = tl.arange(0, CP)
    s = s0 + tl.arange(0, BLOCK_S)
    if PIX > 0:  # channels in threads: see the section comment
        s = tl.max_contiguous(tl.multiple_of(s, PIX), PIX)
    if IDX64:
        bb = b.to(tl.int64)
        s = s.to(tl.int64)
    else:
        bb = b
    cmask = c < C
    smask = s < S
    if EVEN_S:
        mask = cmask[:, None] & (s >= 0)[None, :]
    else:
        mask = cmask[:, None] & smask[None, :]
    offs = (bb * C + c[:, None]) * S + s[None, :]
    # PIX > 0: both dimensions have contiguity 1 when PIX == 1; the threads go to the pixels
    x = load_swapped(x_ptr, offs, mask, PIX > 0 and TIES_TO_FIRST_DIM).to(ACC)
    if ACT == 1:
        e = fast_exp(-tl.abs(x))
        r = fast_rcp(1.0 + e)
        p = tl.where(mask, tl.where(x >= 0, r, e * r), 0.0)
    elif ACT == 2:
        xm = tl.where(cmask[:, None], x, float("-inf"))
        m = tl.max(xm, axis=0)
        e = fast_exp(xm - m[None, :])
        p = e * fast_rcp(tl.sum(e, axis=0))[None, :]
        if not EVEN_S:
            p = tl.where(smask[None, :], p, 0.0)
    else:
        p = x
    if T_INDEX:
        if EVEN_S:
            label = tl.load(t_ptr + bb * S + s)
        else:
            label = tl.load(t_ptr + bb * S + s, mask=smask, other=-1)
        # per pixel: a label outside [0, C) is no class; then one 32-bit compare per element
        label = label.to(tl.int64)
        label = tl.where((label >= 0) & (label < C), label, -1).to(tl.int32)
        t = tl.where(label[None, :] == c[:, None], 1.0, 0.0).to(ACC)
    else:
        t = load_swapped(t_ptr, offs, mask, PIX > 0 and TIES_TO_FIRST_DIM).to(ACC)
    return x, p, t, mask, offs


@triton.jit
def fused_segment_sums_kernel(x_ptr, t_ptr, partial_ptr, S, B, n_blocks, per_image,
                              p0, p1, p2, p3, C: tl.constexpr,
                              ELEM: tl.constexpr, VARIANT: tl.constexpr, ACT: tl.constexpr,
                              T_INDEX: tl.constexpr, HAS_GLOBAL: tl.constexpr,
                              ACC: tl.constexpr, CP: tl.constexpr, BLOCK_S: tl.constexpr,
                              EVEN_S: tl.constexpr, IDX64: tl.constexpr, PIX: tl.constexpr):
    """Program (b, j) of ``per_image`` per image sums ELEM's four per-element quantities over
    pixel blocks j, j + per_image, ... of image b, per channel, in that fixed order, and stores
    partial[k, b, c, j]. ``ELEM(x, p, t, p0..p3, VARIANT) -> (q0, q1, q2, q3)``: q0..q2 must
    vanish where p = t = 0 (outside the image: no mask is applied to them); q3 (summed only
    when HAS_GLOBAL) is masked. EVEN_S: S is a multiple of BLOCK_S and the blocks a multiple
    of per_image (no tile past the image)."""
    pid = tl.program_id(0)
    b = pid // per_image
    j = pid % per_image
    c = tl.arange(0, CP)
    # element-wise accumulators, reduced over the pixels once at the end (a cross-thread sum
    # per tile would cost four shuffle trees per tile)
    a0 = tl.zeros([CP, BLOCK_S], ACC)
    a1 = tl.zeros([CP, BLOCK_S], ACC)
    a2 = tl.zeros([CP, BLOCK_S], ACC)
    a3 = tl.zeros([CP, BLOCK_S], ACC)
    # while loops here and below: triton 3.6's interpreter cannot range() over runtime bounds
    blk = j
    while blk < n_blocks:
        x, p, t, mask, _offs = _segment_tile(x_ptr, t_ptr, b, blk * BLOCK_S, S, C, ACT, T_INDEX,
                                             ACC, CP, BLOCK_S, EVEN_S, IDX64, PIX)
        q0, q1, q2, q3 = ELEM(x, p, t, p0, p1, p2, p3, VARIANT)
        a0 += q0
        a1 += q1
        a2 += q2
        if HAS_GLOBAL:
            a3 += tl.where(mask, q3, 0.0)
        blk += per_image
    where = (b * C + c) * per_image + j
    plane = B * C * per_image
    cmask = c < C
    tl.store(partial_ptr + where, tl.sum(a0, axis=1), mask=cmask)
    tl.store(partial_ptr + plane + where, tl.sum(a1, axis=1), mask=cmask)
    tl.store(partial_ptr + 2 * plane + where, tl.sum(a2, axis=1), mask=cmask)
    tl.store(partial_ptr + 3 * plane + where, tl.sum(a3, axis=1), mask=cmask)


@triton.jit
def _partial_sum(ptr, b, C, per_image, CP: tl.constexpr, RB: tl.constexpr, ACC: tl.constexpr):
    """sum_j partial[b, c, j] for every channel c: [CP], in a fixed order."""
    c = tl.arange(0, CP)
    jj = tl.arange(0, RB)
    acc = tl.zeros([CP, RB], ACC)
    j0 = 0
    while j0 < per_image:
        j = j0 + jj
        acc += tl.load(ptr + (b * C + c[:, None]) * per_image + j[None, :],
                       mask=(c < C)[:, None] & (j < per_image)[None, :], other=0.0)
        j0 += RB
    return tl.sum(acc, axis=1)


@triton.jit
def segment_finalize_kernel(partial_ptr, out_ptr, coef_ptr, w_ptr, lw_ptr, B, C, per_image,
                            c_start, sw_b, sw_c, seg_factor, seg_count, global_factor,
                            global_count, lw_f, p0, p1, p2, p3,
                            SEG: tl.constexpr, VARIANT: tl.constexpr, HAS_W: tl.constexpr,
                            HAS_LW_PTR: tl.constexpr, REDUCE: tl.constexpr,
                            BATCH: tl.constexpr, NEED_COEF: tl.constexpr, ACC: tl.constexpr,
                            CP: tl.constexpr, RB: tl.constexpr):
    """One program: per segment the sums S0..S2 (fixed order: images, then programs), the
    loss f and its derivatives ``SEG(S0, S1, S2, p0..p3, VARIANT) -> (f, df/dS0, df/dS1,
    df/dS2)``, times the segment's weight. REDUCE 0 ("none") stores f * w * loss_weight per
    segment, (b, c - c_start) or (c - c_start) when BATCH (segments span the batch); else the
    sum of f * w times ``scale`` = seg_factor / seg_count (seg_count: the segments for "mean",
    else 1) plus the global sum S3 times ``global_scale`` = global_factor / global_count (a
    mean over the elements, e.g. BCE's), times loss_weight. Coefficients (c0, c1, c2, c3) per
    (b, c): dL/dS_k for the gradient pass (0 outside the segments); c3 = global_scale *
    loss_weight (the global term's weight per element)."""
    c = tl.arange(0, CP)
    valid = (c >= c_start) & (c < C)
    plane = B * C * per_image
    # the factors in ACC from integer counts (a float argument would be float32)
    one = tl.full([], 1.0, ACC)
    scale = seg_factor / (one * seg_count)
    global_scale = global_factor / (one * global_count)
    if HAS_LW_PTR:
        lw = tl.load(lw_ptr).to(ACC)
    else:
        lw = lw_f
    total = tl.zeros([CP], ACC)
    g = tl.zeros([CP], ACC)
    if BATCH:
        n_outer = 1
    else:
        n_outer = B
    ob = 0
    while ob < n_outer:
        s0 = tl.zeros([CP], ACC)
        s1 = tl.zeros([CP], ACC)
        s2 = tl.zeros([CP], ACC)
        if BATCH:
            b = 0
            while b < B:
                s0 += _partial_sum(partial_ptr, b, C, per_image, CP, RB, ACC)
                s1 += _partial_sum(partial_ptr + plane, b, C, per_image, CP, RB, ACC)
                s2 += _partial_sum(partial_ptr + 2 * plane, b, C, per_image, CP, RB, ACC)
                g += _partial_sum(partial_ptr + 3 * plane, b, C, per_image, CP, RB, ACC)
                b += 1
        else:
            s0 = _partial_sum(partial_ptr, ob, C, per_image, CP, RB, ACC)
            s1 = _partial_sum(partial_ptr + plane, ob, C, per_image, CP, RB, ACC)
            s2 = _partial_sum(partial_ptr + 2 * plane, ob, C, per_image, CP, RB, ACC)
            g += _partial_sum(partial_ptr + 3 * plane, ob, C, per_image, CP, RB, ACC)
        f, d0, d1, d2 = SEG(s0, s1, s2, p0, p1, p2, p3, VARIANT)
        if HAS_W:
            w = tl.load(w_ptr + ob * sw_b + (c - c_start) * sw_c, mask=valid, other=0.0).to(ACC)
        else:
            w = tl.where(valid, 1.0, 0.0).to(ACC)
        fw = tl.where(valid, f * w, 0.0)
        if REDUCE == 0:
            seg = ob * (C - c_start) + c - c_start
            tl.store(out_ptr + seg, (fw * lw).to(out_ptr.dtype.element_ty), mask=valid)
            k = w * lw
        else:
            total += fw
            k = w * (lw * scale)
        if NEED_COEF:
            # where, not a product: a channel outside the segments may have a non-finite f'
            e0 = tl.where(valid, d0 * k, 0.0)
            e1 = tl.where(valid, d1 * k, 0.0)
            e2 = tl.where(valid, d2 * k, 0.0)
            e3 = tl.zeros([CP], ACC) + global_scale * lw
            if BATCH:
                b = 0
                b_end = B
            else:
                b = ob
                b_end = ob + 1
            while b < b_end:
                base = coef_ptr + (b * C + c) * 4
                tl.store(base, e0, mask=c < C)
                tl.store(base + 1, e1, mask=c < C)
                tl.store(base + 2, e2, mask=c < C)
                tl.store(base + 3, e3, mask=c < C)
                b += 1
        ob += 1
    if REDUCE == 1:
        result = (tl.sum(total, axis=0) * scale + tl.sum(g, axis=0) * global_scale) * lw
        tl.store(out_ptr, result.to(out_ptr.dtype.element_ty))


@triton.jit
def fused_segment_grad_kernel(x_ptr, t_ptr, coef_ptr, go_ptr, out_ptr, S, c_start, n_blocks,
                              p0, p1, p2, p3, C: tl.constexpr,
                              ELEM_GRAD: tl.constexpr, VARIANT: tl.constexpr, ACT: tl.constexpr,
                              T_INDEX: tl.constexpr, GO_PER_SEGMENT: tl.constexpr,
                              BATCH: tl.constexpr, ACC: tl.constexpr, CP: tl.constexpr,
                              BLOCK_S: tl.constexpr, EVEN_S: tl.constexpr, IDX64: tl.constexpr,
                              PIX: tl.constexpr):
    """dL/dx for one tile: ``ELEM_GRAD(x, p, t, c0, c1, c2, c3, p0..p3, VARIANT) -> (dL/dp,
    dL/dx directly)`` with the segment's coefficients (times grad_output: one scalar, or per
    segment for "none"), then through the activation: sigmoid p (1 - p); softmax
    p (g - sum_c g p); plus the direct term."""
    pid = tl.program_id(0)
    b = pid // n_blocks
    blk = pid % n_blocks
    x, p, t, mask, offs = _segment_tile(x_ptr, t_ptr, b, blk * BLOCK_S, S, C, ACT, T_INDEX,
                                        ACC, CP, BLOCK_S, EVEN_S, IDX64, PIX)
    c = tl.arange(0, CP)
    cmask = c < C
    base = coef_ptr + (b * C + c) * 4
    c0 = tl.load(base, mask=cmask, other=0.0)
    c1 = tl.load(base + 1, mask=cmask, other=0.0)
    c2 = tl.load(base + 2, mask=cmask, other=0.0)
    c3 = tl.load(base + 3, mask=cmask, other=0.0)
    if GO_PER_SEGMENT:
        valid = (c >= c_start) & cmask
        if BATCH:
            seg = c - c_start
        else:
            seg = b * (C - c_start) + c - c_start
        go = tl.load(go_ptr + seg, mask=valid, other=0.0).to(ACC)
        c0 = c0 * go
        c1 = c1 * go
        c2 = c2 * go
    else:
        go = tl.load(go_ptr).to(ACC)
        c0 = c0 * go
        c1 = c1 * go
        c2 = c2 * go
        c3 = c3 * go
    dp, dx_direct = ELEM_GRAD(x, p, t, c0[:, None], c1[:, None], c2[:, None], c3[:, None],
                              p0, p1, p2, p3, VARIANT)
    if ACT == 1:
        dx = dp * p * (1.0 - p)
    elif ACT == 2:
        dx = p * (dp - tl.sum(dp * p, axis=0)[None, :])
    else:
        dx = dp
    store_swapped(out_ptr, offs, dx + dx_direct, mask, PIX > 0 and TIES_TO_FIRST_DIM)
