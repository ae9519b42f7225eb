"""Pure-PyTorch references of heatmap losses whose Gaussian targets come from keypoints.

Executable spec and CPU fallback of ``fusedloss.heatmap``. The target is rendered here as a
tensor, the way DeepLabCut's generator draws it (one Gaussian per visible instance, the maximum
where instances overlap), then handed to the references of the losses:

    x_j = j stride + offset, y_i = i stride + offset      (heatmap pixel -> input pixels)
    gaussian: t[b, k, i, j] = max_a exp(-((x_j - kx_a)^2 + (y_i - ky_a)^2) / (2 sigma^2))
    plateau:  t[b, k, i, j] = 1 if min_a ((x_j - kx_a)^2 + (y_i - ky_a)^2) <= sigma^2 else 0
    normalize (gaussian): t * stride^2 / (2 pi sigma^2)  (unit integral over the map)

over the instances a with visibility > 0 (all when visibility is None); a pixel with no such
instance is 0. Gaussian focal loss (mmdet ``GaussianFocalLoss``): see ``gaussian_focal_loss``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._common import compute_dtype, prepare, weight_reduce
from .regression import huber_loss, mse_loss
from .shrinkage import shrinkage_loss


def render_heatmaps(keypoints: torch.Tensor, visibility: Optional[torch.Tensor], shape,
                    sigma: float, *, render: str = "gaussian", stride: float = 1.0,
                    offset: float = 0.0, normalize: bool = False,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Targets (B, K, H, W) from keypoints (B, K, 2) or (B, K, A, 2) in input pixels (x, y)."""
    B, K = keypoints.shape[:2]
    kp = keypoints.reshape(B, K, -1, 2).to(dtype)
    H, W = shape
    xs = torch.arange(W, dtype=dtype, device=kp.device) * stride + offset
    ys = torch.arange(H, dtype=dtype, device=kp.device) * stride + offset
    dx = xs.view(1, 1, 1, 1, W) - kp[..., 0].view(B, K, -1, 1, 1)
    dy = ys.view(1, 1, 1, H, 1) - kp[..., 1].view(B, K, -1, 1, 1)
    d2 = dx * dx + dy * dy  # (B, K, A, H, W)
    visible = torch.ones(d2.shape[:3], dtype=torch.bool, device=kp.device)
    if visibility is not None:
        visible = visibility.reshape(B, K, -1) > 0
    if render == "gaussian":
        peaks = torch.exp(-d2 / (2.0 * sigma * sigma))
    else:
        peaks = torch.where(d2 <= sigma * sigma, 1.0, torch.where(torch.isnan(d2), d2, 0.0))
    peaks = torch.where(visible[..., None, None], peaks, 0.0)
    if peaks.shape[2] == 0:
        target = torch.zeros(B, K, H, W, dtype=dtype, device=kp.device)
    else:
        target = peaks.amax(dim=2)  # amax propagates NaN
    if normalize:
        target = target * (stride * stride / (2.0 * math.pi * sigma * sigma))
    return target


def gaussian_focal_loss(input, target, reduction="mean", alpha=2.0, gamma=4.0, weight=None, *,
                        from_logits=False, avg_factor=None, loss_weight=1.0) -> torch.Tensor:
    """mmdet's GaussianFocalLoss, elementwise (pos = [t == 1]):

        probabilities p: -log(p + 1e-12) (1 - p)^alpha pos - log(1 - p + 1e-12) p^alpha (1 - t)^gamma
        logits x:        -log s(x) s(-x)^alpha pos - log s(-x) s(x)^alpha (1 - t)^gamma
    """
    x, t, w = prepare(input, target, weight)
    pos = (t == 1).to(x.dtype)
    neg = (1 - t) ** gamma
    if from_logits:
        loss = (-F.logsigmoid(x) * torch.sigmoid(-x) ** alpha * pos
                - F.logsigmoid(-x) * torch.sigmoid(x) ** alpha * neg)
    else:
        loss = (-torch.log(x + 1e-12) * (1 - x) ** alpha * pos
                - torch.log(1 - x + 1e-12) * x ** alpha * neg)
    return weight_reduce(loss, input, target, w, reduction, avg_factor, loss_weight)


_LOSSES = {"mse": mse_loss, "huber": huber_loss, "shrinkage": shrinkage_loss,
           "gaussian_focal": gaussian_focal_loss}


def heatmap_loss(pred, keypoints, visibility=None, *, sigma, loss="mse", reduction="mean",
                 weight=None, render="gaussian", stride=1.0, offset=0.0, from_logits=False,
                 normalize=False, avg_factor=None, loss_weight=1.0, **loss_params):
    """The loss between pred (B, K, H, W) and the targets rendered from keypoints."""
    acc = compute_dtype(pred)
    target = render_heatmaps(keypoints.detach(), visibility, pred.shape[-2:], sigma,
                             render=render, stride=stride, offset=offset, normalize=normalize,
                             dtype=acc).to(pred.device)
    if loss == "gaussian_focal":
        loss_params = dict(loss_params, from_logits=from_logits)
    # the loss's reference computes in the compute dtype; its "none" output takes pred's dtype
    out = _LOSSES[loss](pred, target, reduction=reduction, weight=weight,
                        avg_factor=avg_factor, loss_weight=loss_weight, **loss_params)
    return out.to(pred.dtype) if reduction == "none" else out
