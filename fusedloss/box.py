"""Box regression losses, fused: the IoU family (IoU / GIoU / DIoU / CIoU) and the
distribution focal loss, as row losses of the engine (one value per box or distribution).

Every loss here has the engine's contract: a per-row ``weight`` (shape broadcastable to the
rows, ``pred.shape[:-1]``, or to ``pred.shape[:-1] + (1,)``), the four reductions ("mean"
divides by the number of rows, as torchvision and mmdet do), ``avg_factor`` (a number or a
device tensor), ``loss_weight`` folded into the gradient the forward writes, no host sync,
deterministic, fp16/bf16 read as they are with fp32 math, ``torch.compile`` through a custom op.
Bytes per box, fp32, fwd+bwd with grad_output 1: read pred 16 + target 16 + write the pred
gradient 16 (+ 16 for a target gradient).
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Union

import torch

from ._engine import FusedLossModule, apply_rows, register_loss
from ._validate import check_flag, check_floating, check_param, check_same_device, check_tensor
from .kernels import box as math_
from .reference import box as ref

Number = Union[float, torch.Tensor]

MODES = ("iou", "giou", "diou", "ciou")
FORMATS = ref.FORMATS
_MODE_CODES = {"iou": 0, "giou": 1, "diou": 2, "ciou": 3, "iou_square": 4, "iou_log": 5}
_FLAVOR_CODES = {"torchvision": 0, "mmdet": 1, "ultralytics": 2}


def _box_variant(params: tuple, t_binary: bool) -> int:
    """VARIANT of kernels.box.box_iou: params = (eps, mode, flavour, format) codes."""
    return int(params[1]) + 8 * int(params[2]) + 32 * int(params[3])


def _dfl_variant(params: tuple, t_binary: bool) -> int:
    return 1 if params[0] >= 0 else 0


_BOX = register_loss("box_iou_loss", math_.box_iou, ref.box_iou_loss, ("eps",),
                     variant=_box_variant)
_DFL = register_loss("distribution_focal_loss", math_.distribution_focal,
                     ref.distribution_focal_loss, ("clamp_max",), variant=_dfl_variant)


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_boxes(pred, target):
    check_tensor("pred", pred)
    check_floating("pred", pred)
    if pred.dim() < 1 or pred.shape[-1] != 4:
        raise ValueError(f"pred must hold boxes in its last dimension (..., 4); got shape "
                         f"{tuple(pred.shape)}")
    check_tensor("target", target)
    check_same_device("target", target, pred)
    if not target.dtype.is_floating_point:
        raise TypeError(f"target must be a floating-point box tensor; got dtype {target.dtype}. "
                        f"Pass target.float()")
    try:
        rows = torch.broadcast_shapes(target.shape, pred.shape)
    except RuntimeError:
        rows = None
    if target.dim() < 1 or target.shape[-1] != 4 or rows != pred.shape:
        raise ValueError(f"target of shape {tuple(target.shape)} must be boxes (..., 4) "
                         f"broadcastable to pred's shape {tuple(pred.shape)}")


def _box_loss(pred, target, mode_code: str, flavor: str, reduction, weight, eps, box_format,
              avg_factor, loss_weight):
    box_format = _check_choice("box_format", box_format, FORMATS)
    _check_boxes(pred, target)
    eps = check_param("eps", eps, minimum=0.0)
    params = (eps, float(_MODE_CODES[mode_code]), float(_FLAVOR_CODES[flavor]),
              float(FORMATS.index(box_format)))
    reference = partial(ref.box_iou_loss, pred, target, mode_code, reduction, weight, eps=eps,
                        box_format=box_format, avg_factor=avg_factor, loss_weight=loss_weight,
                        flavor=flavor)
    return apply_rows(_BOX, pred, target, None, params, reduction, weight, avg_factor,
                      loss_weight, reference)


def box_iou_loss(pred: torch.Tensor, target: torch.Tensor, mode: str = "giou",
                 reduction: str = "none", weight: Optional[torch.Tensor] = None, *,
                 eps: float = 1e-7, box_format: str = "xyxy",
                 avg_factor: Optional[Number] = None, loss_weight: Number = 1.0) -> torch.Tensor:
    """IoU-family box loss, fused, one value per box; torchvision's formulas::

        IoU  = I / (U + eps)                                   (I intersection, U union)
        iou  = 1 - IoU
        giou = 1 - IoU + (C - U) / (C + eps)                   (C: enclosing box area)
        diou = 1 - IoU + rho^2 / (cw^2 + ch^2 + eps)           (rho: distance of the centres,
                                                                cw, ch: enclosing box sides)
        ciou = diou + alpha v,  v = 4 / pi^2 (atan(wg / hg) - atan(wp / hp))^2,
               alpha = v / (1 - IoU + v + eps), carrying no gradient

    Same values and gradients as ``torchvision.ops.generalized_box_iou_loss``,
    ``distance_box_iou_loss`` and ``complete_box_iou_loss`` (eps 1e-7): the intersection has a
    gradient only where both its sides are > 0, ties of min/max split the gradient in half
    (identical boxes). Where torchvision's autograd is NaN, the finite limit: CIoU's
    ``atan(w / h)`` at h = 0 gets the derivatives h / (w^2 + h^2) = 0 and -w / (w^2 + h^2),
    and a 0 x 0 box the angle 0 with no gradient (torchvision's value there is NaN too).
    Degenerate and inverted boxes (x2 < x1) go through the same formulas, as in torchvision.

    Args:
        pred: boxes (..., 4), any float dtype and strides.
        target: boxes (..., 4) broadcastable to pred (gets a gradient when it requires one).
        mode: "iou" | "giou" | "diou" | "ciou".
        reduction: "none" (``pred.shape[:-1]``) | "mean" (over boxes) | "sum" |
            "weighted_mean"; the default is torchvision's "none".
        weight: per box, broadcastable to ``pred.shape[:-1]`` or ``pred.shape[:-1] + (1,)``.
        eps: the formulas' eps, >= 0.
        box_format: "xyxy" | "xywh" | "cxcywh" (``torchvision.ops.box_convert``'s names).
        avg_factor, loss_weight: as every fusedloss loss.

    Example::

        >>> import torch, fusedloss
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
        >>> target = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
        >>> fusedloss.box_iou_loss(pred, target, "giou", "sum").backward()
    """
    mode = _check_choice("mode", mode, MODES)
    return _box_loss(pred, target, mode, "torchvision", reduction, weight, eps, box_format,
                     avg_factor, loss_weight)


def distribution_focal_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                            weight: Optional[torch.Tensor] = None, *,
                            avg_factor: Optional[Number] = None, loss_weight: Number = 1.0,
                            clamp_max: Optional[float] = None) -> torch.Tensor:
    """Distribution focal loss (GFL, Li et al. 2020), fused, one value per distribution::

        l = floor(t),  loss = CE(pred, l) (l + 1 - t) + CE(pred, l + 1) (t - l)
        dloss/dpred = softmax(pred) - the two-hot target   (written by the forward)

    as mmdet's ``distribution_focal_loss``. ``clamp_max``: clamp the target to [0, clamp_max]
    first, as ultralytics' ``DFLoss`` does (pass ``reg_max - 1 - 0.01``). A target outside
    [0, n - 1) is not checked (that would sync the host): the two-hot mass falling outside the
    n bins is dropped, as ``fusedloss.reference`` computes it.

    Args:
        pred: logits (..., n) of a discretised distance, any float dtype.
        target: (...) = pred.shape[:-1], floating distances in bins (gets the gradient
            ``x_l - x_(l+1)`` when it requires one; 0 where clamped).
        reduction: "none" (target's shape) | "mean" (over distributions) | "sum" |
            "weighted_mean".
        weight: broadcastable to target's shape.

    Example::

        >>> import torch, fusedloss
        >>> logits = torch.randn(8, 16, requires_grad=True)
        >>> fusedloss.distribution_focal_loss(logits, torch.rand(8) * 14.9).backward()
    """
    check_tensor("pred", pred)
    check_floating("pred", pred)
    check_tensor("target", target)
    check_same_device("target", target, pred)
    if pred.dim() < 1 or tuple(target.shape) != tuple(pred.shape[:-1]):
        raise ValueError(f"target must have shape pred.shape[:-1] = {tuple(pred.shape[:-1])} "
                         f"(one distance per distribution); got {tuple(target.shape)}")
    if not target.dtype.is_floating_point:
        raise TypeError(f"target must be floating (distances in bins); got {target.dtype}")
    params = (-1.0 if clamp_max is None else check_param("clamp_max", clamp_max, minimum=0.0),)
    reference = partial(ref.distribution_focal_loss, pred, target, reduction, weight,
                        avg_factor=avg_factor, loss_weight=loss_weight, clamp_max=clamp_max)
    return apply_rows(_DFL, pred, target, None, params, reduction, weight, avg_factor,
                      loss_weight, reference)


# --------------------------------------------------------------------------- mmdet modules

class _MMDetBoxLoss(torch.nn.Module):
    """mmdet's box-loss module contract: ``(eps, reduction, loss_weight)`` at construction,
    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``; a
    weight of shape (N, 4) is averaged over the 4 coordinates first, as mmdet does. mmdet's
    formula (``flavor="mmdet"`` in ``fusedloss.reference.box``): see each class."""
    mode = "giou"

    def __init__(self, eps: float = 1e-6, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        self.eps, self.reduction, self.loss_weight = eps, reduction, loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = reduction_override if reduction_override else self.reduction
        if isinstance(weight, torch.Tensor) and weight.dim() > 1 and weight.shape[-1] == 4 \
                and weight.shape != pred.shape[:-1]:
            weight = weight.mean(-1)
        return _box_loss(pred, target, self.mode, "mmdet", reduction, weight, self.eps,
                         "xyxy", avg_factor, self.loss_weight)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"


class IoULoss(_MMDetBoxLoss):
    """mmdet ``IoULoss``: ``ious = bbox_overlaps(pred, target).clamp(min=eps)`` (union
    ``max(U, eps)``, intersection sides clamped at 0), then ``mode`` "linear" ``1 - ious``,
    "square" ``1 - ious^2`` or "log" ``-log(ious)`` (mmdet's default)."""

    def __init__(self, linear: bool = False, eps: float = 1e-6, reduction: str = "mean",
                 loss_weight: float = 1.0, mode: str = "log"):
        super().__init__(eps, reduction, loss_weight)
        if check_flag("linear", linear):
            mode = "linear"
        mode = _check_choice("mode", mode, ("linear", "square", "log"))
        self.mode = {"linear": "iou", "square": "iou_square", "log": "iou_log"}[mode]


class GIoULoss(_MMDetBoxLoss):
    """mmdet ``GIoULoss``: ``1 - (IoU - (Cd - Ud) / Cd)`` with ``Ud = max(U, eps)``,
    ``Cd = max(C, eps)`` (torchvision instead divides by ``U + eps`` and ``C + eps``)."""
    mode = "giou"


class DIoULoss(_MMDetBoxLoss):
    """mmdet ``DIoULoss``: ``1 - (IoU - rho^2 / c^2)``, ``IoU = I / (U + eps)``,
    ``c^2 = cw^2 + ch^2 + eps`` with the enclosing sides clamped at 0."""
    mode = "diou"


class CIoULoss(_MMDetBoxLoss):
    """mmdet ``CIoULoss``: ``1 - clamp(IoU - (rho^2 / c^2 + alpha v), -1, 1)`` with
    ``v = 4 / pi^2 (atan(wg / (hg + eps)) - atan(wp / (hp + eps)))^2`` and
    ``alpha = [IoU > 0.5] v / (1 - IoU + v)`` (no gradient); torchvision's alpha has no
    ``[IoU > 0.5]`` factor and an eps, and its heights no eps."""
    mode = "ciou"


class DistributionFocalLoss(FusedLossModule):
    """mmdet ``DistributionFocalLoss(reduction, loss_weight)``; ``forward(pred, target,
    weight=None, avg_factor=None, reduction_override=None)``."""
    functional = staticmethod(distribution_focal_loss)

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight=loss_weight)

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = reduction_override if reduction_override else self.reduction
        return distribution_focal_loss(pred, target, reduction, weight, avg_factor=avg_factor,
                                       loss_weight=self.loss_weight)
