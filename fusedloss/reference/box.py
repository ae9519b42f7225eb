"""Pure-PyTorch references of the box IoU family and the distribution focal loss.

Executable spec and CPU fallback of ``fusedloss.box``; autograd gives the gradients. Each
flavour transcribes its library's formula (rewritten here from the published code, nothing
imported): torchvision's ``generalized_box_iou_loss`` / ``distance_box_iou_loss`` /
``complete_box_iou_loss`` (``flavor="torchvision"``), mmdet's ``bbox_overlaps`` / ``iou_loss`` /
``giou_loss`` / ``diou_loss`` / ``ciou_loss`` (``"mmdet"``), ultralytics' ``bbox_iou(...,
CIoU=True)`` (``"ultralytics"``). One value per box (row); weights, reductions and loss_weight
follow ``weight_reduce`` over rows.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import compute_dtype, weight_reduce

MODES = ("iou", "giou", "diou", "ciou", "iou_square", "iou_log")
FORMATS = ("xyxy", "xywh", "cxcywh")
FLAVORS = ("torchvision", "mmdet", "ultralytics")


def to_xyxy(boxes: torch.Tensor, box_format: str) -> torch.Tensor:
    """torchvision.ops.box_convert(boxes, box_format, "xyxy")."""
    a, b, c, d = boxes.unbind(-1)
    if box_format == "xywh":
        return torch.stack([a, b, a + c, b + d], dim=-1)
    if box_format == "cxcywh":
        return torch.stack([a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d], dim=-1)
    return boxes


def _torchvision(p, g, mode, eps):
    x1, y1, x2, y2 = p.unbind(-1)
    x1g, y1g, x2g, y2g = g.unbind(-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsct = torch.where(mask, (xkis2 - xkis1) * (ykis2 - ykis1), torch.zeros_like(x1))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsct
    iou = intsct / (union + eps)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    if mode == "iou":
        return 1 - iou
    if mode == "giou":
        area_c = (xc2 - xc1) * (yc2 - yc1)
        return 1 - (iou - (area_c - union) / (area_c + eps))
    diag = (xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps
    xp, yp = (x2 + x1) / 2, (y2 + y1) / 2
    xg, yg = (x1g + x2g) / 2, (y1g + y2g) / 2
    diou = 1 - iou + ((xp - xg) ** 2 + (yp - yg) ** 2) / diag
    if mode == "diou":
        return diou
    v = (4 / math.pi ** 2) * (_atan(x2g - x1g, y2g - y1g) - _atan(x2 - x1, y2 - y1)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou + alpha * v


def _atan(w, h):
    """atan(w / h) with torch's atan(+-inf) = +-pi/2 at h = 0, and fusedloss's documented
    choices where the literal autograd is NaN: the derivatives h / (w^2 + h^2), -w / (w^2 + h^2)
    at h = 0, and angle 0 without gradient for a 0 x 0 box."""
    both_zero = (w == 0) & (h == 0)
    safe_h = torch.where(h == 0, torch.ones_like(h), h)
    ratio = torch.atan(w / safe_h)  # a differentiable stand-in where h != 0
    at_zero = torch.where(w >= 0, math.pi / 2, -math.pi / 2) - torch.atan(h / torch.where(
        w == 0, torch.ones_like(w), w))  # atan(w / h) = +-pi/2 - atan(h / w) near h = 0
    return torch.where(both_zero, torch.zeros_like(w), torch.where(h == 0, at_zero, ratio))


def _mmdet(p, g, mode, eps):
    x1, y1, x2, y2 = p.unbind(-1)
    u1, v1, u2, v2 = g.unbind(-1)
    ap = (x2 - x1) * (y2 - y1)
    ag = (u2 - u1) * (v2 - v1)
    lt_x, lt_y = torch.max(x1, u1), torch.max(y1, v1)
    rb_x, rb_y = torch.min(x2, u2), torch.min(y2, v2)
    overlap = (rb_x - lt_x).clamp(min=0) * (rb_y - lt_y).clamp(min=0)
    ex1, ey1 = torch.min(x1, u1), torch.min(y1, v1)
    ex2, ey2 = torch.max(x2, u2), torch.max(y2, v2)
    cw, ch = (ex2 - ex1).clamp(min=0), (ey2 - ey1).clamp(min=0)
    if mode in ("iou", "iou_square", "iou_log", "giou"):  # bbox_overlaps
        union = torch.max(ap + ag - overlap, torch.full_like(ap, eps))
        ious = overlap / union
        if mode == "giou":
            enclose = torch.max(cw * ch, torch.full_like(ap, eps))
            return 1 - (ious - (enclose - union) / enclose)
        ious = ious.clamp(min=eps)
        return {"iou": 1 - ious, "iou_square": 1 - ious ** 2, "iou_log": -ious.log()}[mode]
    ious = overlap / (ap + ag - overlap + eps)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((u1 + u2) - (x1 + x2)) ** 2 / 4 + ((v1 + v2) - (y1 + y2)) ** 2 / 4
    if mode == "diou":
        return 1 - (ious - rho2 / c2)
    v = (4 / math.pi ** 2) * (_atan(u2 - u1, v2 - v1 + eps) - _atan(x2 - x1, y2 - y1 + eps)) ** 2
    with torch.no_grad():
        alpha = (ious > 0.5).to(v.dtype) * v / (1 - ious + v)
    cious = ious - (rho2 / c2 + alpha * v)
    return 1 - cious.clamp(min=-1.0, max=1.0)


def _ultralytics(p, g, mode, eps):
    if mode != "ciou":
        raise ValueError(f"the ultralytics flavour is bbox_iou(..., CIoU=True) only, got {mode!r}")
    x1, y1, x2, y2 = p.unbind(-1)
    u1, v1, u2, v2 = g.unbind(-1)
    w1, h1 = x2 - x1, y2 - y1 + eps
    w2, h2 = u2 - u1, v2 - v1 + eps
    inter = ((torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(min=0)
             * (torch.minimum(y2, v2) - torch.maximum(y1, v1)).clamp(min=0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(x2, u2) - torch.minimum(x1, u1)
    ch = torch.maximum(y2, v2) - torch.minimum(y1, v1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((u1 + u2 - x1 - x2) ** 2 + (v1 + v2 - y1 - y2) ** 2) / 4
    v = (4 / math.pi ** 2) * (_atan(w2, h2) - _atan(w1, h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return 1 - (iou - (rho2 / c2 + v * alpha))


_FLAVORS = {"torchvision": _torchvision, "mmdet": _mmdet, "ultralytics": _ultralytics}


def _rows(input, target, weight):
    """(x, t, w) in the compute dtype, rows with a zero weight blanked (NaN-safe exclusion)."""
    acc = compute_dtype(input, target, weight)
    x, t = input.to(acc), target.to(acc)
    if weight is None:
        return x, t, None
    if weight.dim() == input.dim() and weight.shape[-1] == 1:
        weight = weight.squeeze(-1)
    w = weight.to(acc)
    keep = (w != 0)
    rows = torch.broadcast_shapes(keep.shape, x.shape[:-1])
    keep = keep.expand(rows)
    x = torch.where(keep[..., None], x, 0.0)
    t = torch.where(keep.reshape(keep.shape + (1,) * (t.dim() - keep.dim())), t, 0.0)
    return x, t, w


def box_iou_loss(pred, target, mode="giou", reduction="none", weight=None, *, eps=1e-7,
                 box_format="xyxy", avg_factor=None, loss_weight=1.0,
                 flavor="torchvision") -> torch.Tensor:
    """One loss per box (pred.shape[:-1]) in the given flavour's formula."""
    x, t, w = _rows(pred, target, weight)
    loss = _FLAVORS[flavor](to_xyxy(x, box_format), to_xyxy(t.expand(x.shape), box_format),
                            mode, eps)
    return weight_reduce(loss, pred, target, w, reduction, avg_factor, loss_weight)


