"""The one weight/reduction contract every reference loss uses (the executable spec).

Semantics (../shared/notes/decisions.md):
- "none": w * l * loss_weight elementwise, dtype torch.result_type(input, target)
- "sum": sum(w * l); "mean": sum(w * l) / numel, or / avg_factor when given
- "weighted_mean": sum(w * l) / sum(w) over the broadcast weight, 0 when sum(w) == 0
- a zero weight excludes its element, even where input or target is NaN/inf
- scalar results are float32 for float16/bfloat16 inputs (float64 stays float64)
"""
from __future__ import annotations

from typing import Optional

import torch


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 if any floating operand is float64, else float32 (fp16/bf16 math in fp32)."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


def prepare(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]):
    """Upcast to the compute dtype and blank the elements a zero weight excludes.

    Returns (x, t, w): x and t of input's shape, w None or in the compute dtype. Blanking x and
    t (not just the loss) keeps NaN/inf out of the value *and* the autograd gradient of excluded
    elements.
    """
    acc = compute_dtype(input, target if target.dtype.is_floating_point else None, weight)
    x = input.to(acc)
    t = target.to(acc).expand(input.shape)  # a broadcast target, for formulas that need one shape
    if weight is None:
        return x, t, None
    w = weight.to(acc)
    keep = w != 0
    return torch.where(keep, x, 0.0), torch.where(keep, t, 0.0), w


def result_dtype(input: torch.Tensor, target: torch.Tensor) -> torch.dtype:
    """``torch.result_type(input, target)`` (input's dtype for class-index targets).

    For two floating tensors it is computed from dtypes and dims, as torch's promotion rule
    reads: a 0-d tensor takes part only when the other operand is 0-d too. ``torch.result_type``
    itself returns a dtype, which TorchDynamo cannot put in a graph: every call was a graph
    break in a compiled step on the CPU fallback; ``torch.promote_types`` traces.
    """
    if not target.dtype.is_floating_point:  # class-index targets
        return input.dtype
    if not input.dtype.is_floating_point:  # not reached through fusedloss's checked entry
        return torch.result_type(input, target)
    if (input.dim() == 0) == (target.dim() == 0):
        return torch.promote_types(input.dtype, target.dtype)
    return input.dtype if target.dim() == 0 else target.dtype


def weight_reduce(loss: torch.Tensor, input: torch.Tensor, target: torch.Tensor,
                  w: Optional[torch.Tensor], reduction: str = "mean", avg_factor=None,
                  loss_weight=1.0) -> torch.Tensor:
    """Apply weight, loss_weight and the reduction to an elementwise loss of input's shape."""
    if w is not None:
        loss = loss * w
    if isinstance(loss_weight, torch.Tensor):
        loss = loss * loss_weight.to(loss.dtype)
    else:
        loss = loss * loss_weight
    if reduction == "none":
        return loss.to(result_dtype(input, target))
    scalar = torch.float64 if result_dtype(input, target) == torch.float64 else torch.float32
    total = loss.sum()
    if reduction == "sum":
        out = total
    elif reduction == "mean":
        if avg_factor is None:
            out = total / loss.numel()
        elif isinstance(avg_factor, torch.Tensor):
            out = total / avg_factor.to(total.dtype).reshape(())
        else:
            out = total / avg_factor
    elif reduction == "weighted_mean":
        if w is None:
            out = total / loss.numel()
        else:
            sw = w.expand(loss.shape).sum()
            out = torch.where(sw != 0, total / torch.where(sw != 0, sw, 1.0), 0.0)
    else:
        raise ValueError(f"unknown reduction {reduction!r}")
    return out.to(scalar)
