"""Normalisers for data-parallel training (DDP/FSDP) that do not sync the host.

DDP averages gradients over ranks. If every rank divides its masked loss by its *own* sum of
weights, ranks with few visible points are over-weighted. Dividing by the global sum divided by
the world size (mmdet's ``reduce_mean``) makes the averaged gradient equal to single-process
training on the whole batch:

    (1/W) sum_r sum_{i in r} dl_i / A  ==  sum_i dl_i / S   <=>   A = S / W
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def global_avg_factor(weight_or_count: torch.Tensor, *, like: Optional[torch.Tensor] = None,
                      group=None, clamp_min: Optional[float] = None) -> torch.Tensor:
    """Global ``sum(weight)`` / world size, as a 0-d device tensor for ``avg_factor=``.

    Args:
        weight_or_count: the local weight (bool/int/float, any shape) or a local count.
        like: the input the weight broadcasts over; the sum then counts each weight element as
            often as broadcasting repeats it (``like.numel() / weight.numel()`` times).
        group: process group (default: the world). Without an initialised process group the
            local sum is returned.
        clamp_min: optional lower bound applied after the reduction (e.g. 1.0 or 1e-6), on the
            device, for batches where no element is selected on any rank.

    Example (each rank)::

        >>> af = global_avg_factor(vis, like=pred)                         # doctest: +SKIP
        >>> loss = fusedloss.huber_loss(pred, gt, "mean", weight=vis, avg_factor=af)  # doctest: +SKIP
    """
    if not isinstance(weight_or_count, torch.Tensor):
        raise TypeError(f"weight_or_count must be a tensor, got {type(weight_or_count).__name__}")
    acc = torch.float64 if weight_or_count.dtype == torch.float64 else torch.float32
    total = weight_or_count.detach().sum(dtype=acc)
    if like is not None and weight_or_count.numel():
        total = total * (like.numel() // weight_or_count.numel())
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        total = total / dist.get_world_size(group)
    if clamp_min is not None:
        total = total.clamp_min(clamp_min)
    return total
