"""Numerically careful building blocks shared by every loss's Triton math.

The Triton interpreter (how the tests run on CPU) has no ``log1p``, ``expm1``, ``pow`` or
``tanh`` (see shared notes, triton-on-cpu.md), so these are written with ``exp``/``exp2``/
``log2`` only; each form keeps full relative precision for tiny arguments and never overflows.

**Instructions on a GPU** (sm_90, read from the SASS with ``gpuproxy sass``): ``tl.exp`` and
``tl.exp2`` compile to the special-function unit (``ex2.approx``), a float32 ``/`` to
``div.full.f32`` (MUFU.RCP plus a few fix-ups), but ``tl.log`` and ``tl.log2`` to libdevice's
software ``logf``/``log2f`` (about 20 instructions each). So:

* ``fast_log2`` is ``lg2.approx.f32`` (one MUFU.LG2) for float32 on the compiled path, and
  ``tl.log2`` for float64 and under the interpreter. Documented bound (CUDA C++ Programming
  Guide, intrinsic ``__log2f``, which is this instruction): absolute error <= 2^-22 for
  x in [0.5, 2], otherwise <= 2 ulp. Not measurable on CPU, where the interpreter computes
  ``log2`` in numpy.
* ``log1p_unit(e)`` for e in [0, 1] (the ``log1p(exp(-|x|))`` of every softplus / BCE with
  logits) is a degree-8 polynomial in float32: 9 multiply-adds, no special function, worst
  relative error 2.1e-7 measured over 200,001 points of [0, 1] in float32 (numpy, Horner, the
  interpreter's arithmetic) against float64 ``log1p``. float64 keeps the exact ``log1p`` trick.
"""
import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
# kernels compiled for a GPU (else interpreted): decided at import, like the kernels themselves
COMPILED: tl.constexpr = tl.constexpr(not triton.knobs.runtime.interpret)

# log1p(e) / e on [0, 1], minimax-fitted (relative error) in float64, rounded to float32
_L1P0: tl.constexpr = tl.constexpr(0.9999999403953552)
_L1P1: tl.constexpr = tl.constexpr(-0.4999949336051941)
_L1P2: tl.constexpr = tl.constexpr(0.3331909775733948)
_L1P3: tl.constexpr = tl.constexpr(-0.2484297901391983)
_L1P4: tl.constexpr = tl.constexpr(0.1910599321126938)
_L1P5: tl.constexpr = tl.constexpr(-0.13663214445114136)
_L1P6: tl.constexpr = tl.constexpr(0.07822556048631668)
_L1P7: tl.constexpr = tl.constexpr(-0.029504986479878426)
_L1P8: tl.constexpr = tl.constexpr(0.005232629366219044)


@triton.jit
def fast_log2(x):
    """log2(x): the SFU's lg2.approx for compiled float32 (see the module docstring)."""
    if COMPILED and x.dtype == tl.float32:
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def fast_exp(x):
    """exp(x) = exp2(x log2 e): compiled float32 is ``ex2.approx.ftz`` (2 instructions instead of
    ``tl.exp``'s 5; results below 2^-126 flush to 0). float64: ``tl.exp`` (the constant
    log2 e is a float32 literal, 1e-8 relative)."""
    if x.dtype == tl.float64:
        return tl.exp(x)
    else:
        return tl.exp2(x * LOG2E)


@triton.jit
def fast_rcp(x):
    """1 / x: ``rcp.approx.ftz.f32`` compiled (1 MUFU.RCP; documented max error 1 ulp) instead
    of ``div.full.f32``'s 5 instructions; for |x| in [2^-126, 2^126] (e.g. 1 + exp(-|x|))."""
    if COMPILED and x.dtype == tl.float32:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def log1p(x):
    """log(1 + x) with full relative precision for tiny x (x > -1)."""
    u = 1.0 + x
    # where u == 1 the quotient below is 0/0; feed it a harmless denominator
    den = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, fast_log2(u) * LN2 * (x / den))


@triton.jit
def log1p_unit(e):
    """log(1 + e) for 0 <= e <= 1 (e.g. e = exp(-|x|)): a polynomial in float32."""
    if e.dtype == tl.float64:
        return log1p(e)
    else:
        p = e * _L1P8 + _L1P7  # tensor first: constexpr * tensor would stay a constexpr
        p = p * e + _L1P6
        p = p * e + _L1P5
        p = p * e + _L1P4
        p = p * e + _L1P3
        p = p * e + _L1P2
        p = p * e + _L1P1
        p = p * e + _L1P0
        return p * e


@triton.jit
def softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return tl.maximum(x, 0.0) + log1p_unit(tl.exp(-tl.abs(x)))


@triton.jit
def sigmoid(x):
    """1 / (1 + exp(-x)) for any x, never NaN for finite x."""
    e = tl.exp(-tl.abs(x))
    s = 1.0 / (1.0 + e)
    return tl.where(x >= 0, s, e * s)


@triton.jit
def pow_nonneg(base, expo):
    """base ** expo for base >= 0 and expo >= 0, with 0 ** 0 == 1 as in torch.pow.

    exp2(expo * log2(base)) is NaN at base == 0, expo == 0; the guard fixes it.
    """
    safe = tl.where(base > 0, base, 1.0)
    p = tl.exp2(expo * fast_log2(safe))
    return tl.where(base > 0, p, tl.where(expo == 0, 1.0, 0.0))


@triton.jit
def ipow(base, N: tl.constexpr):
    """base ** N for a constexpr integer N >= 0 by multiplication (0 ** 0 == 1)."""
    result = tl.full(base.shape, 1.0, base.dtype)
    for _ in tl.static_range(N):
        result = result * base
    return result


@triton.jit
def sign(x):
    """torch.sign: -1, 0 or +1, and 0 for NaN (what eager l1_loss's gradient uses)."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))
