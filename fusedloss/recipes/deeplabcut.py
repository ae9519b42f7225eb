"""DeepLabCut 3's weighted heatmap criterions (DeepLabCut/DeepLabCut, PyTorch engine) fused.

Upstream (``deeplabcut/pose_estimation_pytorch/models/criterions/weighted.py``)::

    loss = criterion(output, target)              # nn.MSELoss / nn.HuberLoss, reduction="none"
    n = count_nonzero(weights broadcast to loss.shape)
    if n == 0: n = 1                              # a host sync every step
    return sum(loss * weights) / n

:class:`WeightedMSECriterion` and :class:`WeightedHuberCriterion` take the same ``forward``
arguments and compute the same value in one fused pass, with ``n`` counted and clamped on the
device. :func:`heatmap_weights` builds the per-heatmap weights from keypoint visibility on the
device (upstream renders them in numpy after ``.cpu().numpy()``).
"""
from __future__ import annotations

import numbers
from typing import Union

import torch
import torch.nn as nn

from .. import regression
from . import _checks as C

__all__ = ["WeightedMSECriterion", "WeightedHuberCriterion", "heatmap_weights",
           "weighted_criterion"]

Weights = Union[torch.Tensor, float]


def weighted_criterion(fn, output: torch.Tensor, target: torch.Tensor, weights: Weights = 1.0,
                       *, loss_weight: float = 1.0, **params) -> torch.Tensor:
    """``sum(fn(output, target) * weights) / max(n, 1) * loss_weight``, n the number of non-zero
    weights after broadcasting to ``output.shape``; ``fn`` a fused regression loss.

    A tensor ``weights`` costs two small device ops on the weight in its own shape
    (``count_nonzero`` and ``clamp_min(1)``); the broadcast multiplicity
    ``output.numel() / weights.numel()`` is a host integer folded into ``loss_weight``
    (one more rounding than upstream's ``sum / n``: at most 1 ulp of float32).
    """
    C.floating("output", output)
    loss_weight = C.number("loss_weight", loss_weight)
    if isinstance(weights, torch.Tensor):
        C.real("weights", weights)
        C.same_device("weights", weights, output, "output")
        C.no_grad("weights", weights)
        if weights.dim() > output.dim() or any(
                w != 1 and w != o for w, o in zip(reversed(weights.shape), reversed(output.shape))):
            raise ValueError(f"weights of shape {tuple(weights.shape)} must broadcast to output's "
                             f"shape {tuple(output.shape)} without growing it")
        repeat = output.numel() // weights.numel() if weights.numel() else 1
        n = torch.count_nonzero(weights).clamp_min(1)  # DLC's `if n == 0: n = 1`, on the device
        return fn(output, target, "mean", weight=weights, avg_factor=n,
                  loss_weight=loss_weight / max(repeat, 1), **params)
    if not isinstance(weights, numbers.Real) or isinstance(weights, bool):
        raise TypeError(f"weights must be a tensor or a Python number, got "
                        f"{type(weights).__name__}")
    weights = C.number("weights", weights)
    if weights == 0:  # n == 0 -> n = 1: sum(loss * 0) / 1
        return fn(output, target, "sum", loss_weight=0.0, **params)
    return fn(output, target, "mean", loss_weight=weights * loss_weight, **params)


class WeightedMSECriterion(nn.Module):
    """DeepLabCut's ``WeightedMSECriterion``, fused:
    ``sum((output - target)^2 * weights) / max(n, 1)``, n = non-zero weights after broadcasting.

    ``forward(output, target, weights=1.0, **kwargs)`` as upstream: ``weights`` a tensor
    broadcastable to ``output.shape`` (e.g. (B, K, 1, 1) per heatmap, from
    :func:`heatmap_weights`, or a full (B, K, H, W) mask; bool, integer or floating) or a
    Python number. Extra keyword arguments are ignored, as upstream.

    Args:
        loss_weight: keyword-only extra (not in DeepLabCut): a constant factor such as the loss
            aggregator's weight, folded into the gradient the forward writes (free backward).

    Differences: the result is float32 for float16/bfloat16 heatmaps (upstream: their dtype);
    a zero weight contributes exactly 0 even where a heatmap is NaN/inf (upstream: NaN).

    Example::

        >>> import torch
        >>> from fusedloss.recipes.deeplabcut import WeightedMSECriterion, heatmap_weights
        >>> heat = torch.randn(2, 17, 16, 16, requires_grad=True)
        >>> target = torch.rand(2, 17, 16, 16)
        >>> vis = torch.randint(-1, 2, (2, 17))                  # -1 unlabelled, 0, 1 visible
        >>> w = heatmap_weights(vis, gradient_masking=False, background_weight=0.0)
        >>> WeightedMSECriterion()(heat, target, w).backward()
    """

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = C.number("loss_weight", loss_weight)

    def forward(self, output: torch.Tensor, target: torch.Tensor, weights: Weights = 1.0,
                **kwargs) -> torch.Tensor:
        return weighted_criterion(regression.mse_loss, output, target, weights,
                                  loss_weight=self.loss_weight)


