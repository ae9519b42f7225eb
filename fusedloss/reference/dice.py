"""Pure-PyTorch references of the soft Dice loss and BCE + Dice.

Executable spec and CPU fallback of ``fusedloss.dice``; autograd gives the gradients. One
formula covers MONAI's ``DiceLoss`` and segmentation_models.pytorch's (smp) ``DiceLoss``
(rewritten here from the published code, nothing imported; ``tests/test_dice.py`` transcribes
both and checks the mapping). For input (B, C, *spatial) with 1, 2 or 3 spatial dims:

    p = sigmoid(x) or softmax(x, dim=1)    (from_logits=False: p = input, activation ignored)
    t = target                             (a float or bool tensor of input's shape), or
    t[b, c, ...] = [target[b, ...] == c]   (an integer (B, *spatial) tensor of class indices;
                                            an index outside [0, C) gives an all-zero row,
                                            not checked)
    include_background=False: p, t = p[:, 1:], t[:, 1:]   (after the softmax over all C)

and per segment (the sum over reduce_dims: the spatial dims, one score per (b, c), MONAI's
default; or dims 0 and spatial, one score per class, MONAI's batch=True and smp):

    I = sum p t,  P = sum p (sum p^2 if squared_pred),  T = sum t (sum t^2 if squared_pred)
    den = P + T;  jaccard: den = 2 (den - I)                       (MONAI)
    score = (2 I + smooth_nr) / max(den + smooth_dr, eps)          (eps = 0: no clamp, MONAI;
                                                                    smp: eps 1e-7)
    f = -log(max(score, eps)) if log_loss else 1 - score           (log_loss: smp)
    zero_absent_classes: f = 0 where sum t = 0                     (smp, always on there)
    f = f * weight                                                 ((C',) or (B, C'))

reduction over the scores f: "none" -> f, (B, C') or (C',) (C' = C, or C - 1 without the
background); "mean" -> mean of f; "sum" -> sum of f; then times loss_weight. The result is
float64 for float64 inputs and float32 otherwise (fp16/bf16 math and result in float32),
"none" included. The target gets no gradient.

bce_dice_loss = (bce_weight * mean over all B C *spatial elements of BCE-with-logits(x, t)
                 + dice_weight * dice_loss(x, t, same options)) * loss_weight
(BCE on all C channels, whatever include_background; sigmoid logits only).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ._common import compute_dtype, result_dtype

ACTIVATIONS = ("sigmoid", "softmax")
REDUCTIONS = ("none", "mean", "sum")


def check_dice_args(input, target, *, activation, from_logits, reduce_dims, smooth_nr,
                    smooth_dr, eps, include_background, reduction, weight) -> tuple:
    """The documented ValueError / TypeError checks; returns the reduce dims as a tuple."""
    if not isinstance(input, torch.Tensor) or not input.dtype.is_floating_point:
        raise TypeError("input must be a floating tensor (B, C, *spatial)")
    if not 3 <= input.dim() <= 5:
        raise ValueError(f"input must be (B, C, *spatial) with 1 to 3 spatial dims, "
                         f"got shape {tuple(input.shape)}")
    if not isinstance(target, torch.Tensor):
        raise TypeError("target must be a tensor")
    if target.requires_grad:
        raise TypeError("target gets no gradient in dice_loss; pass target.detach()")
    B, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    if _is_mask(target):
        if target.shape != input.shape:
            raise ValueError(f"a float target must have input's shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
    elif target.is_complex() or tuple(target.shape) != (B,) + spatial:
        raise ValueError(f"an integer target holds class indices of shape (B, *spatial) = "
                         f"{(B,) + spatial}, got {tuple(target.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if from_logits and activation == "softmax" and C == 1:
        raise ValueError("activation='softmax' needs C > 1 channels (a softmax over one "
                         "channel is 1); use activation='sigmoid'")
    if not include_background and C == 1:
        raise ValueError("include_background=False needs C > 1 channels")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    for name, value in (("smooth_nr", smooth_nr), ("smooth_dr", smooth_dr), ("eps", eps)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    nd = input.dim()
    if isinstance(reduce_dims, int):
        reduce_dims = (reduce_dims,)
    dims = tuple(range(2, nd)) if reduce_dims is None else tuple(
        d + nd if isinstance(d, int) and d < 0 else d for d in reduce_dims)
    if (any(not isinstance(d, int) or not 0 <= d < nd for d in dims)
            or len(set(dims)) != len(dims) or 1 in dims
            or not set(range(2, nd)) <= set(dims)):
        raise ValueError(f"reduce_dims must hold every spatial dim of input (2..{nd - 1}) and "
                         f"optionally 0, never 1 (the channels), no repeats; got {reduce_dims!r}")
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.dtype.is_complex:
            raise TypeError("weight must be a real tensor of shape (C',) or (B, C')")
        if weight.requires_grad:
            raise TypeError("weight gets no gradient; pass weight.detach()")
        c = C if include_background else C - 1
        shapes = [(c,)] + ([] if 0 in dims else [(B, c)])
        if tuple(weight.shape) not in shapes:
            raise ValueError(f"weight must have shape {' or '.join(map(str, shapes))} "
                             f"(C' = channels after include_background), "
                             f"got {tuple(weight.shape)}")
    return tuple(sorted(dims))


def _is_mask(target: torch.Tensor) -> bool:
    """A float or bool target of input's shape (else: integer class indices)."""
    return target.dtype.is_floating_point or target.dtype == torch.bool


