"""Triton math of the shrinkage loss: (x, t, a, c, exp_weight, _) -> (loss, dloss/dx, dloss/dt).

With d = x - t, l = |d|, f = sigmoid(a (l - c)) and w = exp(t) (or 1 when exp_weight == 0):

    loss    = w * l^2 * f                      (the paper's l^2 / (1 + exp(a (c - l))))
    dloss/dl = w * l * (2 f + l * a * f (1 - f))
    dloss/dx = sign(d) * dloss/dl
    dloss/dt = -dloss/dx + loss                (the + loss only with the exp(t) weight)

Numerics (shared notes, decisions.md "Shrinkage"): the sigmoid is evaluated from
e = exp(-|z|) <= 1, so nothing overflows for any a |c - l|; f (1 - f) = e / (1 + e)^2 carries no
cancellation; at l = 0 the derivative is exactly 0 without a special case (the paper's form
gives inf / inf = NaN there once a c exceeds the exp range). ``a * (f (1 - f))`` is formed
before multiplying by l so that a huge finite a never meets an underflowed f (1 - f) as inf * 0.
"""
import triton
import triton.language as tl

from .mathlib import sign


@triton.jit
def shrinkage(x, t, a, c, exp_weight, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    d = x - t
    l = tl.abs(d)
    z = a * (l - c)
    e = tl.exp(-tl.abs(z))
    s = 1.0 / (1.0 + e)
    f = tl.where(z >= 0, s, e * s)  # sigmoid(z)
    fc = e * s * s  # sigmoid(z) * sigmoid(-z)
    w = tl.where(exp_weight != 0, tl.exp(t), 1.0)
    loss = w * (l * l * f)
    dl = w * (l * (2.0 * f + l * (a * fc)))
    dx = sign(d) * dl
    dt = tl.where(exp_weight != 0, loss, 0.0) - dx
    return loss, dx, dt
