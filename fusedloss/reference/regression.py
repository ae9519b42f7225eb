"""Pure-PyTorch references of the regression family, written as the formulas read.

d = input - target, z = |d|, weighted and reduced by ``weight_reduce``.
"""
from __future__ import annotations

import torch

from ._common import prepare, weight_reduce


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None, *, avg_factor=None,
               loss_weight=1.0) -> torch.Tensor:
    """l = 0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta)."""
    x, t, w = prepare(input, target, weight)
    d = x - t
    z = d.abs()
    loss = torch.where(z < delta, 0.5 * d * d, delta * (z - 0.5 * delta))
    return weight_reduce(loss, input, target, w, reduction, avg_factor, loss_weight)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0, weight=None, *, avg_factor=None,
                   loss_weight=1.0) -> torch.Tensor:
    """l = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta; beta == 0 is L1 (as torch)."""
    if beta == 0:
        return l1_loss(input, target, reduction, weight, avg_factor=avg_factor,
                       loss_weight=loss_weight)
    x, t, w = prepare(input, target, weight)
    d = x - t
    z = d.abs()
    loss = torch.where(z < beta, 0.5 * d * d / beta, z - 0.5 * beta)
    return weight_reduce(loss, input, target, w, reduction, avg_factor, loss_weight)


def l1_loss(input, target, reduction="mean", weight=None, *, avg_factor=None,
            loss_weight=1.0) -> torch.Tensor:
    """l = |d|."""
    x, t, w = prepare(input, target, weight)
    return weight_reduce((x - t).abs(), input, target, w, reduction, avg_factor, loss_weight)


def mse_loss(input, target, reduction="mean", weight=None, *, avg_factor=None,
             loss_weight=1.0) -> torch.Tensor:
    """l = d^2."""
    x, t, w = prepare(input, target, weight)
    d = x - t
    return weight_reduce(d * d, input, target, w, reduction, avg_factor, loss_weight)
