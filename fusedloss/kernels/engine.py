"""The fused elementwise-loss engine: one Triton driver every loss plugs its math into.

A loss supplies a ``@triton.jit`` function ``math(x, t, p0, p1, p2, p3) -> (loss, dloss/dx,
dloss/dt)`` over blocks in the accumulation dtype; the engine does everything else in one pass:

    load x, t, w (each in its own dtype, broadcast by strides, never materialised)
    -> loss, gradient (the loss's math)
    -> zero-weight exclusion, weight, scale = loss_weight / denominator
    -> store the "none" output or the per-program partial sum, and the gradients

and the partials are summed in a fixed order (a separate tiny launch, the last program of the
same launch via an integer ticket, or directly when one program covers everything). No float
atomics: a result depends only on the inputs and the block size, never on scheduling.

Bytes per element for fp32 x and t, bool w, gradient for x only (forward + backward):
read x 4 + read t 4 + read w 1 + write dx 4 = 13; the backward adds nothing when grad_output
equals the loss_weight the forward folded in (the rescale kernel masks every access off).
"""
import triton
import triton.language as tl

MAX_DIMS = 6  # collapsed dimensions the strided addressing handles (more: operands are copied)
REDUCE_BLOCK = 1024  # tile of the fixed-order sum over per-program partials

# denominator modes of the scale
DENOM_ONE = 0  # "sum" and "none"
DENOM_NUMEL = 1  # "mean"
DENOM_TENSOR = 2  # avg_factor tensor, or sum(weight) for "weighted_mean"

# how a scalar reduction's partials are finalised
FINALIZE_PARTIALS = 0  # write partials; finalize_kernel sums them (second launch)
FINALIZE_SINGLE = 1  # one program covers everything: it writes the result itself
FINALIZE_TICKET = 2  # integer ticket: the last program to finish sums the partials


