"""mmdetection 3.x losses with mmdet's constructors and ``forward`` signatures, fused.

Each module takes mmdet's config keywords (``dict(type=..., **kwargs)``) and
``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)`` with mmdet
3.x's ``weight_reduce_loss`` semantics:

==========================  ======================================================
reduction (or override)     result (``loss_weight *`` ...)
==========================  ======================================================
``"none"``                  ``loss * weight`` elementwise (``avg_factor`` ignored)
``"sum"``                   ``sum(loss * weight)``; with ``avg_factor``: ValueError
``"mean"``                  ``mean(loss * weight)`` over the loss's elements
``"mean"`` + avg_factor     ``sum(loss * weight) / (avg_factor + eps)``,
                            eps = ``torch.finfo(torch.float32).eps``
==========================  ======================================================

``avg_factor`` may be a number or a one-element tensor (then ``+ eps`` is one device op and
the kernel reads it on the device: no host sync). The "loss" whose elements ``"mean"``
counts is mmdet's: (N, C) for focal/varifocal and the regression losses, the per-anchor
(N,) sum over classes for :class:`QualityFocalLoss`. ``loss_weight`` is folded into the
gradient the forward writes. Scalar results are float32 for float16/bfloat16 predictions.

Register them in mmdet's registry with one line (fusedloss does not import mmdet)::

    from mmdet.registry import MODELS; fusedloss.recipes.mmdet.register(MODELS)

then write ``type='FusedFocalLoss'`` (etc.) in a config; see the README's table.
"""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch
import torch.nn as nn

from .. import box, focal, regression
from .._validate import check_flag
from . import _checks as C

__all__ = ["FocalLoss", "QualityFocalLoss", "VarifocalLoss", "SmoothL1Loss", "L1Loss",
           "MSELoss", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "DistributionFocalLoss",
           "register", "EPS", "MODULES"]

#: mmdet 3.x ``weight_reduce_loss``: ``loss.sum() / (avg_factor + eps)``
EPS = float(torch.finfo(torch.float32).eps)

_REDUCTIONS = ("none", "mean", "sum")

AvgFactor = Optional[Union[float, int, torch.Tensor]]


class _MMDetLoss(nn.Module):
    """reduction / reduction_override / avg_factor handling shared by the modules."""

    def __init__(self, reduction: str, loss_weight: float):
        super().__init__()
        C.choice("reduction", reduction, _REDUCTIONS)
        self.reduction = reduction
        self.loss_weight = C.number("loss_weight", loss_weight)

    def _reduce(self, reduction_override, avg_factor: AvgFactor, pred: torch.Tensor):
        """(fusedloss reduction, avg_factor + eps or None) for mmdet's arguments."""
        C.choice("reduction_override", reduction_override, (None,) + _REDUCTIONS)
        reduction = reduction_override if reduction_override else self.reduction
        if avg_factor is None or reduction == "none":
            return reduction, None
        if reduction == "sum":
            raise ValueError(f"avg_factor can not be used with reduction='sum' (mmdet's "
                             f"weight_reduce_loss), got avg_factor={_show(avg_factor)}")
        if isinstance(avg_factor, torch.Tensor):
            if avg_factor.numel() != 1:
                raise ValueError(f"avg_factor tensor must have exactly one element; got "
                                 f"{C.describe(avg_factor)}")
            C.real("avg_factor", avg_factor, allow_bool=False)
            C.same_device("avg_factor", avg_factor, pred, "pred")
            C.no_grad("avg_factor", avg_factor)
            return "mean", avg_factor + EPS  # one device op, read by the kernel
        if not isinstance(avg_factor, numbers.Real) or isinstance(avg_factor, bool):
            raise TypeError(f"avg_factor must be a number or a one-element tensor, got "
                            f"{type(avg_factor).__name__}")
        return "mean", C.number("avg_factor", avg_factor) + EPS

    def extra_repr(self) -> str:
        items = [f"{k}={getattr(self, k)!r}" for k in self._repr_keys]
        return ", ".join(items + [f"reduction={self.reduction!r}",
                                  f"loss_weight={self.loss_weight!r}"])

    _repr_keys: tuple = ()


def _show(value) -> str:
    return C.describe(value) if isinstance(value, torch.Tensor) else repr(value)


def _sigmoid_only(name: str, use_sigmoid) -> bool:
    if not use_sigmoid:
        raise ValueError(f"use_sigmoid must be True (mmdet's {name} supports only the sigmoid "
                         f"form), got {use_sigmoid!r}")
    return True


