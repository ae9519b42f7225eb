"""CoTracker3's track loss (facebookresearch/co-tracker) on the fused engine.

Upstream (``cotracker/models/core/cotracker/losses.py``, called from ``train_on_kubric.py``)
computes, for one window and ``I`` refinement iterations::

    for i in range(I):
        l = huber(pred_i, gt, delta=6.0) or |pred_i - gt|       # (B, T, N, 2)
        l = l.mean(dim=3)                                       # (B, T, N)
        loss += gamma ** (I - i - 1) * sum(l * m) / (1e-6 + sum(m)),  m = valid * vis
    loss /= I
    total = 0.05 * loss(visible: m = valid * vis, Huber)
          + 0.01 * loss(occluded: m = valid * (1 - vis), L1)

with about 20 eager kernels per iteration and term, forward and backward each.
:func:`cotracker_sequence_loss` computes the same numbers with one fused launch per iteration
and term (or per iteration when both terms use the same loss), the iteration weight and the
constant factors folded into the gradient the forward writes, and the point mask read in its
own (B, T, N) shape.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import regression
from . import _checks as C

__all__ = ["cotracker_sequence_loss", "EPS"]

#: the ``EPS`` of CoTracker's ``reduce_masked_mean``: sum(l m) / (EPS + sum(m))
EPS = 1e-6

_KINDS = ("huber", "l1")

Preds = Union[torch.Tensor, Sequence[torch.Tensor]]


def cotracker_sequence_loss(preds: Preds, gt: torch.Tensor, vis: torch.Tensor,
                            valid: Optional[torch.Tensor] = None, *, gamma: float = 0.8,
                            delta: float = 6.0, visible_weight: float = 0.05,
                            occluded_weight: float = 0.01, visible: str = "huber",
                            occluded: str = "l1", return_terms: bool = False):
    """CoTracker3's sequence loss: ``visible_weight * L_vis + occluded_weight * L_occ``.

    With ``l_i = huber_delta(pred_i - gt)`` or ``|pred_i - gt|`` per coordinate (``visible`` /
    ``occluded`` choose ``"huber"`` or ``"l1"`` per term) and D = ``gt.shape[-1]``::

        L_term = 1/I * sum_i gamma^(I-i-1) * sum_{b,t,n} m * mean_d(l_i) / (1e-6 + sum m)
        m_vis = valid * vis,  m_occ = valid * (1 - vis)      (valid defaults to all ones)

    Upstream's defaults: Huber (delta 6) for visible points and L1 for occluded ones (its
    ``add_huber_loss`` flag, off for the occluded term); the paper and upstream issue #154 use
    Huber for both: ``occluded="huber"``. The ``1e-6`` is included, computed on the device;
    an empty mask gives exactly 0 for its term (and zero gradients).

    Args:
        preds: the I iterations' tracks, a list of I tensors (B, T, N, D) as the model returns
            them (no ``torch.stack`` copy) or one (I, B, T, N, D) tensor. Any float dtype
            (bf16 predictions with fp32 ground truth are read as they are).
        gt: ground-truth tracks (B, T, N, D), floating.
        vis: visibility (B, T, N): bool, integer or floating 0/1 (float as upstream).
        valid: optional validity mask (B, T, N), same kinds; None means all valid.
        gamma: iteration decay, finite and >= 0 (``gamma ** 0 == 1`` for the last iteration).
        delta: the Huber threshold, finite and > 0.
        visible_weight, occluded_weight: the terms' factors (finite numbers).
        visible, occluded: ``"huber"`` or ``"l1"`` for each term.
        return_terms: return ``(visible_weight * L_vis, occluded_weight * L_occ)`` instead of
            their sum.

    Returns:
        A 0-d tensor (float32, or float64 for float64 inputs), or the two weighted terms.

    Cost: ``visible != occluded`` or ``return_terms``: 2 I fused launches (each with its
    finalize launch once the call spans several programs, and one no-pass rescale launch in
    the backward); on the (B, T, N) masks 1-3 small ops (the mask products), 2 sums and 2
    ``+ 1e-6``; 2 ops to add the 2 I scalars; in the backward autograd adds the two terms'
    gradients of each iteration (I adds, as eager does). ``visible == occluded`` (and not
    ``return_terms``): I fused launches, both terms in one per-point weight
    ``m_vis c_vis / A_vis + m_occ c_occ / A_occ`` (6 more small ops on (B, T, N)) and no
    gradient adds. The launches measured per training step, against upstream's eager code,
    are in the README's "Recipes" section (about 6x and 10x fewer). A stacked (I, ...)
    ``preds`` tensor costs one more copy of its gradient in the backward (autograd stacks the
    per-iteration gradients: read + write, 2 x itemsize bytes per element); a list does not.

    Differences from upstream, all documented engine semantics: where a mask is 0 the element
    contributes exactly 0 even if the prediction is NaN/inf (upstream: NaN * 0 = NaN); the
    result is float32 for bf16/fp16 predictions.

    Example::

        >>> import torch
        >>> from fusedloss.recipes.cotracker import cotracker_sequence_loss
        >>> I, B, T, N = 4, 1, 8, 16
        >>> preds = [torch.randn(B, T, N, 2, requires_grad=True) for _ in range(I)]
        >>> gt = torch.randn(B, T, N, 2)
        >>> vis = torch.rand(B, T, N) > 0.2
        >>> valid = torch.ones(B, T, N)
        >>> loss = cotracker_sequence_loss(preds, gt, vis, valid)       # Huber + L1, as upstream
        >>> loss.backward()
        >>> vis_term, occ_term = cotracker_sequence_loss(preds, gt, vis, return_terms=True)
    """
    iters = _iterations(preds)
    C.floating("gt", gt)
    shape = tuple(iters[0].shape)
    if tuple(gt.shape) != shape:
        raise ValueError(f"gt must have the shape of one iteration's tracks {shape} "
                         f"(B, T, N, D); got {C.describe(gt)}")
    C.same_device("gt", gt, iters[0], "preds")
    points = shape[:3]
    C.real("vis", vis)
    C.shape("vis", vis, points, "B, T, N")
    C.same_device("vis", vis, iters[0], "preds")
    C.no_grad("vis", vis)
    if valid is not None:
        C.real("valid", valid)
        C.shape("valid", valid, points, "B, T, N")
        C.same_device("valid", valid, iters[0], "preds")
        C.no_grad("valid", valid)
    gamma = C.number("gamma", gamma, minimum=0.0)
    delta = C.number("delta", delta, minimum=0.0, strict=True)
    visible_weight = C.number("visible_weight", visible_weight)
    occluded_weight = C.number("occluded_weight", occluded_weight)
    C.choice("visible", visible, _KINDS)
    C.choice("occluded", occluded, _KINDS)
    return_terms = C.flag("return_terms", return_terms)

    n_iter = len(iters)
    coords = shape[3]
    acc = C.scalar_dtype(iters[0], gt, vis, valid)
    m_vis, m_occ = point_masks(vis, valid)
    # 1e-6 + sum(m): upstream's denominator, on the device (never read on the host)
    a_vis = torch.sum(m_vis, dtype=acc).add(EPS)
    a_occ = torch.sum(m_occ, dtype=acc).add(EPS)
    # iteration i's factor: gamma^(I-i-1) / I (the iteration mean) / D (the coordinate mean),
    # a Python float, so the engine folds it into the gradient the forward writes
    factors = [gamma ** (n_iter - i - 1) / (n_iter * coords) for i in range(n_iter)]

    if visible == occluded and not return_terms:
        # one launch per iteration: both terms in one per-point weight (disjoint masks)
        # shape (1,), not 0-d: a float32 mask times them then promotes to acc (float64)
        s_vis = visible_weight / a_vis.view(1)
        s_occ = occluded_weight / a_occ.view(1)
        if m_vis.dtype == torch.bool:
            w = torch.where(m_vis, s_vis, torch.where(m_occ, s_occ, 0.0))
        else:
            w = torch.addcmul(m_occ * s_occ, m_vis, s_vis)
        w = w.unsqueeze(-1)
        losses = [_term(visible, p, gt, "sum", w, None, f, delta) for p, f in zip(iters, factors)]
        return _sum(losses)

    w_vis, w_occ = m_vis.unsqueeze(-1), m_occ.unsqueeze(-1)
    vis_losses = [_term(visible, p, gt, "mean", w_vis, a_vis, visible_weight * f, delta)
                  for p, f in zip(iters, factors)]
    occ_losses = [_term(occluded, p, gt, "mean", w_occ, a_occ, occluded_weight * f, delta)
                  for p, f in zip(iters, factors)]
    if return_terms:
        if n_iter == 1:
            return vis_losses[0], occ_losses[0]
        terms = torch.stack(vis_losses + occ_losses).view(2, n_iter).sum(1)
        return terms[0], terms[1]
    return _sum(vis_losses + occ_losses)


def point_masks(vis: torch.Tensor, valid: Optional[torch.Tensor] = None):
    """``(valid * vis, valid * (1 - vis))`` as upstream builds them, in one to three device
    ops on (B, T, N) (bool masks stay bool: ``vis & valid`` and ``valid > vis``)."""
    if vis.dtype == torch.bool:
        if valid is None:
            return vis, ~vis
        if valid.dtype == torch.bool:
            return vis & valid, valid > vis
        return valid * vis, valid * ~vis
    if valid is None:
        return vis, 1 - vis
    return valid * vis, valid * (1 - vis)


def _iterations(preds) -> list:
    if isinstance(preds, torch.Tensor):
        C.floating("preds", preds)
        if preds.dim() != 5:
            raise ValueError(f"preds must be an (I, B, T, N, D) tensor or a list of I tensors "
                             f"(B, T, N, D); got {C.describe(preds)}")
        if preds.shape[0] == 0:
            raise ValueError(f"preds must hold at least one iteration; got {C.describe(preds)}")
        return list(preds.unbind(0))
    if not isinstance(preds, (list, tuple)):
        raise TypeError(f"preds must be a tensor (I, B, T, N, D) or a list of I tensors "
                        f"(B, T, N, D), got {type(preds).__name__}")
    if len(preds) == 0:
        raise ValueError("preds must hold at least one iteration; got an empty list")
    first = C.floating("preds[0]", preds[0])
    if first.dim() != 4:
        raise ValueError(f"preds[0] must be one iteration's tracks (B, T, N, D); got "
                         f"{C.describe(first)}")
    for i, p in enumerate(preds[1:], 1):
        C.floating(f"preds[{i}]", p)
        if p.shape != first.shape:
            raise ValueError(f"preds[{i}] must have preds[0]'s shape {tuple(first.shape)}; got "
                             f"{C.describe(p)}")
        C.same_device(f"preds[{i}]", p, first, "preds[0]")
    return list(preds)


def _term(kind: str, pred, gt, reduction: str, weight, avg_factor, loss_weight: float,
          delta: float):
    if kind == "huber":
        return regression.huber_loss(pred, gt, reduction, delta, weight, avg_factor=avg_factor,
                                     loss_weight=loss_weight)
    return regression.l1_loss(pred, gt, reduction, weight, avg_factor=avg_factor,
                               loss_weight=loss_weight)


def _sum(losses: list) -> torch.Tensor:
    """Sum of 0-d losses in at most two launches (one stack, one sum)."""
    if len(losses) == 1:
        return losses[0]
    if len(losses) == 2:
        return losses[0] + losses[1]
    return torch.stack(losses).sum()
