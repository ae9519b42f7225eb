"""Pure-PyTorch reference of the shrinkage loss (Lu et al., ECCV 2018), in sigmoid form.

l = |input - target|, L = exp(target) * l^2 * sigmoid(a (l - c)), weighted and reduced by
``weight_reduce``. The sigmoid form equals the paper's l^2 / (1 + exp(a (c - l))) but its
autograd gradient stays finite at l = 0 for any a c (decisions.md "Shrinkage").
"""
from __future__ import annotations

import torch

from .._validate import check_param
from ._common import prepare, weight_reduce


def shrinkage_loss(input, target, reduction="mean", a=10.0, c=0.2, exp_target_weight=True,
                   weight=None, *, avg_factor=None, loss_weight=1.0) -> torch.Tensor:
    """L = exp(target) * l^2 * sigmoid(a (l - c)), l = |input - target| (exp(target) only when
    ``exp_target_weight``). a finite and > 0, c finite, else ValueError."""
    a = check_param("a", a, minimum=0.0, strict=True)
    c = check_param("c", c)
    x, t, w = prepare(input, target, weight)
    l = (x - t).abs()
    loss = l * l * torch.sigmoid(a * (l - c))
    if exp_target_weight:
        loss = loss * torch.exp(t)
    return weight_reduce(loss, input, target, w, reduction, avg_factor, loss_weight)