def distribution_focal_loss(pred, target, reduction="mean", weight=None, *, avg_factor=None,
                            loss_weight=1.0, clamp_max=None) -> torch.Tensor:
    """sum_j q_j (logsumexp(pred) - pred_j) with the two-hot q of target (GFL, mmdet):
    CE(pred, l) (l + 1 - t) + CE(pred, l + 1) (t - l), l = floor(t); target clamped to
    [0, clamp_max] first when clamp_max is given (ultralytics' DFLoss); two-hot mass outside
    the n bins is dropped (a target outside [0, n - 1) is not checked)."""
    x, t, w = _rows(pred, target.unsqueeze(-1), weight)
    t = t.squeeze(-1)
    if clamp_max is not None:
        t = t.clamp(0, clamp_max)
    n = x.shape[-1]
    left = torch.floor(t)
    bins = torch.arange(n, device=x.device, dtype=x.dtype)
    q = (torch.where(bins == left[..., None], (left + 1 - t)[..., None], 0.0)
         + torch.where(bins == (left + 1)[..., None], (t - left)[..., None], 0.0))
    loss = (q * (torch.logsumexp(x, dim=-1, keepdim=True) - x)).sum(-1)
    return weight_reduce(loss, pred, target, w, reduction, avg_factor, loss_weight)