@triton.jit
def store_rounded(ptr, val, mask):
    """Store ``val`` into ``ptr``'s dtype, rounding to nearest-even for bfloat16.

    The interpreter truncates fp32 -> bf16 (shared notes, triton-on-cpu.md section 3); this
    bit-level round-to-nearest-even gives torch's bits on CPU and GPU alike.
    """
    if ptr.dtype.element_ty == tl.bfloat16:
        v = val.to(tl.float32)
        u = v.to(tl.uint32, bitcast=True)
        u = u + 0x7FFF + ((u >> 16) & 1)
        b = (u >> 16).to(tl.uint16)
        b = tl.where(v != v, 0x7FC0, b).to(tl.uint16)
        tl.store(ptr, b.to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dim_step(rem, size, sa, sb, sc, oa, ob, oc, OUTERMOST: tl.constexpr):
    if OUTERMOST:
        i = rem
    else:
        i = rem % size
        rem = rem // size
    return rem, oa + i * sa, ob + i * sb, oc + i * sc


@triton.jit
def operand_offsets(offs, NDIM: tl.constexpr,
                    n0, n1, n2, n3, n4, n5,
                    a0, a1, a2, a3, a4, a5,
                    b0, b1, b2, b3, b4, b5,
                    c0, c1, c2, c3, c4, c5):
    """Element offsets of three operands for int64 row-major indices ``offs``.

    Dimension k = 0 is the innermost; n* are the collapsed sizes, a*/b*/c* each operand's
    strides in elements (0 where it broadcasts). All arithmetic is int64 because ``offs`` is.
    """
    rem = offs
    oa = tl.zeros_like(offs)
    ob = tl.zeros_like(offs)
    oc = tl.zeros_like(offs)
    if NDIM > 0:
        rem, oa, ob, oc = _dim_step(rem, n0, a0, b0, c0, oa, ob, oc, NDIM == 1)
    if NDIM > 1:
        rem, oa, ob, oc = _dim_step(rem, n1, a1, b1, c1, oa, ob, oc, NDIM == 2)
    if NDIM > 2:
        rem, oa, ob, oc = _dim_step(rem, n2, a2, b2, c2, oa, ob, oc, NDIM == 3)
    if NDIM > 3:
        rem, oa, ob, oc = _dim_step(rem, n3, a3, b3, c3, oa, ob, oc, NDIM == 4)
    if NDIM > 4:
        rem, oa, ob, oc = _dim_step(rem, n4, a4, b4, c4, oa, ob, oc, NDIM == 5)
    if NDIM > 5:
        rem, oa, ob, oc = _dim_step(rem, n5, a5, b5, c5, oa, ob, oc, NDIM == 6)
    return oa, ob, oc


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


# Integer arguments are specialised by the runtime: a value of 1 becomes a compile-time constant
# (no ``.to``: convert with tl.cast) and divisibility by 16 is recorded, which lets masked loads
# and stores be vectorised. Do not mark n do_not_specialize: that drops the divisibility too.
@triton.jit
def fused_loss_fwd_kernel(
    x_ptr, t_ptr, w_ptr,
    out_ptr, gx_ptr, gt_ptr,
    partial_ptr, counter_ptr,
    denom_ptr, lw_ptr,
    n, num_classes, denom_mult, lw_f,
    p0, p1, p2, p3,
    n0, n1, n2, n3, n4, n5,
    sx0, sx1, sx2, sx3, sx4, sx5,
    st0, st1, st2, st3, st4, st5,
    sw0, sw1, sw2, sw3, sw4, sw5,
    MATH: tl.constexpr, NDIM: tl.constexpr,
    X_CONTIG: tl.constexpr, T_CONTIG: tl.constexpr, W_CONTIG: tl.constexpr,
    HAS_W: tl.constexpr, T_INDEX: tl.constexpr, REDUCE: tl.constexpr,
    DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
    NEED_GX: tl.constexpr, NEED_GT: tl.constexpr, FINALIZE: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, RBLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n

    if X_CONTIG and T_CONTIG and W_CONTIG:
        ox = offs
        ot = offs
        ow = offs
    else:
        ox, ot, ow = operand_offsets(offs, NDIM, n0, n1, n2, n3, n4, n5,
                                     sx0, sx1, sx2, sx3, sx4, sx5,
                                     st0, st1, st2, st3, st4, st5,
                                     sw0, sw1, sw2, sw3, sw4, sw5)
        if X_CONTIG:
            ox = offs
        if T_CONTIG:
            ot = offs
        if W_CONTIG:
            ow = offs

    x = tl.load(x_ptr + ox, mask=mask, other=0.0).to(ACC)
    if T_INDEX:
        # integer class index per row: one-hot on the fly, never materialised
        cls = tl.load(t_ptr + ot, mask=mask, other=-1)
        t = tl.where(cls == offs % num_classes, 1.0, 0.0).to(ACC)
    else:
        t = tl.load(t_ptr + ot, mask=mask, other=0.0).to(ACC)
    if HAS_W:
        w = tl.load(w_ptr + ow, mask=mask, other=0).to(ACC)
        keep = mask & (w != 0)
        # a zero weight excludes the element even where x or t is NaN/inf
        x = tl.where(keep, x, 0.0)
        t = tl.where(keep, t, 0.0)
    else:
        keep = mask

    loss, dx, dt = MATH(x, t, p0, p1, p2, p3)

    if HAS_W:
        loss = loss * w
        dx = dx * w
        dt = dt * w
    loss = tl.where(keep, loss, 0.0)

    scale = loss_scale(n, denom_ptr, denom_mult, lw_f, lw_ptr, DENOM, ZERO_SAFE, HAS_LW_PTR, ACC)
    if NEED_GX:
        store_rounded(gx_ptr + offs, tl.where(keep, dx * scale, 0.0), mask)
    if NEED_GT:
        store_rounded(gt_ptr + offs, tl.where(keep, dt * scale, 0.0), mask)

    if REDUCE == 0:
        store_rounded(out_ptr + offs, loss * scale, mask)
    else:
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
def finalize_kernel(partial_ptr, out_ptr, denom_ptr, lw_ptr,
                    count, n, denom_mult, lw_f,
                    DENOM: tl.constexpr, ZERO_SAFE: tl.constexpr, HAS_LW_PTR: tl.constexpr,
                    ACC: tl.constexpr, RBLOCK: tl.constexpr):
    total = sum_partials(partial_ptr, count, ACC, RBLOCK)
    scale = loss_scale(n, denom_ptr, denom_mult, lw_f, lw_ptr, DENOM, ZERO_SAFE, HAS_LW_PTR, ACC)
    store_rounded(out_ptr, total * scale, None)


@triton.jit
def rescale_kernel(g_ptr, out_ptr, go_ptr, ref_ptr, record_ptr, n,
                   SKIP_IF_EQUAL: tl.constexpr, HAS_REF: tl.constexpr, RECORD: tl.constexpr,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out = g * (grad_output / ref), ref = 1 unless given.

    SKIP_IF_EQUAL (in place, first backward): when grad_output == ref every load and store is
    masked off on the device, so the backward moves no memory and never syncs the host. The
    bound ``where(go != ref, n, 0)`` keeps n's divisibility by 16 (0 is divisible by anything),
    so the accesses stay 16-byte vectors (checked in tests/compile_for_gpu.py).
    RECORD: program 0 stores grad_output (the factor ``g`` now stands for) into record_ptr.
    """
    pid = tl.program_id(0)
    go = tl.load(go_ptr).to(ACC)
    if HAS_REF:
        ref = tl.load(ref_ptr).to(ACC)
    else:
        ref = tl.full([], 1.0, ACC)
    factor = go / ref
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if SKIP_IF_EQUAL:
        limit = tl.where(go != ref, n, 0)
    else:
        limit = n
    mask = offs < limit
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    store_rounded(out_ptr + offs, g * factor, mask)
    if RECORD:
        if pid == 0:
            tl.store(record_ptr, go)
