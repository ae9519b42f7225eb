"""Triton math of the focal family: (x, t, p0..p3, T_BINARY, VARIANT) -> (loss, dloss/dx, dloss/dt).

Every loss here is ``a(t) * ce(x, t) * m^g`` (a modulating factor m >= 0 raised to g >= 0),
or a branch-wise mix of such terms (varifocal). Written for any logit (or probability):

* BCE with logits as ``(1 - t) max(x, 0) + t max(-x, 0) + log1p(e)`` with ``e = exp(-|x|)``: no
  overflow, no cancellation (``max(x, 0) - x t`` cancels for soft targets at large |x|);
  d/dx = ``(1 - t) s(x) - t s(-x)`` (not ``s(x) - t``, which is 0 for t = 1 once s(x) rounds to
  1) and d/dt = ``-x`` exactly. ``s(x)`` and ``s(-x)`` come from one ``exp`` and one reciprocal.
* Focal: ``q = 1 - p_t = t s(-x) + (1 - t) s(x)`` computed directly (never ``1 - p_t``, which is
  0 from |x| ~ 17 in fp32 and makes q^(g-1) infinite for g < 1).
* **VARIANT** (constexpr, from ``focal.py``): the modulator's exponent when it is an integer
  0..4 (torchvision / mmdet / ultralytics all default to gamma = 2, QFL to beta = 2), else -1.
  An integer exponent is multiplications: ``q^g`` and ``g q^(g-1) ce`` need no special function
  and no division. Otherwise ``q^g = exp2(g log2 q)`` and the modulator derivative
  ``ce g q^(g-1)`` is ``g q^g (ce / q)``: finite for every g >= 0 (q^(g-1) alone overflows for
  g < 1), and 0 where q == 0. That 0 is the limit wherever the literal form is 0 * inf (ce and
  q vanish together at saturation; for QFL/VFL at t == s(x) it is the symmetric choice, as
  torch's ``abs`` has derivative 0 at 0).
* **T_BINARY** (the engine's one-hot from class indices: t is exactly 0 or 1): with
  ``z = x`` for t = 0 and ``-x`` for t = 1, ``ce = softplus(z)``, ``q = s(z)`` and
  ``log q = -softplus(-z)`` share one ``exp`` and one ``log1p``, so ``q^g = exp2(-g softplus(-z)
  log2 e)`` needs no logarithm, and ``d/dz [ce q^g] = q^g (q + g ce (1 - q))`` no division.
* ``pow_nonneg`` gives 0^0 = 1 (``exp2(y log2 q)`` is NaN there).
* Probabilities (``from_logits=False``) copy ``F.binary_cross_entropy``: logs clamped at -100,
  d/dp = (p - t) / max(p (1 - p), eps) with torch's eps = float32(1e-12) (in float64 too),
  d/dt = log(1 - p) - log(p) unclamped (+-inf at p in {0, 1}); where it meets a modulator
  that is exactly 0 (p == t in {0, 1}, g > 0) the product is returned as its limit 0 instead
  of inf * 0.

Accuracy on a GPU (float32): ``log1p(e)`` is a polynomial (worst relative error 2.1e-7,
measured, see ``mathlib``); ``exp`` is the SFU's ``ex2.approx`` after a multiply by log2(e)
(documented: 2 + |1.173 x| ulp, the CUDA ``__expf`` bound); a reciprocal is ``div.full.f32``
(2 ulp); logarithms of probabilities and the generic ``q^g`` use ``lg2.approx`` (absolute error
<= 2^-22 in log2 for arguments in [0.5, 2], else 2 ulp). Under the interpreter the same
formulas run in numpy: the worst errors the tests measure on CPU are listed in bench/NOTES.md.

Hyper-parameters arrive as Python floats; booleans as 0.0 / 1.0.
"""
import triton
import triton.language as tl

from .mathlib import LN2, fast_exp, fast_log2, fast_rcp, ipow, log1p, log1p_unit, pow_nonneg, sign


@triton.jit
def _logit_terms(x, t):
    """(ce, dce/dx, s(x), s(-x)) of BCE with logits, stable for any finite x."""
    e = fast_exp(-tl.abs(x))
    lg = log1p_unit(e)
    r = fast_rcp(1.0 + e)
    er = e * r
    pos = x >= 0
    sig = tl.where(pos, r, er)  # s(x)
    sig_neg = tl.where(pos, er, r)  # s(-x)
    ce = (1.0 - t) * tl.maximum(x, 0.0) + t * tl.maximum(-x, 0.0) + lg
    dce = (1.0 - t) * sig - t * sig_neg
    return ce, dce, sig, sig_neg


@triton.jit
def _prob_terms(p, t):
    """(ce, dce/dp, dce/dt) of F.binary_cross_entropy on probabilities (torch's conventions)."""
    logp = fast_log2(p) * LN2
    log1mp = log1p(-p)
    ce = -(t * tl.maximum(logp, -100.0) + (1.0 - t) * tl.maximum(log1mp, -100.0))
    # torch's EPSILON is the float 1e-12 (9.999999960041972e-13) in every dtype, float64 included
    dce = (p - t) / tl.maximum(p * (1.0 - p), 9.999999960041972e-13)
    dce_dt = log1mp - logp
    return ce, dce, dce_dt


