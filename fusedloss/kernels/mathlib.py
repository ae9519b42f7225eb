"""Numerically careful building blocks shared by every loss's Triton math.

The Triton interpreter (how the tests run on CPU) has no ``log1p``, ``expm1``,
``pow`` or ``tanh`` (see shared notes, triton-on-cpu.md), so these are written
with ``exp``/``log``/``exp2``/``log2`` only; each form was chosen to keep full
relative precision for tiny arguments and never to overflow.
"""
import triton
import triton.language as tl


@triton.jit
def log1p(x):
    """log(1 + x) with full relative precision for tiny x (x > -1)."""
    u = 1.0 + x
    # where u == 1 the quotient below is 0/0; feed it a harmless denominator
    den = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, tl.log(u) * (x / den))


@triton.jit
def softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return tl.maximum(x, 0.0) + log1p(tl.exp(-tl.abs(x)))


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
    p = tl.exp2(expo * tl.log2(safe))
    return tl.where(base > 0, p, tl.where(expo == 0, 1.0, 0.0))


@triton.jit
def sign(x):
    """torch.sign: -1, 0 or +1, and 0 for NaN (what eager l1_loss's gradient uses)."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))
