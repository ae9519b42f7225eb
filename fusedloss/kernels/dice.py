"""Dice's math for the engine's segment losses (``kernels/engine.py``, segment section).

Per segment (one (sample, class), or one class over the batch), from three sums over its
elements, I = sum p t, P = sum p (sum p^2 when squared), T = sum t (sum t^2)::

    den = P + T                    (jaccard: den = 2 (P + T - I), MONAI)
    D = max(den + smooth_dr, eps)  (eps = 0: no clamp, MONAI; smp clamps at its eps)
    score = (2 I + smooth_nr) / D
    f = 1 - score                  (log_loss: -log(max(score, eps)), smp)
    f *= [T > 0]                   (zero_absent_classes, smp)

Gradient, per element: dL/dp = c_I t + c_P (1, or 2 p when squared), with c_k = dL/dS_k of the
segment (T depends on the target only), then through the activation (the engine); BCE with
logits (bce_dice_loss) adds c_bce (p - t) directly to dL/dx, p = sigmoid(x). The derivatives
of the segment function, with N = 2 I + smooth_nr, where D is not clamped:

    dscore/dI = 2 / D - N / D^2 dD/dI,   dD/dI = 0 (dice) or -2 (jaccard)
    dscore/dP = dscore/dT = -N / D^2 dD/dP,   dD/dP = 1 (dice) or 2 (jaccard)

(a clamped D is a constant: only the 2 / D term remains).

VARIANT bits: 1 squared_pred, 2 jaccard, 4 log_loss, 8 zero_absent_classes, 16 BCE term.
Parameters: p0 smooth_nr, p1 smooth_dr, p2 eps.
"""
import triton
import triton.language as tl

from .mathlib import softplus

# VARIANT bits (host side; the jit functions test the same literals)
SQUARED = 1
JACCARD = 2
LOG_LOSS = 4
ZERO_ABSENT = 8
BCE = 16


@triton.jit
def dice_elem(x, p, t, smooth_nr, smooth_dr, eps, p3, VARIANT: tl.constexpr):
    """The per-element quantities summed per segment: (p t, p or p^2, t or t^2, BCE(x, t))."""
    if (VARIANT & 1) != 0:
        q1 = p * p
        q2 = t * t
    else:
        q1 = p
        q2 = t
    if (VARIANT & 16) != 0:
        q3 = softplus(x) - x * t
    else:
        q3 = tl.zeros_like(p)
    return p * t, q1, q2, q3


@triton.jit
def dice_elem_grad(x, p, t, c0, c1, c2, c3, smooth_nr, smooth_dr, eps, p3,
                   VARIANT: tl.constexpr):
    """(dL/dp, dL/dx directly) from the segment's coefficients c_k = dL/dS_k."""
    if (VARIANT & 1) != 0:
        dp = c0 * t + c1 * (2.0 * p)
    else:
        dp = c0 * t + c1
    if (VARIANT & 16) != 0:
        direct = c3 * (p - t)
    else:
        direct = tl.zeros_like(p)
    return dp, direct


@triton.jit
def dice_segment(i_sum, p_sum, t_sum, smooth_nr, smooth_dr, eps, p3, VARIANT: tl.constexpr):
    """(f, df/dI, df/dP, df/dT) of one segment from its sums (see the module docstring)."""
    den = p_sum + t_sum
    if (VARIANT & 2) != 0:
        den = 2.0 * (den - i_sum)
        dd_di = -2.0
        dd_dp = 2.0
    else:
        dd_di = 0.0
        dd_dp = 1.0
    d = den + smooth_dr
    clamped = d < eps
    d = tl.where(clamped, eps, d)
    num = 2.0 * i_sum + smooth_nr
    score = num / d
    slope = tl.where(clamped, 0.0, num / (d * d))
    ds_di = 2.0 / d - slope * dd_di
    ds_dp = -slope * dd_dp
    if (VARIANT & 4) != 0:
        low = score < eps
        f = -tl.log(tl.where(low, eps, score))
        df_ds = tl.where(low, 0.0, -1.0 / score)
    else:
        f = 1.0 - score
        df_ds = tl.full(score.shape, -1.0, score.dtype)
    if (VARIANT & 8) != 0:
        present = t_sum > 0
        f = tl.where(present, f, 0.0)
        df_ds = tl.where(present, df_ds, 0.0)
    return f, df_ds * ds_di, df_ds * ds_dp, df_ds * ds_dp