def one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, *spatial) class indices -> (B, C, *spatial); an index outside [0, C) -> zeros."""
    classes = torch.arange(num_classes, device=target.device)
    classes = classes.view((1, num_classes) + (1,) * (target.dim() - 1))
    return (target.unsqueeze(1) == classes).to(dtype)


def _probabilities_and_target(input, target, from_logits, activation, acc):
    x = input.to(acc)
    if not from_logits:
        p = x
    elif activation == "sigmoid":
        p = torch.sigmoid(x)
    else:
        p = torch.softmax(x, dim=1)
    if _is_mask(target):
        t = target.detach().to(acc)
    else:
        t = one_hot(target, input.shape[1], acc)
    return x, p, t


def dice_loss(input: torch.Tensor, target: torch.Tensor, *, from_logits: bool = True,
              activation: str = "sigmoid", reduce_dims: Optional[Sequence[int]] = None,
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, squared_pred: bool = False,
              jaccard: bool = False, include_background: bool = True, log_loss: bool = False,
              zero_absent_classes: bool = False, eps: float = 0.0, reduction: str = "mean",
              weight: Optional[torch.Tensor] = None, loss_weight=1.0) -> torch.Tensor:
    """Soft Dice (or Jaccard) loss, one score per segment; see the module docstring."""
    dims = check_dice_args(input, target, activation=activation, from_logits=from_logits,
                           reduce_dims=reduce_dims, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                           eps=eps, include_background=include_background,
                           reduction=reduction, weight=weight)
    acc = compute_dtype(input, target if _is_mask(target) else None, weight)
    _, p, t = _probabilities_and_target(input, target, from_logits, activation, acc)
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]

    I = (p * t).sum(dims)
    P = (p * p).sum(dims) if squared_pred else p.sum(dims)
    T = (t * t).sum(dims) if squared_pred else t.sum(dims)
    den = P + T
    if jaccard:
        den = 2 * (den - I)
    den = den + smooth_dr
    if eps > 0:
        den = den.clamp_min(eps)
    score = (2 * I + smooth_nr) / den
    if zero_absent_classes:  # an empty target scores 1: f = 0, no gradient, no -log(0)
        score = torch.where(t.sum(dims) > 0, score, 1.0)
    if log_loss:
        f = -torch.log(score.clamp_min(eps) if eps > 0 else score)
    else:
        f = 1 - score
    if weight is not None:
        f = f * weight.to(acc)  # (C',) broadcasts over (B, C') or matches (C',)

    if reduction == "mean":
        f = f.mean()
    elif reduction == "sum":
        f = f.sum()
    if isinstance(loss_weight, torch.Tensor):
        f = f * loss_weight.to(acc)
    else:
        f = f * loss_weight
    out = torch.float64 if result_dtype(input, target) == torch.float64 else torch.float32
    return f.to(out)


def bce_dice_loss(input: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, **dice_options) -> torch.Tensor:
    """bce_weight * mean BCE-with-logits over all elements + dice_weight * dice_loss, all
    times loss_weight (from dice_options). Sigmoid logits only; reduction "mean" or "sum"."""
    if dice_options.get("activation", "sigmoid") != "sigmoid" or not dice_options.get(
            "from_logits", True):
        raise ValueError("bce_dice_loss takes sigmoid logits: activation='sigmoid' and "
                         "from_logits=True")
    if dice_options.get("reduction", "mean") not in ("mean", "sum"):
        raise ValueError(f"bce_dice_loss: reduction must be 'mean' or 'sum' (the dice part), "
                         f"got {dice_options.get('reduction')!r}")
    loss_weight = dice_options.pop("loss_weight", 1.0)
    dice = dice_loss(input, target, **dice_options)
    acc = compute_dtype(input, target if _is_mask(target) else None, dice_options.get("weight"))
    x, _, t = _probabilities_and_target(input, target, True, "sigmoid", acc)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="mean")
    total = bce_weight * bce + dice_weight * dice.to(acc)
    if isinstance(loss_weight, torch.Tensor):
        total = total * loss_weight.to(acc)
    else:
        total = total * loss_weight
    return total.to(dice.dtype)