@triton.jit
def _modulated(ce, dce_dx, dce_dt, m, dm_dx, dm_dt, g, G_INT: tl.constexpr):
    """ce * m^g and its derivatives, finite for every g >= 0 (see the module docstring).

    G_INT >= 0: g == G_INT, an integer (multiplications only); -1: any g >= 0.
    """
    if G_INT >= 0:
        pw = ipow(m, G_INT)
        if G_INT == 0:
            k = tl.zeros_like(m)
        else:
            k = (G_INT * ipow(m, G_INT - 1)) * ce  # ce * d(m^g)/dm
    else:
        pw = pow_nonneg(m, g)
        pos = m > 0
        ratio = tl.where(pos, ce / tl.where(pos, m, 1.0), 0.0)
        k = g * pw * ratio  # ce * d(m^g)/dm, 0 where m == 0
    loss = ce * pw
    dx = dce_dx * pw + k * dm_dx
    # probabilities: dce/dt is +-inf at p in {0, 1}; times a modulator that is exactly 0
    dt = tl.where(pw == 0, 0.0, dce_dt * pw) + k * dm_dt
    return loss, dx, dt


@triton.jit
def _alpha_t(t, alpha):
    """(alpha_t, d alpha_t / dt); alpha < 0 disables alpha_t (torchvision)."""
    use = alpha >= 0
    a_t = tl.where(use, alpha * t + (1.0 - alpha) * (1.0 - t), 1.0)
    da_dt = tl.where(use, 2.0 * alpha - 1.0, 0.0)
    return a_t, da_dt


@triton.jit
def _alpha_focal(ce, dce_dx, dce_dt, q, dq_dx, dq_dt, t, alpha, gamma, G_INT: tl.constexpr):
    """alpha_t * ce * q^gamma."""
    base, bdx, bdt = _modulated(ce, dce_dx, dce_dt, q, dq_dx, dq_dt, gamma, G_INT)
    a_t, da_dt = _alpha_t(t, alpha)
    return a_t * base, a_t * bdx, a_t * bdt + da_dt * base


@triton.jit
def sigmoid_focal(x, t, alpha, gamma, p2, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    """torchvision's sigmoid_focal_loss on logits x."""
    ce, dce, sig, sig_neg = _logit_terms(x, t)
    q = t * sig_neg + (1.0 - t) * sig  # 1 - p_t
    dq_dx = sig * sig_neg * (1.0 - 2.0 * t)
    dq_dt = sig_neg - sig
    return _alpha_focal(ce, dce, -x, q, dq_dx, dq_dt, t, alpha, gamma, VARIANT)


@triton.jit
def sigmoid_focal_prob(p, t, alpha, gamma, p2, p3, T_BINARY: tl.constexpr,
                       VARIANT: tl.constexpr):
    """Focal loss on probabilities p (mmdet activated=True)."""
    ce, dce, dce_dt = _prob_terms(p, t)
    q = t * (1.0 - p) + (1.0 - t) * p
    return _alpha_focal(ce, dce, dce_dt, q, 1.0 - 2.0 * t, 1.0 - 2.0 * p, t, alpha, gamma,
                        VARIANT)


@triton.jit
def quality_focal(x, t, beta, p1, p2, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    """QFL (GFL): BCE(x, t) * |t - s(x)|^beta on logits."""
    ce, dce, sig, sig_neg = _logit_terms(x, t)
    d = dce  # s(x) - t, without cancellation
    sg = sign(d)
    return _modulated(ce, dce, -x, tl.abs(d), sg * (sig * sig_neg), -sg, beta, VARIANT)


@triton.jit
def quality_focal_prob(p, t, beta, p1, p2, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    """QFL on probabilities p."""
    ce, dce, dce_dt = _prob_terms(p, t)
    d = p - t
    sg = sign(d)
    return _modulated(ce, dce, dce_dt, tl.abs(d), sg, -sg, beta, VARIANT)


@triton.jit
def _varifocal_mix(ce, dce, dce_dt, m, dm_dx, t, alpha, gamma, iou_weighted,
                   G_INT: tl.constexpr):
    """t > 0: ce * (t if iou_weighted else 1); t <= 0: ce * alpha * m^gamma, m = s(x) - t >= 0."""
    nl, ndx, ndt = _modulated(ce, dce, dce_dt, m, dm_dx, -1.0, gamma, G_INT)
    iou = iou_weighted > 0.5
    wp = tl.where(iou, t, 1.0)
    dwp = tl.where(iou, 1.0, 0.0)
    pos = t > 0
    loss = tl.where(pos, ce * wp, alpha * nl)
    dx = tl.where(pos, dce * wp, alpha * ndx)
    dt = tl.where(pos, dce_dt * wp + ce * dwp, alpha * ndt)
    return loss, dx, dt


@triton.jit
def varifocal(x, t, alpha, gamma, iou_weighted, p3, T_BINARY: tl.constexpr,
              VARIANT: tl.constexpr):
    """VFL on logits (mmdet / ultralytics)."""
    ce, dce, sig, sig_neg = _logit_terms(x, t)
    m = tl.maximum(sig - t, 0.0)  # used only where t <= 0, where it is >= s(x) >= 0
    return _varifocal_mix(ce, dce, -x, m, sig * sig_neg, t, alpha, gamma, iou_weighted, VARIANT)


@triton.jit
def varifocal_prob(p, t, alpha, gamma, iou_weighted, p3, T_BINARY: tl.constexpr,
                   VARIANT: tl.constexpr):
    """VFL on probabilities p."""
    ce, dce, dce_dt = _prob_terms(p, t)
    m = tl.maximum(p - t, 0.0)
    return _varifocal_mix(ce, dce, dce_dt, m, 1.0, t, alpha, gamma, iou_weighted, VARIANT)