def _focal_weight(weight: Optional[torch.Tensor], pred: torch.Tensor):
    """mmdet's focal-loss weight rule: a weight of another shape than the (N, C) loss is
    per anchor, (N,) -> (N, 1), or flattened per anchor and class, (N*C,) -> (N, C). Views
    only: the weight is never expanded."""
    if weight is None:
        return None
    C.real("weight", weight)
    if weight.shape == pred.shape:
        return weight
    if weight.dim() >= 1 and pred.dim() >= 1 and weight.shape[0] == pred.shape[0]:
        weight = weight.reshape(-1, 1)
    elif weight.numel() == pred.numel() and pred.dim() >= 1 and pred.shape[0] > 0:
        weight = weight.reshape(pred.shape[0], -1)
    else:
        raise ValueError(f"weight must have pred's shape {tuple(pred.shape)}, one value per "
                         f"anchor ({pred.shape[0] if pred.dim() else '?'},) or one per anchor "
                         f"and class ({pred.numel()},) (mmdet's focal-loss rule); got "
                         f"{C.describe(weight)}")
    if weight.dim() != pred.dim():
        raise ValueError(f"weight reshaped by mmdet's rule to {tuple(weight.shape)} does not "
                         f"match pred's {pred.dim()} dims (shape {tuple(pred.shape)})")
    return weight


class FocalLoss(_MMDetLoss):
    """mmdet's ``FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25, reduction='mean',
    loss_weight=1.0, activated=False)``, fused::

        loss = alpha_t * BCE(pred, t) * (1 - p_t)^gamma          elementwise, (N, C)

    ``target``: class indices (N,) (C, or any value outside [0, C), is background; no one-hot
    tensor is built) or one-hot / soft targets (N, C) as mmdet's ``pred.dim() ==
    target.dim()`` branch (an integer one-hot is converted to pred's dtype: one device op, as
    mmdet's ``type_as``). ``activated=True``: ``pred`` holds probabilities (mmdet's
    ``py_focal_loss_with_prob``). ``weight``: (N, C), or per anchor (N,) (reshaped to (N, 1)),
    or flattened (N*C,) (reshaped to (N, C)), as mmdet does; never expanded. Reductions: the
    module docstring's table. ``alpha`` must be >= 0 (mmdet's alpha_t for alpha < 0 is not
    expressible here: ValueError).

    Example::

        >>> import torch
        >>> from fusedloss.recipes.mmdet import FocalLoss
        >>> loss_cls = FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
        >>> cls_score = torch.randn(6, 3, requires_grad=True)
        >>> labels = torch.tensor([0, 3, 3, 2, 3, 3])             # 3 == num_classes: background
        >>> label_weights = torch.ones(6)                         # per anchor
        >>> loss_cls(cls_score, labels, label_weights, avg_factor=2.0).backward()
    """

    _repr_keys = ("gamma", "alpha", "activated")

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: float = 0.25,
                 reduction: str = "mean", loss_weight: float = 1.0, activated: bool = False):
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _sigmoid_only("FocalLoss", use_sigmoid)
        self.gamma = C.number("gamma", gamma, minimum=0.0)
        self.alpha = C.number("alpha", alpha, minimum=0.0)
        self.activated = C.flag("activated", activated)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None, avg_factor: AvgFactor = None,
                reduction_override: Optional[str] = None) -> torch.Tensor:
        C.floating("pred", pred)
        C.tensor("target", target)
        reduction, avg = self._reduce(reduction_override, avg_factor, pred)
        weight = _focal_weight(weight, pred)
        if target.dim() == pred.dim() and not target.dtype.is_floating_point:
            C.same_device("target", target, pred, "pred")
            target = target.to(pred.dtype)  # mmdet: target.type_as(pred)
        return focal.sigmoid_focal_loss(pred, target, self.alpha, self.gamma, reduction, weight,
                                        avg_factor=avg, from_logits=not self.activated,
                                        loss_weight=self.loss_weight)


