"""Heatmaps rendered in the kernel: the Gaussian / plateau renderer and the Gaussian focal loss.

**Renderer** (``render_keypoints``, the engine's RENDER for ``fused_loss_fwd_rendered_kernel``
and the body of ``render_heatmaps_kernel``): heatmap channel c = (b, k), pixel p = (row i,
column j) stands at input-image coordinates ``(x, y) = (j stride + offset, i stride + offset)``;
with ``d_a^2`` the squared distance to instance a's keypoint (instances whose visibility is
<= 0 are skipped)::

    gaussian: t = max_a exp(-d_a^2 / (2 sigma^2)) = exp2(-min_a d_a^2 * log2(e) / (2 sigma^2))
    plateau:  t = 1 if min_a d_a^2 <= sigma^2 else 0

(times a normalising constant for a unit-sum Gaussian). exp is monotonic, so the maximum over
instances is one ``exp2`` of the minimum distance: one special-function instruction per pixel
whatever the number of instances. A visible keypoint with a NaN coordinate makes the pixel NaN
(the minimum propagates NaN), as the eager reference does.

Host-side parameters: ``r0`` = log2(e) / (2 sigma^2) (gaussian) or sigma^2 (plateau), ``r1`` =
stride, ``r2`` = offset, ``r3`` = the normalising factor; ``k0`` = W, ``k1`` = its division
magic (``fusedloss._plan.udiv_magic``); RK = 0 gaussian / 1 plateau, + 2 for maps one
column wide; RA = instances per channel; HAS_AUX: a visibility tensor is given.

**Gaussian focal loss** (CenterNet, mmdet ``GaussianFocalLoss``, alpha = 2, gamma = 4), with
``pos = [t == 1]`` (only a keypoint exactly at a pixel centre renders a 1)::

    probabilities p (mmdet, eps = 1e-12):
        L = -log(p + eps) (1 - p)^alpha pos - log(1 - p + eps) p^alpha (1 - t)^gamma
        dL/dp = pos (alpha (1 - p)^(alpha-1) log(p + eps) - (1 - p)^alpha / (p + eps))
              + (1 - t)^gamma (p^alpha / (1 - p + eps) - alpha p^(alpha-1) log(1 - p + eps))
    logits x (p = s(x), exact: log s(x) = -softplus(-x), log(1 - s(x)) = -softplus(x), no eps):
        L = softplus(-x) s(-x)^alpha pos + softplus(x) s(x)^alpha (1 - t)^gamma
        dL/dx = -pos s(-x)^alpha (s(-x) + alpha softplus(-x) s(x))
              + (1 - t)^gamma s(x)^alpha (s(x) + alpha softplus(x) s(-x))

VARIANT 1: alpha = 2 and gamma = 4 exactly (multiplications); 0: any alpha, gamma >= 0, with
``alpha p^(alpha-1)`` taken as ``alpha p^alpha / p`` (0 at p = 0, no inf * 0).
"""
import triton
import triton.language as tl

from .engine import _udiv, store_rounded
from .mathlib import LN2, LOG2E, fast_exp, fast_log2, fast_rcp, ipow, log1p_unit, pow_nonneg


@triton.jit
def render_keypoints(c, p, kp_ptr, vis_ptr, r0, r1, r2, r3, k0, k1,
                     RK: tl.constexpr, RA: tl.constexpr, HAS_AUX: tl.constexpr,
                     ACC: tl.constexpr):
    """Target value of channel ``c`` at pixel ``p`` (see the module docstring)."""
    p = p.to(tl.int32)  # the host checks H * W < 2^31
    c = c.to(tl.int32)
    if RK >= 2:  # a single column (W == 1): no division (no 32-bit magic divides by 1)
        i = p
        j = p * 0
    else:
        i = _udiv(p, k1)
        j = p - i * k0
    xs = j.to(ACC) * r1 + r2
    ys = i.to(ACC) * r1 + r2
    d2min = tl.full(xs.shape, float("inf"), ACC)
    for a in tl.static_range(RA):
        base = (c * RA + a) * 2
        dx = xs - tl.load(kp_ptr + base).to(ACC)
        dy = ys - tl.load(kp_ptr + base + 1).to(ACC)
        d2 = dx * dx + dy * dy
        if HAS_AUX:
            d2 = tl.where(tl.load(vis_ptr + c * RA + a) > 0, d2, float("inf"))
        d2min = tl.minimum(d2min, d2, propagate_nan=tl.PropagateNan.ALL)
    if RK % 2 == 0:
        t = tl.exp2(d2min * (-r0))
    else:
        t = tl.where(d2min <= r0, 1.0, tl.where(d2min == d2min, 0.0, d2min))
    return t * r3