class WeightedHuberCriterion(nn.Module):
    """DeepLabCut's ``WeightedHuberCriterion`` (``nn.HuberLoss``, delta 1), fused:
    ``sum(huber(output - target) * weights) / max(n, 1)``; used for location refinement with
    an integer mask. Same ``forward`` and ``loss_weight`` as :class:`WeightedMSECriterion`
    (e.g. ``loss_weight=0.05``, the locref weight of DeepLabCut's configs).

    Example::

        >>> import torch
        >>> from fusedloss.recipes.deeplabcut import WeightedHuberCriterion
        >>> locref = torch.randn(2, 34, 16, 16, requires_grad=True)
        >>> target = torch.randn(2, 34, 16, 16)
        >>> mask = torch.randint(0, 2, (2, 34, 16, 16))          # DeepLabCut's int locref mask
        >>> WeightedHuberCriterion(loss_weight=0.05)(locref, target, mask).backward()
    """

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = C.number("loss_weight", loss_weight)

    def forward(self, output: torch.Tensor, target: torch.Tensor, weights: Weights = 1.0,
                **kwargs) -> torch.Tensor:
        return weighted_criterion(regression.huber_loss, output, target, weights,
                                  loss_weight=self.loss_weight, delta=1.0)


def heatmap_weights(visibility: torch.Tensor, *, gradient_masking: bool,
                    background_weight: float) -> torch.Tensor:
    """Per-heatmap weights (B, K, 1, 1) float32 from keypoint visibility, on the device.

    Visibility per keypoint: ``-1`` not labelled, ``0`` labelled but not visible, ``> 0``
    visible. A heatmap's weight is that of its most visible animal ``v = max_a vis[b, k, a]``::

        v > 0   -> 1
        v == 0  -> background_weight if gradient_masking else 1
        v < 0   -> 0            (no animal has the keypoint labelled: the only full masking)

    So in multi-animal frames one animal missing a keypoint (or a padded, absent animal) no
    longer masks the heatmap of the animals that have it.

    Args:
        visibility: (B, K) for one animal, or (B, K, A) for A animals (padded animals -1);
            integer or floating. A = 0 counts as no animal labelled.
        gradient_masking: DeepLabCut's ``gradient_masking`` (on for top-down heads).
        background_weight: the weight of labelled-but-invisible keypoints under
            ``gradient_masking`` (DeepLabCut's configs: 0.0), a finite number.

    Returns:
        float32 (B, K, 1, 1), for the criterions' ``weights`` (broadcast over H, W, never
        expanded). Costs 1 device op for (B, K, A) (the max over animals) plus 2 without
        gradient masking, 4 with it, all on (B, K).

    Example::

        >>> import torch
        >>> from fusedloss.recipes.deeplabcut import heatmap_weights
        >>> vis = torch.tensor([[[1, -1], [-1, -1], [0, -1]]])     # B=1, K=3, A=2
        >>> heatmap_weights(vis, gradient_masking=True, background_weight=0.5).flatten().tolist()
        [1.0, 0.0, 0.5]
    """
    C.real("visibility", visibility, allow_bool=False)
    if visibility.dim() not in (2, 3):
        raise ValueError(f"visibility must be (B, K) or (B, K, A); got "
                         f"{C.describe(visibility)}")
    gradient_masking = C.flag("gradient_masking", gradient_masking)
    background_weight = C.number("background_weight", background_weight)
    batch, keypoints = visibility.shape[:2]
    v = visibility
    if v.dim() == 3:
        if v.shape[2] == 0:
            return visibility.new_zeros((batch, keypoints, 1, 1), dtype=torch.float32)
        v = v.amax(dim=2)
    if gradient_masking:
        w = torch.where(v > 0, 1.0, torch.where(v == 0, background_weight, 0.0))
    else:
        w = (v >= 0).to(torch.float32)
    return w.view(batch, keypoints, 1, 1)