def _qfl_dense_target(target, pred: torch.Tensor) -> torch.Tensor:
    """(label, score) -> the (N, C) score tensor mmdet's QFL reads it as (score at the label's
    class, 0 elsewhere; labels outside [0, C) are background), without a host sync: labels
    mapped into [0, C] (C for background) by clamp + remainder, scattered into an (N, C + 1)
    zero tensor whose first C columns are the target (a strided view, read as it is).
    4 device ops: zeros (writes 4 B per element), clamp, remainder, scatter (N elements)."""
    if len(target) != 2:
        raise ValueError(f"target for QFL must be a tensor or a (label, score) pair, got "
                         f"{len(target)} elements")
    label, score = target
    n, c = pred.shape[0], pred.shape[1]
    C.real("label", label, allow_bool=False)
    if label.dtype.is_floating_point:
        raise TypeError(f"label must hold integer class indices; got {C.describe(label)}")
    C.shape("label", label, (n,), "one class index per anchor, N")
    C.floating("score", score)
    C.shape("score", score, (n,), "one quality score per anchor, N")
    C.same_device("label", label, pred, "pred")
    C.same_device("score", score, pred, "pred")
    index = label.clamp(-1, c).remainder(c + 1).to(torch.int64).view(n, 1)  # no-op for int64
    dense = torch.zeros((n, c + 1), dtype=score.dtype, device=pred.device)
    dense = dense.scatter(1, index, score.view(n, 1))
    return dense[:, :c]


def _anchor_weight(weight: Optional[torch.Tensor], pred: torch.Tensor):
    """A weight of mmdet's per-anchor QFL loss (pred.shape without the class dim 1, by
    broadcasting) as a weight of the elementwise (N, C, ...) loss: a size-1 class dim."""
    if weight is None:
        return None
    C.real("weight", weight)
    anchors = (pred.shape[0],) + tuple(pred.shape[2:])
    if weight.dim() > len(anchors) or any(
            w != 1 and w != a for w, a in zip(reversed(weight.shape), reversed(anchors))):
        raise ValueError(f"weight must broadcast to the per-anchor loss of shape {anchors} "
                         f"(pred's shape without the class dim); got {C.describe(weight)}")
    weight = weight.reshape((1,) * (len(anchors) - weight.dim()) + tuple(weight.shape))
    return weight.unsqueeze(1)


class QualityFocalLoss(_MMDetLoss):
    """mmdet's ``QualityFocalLoss(use_sigmoid=True, beta=2.0, reduction='mean',
    loss_weight=1.0, activated=False)`` (GFL), fused::

        loss_nc = BCE(pred, s) * |s - sigmoid(pred)|^beta      s: the score target (0 for negatives)
        loss_n  = sum_c loss_nc                                  mmdet's per-anchor loss

    ``target``: mmdet's ``(label, score)`` pair — label (N,) class indices (C or out of range:
    background), score (N,) the IoU at the label — or an (N, C, ...) score tensor (mmdet's
    ``quality_focal_loss_tensor_target``). ``weight`` broadcasts to the per-anchor loss
    (N,). ``"mean"`` is mmdet's: over the N anchors (sum / N), not the N*C elements; with
    avg_factor sum / (avg_factor + eps). ``"none"`` returns the per-anchor (N,) losses (one
    more device op: the sum over classes). ``activated=True``: pred holds probabilities.

    Cost of a (label, score) target: the dense score tensor, 4 device ops (one writes 4 B per
    element, the fused pass reads it: 8 B per element more than a tensor target).

    Example::

        >>> import torch
        >>> from fusedloss.recipes.mmdet import QualityFocalLoss
        >>> qfl = QualityFocalLoss(use_sigmoid=True, beta=2.0, loss_weight=1.0)
        >>> cls_score = torch.randn(6, 3, requires_grad=True)
        >>> labels = torch.tensor([1, 3, 3, 0, 3, 3])
        >>> score = torch.tensor([0.8, 0.0, 0.0, 0.6, 0.0, 0.0])
        >>> qfl(cls_score, (labels, score), torch.ones(6), avg_factor=2.0).backward()
    """

    _repr_keys = ("beta", "activated")

    def __init__(self, use_sigmoid: bool = True, beta: float = 2.0, reduction: str = "mean",
                 loss_weight: float = 1.0, activated: bool = False):
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _sigmoid_only("QualityFocalLoss", use_sigmoid)
        self.beta = C.number("beta", beta, minimum=0.0)
        self.activated = C.flag("activated", activated)

    def forward(self, pred: torch.Tensor, target, weight: Optional[torch.Tensor] = None,
                avg_factor: AvgFactor = None,
                reduction_override: Optional[str] = None) -> torch.Tensor:
        C.floating("pred", pred)
        if pred.dim() < 2:
            raise ValueError(f"pred must be (N, C, ...) with the classes in dim 1; got "
                             f"{C.describe(pred)}")
        reduction, avg = self._reduce(reduction_override, avg_factor, pred)
        weight = _anchor_weight(weight, pred)
        if isinstance(target, torch.Tensor):
            if target.shape != pred.shape:
                raise ValueError(f"target tensor must have pred's shape {tuple(pred.shape)} "
                                 f"(one score per class); got {C.describe(target)}")
        elif isinstance(target, (tuple, list)):
            if pred.dim() != 2:
                raise ValueError(f"a (label, score) target needs pred of shape (N, C); got "
                                 f"{C.describe(pred)}")
            target = _qfl_dense_target(target, pred)
        else:
            raise TypeError(f"target must be a tensor or a (label, score) pair, got "
                            f"{type(target).__name__}")
        per_class = pred.shape[1]
        if reduction == "mean" and avg is None:
            anchors = pred.numel() // per_class if per_class else 0
            avg = float(anchors) if anchors else None  # mmdet's mean over anchors
        out = focal.quality_focal_loss(pred, target, self.beta, reduction, weight,
                                       avg_factor=avg, from_logits=not self.activated,
                                       loss_weight=self.loss_weight)
        return out.sum(1) if reduction == "none" else out


