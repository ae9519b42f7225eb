"""Box regression losses, fused: the IoU family (IoU / GIoU / DIoU / CIoU), the distribution
focal loss and ultralytics' box loss, as row losses of the engine (one value per box,
distribution or anchor). mmdet's modules (``IoULoss`` ... ``DistributionFocalLoss``, with
mmdet's ``avg_factor + eps``) are in :mod:`fusedloss.recipes.mmdet`, exported here as well.

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

from ._engine import apply_rows, register_loss
from ._validate import check_floating, check_param, check_same_device, check_tensor
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

# --------------------------------------------------------------------------- the YOLO box loss

def _yolo_first_grad_torch(x: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """``kernels.box.yolo_box_first_grad`` in torch ops (torch.compile, "none")."""
    r = x.shape[-1] // 4
    p = x.float().view(*x.shape[:-1], 4, r).softmax(-1)
    bins = torch.arange(r, dtype=p.dtype, device=x.device)
    dist = (p * bins).sum(-1, keepdim=True)
    return (saved[..., None] * p * (bins - dist)).view(x.shape).to(saved.dtype)


_YOLO = register_loss("yolo_box_loss", math_.yolo_box, ref.yolo_box_loss,
                      ("eps", "lw_iou", "lw_dfl", "clamp_max"),
                      row_backward=math_.yolo_box_first_grad,
                      row_backward_torch=_yolo_first_grad_torch)


def yolo_box_loss(pred_dist: torch.Tensor, anchor_points: torch.Tensor,
                  target_bboxes: torch.Tensor, weight: torch.Tensor, avg_factor: Number, *,
                  reg_max: int = 16, fg_mask: Optional[torch.Tensor] = None, iou: str = "ciou",
                  loss_weight: tuple = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """ultralytics ``v8DetectionLoss``'s box part (``BboxLoss`` + ``bbox_decode``) in one
    kernel over anchors: ``(loss_iou, loss_dfl)``.

    Per anchor: softmax over each side's ``reg_max`` bins -> expected distance ->
    ``dist2bbox`` (anchor point -+ (l, t), + (r, b)) -> CIoU against the target box in
    ultralytics' formula (``bbox_iou(..., xywh=False, CIoU=True)``, eps 1e-7); DFL on the same
    logits against the target's distances (``bbox2dist``, clamped to [0, reg_max - 1.01]),
    averaged over the 4 sides::

        loss_iou = sum(weight (1 - CIoU)) / avg_factor * loss_weight[0]
        loss_dfl = sum(weight DFL) / avg_factor * loss_weight[1]

    over the foreground anchors: ``fg_mask`` (or a zero weight) excludes an anchor, without
    compaction (no boolean indexing, no ``if fg_mask.sum():``, no host sync). The gradient of
    both terms flows into ``pred_dist`` (through the decode for CIoU) and is written once by the
    forward, for grad_outputs (1, 1) after the loss weights: pass ultralytics' ``hyp.box`` and
    ``hyp.dfl`` as ``loss_weight`` and the backward moves no memory (scaling both by the batch
    size afterwards is one in-place rescale); other grad_output pairs re-read the logits once.
    ``target_bboxes`` and ``anchor_points`` get no gradient (from the assigner; pass detached
    tensors).

    Args:
        pred_dist: (B, A, 4 * reg_max) logits, any float dtype (fp32 math); reg_max a power of
            two (16 in every ultralytics model).
        anchor_points: (A, 2) anchor centres, in the same grid units as target_bboxes
            (ultralytics divides the target boxes by the stride before its BboxLoss; so does the
            caller here).
        target_bboxes: (B, A, 4) xyxy.
        weight: (B, A) or (B, A, 1): ``target_scores.sum(-1)``.
        avg_factor: ``target_scores_sum``, a number or a device tensor (never read on the host).
        fg_mask: (B, A) bool, or None (every anchor with a non-zero weight counts).
        iou: "ciou" (ultralytics' choice; the only one).
        loss_weight: (box, dfl) Python numbers.

    Example::

        >>> import torch, fusedloss
        >>> pd = torch.randn(2, 50, 64, requires_grad=True)
        >>> anchors = torch.rand(50, 2) * 20
        >>> boxes = torch.cat([anchors - 2, anchors + 3], -1).expand(2, 50, 4)
        >>> scores = torch.rand(2, 50)
        >>> l_iou, l_dfl = fusedloss.box.yolo_box_loss(pd, anchors, boxes, scores,
        ...                                            scores.sum().clamp_min(1))
        >>> (l_iou * 7.5 + l_dfl * 1.5).backward()
    """
    _check_choice("iou", iou, ("ciou",))
    check_tensor("pred_dist", pred_dist)
    check_floating("pred_dist", pred_dist)
    if not isinstance(reg_max, int) or reg_max < 2 or reg_max & (reg_max - 1):
        raise ValueError(f"reg_max must be a power of two >= 2, got {reg_max!r}")
    if pred_dist.dim() != 3 or pred_dist.shape[-1] != 4 * reg_max:
        raise ValueError(f"pred_dist must be (B, A, 4 * reg_max) = (B, A, {4 * reg_max}); got "
                         f"shape {tuple(pred_dist.shape)}")
    B, A = pred_dist.shape[:2]
    for name, t, shape in (("anchor_points", anchor_points, (A, 2)),
                           ("target_bboxes", target_bboxes, (B, A, 4))):
        check_tensor(name, t)
        check_same_device(name, t, pred_dist)
        check_floating(name, t)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}; got {tuple(t.shape)}")
        if t.requires_grad:
            raise TypeError(f"{name} gets no gradient from fusedloss but requires grad; pass "
                            f"{name}.detach()")
    if fg_mask is not None:
        check_tensor("fg_mask", fg_mask)
        check_same_device("fg_mask", fg_mask, pred_dist)
        if fg_mask.dtype != torch.bool or tuple(fg_mask.shape) != (B, A):
            raise ValueError(f"fg_mask must be a bool tensor of shape {(B, A)}; got shape "
                             f"{tuple(fg_mask.shape)}, dtype {fg_mask.dtype}")
    if not (isinstance(loss_weight, (tuple, list)) and len(loss_weight) == 2):
        raise TypeError(f"loss_weight must be a pair of numbers (box, dfl), got {loss_weight!r}")
    lw = tuple(check_param(f"loss_weight[{k}]", v) for k, v in enumerate(loss_weight))
    if avg_factor is None:
        raise TypeError("avg_factor is required: ultralytics' target_scores_sum (a tensor is fine)")
    check_tensor("weight", weight)
    if fg_mask is not None:  # fold the mask into the per-anchor weight (a zero weight excludes)
        w = weight.squeeze(-1) if weight.dim() == 3 else weight
        weight = torch.where(fg_mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
    params = (1e-7, lw[0], lw[1], reg_max - 1.01)
    reference = partial(ref.yolo_box_loss, pred_dist, anchor_points, target_bboxes, weight,
                        avg_factor, reg_max=reg_max, loss_weight=lw)
    out = apply_rows(_YOLO, pred_dist, target_bboxes, anchor_points, params, "mean", weight,
                     avg_factor, 1.0, reference, nout=2, saved=4)
    return out[0], out[1]
