"""Ultralytics' classification losses (``ultralytics/utils/loss.py``) on the fused engine.

* :class:`VarifocalLoss` (RT-DETR): ``forward(pred_score, gt_score, label)`` with the separate
  0/1 ``label``, (N, C) or RT-DETR's (B, nq, C) scores.
* :class:`FocalLoss`: ``forward(pred, label)``, ``alpha <= 0`` meaning no alpha factor.
* :func:`yolo_cls_loss`: YOLOv8's classification term,
  ``BCE(pred_scores, target_scores).sum() / max(target_scores.sum(), 1)`` without the host sync
  of Python's ``max`` on a tensor.

Upstream reduces the first two with ``.mean(1).sum()``: the sum over all elements divided by
``pred.shape[1]`` (C for (N, C) scores, nq for RT-DETR's (B, nq, C)), which is what these
return. Scores may be float16/bfloat16 (read as they are; math in float32; a float32 result).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn as nn

from .. import focal
from . import _checks as C

__all__ = ["VarifocalLoss", "FocalLoss", "yolo_cls_loss"]


def _mean1_sum(name: str, pred: torch.Tensor) -> float:
    """``x.mean(1).sum()`` is ``x.sum() / x.shape[1]``: the avg_factor (a host number)."""
    if pred.dim() < 2:
        raise ValueError(f"{name} must have a dimension 1 to average over (.mean(1).sum()): "
                         f"(N, C) or (B, nq, C); got {C.describe(pred)}")
    return float(pred.shape[1]) if pred.shape[1] else None


def _like(name: str, value, pred: torch.Tensor, pred_name: str) -> None:
    C.tensor(name, value)
    if value.shape != pred.shape:
        raise ValueError(f"{name} must have the shape of {pred_name}, {tuple(pred.shape)}; "
                         f"got {C.describe(value)}")
    C.same_device(name, value, pred, pred_name)


class VarifocalLoss(nn.Module):
    """Ultralytics' ``VarifocalLoss(gamma=2.0, alpha=0.75)``, fused::

        weight = alpha * sigmoid(p)^gamma * (1 - label) + gt_score * label
        loss   = (BCE_with_logits(p, gt_score) * weight).mean(1).sum()

    (the weight is not detached, as upstream). ``label`` is the 0/1 one-hot of the matched
    class (int64 in RT-DETR, or bool/float) and ``gt_score`` the IoU at it (``iou * label``).
    A matched query whose IoU is exactly 0 has weight 0 (no loss, no gradient), as upstream.

    Cost beyond the fused pass: two elementwise device ops build the mask
    ``(gt_score > 0) >= label`` (it excludes exactly the matched entries with IoU 0; everywhere
    else the fused varifocal loss of ``gt_score`` is upstream's value): read gt_score, write
    and read 1 B, read label (8 B for int64), write 1 B; the fused pass reads the 1-B mask.
    Requires what RT-DETR's targets satisfy: ``gt_score == 0`` where ``label == 0`` and
    label in {0, 1} (upstream blends the two weights for other values).

    Example (RT-DETR's (B, nq, C) scores, bf16)::

        >>> import torch
        >>> from fusedloss.recipes.ultralytics import VarifocalLoss
        >>> pred = torch.randn(2, 10, 4, dtype=torch.bfloat16, requires_grad=True)
        >>> label = torch.zeros(2, 10, 4, dtype=torch.int64); label[0, 3, 1] = 1; label[1, 0, 2] = 1
        >>> gt = torch.rand(2, 10, 1) * label                    # IoU at the matched class
        >>> VarifocalLoss()(pred, gt, label).backward()
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.75):
        super().__init__()
        self.gamma = C.number("gamma", gamma, minimum=0.0)
        self.alpha = C.number("alpha", alpha)

    def forward(self, pred_score: torch.Tensor, gt_score: torch.Tensor,
                label: torch.Tensor) -> torch.Tensor:
        C.floating("pred_score", pred_score)
        avg = _mean1_sum("pred_score", pred_score)
        _like("gt_score", gt_score, pred_score, "pred_score")
        C.floating("gt_score", gt_score)
        _like("label", label, pred_score, "pred_score")
        C.real("label", label)
        C.no_grad("label", label)
        keep = (gt_score.detach() > 0) >= label
        return focal.varifocal_loss(pred_score, gt_score, self.alpha, self.gamma, True,
                                    "mean", keep, avg_factor=avg)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


class FocalLoss(nn.Module):
    """Ultralytics' ``FocalLoss(gamma=1.5, alpha=0.25)``, fused::

        loss = BCE_with_logits(pred, label) * (1 - p_t)^gamma * alpha_t     (alpha_t if alpha > 0)
        return loss.mean(1).sum()

    ``alpha <= 0`` (e.g. 0) means no alpha factor, as upstream's ``if alpha > 0``; a
    per-class alpha tensor is not supported (TypeError). ``label``: float 0/1 or soft labels of
    pred's shape (RT-DETR passes ``one_hot.float()``). No extra device ops.

    Example::

        >>> import torch
        >>> from fusedloss.recipes.ultralytics import FocalLoss
        >>> pred = torch.randn(8, 5, requires_grad=True)
        >>> label = torch.zeros(8, 5); label[0, 2] = 1
        >>> FocalLoss(gamma=1.5, alpha=0.0)(pred, label).backward()
    """

    def __init__(self, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        if isinstance(alpha, torch.Tensor) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a Python number (a per-class alpha tensor is not "
                            f"supported), got {type(alpha).__name__}")
        self.gamma = C.number("gamma", gamma, minimum=0.0)
        self.alpha = C.number("alpha", alpha)

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        C.floating("pred", pred)
        avg = _mean1_sum("pred", pred)
        _like("label", label, pred, "pred")
        alpha = self.alpha if self.alpha > 0 else None
        return focal.sigmoid_focal_loss(pred, label, alpha, self.gamma, "mean", avg_factor=avg)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


def yolo_cls_loss(pred_scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """YOLOv8's classification term, fused and without a host sync::

        BCE_with_logits(pred_scores, target_scores).sum() / max(target_scores.sum(), 1)

    (``v8DetectionLoss``: ``loss[1] = self.bce(pred_scores, target_scores.to(dtype)).sum() /
    target_scores_sum`` with ``target_scores_sum = max(target_scores.sum(), 1)``, a Python
    ``max`` that reads the tensor on the host). Here the denominator is
    ``target_scores.sum().clamp_min(1)`` on the device (2 small device ops, the sum in float32,
    or float64 for float64 targets), read by the fused kernel. Targets are read in their own
    dtype (upstream casts them to the scores' dtype first).

    Args:
        pred_scores: logits (B, anchors, nc), any float dtype.
        target_scores: TaskAligned soft targets of the same shape, floating.

    Returns:
        A 0-d float32 tensor (float64 for float64 inputs).

    Example::

        >>> import torch
        >>> from fusedloss.recipes.ultralytics import yolo_cls_loss
        >>> pred = torch.randn(2, 100, 80, dtype=torch.float16, requires_grad=True)
        >>> target = torch.rand(2, 100, 80) * (torch.rand(2, 100, 80) > 0.99)
        >>> yolo_cls_loss(pred, target).backward()
    """
    C.floating("pred_scores", pred_scores)
    _like("target_scores", target_scores, pred_scores, "pred_scores")
    C.floating("target_scores", target_scores)
    acc = C.scalar_dtype(pred_scores, target_scores)
    total = torch.sum(target_scores.detach(), dtype=acc).clamp_min(1)
    return focal.sigmoid_focal_loss(pred_scores, target_scores, None, 0.0, "mean",
                                    avg_factor=total)