class VarifocalLoss(_MMDetLoss):
    """mmdet's ``VarifocalLoss(use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True,
    reduction='mean', loss_weight=1.0)`` (VFNet), fused::

        w    = t (or 1 if not iou_weighted)   where t > 0
             = alpha * |sigmoid(pred) - t|^gamma   where t <= 0
        loss = BCE(pred, t) * w                  (N, C), the weight not detached

    ``target``: the IoU-aware score tensor of pred's shape. ``weight`` broadcasts as torch
    does (mmdet multiplies ``loss * weight``); never expanded. No extra device ops.

    Example::

        >>> import torch
        >>> from fusedloss.recipes.mmdet import VarifocalLoss
        >>> vfl = VarifocalLoss(use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True)
        >>> cls_score = torch.randn(6, 3, requires_grad=True)
        >>> iou_targets = torch.zeros(6, 3); iou_targets[0, 1] = 0.7
        >>> vfl(cls_score, iou_targets, avg_factor=torch.tensor(1.0)).backward()
    """

    _repr_keys = ("alpha", "gamma", "iou_weighted")

    def __init__(self, use_sigmoid: bool = True, alpha: float = 0.75, gamma: float = 2.0,
                 iou_weighted: bool = True, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)
        self.use_sigmoid = _sigmoid_only("VarifocalLoss", use_sigmoid)
        self.alpha = C.number("alpha", alpha, minimum=0.0)
        self.gamma = C.number("gamma", gamma, minimum=0.0)
        self.iou_weighted = C.flag("iou_weighted", iou_weighted)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None, avg_factor: AvgFactor = None,
                reduction_override: Optional[str] = None) -> torch.Tensor:
        C.floating("pred", pred)
        C.tensor("target", target)
        if target.shape != pred.shape:
            raise ValueError(f"target must have pred's shape {tuple(pred.shape)}; got "
                             f"{C.describe(target)}")
        reduction, avg = self._reduce(reduction_override, avg_factor, pred)
        return focal.varifocal_loss(pred, target, self.alpha, self.gamma, self.iou_weighted,
                                    reduction, weight, avg_factor=avg,
                                    loss_weight=self.loss_weight)


class _Regression(_MMDetLoss):
    _fn = None  # the fused function
    _empty_is_zero = False  # mmdet's L1 / smooth-L1: `if target.numel() == 0: pred.sum() * 0`

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)

    def _params(self) -> dict:
        return {}

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None, avg_factor: AvgFactor = None,
                reduction_override: Optional[str] = None, **kwargs) -> torch.Tensor:
        C.floating("pred", pred)
        C.tensor("target", target)
        reduction, avg = self._reduce(reduction_override, avg_factor, pred)
        if self._empty_is_zero and target.numel() == 0:
            return self._empty(pred, weight, reduction, avg)
        return type(self)._fn(pred, target, reduction, weight=weight, avg_factor=avg,
                              loss_weight=self.loss_weight, **self._params())


    def _empty(self, pred, weight, reduction: str, avg):
        """mmdet's empty-target path: the elementwise loss is ``pred.sum() * 0`` (0-d), then
        weighted and reduced as any loss (tiny tensors: no fused launch)."""
        loss = pred.sum() * 0
        if weight is not None:
            loss = loss * weight
        if avg is not None:
            loss = loss.sum() / avg
        elif reduction == "mean":
            loss = loss.mean()
        elif reduction == "sum":
            loss = loss.sum()
        return loss * self.loss_weight


