"""Regression family on the fused engine: Huber, smooth-L1, L1, MSE.

Drop-ins for ``torch.nn.functional`` by keyword (``reduction`` is the third positional argument;
torch's legacy ``size_average, reduce`` are not accepted), plus broadcast ``weight``,
``"weighted_mean"``, ``avg_factor`` and ``loss_weight`` (see the README's reductions table).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import reference
from ._docs import fill
from ._engine import FusedLossModule, register_loss
from ._validate import check_param
from .kernels import regression as math

Number = Union[float, torch.Tensor]

_HUBER = register_loss("huber_loss", math.huber, reference.huber_loss, ("delta",))
_SMOOTH_L1 = register_loss("smooth_l1_loss", math.smooth_l1, reference.smooth_l1_loss, ("beta",))
_L1 = register_loss("l1_loss", math.l1, reference.l1_loss)
_MSE = register_loss("mse_loss", math.mse, reference.mse_loss)

_INPUT_TARGET_DOC = """
    Args:
        input: prediction, any shape, float16/bfloat16/float32/float64 (any strides).
        target: floating, broadcastable to ``input.shape`` (read without a copy; its gradient is
            reduced over the broadcast dimensions). Its dtype may differ from input's.
{engine_args}

{engine_returns}
"""


def huber_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
               delta: float = 1.0, weight: Optional[torch.Tensor] = None, *,
               avg_factor: Optional[Number] = None, loss_weight: Number = 1.0) -> torch.Tensor:
    """Huber loss, fused: ``l = 0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta)``, ``d = input - target``.

    Same values as ``torch.nn.functional.huber_loss`` (which also divides a weighted "mean"
    by numel). ``delta`` must be finite and > 0.
    {common}
    Example (CoTracker-style visibility over (B, T, N, 2) tracks)::

        >>> import torch, fusedloss
        >>> pred = torch.randn(2, 8, 16, 2, requires_grad=True)
        >>> gt = torch.randn(2, 8, 16, 2)
        >>> vis = torch.rand(2, 8, 16, 1) > 0.3                  # broadcast over the 2 coordinates
        >>> loss = fusedloss.huber_loss(pred, gt, "weighted_mean", delta=6.0, weight=vis,
        ...                             loss_weight=0.05)
        >>> loss.backward()
    """
    delta = check_param("delta", delta, minimum=0.0, strict=True)
    return _HUBER(input, target, (delta,), reduction, weight, avg_factor, loss_weight)


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                   beta: float = 1.0, weight: Optional[torch.Tensor] = None, *,
                   avg_factor: Optional[Number] = None, loss_weight: Number = 1.0) -> torch.Tensor:
    """Smooth-L1 loss, fused: ``l = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta``.

    ``beta == 0`` is exactly L1 (as torch). ``beta`` must be finite and >= 0.
    {common}
    Example::

        >>> import torch, fusedloss
        >>> x, y = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
        >>> fusedloss.smooth_l1_loss(x, y, beta=0.5, weight=torch.rand(4, 1)).backward()
    """
    beta = check_param("beta", beta, minimum=0.0)
    return _SMOOTH_L1(input, target, (beta,), reduction, weight, avg_factor, loss_weight)


def l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
            weight: Optional[torch.Tensor] = None, *, avg_factor: Optional[Number] = None,
            loss_weight: Number = 1.0) -> torch.Tensor:
    """L1 loss, fused: ``l = |input - target|``.

    Note: ``torch.nn.functional.l1_loss(..., weight=w)`` with "mean" divides by sum(w); that is
    ``reduction="weighted_mean"`` here ("mean" always divides by numel).
    {common}
    Example::

        >>> import torch, fusedloss
        >>> x, y = torch.randn(3, 7, requires_grad=True), torch.randn(3, 7)
        >>> fusedloss.l1_loss(x, y, "weighted_mean", weight=torch.rand(3, 7) > 0.5).backward()
    """
    return _L1(input, target, (), reduction, weight, avg_factor, loss_weight)


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
             weight: Optional[torch.Tensor] = None, *, avg_factor: Optional[Number] = None,
             loss_weight: Number = 1.0) -> torch.Tensor:
    """Mean-squared-error loss, fused: ``l = (input - target)^2``.

    Note: ``torch.nn.functional.mse_loss(..., weight=w)`` with "mean" divides by sum(w); that is
    ``reduction="weighted_mean"`` here.
    {common}
    Example (DeepLabCut-style heatmaps with per-keypoint weights)::

        >>> import torch, fusedloss
        >>> heat = torch.randn(2, 17, 32, 32, requires_grad=True)
        >>> target = torch.rand(2, 17, 32, 32)
        >>> kp_weight = torch.ones(2, 17, 1, 1)                 # visibility -1 -> weight 0
        >>> fusedloss.mse_loss(heat, target, "sum", weight=kp_weight,
        ...                    avg_factor=None).backward()
    """
    return _MSE(input, target, (), reduction, weight, avg_factor, loss_weight)


for _fn in (huber_loss, smooth_l1_loss, l1_loss, mse_loss):
    _fn.__doc__ = _fn.__doc__.replace("{common}", _INPUT_TARGET_DOC)
    fill(_fn)


class HuberLoss(FusedLossModule):
    """``nn.Module`` wrapper of :func:`huber_loss`; ``forward(input, target, weight=None, *, avg_factor=None)``."""
    functional = staticmethod(huber_loss)

    def __init__(self, reduction: str = "mean", delta: float = 1.0, *, loss_weight: Number = 1.0):
        super().__init__(reduction, loss_weight=loss_weight, delta=delta)


class SmoothL1Loss(FusedLossModule):
    """``nn.Module`` wrapper of :func:`smooth_l1_loss`."""
    functional = staticmethod(smooth_l1_loss)

    def __init__(self, reduction: str = "mean", beta: float = 1.0, *, loss_weight: Number = 1.0):
        super().__init__(reduction, loss_weight=loss_weight, beta=beta)


class L1Loss(FusedLossModule):
    """``nn.Module`` wrapper of :func:`l1_loss`."""
    functional = staticmethod(l1_loss)

    def __init__(self, reduction: str = "mean", *, loss_weight: Number = 1.0):
        super().__init__(reduction, loss_weight=loss_weight)


class MSELoss(FusedLossModule):
    """``nn.Module`` wrapper of :func:`mse_loss`."""
    functional = staticmethod(mse_loss)

    def __init__(self, reduction: str = "mean", *, loss_weight: Number = 1.0):
        super().__init__(reduction, loss_weight=loss_weight)
