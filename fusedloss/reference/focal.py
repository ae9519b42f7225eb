"""Pure-PyTorch references of the focal family (executable spec and CPU fallback).

Values equal the literal formulas (torchvision ``sigmoid_focal_loss``, mmdet QFL/VFL); they are
written in a stable form so that the autograd gradients are finite where the literal autograd
is NaN and the true derivative has a finite limit:

* ``q = 1 - p_t`` is computed as ``t s(-x) + (1 - t) s(x)`` (literal ``1 - p_t`` rounds to 0);
* ``q ** g`` goes through :func:`_safe_pow`, whose derivative at q == 0 is 0 (the limit of the
  products it appears in; torch's ``pow`` gives inf * 0 = NaN there);
* with probabilities, BCE's inputs are replaced by a harmless 0.5 wherever the modulator is
  exactly 0 (p == t in {0, 1}), so torch's +-inf target derivative never meets that 0.

Integer targets of shape ``input.shape[:-1]`` are class indices (values outside [0, C) are
background) and are turned into one-hot rows here; the fused kernels never build them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import prepare, weight_reduce


def _one_hot(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Float targets of input's shape/dtype from integer class indices (others: background)."""
    if target.dtype.is_floating_point:
        return target
    C = input.shape[-1]
    idx = target.long()
    valid = (idx >= 0) & (idx < C)
    hot = F.one_hot(idx.clamp(0, max(C - 1, 0)), C) * valid.unsqueeze(-1)
    return hot.to(input.dtype)


def _safe_pow(m: torch.Tensor, g: float) -> torch.Tensor:
    """m ** g for m >= 0 with 0 ** 0 == 1 and derivative 0 (not NaN) wherever m == 0."""
    pos = m > 0
    base = torch.where(pos, m, torch.ones_like(m))
    return torch.where(pos, base ** g, torch.full_like(m, 1.0 if g == 0 else 0.0))


def _bce(x: torch.Tensor, t: torch.Tensor, from_logits: bool, dead=None) -> torch.Tensor:
    if from_logits:
        return F.binary_cross_entropy_with_logits(x, t, reduction="none")
    if dead is not None:  # keep torch's +-inf d/dt away from a modulator that is exactly 0
        x = torch.where(dead, 0.5, x)
        t = torch.where(dead, 0.5, t)
    return F.binary_cross_entropy(x, t, reduction="none")


def _prob(x: torch.Tensor, from_logits: bool):
    """(s(x), s(-x)) for logits, (p, 1 - p) for probabilities."""
    if from_logits:
        return torch.sigmoid(x), torch.sigmoid(-x)
    return x, 1.0 - x


def _alpha_t(t, alpha):
    if alpha is None or alpha < 0:
        return None
    return alpha * t + (1 - alpha) * (1 - t)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none", weight=None, *,
                       avg_factor=None, from_logits=True, loss_weight=1.0) -> torch.Tensor:
    """torchvision's ``sigmoid_focal_loss``: ``alpha_t * BCE(x, t) * (1 - p_t) ** gamma``."""
    targets_f = _one_hot(inputs, targets)
    x, t, w = prepare(inputs, targets_f, weight)
    p, p_neg = _prob(x, from_logits)
    q = t * p_neg + (1 - t) * p  # 1 - p_t
    dead = (q == 0) if gamma > 0 else None
    loss = _bce(x, t, from_logits, dead) * _safe_pow(q, gamma)
    a_t = _alpha_t(t, alpha)
    if a_t is not None:
        loss = a_t * loss
    return weight_reduce(loss, inputs, targets, w, reduction, avg_factor, loss_weight)


def quality_focal_loss(inputs, targets, beta=2.0, reduction="mean", weight=None, *,
                       avg_factor=None, from_logits=True, loss_weight=1.0) -> torch.Tensor:
    """Quality focal loss (GFL): ``BCE(x, t) * |t - s(x)| ** beta``."""
    x, t, w = prepare(inputs, targets, weight)
    p, p_neg = _prob(x, from_logits)
    d = (1 - t) * p - t * p_neg  # p - t without cancellation near saturation
    m = d.abs()
    dead = (m == 0) if beta > 0 else None
    loss = _bce(x, t, from_logits, dead) * _safe_pow(m, beta)
    return weight_reduce(loss, inputs, targets, w, reduction, avg_factor, loss_weight)


def varifocal_loss(inputs, targets, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean",
                   weight=None, *, avg_factor=None, from_logits=True,
                   loss_weight=1.0) -> torch.Tensor:
    """Varifocal loss: ``BCE(x, t) * w``, w = t (or 1) where t > 0, else alpha |s(x) - t|^gamma."""
    x, t, w = prepare(inputs, targets, weight)
    p, _ = _prob(x, from_logits)
    pos = t > 0
    m = torch.where(pos, torch.zeros_like(p), (p - t).abs())
    mod = alpha * _safe_pow(m, gamma)
    wpos = t if iou_weighted else torch.ones_like(t)
    focal_w = torch.where(pos, wpos, mod)
    dead = (~pos) & (m == 0) if gamma > 0 else None
    loss = _bce(x, t, from_logits, dead) * focal_w
    return weight_reduce(loss, inputs, targets, w, reduction, avg_factor, loss_weight)