def mmdet_distribution_focal_loss(pred, label):
    """mmdet's distribution_focal_loss, literally (label in [0, n - 1))."""
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.to(pred.dtype) - label
    weight_right = label - dis_left.to(pred.dtype)
    return (F.cross_entropy(pred, dis_left, reduction="none") * weight_left
            + F.cross_entropy(pred, dis_right, reduction="none") * weight_right)


def yolo_box_loss(pred_dist, anchor_points, target_bboxes, weight, avg_factor, *, reg_max=16,
                  fg_mask=None, loss_weight=(1.0, 1.0)) -> torch.Tensor:
    """ultralytics' BboxLoss (decode + CIoU + DFL), with weights instead of boolean indexing:
    returns the pair (loss_iou, loss_dfl) as a (2,) tensor, each times its loss_weight."""
    acc = compute_dtype(pred_dist, target_bboxes, anchor_points)
    w = weight.to(acc)
    if w.dim() == pred_dist.dim():
        w = w.squeeze(-1)
    if fg_mask is not None:
        w = torch.where(fg_mask, w, 0.0)
    keep = w != 0
    x = torch.where(keep[..., None], pred_dist.to(acc), 0.0)
    t = torch.where(keep[..., None], target_bboxes.to(acc), 0.0)
    anchors = torch.where(keep[..., None], anchor_points.to(acc).expand(t.shape[:-1] + (2,)), 0.0)
    b, a, _ = x.shape
    p = x.view(b, a, 4, reg_max).softmax(3)
    dist = p @ torch.arange(reg_max, dtype=acc, device=x.device)
    boxes = torch.cat([anchors - dist[..., :2], anchors + dist[..., 2:]], -1)
    iou_term = _ultralytics(boxes, t, "ciou", 1e-7)
    ltrb = torch.cat([anchors - t[..., :2], t[..., 2:] - anchors], -1).clamp(0, reg_max - 1.01)
    left = torch.floor(ltrb)
    bins = torch.arange(reg_max, dtype=acc, device=x.device)
    q = (torch.where(bins == left[..., None], (left + 1 - ltrb)[..., None], 0.0)
         + torch.where(bins == (left + 1)[..., None], (ltrb - left)[..., None], 0.0))
    x4 = x.view(b, a, 4, reg_max)
    dfl = (q * (torch.logsumexp(x4, -1, keepdim=True) - x4)).sum(-1).mean(-1)
    af = avg_factor.to(acc) if isinstance(avg_factor, torch.Tensor) else avg_factor
    out = torch.stack([(iou_term * w).sum() / af * loss_weight[0],
                       (dfl * w).sum() / af * loss_weight[1]])
    return out.to(torch.float64 if acc == torch.float64 else torch.float32)
