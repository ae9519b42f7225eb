"""Shrinkage loss on the fused engine (Lu et al., "Deep Regression Tracking with Shrinkage Loss",
ECCV 2018): regresses a response map against a soft (Gaussian) label, shrinking the loss of the
many easy background samples.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ._docs import fill
from ._engine import FusedLossModule, register_loss
from ._validate import check_flag, check_param
from .kernels import shrinkage as math
from .reference.shrinkage import shrinkage_loss as _reference

Number = Union[float, torch.Tensor]

_SHRINKAGE = register_loss("shrinkage_loss", math.shrinkage, _reference,
                           ("a", "c", "exp_target_weight"))


def shrinkage_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                   a: float = 10.0, c: float = 0.2, exp_target_weight: bool = True,
                   weight: Optional[torch.Tensor] = None, *, avg_factor: Optional[Number] = None,
                   loss_weight: Number = 1.0) -> torch.Tensor:
    """Shrinkage loss, fused: ``L = exp(Y) * l^2 / (1 + exp(a (c - l)))``, ``l = |P - Y|``.

    P is ``input`` (the predicted response map), Y is ``target`` (the soft label, e.g. a
    Gaussian centred on the object). The modulating factor ``1 / (1 + exp(a (c - l)))``
    shrinks the loss of easy samples (l < c) while leaving hard ones almost untouched; the
    ``exp(Y)`` factor (``exp_target_weight=True``) up-weights the samples near the target centre.
    The paper uses a = 10, c = 0.2.

    Computed as ``exp(Y) * l^2 * sigmoid(a (l - c))`` (the same function), which never overflows
    and whose gradient is exactly 0 at l = 0 for any a, c (the paper's literal form gives NaN
    gradients there once a c > 88 in float32). Gradients::

        f = sigmoid(a (l - c)), w = exp(Y) (or 1)
        dL/dP = sign(P - Y) * w * (2 l f + l^2 a f (1 - f))
        dL/dY = -dL/dP + L        (the + L only with exp_target_weight; else -dL/dP)

    Both input and target get gradients (the target's through the exp(Y) weight too).

    Note: this follows the paper's formula. The authors' released MATLAB code differs: it
    uses another sample weight and a gradient without the sign(P - Y) factor.

    Args:
        input: prediction P, any shape, float16/bfloat16/float32/float64 (any strides).
        target: label Y, floating, broadcastable to ``input.shape`` (read without a copy; its
            gradient is reduced over the broadcast dimensions). Its dtype may differ from input's.
        a: shrinkage speed, finite and > 0 (ValueError otherwise).
        c: localisation of the shrinkage, any finite number (negative too; ValueError for
            NaN/inf).
        exp_target_weight: multiply by exp(Y) as in the paper (False: plain l^2 modulated).
{engine_args}

{engine_returns}

    Example (a tracker's response maps, one Gaussian label shared by the batch)::

        >>> import torch, fusedloss
        >>> ys, xs = torch.meshgrid(torch.arange(17.0), torch.arange(17.0), indexing="ij")
        >>> label = torch.exp(-((ys - 8) ** 2 + (xs - 8) ** 2) / (2 * 2.0 ** 2))  # (17, 17)
        >>> response = torch.randn(4, 1, 17, 17, requires_grad=True)
        >>> loss = fusedloss.shrinkage_loss(response, label, a=10.0, c=0.2)
        >>> loss.backward()
        >>> response.grad.shape
        torch.Size([4, 1, 17, 17])
    """
    a = check_param("a", a, minimum=0.0, strict=True)
    c = check_param("c", c)
    params = (a, c, 1.0 if check_flag("exp_target_weight", exp_target_weight) else 0.0)
    return _SHRINKAGE(input, target, params, reduction, weight, avg_factor, loss_weight)


fill(shrinkage_loss)


class ShrinkageLoss(FusedLossModule):
    """``nn.Module`` wrapper of :func:`shrinkage_loss`;
    ``forward(input, target, weight=None, *, avg_factor=None)``.

    Example::

        >>> import torch, fusedloss
        >>> crit = fusedloss.ShrinkageLoss(a=10.0, c=0.2, loss_weight=0.5)
        >>> crit(torch.rand(2, 1, 9, 9), torch.rand(2, 1, 9, 9)).shape
        torch.Size([])
    """
    functional = staticmethod(shrinkage_loss)

    def __init__(self, reduction: str = "mean", a: float = 10.0, c: float = 0.2,
                 exp_target_weight: bool = True, *, loss_weight: Number = 1.0):
        super().__init__(reduction, loss_weight=loss_weight, a=a, c=c,
                         exp_target_weight=exp_target_weight)