class SmoothL1Loss(_Regression):
    """mmdet's ``SmoothL1Loss(beta=1.0, reduction='mean', loss_weight=1.0)``, fused:
    ``0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta``; beta > 0 (as mmdet's assert). An
    empty target gives ``pred.sum() * 0 * loss_weight`` as mmdet (not NaN).
    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None, **kwargs)``.

    Example::

        >>> import torch
        >>> from fusedloss.recipes.mmdet import SmoothL1Loss
        >>> loss_bbox = SmoothL1Loss(beta=1.0 / 9.0, loss_weight=1.0)
        >>> bbox_pred, bbox_targets = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
        >>> bbox_weights = torch.ones(6, 4)
        >>> loss_bbox(bbox_pred, bbox_targets, bbox_weights, avg_factor=6).backward()
    """

    _fn = staticmethod(regression.smooth_l1_loss)
    _empty_is_zero = True
    _repr_keys = ("beta",)

    def __init__(self, beta: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)
        self.beta = C.number("beta", beta, minimum=0.0, strict=True)

    def _params(self) -> dict:
        return {"beta": self.beta}


class L1Loss(_Regression):
    """mmdet's ``L1Loss(reduction='mean', loss_weight=1.0)``, fused: ``|pred - target|``; an
    empty target gives ``pred.sum() * 0 * loss_weight`` as mmdet.

    Example::

        >>> import torch
        >>> from fusedloss.recipes.mmdet import L1Loss
        >>> pred, target = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
        >>> L1Loss(loss_weight=5.0)(pred, target, reduction_override="sum").backward()
    """

    _fn = staticmethod(regression.l1_loss)
    _empty_is_zero = True


class MSELoss(_Regression):
    """mmdet's ``MSELoss(reduction='mean', loss_weight=1.0)``, fused: ``(pred - target)^2``.

    Example::

        >>> import torch
        >>> from fusedloss.recipes.mmdet import MSELoss
        >>> pred, target = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
        >>> MSELoss(loss_weight=0.5)(pred, target, torch.rand(6, 4)).backward()
    """

    _fn = staticmethod(regression.mse_loss)


class _BoxLoss(_MMDetLoss):
    """mmdet's box-loss modules: ``(eps, reduction, loss_weight)`` at construction,
    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``; boxes
    xyxy (N, 4); a weight of shape (N, 4) is averaged over the coordinates first, as mmdet
    does. mmdet's formulas (``flavor="mmdet"`` in ``fusedloss.reference.box``): see each
    class. mmdet's ``if weight is not None and not torch.any(weight > 0)`` shortcut (a host
    sync) is not needed: zero weights give the same 0 and zero gradients."""
    _mode = "giou"
    _repr_keys = ("eps",)

    def __init__(self, eps: float = 1e-6, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)
        self.eps = C.number("eps", eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None, avg_factor: AvgFactor = None,
                reduction_override: Optional[str] = None, **kwargs) -> torch.Tensor:
        C.tensor("pred", pred)
        reduction, avg = self._reduce(reduction_override, avg_factor, pred)
        if isinstance(weight, torch.Tensor) and weight.dim() > 1 and weight.shape[-1] == 4 \
                and weight.shape != pred.shape[:-1]:
            weight = weight.mean(-1)
        return box._box_loss(pred, target, self._mode, "mmdet", reduction, weight, self.eps,
                             "xyxy", avg, self.loss_weight)


