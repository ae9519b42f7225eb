"""Triton math of the regression family: (x, t, p0..p3) -> (loss, dloss/dx, dloss/dt).

With d = x - t every loss here depends on d alone, so dloss/dt = -dloss/dx.
Gradients follow torch's own backward formulas branch for branch (NaN behaviour included):
  huber:     dl/dd = clamp(d, -delta, delta)          (NaN stays NaN)
  smooth-L1: dl/dd = -1 if d < -beta, 1 if d > beta, d / beta otherwise; 0 inside when beta == 0
  L1:        dl/dd = sign(d)                          (sign(NaN) = 0, as eager l1_loss)
  MSE:       dl/dd = 2 d
"""
import triton
import triton.language as tl

from .mathlib import sign


@triton.jit
def huber(x, t, delta, p1, p2, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    d = x - t
    z = tl.abs(d)
    loss = tl.where(z < delta, 0.5 * d * d, delta * (z - 0.5 * delta))
    grad = tl.where(d < -delta, -delta, tl.where(d > delta, delta, d))
    return loss, grad, -grad


@triton.jit
def smooth_l1(x, t, beta, p1, p2, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    d = x - t
    z = tl.abs(d)
    safe_beta = tl.where(beta > 0, beta, 1.0)
    loss = tl.where(z < beta, 0.5 * d * d / safe_beta, z - 0.5 * beta)
    inner = tl.where(beta > 0, d / safe_beta, 0.0)
    grad = tl.where(d < -beta, -1.0, tl.where(d > beta, 1.0, inner))
    return loss, grad, -grad


@triton.jit
def l1(x, t, p0, p1, p2, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    d = x - t
    grad = sign(d)
    return tl.abs(d), grad, -grad


@triton.jit
def mse(x, t, p0, p1, p2, p3, T_BINARY: tl.constexpr, VARIANT: tl.constexpr):
    d = x - t
    return d * d, 2.0 * d, -2.0 * d