@triton.jit
def render_heatmaps_kernel(out_ptr, kp_ptr, vis_ptr, n, r0, r1, r2, r3, k0, k1, chan_size,
                           chan_magic, RK: tl.constexpr, RA: tl.constexpr,
                           HAS_AUX: tl.constexpr, BLOCK: tl.constexpr):
    """Writes the rendered targets (B, K, H, W), contiguous, from the same ``render_keypoints``
    the loss uses (float32 math, stored in out's dtype)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = _udiv(offs, chan_magic)
    t = render_keypoints(c, offs - c * chan_size, kp_ptr, vis_ptr, r0, r1, r2, r3, k0, k1,
                         RK, RA, HAS_AUX, tl.float32)
    store_rounded(out_ptr + offs, t, mask)


@triton.jit
def _pow_terms(base, expo, INT_EXPO: tl.constexpr):
    """(base^expo, expo * base^(expo-1)) for base >= 0: the second is 0 at base == 0."""
    if INT_EXPO >= 0:
        pw = ipow(base, INT_EXPO)
        if INT_EXPO == 0:
            dpw = tl.zeros_like(base)
        else:
            dpw = INT_EXPO * ipow(base, INT_EXPO - 1)
    else:
        pw = pow_nonneg(base, expo)
        pos = base > 0
        dpw = tl.where(pos, expo * pw / tl.where(pos, base, 1.0), 0.0)
    return pw, dpw


@triton.jit
def gaussian_focal(p, t, alpha, gamma, p2, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    """mmdet GaussianFocalLoss on probabilities p (eps = 1e-12 inside the logs)."""
    A_INT: tl.constexpr = 2 if VARIANT == 1 else -1
    G_INT: tl.constexpr = 4 if VARIANT == 1 else -1
    pos = tl.where(t == 1.0, 1.0, 0.0)
    ng, _ = _pow_terms(1.0 - t, gamma, G_INT)
    lp = fast_log2(p + 1e-12) * LN2
    l1p = fast_log2(1.0 - p + 1e-12) * LN2
    a1, da1 = _pow_terms(1.0 - p, alpha, A_INT)  # (1-p)^a, a (1-p)^(a-1)
    pa, dpa = _pow_terms(p, alpha, A_INT)
    loss = -lp * a1 * pos - l1p * pa * ng
    dp = pos * (da1 * lp - a1 / (p + 1e-12)) + ng * (pa / (1.0 - p + 1e-12) - dpa * l1p)
    return loss, dp, tl.zeros_like(p)


@triton.jit
def gaussian_focal_logits(x, t, alpha, gamma, p2, p3, T_BINARY: tl.constexpr,
                          VARIANT: tl.constexpr):
    """Gaussian focal loss on logits x, p = sigmoid(x), in exact softplus form."""
    A_INT: tl.constexpr = 2 if VARIANT == 1 else -1
    G_INT: tl.constexpr = 4 if VARIANT == 1 else -1
    pos = tl.where(t == 1.0, 1.0, 0.0)
    ng, _ = _pow_terms(1.0 - t, gamma, G_INT)
    e = fast_exp(-tl.abs(x))
    lg = log1p_unit(e)
    r = fast_rcp(1.0 + e)
    er = e * r
    nonneg = x >= 0
    s_pos = tl.where(nonneg, r, er)  # s(x)
    s_neg = tl.where(nonneg, er, r)  # s(-x)
    sp_pos = tl.maximum(x, 0.0) + lg  # softplus(x) = -log(1 - s(x))
    sp_neg = tl.maximum(-x, 0.0) + lg  # softplus(-x) = -log s(x)
    if A_INT >= 0:
        pa_neg = ipow(s_neg, A_INT)
        pa_pos = ipow(s_pos, A_INT)
    else:  # s(-x)^a = exp2(-a softplus(x) log2 e): no logarithm, 0^0 = 1
        pa_neg = tl.exp2(sp_pos * (-alpha) * LOG2E)
        pa_pos = tl.exp2(sp_neg * (-alpha) * LOG2E)
    loss = pos * sp_neg * pa_neg + ng * sp_pos * pa_pos
    dx = -pos * pa_neg * (s_neg + alpha * sp_neg * s_pos) \
        + ng * pa_pos * (s_pos + alpha * sp_pos * s_neg)
    return loss, dx, tl.zeros_like(x)