class IoULoss(_BoxLoss):
    """mmdet ``IoULoss(linear=False, eps=1e-6, reduction='mean', loss_weight=1.0,
    mode='log')``: ``ious = bbox_overlaps(pred, target).clamp(min=eps)`` (union
    ``max(U, eps)``, intersection sides clamped at 0), then ``mode`` "linear" ``1 - ious``,
    "square" ``1 - ious^2`` or "log" ``-log(ious)`` (mmdet's default).

    Example::

        >>> import torch
        >>> from fusedloss.recipes.mmdet import IoULoss
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
        >>> IoULoss(mode="linear")(pred, torch.tensor([[1.0, 0.0, 3.0, 2.0]])).backward()
    """
    _repr_keys = ("mode", "eps")

    def __init__(self, linear: bool = False, eps: float = 1e-6, reduction: str = "mean",
                 loss_weight: float = 1.0, mode: str = "log"):
        super().__init__(eps, reduction, loss_weight)
        if check_flag("linear", linear):
            mode = "linear"
        C.choice("mode", mode, ("linear", "square", "log"))
        self.mode = mode
        self._mode = {"linear": "iou", "square": "iou_square", "log": "iou_log"}[mode]


class GIoULoss(_BoxLoss):
    """mmdet ``GIoULoss(eps=1e-6, reduction='mean', loss_weight=1.0)``:
    ``1 - (IoU - (Cd - Ud) / Cd)`` with ``Ud = max(U, eps)``, ``Cd = max(C, eps)``
    (torchvision instead divides by ``U + eps`` and ``C + eps``)."""
    _mode = "giou"


class DIoULoss(_BoxLoss):
    """mmdet ``DIoULoss``: ``1 - (IoU - rho^2 / c^2)``, ``IoU = I / (U + eps)``,
    ``c^2 = cw^2 + ch^2 + eps`` with the enclosing sides clamped at 0."""
    _mode = "diou"


class CIoULoss(_BoxLoss):
    """mmdet ``CIoULoss``: ``1 - clamp(IoU - (rho^2 / c^2 + alpha v), -1, 1)`` with
    ``v = 4 / pi^2 (atan(wg / (hg + eps)) - atan(wp / (hp + eps)))^2`` and
    ``alpha = [IoU > 0.5] v / (1 - IoU + v)`` (no gradient); torchvision's alpha has no
    ``[IoU > 0.5]`` factor and an eps, and its heights no eps."""
    _mode = "ciou"


class DistributionFocalLoss(_MMDetLoss):
    """mmdet ``DistributionFocalLoss(reduction='mean', loss_weight=1.0)`` (GFL):
    ``CE(pred, floor(t)) (floor(t) + 1 - t) + CE(pred, floor(t) + 1) (t - floor(t))`` per
    distribution; pred (N, n) logits, target (N,) in [0, n - 1).

    Example::

        >>> import torch
        >>> from fusedloss.recipes.mmdet import DistributionFocalLoss
        >>> pred = torch.randn(8, 17, requires_grad=True)
        >>> DistributionFocalLoss(loss_weight=0.25)(pred, torch.rand(8) * 15.9).backward()
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None, avg_factor: AvgFactor = None,
                reduction_override: Optional[str] = None, **kwargs) -> torch.Tensor:
        C.tensor("pred", pred)
        reduction, avg = self._reduce(reduction_override, avg_factor, pred)
        return box.distribution_focal_loss(pred, target, reduction, weight, avg_factor=avg,
                                           loss_weight=self.loss_weight)


#: the modules :func:`register` adds, by mmdet's ``type=`` name
MODULES = {cls.__name__: cls for cls in (FocalLoss, QualityFocalLoss, VarifocalLoss,
                                         SmoothL1Loss, L1Loss, MSELoss, IoULoss, GIoULoss,
                                         DIoULoss, CIoULoss, DistributionFocalLoss)}


def register(registry, *, prefix: str = "Fused", force: bool = False) -> list:
    """Register every module in an mmengine ``Registry`` (e.g. ``mmdet.registry.MODELS``) as
    ``prefix + mmdet_name`` ("FusedFocalLoss", ...); returns the names. With ``prefix=""``
    and ``force=True`` they replace mmdet's own ``type='FocalLoss'`` etc. fusedloss never
    imports mmdet: ``registry`` is anything with mmengine's
    ``register_module(name=..., force=..., module=...)``.

    Example::

        >>> from fusedloss.recipes import mmdet as flm
        >>> class Registry(dict):                         # stands in for mmdet.registry.MODELS
        ...     def register_module(self, name=None, force=False, module=None):
        ...         self[name] = module
        >>> MODELS = Registry()
        >>> flm.register(MODELS)[:2]
        ['FusedFocalLoss', 'FusedQualityFocalLoss']
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    names = []
    for name, cls in MODULES.items():
        registry.register_module(name=prefix + name, force=force, module=cls)
        names.append(prefix + name)
    return names
